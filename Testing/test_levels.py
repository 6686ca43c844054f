"""Level grouping and naming from landmarks, lumbar, thoracic and cervical, with re-anchoring."""

import dataclasses

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from SpineStenosisGraderLib.errors import InputError
from SpineStenosisGraderLib.inference.levels import (
    BAND_DEPTH_MARGIN,
    CT_FORAMEN_REACH,
    MR_FORAMEN_REACH,
    SPINE_DISCS,
    LevelCandidate,
    SliceCanal,
    drop_bandless_end_levels,
    drop_below_lumbosacral_bend,
    drop_cisterns,
    drop_sacral_level,
    find_discs,
    level_box,
    min_disc_separation_mm,
    name_from_anatomy,
    name_levels,
    region_of_disc,
)


def synthetic_canals(n_slices, disc_slices, half_width=1, score=0.9):
    canals = []
    for k in range(n_slices):
        near = any(abs(k - d) <= half_width for d in disc_slices)
        canals.append(SliceCanal(k, (10.0 + k * 0.1, 20.0, 30.0, 38.0), score, 0.9 if near else 0.05))
    return canals


def test_lumbar_discs_found_and_named_from_the_sacrum():
    # the sacral alae reach up to slice 6; a disc-like place at slice 2 lies inside the sacrum
    discs = [2, 8, 20, 32, 44, 56]
    levels = find_discs(synthetic_canals(64, discs), 64, 3.0)
    assert [lv.slice_index for lv in levels] == discs
    naming = name_from_anatomy(levels, "lumbar", 3.0, sacrum_top_slice=6)
    assert [c.slice_index for c in naming.kept] == [8, 20, 32, 44, 56]
    assert naming.names == ["L5-S1", "L4-L5", "L3-L4", "L2-L3", "L1-L2"]
    assert naming.anchored and naming.landmark == "sacrum"
    assert naming.confidence == ["high"] * 5
    assert any("inside the sacrum (slice 2)" in w for w in naming.warnings)
    assert "five lumbar vertebrae" in naming.note


def test_a_lowest_disc_far_above_the_sacrum_is_l4_l5_and_said_to_be_unsure():
    levels = find_discs(synthetic_canals(64, [20, 32, 44]), 64, 3.0)
    naming = name_from_anatomy(levels, "lumbar", 3.0, sacrum_top_slice=6)  # 42 mm below the lowest disc
    assert naming.names == ["L4-L5", "L3-L4", "L2-L3"]
    assert naming.confidence == ["low"] * 3
    assert any("L5-S1 was not found" in w for w in naming.warnings)


def test_without_a_landmark_names_are_counted_but_marked_not_anchored():
    levels = find_discs(synthetic_canals(64, [8, 20, 32]), 64, 3.0)
    naming = name_from_anatomy(levels, "lumbar", 3.0)
    assert naming.names == ["L5-S1", "L4-L5", "L3-L4"]
    assert not naming.anchored and naming.landmark == ""
    assert naming.confidence == ["none"] * 3
    assert naming.note.startswith("Not anchored")


def test_cervical_discs_counted_from_c2_and_not_anchored():
    discs = [3, 11, 19, 27]
    levels = find_discs(synthetic_canals(32, discs, half_width=0), 32, 2.0)
    naming = name_from_anatomy(levels, "cervical", 2.0)
    assert naming.names == ["C5-C6", "C4-C5", "C3-C4", "C2-C3"]
    assert not naming.anchored and "highest" in naming.note


def _cervical_levels_below(foramen_slice, distances_mm, slice_mm=1.0):
    """Candidates ``distances_mm`` below the foramen magnum's slice, listed inferior first."""
    slices = sorted(foramen_slice - int(round(d / slice_mm)) for d in distances_mm)
    return [LevelCandidate(slice_index=k, box_ij=(20.0, 30.0, 40.0, 58.0), score=0.9, disc_probability=0.5,
                           slices=(k,)) for k in slices]


def test_a_cervical_study_reaching_the_skull_base_is_named_from_the_foramen_magnum():
    # a whole neck: bands at C1 (8 mm below the foramen) and the dens (17 mm), then the discs from C2-C3 (32 mm)
    levels = _cervical_levels_below(200, [8, 17, 32, 48, 64, 80])
    naming = name_from_anatomy(levels, "cervical", 1.0, foramen_magnum_slice=200)
    assert [c.slice_index for c in naming.kept] == [120, 136, 152, 168]
    assert naming.names == ["C5-C6", "C4-C5", "C3-C4", "C2-C3"]
    assert naming.anchored and naming.landmark == "foramen magnum"
    assert naming.confidence == ["low"] * 4
    assert "32 mm below" in naming.note
    assert any("2 disc-like place(s) less than 25 mm below the foramen magnum (slice 183, 192)" in w
               for w in naming.warnings)


def test_on_thick_slices_the_foramen_magnum_is_measured_in_mm():
    # 7.5 mm slices: C2-C3 four slices (30 mm) below, a band at C2 two slices (15 mm) below
    levels = _cervical_levels_below(14, [15, 30, 45, 60], slice_mm=7.5)
    naming = name_from_anatomy(levels, "cervical", 7.5, foramen_magnum_slice=14)
    assert [c.slice_index for c in naming.kept] == [6, 8, 10]
    assert naming.names == ["C4-C5", "C3-C4", "C2-C3"]


def test_a_highest_disc_a_vertebra_too_far_below_the_foramen_magnum_is_not_taken_for_c2_c3():
    # C2-C3 missed: the highest disc found, 48 mm below the opening, is C3-C4, named so, and unsure
    levels = _cervical_levels_below(200, [48, 64, 80])
    naming = name_from_anatomy(levels, "cervical", 1.0, foramen_magnum_slice=200)
    assert naming.names == ["C5-C6", "C4-C5", "C3-C4"]
    assert naming.anchored and naming.landmark == "foramen magnum" and naming.confidence == ["low"] * 3
    assert "48 mm below" in naming.note and "is C3-C4" in naming.note
    assert any("C2-C3 was not found" in w and "taken as C3-C4" in w for w in naming.warnings)
    # 42 mm is still C2-C3's place, and 60 mm C3-C4's
    assert name_from_anatomy(_cervical_levels_below(200, [42, 58]), "cervical", 1.0,
                             foramen_magnum_slice=200).names == ["C3-C4", "C2-C3"]
    assert name_from_anatomy(_cervical_levels_below(200, [60, 76]), "cervical", 1.0,
                             foramen_magnum_slice=200).names == ["C4-C5", "C3-C4"]


def test_a_highest_disc_two_vertebrae_below_the_foramen_magnum_is_not_named_from_it():
    # 66 mm below the opening lies C4-C5 or lower: too far to count from the skull base
    levels = _cervical_levels_below(200, [66, 82])
    naming = name_from_anatomy(levels, "cervical", 1.0, foramen_magnum_slice=200)
    assert not naming.anchored and naming.confidence == ["none"] * 2
    assert any("66 mm below the foramen magnum" in w and "C2-C3 was not found" in w for w in naming.warnings)


def test_on_ct_a_level_in_c2s_body_below_the_foramen_magnums_back_rim_is_dropped():
    # on CT the opening is read at its back rim, lower than an MR's: C2-C3 lay 37.5 and 42 mm below it on the two
    # neck CTs, and a level 32 mm below it lay in C2's body. On MR, 32 mm below the opening is C2-C3's place
    levels = _cervical_levels_below(200, [32, 42, 58])
    ct = name_from_anatomy(levels, "cervical", 1.0, foramen_magnum_slice=200, foramen_reach=CT_FORAMEN_REACH)
    assert [c.slice_index for c in ct.kept] == [142, 158] and ct.names == ["C3-C4", "C2-C3"]
    assert any("1 disc-like place(s) less than 34 mm below the foramen magnum (slice 168)" in w for w in ct.warnings)
    mr = name_from_anatomy(levels, "cervical", 1.0, foramen_magnum_slice=200, foramen_reach=MR_FORAMEN_REACH)
    assert mr.names == ["C4-C5", "C3-C4", "C2-C3"] and not mr.warnings
    # C2-C3 37.5 mm below the rim (s0003) stays
    ct = name_from_anatomy(_cervical_levels_below(200, [37.5, 54]), "cervical", 1.0, foramen_magnum_slice=200,
                           foramen_reach=CT_FORAMEN_REACH)
    assert ct.names == ["C3-C4", "C2-C3"]


def test_the_foramen_magnum_names_cervical_studies_only_and_the_users_anchor_wins():
    levels = _cervical_levels_below(200, [10, 32, 48, 64])
    lumbar = name_from_anatomy(levels, "lumbar", 1.0, foramen_magnum_slice=200)
    assert not lumbar.anchored and len(lumbar.kept) == 4 and not lumbar.warnings
    levels = levels[:3]
    user = name_from_anatomy(levels, "cervical", 1.0, anchor=(-1, "C3-C4"), foramen_magnum_slice=200)
    assert user.landmark == "user" and user.names == ["C5-C6", "C4-C5", "C3-C4"]


def test_a_lumbar_study_without_the_sacrum_is_named_from_the_lowest_rib():
    # 3 mm slices; the 12th rib's head on slice 46, 6 mm above the disc on slice 44, which is T12-L1
    naming = name_from_anatomy(_levels_at([8, 20, 32, 44, 54]), "lumbar", 3.0, lowest_rib_slice=46)
    assert naming.names == ["L3-L4", "L2-L3", "L1-L2", "T12-L1", "T11-T12"]
    assert naming.anchored and naming.landmark == "lowest rib" and naming.confidence == ["low"] * 5
    assert "taken as the 12th" in naming.note and "11 or 13 pairs of ribs" in naming.note
    # a level found a slice above the head is still T12-L1; T11-T12, a vertebra up, is not
    assert name_from_anatomy(_levels_at([20, 32, 47]), "lumbar", 3.0, lowest_rib_slice=46).names[-1] == "T12-L1"
    # the highest of two discs below the head is T12-L1; one 30 mm below it, a vertebra's height, is T12-L1 too
    assert name_from_anatomy(_levels_at([20, 36, 44]), "lumbar", 3.0, lowest_rib_slice=46).names[-2:] == [
        "L1-L2", "T12-L1"]
    assert name_from_anatomy(_levels_at([20, 32, 36]), "lumbar", 3.0, lowest_rib_slice=46).names[-1] == "T12-L1"


def test_no_name_from_the_rib_without_a_disc_just_below_its_head_or_in_a_neck():
    for levels, region in (([8, 20, 32], "lumbar"), ([8, 20, 48], "lumbar"), ([36, 42], "cervical")):
        naming = name_from_anatomy(_levels_at(levels), region, 3.0, lowest_rib_slice=46 if region == "lumbar" else 45)
        assert not naming.anchored and naming.landmark == "", (levels, region)
    # 3 mm above the head on 3 mm slices is the limit; 6 mm is T11-T12's place
    assert name_from_anatomy(_levels_at([20, 47]), "lumbar", 3.0, lowest_rib_slice=46).anchored
    assert not name_from_anatomy(_levels_at([48]), "lumbar", 3.0, lowest_rib_slice=46).anchored


def test_the_sacrum_outranks_the_rib_and_a_rib_that_disagrees_is_a_transitional_warning():
    levels = _levels_at([8, 20, 32, 44, 56, 68])
    agree = name_from_anatomy(levels, "lumbar", 3.0, sacrum_top_slice=6, lowest_rib_slice=70)
    assert agree.landmark == "sacrum" and agree.names[-1] == "T12-L1"
    assert not any("rib" in w for w in agree.warnings)
    # six lumbar-type levels below the rib-free vertebra: an L6 or a 13th pair of ribs
    levels = _levels_at([8, 20, 32, 44, 56, 68, 80])
    six = name_from_anatomy(levels, "lumbar", 3.0, sacrum_top_slice=6, lowest_rib_slice=82)
    assert six.landmark == "sacrum" and six.names[-1] == "T11-T12"
    assert any("makes the level on slice 80 T12-L1, where the count from the sacrum makes it T11-T12" in w
               and "transitional vertebra" in w for w in six.warnings)
    # the user's anchor outranks both
    user = name_from_anatomy(levels, "lumbar", 3.0, anchor=(0, "L4-L5"), sacrum_top_slice=6, lowest_rib_slice=82)
    assert user.landmark == "user"


def test_a_neck_with_its_first_ribs_is_named_from_them():
    # 3 mm slices; the first ribs' heads on slice 40, on T1: the lowest disc 2-18 mm above them is C7-T1 (slice 44,
    # 12 mm up), whatever the neck's top shows. T1-T2 lies below the heads, C6-C7 a vertebra above C7-T1
    naming = name_from_anatomy(_levels_at([34, 44, 50, 56]), "cervical", 3.0, first_rib_slice=40)
    assert naming.names == ["T1-T2", "C7-T1", "C6-C7", "C5-C6"]
    assert naming.anchored and naming.landmark == "first rib" and naming.confidence == ["low"] * 4
    assert "slice 40" in naming.note and "(slice 44) is C7-T1" in naming.note and "rib on C7" in naming.note
    assert not naming.warnings
    # an upper chest series, read thoracic, is named so too; 2 mm above the heads is the limit, 18 mm the other
    assert name_from_anatomy(_levels_at([34, 44]), "thoracic", 3.0, first_rib_slice=40).names == ["T1-T2", "C7-T1"]
    assert name_from_anatomy(_levels_at([41, 47]), "cervical", 3.0, first_rib_slice=40).names == ["C7-T1", "C6-C7"]
    assert name_from_anatomy(_levels_at([46]), "cervical", 3.0, first_rib_slice=40).names == ["C7-T1"]
    # of two levels in that reach, the lower is C7-T1
    assert name_from_anatomy(_levels_at([3, 16]), "cervical", 1.0, first_rib_slice=0).names == ["C7-T1", "C6-C7"]
    for levels in ([40, 52], [47]):
        assert not name_from_anatomy(_levels_at(levels), "cervical", 3.0, first_rib_slice=40).anchored, levels


def test_the_first_ribs_outrank_the_foramen_magnum_and_a_disagreement_is_a_warning():
    # 1 mm slices: C7-T1 12 mm above the heads, the discs 16 mm apart up to C2-C3, 40 mm below the foramen magnum
    levels = _levels_at([12, 28, 44, 60, 76, 92])
    agree = name_from_anatomy(levels, "cervical", 1.0, foramen_magnum_slice=132, first_rib_slice=0,
                              foramen_reach=CT_FORAMEN_REACH)
    assert agree.landmark == "first rib" and agree.names == ["C7-T1", "C6-C7", "C5-C6", "C4-C5", "C3-C4", "C2-C3"]
    assert not agree.warnings
    # C4-C5's disc missed: the foramen still names the highest one C2-C3, the ribs C3-C4
    levels = _levels_at([12, 28, 44, 76, 92])
    naming = name_from_anatomy(levels, "cervical", 1.0, foramen_magnum_slice=132, first_rib_slice=0,
                               foramen_reach=CT_FORAMEN_REACH)
    assert naming.landmark == "first rib" and naming.names == ["C7-T1", "C6-C7", "C5-C6", "C4-C5", "C3-C4"]
    assert any("The foramen magnum (slice 132) makes the highest level C2-C3, where the first ribs make it C3-C4" in w
               for w in naming.warnings)
    # in a lumbar study the first ribs name nothing, and the user's anchor outranks them
    assert not name_from_anatomy(levels, "lumbar", 1.0, first_rib_slice=0).anchored
    assert name_from_anatomy(levels, "cervical", 1.0, anchor=(0, "C6-C7"), first_rib_slice=0).landmark == "user"


def test_an_unknown_region_claims_no_level_name():
    levels = find_discs(synthetic_canals(40, [10, 30]), 40, 3.0)
    naming = name_from_anatomy(levels, "unknown", 3.0)
    assert naming.names == ["disc 1", "disc 2"]
    assert not naming.anchored


def test_the_users_anchor_names_every_level_and_wins_over_the_sacrum():
    levels = find_discs(synthetic_canals(64, [8, 20, 32]), 64, 3.0)
    naming = name_from_anatomy(levels, "lumbar", 3.0, sacrum_top_slice=6, anchor=(-1, "L1-L2"))
    assert naming.names == ["L3-L4", "L2-L3", "L1-L2"]
    assert naming.anchored and naming.landmark == "user" and "highest" in naming.note


@pytest.mark.parametrize("name,region", [("C7-T1", "cervical"), ("T12-L1", "thoracic"), ("L5-S1", "lumbar"),
                                         ("disc 1", "unknown"), ("below L5-S1 (1)", "unknown")])
def test_a_discs_region_is_that_of_the_vertebra_above(name, region):
    assert region_of_disc(name) == region


def test_low_scores_and_isolated_noise_are_ignored():
    canals = synthetic_canals(40, [10, 30])
    canals[20] = SliceCanal(20, (0, 0, 5, 5), 0.1, 1.0)  # confident disc, unsure canal
    canals[5] = None
    levels = find_discs(canals, 40, 3.0)
    assert [lv.slice_index for lv in levels] == [10, 30]


def test_one_disc_split_by_a_doubtful_slice_stays_one():
    canals = synthetic_canals(30, [10, 12], half_width=0)
    levels = find_discs(canals, 30, 3.0)
    assert len(levels) == 1


@pytest.mark.parametrize("position,name", [(0, "L4-L5"), (2, "L3-L4"), (-1, "T12-L1")])
def test_reanchoring_shifts_every_name(position, name):
    names = name_levels(4, "lumbar", anchor=(position, name))
    assert names[position] == name
    indices = [SPINE_DISCS.index(n) for n in names]
    assert indices == sorted(indices, reverse=True)
    assert np.all(np.diff(indices) == -1)


def test_names_past_the_sacrum_are_explicit():
    names = name_levels(3, "lumbar", anchor=(1, "L5-S1"))
    assert names == ["below L5-S1 (1)", "L5-S1", "L4-L5"]


def test_bad_anchor_is_a_clear_error():
    with pytest.raises(InputError, match="not a disc level"):
        name_levels(3, "lumbar", anchor=(0, "L6-L7"))
    with pytest.raises(InputError, match="outside"):
        name_levels(3, "lumbar", anchor=(5, "L4-L5"))


@given(n=st.integers(1, 12), region=st.sampled_from(["lumbar", "thoracic", "cervical"]))
def test_names_are_unique_and_contiguous(n, region):
    names = name_levels(n, region)
    assert len(set(names)) == n
    known = [SPINE_DISCS.index(name) for name in names if name in SPINE_DISCS]
    # inferior first: each known name is the next disc up from the one below it
    assert known == list(range(known[0], known[0] - len(known), -1))


def profile_canals(probabilities, score=0.9):
    return [SliceCanal(k, (10.0, 20.0, 30.0, 38.0), score, float(p)) for k, p in enumerate(probabilities)]


def test_discs_are_where_an_unsure_detector_rises_not_where_it_passes_one_half():
    # an unfamiliar contrast: 0.35 between discs, 0.45 at them (never 0.5), at 1 mm slices
    discs = [10, 26, 42, 58]
    probabilities = np.full(70, 0.35)
    for d in discs:
        probabilities[d - 1:d + 2] = 0.45
    levels = find_discs(profile_canals(probabilities), 70, 1.0, "cervical")
    assert [lv.slice_index for lv in levels] == discs


@pytest.mark.parametrize("lost, expected", [((20, 24), 21), ((21, 22), 22)])
def test_a_disc_where_the_detector_lost_the_canal_lies_in_the_middle_of_the_lost_run(lost, expected):
    # 1.5 mm slices: the canal lost on slices lost[0]..lost[1]-1 (bridged by the tracking), the detector's disc
    # evidence up on the slices seen either side, more above (0.6) than below (0.45), so that it peaks at the
    # run's upper end. Over four lost slices (6 mm, past the smoothing's reach) the disc that narrowed the canal
    # lies in their middle, not on the slice seen next to them (a neck CT's C3-C4, where the level on the seen
    # slice lay 4.5 mm above its disc, within a vertebra of C2-C3, and was dropped); over one, the slice seen
    # next to it stands
    probabilities = np.full(60, 0.25)
    probabilities[[lost[0] - 1, lost[1]]] = [0.45, 0.6]
    probabilities[44:47] = [0.4, 0.5, 0.4]
    canals = [SliceCanal(c.slice_index, c.box_ij, 0.0, 0.0, bridged=True) if lost[0] <= k < lost[1] else c
              for k, c in enumerate(profile_canals(probabilities))]
    levels = find_discs(canals, 60, 1.5, "cervical")
    assert [lv.slice_index for lv in levels] == [expected, 45]


def test_a_detector_sure_of_a_disc_everywhere_finds_none():
    assert find_discs(profile_canals(np.full(60, 0.8)), 60, 2.0) == []


def test_two_discs_closer_than_a_lumbar_vertebra_are_one_but_not_in_the_neck():
    # peaks 12 mm apart at 3 mm slices: a lumbar body is at least 25 mm tall, a cervical one 12-15 mm
    probabilities = np.full(40, 0.1)
    probabilities[[10, 14, 30]] = [0.6, 0.9, 0.9]
    assert [lv.slice_index for lv in find_discs(profile_canals(probabilities), 40, 3.0, "lumbar")] == [14, 30]
    assert [lv.slice_index for lv in find_discs(profile_canals(probabilities), 40, 3.0, "cervical")] == [10, 14, 30]


def test_a_gap_between_endplates_outweighs_the_detector():
    probabilities = np.full(40, 0.1)
    probabilities[[10, 14, 30]] = [0.6, 0.9, 0.9]
    gaps = np.zeros(40)
    gaps[[10, 30]] = 1.0
    levels = find_discs(profile_canals(probabilities), 40, 3.0, "lumbar", gaps)
    assert [lv.slice_index for lv in levels] == [10, 30]
    # and a gap alone, where the detector is unsure, is a disc
    probabilities = np.full(40, 0.2)
    gaps = np.zeros(40)
    gaps[[8, 20, 32]] = 1.0
    assert [lv.slice_index for lv in find_discs(profile_canals(probabilities), 40, 3.0, "lumbar", gaps)] == [8, 20, 32]


def test_of_two_peaks_on_bands_in_one_lumbar_vertebra_the_deeper_band_is_the_disc():
    # as on a lumbar T2 at 1 mm (VB1 03, its slices 133 and 151): the disc's endplates darken the column at 30, and
    # a vein entering the middle of the body above darkens it a little at 47, 17 mm higher; both pass as bands,
    # and the detector leans to 47. The deeper band is the disc, whatever the detector says
    probabilities = np.full(100, 0.3)
    probabilities[[30, 47, 80]] = [0.6, 0.63, 0.6]
    gaps = np.zeros(100)
    gaps[[28, 29, 30, 31, 32, 46, 47, 48, 78, 79, 80, 81, 82]] = 1.0
    depths = np.full(100, 0.05)
    depths[28:33], depths[46:49], depths[78:83] = 0.58, 0.25, 0.5
    canals = profile_canals(probabilities)
    assert [lv.slice_index for lv in find_discs(canals, 100, 1.0, "lumbar", gaps)] == [47, 80]
    assert [lv.slice_index for lv in find_discs(canals, 100, 1.0, "lumbar", gaps, band_depths=depths)] == [30, 80]
    # the two endplates of one disc darken the column alike: a band hardly deeper does not outrank the detector
    depths[28:33] = 0.25 + BAND_DEPTH_MARGIN * 0.9
    assert [lv.slice_index for lv in find_discs(canals, 100, 1.0, "lumbar", gaps, band_depths=depths)] == [47, 80]
    depths[28:33] = 0.25 + BAND_DEPTH_MARGIN * 1.1
    assert [lv.slice_index for lv in find_discs(canals, 100, 1.0, "lumbar", gaps, band_depths=depths)] == [30, 80]
    # a band outranks its depth: a deep dip with no band mark loses to a band
    gaps[28:33] = 0.0
    assert [lv.slice_index for lv in find_discs(canals, 100, 1.0, "lumbar", gaps, band_depths=depths)] == [47, 80]


def test_a_gap_on_a_faint_slice_of_the_tube_is_a_disc_but_its_detector_probability_is_not():
    # the detector is unsure of the canal at a disc (slices 19-21, and 26 in a body), and there it says
    # "disc" with 0.9: the tube lets the faint boxes in, the image's gap at 20 makes the disc, and 26, with
    # no gap, stays a body
    probabilities = np.full(40, 0.2)
    canals = profile_canals(probabilities)
    for k in (19, 20, 21, 26):
        canals[k] = SliceCanal(k, canals[k].box_ij, 0.1, 0.9)
    gaps = np.zeros(40)
    gaps[[8, 20, 32]] = 1.0
    assert [lv.slice_index for lv in find_discs(canals, 40, 3.0, "unknown", gaps)] == [8, 20, 32]


def test_a_disc_where_the_canal_was_not_seen_lies_on_the_bridged_tube_but_only_where_no_seen_slice_is_near():
    # 1 mm slices; the detector lost the canal on slices 19-23 at a disc whose dark band covers 18-24: the tube
    # bridges them (tracking.bridge_gaps), and the level lies in the gap, on a bridged slice
    from SpineStenosisGraderLib.inference.tracking import bridge_gaps

    probabilities = np.full(60, 0.3)
    gaps = np.zeros(60)
    gaps[18:25] = 1.0
    canals = [None if 19 <= k <= 23 else c for k, c in enumerate(profile_canals(probabilities))]
    assert find_discs(canals, 60, 1.0, "lumbar", gaps) == []  # no slice with a canal near the peak: no level
    (level,) = find_discs(bridge_gaps(canals, 1.0), 60, 1.0, "lumbar", gaps)
    assert 20 <= level.slice_index <= 22
    # a seen slice within reach of the peak takes the level, though the bridged slices between read as much and lie
    # nearer the peak (their evidence is their neighbours'): on a seen slice the disc sign was read in the image
    canals = [None if k in (20, 21) else c for k, c in enumerate(profile_canals(probabilities))]
    gaps[18:25] = 0.0
    gaps[[19, 22]] = 1.0
    (level,) = find_discs(bridge_gaps(canals, 1.0), 60, 1.0, "lumbar", gaps)
    assert level.slice_index in (19, 22)


def test_of_two_discs_too_close_the_surer_disc_stays_however_sure_its_canal():
    probabilities = np.full(40, 0.1)
    probabilities[[10, 14, 30]] = [0.9, 0.6, 0.9]
    canals = profile_canals(probabilities)
    canals[10] = SliceCanal(10, canals[10].box_ij, 0.5, 0.9)  # a doubtful canal box, but surely a disc
    canals[14] = SliceCanal(14, canals[14].box_ij, 0.99, 0.6)
    assert [lv.slice_index for lv in find_discs(canals, 40, 3.0, "lumbar")] == [10, 30]


def _three_cervical_discs(middle_bump):
    # 1 mm slices, discs 16 mm apart; the middle one barely shows (a degenerate disc, an unfamiliar contrast)
    probabilities = np.full(50, 0.35)
    for d in (8, 40):
        probabilities[d - 1:d + 2] = 0.45
    probabilities[23:26] += middle_bump
    return profile_canals(probabilities)


def test_a_disc_missed_between_two_is_placed_from_their_spacing_at_its_weak_peak():
    levels = find_discs(_three_cervical_discs(0.02), 50, 1.0, "cervical")
    assert [lv.slice_index for lv in levels] == [8, 24, 40]
    assert [lv.placed_from for lv in levels] == ["", "spacing", ""]


def test_no_disc_is_placed_in_c2_between_c2_c3_and_a_peak_on_c1_below_the_skull_base():
    # the same spine with the skull base 37 mm above the lowest disc: the peak on slice 40 lies 5 mm below it, on
    # C1 or the dens, so the gap below it says nothing of a missed disc. The peak stays for the naming to drop
    levels = find_discs(_three_cervical_discs(0.02), 50, 1.0, "cervical", foramen_magnum_slice=45)
    assert [(lv.slice_index, lv.placed_from) for lv in levels] == [(8, ""), (40, "")]
    naming = name_from_anatomy(levels, "cervical", 1.0, foramen_magnum_slice=45)
    assert [c.slice_index for c in naming.kept] == [8] and naming.names == ["C2-C3"] and naming.anchored
    # read on CT, at the back rim of the foramen magnum, the opening lies lower: C2-C3 reaches 50 mm below it
    for reach, name in ((MR_FORAMEN_REACH, "C3-C4"), (CT_FORAMEN_REACH, "C2-C3")):
        naming = name_from_anatomy(levels[:1], "cervical", 1.0, foramen_magnum_slice=53, foramen_reach=reach)
        assert naming.names == [name] and naming.anchored
    # with the skull base 25 mm or more above it, the peak is a disc, and the one between is placed
    levels = find_discs(_three_cervical_discs(0.02), 50, 1.0, "cervical", foramen_magnum_slice=65)
    assert [lv.slice_index for lv in levels] == [8, 24, 40]


@pytest.mark.parametrize("bump,region", [(0.0, "cervical"), (0.02, "unknown"), (0.02, "lumbar")])
def test_no_disc_is_invented_without_a_peak_a_region_or_a_gap_too_long(bump, region):
    # no evidence at all; no known vertebra height; 32 mm is one lumbar vertebra, not two
    assert [lv.slice_index for lv in find_discs(_three_cervical_discs(bump), 50, 1.0, region)] == [8, 40]


def test_two_lumbar_disc_peaks_19_mm_apart_are_one():
    # the shortest lumbar disc-to-disc distance is about 25 mm; a peak 19 mm from a stronger one is a body's middle
    probabilities = np.full(80, 0.1)
    probabilities[[10, 29, 64]] = [0.6, 0.9, 0.9]
    assert [lv.slice_index for lv in find_discs(profile_canals(probabilities), 80, 1.0, "lumbar")] == [29, 64]


@pytest.mark.parametrize("slice_mm, apart_mm, both", [(5.0, 20.0, False), (5.0, 25.0, True), (4.0, 20.0, False),
                                                      (3.0, 21.0, True), (1.0, 21.0, True), (1.0, 19.0, False)])
def test_on_thick_slices_two_lumbar_peaks_closer_than_22_mm_are_one(slice_mm, apart_mm, both):
    # a clinical CT in 5 mm slices: the middle of a body, where its vein leaves it, reads as a disc 20 mm from the
    # disc below it; the weaker of the two goes. On thinner slices two lower thoracic discs 21 mm apart both stay
    n = round(100.0 / slice_mm)
    probabilities = np.full(n, 0.1)
    low = round(20.0 / slice_mm)
    up = low + round(apart_mm / slice_mm)
    # the disc above 25 mm further up: 45 mm above the lowest where the middle one goes, too near to hold a disc
    # missed between them that their spacing would place
    top = up + round(25.0 / slice_mm)
    probabilities[[low, up, top]] = [0.9, 0.6, 0.9]
    levels = find_discs(profile_canals(probabilities), n, slice_mm, "lumbar")
    assert [lv.slice_index for lv in levels] == ([low, up, top] if both else [low, top])
    assert min_disc_separation_mm("lumbar", slice_mm) == (22.0 if slice_mm >= 4.0 else 20.0)
    assert min_disc_separation_mm("thoracic", 5.0) == 12.0


def test_a_disc_placed_from_the_spacing_is_named_with_the_rest_and_flagged():
    levels = find_discs(_three_cervical_discs(0.02), 50, 1.0, "cervical")
    naming = name_from_anatomy(levels, "cervical", 1.0)
    assert naming.names == ["C4-C5", "C3-C4", "C2-C3"]
    assert len(naming.warnings) == 1 and naming.warnings[0].startswith("C3-C4 (slice 24) is placed where the spacing")


def test_a_disc_past_the_end_of_the_study_is_no_level_and_takes_no_body_peak_with_it():
    # 3 mm slices: the evidence still rises at the first slice (the disc lies at or below the study's end) and a
    # weaker bump 12 mm up is in the vertebral body; the disc at slice 14 is well inside
    probabilities = np.full(24, 0.2)
    probabilities[[0, 1]] = [0.6, 0.45]
    probabilities[4] = 0.4
    probabilities[13:16] = [0.5, 0.8, 0.5]
    assert [lv.slice_index for lv in find_discs(profile_canals(probabilities), 24, 3.0, "lumbar")] == [14]
    # where the evidence falls towards the end, nothing lies past it, and the bump is a disc
    probabilities[[0, 1]] = [0.2, 0.2]
    assert [lv.slice_index for lv in find_discs(profile_canals(probabilities), 24, 3.0, "lumbar")] == [4, 14]


def _lumbar_over_the_sacrum(l5_s1_bump):
    # 3 mm slices, the alae's top at slice 6; L4-L5 (slice 18) and L3-L4 (slice 29) stand out, while L5-S1,
    # 9 mm above the alae, barely rises (a collapsed disc, a pelvis the detector never saw)
    probabilities = np.full(40, 0.2)
    for d in (18, 29):
        probabilities[d - 1:d + 2] = [0.5, 0.8, 0.5]
    probabilities[9] += l5_s1_bump
    return profile_canals(probabilities)


def test_a_faint_l5_s1_is_placed_just_above_the_sacrum_and_named_from_it():
    levels = find_discs(_lumbar_over_the_sacrum(0.03), 40, 3.0, "lumbar", sacrum_top_slice=6)
    assert [lv.slice_index for lv in levels] == [9, 18, 29]
    assert [lv.placed_from for lv in levels] == ["sacrum", "", ""]
    naming = name_from_anatomy(levels, "lumbar", 3.0, sacrum_top_slice=6)
    assert naming.names == ["L5-S1", "L4-L5", "L3-L4"]
    assert naming.anchored and naming.confidence == ["high"] * 3
    assert naming.warnings == ["L5-S1 (slice 9) is placed just above the sacrum, where L5-S1 lies; the disc "
                               "evidence there is weak, so check it on a sagittal view."]


@pytest.mark.parametrize("sacrum_top,region", [
    (None, "lumbar"),    # no sacrum in the study
    (6, "cervical"),     # a sacrum is no landmark for a neck
])
def test_no_l5_s1_is_placed_without_a_sacrum_or_a_lumbar_spine(sacrum_top, region):
    levels = find_discs(_lumbar_over_the_sacrum(0.03), 40, 3.0, region, sacrum_top_slice=sacrum_top)
    assert [lv.slice_index for lv in levels] == [18, 29]


def test_with_no_peak_above_the_sacrum_l5_s1_is_placed_half_a_disc_above_the_alae():
    # flat evidence over the sacrum: the anatomy alone says where the disc is, 5 mm above the alae's top
    levels = find_discs(_lumbar_over_the_sacrum(0.0), 40, 3.0, "lumbar", sacrum_top_slice=6)
    assert [(lv.slice_index, lv.placed_from) for lv in levels] == [(8, "sacrum"), (18, ""), (29, "")]
    # with no canal tracked just above the alae, nothing is placed
    canals = [None if 4 <= c.slice_index <= 10 else c for c in _lumbar_over_the_sacrum(0.0)]
    assert [lv.slice_index for lv in find_discs(canals, 40, 3.0, "lumbar", sacrum_top_slice=6)] == [18, 29]


def test_a_peak_in_l5s_body_is_no_l5_s1_and_the_disc_above_is_looked_for_from_the_real_one():
    # what the held-out fold of the sample showed (3 mm slices, alae's top at slice 10): the evidence rises
    # from the alae to a peak 12 mm above them (slice 14), in L5's body, while L5-S1 (slice 12) and L4-L5
    # (slice 22) barely show; L3-L4 (slice 37) stands out. Looked for from the false peak, L4-L5 would be
    # the stronger bump at slice 28, in L4's body
    probabilities = np.full(50, 0.25)
    probabilities[8:15] = [0.26, 0.27, 0.28, 0.29, 0.30, 0.31, 0.33]
    probabilities[13:16] = [0.45, 0.5, 0.45]
    probabilities[22] += 0.03
    probabilities[28] += 0.05
    probabilities[36:39] = [0.5, 0.8, 0.5]
    levels = find_discs(profile_canals(probabilities), 50, 3.0, "lumbar", sacrum_top_slice=10)
    assert [(lv.slice_index, lv.placed_from) for lv in levels] == [(12, "sacrum"), (22, "spacing"), (37, "")]


def test_on_thick_slices_a_faint_peak_a_slice_too_high_is_not_taken_for_l5_s1():
    # 6 mm slices, the alae's top at slice 4: the faint peak at slice 6 is 12 mm above them, in L5's body;
    # L5-S1 goes where the anatomy puts it (slice 5), and L4-L5 (slice 9) keeps its own strong peak
    probabilities = np.full(24, 0.2)
    for d in (9, 15):
        probabilities[d - 1:d + 2] = [0.5, 0.8, 0.5]
    probabilities[6] += 0.04
    levels = find_discs(profile_canals(probabilities), 24, 6.0, "lumbar", sacrum_top_slice=4)
    assert [(lv.slice_index, lv.placed_from) for lv in levels] == [(5, "sacrum"), (9, ""), (15, "")]


@pytest.mark.parametrize("discs,bump,expected", [
    ((7, 18), 5, (7, 18)),      # L5-S1 found 9 mm above the alae: no second one below it
    ((10, 21), 6, (6, 21)),     # a peak 18 mm above the alae is in L5's body: L5-S1 is the bump below it
    ((14, 25), 10, (6, 14, 25)),  # L4-L5 30 mm above the alae: L5-S1 is placed half a disc above them
])
def test_l5_s1_lies_within_half_a_disc_of_the_alae_and_is_never_doubled(discs, bump, expected):
    probabilities = np.full(40, 0.2)
    for d in discs:
        probabilities[d - 1:d + 2] = [0.5, 0.8, 0.5]
    probabilities[bump] += 0.03
    levels = find_discs(profile_canals(probabilities), 40, 3.0, "lumbar", sacrum_top_slice=4)
    assert [lv.slice_index for lv in levels] == list(expected)


def _levels_of_depth(depths_px):
    return [LevelCandidate(slice_index=10 * k, box_ij=(20.0, 30.0, 40.0, 30.0 + d), score=0.9, disc_probability=0.5,
                           slices=(10 * k,)) for k, d in enumerate(depths_px)]


def test_a_cervical_level_in_a_cistern_far_deeper_than_the_canal_is_dropped_and_said():
    # 0.5 mm pixels: the canal 14-16 mm deep at the discs; at the top, the cisterna magna 24 mm deep (1.6 times)
    levels = _levels_of_depth([28, 30, 28, 32, 30, 48])
    kept, warnings = drop_cisterns(levels, (0.5, 0.5, 1.0), "cervical")
    assert [lv.slice_index for lv in kept] == [0, 10, 20, 30, 40]
    assert len(warnings) == 1 and "slice 50" in warnings[0] and "24 mm deep" in warnings[0]
    # 1.3 times the median is a canal that varies, not a cistern
    kept, warnings = drop_cisterns(_levels_of_depth([28, 30, 28, 32, 30, 39]), (0.5, 0.5, 1.0), "cervical")
    assert len(kept) == 6 and warnings == []


@pytest.mark.parametrize("region, n", [("lumbar", 6), ("thoracic", 6), ("unknown", 6), ("cervical", 3)])
def test_only_a_cervical_study_with_enough_levels_loses_a_deep_one(region, n):
    # the rule reads the cisterna magna at the top of a neck; a lumbar sac may widen, and three levels make no median
    depths = [28, 30, 28, 32, 30, 48][-n:]
    kept, warnings = drop_cisterns(_levels_of_depth(depths), (0.5, 0.5, 1.0), region)
    assert len(kept) == n and warnings == []


def _levels_at(slices):
    return [LevelCandidate(slice_index=k, box_ij=(20.0, 30.0, 40.0, 58.0), score=0.9, disc_probability=0.5,
                           slices=(k,)) for k in slices]


@pytest.mark.parametrize("slices, dropped", [
    ([113, 136, 164, 202, 243, 275], 113),  # 23 mm below the next, the levels above 28-41 mm apart: S1-S2
    ([8, 29, 56, 99, 136, 175], 8),  # 21 mm below a steep L5-S1 found high on its back
    ([125, 154, 188, 226, 264], None),  # L5-S1 29 mm below L4-L5 where the others are 34-38 mm apart
    ([95, 118, 152, 189, 226], 95),  # 23 mm, 0.62 of the 37 mm above
    ([100, 121, 141, 178, 216], None),  # 21 and 20 mm: one of the two lowest is in a body, which is not known
    ([136, 164, 202, 243], None),  # too few levels to know the spacing: 28 mm, and 38 and 41 above
    ([100, 135, 205, 240], None),  # nor with one disc missed above: 35 mm below 70 (two vertebrae) and 35
    ([100, 135, 205, 240, 276], None),  # with three spacings above, their median is the spine's
])
def test_a_lowest_lumbar_level_too_close_below_the_next_is_a_sacral_remnant(slices, dropped):
    kept, warnings = drop_sacral_level(_levels_at(slices), 1.0, "lumbar", sacrum_found=False)
    assert [lv.slice_index for lv in kept] == [k for k in slices if k != dropped]
    assert len(warnings) == (dropped is not None)
    if dropped is not None:
        assert f"slice {dropped}" in warnings[0] and "sacrum" in warnings[0]
        assert f"{slices[1] - slices[0]} mm below the next" in warnings[0]


@pytest.mark.parametrize("region, sacrum_found", [("lumbar", True), ("cervical", False), ("unknown", False)])
def test_the_sacral_remnant_rule_reads_lumbar_studies_without_alae_only(region, sacrum_found):
    # with the alae L5-S1 is placed from them; a neck's spacing says nothing of a sacrum
    slices = [113, 136, 164, 202, 243, 275]
    kept, warnings = drop_sacral_level(_levels_at(slices), 1.0, region, sacrum_found=sacrum_found)
    assert len(kept) == 6 and warnings == []


@pytest.mark.parametrize("bend, dropped", [(106, None), (115, None), (116, 106), (130, 106), (None, 106)])
def test_a_lowest_level_at_the_canals_bend_into_the_sacrum_is_l5_s1_however_close_to_the_next(bend, dropped):
    # VB2 07: in a steep lordosis L5 is a wedge, short at the back, and at the canal L5-S1 (slice 106) lies only
    # 24 mm below L4-L5, 0.66 of the 36 mm between the levels above, as a remnant in the sacrum would. It lies at
    # the canal's bend into the sacrum, and the remnant a sacral segment (21 mm or more) below: one less than
    # 10 mm below the bend stays, one 10 mm or more below it, or with no bend, is dropped
    slices = [106, 130, 166, 197, 234, 274]
    kept, warnings = drop_sacral_level(_levels_at(slices), 1.0, "lumbar", sacrum_found=False, bend_slice=bend)
    assert [lv.slice_index for lv in kept] == [k for k in slices if k != dropped]
    assert len(warnings) == (dropped is not None)


def test_a_disc_on_the_sac_followed_below_the_detectors_track_is_found_from_its_dark_band():
    # the detector tracked slices 20 up; below, the sac was followed over its CSF (score 0, no disc probability
    # of its own), and the column in front of it shows a dark band at slice 10: L5-S1
    canals = synthetic_canals(64, [32, 44, 56])
    for k in range(5, 20):
        canals[k] = SliceCanal(k, canals[k].box_ij, 0.0, 0.0)
    canals[:5] = [None] * 5
    bands = np.zeros(64)
    bands[9:12] = 1.0
    levels = find_discs(canals, 64, 3.0, "lumbar", bands)
    assert [lv.slice_index for lv in levels] == [10, 32, 44, 56]


def test_the_sacral_remnant_is_told_in_mm():
    kept, warnings = drop_sacral_level(_levels_at([8, 29, 56, 99, 136, 175]), 2.0, "lumbar", sacrum_found=False)
    assert len(kept) == 5 and "42 mm below the next" in warnings[0] and "76 mm between" in warnings[0]


def test_levels_more_than_25_mm_below_the_lumbosacral_bend_are_sacral_remnants():
    # 2 mm slices, the bend on slice 60: 59 lies 2 mm below it, 48 24 mm, 47 26 mm and 30 60 mm
    kept, warnings = drop_below_lumbosacral_bend(_levels_at([30, 47, 48, 59, 75, 92]), 2.0, "lumbar", 60,
                                                 sacrum_found=False)
    assert [lv.slice_index for lv in kept] == [48, 59, 75, 92]
    assert len(warnings) == 1 and "slices 30, 47" in warnings[0] and "(slice 60)" in warnings[0]
    assert "Add one back" in warnings[0]
    kept, warnings = drop_below_lumbosacral_bend(_levels_at([47, 59]), 2.0, "lumbar", 60, sacrum_found=False)
    assert [lv.slice_index for lv in kept] == [59] and "slice 47:" in warnings[0]


@pytest.mark.parametrize("region, bend, sacrum_found", [("lumbar", None, False), ("lumbar", 60, True),
                                                        ("cervical", 60, False), ("unknown", 60, False)])
def test_the_lumbosacral_bend_drops_nothing_without_a_bend_with_the_alae_or_outside_a_lumbar_study(
        region, bend, sacrum_found):
    kept, warnings = drop_below_lumbosacral_bend(_levels_at([10, 30, 59]), 1.0, region, bend,
                                                 sacrum_found=sacrum_found)
    assert len(kept) == 3 and warnings == []


def _darkness(n, bands):
    """A column's darkness per slice: 0.05 in the bodies, and each (slice, depth) of ``bands``."""
    darkness = np.full(n, 0.05)
    for k, depth in bands:
        darkness[k] = depth
    return darkness


@pytest.mark.parametrize("levels, bands, kept", [
    # 60 slices of 1 mm, a disc at 26 with its band; the detector's peak at 51 lies 8 mm inside the top end, in
    # a body: no band within 3 mm, so it goes (fastcleverseg_ivd_20, 60 mm from slice 30)
    ([26, 51], [(26, 0.4)], [26]),
    ([26, 51], [(26, 0.4), (54, 0.25)], [26, 51]),  # its band 3 mm away: a disc
    ([26, 51], [(26, 0.4), (55, 0.25)], [26]),  # 4 mm away: not its disc
    ([26, 51], [(26, 0.4), (51, 0.19)], [26]),  # a dip under a fifth: no disc
    ([2, 33], [(33, 0.3)], [33]),  # 2 mm inside the bottom end, bandless
    ([11, 48], [], [11, 48]),  # both 11 mm inside an end: away from the ends a bandless level stays (L5-S1,
    # cut obliquely, and the thin thoracolumbar discs show the weakest bands)
    ([10, 49], [], []),  # 10 mm inside an end, bandless, at either end
])
def test_a_lumbar_mr_level_near_an_end_of_the_study_without_a_dark_band_is_dropped(levels, bands, kept):
    result, warnings = drop_bandless_end_levels(_levels_at(levels), _darkness(60, bands), 1.0, "lumbar")
    assert [lv.slice_index for lv in result] == kept
    dropped = [k for k in levels if k not in kept]
    assert len(warnings) == len(dropped)
    for k, warning in zip(dropped, warnings):
        assert f"slice {k}:" in warning and f"{min(k, 59 - k)} mm inside an end" in warning
        assert "no dark band" in warning and "Add it back" in warning


def test_the_end_of_the_study_and_the_bands_reach_are_told_in_mm():
    # 2 mm slices: slice 25 of 30 lies 8 mm inside the top end, a band 2 slices (4 mm) away is not its own,
    # one slice (2 mm) away is
    levels = _levels_at([10, 25])
    result, warnings = drop_bandless_end_levels(levels, _darkness(30, [(10, 0.4), (27, 0.4)]), 2.0, "lumbar")
    assert [lv.slice_index for lv in result] == [10] and "8 mm inside an end" in warnings[0]
    result, _ = drop_bandless_end_levels(levels, _darkness(30, [(10, 0.4), (26, 0.4)]), 2.0, "lumbar")
    assert [lv.slice_index for lv in result] == [10, 25]
    # slice 4 (of 2 mm) lies 8 mm inside the bottom end, slice 5 10 mm, slice 6 12 mm
    result, _ = drop_bandless_end_levels(_levels_at([4, 5, 6]), _darkness(30, []), 2.0, "lumbar")
    assert [lv.slice_index for lv in result] == [6]


@given(st.lists(st.integers(0, 59), min_size=1, max_size=6, unique=True),
       st.lists(st.floats(-0.2, 0.8), min_size=60, max_size=60), st.sampled_from([1.0, 2.0, 3.0]))
def test_the_end_rule_reads_both_ends_alike_whichever_way_the_slices_run(slices, darkness, slice_mm):
    # a study stored feet first or head first keeps the same levels: the rule mirrored is the mirrored rule
    darkness = np.array(darkness)
    kept, _ = drop_bandless_end_levels(_levels_at(sorted(slices)), darkness, slice_mm, "lumbar")
    mirrored, _ = drop_bandless_end_levels(_levels_at(sorted(59 - k for k in slices)), darkness[::-1], slice_mm,
                                           "lumbar")
    assert sorted(59 - lv.slice_index for lv in mirrored) == [lv.slice_index for lv in kept]
    # and only levels within 10 mm of an end, with no band within 3 mm, are ever dropped
    reach = int(3.0 // slice_mm)
    for k in set(slices) - {lv.slice_index for lv in kept}:
        assert min(k, 59 - k) * slice_mm <= 10.0
        assert darkness[max(0, k - reach):k + reach + 1].max() < 0.2


@pytest.mark.parametrize("region, slice_mm, darkness", [
    ("cervical", 1.0, None),  # a neck's disc bands are often shallow
    ("unknown", 1.0, None),  # it may be a neck
    ("lumbar", 4.0, None),  # on thick slices a disc's band is averaged with the bodies beside it
    ("lumbar", 1.0, np.full(60, np.nan)),  # the column could not be read
])
def test_the_end_rule_keeps_every_level_where_a_missing_band_says_nothing(region, slice_mm, darkness):
    darkness = _darkness(60, []) if darkness is None else darkness
    result, warnings = drop_bandless_end_levels(_levels_at([2, 30, 57]), darkness, slice_mm, region)
    assert [lv.slice_index for lv in result] == [2, 30, 57] and warnings == []


def test_a_levels_box_is_the_canal_over_the_slices_its_roi_spans_not_one_slice_reaching_into_a_foramen():
    # 1 mm slices; the canal 10 px wide and steady, except on slice 20, where its box reaches 12 px to the right
    canals = [SliceCanal(k, (10.0, 40.0, 20.0, 52.0), 0.9, 0.1) for k in range(40)]
    canals[20] = SliceCanal(20, (10.0, 39.0, 32.0, 52.0), 0.9, 0.8)
    canals[23] = None  # an untracked slice counts for nothing
    assert level_box(canals, 20, 1.0, 3.0) == (10.0, 40.0, 20.0, 52.0)
    # the median side by side over slices 18-22 (within 2 mm): i1 of 20, 30, 32, 26, 20 is 26; i0 of
    # 10, 11, 10, 12, 10 is 10
    canals[19] = SliceCanal(19, (11.0, 41.0, 30.0, 53.0), 0.9, 0.1)
    canals[21] = SliceCanal(21, (12.0, 40.0, 26.0, 52.0), 0.9, 0.1)
    assert level_box(canals, 20, 1.0, 2.0) == (10.0, 40.0, 26.0, 52.0)
    # slices thicker than half_mm: only the level's own slice is that near
    assert level_box(canals, 20, 5.0, 3.0) == (10.0, 39.0, 32.0, 52.0)


def _cervical_discs_from_the_end(middle_bump, lowest_at=0, at_end=0.42):
    # 1 mm slices, discs 16 mm apart from the study's first slice (``lowest_at``) up; the one at 16 barely shows.
    # The evidence rising to the end (``at_end``) is weaker than the discs found above it: the disc lies past the end
    probabilities = np.full(60, 0.35)
    for d in (32, 48):
        probabilities[d - 1:d + 2] = 0.45
    if lowest_at >= 0:
        probabilities[lowest_at:lowest_at + 2] = [at_end, 0.4]  # rising to the end
    probabilities[15:18] += middle_bump
    return profile_canals(probabilities)


def test_a_disc_missed_between_the_disc_at_the_studys_end_and_the_next_is_placed_from_their_spacing():
    # a T2* neck in thick slices whose lowest slice cuts C7-T1: that disc is past the end, no level, but it spaces
    # the discs, so C6-C7, 16 mm above it and too faint for a peak of its own, is placed at its weak peak
    levels = find_discs(_cervical_discs_from_the_end(0.02), 60, 1.0, "cervical")
    assert [(lv.slice_index, lv.placed_from) for lv in levels] == [(16, "spacing"), (32, ""), (48, "")]
    # no peak there, no disc; and where the evidence falls at the end, no disc lies past it
    assert [lv.slice_index for lv in find_discs(_cervical_discs_from_the_end(0.0), 60, 1.0, "cervical")] == [32, 48]
    assert [lv.slice_index for lv in find_discs(_cervical_discs_from_the_end(0.02, lowest_at=-1), 60, 1.0,
                                                "cervical")] == [32, 48]


def test_a_disc_whose_evidence_peaks_on_the_end_slice_as_strongly_as_the_others_is_a_level_there():
    # the lowest slice cuts a disc a few mm inside the study: its evidence is highest on that slice, where no peak can
    # be found, and is as strong as the discs' above. It is a level, flagged; weaker, it lies past the end
    levels = find_discs(_cervical_discs_from_the_end(0.0, at_end=0.5), 60, 1.0, "cervical")
    assert [(lv.slice_index, lv.placed_from) for lv in levels] == [(0, "end"), (32, ""), (48, "")]
    assert [lv.slice_index for lv in find_discs(_cervical_discs_from_the_end(0.0, at_end=0.44), 60, 1.0,
                                                "cervical")] == [32, 48]
    naming = name_from_anatomy(levels, "cervical", 1.0)
    assert naming.warnings == [("C4-C5 (slice 0) is placed on the study's end slice, where its disc evidence is "
                                "strongest; the disc may lie partly outside the study, so check it on a sagittal view.")]
    # the same at the top of a lumbar study, and not at a neck's top, where C1 and the dens look like discs
    probabilities = np.full(60, 0.2)
    probabilities[[10, 36]] = 0.6
    probabilities[58:60] = [0.5, 0.7]
    canals = profile_canals(probabilities)
    assert [(lv.slice_index, lv.placed_from) for lv in find_discs(canals, 60, 1.0, "lumbar")] == [
        (10, ""), (36, ""), (59, "end")]
    probabilities[[10, 36]] = 0.75
    assert [lv.slice_index for lv in find_discs(profile_canals(probabilities), 60, 1.0, "lumbar")] == [10, 36]
    probabilities = np.full(60, 0.35)
    for d in (20, 36):
        probabilities[d - 1:d + 2] = 0.45
    probabilities[58:60] = [0.45, 0.5]
    canals = profile_canals(probabilities)
    assert [lv.slice_index for lv in find_discs(canals, 60, 1.0, "cervical")] == [20, 36]
    assert [lv.slice_index for lv in find_discs(canals, 60, 1.0, "thoracic")] == [20, 36, 59]


def test_on_thick_slices_a_level_on_the_end_slice_needs_the_images_disc_sign_there():
    # 5 mm slices: a disc on slice 5 with a gap in the bone, and the detector's evidence highest on the top slice
    probabilities = np.full(12, 0.2)
    probabilities[5] = 0.7
    probabilities[10:12] = [0.4, 0.9]
    canals = profile_canals(probabilities)
    gaps = np.zeros(12)
    gaps[5] = 1.0
    assert [lv.slice_index for lv in find_discs(canals, 12, 5.0, "lumbar", gaps)] == [5]
    gaps[11] = 1.0
    assert [(lv.slice_index, lv.placed_from) for lv in find_discs(canals, 12, 5.0, "lumbar", gaps)] == [
        (5, ""), (11, "end")]
    # on 3 mm slices (a lower thoracic spine, 18 mm between the two) the detector's evidence on the end slice is
    # enough, where it is as strong as the disc's inside
    assert [lv.slice_index for lv in find_discs(canals, 12, 3.0, "thoracic", np.zeros(12))] == [5, 11]
    assert [lv.slice_index for lv in find_discs(canals, 12, 5.0, "thoracic", np.zeros(12))] == [5]


def test_a_necks_top_end_places_no_disc_from_the_spacing_but_a_chests_does():
    # the evidence rising at the top of a neck is C1's or the dens's, whether or not the skull base is read: no disc
    # past that end spaces the others (one so placed in the validation necks' series lay above C2's middle). At the
    # top of a thoracic study it is a disc's
    probabilities = np.full(60, 0.35)
    for d in (11, 27):
        probabilities[d - 1:d + 2] = 0.45
    probabilities[58:60] = [0.4, 0.45]  # rising to the top end
    probabilities[42:45] += 0.02
    canals = profile_canals(probabilities)
    assert [lv.slice_index for lv in find_discs(canals, 60, 1.0, "cervical")] == [11, 27]
    assert [lv.slice_index for lv in find_discs(canals, 60, 1.0, "cervical", foramen_magnum_slice=70)] == [11, 27]
    probabilities = np.full(80, 0.35)
    for d in (5, 28):
        probabilities[d - 1:d + 2] = 0.45
    probabilities[78:80] = [0.4, 0.43]  # weaker than the discs: past the end (as strong, a level there)
    probabilities[52:55] += 0.02
    assert [(lv.slice_index, lv.placed_from) for lv in find_discs(profile_canals(probabilities), 80, 1.0,
                                                                  "thoracic")] == [(5, ""), (28, ""), (53, "spacing")]


def test_a_level_placed_from_the_spacing_does_not_set_the_canals_depth_for_the_cistern():
    # a thick T2*: the levels found read 14.5-16.5 mm deep and C2-C3 21 mm (1.33 times their median, a canal that
    # widens towards C2); one more level placed from the spacing, 15.5 mm, would put the median at 15.5 mm and
    # C2-C3 over 1.35 times it
    levels = _levels_of_depth([31, 29, 30, 33, 42])
    levels[0] = LevelCandidate(slice_index=0, box_ij=levels[0].box_ij, score=0.9, disc_probability=0.3, slices=(0,),
                               placed_from="spacing")
    kept, warnings = drop_cisterns(levels, (0.5, 0.5, 1.0), "cervical")
    assert len(kept) == 5 and warnings == []
    kept, _ = drop_cisterns([dataclasses.replace(lv, placed_from="") for lv in levels], (0.5, 0.5, 1.0), "cervical")
    assert len(kept) == 4


def test_a_deep_canal_below_the_neck_is_no_cistern():
    # a whole-neck scan reaching T5: its lowest level's box is 21 mm deep (the thoracic canal's CSF), 1.4 times the
    # levels' median, but the cisterna magna lies above the spine, so only the highest levels are read
    kept, warnings = drop_cisterns(_levels_of_depth([42, 30, 28, 32, 30, 48]), (0.5, 0.5, 1.0), "cervical")
    assert [lv.slice_index for lv in kept] == [0, 10, 20, 30, 40]
    assert len(warnings) == 1 and "slice 50" in warnings[0]
    # two deep levels at the top (the cistern and C1) both go; a deep one below a normal one stays
    kept, warnings = drop_cisterns(_levels_of_depth([28, 30, 28, 32, 30, 30, 48, 50]), (0.5, 0.5, 1.0), "cervical")
    assert [lv.slice_index for lv in kept] == [0, 10, 20, 30, 40, 50] and len(warnings) == 2
    assert "slice 60" in warnings[0] and "slice 70" in warnings[1]
