"""The canal is one tube: tracking picks it through the slices and leaves a slice without a fit empty."""

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from SpineStenosisGraderLib.inference.detector import SliceDetection, canal_candidates
from SpineStenosisGraderLib.inference.tracking import track_canal


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
