"""Reviewing a run on real MRML (slicer-core): corrections, re-anchoring, re-grading, re-runs, saving, exports.

Every step of the review workflow of the Slicer module except its Qt widgets: the
module's Widget and Logic only call ``SpineStenosisGraderLib.review.review.StudyReview``.
"""

from __future__ import annotations

import csv
import json
import math
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

slicer = pytest.importorskip("slicer")
vtk = pytest.importorskip("vtk")

from SpineStenosisGraderLib.review import mrml
from SpineStenosisGraderLib.training import phantom
from SpineStenosisGraderLib.errors import InputError, ModelPackageError
from SpineStenosisGraderLib.packages.package import (
    DEFAULT_PACKAGE_DIR,
    import_package,
    load_default_package,
    load_package,
)
from SpineStenosisGraderLib.result import (
    CanalDetection,
    ClinicianCorrection,
    DiscLevel,
    GradePrediction,
    ModelInfo,
    OrientedBox,
    StudyInfo,
    StudyResult,
)
from SpineStenosisGraderLib.outputs.report import name_status
from SpineStenosisGraderLib.review.review import StudyReview, match_by_position
from SpineStenosisGraderLib.scales import SCHIZAS
from SpineStenosisGraderLib.study.volume import to_axial_stack
from test_mrml import _new_scene
from test_package import make_package
from test_writers import _read_with_slicer

MODEL = ModelInfo(name="ssg-test", version="0.2.0", task="central_canal", trained_on="phantoms")
ORIGIN = (-40.0, -20.0, -160.0)
SPACING = (0.7, 0.7, 4.0)
SIZE = (112, 112, 60)


def _rotation(axis, degrees: float) -> np.ndarray:
    axis = np.asarray(axis, dtype=float) / np.linalg.norm(axis)
    a = math.radians(degrees)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + math.sin(a) * k + (1 - math.cos(a)) * k @ k


def _grade(grade: str) -> GradePrediction:
    probabilities = {name: 0.05 for name in SCHIZAS.names}
    probabilities[grade] = 0.85
    return GradePrediction(task="central_canal", scale="schizas", grade=grade, probabilities=probabilities,
                           uncertain=grade == "C")


def _z(k: int) -> float:
    return ORIGIN[2] + SPACING[2] * k


def _level(name: str, k: int, grade, x: float = 0.0) -> DiscLevel:
    return DiscLevel(name=name, slice_index=k, box=OrientedBox(center=(x, 30.0, _z(k)), size=(18.0, 14.0, 10.0)),
                     detection_score=0.9, grade=_grade(grade) if grade else None,
                     measurements={"canal_box_width_mm": 18.0})


def _study(region: str = "lumbar") -> StudyInfo:
    return StudyInfo(source="/data/Doe_Jane/t2_axial.nii.gz", modality="MR", region=region, n_slices=SIZE[2],
                     slice_spacing_mm=SPACING[2], pixel_spacing_mm=SPACING[:2], stack_origin_lps=ORIGIN,
                     stack_spacing_mm=SPACING, stack_size=SIZE)


def lumbar_result(model: ModelInfo = MODEL) -> StudyResult:
    """Four lumbar discs 36 mm apart, as the pipeline lists them: inferior first."""
    levels = [_level("L5-S1", 8, "B"), _level("L4-L5", 17, "C"), _level("L3-L4", 26, "A"), _level("L2-L3", 35, "A")]
    detections = [CanalDetection(lv.slice_index, lv.box, 0.9, 0.8) for lv in levels]
    return StudyResult(study=_study(), model=model, levels=levels, detections=detections,
                       warnings=["a warning"], timings_s={"detect": 1.0})


def cervical_result() -> StudyResult:
    """Four cervical discs 16 mm apart, named from C2-C3 at the top, not graded."""
    levels = [_level(name, k, None) for name, k in (("C6-C7", 10), ("C5-C6", 14), ("C4-C5", 18), ("C3-C4", 22))]
    return StudyResult(study=_study("cervical"), model=MODEL, levels=levels, detections=[])


def _rounded(value):
    """A result dict with floats rounded (an ROI re-derives an oblique box's numbers to ~1e-12)."""
    if isinstance(value, float):
        return round(value, 6) + 0.0
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_rounded(v) for v in value]
    return value


def _rows(review: StudyReview) -> list[dict[str, str]]:
    table = review.table_node
    columns = [table.GetColumnName(c) for c in range(table.GetNumberOfColumns())]
    return [dict(zip(columns, (table.GetCellText(r, c) for c in range(len(columns)))))
            for r in range(table.GetNumberOfRows())]


def _by_name(review: StudyReview, name: str):
    return next(roi for roi in review.level_rois() if roi.GetName() == name)


def _level_of(review: StudyReview, name: str) -> DiscLevel:
    from SpineStenosisGraderLib.outputs.report import effective_name

    return next(level for level in review.result().levels if effective_name(level) == name)


@pytest.fixture
def scene():
    return _new_scene()


@pytest.fixture
def volume(scene):
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "T2 axial")
    shnode = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    study = shnode.CreateStudyItem(shnode.CreateSubjectItem(shnode.GetSceneItemID(), "Patient"), "MR spine")
    shnode.CreateItem(study, node)
    return node


@pytest.fixture
def review(scene, volume) -> StudyReview:
    return StudyReview.create(scene, lumbar_result(), volume)


# --- results to nodes and back ------------------------------------------------------------------


def test_a_run_shows_the_model_values_and_reads_them_back(scene, volume, review):
    assert [roi.GetName() for roi in review.level_rois()] == ["L5-S1", "L4-L5", "L3-L4", "L2-L3"]
    assert _rounded(review.result().to_dict()) == _rounded(lumbar_result().to_dict())
    assert review.volume_node.GetID() == volume.GetID()
    assert review.scale() is SCHIZAS
    rows = _rows(review)
    assert [row["level"] for row in rows] == ["L5-S1", "L4-L5", "L3-L4", "L2-L3"]
    assert [row["ai_grade"] for row in rows] == ["B", "C", "A", "A"]
    assert [row["uncertain"] for row in rows] == ["0", "1", "0", "0"]
    assert {row["edited"] for row in rows} == {"0"} and {row["clinician_grade"] for row in rows} == {""}
    assert {row["model"] for row in rows} == {"ssg-test 0.2.0"}
    for node in (review.table_node, review.level_rois()[2]):
        assert StudyReview.from_node(node).table_node.GetID() == review.table_node.GetID()


def test_runs_are_found_per_volume_oldest_first(scene, volume, review):
    other_volume = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "CT")
    second = StudyReview.create(scene, lumbar_result(), volume)
    third = StudyReview.create(scene, cervical_result(), other_volume)
    ids = lambda runs: [run.table_node.GetID() for run in runs]
    assert ids(StudyReview.in_scene(scene, volume)) == ids([review, second])
    assert ids(StudyReview.in_scene(scene)) == ids([review, second, third])
    stranger = scene.AddNewNodeByClass("vtkMRMLMarkupsROINode", "my ROI")
    for node in (stranger, volume, None):
        with pytest.raises(InputError):
            StudyReview.from_node(node)
    with pytest.raises(InputError, match="another grading run"):
        review.set_clinician_grade(second.level_rois()[0], "A")


def test_a_result_with_corrections_comes_back_as_it_was(scene):
    result = lumbar_result()
    oblique = OrientedBox(center=(2.0, 31.0, _z(17) + 1.0), size=(20.0, 15.0, 8.0),
                          orientation=tuple(_rotation([1, 0.2, 0], 14.0).reshape(-1)))
    result.levels[1].correction = ClinicianCorrection(grade="D", name="L3-L4", box=oblique, author="Dr A",
                                                      note="no fat", time="2026-01-02T03:04:05+00:00")
    result.levels[2].name = "L2-L3"
    result.levels[3].name = "L1-L2"
    added = DiscLevel(name="T12-L1", slice_index=44, box=OrientedBox((0.0, 30.0, _z(44)), (18.0, 14.0, 10.0)),
                      detection_score=0.0, correction=ClinicianCorrection(grade="A", added=True, author="Dr A"))
    result.levels.append(added)
    result.removed_levels = [_level("L1-L2", 50, "B")]
    result.removed_levels[0].correction = ClinicianCorrection(grade="C", author="Dr B")
    review = StudyReview.create(scene, result)
    assert _rounded(review.result().to_dict()) == _rounded(result.to_dict())
    assert [row["edited"] for row in _rows(review)] == ["0", "1", "0", "0", "1"]
    assert [row["final_grade"] for row in _rows(review)] == ["B", "D", "A", "A", "A"]
    assert _rows(review)[4]["ai_level"] == ""  # the model did not find the added level


# --- corrections ---------------------------------------------------------------------------------


def test_clinician_grade_is_checked_kept_beside_the_model_grade_and_cleared(review):
    roi = _by_name(review, "L4-L5")
    review.set_clinician_grade(roi, "b", author="Dr House")
    level = _level_of(review, "L4-L5")
    assert level.correction.grade == "B" and level.grade.grade == "C"
    assert level.correction.author == "Dr House" and level.correction.time.startswith("20")
    assert review.is_edited(roi) and not review.is_edited(_by_name(review, "L5-S1"))
    row = _rows(review)[1]
    assert (row["ai_grade"], row["clinician_grade"], row["final_grade"], row["edited"]) == ("C", "B", "B", "1")
    np.testing.assert_allclose(roi.GetDisplayNode().GetSelectedColor(), SCHIZAS.grade_class("B").color)
    assert "clinician grade B (Dr House)" in roi.GetAttribute(mrml.ATTRIBUTE_PREFIX + "description")
    for wrong in ("E", "moderate", ""):
        with pytest.raises(InputError, match="A, B, C, D"):
            review.set_clinician_grade(roi, wrong)
    review.set_clinician_grade(roi, None)
    assert _level_of(review, "L4-L5").correction is None and not review.is_edited(roi)
    np.testing.assert_allclose(roi.GetDisplayNode().GetSelectedColor(), SCHIZAS.grade_class("C").color)


def test_a_run_without_model_grades_has_no_scale_to_grade_on(scene):
    review = StudyReview.create(scene, cervical_result())
    assert review.scale() is None
    with pytest.raises(InputError, match="no grading scale"):
        review.set_clinician_grade(review.level_rois()[0], "1")


def test_a_run_that_found_nothing_can_be_annotated_by_hand(scene, volume):
    empty = lumbar_result()
    empty.levels = []
    review = StudyReview.create(scene, empty, volume, scale="schizas")
    assert review.level_rois() == [] and _rows(review) == []
    assert StudyReview.in_scene(scene, volume)[0].table_node.GetID() == review.table_node.GetID()
    roi = _place_roi(scene, _z(17))
    with pytest.raises(InputError, match="no named level beside it"):
        review.add_level(roi)
    review.add_level(roi, "L4-L5", author="Dr A")
    review.set_clinician_grade(roi, "B")
    assert _rows(review)[0]["level"] == "L4-L5" and _rows(review)[0]["final_grade"] == "B"
    with pytest.raises(KeyError, match="unknown grading scale"):
        StudyReview.create(scene, empty, volume, scale="made-up")


def test_renaming_a_level_keeps_the_model_name_beside_it(review):
    roi = _by_name(review, "L2-L3")
    review.rename_level(roi, "l1/l2")
    level = _level_of(review, "L1-L2")
    assert (level.name, level.correction.name) == ("L2-L3", "L1-L2")
    assert _rows(review)[3]["level"] == "L1-L2" and _rows(review)[3]["ai_level"] == "L2-L3"
    with pytest.raises(InputError, match="already named L3-L4"):
        review.rename_level(roi, "L3-L4")
    with pytest.raises(InputError, match="not a disc level name"):
        review.rename_level(roi, "L4 bulge")
    review.rename_level(roi, "L2-L3")  # back to the model's name: no longer a correction
    assert not review.is_edited(roi)


def test_a_moved_resized_or_rotated_box_is_a_correction(review):
    moved, resized, rotated = (_by_name(review, name) for name in ("L5-S1", "L4-L5", "L3-L4"))
    center = list(moved.GetCenter())
    moved.SetCenter(center[0] - 3.0, center[1], center[2] + 2.0)  # RAS: 3 mm to the left
    resized.SetSize(24.0, 14.0, 6.0)
    ai_box = _level_of(review, "L3-L4").box
    tilted = OrientedBox(ai_box.center, ai_box.size, tuple(_rotation([1, 0, 0], 12.0).reshape(-1)))
    mrml.set_roi_box(rotated, tilted)  # as the rotation handle does: a new ROI-to-node matrix
    review.refresh_table(author="Dr C")  # as the Widget does after an interaction: who and when

    levels = review.result().levels
    assert [(lv.correction.author, lv.correction.time[:2]) for lv in levels[:3]] == [("Dr C", "20")] * 3
    assert levels[0].correction.box.center == pytest.approx((3.0, 30.0, _z(8) + 2.0))
    assert levels[0].box.center == pytest.approx((0.0, 30.0, _z(8)))  # the model's box stays beside it
    assert levels[1].correction.box.size == pytest.approx((24.0, 14.0, 6.0))
    np.testing.assert_allclose(levels[2].correction.box.orientation, tilted.orientation, atol=1e-12)
    np.testing.assert_allclose(levels[2].correction.box.center, tilted.center, atol=1e-9)
    assert levels[3].correction is None
    assert [row["edited"] for row in _rows(review)] == ["1", "1", "1", "0"]
    assert review.grade_is_stale(rotated) and not review.grade_is_stale(review.level_rois()[3])
    # an untouched box that only went through the ROI's arithmetic is not an edit
    untouched = review.level_rois()[3]
    mrml.set_roi_box(untouched, mrml.roi_to_box(untouched))
    assert not review.is_edited(untouched)


@pytest.mark.parametrize("region, anchor_position, anchor, expected", [
    ("lumbar", 0, "L4-L5", ["L4-L5", "L3-L4", "L2-L3", "L1-L2"]),
    ("lumbar", 3, "T12-L1", ["L3-L4", "L2-L3", "L1-L2", "T12-L1"]),
    ("cervical", 0, "C7-T1", ["C7-T1", "C6-C7", "C5-C6", "C4-C5"]),
    ("cervical", 3, "C2-C3", ["C5-C6", "C4-C5", "C3-C4", "C2-C3"]),
])
def test_reanchoring_shifts_every_name(scene, region, anchor_position, anchor, expected):
    result = lumbar_result() if region == "lumbar" else cervical_result()
    review = StudyReview.create(scene, result)
    before = [roi.GetName() for roi in review.level_rois()]
    assert all(name_status(level) == "not anchored" for level in review.result().levels)
    changed = review.reanchor(review.level_rois()[anchor_position], anchor.lower(), author="Dr A")
    assert [roi.GetName() for roi in review.level_rois()] == expected
    assert changed == {old: new for old, new in zip(before, expected) if old != new}
    levels = review.result().levels
    assert [level.name for level in levels] == before  # the model's names stay beside
    assert all(level.correction.author == "Dr A" for level in levels if level.correction is not None)
    # the clinician's anchor fixes every name, those it left unchanged too
    assert all(level.name_anchored and name_status(level) == "" for level in levels)
    review.reanchor(review.level_rois()[0], before[0])  # back to the model's numbering
    assert not any(review.is_edited(roi) for roi in review.level_rois())


def _place_roi(scene, z: float, name: str = "R"):
    """An ROI as the user places it: Markups > Place ROI, in RAS."""
    roi = scene.AddNewNodeByClass("vtkMRMLMarkupsROINode", name)
    roi.CreateDefaultDisplayNodes()
    roi.SetCenter(1.0, -29.0, z)
    roi.SetSize(17.0, 13.0, 8.0)
    return roi


def test_a_level_placed_between_two_found_ones_is_named_from_its_place_and_the_names_beyond_move(scene, volume,
                                                                                                  review):
    # the detector missed the disc between L4-L5 and L3-L4 and counted on: the levels above it are named one low
    between = _place_roi(scene, _z(22))
    renamed = review.add_level(between, author="Dr A")
    assert between.GetName() == "L3-L4"
    assert renamed == {"L3-L4": "L2-L3", "L2-L3": "L1-L2"}
    assert [roi.GetName() for roi in review.level_rois()] == ["L5-S1", "L4-L5", "L3-L4", "L2-L3", "L1-L2"]
    assert review.is_edited(_by_name(review, "L1-L2")) and not review.is_edited(_by_name(review, "L4-L5"))
    # a name left free between two levels is taken as it is, and nothing else moves
    review.remove_level(_by_name(review, "L4-L5"))
    again = _place_roi(scene, _z(17))
    assert review.add_level(again) == {}
    assert again.GetName() == "L4-L5"
    assert [roi.GetName() for roi in review.level_rois()] == ["L5-S1", "L4-L5", "L3-L4", "L2-L3", "L1-L2"]


def test_a_cervical_level_placed_between_two_found_ones_moves_the_names_below_it(scene, volume):
    review = StudyReview.create(scene, cervical_result(), volume)
    between = _place_roi(scene, _z(16))  # between C5-C6 (14) and C4-C5 (18); named from C2 at the top
    assert review.add_level(between) == {"C5-C6": "C6-C7", "C6-C7": "C7-T1"}
    assert [roi.GetName() for roi in review.level_rois()] == ["C7-T1", "C6-C7", "C5-C6", "C4-C5", "C3-C4"]


def test_a_level_added_by_hand_has_no_model_grade(scene, volume, review):
    roi = _place_roi(scene, _z(44))  # above L2-L3: the model missed L1-L2
    review.add_level(roi, author="Dr A")
    assert roi.GetName() == "L1-L2"
    assert review.level_rois()[-1].GetID() == roi.GetID()
    level = review.result().levels[-1]
    assert level.grade is None and level.correction.added and level.correction.author == "Dr A"
    assert level.slice_index == 44 and level.detection_score == 0.0
    assert review.grade_is_stale(roi)
    review.set_clinician_grade(roi, "D")
    assert _rows(review)[-1]["final_grade"] == "D" and _rows(review)[-1]["ai_grade"] == ""
    assert roi.GetNodeReference(mrml.VOLUME_REFERENCE_ROLE).GetID() == volume.GetID()
    shnode = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    folder_of = lambda node: shnode.GetItemParent(shnode.GetItemByDataNode(node))
    assert folder_of(roi) == folder_of(review.table_node)

    below = _place_roi(scene, _z(1))  # below L5-S1: no disc name is left below it
    with pytest.raises(InputError, match="No disc lies below L5-S1"):
        review.add_level(below)
    between = _place_roi(scene, _z(22))  # between L4-L5 and L3-L4
    with pytest.raises(InputError, match="already named"):
        review.add_level(between, "L3-L4")
    with pytest.raises(InputError, match="already a level of this"):
        review.add_level(roi)
    outside = _place_roi(scene, _z(70))
    with pytest.raises(InputError, match="outside the graded volume"):
        review.add_level(outside, "T11-T12")
    unfinished = scene.AddNewNodeByClass("vtkMRMLMarkupsROINode", "placing")
    with pytest.raises(InputError, match="no size yet"):
        review.add_level(unfinished, "T11-T12")
    assert len(review.level_rois()) == 5


def test_removing_a_level_keeps_its_corrections(scene, review):
    roi = _by_name(review, "L3-L4")
    review.set_clinician_grade(roi, "D", author="Dr A")
    display_id = roi.GetDisplayNode().GetID()
    review.remove_level(roi, author="Dr B")
    assert [r.GetName() for r in review.level_rois()] == ["L5-S1", "L4-L5", "L2-L3"]
    assert scene.GetNodeByID(display_id) is None
    shnode = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    assert shnode.GetItemByDataNode(roi) == shnode.GetInvalidItemID()
    removed = review.result().removed_levels
    assert [(lv.name, lv.grade.grade, lv.correction.grade) for lv in removed] == [("L3-L4", "A", "D")]
    assert len(_rows(review)) == 3

    # an ROI deleted in Slicer's Data module is recorded too, as it was last seen
    review.set_clinician_grade(_by_name(review, "L5-S1"), "A")
    scene.RemoveNode(_by_name(review, "L5-S1"))
    review.refresh_table()
    assert [(lv.name, lv.correction.grade) for lv in review.result().removed_levels] == [("L3-L4", "D"),
                                                                                         ("L5-S1", "A")]
    review.refresh_table()
    assert len(review.result().removed_levels) == 2  # recorded once


# --- the model again -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def default_package():
    return load_default_package()


@pytest.fixture(scope="module")
def lumbar_phantom():
    study = phantom.make_study(seed=3, modality="MR", region="lumbar", matrix=256)
    return study, to_axial_stack(study.image, source="phantom")


def _phantom_result(study, stack, package) -> StudyResult:
    """The phantom's levels with their true canal boxes, as if the model had found them."""
    levels = [DiscLevel(name=lv.name, slice_index=lv.slice_index,
                        box=stack.slice_box(lv.slice_index, study.canal_boxes[lv.slice_index], 3.0),
                        detection_score=0.9, grade=_grade("A")) for lv in study.levels]
    info = StudyInfo(source="phantom", modality="MR", region="lumbar", n_slices=stack.n_slices,
                     slice_spacing_mm=stack.spacing[2], pixel_spacing_mm=stack.spacing[:2],
                     stack_origin_lps=stack.origin, stack_spacing_mm=stack.spacing,
                     stack_direction_lps=tuple(stack.direction.reshape(-1)),
                     stack_size=tuple(stack.image.GetSize()))
    return StudyResult(study=info, model=package.info(), levels=levels, detections=[])


def test_an_edited_box_is_regraded_alone(scene, lumbar_phantom, default_package):
    study, stack = lumbar_phantom
    review = StudyReview.create(scene, _phantom_result(study, stack, default_package))
    truth = {lv.name: lv for lv in study.levels}
    roi = _by_name(review, "L3-L4")  # true grade A
    review.set_clinician_grade(roi, "B", author="Dr A")
    # the clinician moves the box onto the L1-L2 disc (true grade D) and re-grades it
    k = truth["L1-L2"].slice_index
    mrml.set_roi_box(roi, stack.slice_box(k, study.canal_boxes[k], 3.0))
    assert review.grade_is_stale(roi)
    prediction = review.regrade_level(roi, stack, default_package)

    classifier = default_package.classifier()
    spacing = stack.spacing[:2]
    expected = classifier.grade(classifier.crop(stack.array[k], spacing, study.canal_boxes[k], "MR")[None])[0]
    k_old = truth["L3-L4"].slice_index
    before = classifier.grade(
        classifier.crop(stack.array[k_old], spacing, study.canal_boxes[k_old], "MR")[None])[0]
    assert prediction.probabilities == pytest.approx(expected.probabilities, abs=1e-5)
    assert max(abs(before.probabilities[g] - expected.probabilities[g]) for g in SCHIZAS.names) > 0.01
    level = _level_of(review, "L3-L4")
    assert level.grade.probabilities == pytest.approx(expected.probabilities, abs=1e-5)
    assert level.slice_index == k and level.correction.grade == "B"  # the clinician's grade stays
    assert level.correction.box is not None  # and the model's box stays beside the edited one
    assert not review.grade_is_stale(roi)
    assert _rows(review)[[r.GetName() for r in review.level_rois()].index("L3-L4")]["ai_grade"] == expected.grade

    with pytest.raises(InputError, match="Re-grade with that"):
        other = load_package(DEFAULT_PACKAGE_DIR)
        other.manifest = dict(other.manifest, version="9.9")
        review.regrade_level(roi, stack, other)
    small = to_axial_stack(sitk.Shrink(study.image, [2, 2, 1]))
    with pytest.raises(InputError, match="not the volume the run graded"):
        review.regrade_level(roi, small, default_package)


# --- re-running the study ----------------------------------------------------------------------------


def test_levels_are_matched_by_position_not_name():
    old = [(0, 0, 0.0), (0, 0, 36.0), (0, 0, 72.0)]
    new = [(0, 0, 40.0), (0, 0, 3.0), (0, 0, 120.0)]
    assert match_by_position(old, new, 15.0) == {0: 1, 1: 0}
    assert match_by_position([], new, 15.0) == {}


def test_a_rerun_keeps_every_correction_and_says_what_changed(scene, volume, review):
    review.set_clinician_grade(_by_name(review, "L4-L5"), "D", author="Dr A")
    edited = _by_name(review, "L3-L4")
    center = list(edited.GetCenter())
    edited.SetCenter(center[0] + 2.0, center[1], center[2])
    review.remove_level(_by_name(review, "L2-L3"))
    added = _place_roi(scene, _z(44))
    review.add_level(added, "L1-L2")

    new_run = lumbar_result(ModelInfo(name="ssg-test", version="0.3.0", task="central_canal"))
    new_run.levels = [
        _level("L5-S1", 8, "B", x=1.0),           # L5-S1 matched, same grade
        _level("L4-L5", 17, "B", x=0.5),          # grade C -> B; the clinician's D stays
        _level("L3-L4", 27, "B"),                 # moved 4 mm, grade A -> B; the clinician's box stays
        _level("L2-L3", 35, "A"),                 # the level the clinician removed: left out
        _level("L1-L2", 44, "C"),                 # the clinician's added level: now found by the model
        _level("T12-L1", 53, "A"),                # new
    ]
    changes = review.merge_rerun(new_run, author="Dr A")
    assert changes[0] == "Model: ssg-test 0.2.0 -> ssg-test 0.3.0"
    assert "L4-L5: grade C -> B" in changes
    assert "L3-L4: grade A -> B" in changes
    assert "L3-L4: box moved 4.0 mm (the clinician's box is kept)" in changes
    assert "L2-L3: found again by the new run; left out, as the clinician removed it" in changes
    assert "L1-L2: now found by the model (grade C)" in changes
    assert "T12-L1: new level (grade A)" in changes
    assert not any(change.startswith("L5-S1") for change in changes)

    result = review.result()
    assert result.model.version == "0.3.0"
    names = [lv.name for lv in result.levels]
    assert names == ["L5-S1", "L4-L5", "L3-L4", "L1-L2", "T12-L1"]
    by_name = dict(zip(names, result.levels))
    assert by_name["L4-L5"].grade.grade == "B" and by_name["L4-L5"].correction.grade == "D"
    assert by_name["L3-L4"].correction.box.center == pytest.approx((-2.0, 30.0, _z(26)))
    assert by_name["L3-L4"].box.center == pytest.approx((0.0, 30.0, _z(27)))
    assert by_name["L1-L2"].grade.grade == "C" and not by_name["L1-L2"].correction.added \
        and by_name["L1-L2"].correction.box is not None
    assert by_name["L5-S1"].correction is None and by_name["L5-S1"].box.center[0] == 1.0
    assert [lv.name for lv in result.removed_levels] == ["L2-L3"]
    assert _rows(review)[0]["model"] == "ssg-test 0.3.0"
    shnode = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    folder = shnode.GetItemParent(shnode.GetItemByDataNode(review.table_node))
    assert "0.3.0" in shnode.GetItemName(folder)
    assert shnode.GetItemParent(shnode.GetItemByDataNode(_by_name(review, "T12-L1"))) == folder


def test_a_rerun_drops_unedited_levels_it_no_longer_finds_and_keeps_corrected_ones(review):
    review.set_clinician_grade(_by_name(review, "L2-L3"), "B")
    new_run = lumbar_result()
    new_run.levels = new_run.levels[1:3]  # finds neither L5-S1 nor L2-L3 again
    changes = review.merge_rerun(new_run)
    assert "L5-S1: not found by the new run; removed" in changes
    assert "L2-L3: not found by the new run; kept with the clinician's corrections" in changes
    result = review.result()
    assert [lv.name for lv in result.levels] == ["L4-L5", "L3-L4", "L2-L3"]
    kept = result.levels[2]
    assert kept.grade is None and kept.correction.added and kept.correction.grade == "B"
    assert result.removed_levels == []  # a re-run's loss is not a clinician's removal


def test_a_rerun_follows_the_clinicians_numbering(review):
    review.reanchor(review.level_rois()[0], "L4-L5")  # a sacralised L5: every name one up
    new_run = lumbar_result()
    new_run.levels.append(_level("L1-L2", 44, "A"))  # the model's own numbering again, one more level
    changes = review.merge_rerun(new_run)
    assert [roi.GetName() for roi in review.level_rois()] == ["L4-L5", "L3-L4", "L2-L3", "L1-L2", "T12-L1"]
    assert "L1-L2: named T12-L1 to follow the clinician's numbering" in changes


def test_a_rerun_leaves_names_alone_when_the_clinicians_names_are_no_numbering(review):
    review.rename_level(_by_name(review, "L5-S1"), "L1-L2")  # L1-L2 at the bottom...
    review.rename_level(_by_name(review, "L2-L3"), "T11-T12")  # ...and T11-T12 three discs up: not one count
    new_run = lumbar_result()
    new_run.levels.append(_level("L1-L2", 44, "A"))
    changes = review.merge_rerun(new_run)
    assert [roi.GetName() for roi in review.level_rois()] == ["L1-L2", "L4-L5", "L3-L4", "T11-T12", "L1-L2"]
    assert not any("numbering" in change for change in changes)
    assert "L1-L2: 2 levels now have this name; rename or re-anchor them" in changes


# --- saving the scene ----------------------------------------------------------------------------------


def _save_and_reload_mrb(scene, folder: Path):
    """Save as File > Save (.mrb) does, and open it in a new scene as Slicer does."""
    logic = slicer.vtkMRMLApplicationLogic()
    logic.SetMRMLScene(scene)
    bundle = folder / "bundle"
    bundle.mkdir()
    assert logic.SaveSceneToSlicerDataBundleDirectory(str(bundle), None)
    mrb = folder / "review.mrb"
    assert logic.Zip(str(mrb), str(bundle))
    reloaded = _new_scene()
    reload_logic = slicer.vtkMRMLApplicationLogic()
    reload_logic.SetMRMLScene(reloaded)
    unpacked = folder / "unpacked"
    unpacked.mkdir()
    assert reload_logic.OpenSlicerDataBundle(str(mrb), str(unpacked))
    reloaded._test_logic = reload_logic
    return reloaded


def test_a_saved_and_reloaded_scene_brings_everything_back(scene, volume, review, tmp_path):
    image = vtk.vtkImageData()
    image.SetDimensions(8, 8, 4)
    image.AllocateScalars(vtk.VTK_SHORT, 1)
    volume.SetAndObserveImageData(image)
    review.set_clinician_grade(_by_name(review, "L4-L5"), "D", author="Dr A")
    review.rename_level(_by_name(review, "L2-L3"), "L1-L2")
    mrml.set_roi_box(_by_name(review, "L3-L4"), OrientedBox(
        (1.0, 31.0, _z(26)), (20.0, 15.0, 8.0), tuple(_rotation([0.3, 1, 0], 10.0).reshape(-1))))
    review.add_level(_place_roi(scene, _z(44)), "T12-L1")
    review.remove_level(_by_name(review, "L5-S1"))
    review.merge_rerun(lumbar_result(ModelInfo(name="ssg-test", version="0.2.1", task="central_canal")))
    before = review.result().to_dict()

    reloaded = _save_and_reload_mrb(scene, tmp_path)
    runs = StudyReview.in_scene(reloaded)
    assert len(runs) == 1
    again = runs[0]
    assert again.volume_node.GetName() == "T2 axial"
    assert _rounded(again.result().to_dict()) == _rounded(before)
    assert again.result().model.version == "0.2.1"
    assert [again.is_edited(roi) for roi in again.level_rois()] == [review.is_edited(roi)
                                                                   for roi in review.level_rois()]
    assert _rows(again) == _rows(review)
    # and it can still be corrected
    again.set_clinician_grade(again.level_rois()[0], "A")
    assert again.result().levels[0].correction.grade == "A"


# --- exports -----------------------------------------------------------------------------------------


def _corrected(review: StudyReview) -> StudyReview:
    review.set_clinician_grade(_by_name(review, "L4-L5"), "D", author="Dr A")
    review.rename_level(_by_name(review, "L2-L3"), "L1-L2", author="Dr A")
    roi = _by_name(review, "L3-L4")
    mrml.set_roi_box(roi, OrientedBox((1.0, 31.0, _z(26)), (20.0, 15.0, 8.0),
                                      tuple(_rotation([1, 0, 0], 9.0).reshape(-1))))
    review.remove_level(_by_name(review, "L5-S1"), author="Dr B")
    review.refresh_table()
    return review


def test_export_writes_model_and_clinician_values_side_by_side(review, tmp_path):
    _corrected(review)
    written = review.export(tmp_path / "out")
    assert sorted(p.name for p in written) == sorted(
        ["result.json", "levels.csv", "report.html", "L4-L5.mrk.json", "L3-L4.mrk.json", "L1-L2.mrk.json"])
    result = StudyResult.from_json((tmp_path / "out" / "result.json").read_text())
    assert _rounded(result.to_dict()) == _rounded(review.result().to_dict())
    with open(tmp_path / "out" / "levels.csv", newline="") as handle:
        rows = {row["level"]: row for row in csv.DictReader(handle)}
    assert (rows["L4-L5"]["grade"], rows["L4-L5"]["clinician_grade"], rows["L4-L5"]["final_grade"]) == ("C", "D", "D")
    assert rows["L2-L3"]["clinician_name"] == "L1-L2" and rows["L3-L4"]["clinician_box_edited"] == "true"

    # the markups are what Slicer's ROI JSON storage node reads: the edited oblique box, the final name
    roi, _alive = _read_with_slicer(tmp_path / "out" / "L3-L4.mrk.json")
    box = mrml.roi_to_box(roi)
    expected = _level_of(review, "L3-L4").correction.box
    np.testing.assert_allclose(box.center, expected.center, atol=1e-9)
    np.testing.assert_allclose(box.orientation, expected.orientation, atol=1e-9)
    roi, _alive = _read_with_slicer(tmp_path / "out" / "L4-L5.mrk.json")
    assert roi.GetName() == "L4-L5" and "D (clinician; model C" in roi.GetDescription()
    roi, _alive = _read_with_slicer(tmp_path / "out" / "L1-L2.mrk.json")
    assert roi.GetName() == "L1-L2"


def test_export_with_slice_pictures(lumbar_phantom, default_package, scene, tmp_path):
    study, stack = lumbar_phantom
    review = StudyReview.create(scene, _phantom_result(study, stack, default_package))
    review.export(tmp_path / "out", stack)
    assert (tmp_path / "out" / "report.html").read_text().count("data:image/png;base64,") == len(study.levels)
    with pytest.raises(InputError, match="not the volume"):
        review.export(tmp_path / "other", to_axial_stack(sitk.Shrink(study.image, [2, 2, 1])))


def _dicom_like_image() -> sitk.Image:
    """The graded volume as read from DICOM: the patient's name and ID in its metadata."""
    array = (np.arange(np.prod(SIZE)).reshape(SIZE[::-1]) % 997).astype(np.int16)
    image = sitk.GetImageFromArray(array)
    image.SetOrigin(ORIGIN)
    image.SetSpacing(SPACING)
    image.SetMetaData("0010|0010", "Doe^Jane")
    image.SetMetaData("0010|0020", "PID-12345")
    image.SetMetaData("0008|0060", "MR")
    return image


def _all_text(folder: Path) -> bytes:
    return b"".join(path.read_bytes() for path in sorted(folder.iterdir()))


@pytest.mark.parametrize("volume_format", ["nrrd", "nii.gz"])
def test_annotation_set_carries_no_patient_information(review, tmp_path, volume_format):
    _corrected(review)
    image = _dicom_like_image()
    folder = tmp_path / "set"
    written = review.export_annotation_set(folder, image, volume_format=volume_format)
    assert sorted(p.name for p in written) == sorted([f"volume.{volume_format}", "L4-L5.mrk.json", "L3-L4.mrk.json",
                                                      "L1-L2.mrk.json", "result.json", "levels.csv",
                                                      "provenance.json"])
    volume = sitk.ReadImage(str(folder / f"volume.{volume_format}"))
    assert not any(key.startswith("0010|") for key in volume.GetMetaDataKeys())
    np.testing.assert_array_equal(sitk.GetArrayFromImage(volume), sitk.GetArrayFromImage(image))
    assert volume.GetOrigin() == pytest.approx(ORIGIN)
    raw = _all_text(folder)
    for secret in (b"Doe", b"PID-12345", b"Doe_Jane"):
        assert secret not in raw
    assert image.GetMetaData("0010|0010") == "Doe^Jane"  # the caller's image keeps its metadata

    provenance = json.loads((folder / "provenance.json").read_text())
    assert provenance["model"]["name"] == "ssg-test" and provenance["model"]["version"] == "0.2.0"
    assert provenance["patient_info_included"] is False and "patient" not in provenance
    assert provenance["source"]["original"] is None and provenance["source"]["volume_file"] == f"volume.{volume_format}"
    levels = {entry["name"]: entry for entry in provenance["levels"]}
    assert levels["L4-L5"]["final_grade"] == "D" and levels["L4-L5"]["grade_source"] == "clinician"
    assert levels["L4-L5"]["corrected_by"] == "Dr A" and levels["L4-L5"]["corrected_at"].startswith("20")
    assert levels["L3-L4"]["box_source"] == "clinician" and levels["L3-L4"]["grade_source"] == "model"
    assert levels["L1-L2"]["model_name"] == "L2-L3"
    assert [(entry["model_name"], entry["removed_by"]) for entry in provenance["removed_levels"]] == [("L5-S1", "Dr B")]
    for name, digest in provenance["files"].items():
        assert len(digest) == 64 and (folder / name).is_file()
    result = StudyResult.from_json((folder / "result.json").read_text())
    assert result.study.source == f"volume.{volume_format}"
    roi, _alive = _read_with_slicer(folder / "L4-L5.mrk.json")
    assert "D (clinician" in roi.GetDescription()


def test_annotation_set_with_patient_information_when_asked(review, tmp_path):
    folder = tmp_path / "set"
    review.export_annotation_set(folder, _dicom_like_image(), include_patient_info=True, volume_format="nrrd")
    assert b"Doe^Jane" in (folder / "volume.nrrd").read_bytes()
    provenance = json.loads((folder / "provenance.json").read_text())
    assert provenance["patient"] == {"name": "Doe^Jane", "id": "PID-12345"}
    assert provenance["source"]["original"] == "/data/Doe_Jane/t2_axial.nii.gz"


def test_annotation_set_replaces_only_an_earlier_set_and_checks_the_volume(review, tmp_path):
    folder = tmp_path / "set"
    review.export_annotation_set(folder, _dicom_like_image())
    review.set_clinician_grade(review.level_rois()[0], "D")
    review.export_annotation_set(folder, _dicom_like_image())  # an earlier set is replaced
    assert json.loads((folder / "provenance.json").read_text())["levels"][0]["final_grade"] == "D"
    assert not [p for p in tmp_path.rglob("*") if "writing-" in p.name or "previous" in p.name]
    with pytest.raises(InputError, match="not the volume the run graded"):
        review.export_annotation_set(tmp_path / "other", sitk.Shrink(_dicom_like_image(), [2, 2, 1]))
    shifted = _dicom_like_image()
    shifted.SetOrigin((500.0, 0.0, 0.0))
    with pytest.raises(InputError, match="outside this image"):
        review.export_annotation_set(tmp_path / "other", shifted)
    with pytest.raises(InputError, match="volume format"):
        review.export_annotation_set(tmp_path / "other", _dicom_like_image(), volume_format="dcm")
    assert not (tmp_path / "other").exists()


def test_a_folder_with_other_files_gets_the_set_in_a_new_subfolder(review, tmp_path):
    """A folder picker cannot insist on an empty folder: the set goes into a clearly named subfolder."""
    folder = tmp_path / "Desktop"
    folder.mkdir()
    (folder / "notes.txt").write_text("mine")
    (folder / "annotation-set").mkdir()  # taken (by the user, or by an earlier export)
    written = review.export_annotation_set(folder, _dicom_like_image())
    assert {p.parent for p in written} == {folder / "annotation-set-2"}
    assert sorted(p.name for p in (folder / "annotation-set-2").iterdir()) == sorted(p.name for p in written)
    assert sorted(p.name for p in folder.iterdir()) == ["annotation-set", "annotation-set-2", "notes.txt"]
    assert (folder / "notes.txt").read_text() == "mine" and not list((folder / "annotation-set").iterdir())
    # the new subfolder holds an earlier set, and only that: choosing it again replaces the set
    review.set_clinician_grade(review.level_rois()[0], "D")
    again = review.export_annotation_set(folder / "annotation-set-2", _dicom_like_image())
    assert {p.parent for p in again} == {folder / "annotation-set-2"}
    provenance = json.loads((folder / "annotation-set-2" / "provenance.json").read_text())
    assert provenance["levels"][0]["final_grade"] == "D"


def _snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` with its bytes, and every folder (as None)."""
    return {p.relative_to(folder).as_posix(): (p.read_bytes() if p.is_file() else None)
            for p in sorted(folder.rglob("*"))}


def _set_up(case: str, review: StudyReview, root: Path) -> Path:
    """The folder chosen for an export: new, holding the user's files, or holding an earlier set."""
    folder = root / "set"
    if case == "user's files":
        folder.mkdir()
        (folder / "notes.txt").write_text("mine")
    elif case == "earlier set":
        review.export_annotation_set(folder, _dicom_like_image())
        review.set_clinician_grade(review.level_rois()[0], "D")  # the new set differs from the earlier one
    return folder


@pytest.mark.parametrize("case", ["new folder", "user's files", "earlier set"])
@pytest.mark.parametrize("failure", ["writing", "moving in"])
def test_a_failure_part_way_leaves_no_partial_annotation_set(review, tmp_path, monkeypatch, case, failure):
    """All or nothing: a failure after the volume and some files were written leaves the folder as it was."""
    import os
    from SpineStenosisGraderLib.outputs import writers

    folder = _set_up(case, review, tmp_path)
    before = _snapshot(tmp_path)
    if failure == "writing":
        # levels.csv comes after the volume, the markups and result.json
        def fail(*args, **kwargs):
            raise OSError(28, "No space left on device")

        monkeypatch.setattr(writers, "write_levels_csv", fail)
    else:
        real_replace = os.replace
        calls = []

        def flaky_replace(source, target):
            if Path(source).parent.name.startswith(writers.STAGING_PREFIX):  # a file of the new set moving in
                calls.append(target)
                if len(calls) == 3:  # two are in place by now
                    raise OSError(5, "Input/output error")
            return real_replace(source, target)

        monkeypatch.setattr(writers.os, "replace", flaky_replace)
    with pytest.raises(OSError):
        review.export_annotation_set(folder, _dicom_like_image())
    assert _snapshot(tmp_path) == before


class _Killed(BaseException):
    """Stands in for a SIGKILL: nothing of the writer's own undoing runs after it (see below)."""


def test_an_export_killed_while_moving_in_is_undone_before_the_folder_is_judged(review, tmp_path, monkeypatch):
    """An earlier set, half replaced by an export that was killed, is whole again and replaced by the next export,
    in the same folder: judged half-moved, the folder would look like the user's and get a subfolder."""
    import os
    from SpineStenosisGraderLib.outputs import writers

    folder = _set_up("earlier set", review, tmp_path)
    earlier = json.loads((folder / "provenance.json").read_text())
    real_replace = os.replace
    moved_in = []

    def replace_then_die(source, target):
        if Path(source).parent.name.startswith(writers.STAGING_PREFIX):  # a file of the new set moving in
            moved_in.append(target)
            if len(moved_in) == 2:  # the earlier set is out, the volume in
                raise _Killed()
        return real_replace(source, target)

    def no_undoing(*args, **kwargs):
        raise OSError("killed: no undoing")  # as after a SIGKILL, the journal and .previous stay

    monkeypatch.setattr(writers.os, "replace", replace_then_die)
    monkeypatch.setattr(writers, "_roll_back", no_undoing)
    with pytest.raises(_Killed):
        review.export_annotation_set(folder, _dicom_like_image())
    monkeypatch.undo()
    assert "provenance.json" not in [p.name for p in folder.iterdir()]  # the state a kill leaves

    written = review.export_annotation_set(folder, _dicom_like_image())
    assert {p.parent for p in written} == {folder}
    assert sorted(p.name for p in folder.iterdir()) == sorted(p.name for p in written)
    provenance = json.loads((folder / "provenance.json").read_text())
    assert provenance["levels"][0]["final_grade"] == "D" != earlier["levels"][0]["final_grade"]


# --- model packages ------------------------------------------------------------------------------------


def _zip_folder(folder: Path, path: Path, prefix: str = "", extra: dict[str, bytes] | None = None) -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        for file in sorted(folder.iterdir()):
            archive.write(file, prefix + file.name)
        for name, data in (extra or {}).items():
            archive.writestr(name, data)
    return path


def test_a_package_is_imported_from_a_folder_or_a_zip(tmp_path):
    source = make_package(tmp_path / "p")
    (source / ".DS_Store").write_bytes(b"Finder's own file")  # not the package's, not copied
    installed = import_package(source, tmp_path / "models")
    assert installed.path == tmp_path / "models" / "test-0"
    assert sorted(p.name for p in installed.path.iterdir()) == ["classifier.safetensors", "detector.safetensors",
                                                                "manifest.json"]
    assert import_package(source, tmp_path / "models").path == installed.path  # again: the installed one

    (source / ".DS_Store").unlink()
    zipped = _zip_folder(source, tmp_path / "package.zip", "test-0/", {"__MACOSX/._manifest.json": b"junk"})
    from_zip = import_package(zipped, tmp_path / "other-models")
    assert from_zip.name == "test" and (tmp_path / "other-models" / "test-0" / "manifest.json").is_file()
    assert [p.name for p in (tmp_path / "other-models").iterdir()] == ["test-0"]  # no staging left


@pytest.mark.parametrize("damage, message", [
    ("weights", "SHA256"),
    ("extra", "does not list"),
    ("escape", "outside its own folder"),
    ("not a zip", "neither"),
])
def test_a_tampered_or_foreign_package_is_refused(tmp_path, damage, message):
    source = make_package(tmp_path / "p")
    archive = tmp_path / "package.zip"
    if damage == "weights":
        (source / "detector.safetensors").write_bytes(b"tampered weights")
        _zip_folder(source, archive)
    elif damage == "extra":
        _zip_folder(source, archive, extra={"run_me.py": b"import os"})
    elif damage == "escape":
        _zip_folder(source, archive, extra={"../../evil.json": b"{}"})
    else:
        archive.write_bytes(b"this is not a zip")
    with pytest.raises(ModelPackageError, match=message):
        import_package(archive, tmp_path / "models")
    assert not (tmp_path / "models").exists() or list((tmp_path / "models").iterdir()) == []
    assert not (tmp_path / "evil.json").exists()


def test_another_package_with_the_same_name_and_version_is_refused(tmp_path):
    import_package(make_package(tmp_path / "p"), tmp_path / "models")
    other = make_package(tmp_path / "q")
    (other / "detector.safetensors").write_bytes(b"other weights")
    manifest = json.loads((other / "manifest.json").read_text())
    from SpineStenosisGraderLib.packages.package import write_manifest

    write_manifest(other, {k: v for k, v in manifest.items() if k not in ("format", "format_version")})
    with pytest.raises(ModelPackageError, match="already installed"):
        import_package(other, tmp_path / "models")
    extra = make_package(tmp_path / "r")
    shutil.copy(DEFAULT_PACKAGE_DIR / "manifest.json", extra / "notes.json")
    with pytest.raises(ModelPackageError, match="does not list"):
        import_package(extra, tmp_path / "models2")


def test_compatibility_warnings_compare_the_package_with_the_study(default_package):
    assert default_package.compatibility_warnings("CT", "lumbar") == []
    assert default_package.compatibility_warnings("mr", "lumbar") == []
    assert default_package.compatibility_warnings("", "") == []
    (cervical,) = default_package.compatibility_warnings("MR", "cervical")
    assert "lumbar levels only" in cervical and "located but not graded" in cervical
    (modality,) = default_package.compatibility_warnings("US", "lumbar")
    assert "CT, MR studies, not US" in modality
    thoracic = load_package(DEFAULT_PACKAGE_DIR)
    thoracic.manifest = dict(thoracic.manifest, detects_regions=["lumbar"])
    assert "not the cervical spine" in thoracic.compatibility_warnings("MR", "cervical")[0]


def test_a_level_of_a_run_the_package_does_not_grade_is_not_regraded(scene, lumbar_phantom, default_package):
    """A CT run, which the default package leaves ungraded (its grade scope): a moved box is not re-graded."""
    study, stack = lumbar_phantom
    result = _phantom_result(study, stack, default_package)
    result.study.modality = "CT"
    for level in result.levels:
        level.grade = None
    review = StudyReview.create(scene, result, scale="schizas")
    roi = _by_name(review, "L3-L4")
    with pytest.raises(InputError, match="shows its grade on MR studies only, not CT"):
        review.regrade_level(roi, stack, default_package)
    assert _level_of(review, "L3-L4").grade is None
    review.set_clinician_grade(roi, "B")  # the clinician grades it by hand
    assert _level_of(review, "L3-L4").correction.grade == "B"
