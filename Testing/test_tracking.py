"""The canal is one tube: tracking picks it through the slices and leaves a slice without a fit empty."""

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from SpineStenosisGraderLib.inference.detector import SliceDetection, canal_candidates
from SpineStenosisGraderLib.inference.levels import SliceCanal
from SpineStenosisGraderLib.inference.tracking import BRIDGE_MAX_GAP_MM, bridge_gaps, track_canal


def box_at(u, v, score, size=14.0, disc=0.0):
    return SliceDetection((u - size / 2, v - size / 2, u + size / 2, v + size / 2), score, disc)


def tube(n, u0=128.0, v0=140.0, drift=0.3, score=0.8):
    return [[box_at(u0 + drift * k, v0, score)] for k in range(n)]


def centre(d):
    return ((d.box_uv[0] + d.box_uv[2]) / 2, (d.box_uv[1] + d.box_uv[3]) / 2)


def test_a_stronger_false_box_on_one_slice_loses_to_the_tube():
    candidates = tube(30)
    # slice 12: a hip 80 mm to the side scores higher than the canal there
    candidates[12] = [box_at(200.0, 140.0, 0.99), box_at(128.0 + 0.3 * 12, 140.0, 0.5)]
    chosen = track_canal(candidates, pixel_mm=1.25, slice_mm=3.0)
    assert all(d is not None for d in chosen)
    assert abs(centre(chosen[12])[0] - (128.0 + 3.6)) < 1e-6


def test_a_slice_whose_only_box_is_off_the_tube_gets_no_canal():
    candidates = tube(30)
    candidates[12] = [box_at(200.0, 140.0, 0.99)]
    chosen = track_canal(candidates, pixel_mm=1.25, slice_mm=3.0)
    assert chosen[12] is None
    assert sum(d is not None for d in chosen) == 29


def test_a_short_run_of_false_boxes_away_from_the_spine_is_dropped():
    # slices 0-5 hold a strong box on the hip only; the canal runs from slice 6 up
    candidates = [[box_at(220.0, 120.0, 0.95)] for _ in range(6)] + tube(30)[6:]
    chosen = track_canal(candidates, pixel_mm=1.25, slice_mm=3.0)
    assert all(d is None for d in chosen[:6])
    assert all(d is not None for d in chosen[6:])


def test_a_study_of_faint_boxes_only_has_no_canal_to_follow():
    candidates = tube(10, score=0.2)
    assert all(d is None for d in track_canal(candidates, pixel_mm=1.25, slice_mm=3.0))


def test_a_faint_box_on_the_tube_inside_the_track_is_the_canal():
    # an unfamiliar contrast: slices 10-13 have only faint boxes, on the tube; slices 0-2 too, beyond the track
    candidates = tube(30)
    for k in list(range(10, 14)) + [0, 1, 2]:
        candidates[k] = [box_at(128.0 + 0.3 * k + 1.0, 140.0, 0.1)]
    chosen = track_canal(candidates, pixel_mm=1.25, slice_mm=3.0)
    assert all(chosen[k] is not None and chosen[k].score == 0.1 for k in range(10, 14))
    assert all(chosen[k] is None for k in range(3))  # beyond the track's end the tube says nothing


def test_a_faint_box_off_the_tube_or_of_another_size_is_no_canal():
    candidates = tube(30)
    candidates[10] = [box_at(128.0 + 3.0, 140.0 + 5.0, 0.25)]  # 6 mm off the tube (1.25 mm pixels)
    candidates[15] = [box_at(128.0 + 4.5, 140.0, 0.25, size=30.0)]  # the canal and the body around it
    candidates[20] = [box_at(128.0 + 6.0, 140.0, 0.25, size=8.0)]  # a root beside the canal
    candidates[22] = [box_at(128.0 + 6.6, 140.0 + 2.5, 0.06), box_at(200.0, 140.0, 0.2)]  # 3 mm off: the canal
    chosen = track_canal(candidates, pixel_mm=1.25, slice_mm=3.0)
    assert chosen[10] is None and chosen[15] is None and chosen[20] is None
    assert centre(chosen[22]) == (128.0 + 6.6, 140.0 + 2.5)


def test_a_gap_without_candidates_is_bridged_when_short():
    candidates = tube(30)
    for k in range(10, 14):  # 12 mm without a canal
        candidates[k] = []
    chosen = track_canal(candidates, pixel_mm=1.25, slice_mm=3.0)
    assert sum(d is not None for d in chosen) == 26


def canal_with_gaps(n, missing):
    """A canal drifting 1 px right and 0.5 px back per slice, with no canal on the slices ``missing``."""
    return [None if k in missing else SliceCanal(k, (100.0 + k, 80.0 + 0.5 * k, 110.0 + k, 92.0 + 0.5 * k), 0.8, 0.4)
            for k in range(n)]


def test_a_gap_inside_the_track_is_bridged_on_the_tube_between_its_ends():
    # a disc narrowing the canal so that the detector loses it on slices 10-13 (12 mm of 3 mm slices)
    canals = canal_with_gaps(30, missing=set(range(10, 14)))
    bridged = bridge_gaps(canals, slice_mm=3.0)
    for k in range(10, 14):
        assert bridged[k].bridged and bridged[k].score == 0.0 and bridged[k].disc_probability == 0.0
        # the drift is linear, so the interpolated box is exactly where the canal lies
        assert np.allclose(bridged[k].box_ij, (100.0 + k, 80.0 + 0.5 * k, 110.0 + k, 92.0 + 0.5 * k), atol=1e-9)
        assert bridged[k].slice_index == k
    # the tracked slices stay as they were, and are not marked
    assert all(bridged[k] is canals[k] and not canals[k].bridged for k in range(30) if not 10 <= k < 14)


def test_a_long_gap_and_the_slices_beyond_the_tracks_ends_stay_without_a_canal():
    # no canal seen below slice 3, above slice 26, nor over 18 mm (slices 10-15, 3 mm apart) in between
    missing = {0, 1, 2, 27, 28, 29} | set(range(10, 16))
    bridged = bridge_gaps(canal_with_gaps(30, missing), slice_mm=3.0)
    assert [k for k, c in enumerate(bridged) if c is None] == sorted(missing)
    # a gap just within the limit is bridged, one slice longer is not (1 mm slices)
    n_within = int(BRIDGE_MAX_GAP_MM)
    within = bridge_gaps(canal_with_gaps(40, set(range(5, 5 + n_within))), slice_mm=1.0)
    assert all(within[k] is not None for k in range(40))
    beyond = bridge_gaps(canal_with_gaps(40, set(range(5, 6 + n_within))), slice_mm=1.0)
    assert sum(c is None for c in beyond) == n_within + 1
    # without a limit every gap inside the track is bridged, and still nothing beyond its ends
    unlimited = bridge_gaps(canal_with_gaps(30, missing), slice_mm=3.0, max_gap_mm=None)
    assert [k for k, c in enumerate(unlimited) if c is None] == [0, 1, 2, 27, 28, 29]


def test_a_gap_between_faint_boxes_is_not_bridged():
    # where the sac tapers into the sacrum the detector loses it between faint boxes (the tube let them in): no level
    # belongs in that gap. 1 mm slices; the gap is slices 30-35
    canals = canal_with_gaps(80, missing=set(range(30, 36)))
    faint = lambda k: SliceCanal(k, canals[k].box_ij, 0.2, 0.4)  # noqa: E731
    # faint on the 15 slices below the gap; the sure ones further down do not count
    below_faint = [faint(k) if 15 <= k < 30 else c for k, c in enumerate(canals)]
    # 4 sure slices (26-29) within 15 mm below the gap: not enough
    below_short = [faint(k) if 15 <= k < 26 else c for k, c in enumerate(canals)]
    # 5 sure slices (25-29): enough
    below_enough = [faint(k) if 15 <= k < 25 else c for k, c in enumerate(canals)]
    above_faint = [faint(k) if 36 <= k < 51 else c for k, c in enumerate(canals)]
    assert all(c is not None for c in below_faint[:15]) and all(c.score == 0.8 for c in above_faint[51:])
    assert bridge_gaps(below_faint, slice_mm=1.0)[32] is None
    assert bridge_gaps(below_short, slice_mm=1.0)[32] is None
    assert bridge_gaps(below_enough, slice_mm=1.0)[32].bridged
    assert bridge_gaps(above_faint, slice_mm=1.0)[32] is None


@settings(max_examples=40, deadline=None)
@given(shift=st.floats(40.0, 120.0), k=st.integers(2, 27), slice_mm=st.sampled_from([0.8, 3.0, 5.0]))
def test_tracking_never_takes_a_lone_box_far_off_the_tube(shift, k, slice_mm):
    candidates = tube(30)
    candidates[k] = [box_at(128.0 + 0.3 * k + shift / 1.25, 140.0, 1.0), candidates[k][0]]
    chosen = track_canal(candidates, pixel_mm=1.25, slice_mm=slice_mm)
    assert abs(centre(chosen[k])[0] - (128.0 + 0.3 * k)) < 1e-6


def test_candidates_come_best_first_and_fold_the_two_classes_of_one_canal():
    boxes = np.array([[10, 10, 20, 20], [11, 10, 21, 20], [60, 60, 70, 70], [10.5, 10, 20, 20]], dtype=float)
    scores = np.array([0.3, 0.6, 0.9, 0.2])
    labels = np.array([1, 2, 1, 1])
    found = canal_candidates(boxes, scores, labels)
    assert [d.box_uv for d in found] == [(60.0, 60.0, 70.0, 70.0), (11.0, 10.0, 21.0, 20.0)]
    assert found[0].score == 0.9 and found[0].disc_probability == 0.0
    # canal (0.3) and canal-at-disc (0.6) boxes of one canal: score 0.9, disc share 2/3
    assert abs(found[1].score - 0.9) < 1e-9 and abs(found[1].disc_probability - 0.6 / 0.9) < 1e-9


def test_of_two_steady_tubes_the_surer_one_is_the_canal():
    # a second, steady but weaker line of boxes 50 mm to the side (say, the aorta) along the whole study
    canal, aside = tube(20, score=0.9), tube(20, u0=168.0, score=0.45)
    candidates = [a + b for a, b in zip(aside, canal)]  # the weaker box listed first on every slice
    chosen = track_canal(candidates, pixel_mm=1.25, slice_mm=3.0)
    assert [round(centre(d)[0], 6) for d in chosen] == [round(128.0 + 0.3 * k, 6) for k in range(20)]
