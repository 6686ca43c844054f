"""A CT canal box beside the middle of the body (a tube the tracking followed in a hip bone) is no canal."""

import numpy as np
import pytest
import SimpleITK as sitk
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import DATA
from SpineStenosisGraderLib.inference.levels import SliceCanal
from SpineStenosisGraderLib.inference.on_spine import (MAX_OFF_MIDLINE_MM, body_middle, boxes_off_the_spine,
                                                       off_spine_warning, slice_middle)
from SpineStenosisGraderLib.packages.package import load_default_package
from SpineStenosisGraderLib.pipeline import grade_image
from SpineStenosisGraderLib.study.volume import to_axial_stack

SAMPLE = DATA / "totalsegmentator_ct" / "example_ct.nii.gz"


def trunk_ct(middle, fov=400, slices=6, cut_left_mm=0, bone=True, one_sided=()):
    """A CT of a trunk whose skeleton is symmetric about column ``middle`` (1 mm pixels).

    A vertebral body in the middle and a hip bone 90-120 mm to either side, in soft tissue 300 mm across; the field
    of view's first ``cut_left_mm`` columns are cut away, so the soft tissue may run out of the field on one side.
    On the slices ``one_sided`` a large bone lies 60-140 mm to one side alone.
    """
    j, i = np.mgrid[0:fov, 0:fov]
    x = i + 0.5 - middle
    volume = np.where((x / 150.0) ** 2 + ((j - fov / 2) / 100.0) ** 2 <= 1.0, 40.0, -1000.0)
    if bone:
        volume[(np.abs(x) <= 22) & (j >= 170) & (j < 205)] = 500.0
        volume[(np.abs(x) >= 90) & (np.abs(x) <= 120) & (j >= 180) & (j < 260)] = 600.0
    volumes = np.repeat(volume[None], slices, 0)
    for k in one_sided:
        volumes[k][(x >= 60) & (x <= 140) & (j >= 120) & (j < 280)] = 700.0
    image = sitk.GetImageFromArray(volumes[:, :, cut_left_mm:].astype(np.float32))
    image.SetSpacing((1.0, 1.0, 3.0))
    return to_axial_stack(image)


def box_at(k, centre):
    return SliceCanal(k, (centre - 8.0, 210.0, centre + 8.0, 226.0), 0.9, 0.1)


@settings(max_examples=25, deadline=None)
@given(st.integers(-40, 40), st.floats(0.0, 44.0), st.floats(46.0, 90.0), st.sampled_from([-1, 1]))
def test_boxes_more_than_the_limit_beside_the_middle_of_the_body_are_off_the_spine(shift, near, far, side):
    # wherever the patient lies in the field, a box within 45 mm of the skeleton's middle is the canal and one
    # further aside is not, on either side
    middle = 200 + shift
    stack = trunk_ct(middle)
    canals = [box_at(0, middle), box_at(1, middle + side * near), box_at(2, middle - side * far),
              None, box_at(4, middle + side * far), box_at(5, middle)]
    # to a bin of the bone's columns (2.5 mm)
    assert body_middle(stack, canals) == pytest.approx(middle, abs=1.5)
    off = boxes_off_the_spine(stack, canals)
    assert sorted(off) == [2, 4]
    assert off[2] == pytest.approx(far, abs=1.5)


@pytest.mark.parametrize("cut_left_mm", [0, 60, 95, 100])
def test_the_middle_is_the_skeletons_where_the_field_of_view_cuts_the_body_on_one_side(cut_left_mm):
    # soft tissue 300 mm across about column 200: a field starting 60 mm in cuts it on the left, one starting
    # 95-100 mm in cuts half to two thirds of the left hip bone away too (where a product of the bone counts would
    # mirror the spine onto the right hip). The middle stays the skeleton's, in the cut image's columns
    stack = trunk_ct(200, cut_left_mm=cut_left_mm)
    canals = [box_at(k, 200 - cut_left_mm) for k in range(6)]
    assert body_middle(stack, canals) == pytest.approx(200 - cut_left_mm, abs=1.5)
    assert boxes_off_the_spine(stack, canals) == {}


def test_the_middle_is_the_median_of_the_slices_so_a_few_with_one_sided_bone_do_not_move_it():
    # on two slices of seven a large bone lies on one side alone, and those slices' symmetry lies beside the spine
    stack = trunk_ct(200, slices=7, one_sided=(0, 3))
    assert abs(slice_middle(stack, 0) - 200) > MAX_OFF_MIDLINE_MM
    canals = [box_at(k, 200) for k in range(7)]
    assert body_middle(stack, canals) == pytest.approx(200, abs=1.5)
    assert boxes_off_the_spine(stack, canals) == {}


def test_a_slice_without_bone_tells_no_middle_and_drops_no_box():
    stack = trunk_ct(200, bone=False)
    canals = [box_at(0, 200), box_at(1, 320)]
    assert body_middle(stack, canals) is None
    assert boxes_off_the_spine(stack, canals) == {}


def test_the_warning_names_the_slices_as_runs_and_how_far_aside():
    warning = off_spine_warning({3: 82.4, 4: 83.0, 5: 80.2, 9: 51.0})
    assert "slice(s) 3-5, 9 is not on the spine" in warning
    assert "51-83 mm beside the middle of the body" in warning


@pytest.mark.parametrize("first", [15, 18, 20])
def test_a_short_ct_series_of_the_pelvis_gets_no_level_in_a_hip_bone(first):
    # 39 mm of the README's sample 40-90 mm below its L5-S1: the embedded model follows a tube in the left iliac
    # bone, 77-80 mm beside the middle of the body, and put its "L5-S1" there before. No canal is reported there now,
    # and every box left lies near the middle of the field, which the sample's pelvis fills
    image = sitk.DICOMOrient(sitk.ReadImage(str(SAMPLE)), "LPS")[:, :, first:first + 13]
    result, stack = grade_image(image, load_default_package())
    assert result.levels == []
    assert any("is not on the spine" in w and "beside the middle of the body" in w for w in result.warnings)
    for detection in result.detections:
        _, box = stack.box_to_slice(detection.box)
        assert abs((box[0] + box[2]) / 2.0 - stack.array.shape[2] / 2.0) * stack.spacing[0] <= MAX_OFF_MIDLINE_MM
