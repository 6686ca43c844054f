"""The code that runs inside Slicer runs on every Python the supported Slicer versions ship.

Slicer 5.8 ships Python 3.9; Slicer 5.10 and later ship Python 3.12 (Slicer's
CMakeLists.txt, Slicer_REQUIRED_PYTHON_VERSION). The module file and the library it
runs (everything but training/, which runs in the project's own Python) must parse
and run on 3.9. CI runs the tests under 3.11 and, for those that need no torch,
under 3.12 (.ci/run); this test keeps out what only a newer Python than 3.9 has.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from conftest import ROOT

OLDEST_PYTHON = (3, 9)

#: module attributes that appeared after Python 3.9: (module, name) -> the version that added it
NEWER_ATTRIBUTES = {
    ("datetime", "UTC"): "3.11",
    ("itertools", "pairwise"): "3.10",
    ("itertools", "batched"): "3.12",
    ("enum", "StrEnum"): "3.11",
    ("typing", "Self"): "3.11",
    ("typing", "TypeAlias"): "3.10",
    ("typing", "ParamSpec"): "3.10",
    ("typing", "Never"): "3.11",
    ("hashlib", "file_digest"): "3.11",
    ("contextlib", "chdir"): "3.11",
}
NEWER_MODULES = {"tomllib": "3.11"}
#: keyword arguments that appeared after 3.9: call name -> {keyword: version}
NEWER_KEYWORDS = {"zip": {"strict": "3.10"}, "dataclass": {"slots": "3.10", "kw_only": "3.10"}}


def slicer_side_files() -> list[Path]:
    """The module file and every library file that Slicer or PythonSlicer runs."""
    folder = ROOT / "SpineStenosisGrader"
    return sorted(p for p in folder.rglob("*.py")
                  if "training" not in p.relative_to(folder).parts and ".venv" not in str(p))


def _has_future_annotations(tree: ast.Module) -> bool:
    return any(isinstance(node, ast.ImportFrom) and node.module == "__future__"
               and any(alias.name == "annotations" for alias in node.names) for node in tree.body)


def _union_in(node: ast.AST | None) -> bool:
    return node is not None and any(isinstance(n, ast.BinOp) and isinstance(n.op, ast.BitOr)
                                    for n in ast.walk(node))


def newer_python_uses(source: str, filename: str = "<source>") -> list[str]:
    """What in ``source`` needs a Python newer than 3.9, one line each ("file:line: what")."""
    try:
        tree = ast.parse(source, filename=filename, feature_version=OLDEST_PYTHON)
    except SyntaxError as exc:
        return [f"{filename}:{exc.lineno}: syntax Python {OLDEST_PYTHON[0]}.{OLDEST_PYTHON[1]} cannot parse "
                f"({exc.msg})"]
    found = []
    aliases = {}  # local name -> module, for "import datetime as dt"
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                aliases[alias.asname or alias.name] = alias.name
                if alias.name in NEWER_MODULES:
                    found.append(f"{filename}:{node.lineno}: import {alias.name} (Python {NEWER_MODULES[alias.name]})")
        elif isinstance(node, ast.ImportFrom) and node.module:
            if node.module in NEWER_MODULES:
                found.append(f"{filename}:{node.lineno}: from {node.module} (Python {NEWER_MODULES[node.module]})")
            for alias in node.names:
                if (node.module, alias.name) in NEWER_ATTRIBUTES:
                    found.append(f"{filename}:{node.lineno}: from {node.module} import {alias.name} "
                                 f"(Python {NEWER_ATTRIBUTES[node.module, alias.name]})")
        elif isinstance(node, ast.Match if hasattr(ast, "Match") else ()):
            found.append(f"{filename}:{node.lineno}: a match statement (Python 3.10)")
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
            module = aliases.get(node.value.id, node.value.id)
            if (module, node.attr) in NEWER_ATTRIBUTES:
                found.append(f"{filename}:{node.lineno}: {module}.{node.attr} "
                             f"(Python {NEWER_ATTRIBUTES[module, node.attr]})")
        elif isinstance(node, ast.Call):
            name = node.func.id if isinstance(node.func, ast.Name) else getattr(node.func, "attr", "")
            for keyword in node.keywords:
                version = NEWER_KEYWORDS.get(name, {}).get(keyword.arg)
                if version:
                    found.append(f"{filename}:{node.lineno}: {name}({keyword.arg}=...) (Python {version})")
            if name in ("isinstance", "issubclass") and len(node.args) == 2 and _union_in(node.args[1]):
                found.append(f"{filename}:{node.lineno}: {name} with X | Y (Python 3.10)")
    if not _has_future_annotations(tree):
        # without the __future__ import, annotations are evaluated when the function or class is defined
        for node in ast.walk(tree):
            annotations = []
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                arguments = node.args.posonlyargs + node.args.args + node.args.kwonlyargs
                arguments += [a for a in (node.args.vararg, node.args.kwarg) if a is not None]
                annotations = [a.annotation for a in arguments] + [node.returns]
            elif isinstance(node, ast.AnnAssign):
                annotations = [node.annotation]
            if any(_union_in(annotation) for annotation in annotations):
                found.append(f"{filename}:{node.lineno}: an X | Y annotation evaluated at run time (Python 3.10); "
                             "add 'from __future__ import annotations' or use Optional/Union")
    return found


def test_the_slicer_side_runs_on_the_python_of_slicer_5_8():
    files = slicer_side_files()
    assert ROOT / "SpineStenosisGrader" / "SpineStenosisGrader.py" in files
    assert len(files) > 20
    found = []
    for path in files:
        found += newer_python_uses(path.read_text(encoding="utf-8"), str(path.relative_to(ROOT)))
    assert found == []


@pytest.mark.parametrize("source", [
    "import datetime\nnow = datetime.datetime.now(datetime.UTC)\n",
    "import datetime as dt\nnow = dt.datetime.now(dt.UTC)\n",
    "from datetime import UTC\n",
    "import tomllib\n",
    "for a, b in zip([1], [2], strict=True):\n    pass\n",
    "match x:\n    case 1:\n        pass\n",
    "def f(x: int | None) -> None:\n    pass\n",
    "ok = isinstance(1, int | str)\n",
    "import itertools\npairs = itertools.pairwise([1, 2])\n",
])
def test_what_needs_a_newer_python_is_found(source):
    assert newer_python_uses(source)


def test_what_python_3_9_has_is_not_flagged():
    source = ("from __future__ import annotations\nimport datetime\n"
              "def f(x: int | None) -> list[str] | None:\n    return None\n"
              "now = datetime.datetime.now(datetime.timezone.utc)\nok = isinstance(1, (int, str))\n")
    assert newer_python_uses(source) == []
