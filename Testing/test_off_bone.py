"""On CT a canal candidate whose middle is bone is moved back behind that bone, onto the canal, or dropped."""

import numpy as np
import pytest
import SimpleITK as sitk

from SpineStenosisGraderLib.inference.detector import SliceDetection
from SpineStenosisGraderLib.inference.off_bone import BONE_HU, candidates_off_bone, middle_hu, move_off_bone
from SpineStenosisGraderLib.study.normalise import SliceGrid
from SpineStenosisGraderLib.study.volume import to_axial_stack

CANAL = (42.0, 50.0, 58.0, 63.0)


def vertebra(body_rows=(20, 50), canal_rows=(50, 63), bone_hu=300.0, lamina=True):
    """A CT slice (1 mm pixels, rows growing backwards): a body, the canal behind it, a lamina behind that."""
    image = np.full((100, 100), 40.0)  # muscle
    image[body_rows[0]:body_rows[1], 30:70] = bone_hu
    image[canal_rows[0]:canal_rows[1], 42:58] = 10.0  # CSF and cord
    if lamina:
        image[canal_rows[1]:canal_rows[1] + 6, 38:62] = 400.0
    return image


def test_a_box_on_the_canal_stays_as_it_is():
    image = vertebra()
    assert middle_hu(image, CANAL) == 10.0
    assert move_off_bone(image, CANAL, 1.0) == CANAL


def test_a_box_on_the_back_of_the_body_is_moved_behind_it_keeping_its_size():
    # the detector's box on the body's back wall, 13 rows deep as the canal's: its front edge goes where the bone ends
    image = vertebra()
    on_body = (42.0, 35.0, 58.0, 48.0)
    assert middle_hu(image, on_body) >= BONE_HU
    assert move_off_bone(image, on_body, 1.0) == CANAL
    # an osteoporotic body, 160 HU, is bone too; in 0.5 mm rows the bone's end is found the same
    assert move_off_bone(vertebra(bone_hu=160.0), on_body, 1.0) == CANAL
    fine = np.repeat(image, 2, axis=0)
    assert move_off_bone(fine, (42.0, 70.0, 58.0, 96.0), 0.5) == (42.0, 100.0, 58.0, 126.0)


def test_a_row_of_partial_volume_inside_the_bone_is_not_its_end():
    image = vertebra()
    image[45, 30:70] = 60.0  # one soft row (a vein, partial volume) in the body, in front of its back wall
    assert move_off_bone(image, (42.0, 35.0, 58.0, 48.0), 1.0) == CANAL


@pytest.mark.parametrize("body_rows, canal_rows", [((10, 80), (80, 93)), ((20, 50), (50, 53))])
def test_a_box_on_bone_with_no_canal_close_behind_it_is_dropped(body_rows, canal_rows):
    # bone for more than 20 mm behind the box's middle; or soft tissue only 3 mm deep behind the body (a joint, not
    # the canal), so that the moved box's middle lies in the bone behind it
    image = vertebra(body_rows, canal_rows)
    assert move_off_bone(image, (42.0, 25.0, 58.0, 38.0), 1.0) is None


def test_moved_candidates_keep_their_scores_and_go_back_onto_the_canvas():
    # a CT of 6 slices, 1 mm pixels, 100 x 100: the candidate on the body is moved, those on the canal kept, and
    # one on bone with nothing soft behind it (the body of a bigger bone) dropped
    volume = np.stack([vertebra()] * 6)
    volume[3, 10:100, 30:70] = 500.0
    stack = to_axial_stack(sitk.GetImageFromArray(volume.astype(np.float32)))
    grid = SliceGrid.for_stack(stack, 128, 1.0)

    def on_canvas(box_ij):
        return tuple(float(v) for v in grid.to_canvas(np.asarray(box_ij))[0])

    on_canal = SliceDetection(on_canvas(CANAL), 0.9, 0.2)
    on_body = SliceDetection(on_canvas((42.0, 35.0, 58.0, 48.0)), 0.8, 0.7)
    out = candidates_off_bone(stack, [[on_canal], [on_body], [], [on_body], [on_canal], [on_canal]], grid)
    assert out[0] == out[4] == out[5] == [on_canal] and out[2] == [] and out[3] == []
    (moved,) = out[1]
    assert (moved.score, moved.disc_probability) == (0.8, 0.7)
    assert np.allclose(grid.to_stack(np.asarray(moved.box_uv))[0], CANAL)


def test_in_a_ct_myelogram_no_candidate_is_moved():
    # contrast in the CSF reads as bone: the canal's middle reads 400 HU on every slice, and the detector's boxes on
    # it stay where they are, though one slice's candidate lies on the body in front of it
    volume = np.stack([vertebra()] * 4)
    volume[:, 50:63, 42:58] = 400.0
    stack = to_axial_stack(sitk.GetImageFromArray(volume.astype(np.float32)))
    grid = SliceGrid.for_stack(stack, 128, 1.0)
    on_canal = SliceDetection(tuple(float(v) for v in grid.to_canvas(np.asarray(CANAL))[0]), 0.9, 0.2)
    on_body = SliceDetection(tuple(float(v) for v in grid.to_canvas(np.asarray((42.0, 35.0, 58.0, 48.0)))[0]), 0.8,
                             0.7)
    candidates = [[on_canal], [on_canal], [on_body], [on_canal]]
    assert candidates_off_bone(stack, candidates, grid) == candidates
