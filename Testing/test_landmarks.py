"""Discs read from the image in front of the canal: gaps between endplates on CT, dark bands on MR."""

import numpy as np
import pytest
import SimpleITK as sitk
from hypothesis import given, settings
from hypothesis import strategies as st

from SpineStenosisGraderLib.inference.csf_outline import FAINT_T2_CSF_CONTRAST
from SpineStenosisGraderLib.inference.landmarks import (CANAL_WALL_HU, CANAL_WALL_SEARCH_MM, NECK_CISTERN_DEPTH_RATIO,
                                                      VertebralBone, band_contrast, band_depth_fraction, band_depths,
                                                      canal_front_wall, disc_back_density, disc_bands, endplate_gaps,
                                                      find_first_rib, find_foramen_magnum, find_lowest_rib,
                                                      find_lumbosacral_bend, find_sacrum, find_skull_base_ct,
                                                      marrow_is_dark, onto_the_discs)
from SpineStenosisGraderLib.inference.levels import LevelCandidate, SliceCanal, find_discs
from SpineStenosisGraderLib.study.volume import to_axial_stack

CANAL = (40.0, 50.0, 60.0, 66.0)  # i0, j0, i1, j1 in 1 mm pixels; anterior is smaller j


def spine_ct(densities, slice_mm=3.0):
    """A CT whose bone just in front of the canal has the given HU per slice, soft tissue elsewhere."""
    n = len(densities)
    volume = np.full((n, 100, 100), 40.0, dtype=np.float32)
    for k, hu in enumerate(densities):
        volume[k, 36:50, 42:58] = hu
    image = sitk.GetImageFromArray(volume)
    image.SetSpacing((1.0, 1.0, slice_mm))
    stack = to_axial_stack(image)
    return stack, [SliceCanal(k, CANAL, 0.9, 0.1) for k in range(n)]


def vertebrae(discs, n):
    # body 120 HU; endplates 300 HU next to each disc (80 HU); the middle of each body darker (60 HU),
    # where the basivertebral veins leave it: a gap as deep as a disc's, but between cancellous bone
    densities = np.full(n, 120.0)
    for d in discs:
        densities[d] = 80.0
        densities[[d - 1, d + 1]] = 300.0
        if d + 5 < n:
            densities[d + 5] = 60.0
    return densities


def test_the_gaps_between_endplates_are_the_discs_not_the_middle_of_a_body():
    discs = [5, 15, 25, 35]
    stack, canals = spine_ct(vertebrae(discs, 40))
    assert np.nonzero(endplate_gaps(stack, canals))[0].tolist() == discs



def _level(k, canals):
    return LevelCandidate(k, canals[k].box_ij, 0.9, 0.6, (k,))


def bone(stack, canals):
    """The bone in front of the canal as the pipeline reads it for ``endplate_gaps`` and ``onto_the_discs``."""
    return disc_back_density(stack, canals, wall_hu=CANAL_WALL_HU)


@pytest.mark.parametrize("slice_mm, on, expected", [(3.0, 14, 15), (3.0, 16, 15), (3.0, 15, 15), (2.0, 16, 15),
                                                    (3.0, 20, 20), (3.0, 19, 19), (4.0, 16, 16)])
def test_a_ct_level_on_an_endplate_moves_onto_its_disc(slice_mm, on, expected):
    # the disc on slice 15 (80 HU) between endplates (300 HU) on 14 and 16: a level on an endplate moves onto
    # the disc, 3 mm away; one on the disc, or in a body's soft middle (slice 20, 60 HU) or its cancellous bone
    # next to it (slice 19, 120 HU), which are no endplate, stays; on 4 mm slices (one slice is nearly half a
    # disc) too
    stack, canals = spine_ct(vertebrae([5, 15, 25, 35], 40), slice_mm)
    moved = onto_the_discs(stack, canals, [_level(5, canals), _level(on, canals)], bone(stack, canals))
    assert [lv.slice_index for lv in moved] == [5, expected]
    assert moved[1].box_ij == canals[expected].box_ij


def test_a_level_does_not_move_below_the_lowest_slice_it_may_lie_on():
    # 3 mm slices; a disc on slice 15 (100 HU) in dense bone, and the sacral canal's less dense surroundings (60 HU)
    # on slice 12, below the alae's top on 14. A level on an endplate moves onto the nearest disc-like slice, but
    # L5-S1, placed on the alae's top, may go no lower than the pipeline's floor (13: the sacrum's inside starts
    # 4 mm below its top), or ``name_from_anatomy`` drops it as a fused disc's remnant
    densities = np.full(30, 300.0)
    densities[12] = 60.0
    densities[15] = 100.0
    stack, canals = spine_ct(densities, 3.0)
    assert [lv.slice_index for lv in onto_the_discs(stack, canals, [_level(16, canals)], bone(stack, canals))] == [15]
    densities[15] = 300.0
    stack, canals = spine_ct(densities, 3.0)
    assert [lv.slice_index for lv in onto_the_discs(stack, canals, [_level(14, canals)], bone(stack, canals))] == [12]
    assert [lv.slice_index for lv in onto_the_discs(stack, canals, [_level(14, canals)], bone(stack, canals),
                                                    lowest_slice=13)] == [14]
    # a level below the floor stays where it is, for the naming to judge
    assert [lv.slice_index for lv in onto_the_discs(stack, canals, [_level(14, canals)], bone(stack, canals),
                                                    lowest_slice=20)] == [14]


def test_two_levels_flanking_one_disc_do_not_both_move_onto_it_and_in_a_neck_are_one():
    # a neck's levels may lie 9 mm apart: on 1 mm slices, a disc on slice 15 in dense bone, and a level 4 mm
    # below it and 5 mm above it. The lower moves onto the disc; the upper would land there too, and stays
    densities = np.full(30, 300.0)
    densities[15] = 80.0
    stack, canals = spine_ct(densities, 1.0)
    moved = onto_the_discs(stack, canals, [_level(11, canals), _level(20, canals)], bone(stack, canals))
    assert [lv.slice_index for lv in moved] == [15, 20]
    # 5 mm apart then, closer than a neck's shortest vertebra (9 mm): one disc, on the less dense slice (detector A
    # on TotalSegmentator s0003 found C7-T1 twice so, and every name above it went one off)
    for lower, upper in ((11, 20), (15, 20), (11, 15)):
        moved = onto_the_discs(stack, canals, [_level(lower, canals), _level(upper, canals)], bone(stack, canals),
                               separation_mm=9.0)
        assert [lv.slice_index for lv in moved] == [15]
    # levels a vertebra apart both stay
    moved = onto_the_discs(stack, canals, [_level(5, canals), _level(15, canals)], bone(stack, canals),
                           separation_mm=9.0)
    assert [lv.slice_index for lv in moved] == [5, 15]


def osteoporotic_vertebrae(discs, middles, n):
    # bodies of 120 HU; at each disc (80 HU) endplates of 300 HU; in the middle of each body a soft spot (70 HU)
    # between cancellous bone of 160 HU 3 mm above and below it: as deep a gap as a disc's, bounded by bone,
    # but with less than half a disc's contrast (VerSe 012)
    densities = vertebrae(discs, n)
    densities[[d + 5 for d in discs if d + 5 < n]] = 120.0
    for m in middles:
        densities[m] = 70.0
        densities[[m - 3, m + 3]] = 160.0
    return densities


def test_a_soft_middle_of_an_osteoporotic_body_is_a_gap_less_sure_than_a_disc():
    discs, middles = [10, 40, 70], [25, 55]
    stack, canals = spine_ct(osteoporotic_vertebrae(discs, middles, 85), slice_mm=1.0)
    gaps = endplate_gaps(stack, canals)
    assert np.nonzero(gaps)[0].tolist() == sorted(discs + middles)
    assert gaps[discs].tolist() == [1.0] * 3
    # contrast 90 HU against the discs' 220
    assert gaps[middles] == pytest.approx([90.0 / 220.0] * 2)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(100, 600), min_size=6, max_size=30), st.integers(0, 400))
def test_a_gap_is_as_sure_as_its_contrast_against_the_study_whatever_the_bone_density(densities, offset):
    # every slice at 100 HU or more, so an endplate's bound is the gap's density plus the contrast, never the
    # bone floor: then the same spine with denser bone throughout (offset) shows the same gaps, just as surely
    stack, canals = spine_ct([float(d) for d in densities])
    denser, _ = spine_ct([float(d + offset) for d in densities])
    gaps = endplate_gaps(stack, canals)
    assert endplate_gaps(denser, canals).tolist() == pytest.approx(gaps.tolist())
    assert ((gaps >= 0.0) & (gaps <= 1.0)).all()
    # the surest gaps count fully: at least a quarter of them reach the study's sure contrast
    if gaps.any():
        assert (gaps == 1.0).sum() >= 0.25 * np.count_nonzero(gaps)


def test_the_discs_of_an_osteoporotic_spine_outrank_the_soft_middles_of_its_bodies():
    # the detector is surer of the middles (0.6) than of the discs (0.35): the bone decides which of the two
    # within one vertebra is the disc, by how clearly it shows a gap
    discs, middles, n = [10, 40, 70], [25, 55], 85
    stack, canals = spine_ct(osteoporotic_vertebrae(discs, middles, n), slice_mm=1.0)
    canals = [SliceCanal(c.slice_index, c.box_ij, c.score, 0.35 if k in discs else 0.6 if k in middles else 0.2)
              for k, c in enumerate(canals)]
    found = find_discs(canals, n, 1.0, "lumbar", endplate_gaps(stack, canals))
    assert [level.slice_index for level in found] == discs

def test_the_density_is_read_in_front_of_the_canal_on_slices_with_a_canal_only():
    densities = vertebrae([5, 15], 20)
    stack, canals = spine_ct(densities)
    canals[7] = None
    measured = disc_back_density(stack, canals)
    assert np.isnan(measured[7])
    assert np.array_equal(np.delete(measured, 7), np.delete(densities, 7))


def test_a_gap_needs_an_endplate_on_both_sides():
    densities = vertebrae([5, 15, 25], 30)
    densities[[14]] = 120.0  # no endplate below the disc at slice 15
    stack, canals = spine_ct(densities)
    assert np.nonzero(endplate_gaps(stack, canals))[0].tolist() == [5, 25]


def test_a_box_holding_only_the_back_of_the_canal_reads_the_wall_in_front_of_the_canal_not_its_csf():
    # a deep canal (CSF 10 HU, rows 40-55) in front of which lie the bodies (200 HU), the endplates (300) and
    # the discs (80); on three slices in a body the box holds only the canal's back half (VerSe 014)
    discs, n = [5, 15, 25, 35], 40
    densities = np.full(n, 200.0)
    for d in discs:
        densities[d] = 80.0
        densities[[d - 1, d + 1]] = 300.0
    volume = np.full((n, 100, 100), 40.0, dtype=np.float32)
    volume[:, 40:56, 40:60] = 10.0
    for k, hu in enumerate(densities):
        volume[k, 26:40, 42:58] = hu
    image = sitk.GetImageFromArray(volume)
    image.SetSpacing((1.0, 1.0, 3.0))
    stack = to_axial_stack(image)
    back = {19, 20, 21}
    canals = [SliceCanal(k, (40.0, 50.0 if k in back else 40.0, 60.0, 56.0), 0.9, 0.1) for k in range(n)]
    # in front of the box's edge lies the canal's CSF, which read as a disc between the body's bone
    assert disc_back_density(stack, canals)[sorted(back)].tolist() == [10.0] * 3
    assert disc_back_density(stack, canals, wall_hu=CANAL_WALL_HU).tolist() == densities.tolist()
    assert np.nonzero(endplate_gaps(stack, canals))[0].tolist() == discs


@pytest.mark.parametrize("row_mm", [0.5, 1.0, 1.5])
def test_the_canal_wall_is_looked_for_within_its_reach_only(row_mm):
    image = np.full((200, 20), 10.0)  # CSF everywhere
    columns = slice(5, 15)
    reach = int(round(CANAL_WALL_SEARCH_MM / row_mm))
    j0 = 150.0
    image[: int(j0) - reach + 2] = 200.0  # bone from 2 rows inside the reach forward: a wall in reach
    assert canal_front_wall(image, j0, columns, row_mm) == j0 - reach + 2
    image[:] = 10.0
    image[: int(j0) - reach] = 200.0  # from the first row beyond the reach forward: the box's edge stands
    assert canal_front_wall(image, j0, columns, row_mm) == j0
    image[:] = 10.0
    image[: int(j0) - reach + 1] = 200.0  # the wall's back row is the last one within the reach
    assert canal_front_wall(image, j0, columns, row_mm) == j0 - reach + 1
    # a single moderately bright row (noise, partial volume) is no wall: the two rows in front of it count too
    image[:] = 10.0
    image[140] = 150.0
    assert canal_front_wall(image, j0, columns, row_mm) == j0
    image[139] = 150.0
    assert canal_front_wall(image, j0, columns, row_mm) == 141.0
    # nor is a bright streak narrower than the columns read: their median is taken
    image[:] = 10.0
    image[120:145, 9] = 1000.0
    assert canal_front_wall(image, j0, columns, row_mm) == j0


def test_a_box_that_reaches_the_canal_wall_keeps_its_edge():
    image = np.full((100, 20), 10.0)
    image[:50] = 200.0  # the wall: rows 0-49, the canal from row 50 (its edge at 50.0)
    columns = slice(5, 15)
    # the box's edge inside the wall's last row, or on it: it reaches the wall, and stands
    for j0 in (49.6, 50.0):
        assert canal_front_wall(image, j0, columns, 1.0) == j0
    # an edge 0.4 row or 3.4 rows behind the wall moves forward onto it
    for j0 in (50.4, 53.4):
        assert canal_front_wall(image, j0, columns, 1.0) == 50.0


def spine_mr(column, slice_mm=1.0, scale=1.0):
    """A T2 MR whose vertebral column 2-12 mm in front of the canal has the given signal per slice."""
    n = len(column)
    volume = np.full((n, 100, 100), 30.0 * scale, dtype=np.float32)
    volume[:, 50:66, 40:60] = 400.0 * scale  # CSF, bright; the canal box holds it
    for k, signal in enumerate(column):
        volume[k, 38:48, 42:58] = signal * scale
    image = sitk.GetImageFromArray(volume)
    image.SetSpacing((1.0, 1.0, slice_mm))
    return to_axial_stack(image), [SliceCanal(k, CANAL, 0.9, 0.3) for k in range(n)]


def disc_column(discs, n, marrow, disc, beside):
    """The column's signal per slice: ``marrow``, and at each disc ``disc``, with ``beside`` on the slices next to it."""
    column = np.full(n, marrow)
    for d in discs:
        column[d] = disc
        for side in (d - 1, d + 1):
            if 0 <= side < n:
                column[side] = beside
    return column


def cervical_column(discs, n):
    # marrow 200; each disc a dark band (endplates and annulus, 90) that also darkens the slices next to it
    # (1 mm slices), and each body's middle 20% darker (its veins), which is no disc
    column = disc_column(discs, n, 200.0, 90.0, 120.0)
    for d in discs:
        if d + 8 < n:
            column[d + 8] = 160.0
    return column


def test_on_mr_the_dark_bands_in_the_vertebral_column_are_the_discs_not_the_middle_of_a_body():
    discs = [1, 16, 31, 46, 61, 78]
    stack, canals = spine_mr(cervical_column(discs, 80))
    assert np.nonzero(disc_bands(stack, canals))[0].tolist() == discs


@pytest.mark.parametrize("slice_mm,disc_mm,spread", [(1.0, 10.0, 2), (1.0, 6.0, 1), (3.0, 10.0, 0), (1.0, 0.0, 0)])
def test_a_band_marks_the_slices_within_a_quarter_of_a_disc_either_side(slice_mm, disc_mm, spread):
    # one darkest slice per disc, which a smoothing over the evidence would all but erase on thin slices
    discs = [1, 16, 31, 46, 61, 78]
    stack, canals = spine_mr(cervical_column(discs, 80), slice_mm=slice_mm)
    marked = np.nonzero(disc_bands(stack, canals, disc_mm))[0].tolist()
    assert marked == sorted({k for d in discs for k in range(d - spread, d + spread + 1) if 0 <= k < 80})


def test_a_column_without_marrow_contrast_has_no_band():
    # a uniform column (a T2 where bone and disc look alike), and a darkening of 20% only
    for column in (np.full(40, 120.0), np.where(np.arange(40) % 15 == 7, 160.0, 200.0)):
        stack, canals = spine_mr(column)
        assert not disc_bands(stack, canals).any()


def lumbar_column(disc_darkness, n=80, spacing=35):
    # marrow 200; a disc every ``spacing`` slices, its darkest slice ``disc_darkness`` below the marrow and the
    # slices beside it half as dark; each body's middle 20% darker (its veins), which is no disc
    column = np.full(n, 200.0)
    discs = list(range(5, n - 2, spacing))
    for d in discs:
        column[d] = 200.0 * (1.0 - disc_darkness)
        column[d - 1] = column[d + 1] = 200.0 * (1.0 - disc_darkness / 2.0)
        if d + spacing // 2 < n:
            column[d + spacing // 2] = 160.0
    return column, discs


def test_a_healthy_lumbar_disc_shows_a_shallower_band_than_the_neck_needs():
    # a bright lumbar nucleus leaves its band 25-35% darker than the marrow: a band in the lumbar spine, not
    # in the neck; a body's middle, 20% darker, is a band in neither
    column, discs = lumbar_column(0.3)
    stack, canals = spine_mr(column)
    assert np.nonzero(disc_bands(stack, canals, 0.0, band_depth_fraction("lumbar")))[0].tolist() == discs
    for region in ("cervical", "thoracic", "unknown"):
        assert not disc_bands(stack, canals, 0.0, band_depth_fraction(region)).any()
    stack, canals = spine_mr(lumbar_column(0.2)[0])
    assert not disc_bands(stack, canals, 0.0, band_depth_fraction("lumbar")).any()


def test_the_band_darkness_is_how_much_darker_than_the_marrow_the_column_is():
    # marrow 200: a disc at 30% darkness reads 0.3, the slices beside it 0.15, a body's middle (160) 0.2 and
    # the rest of the marrow 0, on every slice including the study's ends
    column, discs = lumbar_column(0.3)
    stack, canals = spine_mr(column)
    darkness = band_contrast(stack, canals)
    assert darkness[discs] == pytest.approx(0.3)
    assert darkness[[d + 1 for d in discs]] == pytest.approx(0.15)
    assert darkness[[d + 17 for d in discs if d + 17 < 80]] == pytest.approx(0.2)
    assert darkness[[0, 12, 79]] == pytest.approx(0.0)
    # a slice without a canal reads as its neighbours (a disc missed is no band); fewer than three slices with a
    # canal cannot be read
    canals[discs[1]] = None
    assert band_contrast(stack, canals)[discs[1]] == pytest.approx(0.15)
    assert np.isnan(band_contrast(stack, canals[:2] + [None] * 78)).all()


def test_a_bands_depth_is_the_deepest_contrast_within_a_quarter_of_a_disc():
    contrast = np.full(30, 0.0)
    contrast[10], contrast[11], contrast[20] = 0.6, 0.3, 0.25
    contrast[25:] = np.nan
    # 8 mm discs at 1 mm slices: 2 slices either side
    depths = band_depths(contrast, 1.0, 8.0)
    assert depths[8:14].tolist() == [0.6] * 5 + [0.3]
    assert depths[7] == 0.0 and depths[14] == 0.0
    assert depths[18:23].tolist() == [0.25] * 5
    assert depths[25:27].tolist() == [0.0, 0.0] and np.isneginf(depths[27:]).all()  # nothing read near 27-29
    # at 3 mm slices a quarter of the disc reaches no neighbour
    assert band_depths(contrast, 3.0, 8.0)[9] == 0.0


def test_a_slice_without_a_canal_is_no_band_and_makes_none_in_a_body():
    discs = [10, 25]
    stack, canals = spine_mr(cervical_column(discs, 40))
    canals[10] = None  # the disc's own slice: its darkened neighbours carry the band
    canals[18] = None  # in a body: the slices around it are marrow, so no band appears there
    assert np.nonzero(disc_bands(stack, canals))[0].tolist() == [9, 11, 25]


def test_a_bright_end_slice_does_not_set_the_marrow_level_near_it():
    # the study ends in something bright (fat, the CSF of the cisterna): counted once, not as many times as a
    # padded window would, it leaves the marrow level at the bodies' and a body's darker middle is no band
    column = cervical_column([10, 25], 40)
    column[-1] = 400.0
    column[-4] = 150.0
    stack, canals = spine_mr(column)
    assert np.nonzero(disc_bands(stack, canals))[0].tolist() == [10, 25]


@settings(max_examples=20, deadline=None)
@given(scale=st.floats(0.01, 50.0), slice_mm=st.sampled_from([0.8, 1.0, 1.5]))
def test_the_bands_do_not_depend_on_the_mr_scale(scale, slice_mm):
    # MR intensities have no unit: the bands are read against the study's own marrow
    discs = [5, 20, 35]
    stack, canals = spine_mr(cervical_column(discs, 45), slice_mm, scale)
    assert np.nonzero(disc_bands(stack, canals))[0].tolist() == discs


def gradient_echo_mr(discs, n, muscle=300.0, scale=1.0, slice_mm=1.0):
    """A T2* gradient echo of the neck: dark marrow (100), each disc bright (250, its neighbours 170), the CSF
    brighter still and the muscle behind the canal brighter than the marrow (``muscle``; 0: a crop's blank)."""
    stack, canals = spine_mr(disc_column(discs, n, 100.0, 250.0, 170.0), slice_mm, scale)
    volume = sitk.GetArrayFromImage(stack.image)
    volume[:, 75:, :] = muscle * scale  # 9 mm and more behind the canal's box: the back's muscles
    image = sitk.GetImageFromArray(volume)
    image.CopyInformation(stack.image)
    return to_axial_stack(image), canals


def test_where_the_marrow_is_darker_than_the_muscle_the_discs_are_bright_bands():
    # on a T2* the trabecular bone darkens the marrow and the disc's water is bright: the spin echo's dark bands
    # would lie in the vertebral bodies, between the discs, and the bright ones lie on the discs
    discs = [5, 20, 35, 50]
    stack, canals = gradient_echo_mr(discs, 60)
    assert marrow_is_dark(stack, canals)
    assert np.nonzero(disc_bands(stack, canals, bright=True))[0].tolist() == discs
    assert not set(np.nonzero(disc_bands(stack, canals))[0]) & set(discs)
    # how much brighter: 1 - the marrow (the column's low quantile around it) over the column
    assert band_contrast(stack, canals, bright=True)[discs] == pytest.approx(0.6)
    assert band_contrast(stack, canals, bright=True)[12] == pytest.approx(0.0)


def test_a_spin_echo_marrow_brighter_than_muscle_or_muscle_not_in_the_study_keeps_the_dark_bands():
    stack, canals = spine_mr(cervical_column([10, 25], 40))  # marrow 200, muscle 30
    assert not marrow_is_dark(stack, canals)
    # marrow darker than muscle, but not by half (a young spine's red marrow on a spin echo reads 0.83 of it)
    assert not marrow_is_dark(*gradient_echo_mr([10, 25], 40, muscle=150.0))
    assert marrow_is_dark(*gradient_echo_mr([10, 25], 40, muscle=250.0))
    # a crop blank behind the canal: nothing to compare the marrow with
    assert not marrow_is_dark(*gradient_echo_mr([10, 25], 40, muscle=0.0))


@settings(max_examples=20, deadline=None)
@given(scale=st.floats(0.01, 50.0), slice_mm=st.sampled_from([0.8, 1.0, 1.5]))
def test_the_bright_bands_do_not_depend_on_the_mr_scale(scale, slice_mm):
    discs = [5, 20, 35]
    stack, canals = gradient_echo_mr(discs, 45, scale=scale, slice_mm=slice_mm)
    assert marrow_is_dark(stack, canals)
    assert np.nonzero(disc_bands(stack, canals, bright=True))[0].tolist() == discs


def neck(depths_mm, slice_mm=1.0, pixel_mm=0.5):
    """A stack whose canal boxes are ``depths_mm`` deep (front to back), slice by slice from the feet up."""
    n = len(depths_mm)
    volume = np.zeros((n, 32, 32), dtype=np.float32)
    volume[:, 10:20, 10:20] = 100.0  # the canal finder ran already: only the boxes are read
    image = sitk.GetImageFromArray(volume)
    image.SetSpacing((pixel_mm, pixel_mm, slice_mm))
    return to_axial_stack(image), [SliceCanal(k, (40.0, 50.0, 60.0, 50.0 + d / pixel_mm), 0.9, 0.3)
                                   for k, d in enumerate(depths_mm)]


def test_the_foramen_magnum_is_where_the_canal_opens_into_the_cisterna_magna_at_the_top():
    # 80 mm of canal 14-16 mm deep, then from slice 80 the cisterna magna, 22-30 mm deep
    depths = [15.0 + (k % 3 - 1) for k in range(80)] + [22.0, 24.0, 27.0, 30.0, 30.0]
    stack, canals = neck(depths)
    foramen = find_foramen_magnum(stack, canals)
    assert foramen.name == "foramen magnum"
    assert (foramen.bottom_slice, foramen.top_slice) == (80, 84)
    assert "slice 80: 22 mm deep" in foramen.evidence


def test_no_foramen_magnum_without_a_cistern_reaching_the_top_of_the_track():
    depths = [15.0] * 80 + [24.0] * 5
    stack, canals = neck(depths)
    canals[82] = None  # a slice without a canal inside the cistern is no break in it
    assert find_foramen_magnum(stack, canals).bottom_slice == 80
    # a canal box grown deep in the middle of the neck is no cistern
    stack, canals = neck([15.0] * 40 + [24.0] * 5 + [15.0] * 40)
    assert find_foramen_magnum(stack, canals) is None
    # one deep slice at the top is no cistern (3 mm are)
    stack, canals = neck([15.0] * 80 + [24.0] * 2)
    assert find_foramen_magnum(stack, canals) is None
    stack, canals = neck([15.0] * 80 + [24.0] * 2, slice_mm=1.5)
    assert find_foramen_magnum(stack, canals).bottom_slice == 80
    # a study too short for the canal's median to be the canal's
    stack, canals = neck([15.0] * 40 + [24.0] * 5)
    assert find_foramen_magnum(stack, canals) is None
    # deep boxes under a top slice as deep as the neck's are no cistern at the top: taken as one, they made a
    # "cistern" at the top of 3 of 1061 lumbar series (windows ending in the lumbar sac)
    stack, canals = neck([15.0] * 80 + [24.0] * 5 + [18.0])
    assert find_foramen_magnum(stack, canals) is None


def test_the_canal_of_c2_deeper_than_the_neck_below_it_is_no_cistern():
    # the top of a crop from C2 down: C2's canal 17 mm deep against 12 mm below, well over the cistern's ratio,
    # but no deeper than a canal is; the cistern behind the medulla is 20 mm deep and more
    stack, canals = neck([12.0] * 50 + [16.5, 17.0, 17.0, 17.2])
    assert find_foramen_magnum(stack, canals) is None
    stack, canals = neck([12.0] * 50 + [16.5, 17.0, 19.0, 20.0])
    assert find_foramen_magnum(stack, canals).bottom_slice == 50


def test_in_a_study_known_to_show_the_neck_a_shallower_opening_is_the_foramen_magnum():
    # 3 mm slices: the top two lie partly in the cistern and read 1.3 times the canal's 16 mm
    depths = [16.0] * 30 + [20.5, 21.0]
    stack, canals = neck(depths, slice_mm=3.0)
    assert find_foramen_magnum(stack, canals) is None
    foramen = find_foramen_magnum(stack, canals, NECK_CISTERN_DEPTH_RATIO)
    assert (foramen.bottom_slice, foramen.top_slice) == (30, 31)
    # the cistern's 20 mm still holds, and 1.2 times the median is still the canal
    stack, canals = neck([15.0] * 30 + [19.0, 19.5], slice_mm=3.0)
    assert find_foramen_magnum(stack, canals, NECK_CISTERN_DEPTH_RATIO) is None
    stack, canals = neck([17.0] * 30 + [20.3, 20.4], slice_mm=3.0)
    assert find_foramen_magnum(stack, canals, NECK_CISTERN_DEPTH_RATIO) is None


def test_one_thick_top_slice_as_deep_as_the_cistern_is_no_foramen_magnum():
    # the T2* of the neck, 7.5 mm slices: its canal deepens towards C1 and its top slice, in C2, reads 23.5 mm
    # against a median of 16 (the cistern's 1.35 times is 21.6): by either ratio, no opening
    depths = [16.0] * 10 + [16.6, 18.9, 21.1, 21.2, 23.5]
    stack, canals = neck(depths, slice_mm=7.5)
    assert find_foramen_magnum(stack, canals) is None
    assert find_foramen_magnum(stack, canals, NECK_CISTERN_DEPTH_RATIO) is None
    # two top slices beyond 1.35 times the median are the cistern, read by either ratio
    stack, canals = neck([16.0] * 10 + [16.6, 18.9, 21.1, 22.0, 23.5], slice_mm=7.5)
    assert find_foramen_magnum(stack, canals).bottom_slice == 13
    assert find_foramen_magnum(stack, canals, NECK_CISTERN_DEPTH_RATIO).bottom_slice == 12
    # on 4 mm slices one top slice that deep is the opening, as on the necks' 4 mm versions
    stack, canals = neck([16.0] * 20 + [23.5], slice_mm=4.0)
    assert find_foramen_magnum(stack, canals).bottom_slice == 20


def t2_neck(boxes_mm, pools_mm, pixel_mm=1.0):
    """A T2 neck, 1 mm slices: the canal's CSF (600) 15 mm deep round a dark cord (150) in tissue (100), and behind
    it on each slice ``pools_mm`` of CSF as wide as the canal (the cisterna magna); each box is ``boxes_mm`` deep."""
    n, px = int(round(80 / pixel_mm)), (lambda mm: int(round(mm / pixel_mm)))  # noqa: E731
    volume = np.full((len(boxes_mm), n, n), 100.0, np.float32)
    i0, i1, j0, j1 = px(30.0), px(50.0), px(20.0), px(35.0)
    volume[:, j0:j1, i0:i1] = 600.0
    volume[:, j0 + px(3.0):j1 - px(3.0), i0 + px(6.0):i1 - px(6.0)] = 150.0
    for k, pool in enumerate(pools_mm):
        volume[k, j1:j1 + px(pool), i0:i1] = 600.0
    image = sitk.GetImageFromArray(volume)
    image.SetSpacing((pixel_mm, pixel_mm, 1.0))
    return to_axial_stack(image), [SliceCanal(k, (float(i0), float(j0), float(i1), j0 + depth / pixel_mm), 0.9, 0.3)
                                   for k, depth in enumerate(boxes_mm)]


@pytest.mark.parametrize("pixel_mm", [0.5, 1.0])
def test_a_cistern_the_top_boxes_leave_out_is_read_from_the_csf_behind_them(pixel_mm):
    # sct_errsm_11_t2 with a detector trained as the default one, by the later recipe: the boxes open into the
    # cisterna magna 4 mm below the top (21-26 mm deep), but on the top 2 mm they hold only the medulla and the CSF
    # in front of it (15 mm), while the cistern's CSF runs on 10 mm behind them
    boxes, pools = [15.0] * 80 + [21.0, 23.0, 26.0, 15.0, 15.0], [0.0] * 80 + [6.0, 8.0, 11.0, 10.0, 10.0]
    stack, canals = t2_neck(boxes, pools, pixel_mm)
    assert find_foramen_magnum(stack, canals, NECK_CISTERN_DEPTH_RATIO) is None
    foramen = find_foramen_magnum(stack, canals, NECK_CISTERN_DEPTH_RATIO, FAINT_T2_CSF_CONTRAST)
    assert (foramen.bottom_slice, foramen.top_slice) == (80, 84)
    # only the top 3 mm are read so: a box 4 mm below the top that leaves the CSF behind it out breaks the run
    boxes[80:], pools[80:] = [15.0, 21.0, 23.0, 26.0, 26.0], [10.0, 6.0, 8.0, 11.0, 11.0]
    stack, canals = t2_neck(boxes, pools, pixel_mm)
    assert find_foramen_magnum(stack, canals, NECK_CISTERN_DEPTH_RATIO, FAINT_T2_CSF_CONTRAST).bottom_slice == 81
    # and the CSF as deep as the canal's on the top slices is no cistern
    stack, canals = t2_neck([15.0] * 85, [0.0] * 85, pixel_mm)
    assert find_foramen_magnum(stack, canals, NECK_CISTERN_DEPTH_RATIO, FAINT_T2_CSF_CONTRAST) is None


@pytest.mark.parametrize("pixel_mm", [0.5, 1.0])
def test_a_cistern_above_where_the_detector_lost_the_canal_is_read_under_the_top_box(pixel_mm):
    # sct_errsm_11_t2 as a 3 mm sagittal series: the boxes open into the cistern on the top 2 mm of the track only,
    # short of the 3 mm an opening needs, and the detector lost the 5 slices above, where the cistern runs on
    boxes, pools = [15.0] * 85, [0.0] * 78 + [5.0, 6.0] + [10.0] * 5
    stack, canals = t2_neck(boxes, pools, pixel_mm)
    canals[80:] = [None] * 5
    foramen = find_foramen_magnum(stack, canals, NECK_CISTERN_DEPTH_RATIO, FAINT_T2_CSF_CONTRAST)
    assert (foramen.bottom_slice, foramen.top_slice) == (78, 84)
    # the canal going on above the track, as deep as below, is no cistern; nor is one read without the CSF
    stack, canals = t2_neck(boxes, [0.0] * 78 + [5.0, 6.0, 0.0, 10.0, 10.0, 10.0, 10.0], pixel_mm)
    canals[80:] = [None] * 5
    assert find_foramen_magnum(stack, canals, NECK_CISTERN_DEPTH_RATIO, FAINT_T2_CSF_CONTRAST) is None
    stack, canals = t2_neck(boxes, pools, pixel_mm)
    canals[80:] = [None] * 5
    assert find_foramen_magnum(stack, canals, NECK_CISTERN_DEPTH_RATIO) is None
    # the cistern is read up to 10 mm above the track, here from where the canal was lost
    stack, canals = t2_neck([15.0] * 96, [0.0] * 80 + [10.0] * 16, pixel_mm)
    canals[80:] = [None] * 16
    foramen = find_foramen_magnum(stack, canals, NECK_CISTERN_DEPTH_RATIO, FAINT_T2_CSF_CONTRAST)
    assert (foramen.bottom_slice, foramen.top_slice) == (80, 89)


@settings(max_examples=25, deadline=None)
@given(pixel_mm=st.sampled_from([0.3, 0.5, 0.8, 1.0]), slice_mm=st.sampled_from([0.8, 1.0, 2.0, 3.0]))
def test_the_foramen_magnum_does_not_depend_on_the_pixel_or_slice_spacing(pixel_mm, slice_mm):
    below, cistern = int(round(90 / slice_mm)), int(round(9 / slice_mm))
    stack, canals = neck([15.0] * below + [26.0] * cistern, slice_mm=slice_mm, pixel_mm=pixel_mm)
    assert find_foramen_magnum(stack, canals).bottom_slice == below


def canal_track(slice_mm=1.0, pixel_mm=1.0, n_mm=150.0, bend_mm=40.0, steep=1.5, gentle=0.3, flip=False):
    """A lumbar canal whose track turns backwards below ``bend_mm`` (from the bottom) at ``steep`` mm per mm.

    Above the bend it drifts back gently (the lordosis, ``gentle``); below it the sacrum's canal runs back
    steeply at first and less towards the coccyx, as the sacrum curves forward. ``flip``: the stack's slices
    run head to feet instead of feet to head.
    """
    from SpineStenosisGraderLib.study.volume import AxialStack

    n = int(round(n_mm / slice_mm))
    image = sitk.GetImageFromArray(np.zeros((n, int(200 / pixel_mm), int(100 / pixel_mm)), dtype=np.float32))
    image.SetSpacing((pixel_mm, pixel_mm, slice_mm))
    if flip:
        image.SetDirection((1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, -1.0))
        image.SetOrigin((0.0, 0.0, (n - 1) * slice_mm))
    stack = AxialStack(image)
    canals = []
    for k in range(n):
        z = float(stack.index_to_lps([[0.0, 0.0, k]])[0, 2])  # mm above the bottom slice
        below = max(0.0, bend_mm - z)
        back = 80.0 - gentle * max(0.0, z - bend_mm) + steep * below - steep / (2.0 * bend_mm) * below ** 2 * 0.8
        j = back / pixel_mm
        canals.append(SliceCanal(k, (40.0 / pixel_mm, j - 6.0 / pixel_mm, 60.0 / pixel_mm, j + 6.0 / pixel_mm),
                                 0.9, 0.1))
    return stack, canals


def bend_height_mm(stack, landmark):
    return float(stack.index_to_lps([[0.0, 0.0, landmark.top_slice]])[0, 2])


@settings(max_examples=12, deadline=None)
@given(slice_mm=st.sampled_from([0.8, 1.0, 2.0, 3.0]), pixel_mm=st.sampled_from([0.5, 1.0, 1.5]), flip=st.booleans())
def test_the_lumbosacral_bend_is_where_the_canal_turns_back_into_the_sacrum(slice_mm, pixel_mm, flip):
    stack, canals = canal_track(slice_mm, pixel_mm, flip=flip)
    bend = find_lumbosacral_bend(stack, canals)
    assert bend is not None and bend.name == "lumbosacral bend"
    # the steepest slope, smoothed over 5 mm, lies within a few mm below the turn, whichever way the slices run
    assert 30.0 <= bend_height_mm(stack, bend) <= 41.0


def test_no_bend_where_the_canal_only_drifts_back_with_the_lordosis():
    stack, canals = canal_track(steep=0.7)
    assert find_lumbosacral_bend(stack, canals) is None
    # nor in a track too short to have a lower half
    stack, canals = canal_track()
    assert find_lumbosacral_bend(stack, canals[:8]) is None


def test_a_canal_that_turns_forwards_below_is_no_lumbosacral_bend():
    stack, canals = canal_track(steep=-1.5)
    assert find_lumbosacral_bend(stack, canals) is None


def draw_rib_sections(volume, sections, pixel_mm, sides=(-1, 1)):
    """A bone section 7 mm across on each (slice, mm beside the canal) on ``sides``, 20 mm behind the canal's front.

    The geometry of ``chest_and_lumbar_ct``: the canal's centre mid-slice, its front edge 100 mm from the top row.
    """
    size = volume.shape[1]
    jj, ii = np.mgrid[0:size, 0:size] * pixel_mm
    for k, lateral in sections:
        for side in sides:
            volume[k][np.hypot(ii - size * pixel_mm / 2.0 - side * lateral, jj - 120.0) <= 3.5] = 500.0


def chest_and_lumbar_ct(heads, slice_mm=3.0, pixel_mm=1.0, n=None, skip=()):
    """A CT of the lower spine with a pair of ribs whose heads lie on the given slices (mm above the first slice).

    The vertebra is a block of bone in front of the canal; each rib runs from its head, 45 mm beside the canal,
    outwards 1.5 mm per mm downwards, 20 mm behind the canal's front edge. ``skip``: slices the tracking missed.
    """
    n = n or int(round(150.0 / slice_mm))
    size = int(round(240.0 / pixel_mm))
    volume = np.full((n, size, size), 40.0, dtype=np.float32)
    centre, front = size / 2.0, 100.0 / pixel_mm
    volume[:, int(front - 30 / pixel_mm):int(front - 2 / pixel_mm),
           int(centre - 20 / pixel_mm):int(centre + 20 / pixel_mm)] = 300.0
    draw_rib_sections(volume, [(k, 45.0 + 1.5 * (head_mm - k * slice_mm)) for head_mm in heads for k in range(n)
                               if 0 <= head_mm - k * slice_mm <= 35.0], pixel_mm)
    image = sitk.GetImageFromArray(volume)
    image.SetSpacing((pixel_mm, pixel_mm, slice_mm))
    stack = to_axial_stack(image)
    box = (centre - 10 / pixel_mm, front, centre + 10 / pixel_mm, front + 16 / pixel_mm)
    return stack, [None if k in skip else SliceCanal(k, box, 0.9, 0.1) for k in range(n)]


@pytest.mark.parametrize("slice_mm, pixel_mm", [(3.0, 1.0), (1.0, 0.8), (2.0, 1.5)])
def test_the_lowest_rib_is_read_where_it_runs_down_and_out_from_its_head(slice_mm, pixel_mm):
    # the 12th rib's head 90 mm up the study, the 11th's 115 mm up, whose rib runs on down beside the 12th's
    stack, canals = chest_and_lumbar_ct([90.0, 115.0], slice_mm, pixel_mm)
    rib = find_lowest_rib(stack, canals)
    assert rib is not None and rib.name == "lowest rib"
    assert abs(rib.top_slice * slice_mm - 90.0) <= slice_mm
    assert "a pair of ribs" in rib.evidence and "no rib below them" in rib.evidence


def test_a_rib_is_followed_across_slices_the_tracking_missed():
    # the canal untracked on three slices the rib crosses: it lies between the boxes around them
    stack, canals = chest_and_lumbar_ct([90.0], skip=(26, 27, 28))
    rib = find_lowest_rib(stack, canals)
    assert rib is not None and rib.top_slice == 30


def test_bone_level_beside_the_vertebra_is_no_rib():
    # transverse processes and an iliac crest: bone beside the vertebra that comes no closer going up
    stack, canals = chest_and_lumbar_ct([])
    volume = sitk.GetArrayFromImage(stack.image)
    volume[10:14, 115:121, 60:75] = 500.0   # processes 45-60 mm beside the canal, level over 12 mm
    volume[10:14, 115:121, 165:180] = 500.0
    volume[0:12, 90:140, 20:40] = 500.0     # a wide blade of bone far out: too big for a rib
    image = sitk.GetImageFromArray(volume)
    image.CopyInformation(stack.image)
    assert find_lowest_rib(to_axial_stack(image), canals) is None


def test_a_rib_cut_by_the_top_of_the_study_shows_no_head():
    stack, canals = chest_and_lumbar_ct([90.0])
    cut = to_axial_stack(stack.image[:, :, :29])  # ends 6 mm below the head, 54 mm beside the canal
    assert find_lowest_rib(cut, canals[:29]) is None
    assert find_lowest_rib(to_axial_stack(stack.image[:, :, :32]), canals[:32]) is not None


def test_a_rib_with_less_than_a_vertebra_of_canal_below_its_head_is_no_landmark():
    # a study of the chest shows ribs on every vertebra: its lowest pair need not be the 12th
    stack, canals = chest_and_lumbar_ct([90.0])
    assert find_lowest_rib(stack, [None] * 21 + canals[21:]) is None    # canal from 63 mm: 27 mm below the head
    assert find_lowest_rib(stack, [None] * 19 + canals[19:]) is not None  # from 57 mm: 33 mm below it


def with_sections(stack, sections, sides=(-1, 1)):
    """``chest_and_lumbar_ct``'s stack with rib sections drawn on it (``draw_rib_sections``)."""
    volume = sitk.GetArrayFromImage(stack.image)
    draw_rib_sections(volume, sections, stack.spacing[0], sides)
    image = sitk.GetImageFromArray(volume)
    image.CopyInformation(stack.image)
    return to_axial_stack(image)


def test_bone_that_wanders_in_and_out_or_stays_near_the_vertebra_is_no_rib():
    stack, canals = chest_and_lumbar_ct([])
    # steadily in from 62 to 46 mm over 12 mm: a rib
    assert find_lowest_rib(with_sections(stack, [(10, 62), (11, 58), (12, 54), (13, 50), (14, 46)]), canals)
    # the same ends, but out again by 6 mm on the way: processes and facets on thick slices
    assert find_lowest_rib(with_sections(stack, [(10, 62), (11, 54), (12, 60), (13, 50), (14, 46)]), canals) is None
    # steadily in from 62 mm, but by 10 mm only: too little to be a rib running in to its head
    assert find_lowest_rib(with_sections(stack, [(10, 62), (11, 60), (12, 57), (13, 54), (14, 52)]), canals) is None
    # steadily in, but from 41 mm only: no further out than the tips of the transverse processes
    assert find_lowest_rib(with_sections(stack, [(10, 41), (11, 37), (12, 33), (13, 29), (14, 25)]), canals) is None


def test_bone_followed_over_less_than_9_mm_is_no_rib():
    # on 1 mm slices: in from 62 to 50 mm over 2 mm is a short piece of bone, over 12 mm a rib
    stack, canals = chest_and_lumbar_ct([], slice_mm=1.0)
    assert find_lowest_rib(with_sections(stack, [(40, 62), (41, 56), (42, 50)]), canals) is None
    assert find_lowest_rib(with_sections(stack, [(40 + m, 62 - m) for m in range(13)]), canals).top_slice == 52


def test_a_rib_cut_by_the_field_of_view_is_followed_in_from_its_edge():
    stack, canals = chest_and_lumbar_ct([])
    ribbed = with_sections(stack, [(10, 53), (11, 49), (12, 45), (13, 41), (14, 38)])
    # in a wide field of view a section that never lies further out than 53 mm is no rib
    assert find_lowest_rib(ribbed, canals) is None
    # a field of view 110 mm across, cut 55 mm either side of the canal, as VerSe 012's: the rib is cut by its edge
    narrow = to_axial_stack(ribbed.image[65:175, :, :])
    shifted = [SliceCanal(c.slice_index, (c.box_ij[0] - 65, c.box_ij[1], c.box_ij[2] - 65, c.box_ij[3]), 0.9, 0.1)
               for c in canals]
    rib = find_lowest_rib(narrow, shifted)
    assert rib is not None and rib.top_slice == 14


def test_ribs_come_in_pairs_and_a_lowest_rib_without_its_partner_is_no_landmark():
    # the 12th rib's head on slice 30, 90 mm up: a pair
    stack, canals = chest_and_lumbar_ct([90.0])
    assert find_lowest_rib(stack, canals).top_slice == 30
    # below it, on one side only, another steady rib: its partner may be missed, and the pair above it is the 11th
    lower = with_sections(stack, [(20, 66), (21, 62), (22, 58), (23, 54), (24, 50)], sides=(1,))
    assert find_lowest_rib(lower, canals) is None
    # with its partner the lower pair is the lowest
    assert find_lowest_rib(with_sections(lower, [(20, 66), (21, 62), (22, 58), (23, 54), (24, 50)], sides=(-1,)),
                           canals).top_slice == 24


@pytest.mark.parametrize("slice_mm, pixel_mm", [(3.0, 1.0), (1.0, 0.8), (4.5, 1.5)])
def test_the_first_rib_is_the_highest_pair_below_a_neck_that_bears_none(slice_mm, pixel_mm):
    # heads 40 and 65 mm up a 150 mm study: the canal runs on 85 mm above the higher pair with no rib there
    stack, canals = chest_and_lumbar_ct([40.0, 65.0], slice_mm, pixel_mm)
    rib = find_first_rib(stack, canals)
    assert rib is not None and rib.name == "first rib"
    assert abs(rib.top_slice * slice_mm - 65.0) <= slice_mm
    assert "a pair of ribs" in rib.evidence and "no rib above them" in rib.evidence
    # the lowest pair is the other one: the two readings do not mix them up
    assert abs(find_lowest_rib(stack, canals).top_slice * slice_mm - 40.0) <= slice_mm


def test_a_highest_rib_with_less_than_a_vertebra_of_canal_above_or_without_its_partner_is_no_first_rib():
    # a study of the chest cut above its highest ribs read: the ribs of the vertebrae above may lie past its top
    stack, canals = chest_and_lumbar_ct([40.0, 65.0])
    assert find_first_rib(stack, canals[:39] + [None] * 11) is not None  # canal up to 114 mm: 49 mm above the head
    assert find_first_rib(stack, canals[:31] + [None] * 19) is None  # up to 90 mm: 25 mm above it
    # above them, on one side only, another steady rib: its partner may be missed, and it may be the first
    upper = with_sections(stack, [(28, 66), (29, 62), (30, 58), (31, 54), (32, 50)], sides=(1,))
    assert find_first_rib(upper, canals) is None
    assert find_first_rib(with_sections(upper, [(28, 66), (29, 62), (30, 58), (31, 54), (32, 50)], sides=(-1,)),
                          canals).top_slice == 32


@pytest.mark.parametrize("body_above_mm, found", [(48.0, True), (39.0, False), (30.0, False)])
def test_bone_as_wide_as_the_alae_is_the_sacrum_only_below_lumbar_bodies(body_above_mm, found):
    # bone 160 mm across joined to the vertebra on the three lowest 3 mm slices: the alae below L5 (bodies of
    # 45-55 mm), or in a neck CT's thick slices the first ribs joined to T1 below bodies of 30-39 mm
    stack, canals = spine_ct([120.0] * 14)
    alae = [VertebralBone(k, 80.0, 80.0, 0.0) for k in range(3)]
    bodies = [VertebralBone(k, 20.0, 20.0, body_above_mm) for k in range(3, 14)]
    sacrum = find_sacrum(stack, alae + bodies, canals)
    assert (sacrum is not None) == found
    if found:
        assert sacrum.slices == (0, 1, 2) and sacrum.top_slice == 2
    # with too few bodies measured above to know their width, the alae alone tell
    assert find_sacrum(stack, alae + bodies[:2], canals) is not None



def neck_ct_behind(bone_slices, n=60, slice_mm=1.5, canal_top=None):
    """A neck CT of ``n`` slices with bone 30-40 mm behind the canal (its occipital bone, or a spinous process) on
    ``bone_slices``; the canal tracked up to ``canal_top`` (the top slice by default)."""
    stack, canals = spine_ct([300.0] * n, slice_mm)
    volume = stack.array.copy()
    for k in bone_slices:
        volume[k, 96:100, 38:62] = 1000.0  # 30-34 mm behind the box's back edge (row 66), 24 mm across
    image = sitk.GetImageFromArray(volume)
    image.SetSpacing((1.0, 1.0, slice_mm))
    top = n - 1 if canal_top is None else canal_top
    return to_axial_stack(image), [c if c.slice_index <= top else None for c in canals]


def test_the_skull_base_on_ct_is_where_bone_behind_the_canal_begins_and_runs_to_the_top():
    # the occipital bone from slice 40 to the top (30 mm of 1.5 mm slices), over a spinous process on 20-27; the
    # canal tracked to slice 45 only, its last box standing in above it
    stack, canals = neck_ct_behind(list(range(20, 28)) + list(range(40, 60)), canal_top=45)
    skull = find_skull_base_ct(stack, canals)
    assert skull is not None and skull.bottom_slice == 40 and skull.top_slice == 59
    # a slice of thin bone inside the run does not break it; the top slice may read empty (s0002's does)
    stack, canals = neck_ct_behind([k for k in range(40, 59) if k != 50])
    assert find_skull_base_ct(stack, canals).bottom_slice == 40


@pytest.mark.parametrize("bone_slices", [list(range(40, 54)),  # stops 9 mm below the top: no skull above
                                         list(range(52, 60)),  # 12 mm: a spinous process at the top
                                         list(range(20, 40))])  # a long run in the middle only
def test_bone_behind_the_canal_that_does_not_run_to_the_top_or_is_short_is_no_skull_base(bone_slices):
    stack, canals = neck_ct_behind(bone_slices)
    assert find_skull_base_ct(stack, canals) is None


@pytest.mark.parametrize("depth_mm, pixel_mm", [(17.0, 1.0), (35.0, 1.0), (17.0, 0.5), (35.0, 3.0)])
def test_a_vertebral_bodys_depth_is_read_front_to_back_from_the_canal_not_across_its_processes(depth_mm, pixel_mm):
    # a body ``depth_mm`` deep in front of the canal, with transverse processes 20 mm long either side of its back
    # half, as in the neck; its middle as soft as an old body's (80 HU) inside a cortex, which is filled
    from SpineStenosisGraderLib.inference.landmarks import vertebral_bone

    size = int(round(160.0 / pixel_mm))
    volume = np.full((3, size, size), 40.0, dtype=np.float32)
    centre, front = size // 2, int(round(90.0 / pixel_mm))
    half, deep, wall = int(round(9.0 / pixel_mm)), int(round(depth_mm / pixel_mm)), max(1, int(round(1.5 / pixel_mm)))
    volume[:, front - deep:front, centre - half:centre + half] = 600.0
    volume[:, front - deep + wall:front - wall, centre - half + wall:centre + half - wall] = 80.0
    processes = int(round(20.0 / pixel_mm))
    volume[:, front - int(round(8.0 / pixel_mm)):front - int(round(3.0 / pixel_mm)),
           centre - half - processes:centre + half + processes] = 600.0
    image = sitk.GetImageFromArray(volume)
    image.SetSpacing((pixel_mm, pixel_mm, 3.0))
    box = (centre - 8.0 / pixel_mm, float(front), centre + 8.0 / pixel_mm, front + 14.0 / pixel_mm)
    bone = vertebral_bone(to_axial_stack(image), SliceCanal(1, box, 0.9, 0.1))
    assert bone is not None and bone.body_width_mm >= 55.0  # the processes widen the bone, not the body's depth
    assert bone.body_depth_mm == pytest.approx(round(depth_mm / pixel_mm) * pixel_mm)
