"""The real scans' ground truth: our canal boxes and disc positions agree with an
independent derivation on the RAS-canonical grid (Testing/Data/derived)."""

import csv
import json

import numpy as np
import pytest

from conftest import DATA
from SpineStenosisGraderLib.training.annotations import _discs_from_spec, load_scans
from SpineStenosisGraderLib.training.train import training_scans

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


def _discs_by_method(scan, method):
    entry = next(e for e in json.loads((DATA / "scans.json").read_text())["scans"] if e["name"] == scan.name)
    return _discs_from_spec(DATA, dict(entry["discs"], method=method), scan.stack, scan.canal)


@pytest.mark.parametrize("name", sorted(DERIVED))
def test_disc_positions_match(scans, name):
    # the derivation takes midpoints of label centres where the catalogue does: compare like with like
    discs, _ = read_derived(name)
    ours = scans[name].discs
    if name in ("totalsegmentator_ct", "tptbox_ct"):
        ours = _discs_by_method(scans[name], "centroid_midpoint")
    names = set()
    for label, k in discs.items():
        # the derivation names the crop's discs after its automatic vertebra labels and, as "alt", after its
        # manual vertebral centres, which the catalogue follows (test_the_cervical_crops_disc_names_...)
        level = label.split("alt: ")[1].rstrip(")") if name == "sct_cervical_t2" else label.split(" ")[0]
        names.add(level)
        if level in ours:
            assert ours[level] == pytest.approx(k, abs=0.11)
    assert len(set(ours) & names) >= 2


def test_the_cervical_crops_disc_names_follow_its_manual_vertebral_centres(scans):
    # two label sets of sct_testing_data's t2 disagree by one vertebra: the cord labelled by sct_label_vertebrae
    # (started with "-initz 34,3", C2/C3 at slice 34) and the manual points at the centres of C3, C4 and C5. The
    # manual ones are right: the rootlets of the cord's C5 segment lie at slices 39-46, which C2's body cannot
    # face, and a disc with uncinate processes shows at slice 53, which would lie inside C2 (README, "Where the
    # numbers come from"). Each reference disc lies between the centres of the two vertebrae it is named after.
    import SimpleITK as sitk

    from SpineStenosisGraderLib.study.volume import resample_like

    scan = scans["sct_cervical_t2"]
    points = sitk.GetArrayFromImage(resample_like(
        sitk.ReadImage(str(DATA / "sct_cervical_t2" / "t2_labeled_center_manual.nii.gz")), scan.stack, nearest=True))
    centres = {f"C{int(v)}": float(np.nonzero(points == v)[0].mean()) for v in np.unique(points) if v}
    assert centres == {"C3": 44.0, "C4": 26.0, "C5": 9.0}
    checked = 0
    for name, k in scan.discs.items():
        upper, lower = name.split("-")
        assert centres.get(upper, np.inf) > k > centres.get(lower, -np.inf), (name, k, centres)
        checked += upper in centres and lower in centres
    assert checked == 2 and set(scan.discs) == {"C3-C4", "C4-C5", "C5-C6"}
    # C2-C3 lies above the labelled cord, at the crop's top: a level there is not scored
    assert scan.more_discs_above


def test_disc_weight_marks_disc_slices(scans):
    scan = scans["totalsegmentator_ct"]
    weight = scan.disc_weight(4.0)
    assert weight[56] == 1.0  # L4-L5 at k = 56.0
    assert weight[62] == 0.0  # mid L4 body
    assert np.all((weight >= 0) & (weight <= 1))


def test_the_default_package_learns_from_every_scan_with_a_canal_and_disc_reference():
    # the scans with disc positions all train it, and are measured by fold packages trained without each
    # (README); the cord-only scans with no disc positions are measured, never trained on
    entries = json.loads((DATA / "scans.json").read_text())["scans"]
    uses = {e["name"]: e["use"] for e in entries}
    assert {name for name, use in uses.items() if use == "train"} == {
        "totalsegmentator_ct", "tptbox_mri", "tptbox_ct", "sct_cervical_t2"}
    assert set(uses.values()) == {"train", "holdout"}
    # a held-out scan lacks disc positions (a cord mask) or a canal label (disc labels alone), or its canal label
    # is the cord alone (the T2*, whose discs were read by eye), or came after the embedded package was trained:
    # the two VerSe CTs (5 December 2026) and the two TotalSegmentator neck CTs (7 December 2026), to be trained on
    # at its next retrain
    added_later = ["verse012_ct", "verse014_ct", "totalseg_s0002_ct", "totalseg_s0003_ct"]
    assert all("discs" not in e or e["canal"] is None or e["canal"].get("cord_only") or e["name"] in added_later
               for e in entries if e["use"] == "holdout")
    assert next(e for e in entries if e["name"] == "sct_errsm_18_gre")["canal"]["cord_only"]
    trained = ["totalsegmentator_ct", "tptbox_mri", "tptbox_ct", "sct_cervical_t2"]
    assert training_scans(DATA / "scans.json") == trained
    # not even --all-scans trains on a scan with no disc positions (it would teach that no slice cuts a disc)
    # or one with no canal label (that no slice has a canal), nor on a cord alone (s0002's spinal cord label), which
    # is no canal box
    assert training_scans(DATA / "scans.json", all_scans=True) == trained + [
        name for name in added_later if name != "totalseg_s0002_ct"]


def _body_gap_on_ras_grid(scan, label_file, names):
    """The body-gap discs derived again on the RAS-canonical grid, where the front is the larger j."""
    import SimpleITK as sitk

    labels = sitk.GetArrayFromImage(sitk.DICOMOrient(sitk.ReadImage(str(DATA / label_file)), "RAS"))
    # our canal mask is on the LPS grid: mirror both in-plane axes to reach RAS (the slice order is shared)
    canal = scan.canal[:, ::-1, ::-1] > 0
    fronts = np.array([np.nonzero(c.any(axis=1))[0].max() if c.any() else -1 for c in canal], dtype=float)
    known = np.nonzero(fronts >= 0)[0]
    fronts = np.interp(np.arange(len(fronts)), known, fronts[known])
    rows = np.arange(labels.shape[1])[None, :, None]
    extents = []
    for label, name in names.items():
        body = ((labels == label) & (rows > fronts[:, None, None])).sum(axis=(1, 2))
        if body.max() > 0:
            ks = np.nonzero(body >= 0.25 * body.max())[0]
            extents.append((ks.mean(), ks.min(), ks.max(), name))
    extents.sort()
    return {f"{above}-{below}": (top + bottom) / 2.0 for (_, _, top, below), (_, bottom, _, above)
            in zip(extents, extents[1:]) if top < labels.shape[0] - 1 and bottom > 0}


@pytest.mark.parametrize("name,label_file,names", [
    ("totalsegmentator_ct", "totalsegmentator_ct/example_ct_vertebrae.nii.gz",
     {26: "S1", 27: "L5", 28: "L4", 29: "L3", 30: "L2", 31: "L1", 32: "T12", 33: "T11"}),
    ("tptbox_ct", "tptbox/sample_ct/sub-ct_seg-vert_label-22_msk.nii.gz", {21: "L2", 22: "L3", 23: "L4"}),
])
def test_discs_between_vertebral_bodies_match_a_derivation_on_the_ras_grid(scans, name, label_file, names):
    expected = _body_gap_on_ras_grid(scans[name], label_file, names)
    assert scans[name].discs == pytest.approx(expected, abs=0.51)


def test_a_disc_next_to_a_body_cut_by_the_study_is_no_reference():
    # T11 shows only its lowest posterior elements and T12's body reaches the top slice of the sample
    assert "T11-T12" not in load_scans(DATA / "scans.json")[0].discs
    assert "T11-T12" in _discs_by_method(load_scans(DATA / "scans.json")[0], "centroid_midpoint")


def test_a_disc_lies_in_the_gap_between_bodies_not_between_whole_vertebra_centres():
    from SpineStenosisGraderLib.training.annotations import _discs_between_bodies

    # 30 slices, canal front at row 10: bodies (rows 0-9) of vertebra 1 on slices 2-11 and vertebra 2 on 16-25;
    # vertebra 2's arch (rows 12-19) hangs down to slice 8, which drags its centre towards vertebra 1
    labels = np.zeros((30, 20, 6), dtype=np.uint8)
    labels[2:12, 0:10] = 1
    labels[16:26, 0:10] = 2
    labels[8:26, 12:20] = 2
    canal = np.zeros_like(labels)
    canal[:, 10:12, 2:4] = 1
    discs = _discs_between_bodies(labels, {1: "L5", 2: "L4"}, canal)
    assert discs == {"L4-L5": 13.5}
    # the study ends inside vertebra 1's body, where a sliver of vertebra 2 (an osteophyte) shows: the body
    # may go on past the end, and the disc with it
    cut = labels[:10].copy()
    cut[9, 0:3, 0:2] = 2
    assert _discs_between_bodies(cut, {1: "L5", 2: "L4"}, canal[:10]) == {}


def test_the_detector_learns_from_the_training_positions_where_the_catalogue_gives_them(scans):
    # the sample's references lie between the bodies; the default package learned from the earlier midpoints,
    # T11-T12 among them (see Testing/Data/README.md)
    scan = scans["totalsegmentator_ct"]
    assert "T11-T12" not in scan.discs and scan.training_discs["T11-T12"] == pytest.approx(108.6, abs=0.1)
    weight = scan.disc_weight(4.0)
    assert weight[108] == 1.0  # within 4 mm of the training T11-T12
    assert scans["sct_cervical_t2"].training_discs is None  # one method for both
    assert scans["sct_cervical_t2"].disc_weight(1.0)[17] == 1.0  # C4-C5 at 17.5


def test_open_rings_between_two_closed_ones_get_the_straight_line_between_their_boxes():
    from SpineStenosisGraderLib.training.annotations import bridge_open_rings

    boxes = {2: (10, 20, 30, 40), 6: (14, 28, 30, 44), 30: (0, 0, 4, 4)}
    filled = bridge_open_rings(boxes, slice_spacing_mm=2.0, max_gap_mm=6.0)
    # three open slices (6 mm) between 2 and 6 are filled edge by edge; the 23 between 6 and 30 (46 mm) are not
    assert filled == {2: (10, 20, 30, 40), 3: (11, 22, 30, 41), 4: (12, 24, 30, 42), 5: (13, 26, 30, 43),
                      6: (14, 28, 30, 44), 30: (0, 0, 4, 4)}
    assert list(filled) == sorted(filled)
    assert bridge_open_rings(boxes, slice_spacing_mm=2.5, max_gap_mm=6.0) == boxes  # 7.5 mm is too long
    assert bridge_open_rings({}, 1.0) == {}


def test_a_canal_read_from_the_bony_ring_trains_across_the_discs_and_is_scored_on_closed_rings_only(scans):
    from SpineStenosisGraderLib.training.train import slices_from_scan

    ct = scans["tptbox_ct"]
    # the reference: the ring closes on slices 3-8 and 25-28 only, not at L2-L3 (slice 37.5) nor L3-L4 (13.5)
    assert sorted(ct.boxes) == [3, 4, 5, 6, 7, 8, 25, 26, 27, 28]
    # the detector learns the canal across the 24 mm between them, L3-L4's slices 13-18 among them
    assert sorted(ct.training_boxes) == list(range(3, 29))
    assert all(ct.training_boxes[k] == ct.boxes[k] for k in ct.boxes)
    assert ct.disc_weight(4.0)[14] == 1.0
    slices = slices_from_scan(ct)
    assert len(slices) == 26 and sum(d.label == 2 for d in slices) >= 4
    # a canal label of its own (the sac) is learned where it is
    assert scans["totalsegmentator_ct"].training_boxes is None
    assert len(slices_from_scan(scans["totalsegmentator_ct"])) == len(scans["totalsegmentator_ct"].boxes)


@pytest.fixture(scope="module")
def label_maps():
    from SpineStenosisGraderLib.training.annotations import load_label_maps

    return list(load_label_maps(DATA / "scans.json"))


def test_label_maps_without_images_are_read_on_a_1_mm_grid_in_patient_space(label_maps):
    import SimpleITK as sitk

    assert len(label_maps) == 28 and all(m.labels_only and m.modality == "MR" for m in label_maps)
    for m in label_maps:
        assert np.allclose(m.stack.spacing, 1.0)
        # the discs run from L5-S1 at the bottom up the spine (the two label schemes number them opposite ways)
        ks = [m.discs[name] for name in ("L5-S1", "L4-L5", "L3-L4", "L2-L3", "L1-L2")]
        assert all(np.diff(ks) > 20), m.name
        # the canal lies behind the discs (LPS rows grow towards the back), on the slices of every lumbar disc
        for name in ("L4-L5", "L3-L4", "L2-L3"):
            k = int(round(m.discs[name]))
            disc_rows = np.nonzero(m.stack.array[k] > 200)[0]
            canal_rows = np.nonzero(m.canal[k])[0]
            assert canal_rows.size and disc_rows.size, (m.name, name)
            assert canal_rows.mean() - disc_rows.mean() > 10, (m.name, name)
    # where the 1 mm grid puts the canal is where the file does: the centre of its canal label in patient space,
    # for a map stored with its slice axis first and one stored as sagittal slices
    for name in ("104_t2", "166_t2"):
        m = next(m for m in label_maps if m.name == f"spider_{name}")
        raw = sitk.ReadImage(str(DATA / "spider" / f"{name}.mha"))
        voxels = np.argwhere(sitk.GetArrayFromImage(raw) == 100)[:, ::-1].mean(axis=0)
        expected = np.asarray(raw.TransformContinuousIndexToPhysicalPoint(voxels.tolist()))
        kji = np.argwhere(m.canal).mean(axis=0)
        found = np.asarray(m.stack.image.TransformContinuousIndexToPhysicalPoint(kji[::-1].tolist()))
        assert np.abs(found - expected).max() < 1.0, name


def test_label_maps_are_not_scans_that_could_be_graded_or_scored():
    # evaluate and the tests read 'scans'; the label maps have no image to grade
    catalogue = json.loads((DATA / "scans.json").read_text())
    scan_names = {e["name"] for e in catalogue["scans"]}
    assert not scan_names & {e["name"] for e in catalogue["label_maps"]}
    assert not any(s.labels_only for s in load_scans(DATA / "scans.json"))


def test_discs_read_off_the_images_as_points_land_on_their_slices(scans):
    # the T2*'s discs were read by eye on slices 12, 10, 7, 5, 3 and 0 and stored as points in patient space
    # (LPS mm); the file's own geometry, read by SimpleITK apart from the loader, puts them back on those slices
    # (its slices run feet to head, as the loader's do; its rows run the other way, which moves no slice)
    import SimpleITK as sitk

    entry = next(e for e in json.loads((DATA / "scans.json").read_text())["scans"] if e["name"] == "sct_errsm_18_gre")
    image = sitk.ReadImage(str(DATA / entry["image"]))
    points = entry["discs"]["points_lps_mm"]
    from_file = {name: image.TransformPhysicalPointToContinuousIndex(point)[2] for name, point in points.items()}
    assert scans["sct_errsm_18_gre"].discs == pytest.approx(from_file, abs=1e-6)
    assert scans["sct_errsm_18_gre"].discs == pytest.approx(
        {"C2-C3": 12, "C3-C4": 10, "C4-C5": 7, "C5-C6": 5, "C6-C7": 3, "C7-T1": 0}, abs=0.05)
