"""Evaluation helpers count honestly."""

from SpineStenosisGraderLib.training.evaluation import match_levels


def test_two_levels_near_one_disc_count_once():
    assert len(match_levels([10.0, 13.0], [11.0], tolerance=3.0)) == 1


def test_matches_pair_closest_first():
    assert sorted(match_levels([10.0, 20.0], [19.0, 11.0], tolerance=3.0)) == [(0, 1), (1, 0)]


def test_nothing_matches_beyond_tolerance():
    assert match_levels([10.0], [20.0], tolerance=3.0) == []
