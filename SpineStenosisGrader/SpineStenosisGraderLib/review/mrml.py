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

So a level keeps its model values in attributes of its ROI (with the model's
box as ``aiBox``), and the clinician's changes live where the clinician makes
them: the box and name in the ROI itself, the grade (with who and when) in a
``correction`` attribute. The run's own record (study, model, detections, the
levels as last seen, removed levels) is a JSON attribute of the results table.
Node IDs are not kept in JSON: Slicer renames IDs when it imports a scene into
a non-empty one; each level carries a ``levelId`` of its own instead.
"""

from __future__ import annotations

import datetime
import json
import uuid
from typing import Any

import numpy as np
import slicer
import vtk

from ..outputs.report import effective_grade, effective_name, grade_color, name_status
from ..result import ClinicianCorrection, DiscLevel, GradePrediction, ModelInfo, OrientedBox, StudyResult
from ..scales import get_scale

#: prefix of every node attribute this module writes (Slicer's "Module.name" convention)
ATTRIBUTE_PREFIX = "SpineStenosisGrader."
#: node reference roles from each level ROI to the graded volume and to the results table
VOLUME_REFERENCE_ROLE = "spineStenosisGraderVolume"
TABLE_REFERENCE_ROLE = "spineStenosisGraderTable"

TABLE_COLUMNS = ("level", "ai_level", "name_status", "canal_seen", "ai_grade", "probability", "uncertain",
                 "clinician_grade", "final_grade", "edited", "model")

#: attributes of the results table: the run as last recorded (StudyResult JSON), the levelId of each of
#: its levels, the levels the clinician removed, the grading scale, when the run was made, its re-runs
RUN_ATTRIBUTE = ATTRIBUTE_PREFIX + "result"
LEVEL_IDS_ATTRIBUTE = ATTRIBUTE_PREFIX + "levelIds"
REMOVED_ATTRIBUTE = ATTRIBUTE_PREFIX + "removedLevels"
SCALE_ATTRIBUTE = ATTRIBUTE_PREFIX + "scale"
CREATED_ATTRIBUTE = ATTRIBUTE_PREFIX + "created"
HISTORY_ATTRIBUTE = ATTRIBUTE_PREFIX + "history"
#: attributes of a level ROI beside the model values: its identity, the model's box, the box the model
#: grade was computed on (after a re-grade), and the clinician's grade, author, note, time and "added" flag
LEVEL_ID_ATTRIBUTE = ATTRIBUTE_PREFIX + "levelId"
AI_BOX_ATTRIBUTE = ATTRIBUTE_PREFIX + "aiBox"
GRADED_BOX_ATTRIBUTE = ATTRIBUTE_PREFIX + "gradedBox"
CORRECTION_ATTRIBUTE = ATTRIBUTE_PREFIX + "correction"

#: a box within these of another is the same box: an ROI re-derives its centre through its axes, and
#: a saved and reloaded scene prints every number, so an untouched box drifts by ~1e-12 mm
SAME_BOX_MM = 1e-3
SAME_AXIS = 1e-6

_GRADE_ATTRIBUTES = ("task", "scale", "grade", "probability", "probabilities", "uncertain")

# LPS <-> RAS: the same diagonal both ways.
_FLIP_XY = np.diag([-1.0, -1.0, 1.0])


def _attr(name: str) -> str:
    return ATTRIBUTE_PREFIX + name


def utc_timestamp() -> str:
    """Now, as ISO 8601 in UTC to the microsecond (so that two runs made in one second still sort)."""
    return datetime.datetime.now(datetime.timezone.utc).isoformat()


def box_to_ras(box: OrientedBox) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Centre (3,), size (3,) and axes (3x3, axes as columns) of ``box`` in RAS."""
    center = _FLIP_XY @ np.asarray(box.center, dtype=float)
    axes = _FLIP_XY @ box.axes()
    return center, np.asarray(box.size, dtype=float), axes


def set_roi_box(roi: slicer.vtkMRMLMarkupsROINode, box: OrientedBox) -> None:
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


def roi_to_box(node: slicer.vtkMRMLMarkupsROINode) -> OrientedBox:
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
    """One line for the user: level, grade with its meaning, confidence, clinician grade, model, caveat."""
    name = effective_name(level)
    if level.correction is not None and level.correction.added:
        name += " (added by the clinician)"
    elif name != level.name:
        name += f" (model: {level.name})"
    elif name_status(level):
        name += f" ({name_status(level)})"
    if level.grade is None:
        grade_text = "not graded by the model"
    else:
        grade = level.grade
        try:
            scale = get_scale(grade.scale)
            grade_text = f"{scale.title}: {scale.grade_class(grade.grade).label}"
        except KeyError:
            grade_text = f"{grade.scale}: {grade.grade}"
        grade_text += f" (p={grade.probability:.2f}{', uncertain' if grade.uncertain else ''})"
    correction = level.correction
    if correction is not None and correction.grade:
        grade_text += f"; clinician grade {correction.grade}" + (f" ({correction.author})" if correction.author else "")
    caveat = model.clinical_use or "not for clinical use"
    return f"{name}: {grade_text}. Model {model.name} {model.version}; {caveat}."


def set_level_attributes(roi, level: DiscLevel, model: ModelInfo) -> None:
    """Store the model's values of ``level`` (name, slice, box, score, grade, measurements) on ``roi``.

    Values ``level`` lacks (a grade, measurements) are removed, so a re-run that
    no longer grades a level leaves no stale grade behind. The clinician's
    correction is not touched; the level gets a ``levelId`` if it has none.
    """
    roi.SetAttribute(_attr("level"), level.name)
    roi.SetAttribute(_attr("sliceIndex"), str(int(level.slice_index)))
    roi.SetAttribute(_attr("detectionScore"), repr(float(level.detection_score)))
    set_name_anchoring(roi, level.name_anchored, level.name_confidence, level.region)
    roi.SetAttribute(_attr("canalSeen"), "true" if level.canal_seen else "false")
    roi.SetAttribute(AI_BOX_ATTRIBUTE, json.dumps(level.box.to_dict()))
    roi.RemoveAttribute(GRADED_BOX_ATTRIBUTE)
    if level.grade is not None:
        _set_grade_attributes(roi, level.grade)
    else:
        for name in _GRADE_ATTRIBUTES:
            roi.RemoveAttribute(_attr(name))
    if level.measurements:
        roi.SetAttribute(_attr("measurements"), json.dumps(level.measurements))
    else:
        roi.RemoveAttribute(_attr("measurements"))
    roi.SetAttribute(_attr("modelName"), model.name)
    roi.SetAttribute(_attr("modelVersion"), model.version)
    roi.SetAttribute(_attr("clinicalUse"), model.clinical_use)
    if not roi.GetAttribute(LEVEL_ID_ATTRIBUTE):
        roi.SetAttribute(LEVEL_ID_ATTRIBUTE, uuid.uuid4().hex)


def set_name_anchoring(roi, anchored: bool, confidence: str, region: str) -> None:
    """Store whether the level's name rests on a landmark (or the clinician's anchor), and how sure it is."""
    roi.SetAttribute(_attr("nameAnchored"), "true" if anchored else "false")
    roi.SetAttribute(_attr("nameConfidence"), confidence)
    roi.SetAttribute(_attr("region"), region)


def set_model_grade(roi, grade: GradePrediction, slice_index: int) -> None:
    """Replace the model grade stored on ``roi`` (a re-grade), keeping its other model values."""
    roi.SetAttribute(_attr("sliceIndex"), str(int(slice_index)))
    _set_grade_attributes(roi, grade)


def _set_grade_attributes(roi, grade: GradePrediction) -> None:
    roi.SetAttribute(_attr("task"), grade.task)
    roi.SetAttribute(_attr("scale"), grade.scale)
    roi.SetAttribute(_attr("grade"), grade.grade)
    roi.SetAttribute(_attr("probability"), repr(grade.probability))
    roi.SetAttribute(_attr("probabilities"), json.dumps(grade.probabilities))
    roi.SetAttribute(_attr("uncertain"), "true" if grade.uncertain else "false")


def show_level(roi, level: DiscLevel, model: ModelInfo) -> None:
    """Colour ``roi`` by the level's grade that counts (the clinician's first) and describe it."""
    roi.SetAttribute(_attr("description"), level_description(level, model))
    display = roi.GetDisplayNode()
    if display is not None:
        color = grade_color(level)
        # Markups draw with SelectedColor by default and with Color when unselected.
        display.SetSelectedColor(*color)
        display.SetColor(*color)


def add_level_roi(scene, level: DiscLevel, model: ModelInfo) -> slicer.vtkMRMLMarkupsROINode:
    """One box ROI for ``level``, named by the level and coloured by its grade."""
    roi = scene.AddNewNodeByClass("vtkMRMLMarkupsROINode", level.name)
    roi.CreateDefaultDisplayNodes()
    set_roi_box(roi, level.box)
    set_level_attributes(roi, level, model)
    show_level(roi, level, model)
    return roi


def is_level_roi(node) -> bool:
    """True if ``node`` is an ROI holding a disc level of a run."""
    return node is not None and node.IsA("vtkMRMLMarkupsROINode") and bool(node.GetAttribute(LEVEL_ID_ATTRIBUTE))


def same_box(a: OrientedBox, b: OrientedBox) -> bool:
    """True when two boxes are one box up to the round-off of an ROI and of a saved scene."""
    return (np.allclose(a.center, b.center, rtol=0, atol=SAME_BOX_MM)
            and np.allclose(a.size, b.size, rtol=0, atol=SAME_BOX_MM)
            and np.allclose(a.orientation, b.orientation, rtol=0, atol=SAME_AXIS))


def json_attribute(node, name: str, default: Any) -> Any:
    """The JSON value of a node attribute, ``default`` if it has none; a damaged one is a ValueError."""
    text = node.GetAttribute(name)
    if not text:
        return default
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        raise ValueError(f"the {name} attribute of {node.GetName()} is damaged (not JSON)") from None


def roi_model_level(roi) -> DiscLevel:
    """The model's values of the level on ``roi``, as stored by :func:`set_level_attributes` (no correction).

    An ROI stored before boxes were kept (no ``aiBox``) takes its current box as the model's.
    """
    def number(name: str, default: str) -> float:
        return float(roi.GetAttribute(_attr(name)) or default)

    box_data = json_attribute(roi, AI_BOX_ATTRIBUTE, None)
    grade = None
    if roi.GetAttribute(_attr("grade")):
        grade = GradePrediction(
            task=roi.GetAttribute(_attr("task")) or "",
            scale=roi.GetAttribute(_attr("scale")) or "",
            grade=roi.GetAttribute(_attr("grade")),
            probabilities={k: float(v) for k, v in json_attribute(roi, _attr("probabilities"), {}).items()},
            uncertain=roi.GetAttribute(_attr("uncertain")) == "true",
        )
    return DiscLevel(
        name=roi.GetAttribute(_attr("level")) or roi.GetName(),
        slice_index=int(number("sliceIndex", "0")),
        box=OrientedBox.from_dict(box_data) if box_data else roi_to_box(roi),
        detection_score=number("detectionScore", "0"),
        grade=grade,
        measurements={k: float(v) for k, v in json_attribute(roi, _attr("measurements"), {}).items()},
        region=roi.GetAttribute(_attr("region")) or "",
        name_anchored=roi.GetAttribute(_attr("nameAnchored")) == "true",
        name_confidence=roi.GetAttribute(_attr("nameConfidence")) or "none",
        # an ROI stored before the attribute had its level where the canal was seen
        canal_seen=roi.GetAttribute(_attr("canalSeen")) != "false",
    )


def roi_graded_box(roi) -> OrientedBox:
    """The box the level's model grade was computed on: the model's, or the one of the last re-grade."""
    data = json_attribute(roi, GRADED_BOX_ATTRIBUTE, None)
    return OrientedBox.from_dict(data) if data else roi_model_level(roi).box


def set_graded_box(roi, box: OrientedBox) -> None:
    roi.SetAttribute(GRADED_BOX_ATTRIBUTE, json.dumps(box.to_dict()))


def read_level(roi) -> DiscLevel:
    """The level on ``roi`` as it stands: the model's values, and the clinician's changes beside them.

    The box is a correction when the ROI no longer sits on the model's box, the
    name when the ROI is named otherwise than the model's level; the grade,
    author, note, time and "added" flag come from the ``correction`` attribute.
    """
    level = roi_model_level(roi)
    stored = json_attribute(roi, CORRECTION_ATTRIBUTE, {})
    box = roi_to_box(roi)
    correction = ClinicianCorrection(
        grade=stored.get("grade") or None,
        name=roi.GetName() if roi.GetName() != level.name else None,
        box=None if same_box(box, level.box) else box,
        author=stored.get("author", ""),
        note=stored.get("note", ""),
        added=bool(stored.get("added", False)),
        time=stored.get("time", ""),
    )
    level.correction = correction
    if not level.edited and not correction.note:
        level.correction = None  # e.g. a grade set and cleared again
    return level


def write_correction(roi, correction: ClinicianCorrection | None) -> None:
    """Store the parts of a correction that the ROI's box and name do not hold: grade, author, note, time, added."""
    if correction is None:
        roi.RemoveAttribute(CORRECTION_ATTRIBUTE)
        return
    roi.SetAttribute(CORRECTION_ATTRIBUTE, json.dumps({
        "grade": correction.grade, "author": correction.author, "note": correction.note,
        "added": bool(correction.added), "time": correction.time,
    }))


def remove_level_roi(roi) -> None:
    """Delete a level's ROI with its display and storage nodes and its subject hierarchy item."""
    scene = roi.GetScene()
    if scene is None:
        return
    companions = [roi.GetNthDisplayNode(i) for i in range(roi.GetNumberOfDisplayNodes())]
    companions.append(roi.GetStorageNode())
    shnode = _subject_hierarchy(scene)
    item = shnode.GetItemByDataNode(roi) if shnode is not None else None
    if item is not None and item != shnode.GetInvalidItemID():
        # the item first: on slicer-core no logic removes the item of a removed node
        shnode.RemoveItem(item, False, False)
    scene.RemoveNode(roi)
    for node in companions:
        if node is not None and node.GetScene() is not None:
            scene.RemoveNode(node)


_COLUMN_DESCRIPTIONS = {
    "level": "Intervertebral disc level (the clinician's name if they renamed it)",
    "ai_level": "The level's name as the model numbered it",
    "ai_grade": "Model grade on the scale: {scales}",
    "probability": "Model probability of its grade",
    "uncertain": "1 if the model flags its grade as uncertain",
    "clinician_grade": "Grade given by the clinician (empty: none)",
    "name_status": "Empty when a landmark in the study (or the clinician) fixed the name; 'not anchored' when "
                   "the levels were only counted from the end of the study; 'name unsure' when the landmark was "
                   "far from the level",
    "canal_seen": "0 where the detector lost the canal at the level: its box is interpolated from the slices above "
                  "and below, and the CSF may be effaced by a severe stenosis",
    "final_grade": "The grade that counts: the clinician's if given, else the model's",
    "edited": "1 if a clinician changed the level: grade, name or box, or added it",
    "model": "Model package name and version",
}


def write_result_table(table_node, result: StudyResult) -> None:
    """(Re)write the table's rows from ``result``: one per level, model and clinician values side by side."""
    was_modifying = table_node.StartModify()
    table_node.RemoveAllColumns()
    kinds = {"probability": vtk.vtkDoubleArray, "uncertain": vtk.vtkIntArray, "edited": vtk.vtkIntArray,
             "canal_seen": vtk.vtkIntArray}
    columns = {name: kinds.get(name, vtk.vtkStringArray)() for name in TABLE_COLUMNS}
    model_text = f"{result.model.name} {result.model.version}"
    for level in result.levels:
        grade, correction = level.grade, level.correction
        columns["level"].InsertNextValue(effective_name(level))
        columns["ai_level"].InsertNextValue("" if correction is not None and correction.added else level.name)
        columns["name_status"].InsertNextValue(name_status(level))
        columns["canal_seen"].InsertNextValue(int(level.canal_seen))
        columns["ai_grade"].InsertNextValue(grade.grade if grade else "")
        columns["probability"].InsertNextValue(grade.probability if grade else float("nan"))
        columns["uncertain"].InsertNextValue(int(bool(grade and grade.uncertain)))
        columns["clinician_grade"].InsertNextValue((correction.grade or "") if correction else "")
        columns["final_grade"].InsertNextValue(effective_grade(level) or "")
        columns["edited"].InsertNextValue(int(level.edited))
        columns["model"].InsertNextValue(model_text)
    for column_name in TABLE_COLUMNS:
        columns[column_name].SetName(column_name)
        table_node.AddColumn(columns[column_name])
    scale_names = sorted({lv.grade.scale for lv in result.levels if lv.grade is not None})
    for column_name, description in _COLUMN_DESCRIPTIONS.items():
        table_node.SetColumnDescription(column_name, description.format(scales=", ".join(scale_names) or "none"))
    table_node.SetAttribute(_attr("modelName"), result.model.name)
    table_node.SetAttribute(_attr("modelVersion"), result.model.version)
    table_node.SetAttribute(_attr("clinicalUse"), result.model.clinical_use)
    table_node.EndModify(was_modifying)


def add_result_table(scene, result: StudyResult, name: str) -> slicer.vtkMRMLTableNode:
    """A table with one row per level; see :func:`write_result_table`."""
    table_node = scene.AddNewNodeByClass("vtkMRMLTableNode", name)
    write_result_table(table_node, result)
    return table_node


def store_run(table_node, result: StudyResult, level_ids: list[str]) -> None:
    """Record the run on its table: ``result`` as JSON and the ``levelId`` of each of its levels, in order."""
    if len(level_ids) != len(result.levels):
        raise ValueError("one levelId per level is needed")
    table_node.SetAttribute(RUN_ATTRIBUTE, _run_json(result))
    table_node.SetAttribute(LEVEL_IDS_ATTRIBUTE, json.dumps(list(level_ids)))


def _run_json(result: StudyResult) -> str:
    return json.dumps(result.to_dict(), separators=(",", ":"))


def is_stored_run(table_node, result: StudyResult, level_ids: list[str]) -> bool:
    """True if the table already records exactly this run (see :func:`store_run`)."""
    return (table_node.GetAttribute(RUN_ATTRIBUTE) == _run_json(result)
            and table_node.GetAttribute(LEVEL_IDS_ATTRIBUTE) == json.dumps(list(level_ids)))


def stored_run(table_node) -> tuple[StudyResult, list[str]]:
    """The run as last recorded on its table by :func:`store_run`, and its levels' ``levelId``."""
    text = table_node.GetAttribute(RUN_ATTRIBUTE)
    if not text:
        raise ValueError(f"{table_node.GetName()} holds no stenosis grading run")
    return StudyResult.from_json(text), list(json_attribute(table_node, LEVEL_IDS_ATTRIBUTE, []))


def _subject_hierarchy(scene):
    """The scene's subject hierarchy node, or None where this MRML build has none."""
    shnode_class = getattr(slicer, "vtkMRMLSubjectHierarchyNode", None)
    if shnode_class is None:
        return None
    return shnode_class.GetSubjectHierarchyNode(scene)


def place_in_subject_hierarchy(scene, nodes: list, volume_node, folder_name: str) -> int | None:
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
    put_in_folder(scene, folder, nodes)
    return folder


def put_in_folder(scene, folder: int | None, nodes: list) -> None:
    """Move ``nodes`` under the subject hierarchy item ``folder`` (nothing without subject hierarchy)."""
    shnode = _subject_hierarchy(scene)
    if shnode is None or folder is None or folder == shnode.GetInvalidItemID():
        return
    for node in nodes:
        item = shnode.GetItemByDataNode(node)
        if item == shnode.GetInvalidItemID():
            shnode.CreateItem(folder, node)
        else:
            shnode.SetItemParent(item, folder)


def run_folder(table_node) -> int | None:
    """The subject hierarchy folder of the run whose table is ``table_node``, or None."""
    scene = table_node.GetScene()
    shnode = _subject_hierarchy(scene) if scene is not None else None
    if shnode is None:
        return None
    item = shnode.GetItemByDataNode(table_node)
    if item == shnode.GetInvalidItemID():
        return None
    return shnode.GetItemParent(item)


def name_run_folder(scene, folder: int | None, study_name: str, model: ModelInfo) -> None:
    """Name the run's folder after the study and the model that graded it."""
    shnode = _subject_hierarchy(scene)
    if shnode is None or folder is None or folder == shnode.GetInvalidItemID():
        return
    shnode.SetItemName(folder, f"{study_name} stenosis grading ({model.name} {model.version})")
    shnode.SetItemAttribute(folder, _attr("modelName"), model.name)
    shnode.SetItemAttribute(folder, _attr("modelVersion"), model.version)


def study_name(result: StudyResult, volume_node=None) -> str:
    """The name a run is shown under: the volume's, else the study file's."""
    if volume_node is not None and volume_node.GetName():
        return volume_node.GetName()
    return result.study.source.replace("\\", "/").rstrip("/").split("/")[-1] or "Study"


def add_run_to_scene(scene, result: StudyResult, volume_node=None) -> tuple[slicer.vtkMRMLTableNode, list]:
    """Add ``result`` to ``scene``: a table, ROIs (one per level, in level order) and a folder.

    The ROIs reference ``volume_node`` and the table (roles ``VOLUME_REFERENCE_ROLE``,
    ``TABLE_REFERENCE_ROLE``), and the table the volume, so a review panel finds the
    whole run from any of them. The run is recorded on the table (:func:`store_run`).
    Clinician corrections in ``result`` are not applied here; the AI values are shown
    (``review.StudyReview.create`` applies them).
    """
    name = study_name(result, volume_node)
    rois = [add_level_roi(scene, level, result.model) for level in result.levels]
    table_node = add_result_table(scene, result, f"{name} stenosis grades")
    if volume_node is not None:
        table_node.SetNodeReferenceID(VOLUME_REFERENCE_ROLE, volume_node.GetID())
    for roi in rois:
        roi.SetNodeReferenceID(TABLE_REFERENCE_ROLE, table_node.GetID())
        if volume_node is not None:
            roi.SetNodeReferenceID(VOLUME_REFERENCE_ROLE, volume_node.GetID())
    store_run(table_node, result, [roi.GetAttribute(LEVEL_ID_ATTRIBUTE) for roi in rois])
    table_node.SetAttribute(CREATED_ATTRIBUTE, utc_timestamp())
    scales = sorted({lv.grade.scale for lv in result.levels if lv.grade is not None})
    if len(scales) == 1:
        table_node.SetAttribute(SCALE_ATTRIBUTE, scales[0])

    folder = place_in_subject_hierarchy(scene, [*rois, table_node], volume_node, name)
    name_run_folder(scene, folder, name, result.model)
    return table_node, rois


def add_result_to_scene(scene, result: StudyResult, volume_node=None) -> list:
    """Add ``result`` to ``scene`` (see :func:`add_run_to_scene`) and return the level ROIs, in level order."""
    return add_run_to_scene(scene, result, volume_node)[1]
