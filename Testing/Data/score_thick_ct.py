"""Score the default package on CT in thick slices: 4-6 mm versions of the real CT scans here, and a clinical 5 mm CT.

Thick versions: each CT of ``scans.json`` with disc positions (the two VerSe
scans at 4 and 5 mm, the two neck CTs at 4.5 and 6 mm, the README's sample at
6 mm), its slices averaged at two offsets (``series_variants.thicken``), its
discs carried over in patient space and scored as ``evaluate`` scores a
series: a disc at least 4 mm inside found within 8 mm, a level more than
10 mm from every disc false. The sample is a training scan: its rows say so.

``--clinical-ct REPO`` adds a plain CT of the abdomen in 5 mm slices (T11-L5)
from willlee1995/oppoCT at 769005919740cc69 (its DICOM in ``Plain5mmSTD/``),
whose discs are the middles of the gaps between the vertebral bodies that
TotalSegmentator predicted for it (``out/ANNOY/segmentations/vertebrae_*_body.nii.gz``
at e49e8af4). It states no licence, so it is not copied here.

Usage::

    .venv/bin/python Testing/Data/score_thick_ct.py [--model PACKAGE_DIR] [--clinical-ct REPO]
"""

import sys
from pathlib import Path

import numpy as np
import SimpleITK as sitk

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "SpineStenosisGrader"))

from SpineStenosisGraderLib.packages.package import load_default_package, load_package  # noqa: E402
from SpineStenosisGraderLib.pipeline import grade_stack  # noqa: E402
from SpineStenosisGraderLib.study.volume import AxialStack, to_axial_stack  # noqa: E402
from SpineStenosisGraderLib.training.annotations import BODY_EXTENT_SHARE, load_scans  # noqa: E402
from SpineStenosisGraderLib.training.evaluation import score_levels  # noqa: E402
from SpineStenosisGraderLib.training.series_variants import disc_slices_in, thicken  # noqa: E402

#: the scans here and the slice thicknesses (mm) of their versions
THICK_VERSIONS = {"verse012_ct": (4.0, 5.0), "verse014_ct": (4.0, 5.0), "totalseg_s0002_ct": (4.5, 6.0),
                  "totalseg_s0003_ct": (4.5, 6.0), "totalsegmentator_ct": (6.0,)}
#: the clinical CT's labelled bodies, the lowest first
CLINICAL_BODIES = ["L5", "L4", "L3", "L2", "L1", "T12", "T11"]


def score_stack(name: str, stack: AxialStack, discs: dict[str, float], package, above: int = 0,
                below: int = 0) -> dict:
    result = grade_stack(stack, package, modality="CT")
    levels = [float(level.slice_index) for level in result.levels]
    inside, found, false = score_levels(levels, sorted(discs.values()), stack.n_slices, stack.spacing[2], above,
                                        below)
    return {"series": name, "region": result.study.region, "discs_inside": inside, "found": found, "false": false,
            "levels": [f"{level.name}@{level.slice_index}" for level in result.levels]}


def clinical_ct(repo: Path) -> tuple[AxialStack, dict[str, float]]:
    """The clinical CT's stack and its discs (slice indices): the middle of the gap between consecutive bodies."""
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(repo / "Plain5mmSTD")))
    image = reader.Execute()
    stack = to_axial_stack(image, "oppoCT Plain5mmSTD")
    spans = []
    for body in CLINICAL_BODIES:
        mask = sitk.ReadImage(str(repo / "out" / "ANNOY" / "segmentations" / f"vertebrae_{body}_body.nii.gz"))
        # the masks are stored on another grid (flipped front to back): resampled in patient space
        mask = sitk.GetArrayFromImage(sitk.Resample(mask, image, sitk.Transform(), sitk.sitkNearestNeighbor, 0))
        profile = (mask > 0).sum(axis=(1, 2)).astype(float)
        ks = np.nonzero(profile >= BODY_EXTENT_SHARE * profile.max())[0]
        ends = [image.TransformContinuousIndexToPhysicalPoint((0.0, 0.0, float(k))) for k in (ks.min(), ks.max())]
        spans.append(sorted(stack.lps_to_index(np.array(ends))[:, 2]))
    discs = {f"{CLINICAL_BODIES[i + 1]}-{CLINICAL_BODIES[i]}": (spans[i][1] + spans[i + 1][0]) / 2.0
             for i in range(len(spans) - 1)}
    return stack, discs


def main(args: list[str]) -> None:
    package = load_default_package()
    if args[:1] == ["--model"]:
        package, args = load_package(Path(args[1])), args[2:]
    rows = []
    if args[:1] == ["--clinical-ct"]:
        stack, discs = clinical_ct(Path(args[1]))
        rows.append(score_stack("clinical CT, 5 mm", stack, discs, package))
    scans = {scan.name: scan for scan in load_scans(Path(__file__).resolve().parent / "scans.json")}
    for name, thicknesses in THICK_VERSIONS.items():
        scan = scans[name]
        for thickness in thicknesses:
            for offset in (0, 1):
                stack = thicken(scan.stack, thickness, offset)
                rows.append(score_stack(f"{name}, {thickness:.1f} mm, offset {offset}", stack,
                                        disc_slices_in(scan.stack, stack, scan.discs), package,
                                        scan.more_discs_above, scan.more_discs_below))
    for row in rows:
        print(row)
    total = {key: sum(row[key] for row in rows) for key in ("discs_inside", "found", "false")}
    print({"series": len(rows), **total})


if __name__ == "__main__":
    main(sys.argv[1:])
