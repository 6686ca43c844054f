"""Modality detection, intensity windows, and the exact mapping between model canvas and stack."""

import numpy as np
import pytest
import SimpleITK as sitk
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import DATA
from SpineStenosisGraderLib.training.annotations import load_scans

from SpineStenosisGraderLib.errors import InputError
from SpineStenosisGraderLib.study.normalise import (
    DIM_STUDY_SHARE,
    FAINT_SLICE_SHARE,
    TYPICAL_SLICE_SHARE,
    SliceGrid,
    detect_modality,
    intensity_window,
    normalised_canvas,
    sample_patch,
    slice_gains,
)
from SpineStenosisGraderLib.study.volume import to_axial_stack


@pytest.fixture(scope="module")
def scans():
    return load_scans(DATA / "scans.json")


def test_modality_is_detected_from_intensities_on_real_scans(scans):
    for scan in scans:
        assert detect_modality(scan.stack) == scan.modality, scan.name


def test_dicom_modality_wins_and_the_user_overrides_both(scans):
    stack = scans[0].stack
    stack.dicom_modality = "MR"
    try:
        assert detect_modality(stack) == "MR"
        assert detect_modality(stack, "ct") == "CT"
    finally:
        stack.dicom_modality = None
    with pytest.raises(InputError, match="CT or MR"):
        detect_modality(stack, "PET")


def test_windows_put_csf_and_bone_apart_on_ct(scans):
    scan = next(s for s in scans if s.name == "totalsegmentator_ct")
    window = intensity_window(scan.stack.array, "CT")
    canal = window.apply(np.asarray(scan.stack.array)[scan.canal > 0])
    assert 0.05 < np.median(canal) < 0.3
    assert window.apply(np.array([1200.0]))[0] == 1.0


def test_mr_window_is_the_1st_to_99_5th_percentile_of_the_tissue_not_the_air():
    # half of every slice is air (0); the tissue is the ramp 1 ... 1000, so by hand (linear interpolation)
    # the 1st percentile is 1 + 0.01 * 999 = 10.99 and the 99.5th is 1 + 0.995 * 999 = 995.005
    ramp = np.arange(1.0, 1001.0)
    volume = np.tile(np.concatenate([np.zeros(1000), ramp]).reshape(1, 40, 50), (24, 1, 1))
    window = intensity_window(volume, "MR")
    assert (window.low, window.high) == pytest.approx((10.99, 995.005), abs=1e-9)
    assert window.apply(np.array([0.0, 10.99, 503.0, 995.005, 2000.0])).tolist() == pytest.approx(
        [0.0, 0.0, (503.0 - 10.99) / (995.005 - 10.99), 1.0, 1.0])


def test_mr_window_puts_the_csf_of_a_t2_scan_in_its_upper_half(scans):
    scan = next(s for s in scans if s.name == "sct_cervical_t2")
    window = intensity_window(scan.stack.array, "MR")
    values = window.apply(scan.stack.array)
    assert values.min() >= 0.0 and values.max() <= 1.0
    csf = values[scan.canal > 0]
    assert np.percentile(csf, 90) > 0.6 > np.median(values)  # bright CSF, above most of the slice


def coil_falloff_stack(brightness):
    """A T2-like trunk (tissue 100, a bright canal 400 of 12 mm, air around), each slice scaled by ``brightness``."""
    n = len(brightness)
    array = np.zeros((n, 120, 120), np.float32)
    jj, ii = np.mgrid[:120, :120]
    array[:, (jj - 60) ** 2 + (ii - 60) ** 2 < 50 ** 2] = 100.0
    canal = (jj - 60) ** 2 + (ii - 60) ** 2 < 6 ** 2
    array[:, canal] = 400.0
    array *= np.asarray(brightness, np.float32)[:, None, None]
    image = sitk.GetImageFromArray(array)
    image.SetSpacing((1.0, 1.0, 2.0))
    return to_axial_stack(image), canal


def test_slices_faint_from_the_coils_fall_off_are_lifted_to_the_typical_slice():
    # the lowest 20 of 60 slices fall off to a fifth of the brightness, as a whole neck does towards the chest
    brightness = np.concatenate([np.linspace(0.2, 1.0, 20), np.ones(40)])
    stack, canal = coil_falloff_stack(brightness)
    gains = slice_gains(stack, "MR")
    assert np.all(gains[20:] == 1.0)
    # lifted to FAINT_SLICE_SHARE of the typical slice (the median filter keeps the ramp's middle exact)
    assert gains[5:15] * brightness[5:15] == pytest.approx(np.full(10, FAINT_SLICE_SHARE), rel=1e-5)
    canvas, grid = normalised_canvas(stack, "MR", 128, 1.0)
    centre = canvas[:, 64, 64]
    # the canal of the faint slices is near as bright on the canvas as on the typical slice (1.0), where
    # without the gain it would sit at a fifth of its raw value, near the window's low end (0.1)
    assert centre[40] == 1.0
    assert centre[2] > 0.75


@settings(max_examples=20, deadline=None)
@given(wobble=st.lists(st.floats(0.9, 1.1), min_size=8, max_size=40))
def test_an_evenly_lit_study_and_a_ct_are_windowed_exactly_as_without_the_gain(wobble):
    # slice brightness varying by 10% either way is anatomy, not fall-off: nothing is lifted. (No slice is
    # then below 0.9 / 1.1 = 0.82 of another, above FAINT_SLICE_SHARE; with 15% a slice at 0.85 among slices
    # at 1.15 is 0.74 of the median, and is lifted, as it should be.)
    stack, _ = coil_falloff_stack(wobble)
    assert np.all(slice_gains(stack, "MR") == 1.0)
    canvas, grid = normalised_canvas(stack, "MR", 128, 1.0)
    expected = grid.resample(intensity_window(stack.array, "MR").apply(stack.array), fill=0.0)
    assert np.array_equal(canvas, expected)
    assert np.all(slice_gains(stack, "CT") == 1.0)


def test_the_real_training_scans_need_no_gain_and_a_whole_necks_faint_chest_end_does(scans):
    for name in ("tptbox_mri", "sct_cervical_t2"):
        stack = next(s for s in scans if s.name == name).stack
        assert np.all(slice_gains(stack, "MR") == 1.0), name
    neck = next(s for s in scans if s.name == "sct_errsm_21_t2").stack
    gains = slice_gains(neck, "MR")
    assert gains[:10].min() > 1.5 and np.all(gains[100:] == 1.0)  # slices run from the chest up to the head



def test_a_study_whose_window_a_few_slices_of_bright_fat_set_is_lifted_as_a_whole():
    # 60 evenly lit slices (tissue 100, canal 400); on 8 of them a lump of fat against the coil at 4000 (as on
    # two VB1 lumbar T2 scans), which takes the window's 99.5th percentile, so the canal sits at a tenth of it
    array = np.array(coil_falloff_stack(np.ones(60))[0].array)
    array[20:28, 100:112, 40:80] = 4000.0
    image = sitk.GetImageFromArray(array)
    image.SetSpacing((1.0, 1.0, 2.0))
    stack = to_axial_stack(image)
    window = intensity_window(stack.array, "MR")
    assert window.high == 4000.0
    assert np.all(slice_gains(stack, "MR") == 1.0)  # no slice is faint next to the others
    gains = slice_gains(stack, "MR", window.high)
    # the typical slice's bright tissue (the canal, 400) is lifted to TYPICAL_SLICE_SHARE of the window
    assert gains * 400.0 == pytest.approx(np.full(60, TYPICAL_SLICE_SHARE * 4000.0), rel=1e-6)
    canvas, grid = normalised_canvas(stack, "MR", 128, 1.0)
    # the canal is near the window's top on the canvas, where without the lift it would read about 0.08
    assert canvas[40, 64, 64] == pytest.approx((TYPICAL_SLICE_SHARE * 4000.0 - window.low)
                                               / (window.high - window.low), rel=1e-5)
    assert canvas[40, 64, 64] > 0.75


def test_no_real_mr_scan_that_grades_is_lifted_as_a_whole(scans):
    # every MR scan of the catalogue (training and validation) keeps its window: the study lift starts at
    # DIM_STUDY_SHARE, below all of them
    checked = 0
    for scan in scans:
        if scan.modality != "MR":
            continue
        window = intensity_window(scan.stack.array, "MR")
        assert np.array_equal(slice_gains(scan.stack, "MR", window.high), slice_gains(scan.stack, "MR")), scan.name
        checked += 1
    assert checked >= 8 and DIM_STUDY_SHARE < 0.6

def make_stack(ni, nj, si, sj):
    array = np.zeros((3, nj, ni), np.float32)
    array[1, nj // 2, ni // 2] = 1.0  # not blank
    image = sitk.GetImageFromArray(array)
    image.SetSpacing((si, sj, 2.0))
    return to_axial_stack(image)


@settings(max_examples=25, deadline=None)
@given(ni=st.integers(40, 300), nj=st.integers(40, 300), si=st.floats(0.3, 3.0), aspect=st.floats(0.5, 2.0),
       box=st.tuples(st.floats(0, 1), st.floats(0, 1), st.floats(0, 1), st.floats(0, 1)))
def test_canvas_and_stack_boxes_are_inverse(ni, nj, si, aspect, box):
    sj = si * aspect
    grid = SliceGrid.for_stack(make_stack(ni, nj, si, sj), 256, 1.25)
    b = np.array([box[0] * ni, box[1] * nj, box[2] * ni, box[3] * nj])
    assert np.allclose(grid.to_stack(grid.to_canvas(b)), b)


@pytest.mark.parametrize("si,sj", [(0.5, 0.5), (0.8, 1.1), (3.0, 3.0), (1.25, 1.25)])
def test_a_square_lands_where_the_grid_says(si, sj):
    ni, nj = 200, 180
    stack_slice = np.zeros((1, nj, ni), np.float32)
    i0, j0, i1, j1 = 80, 100, 120, 130
    stack_slice[0, j0:j1, i0:i1] = 1.0
    stack = make_stack(ni, nj, si, sj)
    grid = SliceGrid.for_stack(stack, 256, 1.25)
    canvas = grid.resample(stack_slice)[0]
    jj, ii = np.nonzero(canvas > 0.5)
    found = grid.to_stack(np.array([ii.min(), jj.min(), ii.max() + 1, jj.max() + 1]))[0]
    tolerance = max(1.25 / si, 1.25 / sj) + 0.5
    assert np.all(np.abs(found - [i0, j0, i1, j1]) <= tolerance)


@settings(max_examples=20, deadline=None)
@given(angle=st.floats(-0.3, 0.3), flip=st.booleans(), spacing=st.floats(0.3, 1.5))
def test_patch_geometry_maps_a_box_onto_its_pixels(angle, flip, spacing):
    image = np.zeros((200, 220), np.float32)
    box = (90, 70, 120, 96)
    image[box[1]:box[3], box[0]:box[2]] = 1.0
    patch, geometry = sample_patch(image, (0.7, 0.7), (105.0, 83.0), 96, spacing, angle, flip)
    corners = geometry.to_patch(np.array([[box[0], box[1]], [box[2], box[1]], [box[0], box[3]], [box[2], box[3]]]))
    mapped = np.concatenate([corners.min(axis=0), corners.max(axis=0)])
    vv, uu = np.nonzero(patch > 0.5)
    found = np.array([uu.min(), vv.min(), uu.max() + 1, vv.max() + 1])
    tolerance = 0.7 / spacing * 1.0 + 1.5
    # the rotated square's bounds lie inside the mapped box, and fill it up to a pixel or two
    assert np.all(found[:2] >= mapped[:2] - tolerance) and np.all(found[2:] <= mapped[2:] + tolerance)


@settings(max_examples=20, deadline=None)
@given(angle=st.floats(-0.3, 0.3), flip=st.booleans())
def test_a_rotated_round_canal_keeps_its_box_size(angle, flip):
    """Training targets under rotation: a disc's box stays the disc's box, not the rotated square's bounds."""
    jj, ii = np.mgrid[0:200, 0:200]
    disc = (((ii + 0.5 - 100) / 15) ** 2 + ((jj + 0.5 - 90) / 10) ** 2 <= 1).astype(np.float32)
    box = (85, 80, 115, 100)
    patch, geometry = sample_patch(disc, (1.0, 1.0), (100.0, 90.0), 120, 1.0, angle, flip)
    vv, uu = np.nonzero(patch > 0.5)
    found = np.array([uu.min(), vv.min(), uu.max() + 1, vv.max() + 1])
    assert np.all(np.abs(geometry.rounded_box_to_patch(box) - found) <= 1.5)
