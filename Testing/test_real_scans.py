"""On real scans: the canal, the region and the level names come from the anatomy.

These pin what a new user sees first (the README's sample) and what must never
happen (a cervical scan named and graded as lumbar). The figures the README
quotes come from `spine-stenosis-grader evaluate`; these tests guard them.
"""

import numpy as np
import pytest
import SimpleITK as sitk

from conftest import DATA, load_script
from SpineStenosisGraderLib.packages.package import load_default_package
from SpineStenosisGraderLib.pipeline import grade_image, grade_stack
from SpineStenosisGraderLib.training.annotations import load_scans
from SpineStenosisGraderLib.training.evaluation import canal_hit, score_real_scan

SAMPLE = DATA / "totalsegmentator_ct" / "example_ct.nii.gz"


@pytest.fixture(scope="module")
def package():
    return load_default_package()


@pytest.fixture(scope="module")
def scans():
    return {scan.name: scan for scan in load_scans(DATA / "scans.json")}


@pytest.fixture(scope="module")
def sample_result(package, scans):
    return grade_stack(scans["totalsegmentator_ct"].stack, package)


def test_the_samples_levels_are_named_from_the_sacrum(sample_result, scans):
    scan = scans["totalsegmentator_ct"]
    result = sample_result
    assert [lv.name for lv in result.levels] == ["L5-S1", "L4-L5", "L3-L4", "L2-L3", "L1-L2", "T12-L1"]
    assert result.study.names_anchored_by == "sacrum"
    assert all(lv.name_anchored and lv.name_confidence == "high" for lv in result.levels)
    dz = scan.stack.spacing[2]
    for level in result.levels:
        # the target: each level within 9 mm of its own disc (the reference is the midpoint of
        # the vertebral centroids, itself a few mm off where a vertebra is cut by the study's end)
        assert abs(level.slice_index - scan.discs[level.name]) * dz <= 9.0, level.name


def test_the_samples_levels_sit_on_the_canal_and_none_in_the_sacrum(sample_result, scans):
    scan = scans["totalsegmentator_ct"]
    stack = scan.stack
    sacrum_top = max(scan.discs["L5-S1"] - 4.0 / stack.spacing[2], 0)
    for level in sample_result.levels:
        k, box = stack.box_to_slice(level.box)
        k = int(round(k))
        assert k >= sacrum_top, level.name
        assert canal_hit(box, scan.boxes[k], scan.canal[k] > 0, stack.spacing), level.name
    assert any("inside the sacrum" in w for w in sample_result.warnings)


def test_the_samples_region_is_read_from_its_anatomy(sample_result):
    study = sample_result.study
    assert study.region == "lumbar" and study.region_confidence == "high"
    assert any("sacral alae" in e for e in study.region_evidence)
    assert {lv.region for lv in sample_result.levels} == {"lumbar", "thoracic"}  # T12-L1 is thoracic


def test_a_cervical_scan_is_never_called_lumbar_nor_graded_as_lumbar(package, scans):
    result = grade_stack(scans["sct_cervical_t2"].stack, package)
    # the crop shows neither a landmark nor the neck's outline, but its canal holds a cervical cord
    assert result.study.region == "cervical"
    assert any("spinal cord" in e for e in result.study.region_evidence)
    assert result.levels and all(lv.name.startswith("C") and not lv.name_anchored for lv in result.levels)
    assert all(lv.grade is None for lv in result.levels)  # the package grades lumbar levels only


def test_a_lumbar_mr_crop_is_never_called_cervical(package, scans):
    result = grade_stack(scans["tptbox_mri"].stack, package)
    # nerve roots, and no cord, in the canal's CSF
    assert result.study.region == "lumbar"
    assert not any(lv.name.startswith("C") for lv in result.levels)
    assert all(not lv.name_anchored for lv in result.levels)


def test_on_t2_the_boxes_grown_over_the_csf_keep_the_whole_sac_and_cord(package, scans):
    # the lumbar sac's bright CSF ends a partial-volume pixel inside its outline: a box shrunk to the CSF
    # overlaps the labelled canal with a mean IoU of 0.54 instead of 0.76 (the package trained on this scan;
    # this guards the boxes, not the model)
    lumbar = score_real_scan(package, scans["tptbox_mri"])
    assert lumbar.mean_iou >= 0.7
    # at the top of the cervical crop the CSF lies in front of the cord only: the box keeps the cord behind it
    cervical = score_real_scan(package, scans["sct_cervical_t2"])
    assert cervical.mean_iou >= 0.8 and cervical.hits == cervical.canal_slices


def test_discs_whose_labels_only_count_them_are_scored_by_position_not_name(package, scans):
    scan = scans["tptbox_mri"]
    assert not scan.disc_names_known and scans["totalsegmentator_ct"].disc_names_known
    score = score_real_scan(package, scan)
    assert score.discs_inside == 2 and score.names_checked == 0 and score.names_right == 0
    assert all(row["true_name"] is None for row in score.rows)


def test_a_lumbar_crop_without_the_sacrum_is_lumbar_but_its_names_are_not_anchored(package, scans):
    result = grade_stack(scans["tptbox_ct"].stack, package)
    assert result.study.region == "lumbar"
    assert any("vertebral bodies" in e for e in result.study.region_evidence)
    assert result.levels and not any(lv.name_anchored for lv in result.levels)
    assert result.study.numbering.startswith("Not anchored")


def test_a_lumbar_ct_above_the_sacrum_is_named_from_its_lowest_rib(package, scans, sample_result):
    # slices 60-111 of the sample, L3 to T11: no sacrum, but the 12th ribs run up to their heads on T12's body.
    # The embedded package trained on the sample; both seeds' leave-one-out folds name this window so too
    from SpineStenosisGraderLib.training.series_variants import disc_slices_in

    scan = scans["totalsegmentator_ct"]
    result, stack = grade_image(sitk.DICOMOrient(sitk.ReadImage(str(SAMPLE)), "LPS")[:, :, 60:112], package)
    assert result.study.region == "lumbar" and result.study.names_anchored_by == "lowest rib"
    assert [lv.name for lv in result.levels] == ["L3-L4", "L2-L3", "L1-L2", "T12-L1"]
    assert all(lv.name_anchored and lv.name_confidence == "low" for lv in result.levels)
    discs = disc_slices_in(scan.stack, stack, scan.discs)
    for level in result.levels:
        assert abs(level.slice_index - discs[level.name]) * stack.spacing[2] <= 9.0, level.name
    # on the whole sample the sacrum names the levels, and the rib agrees with it: no transitional warning
    assert sample_result.study.names_anchored_by == "sacrum"
    assert not any("pair of ribs" in w or "transitional" in w for w in sample_result.warnings)


def test_the_sample_as_a_dicom_series_grades_as_the_nifti(package, sample_result, tmp_path):
    # a scanner's export: one CT file per slice, listed head first, the geometry only in each file's tags
    from SpineStenosisGraderLib.pipeline import grade_file
    from test_volume import write_dicom_series

    write_dicom_series(sitk.ReadImage(str(SAMPLE)), tmp_path / "ct", "1.2.826.0.1.3680043.2.1125.41", modality="CT",
                       reverse_names=True)
    result, _ = grade_file(tmp_path / "ct", package)
    assert result.study.modality == "CT" and result.study.region == "lumbar"
    assert [lv.name for lv in result.levels] == [lv.name for lv in sample_result.levels]
    for level, expected in zip(result.levels, sample_result.levels):
        assert np.allclose(level.box.center, expected.box.center, atol=0.5)


def test_a_short_series_still_gets_its_level(package):
    # 14 slices (42 mm) of the sample around L3-L4, whose disc lies 9 mm inside the series' lower end
    image = sitk.DICOMOrient(sitk.ReadImage(str(SAMPLE)), "LPS")[:, :, 65:79]
    result, stack = grade_image(image, package)
    assert len(result.levels) == 1
    (level,) = result.levels
    assert abs(stack.box_to_slice(level.box)[0] - (67.47 - 65)) * 3.0 <= 8.0
    assert not level.name_anchored  # no sacrum in 42 mm: the name is a count, and says so


def test_a_disc_where_the_detector_loses_the_canal_still_gets_its_level(package, scans, monkeypatch):
    # 40 mm of a lumbar MR validation scan (slices 75-114) around its L3-L4 disc (25.8 mm above the series' lower
    # end): the detector loses the canal on the three slices at the disc (26-28), where its dark band and the
    # detector's disc sign peak. No level was found until a level may lie on the tube bridged across such a gap
    from SpineStenosisGraderLib.training.series_variants import cut

    result = grade_stack(cut(scans["fastcleverseg_ivd_46"].stack, 75, 115), package, modality="MR")
    assert {d.slice_index for d in result.detections}.isdisjoint({26, 27, 28})
    assert [abs(level.slice_index - 25.8) <= 3.0 for level in result.levels] == [True]
    (level,) = result.levels
    assert any(f"(slice {level.slice_index}) lies where the detector lost the canal" in w for w in result.warnings)
    assert not level.canal_seen
    # the model's grade of a box where the canal was not seen is no finding: it is marked uncertain, however sure
    # the model is
    from SpineStenosisGraderLib.result import GradePrediction

    class SureClassifier:
        def grade_places(self, stack, places, modality):
            return [GradePrediction("central", "schizas", "A", {"A": 0.99, "D": 0.01}) for _ in places]

    monkeypatch.setattr(package, "classifier", SureClassifier)
    sure = grade_stack(cut(scans["fastcleverseg_ivd_46"].stack, 75, 115), package, modality="MR")
    assert [lv.grade.uncertain for lv in sure.levels] == [True]
    # a level on a slice where the canal was seen keeps the model's certainty
    longer = grade_stack(cut(scans["fastcleverseg_ivd_46"].stack, 90, 180), package, modality="MR")
    warned = " ".join(longer.warnings)
    seen = [lv for lv in longer.levels if f"(slice {lv.slice_index}) lies where the detector lost" not in warned]
    assert len(seen) >= 2 and not any(lv.grade.uncertain for lv in seen) and all(lv.canal_seen for lv in seen)
    # its box lies on the tube between the boxes around the gap
    boxes = {d.slice_index: d.box.center for d in result.detections}
    below, above = np.array(boxes[25]), np.array(boxes[29])
    assert np.linalg.norm(np.array(level.box.center[:2]) - (below[:2] + above[:2]) / 2) <= 3.0


def test_the_command_line_flags_a_level_where_the_canal_was_not_seen(scans, tmp_path, capsys):
    from SpineStenosisGraderLib.cli import main
    from SpineStenosisGraderLib.training.series_variants import cut

    path = tmp_path / "window.nii.gz"
    sitk.WriteImage(cut(scans["fastcleverseg_ivd_46"].stack, 75, 115).image, str(path))
    assert main(["grade", str(path), "-o", str(tmp_path / "out")]) == 0
    (line,) = [line for line in capsys.readouterr().out.splitlines() if " slice " in line]
    assert line.endswith("[canal not seen]")


def test_the_sacral_end_of_a_lumbar_mr_is_never_cervical(package, scans):
    # the lowest 40 mm of a lumbar MR validation scan (L5-S1 and the sacrum): its CSF is faint, so the canal
    # is read at the fast spin-echo contrast, where the sacral canal looked like a "cord" 16 mm across on 8
    # of 14 slices and was called cervical until that reading was kept from saying cervical
    from SpineStenosisGraderLib.training.series_variants import cut

    scan = scans["fastcleverseg_ivd_42"]
    result = grade_stack(cut(scan.stack, 6, 46), package, modality="MR")
    assert result.study.region != "cervical"
    assert not any(level.name.startswith("C") for level in result.levels)


def test_a_short_lumbar_mr_series_keeps_no_level_in_a_body_near_its_end(package, scans):
    # 60 mm of a lumbar MR validation scan (slices 30-89): its L4-L5 disc lies 29.4 mm from the series' lower end,
    # the next discs 9.5 mm below it and 10.2 mm above it. The detector's disc sign peaked again 8 mm inside the
    # upper end, in L4's body, 18.6 mm from L3-L4: a second level, until a lumbar MR level that near an end
    # needed a dark band in the column in front of the canal. Since the deeper of two bands in one vertebra is
    # the disc's (``levels.BAND_DEPTH_MARGIN``), L4-L5 is read on its upper endplate's band (slice 35, 0.58
    # against 0.45 on its lower one at 26), and the level in L4's body, 16 mm above it and without a band, falls
    # to the one level per vertebra before the end rule is reached
    from SpineStenosisGraderLib.training.series_variants import cut

    result = grade_stack(cut(scans["fastcleverseg_ivd_20"].stack, 30, 90), package, modality="MR")
    assert result.study.region == "lumbar"
    assert [abs(level.slice_index - 29.4) <= 8.0 for level in result.levels] == [True]


def test_a_short_neck_series_whose_cord_touches_the_canals_sides_is_cervical(package, scans):
    # 40 mm of a validation neck around C5-C6: its CSF is thin, and CSF encloses the cord on only 3 of its 40
    # slices; on most others the cord touches the canal's side or back. With only the enclosed cord read, the
    # region was unknown. The thoracolumbar end of a lumbar validation scan (its 40 highest slices), where
    # clumped roots and the conus read as dark blobs in the CSF's hull, stays no neck
    from SpineStenosisGraderLib.training.series_variants import cut

    neck = grade_stack(cut(scans["sct_errsm_11_t2"].stack, 105, 145), package, modality="MR")
    assert neck.study.region == "cervical"
    assert any("touching the canal's side in its thin CSF" in e for e in neck.study.region_evidence)
    lumbar = grade_stack(cut(scans["fastcleverseg_ivd_11"].stack, 170, 210), package, modality="MR")
    assert lumbar.study.region != "cervical"


def test_a_neck_in_4_mm_slices_whose_top_slice_lies_half_in_the_cistern_is_named_from_its_foramen_magnum(package,
                                                                                                       scans):
    # a validation neck averaged into 4 mm slices: its top tracked slice lies half in the cisterna magna and reads
    # 20.3 mm deep against the canal's 15.9, under the 1.35 times that says skull base in any study, so the
    # levels at C1 and the dens stayed and shifted every name. Its cord says neck, and in a neck 1.25 times is
    # enough. A lumbar window whose top reaches it too (22 mm against 17) stays lumbar, not named from a skull base
    from SpineStenosisGraderLib.training.evaluation import names_by_count
    from SpineStenosisGraderLib.training.series_variants import cut, disc_slices_in, thicken

    scan = scans["sct_errsm_11_t2"]
    stack = thicken(scan.stack, 4.0)
    neck = grade_stack(stack, package, modality="MR")
    landmarks = disc_slices_in(scan.stack, stack, scan.landmarks)
    assert neck.study.region == "cervical" and neck.study.names_anchored_by == "foramen magnum"
    assert all(level.slice_index < landmarks["C2"] for level in neck.levels)
    expected = names_by_count([float(level.slice_index) for level in neck.levels], landmarks)
    assert len(expected) == 6 and all(neck.levels[a].name == name for a, name in expected.items())
    lumbar = grade_stack(cut(scans["fastcleverseg_ivd_46"].stack, 45, 135), package, modality="MR")
    assert lumbar.study.region == "lumbar" and lumbar.study.names_anchored_by != "foramen magnum"


def test_the_evaluation_scores_the_sample_as_measured(package, scans):
    score = score_real_scan(package, scans["totalsegmentator_ct"])
    assert score.trained_on  # the default package learned from the sample: a fit, not a test
    assert score.names_right == score.names_checked == 6
    assert score.levels_on_canal == score.levels == 6
    assert score.false_levels == 0 and score.region_found == "lumbar"
    assert score.hits == score.canal_slices
    assert np.median(score.disc_errors_mm) < 3.0


def test_whole_necks_never_trained_on_are_cervical_with_the_canal_found_on_most_slices(package, scans):
    # five sagittal T2 scans from the brainstem into the upper thoracic spine, graded as their axial reformats;
    # the default package never saw them. Their reference is the cord alone, and their only level landmark
    # C2's body. Their lower slices are a sixth as bright as the neck (the coil's fall-off): without the
    # slice gain the canal is lost there, and one neck falls to 67%. In the chest the cord lies at the front
    # of the canal: without the box grown over the CSF, the box sits on the CSF behind the cord and cuts it
    # in half (80% pooled, 41 of 54 level boxes on the canal).
    necks = [scans[f"sct_errsm_{n}_t2"] for n in (11, 18, 21, 23, 24)]
    scores = [score_real_scan(package, scan) for scan in necks]
    assert not any(s.trained_on for s in scores)
    assert [s.region_found for s in scores] == ["cervical"] * 5  # never lumbar, never unknown
    # 1050/1093. 1043 where a faint slice's CSF was read from half its brightness, as on any slice (fat brighter
    # than that joined it: ``csf_outline.CSF_FRACTION``); 1031 where the root sleeves leaving a sac round a cord
    # widened the box (``csf_outline``); 1027 where a T2's faint slices were read as any slice
    # (``csf_outline.study_csf_contrast``); 1009 where the box stayed as the detector drew it when the CSF joined
    # what lies beside the canal at the low signal of the lower slices (``csf_outline``: now read in the strip
    # under the box); fewer still without the faint boxes on the tube (``tracking._fill_faint_slices``)
    assert sum(s.hits for s in scores) >= 0.945 * sum(s.canal_slices for s in scores)
    assert all(s.hit_fraction >= 0.85 for s in scores)
    assert sum(s.levels_on_canal for s in scores) >= 0.9 * sum(s.levels_checked for s in scores)
    # all 58: a level's box is the median of the canal boxes over the slices its ROI spans; the box of the
    # level's slice alone put errsm_24's T6-T7 into a foramen (56). errsm_18's T3-T4 box started 2 mm behind the
    # cord (57) where its CSF, 2.9 times as bright as around it, was not read: a T2's faint slices now are
    assert sum(s.levels_on_canal for s in scores) == sum(s.levels_checked for s in scores) == 58
    # between the points at C2 and T2 lie 7 discs. The detector's disc evidence is weak on these 1 mm
    # reformats; with the dark bands of the vertebral column (MR), each marking the slices within a quarter of
    # a disc's height of it, every neck gets exactly 7 levels there. Bands of one slice each gave 4 necks 7
    # levels and one 8; no bands, 30 levels, and one neck had no level between C2 and C6
    assert all(s.landmark_span == ("C2", "T2") and s.discs_between_landmarks == 7 for s in scores)
    assert all(s.levels_between_landmarks == 7 for s in scores)
    # above C2 the dens and C1 show dark bands too; the levels in the cisterna magna, far deeper than the canal,
    # are dropped (7 false levels above C2 without). Three necks reach the foramen magnum: the bands less than
    # 25 mm below it are dropped (4 false levels without), and the highest disc is named C2-C3 from it. The
    # point at C2 lies in C2's body, so C2-C3 is the highest level below it, within a cervical vertebra. The
    # neck that does not reach the cisterna (errsm_23) kept a level in C2 with one-slice bands
    assert sum(s.false_levels for s in scores) == 0
    from_foramen = [s for s in scores if s.names_anchored_by == "foramen magnum"]
    assert len(from_foramen) >= 3
    for score, scan in ((s, scans[s.scan]) for s in from_foramen):
        highest = max(score.rows, key=lambda row: row["slice"])
        assert highest["name"] == "C2-C3" and not highest["above_c2"]
        assert (scan.landmarks["C2"] - highest["slice"]) * scan.stack.spacing[2] <= 16.0
        assert score.names_right == score.names_checked == 7  # by their count below C2's body
    # named by their count from C2's body: all 35 (28 of 36 with one-slice bands; 7 of 36 counted from the
    # top, before the foramen magnum)
    assert sum(s.names_right for s in scores) == 35
    assert all(not s.disc_reference and s.c2_reference and s.discs_inside == 0 for s in scores)


def test_lumbar_mrs_never_trained_on_are_lumbar_with_their_discs_found(package, scans):
    # five sagittal T2 scans of healthy lumbar spines (4.4 mm slices, 67 mm left to right), graded as their
    # axial reformats; the labels mark L1-L2 to L5-S1 and no canal. The detector is unsure of the canal right
    # at the discs here (boxes scoring under 0.3, let in by the tube), and their one-slice dark bands vanish in
    # the smoothing: counting the bands on those faint slices and marking the slices within a quarter of a
    # disc's height of each finds 23 of the 25 discs (18 before, 16 and 21 with one of the two alone)
    lumbar = [scans[f"fastcleverseg_ivd_{n}"] for n in (11, 20, 25, 42, 46)]
    scores = [score_real_scan(package, scan) for scan in lumbar]
    assert not any(s.trained_on for s in scores)
    # a lumbar study is never called cervical; one of them showed a clear sac of roots on only 60-70% of its
    # slices and was "unknown" before
    assert [s.region_found for s in scores] == ["lumbar"] * 5
    assert sum(s.discs_inside for s in scores) == 25
    assert sum(s.discs_found for s in scores) >= 23
    assert max(e for s in scores for e in s.disc_errors_mm) <= 8.0
    # no level in the sacrum: fastcleverseg_ivd_20's S1-S2 remnant, 21 mm below its L5-S1 where its lumbar
    # levels lie 38 mm apart, is dropped (`levels.drop_sacral_level`)
    assert sum(s.false_levels for s in scores) == 0
    # the names are counted from the lowest level, not anchored: right on every scan where L5-S1 is found
    # (all but fastcleverseg_ivd_46, whose lowest 45 slices show no canal)
    assert all(not s.names_anchored_by for s in scores)
    assert sum(s.names_right for s in scores) >= 19



def test_an_osteoporotic_ct_never_trained_on_has_its_discs_found_where_its_bone_shows_them(package, scans):
    # VerSe 012: an old patient's CT, T9-L4, acquired sagittally (3 mm slices from side to side), with an L1
    # compression fracture. Its bodies read 100-250 HU, so their soft middles pass the gap test between the
    # cancellous bone above and below them, with less than half a disc's contrast. Gaps counted alike (1 per
    # slice) put three levels in the bodies, where the detector was surer than at the disc next to them: 2 of
    # the 5 labelled discs found. Graded by their contrast against the study's, the discs outrank them: 4 of 5
    score = score_real_scan(package, scans["verse012_ct"])
    assert not score.trained_on
    assert score.region_found == "lumbar"
    assert score.discs_inside == 5
    assert score.discs_found >= 4
    assert max(score.disc_errors_mm) <= 2.0

@pytest.mark.parametrize("name", ["sct_errsm_11_t2", "totalseg_s0002_ct"])
@pytest.mark.parametrize("order, flips", [((0, 1, 2), (False, False, True)), ((2, 0, 1), (True, False, True))])
def test_a_neck_stored_head_first_or_sideways_is_named_from_its_foramen_magnum_the_same(package, scans, order,
                                                                                          flips, name):
    # the foramen magnum is read at the superior end of the canal whatever the file's slice order and axes: on MR
    # where the canal opens into the cisterna magna, on CT where the occipital bone begins behind it
    from test_volume import reindex

    image = scans[name].stack.image
    reference = grade_image(image, package)[0]
    moved = grade_image(reindex(image, order, flips), package)[0]
    assert reference.study.names_anchored_by == moved.study.names_anchored_by == "foramen magnum"
    assert [lv.name for lv in moved.levels] == [lv.name for lv in reference.levels]
    assert np.allclose([lv.box.center for lv in moved.levels], [lv.box.center for lv in reference.levels],
                       atol=1e-3)


def test_a_healthy_lumbar_t2_with_shallow_disc_bands_gets_its_discs_and_no_level_in_a_body(package):
    # VB2 scan 14 (fastcleverseg, never trained on): a sagittal fast spin-echo T2 of a healthy lumbar spine,
    # T11 to the sacrum, graded as its axial reformat. Its discs darken the column in front of the canal by only
    # 4-29% (a bright nucleus), where the neck's bands need 35%: with that depth it got 3 of its 6 labelled
    # discs, and two levels in the middle of L2's and L3's bodies (the detector's disc sign peaks there)
    score_vb2 = load_script(DATA / "score_fastcleverseg_vb2.py", "score_vb2")
    stack, bodies = score_vb2.read_scan(DATA / "fastcleverseg_vb2" / "14.mat")
    assert len(bodies) == 7  # T11 to L5, the lowest first
    discs = score_vb2.gap_middles(bodies)  # L4-L5 up to T11-T12
    result = grade_stack(stack, package)
    assert result.study.region == "lumbar"
    levels = [level.slice_index for level in result.levels]
    errors = [min(abs(k - d) for k in levels) for d in discs]  # 1 mm slices
    # L4-L5 is found 9 mm above the gap's middle, at the back of this steep disc, 1 mm past the 8 that count
    assert sum(e <= 8.0 for e in errors) >= 5
    between = [k for k in levels if min(discs) - 8.0 <= k <= max(discs) + 8.0]
    assert all(min(abs(k - d) for d in discs) <= 10.0 for k in between)


def test_a_steep_lordosis_whose_sac_the_detector_loses_above_the_sacrum_still_gets_l5_s1_and_its_names(package):
    # VB2 scan 07 (fastcleverseg, never trained on): a sagittal fast spin-echo T2, T10 to the sacrum, in a steep
    # lordosis. The detector loses the sac where it turns back into the sacrum, 20 mm above the middle of L5-S1,
    # so L5-S1 was missed and L4-L5 up to T11-T12 were each named a level too low. The sac is followed over its
    # bright CSF, and L5-S1 is found there: at the back of its wedge-shaped L5, only 24 mm below L4-L5
    score_vb2 = load_script(DATA / "score_fastcleverseg_vb2.py", "score_vb2")
    stack, bodies = score_vb2.read_scan(DATA / "fastcleverseg_vb2" / "07.mat")
    assert len(bodies) == 7  # T11 to L5, the lowest first
    discs = dict(zip(["L4-L5", "L3-L4", "L2-L3", "L1-L2", "T12-L1", "T11-T12"], score_vb2.gap_middles(bodies)))
    result = grade_stack(stack, package, modality="MR")
    assert result.study.region == "lumbar"
    levels = {level.name: level.slice_index for level in result.levels}
    # 1 mm slices; this disc slopes down to the front, where L5's body reaches down to its lowest slice (95)
    assert bodies[0][1] <= levels["L5-S1"] <= discs["L4-L5"] - 15.0
    assert all(abs(levels[name] - k) <= 8.0 for name, k in discs.items())
    assert any("followed over its bright CSF" in w for w in result.warnings)
    assert not any("remnant of a disc inside the sacrum" in w for w in result.warnings)


def test_a_patients_lumbar_t2_keeps_no_level_in_the_sacrum_below_where_the_canal_turns_back(package):
    # VB1 scan 07 (fastcleverseg, never trained on): a sagittal T2 of a patient's lumbar spine, T10 to the lower
    # sacrum, graded as its axial reformat. The disc remnants in its sacrum look like discs to the detector, 32
    # and 69 mm below L5-S1; counted from the lowest, every name was two levels off. The canal turns back into
    # the sacrum at L5-S1, and the levels more than 25 mm below that are dropped, with a warning
    from SpineStenosisGraderLib.inference.landmarks import find_lumbosacral_bend

    score_vb2 = load_script(DATA / "score_fastcleverseg_vb2.py", "score_vb2")
    stack, bodies = score_vb2.read_scan(DATA / "fastcleverseg_vb1" / "07.mat")
    assert len(bodies) == 9  # S1 to T10, the lowest first
    discs = dict(zip(["L5-S1", "L4-L5", "L3-L4", "L2-L3", "L1-L2", "T12-L1", "T11-T12", "T10-T11"],
                     score_vb2.gap_middles(bodies)))
    result = grade_stack(stack, package, modality="MR")
    assert result.study.region == "lumbar"
    levels = {level.name: level.slice_index for level in result.levels}
    # 1 mm slices: nothing in the sacrum, and L5-S1 to T11-T12 on their discs, named right though not anchored
    assert min(levels.values()) >= discs["L5-S1"] - 8.0
    assert all(abs(levels[name] - discs[name]) <= 8.0 for name in list(discs)[:7])
    assert any("turns back into the sacrum" in w for w in result.warnings)
    bend = find_lumbosacral_bend(stack, _canals_of(result, stack))
    assert bend is not None and abs(bend.top_slice - discs["L5-S1"]) <= 6.0


def test_a_patients_lumbar_t2_puts_l4_l5_on_its_disc_not_on_the_vein_in_the_middle_of_l4(package):
    # VB1 scan 03 (fastcleverseg, never trained on): a sagittal T2 of a patient's lumbar spine, T9 to S1, graded
    # as its axial reformat. The vein entering the middle of L4's body darkens the column in front of the canal
    # enough to pass for a band, 18 mm above L4-L5, and the detector leaned to it: L4-L5 lay in L4's body, 18 mm
    # off, and L3-L4 on its upper endplate. The disc's band is the deeper one (``levels.BAND_DEPTH_MARGIN``)
    score_vb2 = load_script(DATA / "score_fastcleverseg_vb2.py", "score_vb2")
    stack, bodies = score_vb2.read_scan(DATA / "fastcleverseg_vb1" / "03.mat")
    assert len(bodies) == 9  # S1 to T9, the lowest first
    names = ["L5-S1", "L4-L5", "L3-L4", "L2-L3", "L1-L2", "T12-L1", "T11-T12", "T10-T11"]
    discs = dict(zip(names, score_vb2.gap_middles(bodies)))
    result = grade_stack(stack, package, modality="MR")
    assert result.study.region == "lumbar"
    levels = {level.name: level.slice_index for level in result.levels}
    # 1 mm slices: every disc from L5-S1 to T10-T11 found within 8 mm and named right, though not anchored
    assert all(abs(levels[name] - k) <= 8.0 for name, k in discs.items())
    assert abs(levels["L4-L5"] - discs["L4-L5"]) <= 4.0 and abs(levels["L3-L4"] - discs["L3-L4"]) <= 2.0


def _canals_of(result, stack):
    from SpineStenosisGraderLib.inference.levels import SliceCanal

    return [SliceCanal(*stack.box_to_slice(d.box), d.score, d.disc_probability) for d in result.detections]


def test_a_neck_t2_star_has_its_levels_on_its_bright_discs_and_its_names_whole_or_cropped(package, scans):
    # the true-axial T2* gradient echo of the neck (15 slices of 7.5 mm), never trained on. Its marrow is darker
    # than the neck's muscle, so its discs are bright bands in the vertebral column: read as a spin echo's dark
    # bands, its four levels lay on the slices between the discs (1, 4, 6 and 9), in vertebral bodies. The
    # discs were read by eye (scans.json): slices 3, 5, 7, 10 and 12 (0 is the study's edge)
    from SpineStenosisGraderLib.training.series_variants import crop_to_canal

    scan = scans["sct_errsm_18_gre"]
    discs = sorted(scan.discs.values())
    whole = grade_stack(scan.stack, package)
    assert whole.study.region == "cervical"
    on_discs = [lv.slice_index for lv in whole.levels]
    assert all(min(abs(k - d) for d in discs) < 0.5 for k in on_discs)
    # every disc inside the study has its level: C6-C7 (slice 3), too faint for a peak of its own, was missed until
    # C7-T1, on the study's lowest slice, spaced the discs as a level does (with it, C2-C3's box, 1.36 times the
    # median depth, was dropped as a cistern until that median was read at the levels the evidence found). C7-T1
    # itself, whose evidence is highest on that end slice and as strong as the others', is a level there too
    assert on_discs == [0, 3, 5, 7, 10, 12]
    assert any(w.startswith("C7-T1 (slice 0) is placed on the study's end slice") for w in whole.warnings)
    # its top slice lies in C2 (by the same subject's sagittal T2) and reads as deep as the cisterna magna, but
    # one 7.5 mm slice is no opening: C2-C3, 15 mm below it, is kept, and the levels are counted from it, right
    # though not anchored (they were named from that "foramen magnum", each one vertebra too high)
    assert whole.study.names_anchored_by == ""
    assert {lv.name: lv.slice_index for lv in whole.levels} == {
        name: round(k) for name, k in scan.discs.items() if round(k) in on_discs}
    assert whole.levels[-1].name == "C2-C3"
    # cropped to 20 mm around its canal as a cord-centred protocol would acquire it: the crop cuts the neck's
    # outline, and keeps enough of the muscle behind the canal to read the marrow as dark: the levels lie on the
    # same discs. In the crop two top slices (C2) read deeper than the cistern's ratio of its shallower median:
    # it is cervical, but named from that false opening (README: check C2-C3 and re-anchor)
    cropped = crop_to_canal(scan.stack, scan.boxes, margin_mm=20.0).image
    assert cropped.GetSize()[0] * scan.stack.spacing[0] < 60.0  # no neck outline fits
    result = grade_image(cropped, package)[0]
    assert result.study.region == "cervical"
    placed = {lv.slice_index for lv in result.levels
              if any(f"(slice {lv.slice_index}) is placed where the spacing" in w for w in result.warnings)}
    assert len(result.levels) >= 2 and {lv.slice_index for lv in result.levels} - placed <= set(on_discs)
    # there C6-C7, placed from the spacing below C5-C6, lies a slice low: 7.5 mm from its disc, and said so
    assert all(min(abs(k - d) for d in discs) <= 1.0 for k in placed)
    # the crop keeps the patient coordinates: boxes within a few millimetres of the whole scan's (the detector
    # sees less around the canal), where a box off the canal would lie 10 mm or more away
    by_slice = {lv.slice_index: lv.box.center for lv in whole.levels}
    offsets = np.array([np.subtract(lv.box.center, by_slice[lv.slice_index]) for lv in result.levels
                        if lv.slice_index in by_slice])
    assert np.linalg.norm(offsets[:, :2], axis=1).max() <= 3.0


def test_a_3_mm_sagittal_ct_is_read_as_axial_slices_and_its_canal_found(package, scans):
    # VerSe sub-verse012 (never trained on): a sagittal CT with 3 mm slices left to right, read as axial slices
    # of 3 x 1 mm pixels. It was refused as "a thick sagittal series" before; its canal is found on 52 of 54
    # labelled slices (the hole the vertebra masks enclose), no level box is off the canal, the region is
    # lumbar, and the grade is left to the clinician (3 mm pixels, and a CT)
    scan = scans["verse012_ct"]
    assert scan.stack.spacing[:2] == pytest.approx((3.0, 1.0), abs=1e-3)
    score = score_real_scan(package, scan)
    assert not score.trained_on and score.region_found == "lumbar"
    assert score.hits >= 0.9 * score.canal_slices and score.canal_slices >= 50
    assert score.levels_on_canal == score.levels_checked >= 3
    assert all(row["grade"] is None for row in score.rows)


def test_a_thoracolumbar_ct_in_5_mm_slices_has_no_level_in_a_vertebral_body(package, scans):
    # VerSe sub-verse012 (never trained on, T9-L4, an old spine with soft bodies) averaged into 5 mm slices: a peak
    # in T12's body, 18 mm above T12-L1 and 20 mm below the peak at T11-T12, took a level more than 10 mm from every
    # disc. On lumbar slices 4 mm or thicker two peaks that close are one disc
    # (scored as `Testing/Data/score_thick_ct.py` scores it)
    from SpineStenosisGraderLib.training.series_variants import disc_slices_in, thicken

    score_thick = load_script(DATA / "score_thick_ct.py", "score_thick")
    scan = scans["verse012_ct"]
    stack = thicken(scan.stack, 5.0, 0)
    row = score_thick.score_stack("verse012_ct, 5 mm", stack, disc_slices_in(scan.stack, stack, scan.discs), package,
                                  scan.more_discs_above, scan.more_discs_below)
    assert row["region"] == "lumbar"
    assert (row["found"], row["discs_inside"], row["false"]) == (5, 5, 0)


def test_neck_cts_never_trained_on_are_cervical_with_no_level_on_c1_and_names_from_the_skull_base(package, scans):
    # two TotalSegmentator neck CTs, skull base to T2-T4. Their vertebrae read 31-35 mm across at the median (the
    # transverse processes and the first ribs join the bodies), a chest's width: s0002 was "unknown", its neck
    # outline against its vertebrae, and s0003, whose field of view cuts the shoulders, "thoracic". The dens and
    # C1's ring gave 3 levels above C2-C3; the occipital bone behind the canal, from the foramen magnum's back rim
    # up, drops them and names C2-C3 (a disc placed from the spacing between C2-C3 and a peak on C1 lay in C2).
    # s0003's C3-C4 lies where the detector lost the canal for four slices: its level on the slice seen next to
    # them lay within a vertebra of C2-C3 and was dropped, and every name below was one off (1/7), until a peak
    # there was placed in the middle of the lost run. At the discs and on the dens the detector boxed the bone in
    # front of the canal: 62/76 and 78/103 slices on the canal, until such a box was moved behind that bone
    # (``off_bone``); then a level in C2's body, 32 mm below the skull base's back rim, took C2-C3's name until no
    # disc was read within 34 mm of the rim on CT
    scores = {name: score_real_scan(package, scans[name]) for name in ("totalseg_s0002_ct", "totalseg_s0003_ct")}
    assert all(s.hits >= 0.85 * s.canal_slices for s in scores.values())
    assert not any(s.trained_on for s in scores.values())
    assert [s.region_found for s in scores.values()] == ["cervical", "cervical"]
    assert [s.false_levels for s in scores.values()] == [0, 0]
    # s0003 shows its first ribs below the neck too (``test_a_neck_ct_series_with_its_first_ribs_is_named_from_them``),
    # which name its levels as the skull base does
    assert [s.names_anchored_by for s in scores.values()] == ["foramen magnum", "first rib"]
    assert [(s.names_right, s.names_checked) for s in scores.values()] == [(5, 5), (8, 8)]
    for score in scores.values():
        highest = max(score.rows, key=lambda row: row["slice"])
        assert highest["name"] == highest["true_name"] == "C2-C3"


def test_a_neck_ct_series_with_its_first_ribs_is_named_from_them(package, scans):
    # TotalSegmentator s0003 (never trained on) shows its first ribs, running in to their heads on T1, 13 mm below
    # C7-T1, with none on the neck above. Its first 60 mm (T3 to C6, 1.5 mm slices), with no skull base and read
    # "thoracic" (the shoulders), were counted up from T12-L1; its 4.5 mm version, whose C3-C4 was missed, was counted
    # from the foramen magnum down, each name below C2-C3 one vertebra too high
    from SpineStenosisGraderLib.training.evaluation import score_series_names
    from SpineStenosisGraderLib.training.series_variants import cut, disc_slices_in, thicken

    scan = scans["totalseg_s0003_ct"]
    for stack, right in ((cut(scan.stack, 0, 40), 3), (thicken(scan.stack, 4.5, 0), 7)):
        result = grade_stack(stack, package, modality="CT")
        assert result.study.names_anchored_by == "first rib"
        assert all(lv.name_anchored and lv.name_confidence == "low" for lv in result.levels)
        levels = [float(lv.slice_index) for lv in result.levels]
        checked, names_right = score_series_names([lv.name for lv in result.levels], levels,
                                                  disc_slices_in(scan.stack, stack, scan.discs), stack.n_slices,
                                                  stack.spacing[2], scan.disc_names_known, {})
        assert (names_right, checked) == (right, right)
    # the 4.5 mm version's foramen magnum counts one disc fewer: the warning says so
    assert any("The foramen magnum" in w and "where the first ribs make it C3-C4" in w for w in result.warnings)


@pytest.mark.parametrize("name, region", [("sct_errsm_11_t2", "cervical"), ("sct_errsm_24_t2", "cervical"),
                                          ("fastcleverseg_ivd_20", "lumbar")])
def test_a_sagittal_series_of_3_mm_slices_reads_its_region_from_the_canal(package, scans, name, region):
    # a whole neck T2 and a lumbar T2 (never trained on) as a sagittal acquisition of 3 mm slices would show them,
    # read as axial slices whose columns are 3 mm wide. The neck's top slices, in the cistern, are not tracked, so
    # no foramen magnum is read, and on those columns the cord's edges take in the CSF beside it: the CSF's blob
    # filled its box as a sac of roots does on a third of the neck's slices (18 of 213 on its 1 mm pixels), which vetoed
    # its cord ("unknown"). On pixels that coarse half the slices may look so; the lumbar sac does on 71-94%
    from SpineStenosisGraderLib.training.series_variants import as_sagittal_slices

    stack = as_sagittal_slices(scans[name].stack, 3.0)
    assert stack.spacing[0] == pytest.approx(3.0)
    assert grade_stack(stack, package, modality="MR").study.region == region


def test_a_lower_neck_ct_series_through_the_shoulders_is_cervical_and_a_lumbar_one_with_soft_bodies_never(package,
                                                                                                         scans):
    # a 40 mm series of 4.5 mm slices from C7-T1 to C4 of TotalSegmentator s0002 (never trained on): the shoulders
    # made its outline a trunk's and the transverse processes its vertebrae 39 mm across, so it was called lumbar and
    # its level L5-S1. Its bodies are at most 20 mm deep, with the airway before them. The sample's L1-L2 series of
    # 3 mm pixels has bodies as shallow to the bone threshold (their soft middles and thin cortex), but no airway
    from SpineStenosisGraderLib.training.series_variants import cut, thicken

    neck = grade_stack(thicken(cut(scans["totalseg_s0002_ct"].stack, 20, 47), 5.0), package, modality="CT")
    assert neck.study.region == "cervical"
    assert any("the shoulders beside the lower neck" in e for e in neck.study.region_evidence)
    assert neck.levels and all(lv.name.startswith("C") and not lv.name_anchored for lv in neck.levels)
    lumbar = grade_stack(cut(scans["totalsegmentator_ct"].stack, 85, 98), package, modality="CT")
    assert lumbar.study.region == "lumbar"
