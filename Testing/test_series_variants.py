"""Short and thick series made from a real scan keep its labels in place."""

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from SpineStenosisGraderLib.study.volume import AxialStack
from SpineStenosisGraderLib.training.evaluation import evaluate_series_variants, score_levels, score_series_names
from SpineStenosisGraderLib.training.series_variants import (
    FIELD_OF_VIEW_MARGIN_MM,
    as_sagittal_slices,
    crop_to_canal,
    cut,
    disc_slices_in,
    series_variants,
    short_thick_series,
    short_windows,
    source_slices,
    thicken,
)

CATALOGUE = Path(__file__).parent / "Data" / "scans.json"


def _stack(n=12, spacing=(0.8, 0.8, 1.5)):
    # slice k holds the value 10 k, on a grid whose slice axis runs from head to foot (a flipped direction)
    array = np.repeat(np.arange(n, dtype=np.float32)[:, None, None] * 10.0, 6, axis=1).repeat(5, axis=2)
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(spacing)
    image.SetOrigin((12.0, -40.0, 300.0))
    image.SetDirection((-1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, -1.0))
    return AxialStack(image, source="test")


def _lps_of_slice(stack, k):
    return stack.index_to_lps(np.array([[2.0, 3.0, k]]))[0]


@pytest.mark.parametrize("offset", [0, 1, 2])
def test_a_thick_slice_is_the_mean_of_its_run_and_lies_at_its_centre(offset):
    stack = _stack()
    thick = thicken(stack, 4.5, offset)  # three 1.5 mm slices each
    assert thick.n_slices == (12 - offset) // 3
    assert thick.spacing[2] == pytest.approx(4.5)
    for k in range(thick.n_slices):
        run = [offset + 3 * k + j for j in range(3)]
        assert float(thick.array[k, 0, 0]) == pytest.approx(10.0 * np.mean(run))
        np.testing.assert_allclose(_lps_of_slice(thick, k), np.mean([_lps_of_slice(stack, j) for j in run], axis=0),
                                   atol=1e-6)


def test_a_sagittal_slice_is_the_mean_of_its_columns_and_lies_at_their_centre():
    # column i holds the value i, on 1 mm pixels, flipped left to right as in _stack
    array = np.tile(np.arange(10, dtype=np.float32), (4, 6, 1))
    image = sitk.GetImageFromArray(array)
    image.SetSpacing((1.0, 0.8, 2.0))
    image.SetOrigin((12.0, -40.0, 300.0))
    image.SetDirection((-1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, -1.0))
    stack = AxialStack(image, source="test")
    sagittal = as_sagittal_slices(stack, 3.0)  # columns 0-2, 3-5 and 6-8; column 9 is left over
    assert sagittal.spacing == pytest.approx((3.0, 0.8, 2.0))
    assert sagittal.array.shape == (4, 6, 3)
    assert sagittal.array[2, 3].tolist() == pytest.approx([1.0, 4.0, 7.0])
    # each column lies where the middle of its run lay; the slices do not move
    for c in range(3):
        np.testing.assert_allclose(sagittal.index_to_lps(np.array([[c, 2.0, 1.0]]))[0],
                                   stack.index_to_lps(np.array([[3 * c + 1, 2.0, 1.0]]))[0], atol=1e-6)
    assert disc_slices_in(stack, sagittal, {"L4-L5": 2.5}) == pytest.approx({"L4-L5": 2.5})
    # never thicker than asked: 2 mm columns make no 3 mm slice (4 mm would be refused as a study)
    image.SetSpacing((2.0, 0.8, 2.0))
    assert as_sagittal_slices(AxialStack(image, source="test"), 3.0).spacing[0] == pytest.approx(2.0)


def test_labels_are_carried_into_a_thick_or_cut_series_through_patient_space():
    stack = _stack()
    discs = {"L4-L5": 7.0, "L5-S1": 2.5}
    # slices 1, 2, 3 make thick slice 0 (centre 2), 4, 5, 6 thick slice 1 (centre 5), 7, 8, 9 slice 2 (centre 8)
    assert disc_slices_in(stack, thicken(stack, 4.5, 1), discs) == pytest.approx({"L4-L5": 5 / 3, "L5-S1": 1 / 6})
    part = cut(stack, 4, 10)
    assert part.n_slices == 6
    assert disc_slices_in(stack, part, discs) == pytest.approx({"L4-L5": 3.0, "L5-S1": -1.5})
    np.testing.assert_allclose(_lps_of_slice(part, 0), _lps_of_slice(stack, 4), atol=1e-6)
    assert float(part.array[0, 0, 0]) == 40.0


def test_each_slice_of_a_series_takes_the_reference_of_the_scan_slice_at_its_centre():
    stack = _stack()
    # thick slice k of offset 1 averages slices 3k+1 to 3k+3: its centre is slice 3k+2
    assert source_slices(stack, thicken(stack, 4.5, 1)).tolist() == [2, 5, 8]
    assert source_slices(stack, cut(stack, 4, 10)).tolist() == [4, 5, 6, 7, 8, 9]


def test_a_field_of_view_cropped_to_the_canal_keeps_every_voxel_in_place_in_patient_space():
    stack = _stack(spacing=(2.0, 4.0, 1.5))
    array = np.arange(12 * 40 * 50, dtype=np.float32).reshape(12, 40, 50)
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(stack.spacing)
    image.SetOrigin(stack.origin)
    image.SetDirection(stack.image.GetDirection())
    stack = AxialStack(image, source="test")
    # the canal's boxes (i0, j0, i1, j1) span columns 20-26 and rows 10-15 over the slices
    cropped = crop_to_canal(stack, {2: (20.0, 10.0, 24.0, 14.0), 7: (22.0, 11.0, 26.0, 15.0)})
    # 20 mm is 10 columns of 2 mm and 5 rows of 4 mm either side
    assert FIELD_OF_VIEW_MARGIN_MM == 20.0
    assert cropped.image.GetSize() == (26, 15, 12)
    assert float(cropped.array[3, 0, 0]) == float(array[3, 5, 10])
    np.testing.assert_allclose(cropped.index_to_lps(np.array([[0.0, 0.0, 3.0]])),
                               stack.index_to_lps(np.array([[10.0, 5.0, 3.0]])), atol=1e-6)
    # a crop that keeps nearly the whole slice is no tighter field of view than the scan's own
    assert crop_to_canal(stack, {0: (2.0, 2.0, 45.0, 35.0)}) is None
    assert crop_to_canal(stack, {}) is None


def test_a_cut_outside_the_stack_is_refused():
    with pytest.raises(ValueError):
        cut(_stack(), 8, 13)


def test_short_windows_cover_the_discs_and_are_shorter_than_the_scan():
    windows = short_windows(100, 3.0, [40.0, 60.0], lengths_mm=(39.0, 300.0))
    # 13 slices each, every 5 slices from 10 below the lowest disc until the window reaches 10 above the highest
    assert windows == [(first, first + 13) for first in range(30, 58, 5)]
    assert short_windows(100, 3.0, []) == []


def test_a_short_thick_series_is_a_40_mm_window_in_5_mm_slices_with_its_discs_in_place():
    stack = _stack(n=90, spacing=(0.8, 0.8, 1.0))
    discs = {"L4-L5": 30.0, "L3-L4": 58.0}
    made = short_thick_series(stack, discs)
    windows = short_windows(90, 1.0, list(discs.values()), lengths_mm=(40.0,))
    assert [v.description for v in made] == [f"40 mm from slice {first} in 5.0 mm slices" for first, _ in windows]
    for variant, (first, stop) in zip(made, windows):
        assert variant.stack.n_slices == 8 and variant.stack.spacing[2] == pytest.approx(5.0)
        # slice k is the mean of the window's slices 5 k to 5 k + 4 (slice j holds 10 j)
        for k in range(8):
            assert float(variant.stack.array[k, 0, 0]) == pytest.approx(10.0 * (first + 5 * k + 2))
        # a disc keeps its place in patient space: 2 slices into its run of 5 is the run's centre
        for name, z in discs.items():
            assert variant.discs[name] == pytest.approx((z - first - 2) / 5.0)
            np.testing.assert_allclose(_lps_of_slice(variant.stack, variant.discs[name]), _lps_of_slice(stack, z),
                                       atol=1e-6)
    # 3 mm slices are averaged by twos, into 6 mm; 4 mm slices are about 5 mm already, and make none
    coarse = short_thick_series(_stack(n=40, spacing=(0.8, 0.8, 3.0)), {"L4-L5": 20.0})
    assert coarse and all(v.stack.spacing[2] == pytest.approx(6.0) and v.stack.n_slices == 6 for v in coarse)
    assert short_thick_series(_stack(n=40, spacing=(0.8, 0.8, 4.0)), {"L4-L5": 20.0}) == []


def test_level_scores_count_discs_inside_found_and_false_levels():
    # 2 mm slices, 30 slices: a disc 1 slice from the end is not inside (3 mm), one at 10 is found (4 mm away),
    # one at 20 is missed, and a level 6 slices (12 mm) from every disc is false
    assert score_levels([12.0, 26.0], [1.0, 10.0, 20.0], 30, 2.0) == (2, 1, 1)


def test_a_level_above_labels_that_stop_short_of_the_top_disc_is_not_false():
    # labels from L5-S1 to L1-L2 in a series reaching T12-L1: a level 14 mm above the highest label may be that
    # unlabelled disc, while one 14 mm below the lowest is false as ever
    discs = [10.0, 20.0]
    assert score_levels([27.0], discs, 40, 2.0, more_discs_above=True) == (2, 0, 0)
    assert score_levels([27.0], discs, 40, 2.0) == (2, 0, 1)
    assert score_levels([3.0], discs, 40, 2.0, more_discs_above=True) == (2, 0, 1)


def test_a_series_names_are_checked_where_its_labels_tell_them():
    # 2 mm slices, 40 slices: L4-L5 at 10 (L5-S1 lies 1 slice from the end, not inside), L3-L4 at 25
    discs = {"L5-S1": 1.0, "L4-L5": 10.0, "L3-L4": 25.0}
    # a level 3 slices (6 mm) from L4-L5 named right, one 2 slices from L3-L4 named wrong, one between them and
    # one on L5-S1, which is not inside the series, unchecked
    assert score_series_names(["L5-S1", "L4-L5", "L3-L4", "L2-L3"], [1.0, 13.0, 18.0, 27.0], discs, 40, 2.0) == (2, 1)
    # matched closest first: the level on L3-L4 is checked, not the one 5 slices away
    assert score_series_names(["L3-L4", "L2-L3"], [25.0, 30.0], discs, 40, 2.0) == (1, 1)
    assert score_series_names(["L2-L3", "L3-L4"], [25.0, 30.0], discs, 40, 2.0) == (1, 0)
    # discs whose labels only count them say nothing of names
    assert score_series_names(["L4-L5"], [10.0], discs, 40, 2.0, disc_names_known=False) == (0, 0)


def test_a_neck_series_names_are_counted_from_c2_only_where_it_holds_c2():
    # C2's body at slice 50 and T2's at -20 (below the series): the levels below C2 are C2-C3, C3-C4, ...
    landmarks = {"C2": 50.0, "T2": -20.0}
    names = ["C4-C5", "C3-C4", "C2-C3", "C1-C2"]
    assert score_series_names(names, [10.0, 25.0, 40.0, 55.0], {}, 60, 1.0, landmarks=landmarks) == (3, 3)
    # a level missed below C2 shifts every name counted after it, as for a reader
    assert score_series_names(["C4-C5", "C3-C4"], [10.0, 25.0], {}, 60, 1.0, landmarks=landmarks) == (2, 0)
    # a series that ends below C2 holds nothing to count from
    assert score_series_names(names[:2], [10.0, 25.0], {}, 45, 1.0, landmarks={"C2": 50.0, "T2": -20.0}) == (0, 0)
    assert score_series_names(names[:2], [10.0, 25.0], {}, 60, 1.0, landmarks={"C2": 50.0}) == (0, 0)


def _one_scan_catalogue(name, folder):
    """A catalogue of the one scan, its paths made absolute: (its path, its entry)."""
    import json

    catalogue = json.loads(CATALOGUE.read_text())
    entry = next(s for s in catalogue["scans"] if s["name"] == name)
    for key, value in list(entry.items()):
        if isinstance(value, str) and key == "image":
            entry[key] = str(CATALOGUE.parent / value)
        elif isinstance(value, dict) and "file" in value:
            value["file"] = str(CATALOGUE.parent / value["file"])
            for extra in value.get("union", []):
                extra["file"] = str(CATALOGUE.parent / extra["file"])
    for tissue in entry.get("tissues", []):
        tissue["file"] = str(CATALOGUE.parent / tissue["file"])
    one = folder / "scans.json"
    one.write_text(json.dumps({"scans": [entry]}))
    return one, entry


def test_series_variants_of_a_real_scan_are_graded_and_counted(tmp_path):
    import json

    from SpineStenosisGraderLib.packages.package import load_package
    from SpineStenosisGraderLib.training.annotations import load_scans

    one, entry = _one_scan_catalogue("sct_cervical_t2", tmp_path)
    scan = next(iter(load_scans(one)))
    package = load_package(None)
    made = series_variants(scan.stack, scan.discs, canal_boxes=scan.boxes)
    report = evaluate_series_variants(lambda name: package, one)
    assert [s["scan"] for s in report["per_scan"]] == ["sct_cervical_t2"]
    sct = next(s for s in report["per_scan"] if s["scan"] == "sct_cervical_t2")
    # the scan is cropped to the spine already (60 x 52 mm): no tighter field of view is made
    assert not any(v.description.startswith("field of view") for v in made)
    # two thick series at two offsets each, and one 3 mm sagittal series (the scan has 1 mm columns)
    assert sct["series"] == len(made) == len(short_windows(scan.stack.n_slices, 1.0, list(scan.discs.values()))) + 5
    assert sum(v.description == "3.0 mm sagittal slices" for v in made) == 1
    assert sct["trained_on"] and "sct_cervical_t2" in report["pooled"]["scans_trained_on"]
    inside = sum(score_levels([], list(v.discs.values()), v.stack.n_slices, v.stack.spacing[2])[0] for v in made)
    assert sct["discs_inside"] == inside > 0
    # a name is checked on each disc found, whose label names it
    assert sct["names_checked"] == sct["discs_found"] and 0 <= sct["names_right"] <= sct["names_checked"]
    assert report["pooled"]["names_right"] == f"{sct['names_right']}/{sct['names_checked']}"
    # every slice of the crop is labelled, so every series slice has a reference; the package learned this scan
    labelled = sum(int(k) in scan.boxes for v in made for k in source_slices(scan.stack, v.stack))
    assert sct["canal_slices"] == labelled == sum(v.stack.n_slices for v in made)
    assert sct["canal_hits"] >= 0.9 * labelled, sct
    assert report["pooled"]["canal_found"] == f"{sct['canal_hits']}/{labelled}"
    # every series is counted under the region it was read as, and the cervical ones are those read right
    assert sum(sct["regions_found"].values()) == sct["series"]
    assert sct["regions_found"].get("cervical", 0) == sct["region_right"]
    assert report["pooled"]["regions_found"] == sct["regions_found"]

    # without its disc positions, the same scan is scored on its canal and region alone, its windows laid
    # over the labelled canal
    del entry["discs"]
    one.write_text(json.dumps({"scans": [entry]}))
    canal_only = evaluate_series_variants(lambda name: package, one)["per_scan"][0]
    assert canal_only["discs_inside"] == canal_only["discs_found"] == 0
    windows = short_windows(scan.stack.n_slices, 1.0, sorted(scan.boxes))
    assert canal_only["series"] == len(windows) + 5 and canal_only["canal_slices"] > 0
    # with no disc and no C2 labelled, no level can be called false, nor its name checked
    assert canal_only["false_levels"] == 0 and canal_only["names_checked"] == 0


def test_short_thick_series_of_a_real_scan_are_graded_and_counted_apart(tmp_path):
    from SpineStenosisGraderLib.packages.package import load_package
    from SpineStenosisGraderLib.training.annotations import load_scans

    one, _ = _one_scan_catalogue("sct_cervical_t2", tmp_path)
    scan = next(iter(load_scans(one)))
    made = short_thick_series(scan.stack, scan.discs)
    report = evaluate_series_variants(lambda name: load_package(None), one, short_thick=True)
    assert report["data"].startswith("short thick series")
    (sct,) = report["per_scan"]
    assert sct["series"] == len(made) == len(short_windows(scan.stack.n_slices, 1.0, list(scan.discs.values()),
                                                           lengths_mm=(40.0,)))
    inside = sum(score_levels([], list(v.discs.values()), v.stack.n_slices, v.stack.spacing[2])[0] for v in made)
    assert sct["discs_inside"] == inside > 0
    # 8 slices of 5 mm per window, each with the canal reference of the scan slice at its centre
    assert sct["canal_slices"] == 8 * len(made)
    assert 0 < sct["canal_hits"] <= sct["canal_slices"]


def test_a_neck_cropped_to_its_canal_is_scored_on_its_own_canal_through_patient_space(tmp_path):
    from SpineStenosisGraderLib.packages.package import load_package
    from SpineStenosisGraderLib.training.annotations import load_scans

    # the true-axial T2* of the neck (160 mm field of view, 15 slices of 7.5 mm), never trained on
    one, _ = _one_scan_catalogue("sct_errsm_18_gre", tmp_path)
    scan = next(iter(load_scans(one)))
    made = series_variants(scan.stack, scan.discs, sorted(scan.boxes), scan.boxes)
    (crop,) = [v for v in made if v.description.startswith("field of view")]
    assert crop.stack.image.GetSize()[0] * crop.stack.spacing[0] < 60.0  # no neck outline fits
    report = evaluate_series_variants(lambda name: load_package(None), one)["per_scan"][0]
    assert report["series"] == len(made) and not report["trained_on"]
    # its boxes are compared with the labels on the scan's own pixels (99 of 101 slices found); read on the
    # crop's pixels, the crop's 15 slices would all miss (85 of 101)
    assert report["canal_slices"] == sum(v.stack.n_slices for v in made)
    assert report["canal_hits"] >= 0.95 * report["canal_slices"]
    # the canal at the crop's top, through C2, reads as deep as the cisterna magna, which tells the neck where
    # its outline is cut
    assert report["regions_found"].get("lumbar", 0) == 0
