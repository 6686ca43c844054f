"""The MRML side of the module on real MRML (slicer-core).

slicer-core gives the real vtkMRMLScene, Markups ROI, table and subject hierarchy
nodes without the Slicer application, so ``SpineStenosisGraderLib.review.mrml`` is tested
here as it runs in Slicer. The module file is checked in test_module_file.py and
its Logic is run in test_module_logic.py.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pytest

slicer = pytest.importorskip("slicer")
vtk = pytest.importorskip("vtk")

from SpineStenosisGraderLib.review import mrml  # noqa: E402
from SpineStenosisGraderLib.result import (  # noqa: E402
    DiscLevel,
    GradePrediction,
    ModelInfo,
    OrientedBox,
    StudyInfo,
    StudyResult,
)
from SpineStenosisGraderLib.scales import SCHIZAS  # noqa: E402
from SpineStenosisGraderLib.outputs.report import NEUTRAL_COLOR  # noqa: E402


def _rotation(axis: str, degrees: float) -> np.ndarray:
    c, s = math.cos(math.radians(degrees)), math.sin(math.radians(degrees))
    if axis == "x":
        return np.array([[1, 0, 0], [0, c, -s], [0, s, c]])
    if axis == "z":
        return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])
    raise ValueError(axis)


# An oblique lumbar block: tilted 15 degrees about left-right and 8 degrees about the body axis.
OBLIQUE = _rotation("x", 15.0) @ _rotation("z", 8.0)


def _grade(grade: str, probs: dict[str, float], uncertain: bool = False) -> GradePrediction:
    return GradePrediction(task="central_canal", scale="schizas", grade=grade, probabilities=probs, uncertain=uncertain)


@pytest.fixture
def result() -> StudyResult:
    levels = [
        DiscLevel(
            name="L3-L4",
            slice_index=40,
            box=OrientedBox(center=(1.5, 22.0, -80.25), size=(18.0, 15.0, 4.0)),
            detection_score=0.97,
            grade=_grade("A", {"A": 0.91, "B": 0.06, "C": 0.02, "D": 0.01}),
        ),
        DiscLevel(
            name="L4-L5",
            slice_index=25,
            box=OrientedBox(
                center=(-2.0, 30.5, -112.0),
                size=(20.0, 16.0, 5.0),
                orientation=tuple(float(v) for v in OBLIQUE.reshape(-1)),
            ),
            detection_score=0.88,
            grade=_grade("C", {"A": 0.05, "B": 0.35, "C": 0.55, "D": 0.05}, uncertain=True),
            measurements={"dural_sac_area_mm2": 61.5},
        ),
        DiscLevel(
            name="L5-S1",
            slice_index=9,
            box=OrientedBox(center=(0.0, 35.0, -140.0), size=(22.0, 17.0, 5.0)),
            detection_score=0.71,
            grade=None,
        ),
    ]
    return StudyResult(
        study=StudyInfo(
            source="/data/case01/t2_axial.nii.gz",
            modality="MR",
            region="lumbar",
            n_slices=60,
            slice_spacing_mm=4.0,
            pixel_spacing_mm=(0.7, 0.7),
        ),
        model=ModelInfo(name="ssg-lumbar-t2", version="0.1.0", task="central_canal", trained_on="phantoms"),
        levels=levels,
        detections=[],
    )


def _new_scene():
    """A scene as Slicer has it: a selection node and the Markups logic's node classes."""
    scene = slicer.vtkMRMLScene()
    scene.AddNode(slicer.vtkMRMLSelectionNode())
    # Registers the markups storage nodes (ROI JSON) with the scene, as the app does.
    markups_logic = slicer.vtkSlicerMarkupsLogic()
    markups_logic.SetMRMLScene(scene)
    scene._test_markups_logic = markups_logic  # keep the logic alive with the scene
    return scene


@pytest.fixture
def scene():
    return _new_scene()


@pytest.fixture
def volume(scene):
    """A volume inside a patient/study, as loaded from DICOM."""
    volume = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "T2 axial")
    shnode = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    patient = shnode.CreateSubjectItem(shnode.GetSceneItemID(), "Patient 1")
    study = shnode.CreateStudyItem(patient, "MR lumbar spine")
    shnode.CreateItem(study, volume)
    return volume


def _ras(vector) -> np.ndarray:
    return np.array([-vector[0], -vector[1], vector[2]], dtype=float)


def _object_to_node(roi) -> np.ndarray:
    matrix = roi.GetObjectToNodeMatrix()
    return np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)])


# --- add_result_to_scene ---------------------------------------------------------------------


def test_one_box_roi_per_level_named_by_level(scene, volume, result):
    rois = mrml.add_result_to_scene(scene, result, volume)
    assert [roi.GetName() for roi in rois] == ["L3-L4", "L4-L5", "L5-S1"]
    assert all(roi.IsA("vtkMRMLMarkupsROINode") for roi in rois)
    assert all(roi.GetROIType() == slicer.vtkMRMLMarkupsROINode.ROITypeBox for roi in rois)
    assert scene.GetNumberOfNodesByClass("vtkMRMLMarkupsROINode") == 3


def test_roi_geometry_is_the_lps_box_in_ras(scene, volume, result):
    rois = mrml.add_result_to_scene(scene, result, volume)
    for roi, level in zip(rois, result.levels):
        np.testing.assert_allclose(roi.GetCenter(), _ras(level.box.center), atol=1e-12)
        np.testing.assert_allclose(roi.GetSize(), level.box.size, atol=1e-12)
        axes_ras = np.diag([-1.0, -1.0, 1.0]) @ level.box.axes()
        np.testing.assert_allclose(_object_to_node(roi)[:3, :3], axes_ras, atol=1e-12)
        for index in range(3):
            axis = [0.0, 0.0, 0.0]
            roi.GetAxis(index, axis)
            np.testing.assert_allclose(axis, axes_ras[:, index], atol=1e-12)


def test_oblique_roi_axes(scene, result):
    roi = mrml.add_result_to_scene(scene, result)[1]
    z_axis = [0.0, 0.0, 0.0]
    roi.GetZAxis(z_axis)
    # The box's slice normal in RAS: the LPS third column with x and y negated.
    np.testing.assert_allclose(z_axis, _ras(OBLIQUE[:, 2]), atol=1e-12)
    assert abs(z_axis[2]) < 1.0  # really oblique
    # Along the tilted slice normal the 5 mm thick box ends 2.5 mm from its centre.
    center = np.array(roi.GetCenter())
    # (IsPointInROIWorld: on slicer-core IsPointInROI answers True for any point.)
    assert roi.IsPointInROIWorld(list(center + 2.4 * np.asarray(z_axis)))
    assert not roi.IsPointInROIWorld(list(center + 2.6 * np.asarray(z_axis)))


def test_colours_follow_grade(scene, result):
    rois = mrml.add_result_to_scene(scene, result)
    expected = [SCHIZAS.grade_class("A").color, SCHIZAS.grade_class("C").color, NEUTRAL_COLOR]
    for roi, color in zip(rois, expected):
        display = roi.GetDisplayNode()
        assert display is not None
        np.testing.assert_allclose(display.GetSelectedColor(), color, atol=1e-12)
        np.testing.assert_allclose(display.GetColor(), color, atol=1e-12)


def test_attributes_and_description(scene, volume, result):
    rois = mrml.add_result_to_scene(scene, result, volume)
    l45 = rois[1]
    attr = lambda node, name: node.GetAttribute(mrml.ATTRIBUTE_PREFIX + name)  # noqa: E731
    assert attr(l45, "level") == "L4-L5"
    assert attr(l45, "grade") == "C"
    assert attr(l45, "scale") == "schizas"
    assert float(attr(l45, "probability")) == pytest.approx(0.55)
    assert attr(l45, "uncertain") == "true"
    assert json.loads(attr(l45, "probabilities"))["B"] == pytest.approx(0.35)
    assert json.loads(attr(l45, "measurements")) == {"dural_sac_area_mm2": 61.5}
    assert attr(l45, "modelName") == "ssg-lumbar-t2"
    assert attr(l45, "modelVersion") == "0.1.0"
    assert attr(l45, "sliceIndex") == "25"
    description = attr(l45, "description")
    # the fixture's names rest on no landmark, and the description says so
    assert description.startswith("L4-L5 (not anchored): ")
    assert attr(l45, "nameAnchored") == "false" and attr(l45, "nameConfidence") == "none"
    anchored = dataclasses.replace(result.levels[1], name_anchored=True, name_confidence="high")
    assert mrml.level_description(anchored, result.model).startswith("L4-L5: ")
    unsure = dataclasses.replace(anchored, name_confidence="low")
    assert mrml.level_description(unsure, result.model).startswith("L4-L5 (name unsure): ")
    assert "C: severe stenosis" in description
    assert "uncertain" in description
    assert "not for clinical use" in description
    # The ungraded level says so and carries no grade.
    assert attr(rois[2], "grade") is None
    assert "not graded" in attr(rois[2], "description")
    assert attr(rois[2], "levelId") and attr(rois[2], "levelId") != attr(l45, "levelId")
    assert json.loads(attr(l45, "aiBox")) == result.levels[1].box.to_dict()
    # Every ROI leads to the volume and the table.
    table = l45.GetNodeReference(mrml.TABLE_REFERENCE_ROLE)
    assert table is not None and table.IsA("vtkMRMLTableNode")
    assert all(roi.GetNodeReference(mrml.VOLUME_REFERENCE_ROLE) is volume for roi in rois)


def _table_rows(table) -> list[list[str]]:
    return [[table.GetCellText(r, c) for c in range(table.GetNumberOfColumns())] for r in range(table.GetNumberOfRows())]


def test_table_contents(scene, volume, result):
    rois = mrml.add_result_to_scene(scene, result, volume)
    tables = [scene.GetNthNodeByClass(i, "vtkMRMLTableNode") for i in range(scene.GetNumberOfNodesByClass("vtkMRMLTableNode"))]
    assert [t.GetName() for t in tables] == ["T2 axial stenosis grades"]
    table = tables[0]
    assert rois[0].GetNodeReference(mrml.TABLE_REFERENCE_ROLE) is table
    assert [table.GetColumnName(c) for c in range(table.GetNumberOfColumns())] == list(mrml.TABLE_COLUMNS)
    rows = [dict(zip(mrml.TABLE_COLUMNS, row)) for row in _table_rows(table)]
    assert [row["level"] for row in rows] == ["L3-L4", "L4-L5", "L5-S1"]
    assert [row["ai_level"] for row in rows] == ["L3-L4", "L4-L5", "L5-S1"]
    assert [row["name_status"] for row in rows] == ["not anchored"] * 3
    assert [row["ai_grade"] for row in rows] == ["A", "C", ""]
    probability = table.GetTable().GetColumnByName("probability")
    assert probability.GetValue(0) == pytest.approx(0.91)
    assert probability.GetValue(1) == pytest.approx(0.55)
    assert math.isnan(probability.GetValue(2))
    assert [row["uncertain"] for row in rows] == ["0", "1", "0"]
    assert [row["clinician_grade"] for row in rows] == ["", "", ""]
    assert [row["final_grade"] for row in rows] == ["A", "C", ""]
    assert [row["edited"] for row in rows] == ["0", "0", "0"]
    assert {row["model"] for row in rows} == {"ssg-lumbar-t2 0.1.0"}
    assert "schizas" in table.GetColumnDescription("ai_grade")


def test_run_folder_under_the_volume_study(scene, volume, result):
    rois = mrml.add_result_to_scene(scene, result, volume)
    shnode = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    study = shnode.GetItemParent(shnode.GetItemByDataNode(volume))
    assert shnode.GetItemLevel(study) == "Study"
    folder = shnode.GetItemParent(shnode.GetItemByDataNode(rois[0]))
    assert shnode.GetItemParent(folder) == study
    assert "ssg-lumbar-t2" in shnode.GetItemName(folder)
    table = rois[0].GetNodeReference(mrml.TABLE_REFERENCE_ROLE)
    children = vtk.vtkIdList()
    shnode.GetItemChildren(folder, children)
    in_folder = {shnode.GetItemDataNode(children.GetId(i)).GetID() for i in range(children.GetNumberOfIds())}
    assert in_folder == {node.GetID() for node in [*rois, table]}


def test_run_folder_under_scene_without_volume(scene, result):
    rois = mrml.add_result_to_scene(scene, result)
    shnode = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    folder = shnode.GetItemParent(shnode.GetItemByDataNode(rois[0]))
    assert shnode.GetItemParent(folder) == shnode.GetSceneItemID()
    table = rois[0].GetNodeReference(mrml.TABLE_REFERENCE_ROLE)
    assert table.GetName() == "t2_axial.nii.gz stenosis grades"


def test_two_runs_make_two_folders(scene, volume, result):
    first = mrml.add_result_to_scene(scene, result, volume)
    second = mrml.add_result_to_scene(scene, result, volume)
    shnode = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    folder_of = lambda node: shnode.GetItemParent(shnode.GetItemByDataNode(node))  # noqa: E731
    assert folder_of(first[0]) != folder_of(second[0])
    assert scene.GetNumberOfNodesByClass("vtkMRMLMarkupsROINode") == 6


# --- roi_to_box ------------------------------------------------------------------------------


def test_roi_to_box_round_trips_exactly(scene, result):
    rois = mrml.add_result_to_scene(scene, result)
    for roi, level in zip(rois, result.levels):
        box = mrml.roi_to_box(roi)
        assert box.size == level.box.size
        assert box.orientation == level.box.orientation
        if level.box.orientation == OrientedBox((0, 0, 0), (1, 1, 1)).orientation:
            assert box.center == level.box.center
        else:
            # The ROI re-derives an oblique box's centre through its own axes: off by ~1e-15 mm.
            np.testing.assert_allclose(box.center, level.box.center, rtol=0, atol=1e-9)


def test_roi_to_box_reads_a_user_edit(scene, result):
    roi = mrml.add_result_to_scene(scene, result)[0]
    # The user drags the box 5 mm to the patient's left (RAS -x, so LPS +x) and makes it taller.
    center = list(roi.GetCenter())
    roi.SetCenter(center[0] - 5.0, center[1], center[2])
    roi.SetSize(18.0, 15.0, 8.0)
    box = mrml.roi_to_box(roi)
    assert box.center == pytest.approx((result.levels[0].box.center[0] + 5.0, 22.0, -80.25))
    assert box.size == (18.0, 15.0, 8.0)


def test_roi_to_box_under_a_transform_is_in_world_lps(scene, result):
    roi = mrml.add_result_to_scene(scene, result)[1]
    transform = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode")
    matrix = vtk.vtkMatrix4x4()
    matrix.SetElement(2, 3, 10.0)  # 10 mm superior
    transform.SetMatrixTransformToParent(matrix)
    roi.SetAndObserveTransformNodeID(transform.GetID())
    box = mrml.roi_to_box(roi)
    expected = result.levels[1].box
    np.testing.assert_allclose(box.center, np.add(expected.center, (0.0, 0.0, 10.0)), atol=1e-9)
    np.testing.assert_allclose(box.size, expected.size, atol=1e-9)
    np.testing.assert_allclose(box.orientation, expected.orientation, atol=1e-9)


# --- save and reload -------------------------------------------------------------------------


def _save_scene(scene, directory: Path) -> Path:
    """Save as Slicer's Save dialog does: each storable node through its default storage node."""
    for class_name, extension in (("vtkMRMLMarkupsROINode", ".mrk.json"), ("vtkMRMLTableNode", ".tsv")):
        for index in range(scene.GetNumberOfNodesByClass(class_name)):
            node = scene.GetNthNodeByClass(index, class_name)
            assert node.AddDefaultStorageNode()
            storage = node.GetStorageNode()
            storage.SetFileName(str(directory / f"{node.GetID()}{extension}"))
            assert storage.WriteData(node), f"could not write {node.GetName()}"
    path = directory / "scene.mrml"
    scene.SetRootDirectory(str(directory))
    scene.SetURL(str(path))
    assert scene.Commit()
    return path


def test_save_and_reload_keeps_boxes_and_attributes(scene, volume, result, tmp_path):
    # L4-L5 lies where the detector lost the canal
    result.levels[1] = dataclasses.replace(result.levels[1], canal_seen=False)
    mrml.add_result_to_scene(scene, result, volume)
    path = _save_scene(scene, tmp_path)
    assert len(list(tmp_path.glob("*.mrk.json"))) == 3
    roi_file = json.loads(next(tmp_path.glob("*.mrk.json")).read_text())
    assert roi_file["markups"][0]["type"] == "ROI"
    assert roi_file["markups"][0]["coordinateSystem"] == "LPS"

    reloaded = _new_scene()
    reloaded.SetURL(str(path))
    assert reloaded.Import()

    rois = [reloaded.GetNthNodeByClass(i, "vtkMRMLMarkupsROINode") for i in range(3)]
    assert [roi.GetName() for roi in rois] == ["L3-L4", "L4-L5", "L5-S1"]
    for roi, level in zip(rois, result.levels):
        assert roi.GetStorageNode().IsA("vtkMRMLMarkupsROIJsonStorageNode")
        box = mrml.roi_to_box(roi)
        np.testing.assert_allclose(box.center, level.box.center, atol=1e-9)
        np.testing.assert_allclose(box.size, level.box.size, atol=1e-9)
        np.testing.assert_allclose(box.orientation, level.box.orientation, atol=1e-9)
        expected_grade = level.grade.grade if level.grade else None
        assert roi.GetAttribute(mrml.ATTRIBUTE_PREFIX + "grade") == expected_grade
        assert roi.GetAttribute(mrml.ATTRIBUTE_PREFIX + "modelName") == "ssg-lumbar-t2"
        # The markups description is not read back from .mrml; the attribute copy is.
        assert roi.GetAttribute(mrml.ATTRIBUTE_PREFIX + "description").startswith(level.name)
        np.testing.assert_allclose(roi.GetDisplayNode().GetSelectedColor(), mrml.grade_color(level), atol=1e-6)
        assert roi.GetNodeReference(mrml.VOLUME_REFERENCE_ROLE).GetName() == "T2 axial"
        assert mrml.roi_model_level(roi).canal_seen is level.canal_seen
    assert [level.canal_seen for level in result.levels] == [True, False, True]

    table = rois[0].GetNodeReference(mrml.TABLE_REFERENCE_ROLE)
    assert table.GetName() == "T2 axial stenosis grades"
    rows = [dict(zip(mrml.TABLE_COLUMNS, row)) for row in _table_rows(table)]
    assert [[row["level"], row["ai_level"], row["ai_grade"]] for row in rows] == [
        ["L3-L4", "L3-L4", "A"], ["L4-L5", "L4-L5", "C"], ["L5-S1", "L5-S1", ""]]
    assert [row["canal_seen"] for row in rows] == ["1", "0", "1"]

    shnode = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(reloaded)
    folder = shnode.GetItemParent(shnode.GetItemByDataNode(rois[0]))
    assert shnode.GetItemLevel(shnode.GetItemParent(folder)) == "Study"
