"""The library's imports point down its layers, as DESIGN.md draws them.

The shared vocabulary at the ground; then study; then inference and outputs; then packages; then
the pipeline and review; then training; the command line on top. A lower layer that imported a
higher one would pull, say, the packages into the writers, or torch into the runtime.
"""

import ast
from pathlib import Path

import pytest

LIB = Path(__file__).resolve().parents[1] / "SpineStenosisGrader" / "SpineStenosisGraderLib"
RANK = {"errors": 0, "scales": 0, "result": 0, "checksums": 0, "study": 1, "inference": 2, "outputs": 2,
        "packages": 3, "pipeline": 4, "review": 4, "training": 5, "cli": 6}


def part_of(path: Path) -> str:
    """The layer a library file belongs to: its sub-package, or its own name at the top."""
    relative = path.relative_to(LIB).parts
    return relative[0] if len(relative) > 1 else Path(relative[0]).stem


def imported_parts(path: Path) -> set[tuple[str, int]]:
    """The library parts a file imports (at any depth, lazily too), with the line of each."""
    here = path.relative_to(LIB).parts[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.level > 0:
            base = list(here[:len(here) - (node.level - 1)]) if node.level > 1 else list(here)
            target = base + (node.module.split(".") if node.module else [])
            names = [target[0]] if target else [alias.name for alias in node.names]
            found.update((name, node.lineno) for name in names)
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("SpineStenosisGraderLib."):
            found.add((node.module.split(".")[1], node.lineno))
    return found


FILES = sorted(p for p in LIB.rglob("*.py") if part_of(p) in RANK)


def test_every_library_file_has_a_layer():
    assert {part_of(p) for p in LIB.rglob("*.py")} - {"__init__"} <= set(RANK)


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.relative_to(LIB).as_posix())
def test_imports_point_down_the_layers(path):
    mine = part_of(path)
    upward = [f"line {line}: {name}" for name, line in sorted(imported_parts(path))
              if name in RANK and RANK[name] > RANK[mine]]
    assert not upward, f"{path.relative_to(LIB)} ({mine}) imports a higher layer: {upward}"


def test_only_the_command_line_uses_training():
    users = sorted(p.relative_to(LIB).as_posix() for p in FILES
                   if part_of(p) not in ("training", "cli") and any(n == "training" for n, _ in imported_parts(p)))
    assert users == [], users
