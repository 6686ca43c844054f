"""On T2 MR the canal box is fitted to the CSF: around the cord, not beside it, and never onto fat it touches."""

import numpy as np
import pytest
import SimpleITK as sitk
from hypothesis import given, settings
from hypothesis import strategies as st

from SpineStenosisGraderLib.inference.csf_outline import (FAINT_T2_CSF_CONTRAST, SAC_FOLLOW_MM, T2_CSF_CONTRAST,
                                                           cistern_depth_mm, csf_box, csf_contrast, follow_sac_down,
                                                           grow_over_csf, study_csf_contrast)
from SpineStenosisGraderLib.study.volume import to_axial_stack


def thoracic_slice(spacing=0.5, centre_mm=(40.0, 40.0), canal_mm=(16.0, 15.0), cord_mm=8.0, size_mm=80.0):
    """A T2 slice: tissue 100, a CSF-filled canal (600) with the cord (150) against its front wall.

    Returns the slice [j, i] and the canal's box (i0, j0, i1, j1) in pixel edges. Rows run to the back
    (posterior), as in an LPS stack.
    """
    n = int(round(size_mm / spacing))
    jj, ii = (np.mgrid[:n, :n] + 0.5) * spacing
    image = np.full((n, n), 100.0, np.float32)
    ci, cj = centre_mm
    ai, aj = canal_mm[0] / 2, canal_mm[1] / 2
    canal = ((ii - ci) / ai) ** 2 + ((jj - cj) / aj) ** 2 <= 1.0
    image[canal] = 600.0
    # the cord touches the canal's front wall but for a CSF rim of about one millimetre, and never thinner
    # than a pixel and a half: a rim the pixels cannot show is not on the image to be found
    cord_j = cj - aj + max(1.0, 1.5 * spacing) + cord_mm / 2
    image[(ii - ci) ** 2 + (jj - cord_j) ** 2 <= (cord_mm / 2) ** 2] = 150.0
    rows, columns = np.nonzero(canal.any(axis=1))[0], np.nonzero(canal.any(axis=0))[0]
    return image, (columns[0], rows[0], columns[-1] + 1, rows[-1] + 1), cord_j / spacing


def test_a_box_that_cut_the_thoracic_cord_in_half_is_redrawn_around_the_whole_canal():
    image, canal, cord_centre_j = thoracic_slice()
    # the detector's box: its front edge through the middle of the cord, its back on the wide CSF behind
    detector = (canal[0] - 2.0, cord_centre_j, canal[2] + 2.0, canal[3] + 1.0)
    fitted = csf_box(image, detector, (0.5, 0.5))
    assert fitted == tuple(float(v) for v in canal)


@settings(max_examples=40, deadline=None)
@given(spacing=st.floats(0.3, 1.0), ci=st.floats(30.0, 50.0), cj=st.floats(30.0, 50.0),
       width=st.floats(13.0, 22.0), depth=st.floats(11.0, 18.0), shift=st.floats(-3.0, 3.0))
def test_the_fitted_box_is_the_canal_whatever_the_spacing_and_the_detectors_offset(spacing, ci, cj, width, depth,
                                                                                   shift):
    # pixels up to 1 mm and a canal at least 13 mm wide round an 8 mm cord: the CSF beside the cord is two
    # pixels or more, so its ring joins up (a ring thinner than that, touching only at corners, splits)
    image, canal, _ = thoracic_slice(spacing, (ci, cj), (width, depth))
    detector = (canal[0] + shift / spacing, canal[1] + 3.0 / spacing, canal[2] + shift / spacing, canal[3])
    # front to back the CSF's extent; side to side within the detector's box and 2 mm
    margin = round(2.0 / spacing)
    expected = (max(canal[0], np.floor(detector[0]) - margin), canal[1],
                min(canal[2], np.ceil(detector[2]) + margin), canal[3])
    assert csf_box(image, detector, (spacing, spacing)) == tuple(float(v) for v in expected)


def test_csf_joined_to_bright_tissue_that_runs_out_of_the_window_keeps_the_detectors_box():
    image, canal, _ = thoracic_slice()
    # bright epidural fat behind the sac, joined to it and running far back
    image[canal[3] - 2:, 76:84] = 550.0
    detector = (canal[0], canal[1], canal[2], canal[3])
    assert csf_box(image, detector, (0.5, 0.5)) is None


def test_csf_joined_sideways_to_tissue_beyond_the_window_still_grows_a_box_that_cut_the_cord():
    # far from the coil, where the signal is low, bright tissue beside the canal joins its CSF and runs out of
    # the window to the side: the outline from side to side says nothing there, but in the detector's own
    # columns the CSF still shows the front of the canal, in front of the cord the box cut in half
    image, canal, cord_centre_j = thoracic_slice()
    middle = (canal[1] + canal[3]) // 2
    image[middle - 3:middle + 3, canal[2] - 2:] = 550.0
    detector = (canal[0] - 2.0, cord_centre_j, canal[2] + 2.0, canal[3] + 1.0)
    assert csf_box(image, detector, (0.5, 0.5)) == (detector[0], float(canal[1]), detector[2], float(canal[3]))


def test_a_smaller_bright_blob_beside_the_sac_is_not_canal():
    image, canal, _ = thoracic_slice()
    # a root sleeve or a vein, 2 mm across, 1 mm to the right of the sac: inside a wide detector box
    image[78:82, canal[0] - 6:canal[0] - 2] = 600.0
    detector = (canal[0] - 8.0, canal[1] - 1.0, canal[2] + 8.0, canal[3] + 1.0)
    assert csf_box(image, detector, (0.5, 0.5)) == tuple(float(v) for v in canal)


@pytest.mark.parametrize("cord", [False, True])
def test_csf_running_out_beside_the_sac_into_a_root_sleeve_does_not_widen_the_box_past_the_detectors(cord):
    image, canal, _ = thoracic_slice()
    if not cord:
        image = np.where(image == 150.0, 600.0, image).astype(np.float32)
    # a root sleeve: a 1.5 mm strip of CSF leaving the sac's right side for 5 mm, towards its foramen
    middle = (canal[1] + canal[3]) // 2
    image[middle - 1:middle + 2, canal[2] - 2:canal[2] + 10] = 600.0
    detector = (canal[0] - 3.0, canal[1] + 8.0, canal[2] + 3.0, canal[3] + 2.0)
    fitted = csf_box(image, detector, (0.5, 0.5))
    # front to back the CSF's; side to side no further than the detector's box and its 2 mm (4 pixels)
    assert fitted[:2] == (float(canal[0]), float(canal[1])) and fitted[3] == float(canal[3])
    if cord:
        # round a cord the sleeve is not read as sac at all: the CSF ends within a millimetre of the sac's side
        assert canal[2] <= fitted[2] <= canal[2] + 2.0
    else:
        assert fitted[2] == canal[2] + 7.0


def test_a_canal_that_is_not_the_brightest_thing_around_is_not_read():
    image, canal, _ = thoracic_slice()
    t1 = np.where(image == 600.0, 60.0, image)  # CSF dark, as on T1
    assert csf_box(t1, canal, (0.5, 0.5)) is None


@pytest.fixture
def slice_stack():
    image, canal, _ = thoracic_slice()
    volume = sitk.GetImageFromArray(np.stack([image, image, image]))
    volume.SetSpacing((0.5, 0.5, 2.0))
    return to_axial_stack(volume), canal


def test_a_box_is_grown_over_the_csf_it_cut_off_and_never_shrunk(slice_stack):
    stack, canal = slice_stack
    # the detector's box holds the whole sac and a pixel of its wall: the bright CSF inside it says nothing
    # it does not (a tighter box would lose overlap with the sac's outline, whose edge is partial volume)
    around = (canal[0] - 1.0, canal[1] - 1.0, canal[2] + 1.0, canal[3] + 1.0)
    assert grow_over_csf(stack, 1, around, "MR") == around


def test_only_mr_boxes_are_grown(slice_stack):
    stack, canal = slice_stack
    detector = (float(canal[0]) - 4.0, float(canal[1]) + 6.0, float(canal[2]) + 4.0, float(canal[3]))
    assert grow_over_csf(stack, 1, detector, "CT") == detector
    # grown forward over the cord to the CSF in front of it; side to side and at the back the detector's
    assert grow_over_csf(stack, 1, detector, "MR") == (detector[0], float(canal[1]), detector[2], detector[3])


@pytest.mark.parametrize("excess_mm, expected_excess_mm", [(8.0, 3.0), (5.0, 3.0), (2.0, 2.0)])
def test_a_box_far_wider_than_the_csf_is_trimmed_from_side_to_side_only(slice_stack, excess_mm, expected_excess_mm):
    # a thoracic box that took in the arch on either side of a thin CSF ring: from side to side it keeps at
    # most 3 mm beyond the CSF; front to back it stays grown over the cord and 5 mm behind the CSF as drawn
    # (front to back the CSF outline may miss a cord it touches), and a box 2 mm wider stays as drawn
    stack, canal = slice_stack
    px = excess_mm / 0.5
    detector = (float(canal[0]) - px, float(canal[1]) + 6.0, float(canal[2]) + px, float(canal[3]) + 10.0)
    kept = expected_excess_mm / 0.5
    assert grow_over_csf(stack, 1, detector, "MR") == (float(canal[0]) - kept, float(canal[1]),
                                                       float(canal[2]) + kept, detector[3])


def faint(image):
    """The slice far from the coil: the CSF 2.5 times as bright as the tissue around it, the cord darker than both."""
    return np.where(image == 600.0, 250.0, np.where(image == 150.0, 60.0, image)).astype(np.float32)


@pytest.mark.parametrize("bright_slices, grown", [(3, True), (2, True), (1, False), (0, False)])
def test_a_faint_slice_is_read_in_a_study_whose_csf_is_bright_on_most_slices(bright_slices, grown):
    # a whole neck's upper thoracic slices, far from the coil, read 2.9 where its neck reads 4 and more: the
    # CSF is the same tissue, so there it is read from twice as bright as around it. A study that is faint on
    # most slices (a fast spin-echo T2, with its bright fat) is read only where the CSF is three times as bright
    image, canal, cord_centre_j = thoracic_slice()
    volume = sitk.GetImageFromArray(np.stack([image] * bright_slices + [faint(image)] * (4 - bright_slices)))
    volume.SetSpacing((0.5, 0.5, 2.0))
    stack = to_axial_stack(volume)
    detector = (float(canal[0]) - 2.0, float(cord_centre_j), float(canal[2]) + 2.0, float(canal[3]) + 1.0)
    min_contrast = study_csf_contrast(stack, [(k, detector) for k in range(4)])
    assert min_contrast == (FAINT_T2_CSF_CONTRAST if bright_slices >= 2 else T2_CSF_CONTRAST)
    box = grow_over_csf(stack, 3, detector, "MR", min_contrast)
    assert box == ((detector[0], float(canal[1]), detector[2], detector[3]) if grown else detector)
    # on its own, the faint slice (about 2.5) is below a T2's contrast
    assert FAINT_T2_CSF_CONTRAST < csf_contrast(stack.array[3], detector, (0.5, 0.5))[1] < T2_CSF_CONTRAST
    assert grow_over_csf(stack, 3, detector, "MR") == detector


def test_a_box_too_small_to_read_leaves_the_study_at_a_t2s_contrast(slice_stack):
    # an untrained detector's box may hold no pixel: it says nothing about the CSF, and it stops nothing
    stack, canal = slice_stack
    empty = (10.0, 10.0, 10.0, 10.0)
    assert study_csf_contrast(stack, [(0, empty)]) == T2_CSF_CONTRAST
    assert study_csf_contrast(stack, [(0, empty), (1, canal), (2, canal)]) == FAINT_T2_CSF_CONTRAST
    assert grow_over_csf(stack, 0, empty, "MR", FAINT_T2_CSF_CONTRAST) == empty


def with_root_sleeves(image, canal, spacing=0.5, reach_mm=5.0, thick_mm=2.0):
    """The slice with a CSF-filled root sleeve leaving the sac on each side, across its middle, ``reach_mm`` long."""
    out = image.copy()
    middle = (canal[1] + canal[3]) / 2.0
    rows = slice(int(round(middle - thick_mm / 2 / spacing)), int(round(middle + thick_mm / 2 / spacing)))
    reach = int(round(reach_mm / spacing))
    out[rows, canal[0] - reach:canal[0] + 2] = 600.0
    out[rows, canal[2] - 2:canal[2] + reach] = 600.0
    return out


@pytest.mark.parametrize("cord", [True, False])
def test_root_sleeves_leaving_a_sac_round_a_cord_do_not_widen_the_box(cord):
    # a thoracic sac round its cord, with the root sleeves running 5 mm out either side, and a detector's box
    # that took in the arch on either side (6 mm beyond the sac). The sleeves are not the sac: the box is trimmed
    # to 3 mm beyond the sac itself. Below the conus (no cord) the sleeves of the traversing roots lie in the
    # lateral recesses, which are canal: the box keeps them
    image, canal, _ = thoracic_slice()
    if not cord:  # a sac of nerve roots: small dark holes in its CSF, 1 mm across
        image = np.where(image == 150.0, 600.0, image).astype(np.float32)
        for j, i in ((6, 10), (10, 16), (12, 22), (20, 12), (22, 20)):
            image[canal[1] + j:canal[1] + j + 2, canal[0] + i:canal[0] + i + 2] = 150.0
    image = with_root_sleeves(image, canal)
    volume = sitk.GetImageFromArray(np.stack([image] * 3))
    volume.SetSpacing((0.5, 0.5, 2.0))
    stack = to_axial_stack(volume)
    detector = (float(canal[0]) - 12.0, float(canal[1]), float(canal[2]) + 12.0, float(canal[3]))
    box = grow_over_csf(stack, 1, detector, "MR")
    if not cord:
        assert box == detector  # within 3 mm of the sleeves' ends
        return
    # 3 mm beyond the sac, and at most a millimetre more: where a sleeve leaves the sac, the sac's outline
    # bulges by a pixel or two
    assert box[1::2] == detector[1::2]
    assert canal[0] - 8.0 <= box[0] <= canal[0] - 6.0 and canal[2] + 6.0 <= box[2] <= canal[2] + 8.0


@settings(max_examples=30, deadline=None)
@given(spacing=st.floats(0.3, 1.0), width=st.floats(13.0, 22.0), depth=st.floats(11.0, 18.0),
       reach_mm=st.floats(3.0, 8.0), thick_mm=st.floats(1.0, 3.0))
def test_a_box_trimmed_round_a_cord_holds_the_whole_sac_whatever_its_sleeves(spacing, width, depth, reach_mm,
                                                                             thick_mm):
    # the opening that drops the sleeves never eats into the sac: the box holds all of it, and reaches no more
    # than the 3 mm trim, 2 mm and a pixel beyond it: where a sleeve nearly as thick as the opening's 5 mm disc
    # leaves a small sac, the disc still fits into the sleeve's base (up to 2 mm on a 13 x 11 mm sac with 3 mm
    # sleeves, over 400 random draws), and the pixels round it off
    image, canal, _ = thoracic_slice(spacing, (45.0, 45.0), (width, depth), size_mm=90.0)
    image = with_root_sleeves(image, canal, spacing, reach_mm, thick_mm)
    volume = sitk.GetImageFromArray(np.stack([image] * 3))
    volume.SetSpacing((spacing, spacing, 2.0))
    stack = to_axial_stack(volume)
    wide = 6.0 / spacing
    box = grow_over_csf(stack, 1, (canal[0] - wide, float(canal[1]), canal[2] + wide, float(canal[3])), "MR")
    assert box[0] <= canal[0] and box[2] >= canal[2]
    assert canal[0] - box[0] <= 5.0 / spacing + 1 and box[2] - canal[2] <= 5.0 / spacing + 1


def test_on_a_faint_slice_fat_brighter_than_half_the_csf_is_not_read_as_csf():
    # far from the coil the CSF is 2.5 times the tissue around it, and the fat behind the sac (140) is brighter
    # than half of it (125): read from half the CSF, the fat joins the sac and runs out of the window, and the
    # box cut through the cord stays. Read from halfway between the tissue and the CSF (0.7 of it), the CSF is
    # the sac alone, and the box is grown over the cord
    image, canal, cord_centre_j = thoracic_slice()
    image = faint(image)
    image[canal[3] - 2:canal[3] + 40, canal[0] + 4:canal[2] - 4] = np.where(
        image[canal[3] - 2:canal[3] + 40, canal[0] + 4:canal[2] - 4] == 250.0, 250.0, 140.0)
    detector = (float(canal[0]) - 2.0, float(cord_centre_j), float(canal[2]) + 2.0, float(canal[3]) + 1.0)
    contrast = csf_contrast(image, detector, (0.5, 0.5))[1]
    assert FAINT_T2_CSF_CONTRAST < contrast < T2_CSF_CONTRAST and 140.0 > 0.5 * 250.0
    fitted = csf_box(image, detector, (0.5, 0.5), FAINT_T2_CSF_CONTRAST)
    assert fitted == tuple(float(v) for v in canal)


def test_a_blank_slice_asked_at_no_contrast_is_not_read():
    # csf_box is public: a caller may ask for any contrast, and a slice with no signal has none to read
    assert csf_box(np.zeros((60, 60), np.float32), (20.0, 20.0, 40.0, 40.0), (1.0, 1.0), 0.0) is None


def lordotic_sac(n_slices=140, sac_end=8, back_per_slice_mm=1.2, csf=250.0, beside=None, remnant_mm=None,
                 slice_mm=1.0, bend=39):
    """A lumbar T2: a sac 14 x 12 mm of CSF at ``csf`` (tissue 100) that runs back as it descends below ``bend``.

    The sac is on the slices from ``sac_end`` up; ``beside`` (i, j in mm) puts a bright blob of CSF's size
    there on every slice; below the sac, ``remnant_mm`` puts a bright blob 6 mm across that far behind where
    its centre was. Returns the stack and the sac's box (i0, j0, i1, j1) on each slice, in pixel edges.
    """
    spacing, n = 0.5, 200
    jj, ii = (np.mgrid[:n, :n] + 0.5) * spacing
    slices, boxes = [], {}
    for k in range(n_slices):
        image = np.full((n, n), 100.0, np.float32)
        cj = 20.0 + back_per_slice_mm * max(0, bend - k)  # moving back (+j) going down
        if k >= sac_end:
            sac = ((ii - 40.0) / 7.0) ** 2 + ((jj - cj) / 6.0) ** 2 <= 1.0
            image[sac] = csf
            rows, columns = np.nonzero(sac.any(axis=1))[0], np.nonzero(sac.any(axis=0))[0]
            boxes[k] = (float(columns[0]), float(rows[0]), float(columns[-1] + 1), float(rows[-1] + 1))
        elif remnant_mm is not None:
            image[(ii - 40.0) ** 2 + (jj - cj - remnant_mm) ** 2 <= 3.0 ** 2] = csf
        if beside is not None:
            image[((ii - beside[0]) / 7.0) ** 2 + ((jj - beside[1]) / 6.0) ** 2 <= 1.0] = csf
        slices.append(image)
    volume = sitk.GetImageFromArray(np.stack(slices))
    volume.SetSpacing((spacing, spacing, slice_mm))
    return to_axial_stack(volume), boxes


@pytest.mark.parametrize("back_per_slice_mm", [0.0, 1.2, 1.6])
def test_the_sac_is_followed_down_its_own_course_to_where_it_ends(back_per_slice_mm):
    # the detector tracked the sac from slice 139 down to 30, where it turns back into the sacrum; its CSF, 2.5
    # times as bright as around it (a fast spin-echo T2 far from the coil), shows it down to slice 8, 22 mm lower,
    # moving back by up to 35 mm on the way: every slice's box is the sac's, and none is given below it
    stack, boxes = lordotic_sac(back_per_slice_mm=back_per_slice_mm)
    followed = follow_sac_down(stack, (30, 139), boxes[30], T2_CSF_CONTRAST)
    assert sorted(followed) == list(range(8, 30))
    assert all(followed[k] == boxes[k] for k in followed)


def test_the_sac_is_followed_no_further_than_l5_s1_can_lie_below_the_track():
    stack, boxes = lordotic_sac(n_slices=160, sac_end=0, bend=59)
    followed = follow_sac_down(stack, (50, 159), boxes[50], T2_CSF_CONTRAST)
    assert min(followed) == 50 - int(SAC_FOLLOW_MM)


def test_following_the_sac_never_jumps_to_something_bright_beside_it():
    # where the sac ends, CSF-bright tissue 2 mm beside where it was (a root sleeve, a vessel) is not taken
    stack, boxes = lordotic_sac(back_per_slice_mm=0.0, beside=(56.0, 20.0))
    followed = follow_sac_down(stack, (30, 139), boxes[30], T2_CSF_CONTRAST)
    assert sorted(followed) == list(range(8, 30))
    # and a study whose CSF is too faint to read (CT, a T1) is not followed at all
    faint_stack, boxes = lordotic_sac(csf=150.0)
    assert follow_sac_down(faint_stack, (30, 139), boxes[30], T2_CSF_CONTRAST) == {}


@pytest.mark.parametrize("remnant_mm, followed_to", [(5.0, 8), (1.0, 0)])
def test_where_the_sac_ends_a_small_bright_remnant_off_its_course_is_not_followed(remnant_mm, followed_to):
    # below the end of the sac, CSF 6 mm across lies 5 mm behind where its centre was: the box would move 5 mm
    # from one 1 mm slice to the next, more than the sac can, so the following stops; 1 mm behind, it goes on
    stack, boxes = lordotic_sac(back_per_slice_mm=0.0, remnant_mm=remnant_mm)
    followed = follow_sac_down(stack, (30, 139), boxes[30], T2_CSF_CONTRAST)
    assert min(followed) == followed_to


@pytest.mark.parametrize("track, slice_mm, followed", [((30, 130), 1.0, True), ((30, 129), 1.0, False),
                                                         ((10, 60), 3.0, False), ((10, 60), 2.0, True)])
def test_the_sac_is_followed_only_below_a_long_track_on_thin_slices(track, slice_mm, followed):
    # below a track of 100 mm or more the level rules can tell L5-S1 from a disc remnant in the sacrum; on
    # slices thicker than 2 mm a sac turning back moves by half its depth from one slice to the next
    stack, boxes = lordotic_sac(n_slices=140, sac_end=0, back_per_slice_mm=0.0, slice_mm=slice_mm)
    lowest = track[0]
    assert bool(follow_sac_down(stack, track, boxes[lowest], T2_CSF_CONTRAST)) == followed


def medulla_slice(spacing=0.5, pool_mm=10.0, pool_width_mm=20.0, size_mm=80.0):
    """A T2 slice at the foramen magnum: tissue 100, the canal's CSF (600) 20 mm wide and 15 mm deep round a dark
    medulla (150), and behind it the cisterna magna's CSF, ``pool_mm`` deep and ``pool_width_mm`` wide.

    Returns the slice [j, i] (rows run to the back) and the box a detector drew round the canal alone.
    """
    n = int(round(size_mm / spacing))
    image = np.full((n, n), 100.0, np.float32)
    px = lambda mm: int(round(mm / spacing))  # noqa: E731
    i0, i1, j0, j1 = px(30.0), px(50.0), px(20.0), px(35.0)
    image[j0:j1, i0:i1] = 600.0
    image[j0 + px(3.0):j1 - px(3.0), i0 + px(5.0):i1 - px(5.0)] = 150.0
    centre = (i0 + i1) // 2
    image[j1:j1 + px(pool_mm), centre - px(pool_width_mm / 2):centre + px(pool_width_mm / 2)] = 600.0
    return image, (float(i0), float(j0), float(i1), float(j1))


@pytest.mark.parametrize("spacing", [0.5, 1.0])
def test_the_cisterna_magna_behind_a_box_round_the_canal_is_read_to_its_back(spacing):
    image, box = medulla_slice(spacing)
    # the box holds 15 mm; the CSF runs on 10 mm behind it, as wide as the canal
    assert cistern_depth_mm(image, box, (spacing, spacing)) == pytest.approx(25.0)
    # no pool behind: the CSF's own 15 mm, the medulla's rows counted with the box's
    image, box = medulla_slice(spacing, pool_mm=0.0)
    assert cistern_depth_mm(image, box, (spacing, spacing)) == pytest.approx(15.0)
    # a strip of bright fat or a vein joined to the sac's back is too narrow to be a cistern
    image, box = medulla_slice(spacing, pool_width_mm=6.0)
    assert cistern_depth_mm(image, box, (spacing, spacing)) == pytest.approx(15.0)
    # bright tissue behind the canal but apart from its CSF is no cistern
    image, box = medulla_slice(spacing, pool_mm=0.0)
    back = int(box[3])
    image[back + int(round(4.0 / spacing)):back + int(round(12.0 / spacing)), int(box[0]):int(box[2])] = 600.0
    assert cistern_depth_mm(image, box, (spacing, spacing)) == pytest.approx(15.0)
    # no deeper than the search reaches behind the box
    image, box = medulla_slice(spacing, pool_mm=30.0)
    assert cistern_depth_mm(image, box, (spacing, spacing)) == pytest.approx(35.0)


def test_the_cistern_is_not_read_where_the_slice_ends_behind_the_box_or_the_csf_is_not_bright():
    image, box = medulla_slice(size_mm=45.0, pool_mm=5.0)
    assert cistern_depth_mm(image, box, (0.5, 0.5)) == 0.0
    image, box = medulla_slice()
    assert cistern_depth_mm(image * 0.0 + 100.0, box, (0.5, 0.5)) == 0.0
    ct = np.where(image > 500, 10.0, 40.0).astype(np.float32)  # CSF darker than the tissue round it
    assert cistern_depth_mm(ct, box, (0.5, 0.5)) == 0.0
