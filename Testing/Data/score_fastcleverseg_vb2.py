"""Score the default package on the lumbar T2 scans of fastcleverseg's VB2 set, which are not copied here.

Each scan (a MATLAB file: the image ``I`` and the labels ``GT`` of the seven
vertebral bodies T11-L5, in no anatomical order) is read as the catalogue
reads the lumbar validation scans (``scans.json``, ``fastcleverseg_ivd_*``)
and graded as a user would. A disc's reference is the middle of the gap
between two consecutive bodies (each body spans the slices where its cut is
at least a quarter of its largest): T11-T12 to L4-L5. L5-S1 has no labelled
body below it: a level less than 10 mm below L4-L5's reference is L4-L5's, one
from there down to 12 mm below L5's body is taken as L5-S1 and not scored, and
one lower is false. Levels more than 10 mm above T11-T12 are not scored.

Usage, after fetching JonathanRamos/fastcleverseg at b476612c::

    .venv/bin/python Testing/Data/score_fastcleverseg_vb2.py REPO/ImageDatasets/VBs/VB2/Isotropic/Matlab/02.mat ...

``--model PACKAGE_DIR`` first scores that package instead of the embedded one.
"""

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "SpineStenosisGrader"))

from SpineStenosisGraderLib.packages.package import load_default_package, load_package  # noqa: E402
from SpineStenosisGraderLib.pipeline import grade_stack  # noqa: E402
from SpineStenosisGraderLib.study.volume import to_axial_stack  # noqa: E402
from SpineStenosisGraderLib.training.annotations import BODY_EXTENT_SHARE  # noqa: E402
from SpineStenosisGraderLib.training.evaluation import (  # noqa: E402
    DISC_FOUND_MM, FALSE_LEVEL_MM, above_the_labelled_discs, match_levels)
from SpineStenosisGraderLib.training.matlab_volume import read_matlab_volume  # noqa: E402

#: as for the lumbar validation scans: rows from head to feet, columns from front to back, 1 mm
GEOMETRY = {"array_axes": ["inferior", "posterior", "left"], "spacing_mm": [1.0, 1.0, 1.0]}
BODIES = ["L5", "L4", "L3", "L2", "L1", "T12", "T11"]
#: how far below L5's body a level may lie and still be L5-S1
L5_S1_BELOW_BODY_MM = 12.0


def read_scan(path: Path):
    """The axial stack, and each labelled body's (middle, lowest, highest) slice, the lowest body first."""
    stack = to_axial_stack(read_matlab_volume(path, "I", GEOMETRY), str(path))
    labels = to_axial_stack(read_matlab_volume(path, "GT", GEOMETRY), "labels").array
    extents = []
    for value in np.unique(labels[labels > 0]):
        profile = (labels == value).sum(axis=(1, 2)).astype(float)
        k = np.nonzero(profile >= BODY_EXTENT_SHARE * profile.max())[0]
        extents.append((k.mean(), k.min(), k.max()))
    return stack, sorted(extents)  # slices run from the feet up


def gap_middles(extents) -> list[float]:
    """The middle of the gap between each two consecutive bodies of ``read_scan``, the lowest first: the discs."""
    return [(below[2] + above[1]) / 2.0 for below, above in zip(extents, extents[1:])]


def score(path: Path, package) -> dict:
    stack, extents = read_scan(path)
    if len(extents) != len(BODIES):
        raise SystemExit(f"{path.name}: {len(extents)} labelled bodies, not the {len(BODIES)} of T11-L5")
    discs = {f"{BODIES[i + 1]}-{BODIES[i]}": k for i, k in enumerate(gap_middles(extents))}
    dz = stack.spacing[2]
    result = grade_stack(stack, package, modality="MR")
    levels = [(level.name, level.slice_index) for level in result.levels]
    # matched as `evaluate` matches them: one to one, closest pairs first
    found = len(match_levels([float(k) for _, k in levels], list(discs.values()), DISC_FOUND_MM / dz))
    false, matched, right = 0, 0, 0
    lowest = min(discs.values())
    for name, k in levels:
        if above_the_labelled_discs(k, list(discs.values()), dz):
            continue  # above T11-T12: discs no label marks
        if (lowest - k) * dz > FALSE_LEVEL_MM and (extents[0][1] - k) * dz <= L5_S1_BELOW_BODY_MM:
            continue  # where L5-S1 lies
        nearest = min(discs, key=lambda disc: abs(discs[disc] - k))
        distance = abs(discs[nearest] - k) * dz
        false += int(distance > FALSE_LEVEL_MM)
        if distance <= DISC_FOUND_MM:
            matched += 1
            right += int(name == nearest)
    return {"scan": path.stem, "region": result.study.region, "discs": len(discs), "found": found,
            "false": false, "names_matched": matched, "names_right": right}


def main(paths: list[str], score=score) -> None:
    """Score each scan with ``score`` and print the rows and their totals (``--model DIR`` first: that package)."""
    if paths[:1] == ["--model"]:
        package, paths = load_package(Path(paths[1])), paths[2:]
    else:
        package = load_default_package()
    rows = [score(Path(p), package) for p in paths]
    for row in rows:
        print(row)
    total = {key: sum(row[key] for row in rows) for key in ("discs", "found", "false", "names_matched", "names_right")}
    regions = {region: sum(row["region"] == region for row in rows) for region in {row["region"] for row in rows}}
    print({"scans": len(rows), **total, "regions": regions})


if __name__ == "__main__":
    main(sys.argv[1:])
