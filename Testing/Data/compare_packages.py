"""Score several model packages side by side on the validation scans, and their spread.

A training run is one draw: two runs of the same recipe with other seeds can
name the held-out levels very differently (README, "Retraining the default
model"). So a recipe is judged by several seeds, and this prints, for each
package, the figures the README's recipe tables quote, then their sum and their
range over the packages:

- the catalogue's held-out scans, as ``evaluate --scans holdout --real-only``
  scores them: canal per slice, discs found within 8 mm, false levels, names,
  and the names on the whole necks and on the lumbar T2 scans apart;
- with ``--vb2 DIR`` and ``--vb1 DIR`` (JonathanRamos/fastcleverseg at
  b476612c, ``ImageDatasets/VBs/VB2/Isotropic/Matlab`` and ``…/VB1/…``, not
  copied here), the lumbar T2 scans of VB2 and VB1 as
  ``score_fastcleverseg_vb2.py`` and ``score_fastcleverseg_vb1.py`` score them.

Usage (``default`` is the embedded package)::

    .venv/bin/python Testing/Data/compare_packages.py [--vb2 DIR] [--vb1 DIR] PACKAGE_DIR|default ...

It grades every scan once per package: about a minute per package for the
held-out scans, two more with VB2 and VB1, on 2 cores.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Callable, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "SpineStenosisGrader"))

import score_fastcleverseg_vb1 as vb1  # noqa: E402
import score_fastcleverseg_vb2 as vb2  # noqa: E402
from SpineStenosisGraderLib.packages.package import load_default_package, load_package  # noqa: E402
from SpineStenosisGraderLib.training.evaluation import RealScanScore, evaluate_real  # noqa: E402

CATALOGUE = Path(__file__).resolve().parent / "scans.json"
#: the scans of VB2 and VB1 that are scored (see the two scoring scripts)
VB2_SCANS = ("02", "04", "05", "06", "07", "08", "09", "10", "12", "13", "14", "16", "17", "18", "19", "20", "23")
VB1_SCANS = ("03", "07", "11", "12", "15", "16", "17")
#: the held-out groups reported apart, by catalogue name
GROUPS: dict[str, Callable[[str], bool]] = {
    "necks": lambda name: name.startswith("sct_errsm_") and name.endswith("_t2"),
    "lumbar T2": lambda name: name.startswith("fastcleverseg_ivd_"),
}
#: each figure: (right, out of)
Figure = tuple[int, int]


def holdout_figures(scores: Sequence[RealScanScore]) -> dict[str, Figure]:
    """The held-out figures of one package, each as (count, out of)."""
    figures = {
        "canal found": (sum(s.hits for s in scores), sum(s.canal_slices for s in scores)),
        "discs found (8 mm)": (sum(s.discs_found for s in scores), sum(s.discs_inside for s in scores)),
        "false levels": (sum(s.false_levels for s in scores), 0),
        "names right": (sum(s.names_right for s in scores), sum(s.names_checked for s in scores)),
        "region right": (sum(s.region_true == s.region_found for s in scores), len(scores)),
    }
    for group, member in GROUPS.items():
        chosen = [s for s in scores if member(s.scan)]
        figures[f"names right: {group}"] = (sum(s.names_right for s in chosen), sum(s.names_checked for s in chosen))
    return figures


def vb_figures(rows: Sequence[dict], label: str) -> dict[str, Figure]:
    """The VB figures of one package from the scoring scripts' rows."""
    return {
        f"{label}: discs found (8 mm)": (sum(r["found"] for r in rows), sum(r["discs"] for r in rows)),
        f"{label}: false levels": (sum(r["false"] for r in rows), 0),
        f"{label}: names right": (sum(r["names_right"] for r in rows), sum(r["names_matched"] for r in rows)),
        f"{label}: region lumbar": (sum(r["region"] == "lumbar" for r in rows), len(rows)),
    }


def package_figures(package, vb2_dir: Path | None, vb1_dir: Path | None) -> dict[str, Figure]:
    figures = holdout_figures(evaluate_real(lambda _name: package, CATALOGUE, use="holdout"))
    if vb2_dir is not None:
        figures.update(vb_figures([vb2.score(vb2_dir / f"{n}.mat", package) for n in VB2_SCANS], "VB2"))
    if vb1_dir is not None:
        figures.update(vb_figures([vb1.score(vb1_dir / f"{n}.mat", package) for n in VB1_SCANS], "VB1"))
    return figures


def show(figure: Figure) -> str:
    count, out_of = figure
    return f"{count}/{out_of}" if out_of else str(count)


def table(columns: dict[str, dict[str, Figure]]) -> str:
    """A Markdown table: one row per figure, one column per package, then the sum and the range."""
    names = list(columns)
    rows = list(next(iter(columns.values())))
    lines = ["| figure | " + " | ".join(names) + " | sum | range |",
             "|---|" + "---|" * (len(names) + 2)]
    for row in rows:
        values = [columns[name][row] for name in names]
        total = (sum(v[0] for v in values), sum(v[1] for v in values))
        low, high = min(v[0] for v in values), max(v[0] for v in values)
        lines.append(f"| {row} | " + " | ".join(show(v) for v in values) + f" | {show(total)} | {low}-{high} |")
    return "\n".join(lines)


def main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("packages", nargs="+", help="model package folders, or 'default' for the embedded one")
    parser.add_argument("--vb2", type=Path, help="folder of VB2's .mat files")
    parser.add_argument("--vb1", type=Path, help="folder of VB1's .mat files")
    args = parser.parse_args(argv)
    for folder, wanted in ((args.vb2, VB2_SCANS), (args.vb1, VB1_SCANS)):
        missing = [n for n in wanted if folder is not None and not (folder / f"{n}.mat").is_file()]
        if missing:
            parser.error(f"{folder} lacks {', '.join(n + '.mat' for n in missing)}: fetch JonathanRamos/fastcleverseg "
                         "at b476612c and give its VB2 or VB1 Isotropic/Matlab folder")
    columns = {}
    for given in args.packages:
        package = load_default_package() if given == "default" else load_package(Path(given))
        name = given if given == "default" else Path(given).name
        # two folders of one name (seed0/tptbox_ct, seed1/tptbox_ct) keep a column each
        columns[given if name in columns else name] = package_figures(package, args.vb2, args.vb1)
    print(table(columns))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
