"""Evaluation helpers count honestly."""

import numpy as np
import pytest

from SpineStenosisGraderLib.inference.detector import box_iou
from SpineStenosisGraderLib.packages.package import load_default_package
from SpineStenosisGraderLib.training import evaluation
from SpineStenosisGraderLib.training.evaluation import (
    canal_hit,
    discs_between,
    landmark_span,
    level_is_false,
    match_levels,
    names_by_count,
    score_levels,
)


def test_two_levels_near_one_disc_count_once():
    assert len(match_levels([10.0, 13.0], [11.0], tolerance=3.0)) == 1


def test_matches_pair_closest_first():
    assert sorted(match_levels([10.0, 20.0], [19.0, 11.0], tolerance=3.0)) == [(0, 1), (1, 0)]


def test_nothing_matches_beyond_tolerance():
    assert match_levels([10.0], [20.0], tolerance=3.0) == []


def test_the_discs_between_two_labelled_vertebrae_are_counted_from_the_anatomy():
    assert discs_between("C2", "T2") == 7  # C2-C3 ... C7-T1, T1-T2
    assert discs_between("T12", "L1") == 1
    assert discs_between("L1", "S1") == 5  # L1-L2 ... L5-S1
    # the highest and the lowest body labelled, whatever the order the labels come in
    assert landmark_span({"T2": 76.0, "C2": 188.0}) == ("C2", "T2")
    assert landmark_span({"T2": 76.0, "C5": 150.0, "C2": 188.0}) == ("C2", "T2")
    assert landmark_span({"C2": 188.0}) is None


def test_without_disc_positions_the_levels_between_two_bodies_are_named_by_their_count_from_the_upper():
    neck = {"C2": 188.0, "T2": 76.0}
    # listed in any order; the level above C2's body and the one below T2's are not counted
    slices = [175.0, 191.0, 80.0, 157.0, 60.0]
    assert names_by_count(slices, neck) == {0: "C2-C3", 3: "C3-C4", 2: "C4-C5"}
    # eight levels for the seven discs: the eighth has no name to be right with
    eight = [180.0 - 12.0 * i for i in range(8)]
    assert list(names_by_count(eight, neck).values()) == [
        "C2-C3", "C3-C4", "C4-C5", "C5-C6", "C6-C7", "C7-T1", "T1-T2", None]
    assert names_by_count(slices, {"C2": 188.0}) == {}


def test_a_level_is_false_far_from_every_disc_or_above_c2_when_only_c2_is_known():
    # 2 mm slices: 6 slices is 12 mm, past the 10 mm a level may lie from its disc
    assert level_is_false(16.0, [10.0, 30.0], {}, 2.0) == (12.0, True)
    assert level_is_false(15.0, [10.0, 30.0], {}, 2.0) == (10.0, False)
    # no disc positions: only a level above the middle of C2's body is known to be false
    assert level_is_false(101.0, [], {"C2": 100.0, "T2": 40.0}, 1.0) == (None, True)
    assert level_is_false(99.0, [], {"C2": 100.0, "T2": 40.0}, 1.0) == (None, False)
    assert level_is_false(500.0, [], {"T2": 40.0}, 1.0) == (None, False)


def test_a_level_above_the_labelled_discs_is_not_false_where_unlabelled_discs_lie_there():
    # labels of L1-L2 (slice 30) down to L5-S1 (slice 10) on a study that reaches T12, 2 mm slices
    discs = [10.0, 30.0]
    assert level_is_false(46.0, discs, {}, 2.0, more_discs_above=True) == (32.0, False)
    assert level_is_false(46.0, discs, {}, 2.0) == (32.0, True)
    # below L5-S1 (in the sacrum) or between the labels, a level far from every disc is still false
    assert level_is_false(0.0, discs, {}, 2.0, more_discs_above=True) == (20.0, True)
    assert level_is_false(20.0, discs, {}, 2.0, more_discs_above=True) == (20.0, True)
    # within 10 mm above L1-L2 it is L1-L2's, as anywhere
    assert level_is_false(35.0, discs, {}, 2.0, more_discs_above=True) == (10.0, False)
    assert level_is_false(36.0, discs, {}, 2.0, more_discs_above=True) == (12.0, False)


def test_a_level_below_the_labelled_discs_is_not_false_where_unlabelled_discs_lie_there():
    # labels of T10 to L3 (discs T10-T11 at slice 40 down to L2-L3 at slice 10) on a study that reaches L4,
    # 2 mm slices: a level 14 mm below L2-L3 may be L3-L4, which no label marks
    discs = [10.0, 40.0]
    assert level_is_false(3.0, discs, {}, 2.0, more_discs_below=True) == (14.0, False)
    assert level_is_false(3.0, discs, {}, 2.0) == (14.0, True)
    # above the top label, or between the labels, a level far from every disc is still false
    assert level_is_false(50.0, discs, {}, 2.0, more_discs_below=True) == (20.0, True)
    assert level_is_false(25.0, discs, {}, 2.0, more_discs_below=True) == (30.0, True)
    assert score_levels([3.0], discs, 60, 2.0, more_discs_below=True) == (2, 0, 0)
    assert score_levels([3.0], discs, 60, 2.0) == (2, 0, 1)


def _thoracic_canal():
    # 1 mm pixels: a canal 16 mm deep (rows 10-25) whose 8 mm cord lies against its front (rows 10-17),
    # as in the thoracic spine; the reference is the cord alone
    cord = np.zeros((40, 40), dtype=bool)
    cord[10:18, 15:25] = True
    return cord, (15, 10, 25, 18)


def test_a_box_around_the_canal_finds_it_though_the_cord_lies_at_its_front():
    cord, reference = _thoracic_canal()
    canal_box = (13.0, 9.0, 27.0, 27.5)  # centred behind the cord, holding all of it
    assert box_iou(canal_box, reference) < 0.5
    assert not cord[int((9 + 27.5) / 2), 20]
    assert canal_hit(canal_box, reference, cord, (1.0, 1.0))


@pytest.mark.parametrize("box", [
    (13.0, 14.0, 27.0, 27.0),   # behind the cord, holding only 4 of its 8 rows
    (13.0, 9.0, 27.0, 30.0),    # holding it, but reaching 12 mm behind it
])
def test_a_box_that_misses_half_the_cord_or_reaches_far_past_it_does_not(box):
    cord, reference = _thoracic_canal()
    assert not canal_hit(box, reference, cord, (1.0, 1.0))


def test_the_grade_is_also_scored_on_its_phantom_slices_coarsened_to_thicker_pixels(monkeypatch):
    coarsened = []

    def spy(image, spacing, pixel_mm):
        coarsened.append(pixel_mm)
        return np.zeros_like(image)  # nothing left to grade: the scores must come from these slices

    monkeypatch.setattr(evaluation, "coarsen_slice", spy)
    out = evaluation.evaluate_grades(load_default_package(), n_slices=12)
    assert sorted(set(coarsened)) == [1.5, 3.0] and len(coarsened) == 2 * 12
    assert set(out["accuracy_at_pixel_mm"]) == {"1.5", "3"}
    for scores in out["accuracy_at_pixel_mm"].values():
        assert set(scores) == {"CT", "MR"}
        # a blank crop gets one grade for every slice, so at most the share of slices of that grade is right
        assert all(0.0 <= v <= 0.5 for v in scores.values())
    assert out["accuracy_MR"] > 0.5


def test_the_real_levels_carry_the_grade_the_model_would_give_where_none_is_shown():
    """The evidence for a grade scope: on the sample CT no grade is shown, but each level lists the classifier's
    grade, the one a user gets with --allow-model-mismatch, and the pooled figures count its A grades."""
    from conftest import DATA
    from SpineStenosisGraderLib.pipeline import grade_stack
    from SpineStenosisGraderLib.training.annotations import load_scans

    package = load_default_package()
    scan = next(s for s in load_scans(DATA / "scans.json") if s.name == "totalsegmentator_ct")
    score = evaluation.score_real_scan(package, scan)
    anyway = grade_stack(scan.stack, package, modality="CT", allow_model_mismatch=True)
    assert [row["grade"] for row in score.rows] == [None] * len(anyway.levels)
    assert [row["model_grade"] for row in score.rows] == [level.grade.grade for level in anyway.levels]
    a_grades = sum(level.grade.grade == "A" for level in anyway.levels)
    assert evaluation.pooled([score])["model_grade_A"] == {"CT": f"{a_grades}/{len(anyway.levels)}"}
