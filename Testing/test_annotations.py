"""The real scans' ground truth: our canal boxes and disc positions agree with an
independent derivation on the RAS-canonical grid (Testing/Data/derived)."""

import csv
import json

import numpy as np
import pytest

from conftest import DATA
from SpineStenosisGraderLib.training.annotations import load_scans

DERIVED = {
    "totalsegmentator_ct": "TotalSegmentator_example_ct_per_slice.csv",
    "tptbox_mri": "TPTBox_sample_mri_per_slice.csv",
    "tptbox_ct": "TPTBox_sample_ct_per_slice.csv",
    "sct_cervical_t2": "sct_testing_data_t2_per_slice.csv",
}


@pytest.fixture(scope="module")
def scans():
    return {s.name: s for s in load_scans(DATA / "scans.json")}


def read_derived(name):
    path = DATA / "derived" / DERIVED[name]
    lines = path.read_text().splitlines()
    discs_line = next(line for line in lines if line.startswith("# discs"))
    discs = json.loads(discs_line.split(":", 1)[1])
    rows = list(csv.DictReader(line for line in lines if not line.startswith("#")))
    return discs, rows


@pytest.mark.parametrize("name", sorted(DERIVED))
def test_canal_boxes_match_the_independent_derivation(scans, name):
    scan = scans[name]
    _, rows = read_derived(name)
    ni, nj = scan.stack.image.GetSize()[:2]
    exact = compared = 0
    for row in rows:
        k = int(row["k"])
        if row["canal_present"] != "1" or k not in scan.boxes:
            # the derivation keeps 1-pixel specks that we drop (min_pixels): skip those slices
            continue
        i0, i1, j0, j1 = (int(row[c]) for c in ("i0", "i1", "j0", "j1"))
        # RAS canonical index (inclusive) to our LPS half-open box: both in-plane axes are mirrored
        expected = (ni - 1 - i1, nj - 1 - j1, ni - i0, nj - j0)
        # it bounds every canal pixel, we the largest component: edges may differ by a speck
        assert np.abs(np.subtract(scan.boxes[k], expected)).max() <= 2, (k, scan.boxes[k], expected)
        exact += scan.boxes[k] == expected
        compared += 1
    assert compared >= 10
    assert exact >= 0.8 * compared


@pytest.mark.parametrize("name", sorted(DERIVED))
def test_disc_positions_match(scans, name):
    discs, _ = read_derived(name)
    ours = scans[name].discs
    for label, k in discs.items():
        level = label.split(" ")[0]
        if level in ours:
            assert ours[level] == pytest.approx(k, abs=0.11)
    assert len(set(ours) & {label.split(" ")[0] for label in discs}) >= 2


def test_disc_weight_marks_disc_slices(scans):
    scan = scans["totalsegmentator_ct"]
    weight = scan.disc_weight(4.0)
    assert weight[56] == 1.0  # L4-L5 at k = 56.0
    assert weight[62] == 0.0  # mid L4 body
    assert np.all((weight >= 0) & (weight <= 1))


def test_the_default_package_learns_from_every_real_scan_and_is_measured_leave_one_out():
    # no scan is set aside: the figures come from fold packages trained without each scan (README)
    uses = {e["name"]: e["use"] for e in json.loads((DATA / "scans.json").read_text())["scans"]}
    assert set(uses) == {"totalsegmentator_ct", "tptbox_mri", "tptbox_ct", "sct_cervical_t2"}
    assert set(uses.values()) == {"train"}
