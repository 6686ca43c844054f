"""A StudyResult in an MRML scene: one ROI per disc level, a table, a folder.

This is the MRML-facing half of the Slicer module, kept free of Qt and of
``slicer.app`` so that it runs on the ``slicer-core`` wheel as well as inside
Slicer; the module's Logic only delegates here.

Boxes in a result are in LPS (files, ITK); MRML nodes live in RAS. Both
frames differ by negating x and y, so a box converts by negating the first two
rows of its centre and of its axis matrix (the axes stay the columns).

What persists where, learnt on slicer-core:
- an ROI's centre, size and axes are saved only by its storage node
  (``vtkMRMLMarkupsROIJsonStorageNode``, which Slicer picks by default), not in
  the ``.mrml`` XML;
- node attributes and node references are saved in ``.mrml`` (and ``.mrb``),
  not in ``.mrk.json``;
- a markups node owns its description: it rewrites it from its measurements
  whenever its geometry changes (so already while the box is placed) and does
  not read it back from ``.mrml``; the level's description text is therefore an
  attribute.
"""

from __future__ import annotations

import json
from typing import Optional

import numpy as np
import slicer
import vtk

from .result import DiscLevel, ModelInfo, OrientedBox, StudyResult
from .report import grade_color
from .scales import get_scale

#: prefix of every node attribute this module writes (Slicer's "Module.name" convention)
ATTRIBUTE_PREFIX = "SpineStenosisGrader."
#: node reference roles from each level ROI to the graded volume and to the results table
VOLUME_REFERENCE_ROLE = "spineStenosisGraderVolume"
TABLE_REFERENCE_ROLE = "spineStenosisGraderTable"

TABLE_COLUMNS = ("level", "grade", "probability", "uncertain", "model")

# LPS <-> RAS: the same diagonal both ways.
_FLIP_XY = np.diag([-1.0, -1.0, 1.0])


def _attr(name: str) -> str:
    return ATTRIBUTE_PREFIX + name


def box_to_ras(box: OrientedBox) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Centre (3,), size (3,) and axes (3x3, axes as columns) of ``box`` in RAS."""
    center = _FLIP_XY @ np.asarray(box.center, dtype=float)
    axes = _FLIP_XY @ box.axes()
    return center, np.asarray(box.size, dtype=float), axes


def set_roi_box(roi: "slicer.vtkMRMLMarkupsROINode", box: OrientedBox) -> None:
    """Place ``roi`` on ``box`` (LPS), as an oriented box ROI in its node coordinates."""
    center, size, axes = box_to_ras(box)
    object_to_node = vtk.vtkMatrix4x4()
    for row in range(3):
        for col in range(3):
            object_to_node.SetElement(row, col, float(axes[row, col]))
        object_to_node.SetElement(row, 3, float(center[row]))
    was_modifying = roi.StartModify()
    roi.SetROIType(slicer.vtkMRMLMarkupsROINode.ROITypeBox)
    roi.SetAndObserveObjectToNodeMatrix(object_to_node)
    roi.SetSize(*(float(v) for v in size))
    roi.EndModify(was_modifying)


def roi_to_box(node: "slicer.vtkMRMLMarkupsROINode") -> OrientedBox:
    """The box of an ROI node in LPS, e.g. after a user moved or resized it.

    Node coordinates are used as they are, so ``set_roi_box`` round-trips: size and
    axes exactly, the centre exactly for an axis-aligned box and to ~1e-15 mm for an
    oblique one (the ROI re-derives it through its axes). If the ROI sits under a
    transform, its world box is returned instead, with the axes renormalised because
    a transform may scale them.
    """
    if node.GetParentTransformNode() is None:
        matrix = node.GetObjectToNodeMatrix()
        center = np.array(node.GetCenter(), dtype=float)
        size = np.array(node.GetSize(), dtype=float)
        axes = np.array([[matrix.GetElement(r, c) for c in range(3)] for r in range(3)], dtype=float)
    else:
        matrix = node.GetObjectToWorldMatrix()
        center_world = [0.0, 0.0, 0.0]
        node.GetCenterWorld(center_world)
        center = np.array(center_world, dtype=float)
        size_world = [0.0, 0.0, 0.0]
        node.GetSizeWorld(size_world)
        size = np.array(size_world, dtype=float)
        axes = np.array([[matrix.GetElement(r, c) for c in range(3)] for r in range(3)], dtype=float)
        axes = axes / np.linalg.norm(axes, axis=0, keepdims=True)
    center_lps = _FLIP_XY @ center
    axes_lps = _FLIP_XY @ axes
    return OrientedBox(
        center=tuple(float(v) for v in center_lps),
        size=tuple(float(v) for v in size),
        orientation=tuple(float(v) for v in axes_lps.reshape(-1)),
    )


def level_description(level: DiscLevel, model: ModelInfo) -> str:
    """One line for the user: level, grade with its meaning, confidence, model, caveat."""
    if level.grade is None:
        grade_text = "not graded"
    else:
        grade = level.grade
        try:
            scale = get_scale(grade.scale)
            grade_text = f"{scale.title}: {scale.grade_class(grade.grade).label}"
        except KeyError:
            grade_text = f"{grade.scale}: {grade.grade}"
        grade_text += f" (p={grade.probability:.2f}{', uncertain' if grade.uncertain else ''})"
    caveat = model.clinical_use or "not for clinical use"
    return f"{level.name}: {grade_text}. Model {model.name} {model.version}; {caveat}."


def _set_level_attributes(roi, level: DiscLevel, model: ModelInfo, description: str) -> None:
    roi.SetAttribute(_attr("level"), level.name)
    roi.SetAttribute(_attr("sliceIndex"), str(int(level.slice_index)))
    roi.SetAttribute(_attr("detectionScore"), repr(float(level.detection_score)))
    if level.grade is not None:
        roi.SetAttribute(_attr("task"), level.grade.task)
        roi.SetAttribute(_attr("scale"), level.grade.scale)
        roi.SetAttribute(_attr("grade"), level.grade.grade)
        roi.SetAttribute(_attr("probability"), repr(level.grade.probability))
        roi.SetAttribute(_attr("probabilities"), json.dumps(level.grade.probabilities))
        roi.SetAttribute(_attr("uncertain"), "true" if level.grade.uncertain else "false")
    if level.measurements:
        roi.SetAttribute(_attr("measurements"), json.dumps(level.measurements))
    roi.SetAttribute(_attr("modelName"), model.name)
    roi.SetAttribute(_attr("modelVersion"), model.version)
    roi.SetAttribute(_attr("clinicalUse"), model.clinical_use)
    roi.SetAttribute(_attr("description"), description)


def add_level_roi(scene, level: DiscLevel, model: ModelInfo) -> "slicer.vtkMRMLMarkupsROINode":
    """One box ROI for ``level``, named by the level and coloured by its grade."""
    roi = scene.AddNewNodeByClass("vtkMRMLMarkupsROINode", level.name)
    roi.CreateDefaultDisplayNodes()
    set_roi_box(roi, level.box)
    _set_level_attributes(roi, level, model, level_description(level, model))
    display = roi.GetDisplayNode()
    if display is not None:
        color = grade_color(level)
        # Markups draw with SelectedColor by default and with Color when unselected.
        display.SetSelectedColor(*color)
        display.SetColor(*color)
    return roi


def add_result_table(scene, result: StudyResult, name: str) -> "slicer.vtkMRMLTableNode":
    """A table with one row per level: level, grade, probability, uncertain, model."""
    table_node = scene.AddNewNodeByClass("vtkMRMLTableNode", name)
    was_modifying = table_node.StartModify()
    columns = {
        "level": vtk.vtkStringArray(),
        "grade": vtk.vtkStringArray(),
        "probability": vtk.vtkDoubleArray(),
        "uncertain": vtk.vtkIntArray(),
        "model": vtk.vtkStringArray(),
    }
    model_text = f"{result.model.name} {result.model.version}"
    for level in result.levels:
        grade = level.grade
        columns["level"].InsertNextValue(level.name)
        columns["grade"].InsertNextValue(grade.grade if grade else "")
        columns["probability"].InsertNextValue(grade.probability if grade else float("nan"))
        columns["uncertain"].InsertNextValue(int(bool(grade and grade.uncertain)))
        columns["model"].InsertNextValue(model_text)
    for column_name in TABLE_COLUMNS:
        columns[column_name].SetName(column_name)
        table_node.AddColumn(columns[column_name])
    scale_names = sorted({lv.grade.scale for lv in result.levels if lv.grade is not None})
    table_node.SetColumnDescription("level", "Intervertebral disc level")
    table_node.SetColumnDescription("grade", "Grade on the scale: " + (", ".join(scale_names) or "none"))
    table_node.SetColumnDescription("probability", "Model probability of the grade")
    table_node.SetColumnDescription("uncertain", "1 if the model flags the grade as uncertain")
    table_node.SetColumnDescription("model", "Model package name and version")
    table_node.SetAttribute(_attr("modelName"), result.model.name)
    table_node.SetAttribute(_attr("modelVersion"), result.model.version)
    table_node.SetAttribute(_attr("clinicalUse"), result.model.clinical_use)
    table_node.EndModify(was_modifying)
    return table_node


def _subject_hierarchy(scene):
    """The scene's subject hierarchy node, or None where this MRML build has none."""
    shnode_class = getattr(slicer, "vtkMRMLSubjectHierarchyNode", None)
    if shnode_class is None:
        return None
    return shnode_class.GetSubjectHierarchyNode(scene)


def place_in_subject_hierarchy(scene, nodes: list, volume_node, folder_name: str) -> Optional[int]:
    """Put ``nodes`` into a new folder beside the volume: under its study if it has one.

    Inside Slicer every node already has an item (a Qt plugin makes it); on
    slicer-core none does, so a missing item is created here. Returns the folder's
    item ID, or None without subject hierarchy.
    """
    shnode = _subject_hierarchy(scene)
    if shnode is None:
        return None
    invalid = shnode.GetInvalidItemID()
    parent = shnode.GetSceneItemID()
    if volume_node is not None:
        volume_item = shnode.GetItemByDataNode(volume_node)
        if volume_item != invalid:
            study_level = slicer.vtkMRMLSubjectHierarchyConstants.GetDICOMLevelStudy()
            study_item = shnode.GetItemAncestorAtLevel(volume_item, study_level)
            parent = study_item if study_item != invalid else shnode.GetItemParent(volume_item)
    folder = shnode.CreateFolderItem(parent, folder_name)
    for node in nodes:
        item = shnode.GetItemByDataNode(node)
        if item == invalid:
            shnode.CreateItem(folder, node)
        else:
            shnode.SetItemParent(item, folder)
    return folder


def add_result_to_scene(scene, result: StudyResult, volume_node=None) -> list:
    """Add ``result`` to ``scene``: ROIs (one per level, in level order), a table and a folder.

    The ROIs reference ``volume_node`` and the table (roles ``VOLUME_REFERENCE_ROLE``,
    ``TABLE_REFERENCE_ROLE``), so a review panel finds the whole run from any ROI.
    Clinician corrections in ``result`` are not applied here; the AI values are shown.
    """
    if volume_node is not None and volume_node.GetName():
        study_name = volume_node.GetName()
    else:
        study_name = result.study.source.replace("\\", "/").rstrip("/").split("/")[-1] or "Study"

    rois = [add_level_roi(scene, level, result.model) for level in result.levels]
    table_node = add_result_table(scene, result, f"{study_name} stenosis grades")
    for roi in rois:
        roi.SetNodeReferenceID(TABLE_REFERENCE_ROLE, table_node.GetID())
        if volume_node is not None:
            roi.SetNodeReferenceID(VOLUME_REFERENCE_ROLE, volume_node.GetID())

    folder_name = f"{study_name} stenosis grading ({result.model.name} {result.model.version})"
    folder = place_in_subject_hierarchy(scene, [*rois, table_node], volume_node, folder_name)
    if folder is not None:
        shnode = _subject_hierarchy(scene)
        shnode.SetItemAttribute(folder, _attr("modelName"), result.model.name)
        shnode.SetItemAttribute(folder, _attr("modelVersion"), result.model.version)
    return rois
