"""A CT canal box beside the middle of the body (a tube the tracking followed in a hip bone) is no canal."""

import numpy as np
import pytest
import SimpleITK as sitk
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import DATA
from SpineStenosisGraderLib.inference.levels import SliceCanal
from SpineStenosisGraderLib.inference.on_spine import (MAX_OFF_MIDLINE_MM, body_middle, boxes_off_the_spine,
                                                       off_spine_warning)
from SpineStenosisGraderLib.packages.package import load_default_package
from SpineStenosisGraderLib.pipeline import grade_image
from SpineStenosisGraderLib.study.volume import to_axial_stack

SAMPLE = DATA / "totalsegmentator_ct" / "example_ct.nii.gz"


def trunk_ct(body_centre, width_mm=300.0, fov=400, slices=6):
    """A CT of an elliptical trunk ``width_mm`` across whose middle lies at column ``body_centre`` (1 mm pixels)."""
    j, i = np.mgrid[0:fov, 0:fov]
    inside = ((i + 0.5 - body_centre) / (width_mm / 2)) ** 2 + ((j - fov / 2) / (width_mm / 3)) ** 2 <= 1.0
    image = sitk.GetImageFromArray(np.repeat(np.where(inside, 40.0, -1000.0)[None], slices, 0).astype(np.float32))
    image.SetSpacing((1.0, 1.0, 3.0))
    return to_axial_stack(image)


def box_at(k, centre):
    return SliceCanal(k, (centre - 8.0, 220.0, centre + 8.0, 236.0), 0.9, 0.1)


@settings(max_examples=25, deadline=None)
@given(st.integers(-40, 40), st.floats(0.0, 44.0), st.floats(46.0, 90.0), st.sampled_from([-1, 1]))
def test_boxes_more_than_the_limit_beside_the_middle_of_the_body_are_off_the_spine(shift, near, far, side):
    # wherever the patient lies in the field, a box within 45 mm of the body's middle is the canal and one further
    # aside is not, on either side
    middle = 200 + shift
    stack = trunk_ct(middle)
    canals = [box_at(0, middle), box_at(1, middle + side * near), box_at(2, middle - side * far),
              None, box_at(4, middle + side * far), box_at(5, middle)]
    assert body_middle(stack, canals) == pytest.approx(middle, abs=1.0)
    off = boxes_off_the_spine(stack, canals)
    assert sorted(off) == [2, 4]
    assert off[2] == pytest.approx(far, abs=1.0)


def test_a_field_of_view_narrower_than_the_body_has_its_own_middle_and_one_cut_on_one_side_none():
    # the trunk fills the field on both sides: the field is centred on the body (or on the spine)
    stack = trunk_ct(150, width_mm=400.0, fov=300)
    assert body_middle(stack, [box_at(k, 150) for k in range(6)]) == 150.0
    assert sorted(boxes_off_the_spine(stack, [box_at(0, 150), box_at(1, 150 + MAX_OFF_MIDLINE_MM + 10)])) == [1]
    # cut on the left only: the middle is not known, and no box is taken for bone beside the spine
    stack = trunk_ct(100, width_mm=300.0, fov=400)
    canals = [box_at(0, 100), box_at(1, 300)]
    assert body_middle(stack, canals) is None
    assert boxes_off_the_spine(stack, canals) == {}


def test_the_warning_names_the_slices_as_runs_and_how_far_aside():
    warning = off_spine_warning({3: 82.4, 4: 83.0, 5: 80.2, 9: 51.0})
    assert "slice(s) 3-5, 9 is not on the spine" in warning
    assert "51-83 mm beside the middle of the body" in warning


@pytest.mark.parametrize("first", [15, 18, 20])
def test_a_short_ct_series_of_the_pelvis_gets_no_level_in_a_hip_bone(first):
    # 39 mm of the README's sample 80-130 mm below its L5-S1: the embedded model follows a tube in the left iliac
    # bone, 82 mm beside the middle of the body, and put its "L5-S1" there. No canal is reported on those slices
    image = sitk.DICOMOrient(sitk.ReadImage(str(SAMPLE)), "LPS")[:, :, first:first + 13]
    result, stack = grade_image(image, load_default_package())
    assert result.levels == []
    assert any("is not on the spine" in w and "beside the middle of the body" in w for w in result.warnings)
    for detection in result.detections:
        _, box = stack.box_to_slice(detection.box)
        assert abs((box[0] + box[2]) / 2.0 - stack.array.shape[2] / 2.0) * stack.spacing[0] <= MAX_OFF_MIDLINE_MM
