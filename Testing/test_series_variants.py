"""Short and thick series made from a real scan keep its labels in place."""

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from SpineStenosisGraderLib.study.volume import AxialStack
from SpineStenosisGraderLib.training.evaluation import evaluate_series_variants, score_levels
from SpineStenosisGraderLib.training.series_variants import (
    cut,
    disc_slices_in,
    series_variants,
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


def test_a_cut_outside_the_stack_is_refused():
    with pytest.raises(ValueError):
        cut(_stack(), 8, 13)


def test_short_windows_cover_the_discs_and_are_shorter_than_the_scan():
    windows = short_windows(100, 3.0, [40.0, 60.0], lengths_mm=(39.0, 300.0))
    # 13 slices each, every 5 slices from 10 below the lowest disc until the window reaches 10 above the highest
    assert windows == [(first, first + 13) for first in range(30, 58, 5)]
    assert short_windows(100, 3.0, []) == []


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


def test_series_variants_of_a_real_scan_are_graded_and_counted(tmp_path):
    import json

    from SpineStenosisGraderLib.packages.package import load_package
    from SpineStenosisGraderLib.training.annotations import load_scans

    # a catalogue of the one small scan, its paths made absolute
    catalogue = json.loads(CATALOGUE.read_text())
    entry = next(s for s in catalogue["scans"] if s["name"] == "sct_cervical_t2")
    for key, value in list(entry.items()):
        if isinstance(value, str) and key == "image":
            entry[key] = str(CATALOGUE.parent / value)
        elif isinstance(value, dict) and "file" in value:
            value["file"] = str(CATALOGUE.parent / value["file"])
            for extra in value.get("union", []):
                extra["file"] = str(CATALOGUE.parent / extra["file"])
    for tissue in entry.get("tissues", []):
        tissue["file"] = str(CATALOGUE.parent / tissue["file"])
    one = tmp_path / "scans.json"
    one.write_text(json.dumps({"scans": [entry]}))
    scan = next(iter(load_scans(one)))
    package = load_package(None)
    made = series_variants(scan.stack, scan.discs)
    report = evaluate_series_variants(lambda name: package, one)
    assert [s["scan"] for s in report["per_scan"]] == ["sct_cervical_t2"]
    sct = next(s for s in report["per_scan"] if s["scan"] == "sct_cervical_t2")
    assert sct["series"] == len(made) == len(short_windows(scan.stack.n_slices, 1.0, list(scan.discs.values()))) + 4
    assert sct["trained_on"] and "sct_cervical_t2" in report["pooled"]["scans_trained_on"]
    inside = sum(score_levels([], list(v.discs.values()), v.stack.n_slices, v.stack.spacing[2])[0] for v in made)
    assert sct["discs_inside"] == inside > 0
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
    assert canal_only["series"] == len(windows) + 4 and canal_only["canal_slices"] > 0
    # with no disc and no C2 labelled, no level can be called false
    assert canal_only["false_levels"] == 0
