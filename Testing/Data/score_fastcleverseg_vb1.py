"""Score the default package on the lumbar T2 scans of fastcleverseg's VB1 set, which are not copied here.

VB1 (Chu et al., PLoS ONE 2015, as fastcleverseg shares it resampled to 1 mm)
mixes T1, T2 and TIRM scans of patients: fractures, spondylolisthesis,
scoliosis. Only its T2 scans are scored, as the tool grades T2 and not T1:
03, 07, 11, 12, 15, 16 and 17 (the CSF behind the labelled bodies is 2.4 to
3.6 times as bright as their marrow; on 02, 06, 08 and 10 it is 0.8 to 1.2
times, T1). 02/03, 06/07/08 and 10/11 look like the same patients' anatomy
in other sequences.

Each scan is read as ``score_fastcleverseg_vb2.py`` reads VB2 and graded as
a user would. The labels are 7 to 9 vertebral bodies in no anatomical order.
The lowest is S1 on 03, 07, 11, 12, 15 and 16 (read from the images: the
sacrum continues below it), so every disc from L5-S1 up has a reference: the
middle of the gap between two consecutive bodies. On 17 (scoliosis) the
lowest body cannot be told from the slab, so its discs are scored and its
names are not. A level more than 10 mm from every disc is false, except
above the highest labelled disc (more discs lie there, unlabelled).

Usage, after fetching JonathanRamos/fastcleverseg at b476612c::

    .venv/bin/python Testing/Data/score_fastcleverseg_vb1.py REPO/ImageDatasets/VBs/VB1/Isotropic/Matlab/03.mat ...

``--model PACKAGE_DIR`` first scores that package instead of the embedded one.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "SpineStenosisGrader"))

from score_fastcleverseg_vb2 import gap_middles, main, read_scan  # noqa: E402
from SpineStenosisGraderLib.pipeline import grade_stack  # noqa: E402
from SpineStenosisGraderLib.training.evaluation import (  # noqa: E402
    DISC_FOUND_MM, FALSE_LEVEL_MM, above_the_labelled_discs, match_levels)

#: the bodies from the lowest labelled one up, where that one is S1
BODIES_FROM_S1 = ["S1", "L5", "L4", "L3", "L2", "L1", "T12", "T11", "T10", "T9"]
#: the T2 scans whose lowest labelled body is S1
LOWEST_IS_S1 = {"03", "07", "11", "12", "15", "16"}
#: a disc counts when it lies at least this far inside the study, as in ``evaluate``
INSIDE_MM = 4.0


def score(path: Path, package) -> dict:
    stack, extents = read_scan(path)
    dz = stack.spacing[2]
    named = path.stem in LOWEST_IS_S1
    names = BODIES_FROM_S1 if named else [f"body {i + 1}" for i in range(len(extents))]
    discs = {f"{names[i + 1]}-{names[i]}": k for i, k in enumerate(gap_middles(extents))}
    inside = [k for k in discs.values() if INSIDE_MM <= k * dz and INSIDE_MM <= (stack.n_slices - 1 - k) * dz]
    result = grade_stack(stack, package, modality="MR")
    levels = [(level.name, level.slice_index) for level in result.levels]
    found = len(match_levels([float(k) for _, k in levels], inside, DISC_FOUND_MM / dz))
    false, matched, right = 0, 0, 0
    for name, k in levels:
        if above_the_labelled_discs(k, list(discs.values()), dz):
            continue  # discs no label marks
        nearest = min(discs, key=lambda disc: abs(discs[disc] - k))
        distance = abs(discs[nearest] - k) * dz
        false += int(distance > FALSE_LEVEL_MM)
        if named and distance <= DISC_FOUND_MM:
            matched += 1
            right += int(name == nearest)
    return {"scan": path.stem, "region": result.study.region, "discs": len(inside), "found": found,
            "false": false, "names_matched": matched, "names_right": right}


if __name__ == "__main__":
    main(sys.argv[1:], score)
