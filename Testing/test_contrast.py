"""A T1 study is told apart from the T2 the model reads, on synthetic slices and on real scans."""

import numpy as np
import pytest
import SimpleITK as sitk

from conftest import DATA
from SpineStenosisGraderLib.inference.contrast import MIN_SLICES, canal_core_share, t1_warning
from SpineStenosisGraderLib.inference.levels import SliceCanal
from SpineStenosisGraderLib.packages.package import load_default_package
from SpineStenosisGraderLib.pipeline import grade_stack
from SpineStenosisGraderLib.study.volume import to_axial_stack
from SpineStenosisGraderLib.training.annotations import load_scans
from SpineStenosisGraderLib.training.matlab_volume import read_matlab_volume

#: VB1's scans are stored as fastcleverseg's lumbar scans are (``scans.json``): feet to head, front to back, 1 mm
VB1_GEOMETRY = {"array_axes": ["inferior", "posterior", "left"], "spacing_mm": [1.0, 1.0, 1.0]}
BOX = (50.0, 50.0, 70.0, 66.0)  # (i0, j0, i1, j1): a canal 20 x 16 mm in the middle of the slice


def canal_slices(n, canal_value, around_value):
    """``n`` 1 mm slices of tissue at ``around_value``; the canal, 16 x 12 px at ``canal_value``, lies inside BOX."""
    array = np.full((n, 120, 120), float(around_value), np.float32)
    array[:, 52:64, 52:68] = canal_value
    image = sitk.GetImageFromArray(array)
    return to_axial_stack(image)


def test_the_canal_middle_outshines_its_ring_on_t2_and_not_on_t1():
    bright = canal_slices(3, 400.0, 100.0).array[1]  # T2: CSF 400 in tissue 100
    dark = canal_slices(3, 30.0, 300.0).array[1]  # T1: CSF 30 in fat and marrow 300
    # the ring (the box and 8 mm around, 36 x 32 px) is mostly tissue, so its median is the tissue's value
    assert canal_core_share(bright, BOX, (1.0, 1.0)) == pytest.approx(4.0)
    assert canal_core_share(dark, BOX, (1.0, 1.0)) == pytest.approx(0.1)


def test_a_study_whose_canal_is_dark_is_taken_for_a_t1_and_one_with_bright_csf_is_not():
    dark = canal_slices(12, 30.0, 300.0)
    canals = [SliceCanal(k, BOX, 0.9, 0.1) for k in range(12)]
    warning = t1_warning(dark, canals)
    assert warning and "T1-weighted" in warning and "axial T2" in warning and "12 slices" in warning
    assert t1_warning(canal_slices(12, 400.0, 100.0), canals) is None
    # too few tracked slices to judge by, and slices without a canal, say nothing
    assert t1_warning(dark, canals[:MIN_SLICES - 1] + [None] * 8) is None
    # a canal only a little darker than around it is still a T1: the threshold is where the CSF stops
    # being the brightest, not a margin below it
    assert t1_warning(canal_slices(12, 0.95 * 300.0, 300.0), canals) is not None
    assert t1_warning(canal_slices(12, 1.05 * 300.0, 300.0), canals) is None


def test_a_real_lumbar_t1_is_located_not_graded_and_says_to_load_the_t2():
    # VB1 scan 10 (fastcleverseg, never trained on): a sagittal T1 of a lumbar spine with spondylolisthesis,
    # graded as its axial reformat. Its canal middle reads 0.52 of the tissue around it (every real T2 and
    # T2* checked: 1.46-4.41). Without the check it is called lumbar and graded L5-S1 ... as a T2
    path = DATA / "fastcleverseg_vb1" / "10.mat"
    stack = to_axial_stack(read_matlab_volume(path, "I", VB1_GEOMETRY), str(path))
    package = load_default_package()
    result = grade_stack(stack, package)
    warnings = [w for w in result.warnings if "T1-weighted" in w]
    assert len(warnings) == 1 and "not graded" in warnings[0] and "--allow-model-mismatch" in warnings[0]
    assert result.levels and all(level.grade is None for level in result.levels)
    # the levels are lumbar, which the package grades: no warning says it grades other regions only
    assert not any("grades lumbar levels only" in w for w in result.warnings)
    anyway = grade_stack(stack, package, allow_model_mismatch=True)
    assert anyway.levels and all(level.grade is not None for level in anyway.levels)
    assert any("Graded anyway" in w for w in anyway.warnings)


def test_no_real_t2_or_t2_star_scan_is_taken_for_a_t1():
    # one of each kind of MR scan in the catalogue: a lumbar T2 crop, a lumbar fast spin-echo T2 reformat, a
    # cervical T2 crop, a whole neck and a 7.5 mm axial T2* (the lowest of all, 1.74; every catalogue MR scan
    # reads 1.74-4.41, measured with the default package)
    package = load_default_package()
    names = ("tptbox_mri", "fastcleverseg_ivd_11", "sct_cervical_t2", "sct_errsm_18_t2", "sct_errsm_18_gre")
    mr = [scan for scan in load_scans(DATA / "scans.json") if scan.name in names]
    assert len(mr) == len(names)
    for scan in mr:
        result = grade_stack(scan.stack, package, modality="MR")
        assert not [w for w in result.warnings if "T1-weighted" in w], scan.name
        assert all(level.grade is not None for level in result.levels if level.region == "lumbar"), scan.name
