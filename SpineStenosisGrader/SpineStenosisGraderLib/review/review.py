"""Review one grading run in an MRML scene: correct it, re-grade a box, merge a re-run, export.

A run in a scene is its results table and one box ROI per disc level (made by
``mrml.add_run_to_scene``). A ``StudyReview`` holds no state of its own: it
reads the scene every time, so whatever the user did in Slicer (dragging a
box's handles, renaming or deleting a node in the Data module) is what it sees,
and whatever it does is in the scene, saved with it (``.mrb``) and back after
a reload. Only the ROIs of a run and its table are touched.

The model's values and the clinician's corrections sit side by side and
neither overwrites the other: ``result()`` gives the model's name, box and
grade of every level with the clinician's name, box and grade beside them.
No correction is ever lost: a removed level is kept in the run's
``removed_levels``, and a re-run keeps every correction.

Levels are ordered, matched and numbered by their position along the spine
(box centres in patient space), never by name: names are what a clinician
corrects.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from . import mrml
from ..outputs import writers
from ..errors import InputError
from ..inference.levels import REGIONS, SPINE_DISCS, check_level_name, name_levels, region_of_disc
from ..packages.package import ModelPackage, sha256_file
from ..outputs.report import effective_box, effective_grade, effective_name, lps_to_index
from ..result import ClinicianCorrection, DiscLevel, GradePrediction, StudyInfo, StudyResult
from ..scales import GradingScale, get_scale
from ..study.volume import AxialStack

#: a level of a re-run is the same level as an old one when their box centres are closer than this:
#: half the smallest normal distance between neighbouring discs (lumbar 30-45 mm, cervical 14-20 mm)
MATCH_DISTANCE_MM = {"lumbar": 15.0, "cervical": 7.0}
#: a re-run box whose centre moved further than this is reported
MOVED_REPORT_MM = 2.0

ANNOTATION_FORMAT = "spine-stenosis-grader/annotation-set"
ANNOTATION_FORMAT_VERSION = 1
PROVENANCE_FILE = "provenance.json"
VOLUME_FORMATS = ("nii.gz", "nrrd")
#: DICOM patient name and ID, as SimpleITK names them in an image's metadata
PATIENT_NAME_TAG = "0010|0010"
PATIENT_ID_TAG = "0010|0020"


def match_by_position(old_centres: Sequence[Sequence[float]], new_centres: Sequence[Sequence[float]],
                      max_distance_mm: float) -> dict[int, int]:
    """Pair old and new levels whose box centres (LPS mm) are nearest, one to one, within ``max_distance_mm``.

    Returns ``{old index: new index}``. Pairs are chosen to minimise the total
    distance, so one level that moved a little never steals its neighbour's match.
    """
    if len(old_centres) == 0 or len(new_centres) == 0:
        return {}
    from scipy.optimize import linear_sum_assignment

    distance = np.linalg.norm(np.asarray(old_centres, dtype=float)[:, None, :]
                              - np.asarray(new_centres, dtype=float)[None, :, :], axis=2)
    # pairs beyond the limit cost more than any allowed set of pairs, so they are chosen last
    cost = np.where(distance <= max_distance_mm, distance, 1e6 + distance)
    rows, cols = linear_sum_assignment(cost)
    return {int(r): int(c) for r, c in zip(rows, cols) if distance[r, c] <= max_distance_mm}


def spine_axis(study: StudyInfo) -> np.ndarray:
    """Unit vector (LPS) along the stack's slices, inferior to superior: the order of levels."""
    axis = np.asarray(study.stack_direction_lps, dtype=float).reshape(3, 3)[:, 2]
    return -axis if axis[2] < 0 else axis


def _grade_text(grade: GradePrediction | None) -> str:
    return grade.grade if grade is not None else "none"


def _without_metadata(image: sitk.Image) -> sitk.Image:
    """A copy of ``image`` with no metadata (DICOM tags: patient name, ID, dates...); voxels and geometry kept."""
    clean = sitk.Image(image)  # copy on write: the caller's image keeps its metadata
    for key in clean.GetMetaDataKeys():
        clean.EraseMetaData(key)
    return clean


class StudyReview:
    """One grading run in a scene, as a radiologist reviews it. See the module docstring.

    Every method that changes the run leaves the results table up to date.
    User mistakes (a grade outside the scale, a name that is not a disc, a node
    of another run) raise ``InputError`` with a message saying what to do.
    """

    def __init__(self, table_node) -> None:
        try:
            mrml.stored_run(table_node)
        except ValueError as error:
            raise InputError(f"{error}. Select a results table or level made by Spine Stenosis Grader.") from None
        self.table_node = table_node

    # ------------------------------------------------------------------ finding runs

    @classmethod
    def create(cls, scene, result: StudyResult, volume_node=None, scale: str | None = None) -> StudyReview:
        """Put ``result`` in ``scene`` (ROIs, table, folder) with its clinician corrections and removed levels.

        ``scale`` (a key of ``scales.SCALES``) is the grading scale of the package
        that made the run; it lets a clinician grade levels of a run whose levels
        the model did not grade (none found, or all added by hand). Without it the
        scale is the one of the model's grades.
        """
        if scale is not None:
            get_scale(scale)  # a KeyError names the known scales
        table_node, rois = mrml.add_run_to_scene(scene, result, volume_node)
        if scale is not None and not table_node.GetAttribute(mrml.SCALE_ATTRIBUTE):
            table_node.SetAttribute(mrml.SCALE_ATTRIBUTE, scale)
        for roi, level in zip(rois, result.levels):
            correction = level.correction
            if correction is None:
                continue
            if correction.box is not None:
                mrml.set_roi_box(roi, correction.box)
            if correction.name:
                roi.SetName(correction.name)
            mrml.write_correction(roi, correction)
        if result.removed_levels:
            records = [{"id": uuid.uuid4().hex, "removed_at": "", "removed_by": "", "level": level.to_dict()}
                       for level in result.removed_levels]
            table_node.SetAttribute(mrml.REMOVED_ATTRIBUTE, json.dumps(records))
        review = cls(table_node)
        review.refresh_table()
        return review

    @classmethod
    def from_node(cls, node) -> StudyReview:
        """The run of ``node``: its results table or any of its level ROIs (also in a reloaded scene)."""
        if node is None:
            raise InputError("Select a results table or a level ROI of a grading run.")
        table_node = node
        if node.IsA("vtkMRMLMarkupsROINode"):
            table_node = node.GetNodeReference(mrml.TABLE_REFERENCE_ROLE)
            if table_node is None:
                raise InputError(f"{node.GetName()} is not a level of a grading run (or its run's table was "
                                 "deleted). Add it to a run with Add level.")
        elif not node.IsA("vtkMRMLTableNode"):
            raise InputError(f"{node.GetName()} is not part of a grading run: select its table or a level ROI.")
        return cls(table_node)

    @classmethod
    def in_scene(cls, scene, volume_node=None) -> list[StudyReview]:
        """Every run in ``scene`` (those of ``volume_node`` only, if given), oldest first."""
        runs = []
        for index in range(scene.GetNumberOfNodesByClass("vtkMRMLTableNode")):
            table_node = scene.GetNthNodeByClass(index, "vtkMRMLTableNode")
            if not table_node.GetAttribute(mrml.RUN_ATTRIBUTE):
                continue
            if volume_node is not None and \
                    table_node.GetNodeReferenceID(mrml.VOLUME_REFERENCE_ROLE) != volume_node.GetID():
                continue
            runs.append((table_node.GetAttribute(mrml.CREATED_ATTRIBUTE) or "", index, table_node))
        return [cls(table_node) for _, _, table_node in sorted(runs, key=lambda run: run[:2])]

    @property
    def scene(self):
        return self.table_node.GetScene()

    @property
    def volume_node(self):
        return self.table_node.GetNodeReference(mrml.VOLUME_REFERENCE_ROLE)

    # ------------------------------------------------------------------ reading

    def _run(self) -> tuple[StudyResult, list[str]]:
        return mrml.stored_run(self.table_node)

    def _levels(self, study: StudyInfo | None = None) -> list[tuple[Any, DiscLevel]]:
        """(ROI, level) of every level of the run, inferior to superior."""
        study = study or self._run()[0].study
        table_id = self.table_node.GetID()
        scene = self.scene
        pairs = []
        for index in range(scene.GetNumberOfNodesByClass("vtkMRMLMarkupsROINode")):
            roi = scene.GetNthNodeByClass(index, "vtkMRMLMarkupsROINode")
            if mrml.is_level_roi(roi) and roi.GetNodeReferenceID(mrml.TABLE_REFERENCE_ROLE) == table_id:
                pairs.append((roi, mrml.read_level(roi)))
        axis = spine_axis(study)
        pairs.sort(key=lambda pair: float(np.dot(effective_box(pair[1]).center, axis)))
        return pairs

    def level_rois(self) -> list:
        """The run's level ROIs, inferior to superior (by box centre along the spine)."""
        return [roi for roi, _ in self._levels()]

    def _removal_records(self, run: StudyResult, level_ids: list[str], present: set[str]) -> list[dict[str, Any]]:
        """Levels removed from the run: recorded by remove_level, and ROIs deleted since the last refresh."""
        records = list(mrml.json_attribute(self.table_node, mrml.REMOVED_ATTRIBUTE, []))
        known = {record["id"] for record in records}
        for level_id, level in zip(level_ids, run.levels):
            if level_id not in present and level_id not in known:
                # deleted in Slicer (Data module): kept as it was when last seen
                records.append({"id": level_id, "removed_at": mrml.utc_timestamp(), "removed_by": "",
                                "level": level.to_dict()})
        return records

    def _state(self) -> tuple[StudyResult, list[tuple[Any, DiscLevel]], list[dict[str, Any]], dict[str, DiscLevel]]:
        """The run as it stands, its (ROI, level) pairs in order, its removal records, and its levels as last
        recorded (by levelId)."""
        run, level_ids = self._run()
        pairs = self._levels(run.study)
        present = {roi.GetAttribute(mrml.LEVEL_ID_ATTRIBUTE) for roi, _ in pairs}
        records = self._removal_records(run, level_ids, present)
        result = StudyResult(
            study=run.study, model=run.model, levels=[level for _, level in pairs], detections=run.detections,
            warnings=run.warnings, timings_s=run.timings_s,
            removed_levels=[DiscLevel.from_dict(record["level"]) for record in records],
        )
        return result, pairs, records, dict(zip(level_ids, run.levels))

    def result(self) -> StudyResult:
        """The run as it stands in the scene: model values, clinician corrections, removed levels.

        A moved, resized or rotated ROI gives ``correction.box``, a renamed one
        ``correction.name``; ``correction.grade`` is the clinician's grade.
        """
        return self._state()[0]

    def scale(self) -> GradingScale | None:
        """The grading scale of the run's grades (its classes and definitions), or None if nothing was graded."""
        key = self.table_node.GetAttribute(mrml.SCALE_ATTRIBUTE)
        if not key:
            keys = {level.grade.scale for _, level in self._levels() if level.grade is not None}
            key = keys.pop() if len(keys) == 1 else None
        try:
            return get_scale(key) if key else None
        except KeyError:
            return None

    def is_edited(self, roi) -> bool:
        """True if a clinician changed this level: its grade, name or box, or added it."""
        self._check_roi(roi)
        return mrml.read_level(roi).edited

    def grade_is_stale(self, roi) -> bool:
        """True when the model grade does not describe the box as it stands.

        That is: the box was moved, resized or rotated since the model graded
        it, or the clinician added the level and the model has not graded it yet.
        ``regrade_level`` makes it current.
        """
        self._check_roi(roi)
        level = mrml.read_level(roi)
        if level.grade is None:
            return bool(level.correction is not None and level.correction.added)
        return not mrml.same_box(mrml.roi_to_box(roi), mrml.roi_graded_box(roi))

    # ------------------------------------------------------------------ writing the scene

    def refresh_table(self, author: str = "") -> None:
        """Rewrite the table rows and the run's record from the scene; recolour the ROIs by their final grade.

        Call it after the user changed ROIs in Slicer (dragged a box's handles,
        renamed or deleted a node): a box or name changed since the last refresh
        is stamped with the time (and ``author``, if given), and an ROI deleted
        since is recorded as a removed level, as it was when last seen. The
        table node is only modified when something changed, so a Widget may
        call this from ROI observers.
        """
        result, pairs, records, last_seen = self._state()
        for roi, level in pairs:
            before = last_seen.get(roi.GetAttribute(mrml.LEVEL_ID_ATTRIBUTE))
            if before is not None and level.correction is not None and (
                    effective_name(before) != effective_name(level)
                    or not mrml.same_box(effective_box(before), effective_box(level))):
                mrml.write_correction(roi, self._stamp(level.correction, author))
            mrml.show_level(roi, level, result.model)
        level_ids = [roi.GetAttribute(mrml.LEVEL_ID_ATTRIBUTE) for roi, _ in pairs]
        if mrml.is_stored_run(self.table_node, result, level_ids):
            return  # nothing changed: leave the table (and its observers) alone
        if records:
            self.table_node.SetAttribute(mrml.REMOVED_ATTRIBUTE, json.dumps(records))
        mrml.write_result_table(self.table_node, result)
        mrml.store_run(self.table_node, result, level_ids)

    def _check_roi(self, roi) -> None:
        if roi is None or not mrml.is_level_roi(roi):
            name = roi.GetName() if roi is not None else "Nothing"
            raise InputError(f"{name} is not a level of a grading run. Select one of the run's level ROIs.")
        if roi.GetNodeReferenceID(mrml.TABLE_REFERENCE_ROLE) != self.table_node.GetID():
            raise InputError(f"{roi.GetName()} is a level of another grading run; select that run first.")

    @staticmethod
    def _stamp(correction: ClinicianCorrection, author: str) -> ClinicianCorrection:
        correction.time = mrml.utc_timestamp()
        if author:
            correction.author = author
        return correction

    def _set_name(self, roi, name: str, author: str) -> bool:
        """Name a level's ROI; record who and when. False if it had that name already."""
        if roi.GetName() == name:
            return False
        roi.SetName(name)
        correction = mrml.read_level(roi).correction or ClinicianCorrection()
        mrml.write_correction(roi, self._stamp(correction, author))
        return True

    def _check_free_name(self, name: str, roi=None) -> None:
        for other in self.level_rois():
            if other.GetName() == name and (roi is None or other.GetID() != roi.GetID()):
                raise InputError(f"Another level is already named {name}. Rename that level first, or re-anchor "
                                 "so that every name shifts.")

    # ------------------------------------------------------------------ corrections

    def set_clinician_grade(self, roi, grade: str | None, author: str = "") -> None:
        """Give the level the clinician's grade on the run's scale (``None`` clears it); the model's stays beside it."""
        self._check_roi(roi)
        if grade is not None:
            scale = self.scale()
            if scale is None:
                raise InputError("The model graded no level of this run, so there is no grading scale to grade on. "
                                 "Re-run the study with a model package that grades this region.")
            matches = [name for name in scale.names if name.lower() == str(grade).strip().lower()]
            if not matches:
                raise InputError(f"{grade!r} is not a grade of {scale.title}; choose one of "
                                 f"{', '.join(scale.names)}.")
            grade = matches[0]
        correction = mrml.read_level(roi).correction or ClinicianCorrection()
        correction.grade = grade
        mrml.write_correction(roi, self._stamp(correction, author))
        self.refresh_table()

    def rename_level(self, roi, name: str, author: str = "") -> None:
        """Rename one level ("l4/l5" becomes "L4-L5"); its model name stays beside it. Others keep their names."""
        self._check_roi(roi)
        canonical = check_level_name(name)
        self._check_free_name(canonical, roi)
        self._set_name(roi, canonical, author)
        self.refresh_table()

    def reanchor(self, roi, name: str, author: str = "") -> dict[str, str]:
        """Say "this level is ``name``": every level is renamed to follow, counted along the spine.

        Returns ``{old name: new name}`` of the levels whose name changed. A level
        whose new name is its model name is no longer a name correction.
        """
        self._check_roi(roi)
        canonical = check_level_name(name)
        run = self._run()[0]
        rois = self.level_rois()
        position = [other.GetID() for other in rois].index(roi.GetID())
        region = run.study.region if run.study.region in REGIONS else (
            "cervical" if canonical.startswith("C") else "lumbar")
        changed = {}
        for other, new_name in zip(rois, name_levels(len(rois), region, (position, canonical))):
            old_name = other.GetName()
            if self._set_name(other, new_name, author):
                changed[old_name] = new_name
            # the clinician's anchor now fixes every name, also those that stayed as they were
            mrml.set_name_anchoring(other, True, "high", region_of_disc(new_name))
        self.refresh_table()
        return changed

    def _name_between_neighbours(self, box_centre: np.ndarray, study: StudyInfo) -> tuple[str, list[tuple[Any, str]]]:
        """The disc name a new level at ``box_centre`` takes from its position, and the renames that make room.

        A free name between its neighbours (or beyond the end one) is taken as it is.
        Between two levels whose names leave no gap, the detector missed a disc and
        counted on: the new level takes the name next to the neighbour on the landmark's
        side (below it, counted from the sacrum; above it on a cervical spine, counted
        from C2), and the levels on the other side move one name along, up to the first
        gap. Returns ``(name, [(roi, new name), ...])``.
        """
        axis = spine_axis(study)
        height = float(np.dot(box_centre, axis))
        below, above = [], []  # (roi, name) of the named levels, inferior to superior
        for roi, level in self._levels(study):
            name = effective_name(level)
            if name in SPINE_DISCS:
                (below if float(np.dot(effective_box(level).center, axis)) < height else above).append((roi, name))
        if not below and not above:
            raise InputError("Give the new level a name (for example L4-L5): no named level beside it to count from.")

        def next_disc(name: str, upwards: bool) -> str | None:
            index = SPINE_DISCS.index(name) + (-1 if upwards else 1)  # the list runs superior to inferior
            return SPINE_DISCS[index] if 0 <= index < len(SPINE_DISCS) else None

        taken = {roi.GetName() for roi in self.level_rois()}
        guesses = ([next_disc(below[-1][1], True)] if below else []) + (
            [next_disc(above[0][1], False)] if above else [])
        for guess in guesses:
            if guess is not None and guess not in taken:
                return guess, []
        if not (below and above):
            neighbour = (below or above)[0 if not below else -1][1]
            raise InputError(f"No disc lies {'above' if below else 'below'} {neighbour}: give the new level a name, "
                             "or re-anchor the other levels first.")
        # between two levels with no name free between them: insert it, and move the names on one side along
        cervical = below[-1][1].startswith("C") and above[0][1].startswith("C")
        upwards = not cervical
        name = next_disc(below[-1][1], True) if upwards else next_disc(above[0][1], False)
        moving = above if upwards else list(reversed(below))
        renames, cursor = [], name
        for roi, current in moving:
            if current != cursor:
                break  # a gap: the levels beyond keep their names
            cursor = next_disc(cursor, upwards)
            if cursor is None:
                raise InputError(f"No disc name is left {'above' if upwards else 'below'} {current} to make room for "
                                 "the new level: give it a name, and re-anchor so that every name shifts.")
            renames.append((roi, cursor))
        return name, renames

    def add_level(self, roi, name: str | None = None, author: str = "") -> dict[str, str]:
        """Adopt an ROI the user placed (Place ROI) as a level the model missed.

        Without ``name`` it is named from where it lies: after the level below it
        (the disc above L4-L5 is L3-L4), or the one above it; between two levels whose
        names leave no gap, the names beyond it move one place along to make room (see
        ``_name_between_neighbours``). The level has no model grade until it is
        re-graded (``regrade_level``); the clinician may grade it at once.
        Returns ``{old name: new name}`` of the other levels renamed to make room.
        """
        if roi is None or not roi.IsA("vtkMRMLMarkupsROINode"):
            raise InputError("Place an ROI on the missed disc first (Markups: Place ROI), then add it as a level.")
        if roi.GetScene() is None or self.scene is None or roi.GetScene() != self.scene:
            raise InputError(f"{roi.GetName()} is not in the scene of this grading run.")
        if mrml.is_level_roi(roi):
            which = "this" if roi.GetNodeReferenceID(mrml.TABLE_REFERENCE_ROLE) == self.table_node.GetID() else \
                "another"
            raise InputError(f"{roi.GetName()} is already a level of {which} grading run.")
        if min(roi.GetSize()) <= 0:
            raise InputError(f"{roi.GetName()} has no size yet: drag out its box around the canal at the disc, "
                             "then add it as a level.")
        run = self._run()[0]
        box = mrml.roi_to_box(roi)
        slice_index = self._slice_of(box, run.study)
        renames: list[tuple[Any, str]] = []
        if name is None:
            canonical, renames = self._name_between_neighbours(np.asarray(box.center), run.study)
        else:
            canonical = check_level_name(name)
            self._check_free_name(canonical)
        renamed = {}
        for other, other_name in renames:
            old_name = other.GetName()
            if self._set_name(other, other_name, author):
                renamed[old_name] = other_name
        level = DiscLevel(name=canonical, slice_index=slice_index, box=box, detection_score=0.0)
        roi.SetName(canonical)
        if roi.GetDisplayNode() is None:
            roi.CreateDefaultDisplayNodes()
        mrml.set_level_attributes(roi, level, run.model)
        mrml.write_correction(roi, self._stamp(ClinicianCorrection(added=True), author))
        roi.SetNodeReferenceID(mrml.TABLE_REFERENCE_ROLE, self.table_node.GetID())
        if self.volume_node is not None:
            roi.SetNodeReferenceID(mrml.VOLUME_REFERENCE_ROLE, self.volume_node.GetID())
        mrml.put_in_folder(self.scene, mrml.run_folder(self.table_node), [roi])
        self.refresh_table()
        return renamed

    @staticmethod
    def _slice_of(box, study: StudyInfo) -> int:
        """The stack slice nearest the box's centre; refuses a box outside the graded volume."""
        k = int(np.rint(lps_to_index(study, np.asarray(box.center, dtype=float))[2]))
        if any(study.stack_size) and not 0 <= k < study.n_slices:
            raise InputError(f"The box is outside the graded volume (slice {k} of 0-{study.n_slices - 1}): "
                             "place it on the study.")
        return k

    def remove_level(self, roi, author: str = "") -> None:
        """Remove a false level from the run: its ROI is deleted, and no correction is lost.

        An annotator deleting a false detection expects it gone at once, so
        nothing is asked; but the level, with its model values and every
        correction it had (a clinician grade, a name, a box), moves to the run's
        ``removed_levels`` with who removed it and when. Exports and the
        annotation set's provenance list it, a re-run that finds it again leaves
        it out, and ``result()`` still returns it. An ROI deleted in Slicer
        instead (Data module) is recorded the same way, as it was at the last
        ``refresh_table``.
        """
        self._check_roi(roi)
        self._delete(roi, record=True, author=author)
        self.refresh_table()

    def _delete(self, roi, record: bool, author: str = "") -> None:
        level_id = roi.GetAttribute(mrml.LEVEL_ID_ATTRIBUTE)
        if record:
            records = list(mrml.json_attribute(self.table_node, mrml.REMOVED_ATTRIBUTE, []))
            records.append({"id": level_id, "removed_at": mrml.utc_timestamp(), "removed_by": author,
                            "level": mrml.read_level(roi).to_dict()})
            self.table_node.SetAttribute(mrml.REMOVED_ATTRIBUTE, json.dumps(records))
        else:
            # gone by a re-run, not by the clinician: not a removed level
            run, level_ids = self._run()
            kept = [(i, level) for i, level in zip(level_ids, run.levels) if i != level_id]
            run.levels = [level for _, level in kept]
            mrml.store_run(self.table_node, run, [i for i, _ in kept])
        mrml.remove_level_roi(roi)

    # ------------------------------------------------------------------ the model again

    def _check_stack(self, stack: AxialStack, study: StudyInfo) -> None:
        if not any(study.stack_size):
            return
        same = (tuple(int(v) for v in stack.image.GetSize()) == tuple(int(v) for v in study.stack_size)
                and np.allclose(stack.origin, study.stack_origin_lps, rtol=0, atol=1e-3)
                and np.allclose(stack.spacing, study.stack_spacing_mm, rtol=1e-6, atol=1e-6)
                and np.allclose(stack.direction.reshape(-1), study.stack_direction_lps, rtol=0, atol=1e-6))
        if not same:
            raise InputError("This is not the volume the run graded (its slices differ). Select the run's volume.")

    def regrade_level(self, roi, stack: AxialStack, package: ModelPackage) -> GradePrediction:
        """Grade the level's box as it stands, alone, without re-running the study.

        ``stack`` is the run's volume as an axial stack, ``package`` the model
        package that made the run. The model grade (and the level's slice)
        become those of this box; the clinician's grade stays.
        """
        self._check_roi(roi)
        run = self._run()[0]
        self._check_stack(stack, run.study)
        if (package.name, package.version) != (run.model.name, run.model.version):
            raise InputError(f"This run was graded by {run.model.name} {run.model.version}. Re-grade with that "
                             f"model package, or re-run the study with {package.name} {package.version}.")
        graded_regions = package.manifest.get("regions", [])
        if run.study.region not in graded_regions:
            raise InputError(f"{package.name} grades {', '.join(graded_regions) or 'no'} levels; this study is "
                             f"{run.study.region}, so its levels cannot be graded by it.")
        # the run withheld its grades on such a study: one level re-graded must not bring them back
        out_of_scope = package.grade_scope_problem(run.study.modality, run.study.pixel_spacing_mm)
        if out_of_scope:
            raise InputError(out_of_scope + " Set the grade by hand.")
        box = mrml.roi_to_box(roi)
        k, box_ij = stack.box_to_slice(box)
        k = int(np.rint(k))
        if not 0 <= k < stack.n_slices:
            raise InputError(f"{roi.GetName()} is outside the volume: move its box onto the study.")
        prediction = package.classifier().grade_places(stack, [(k, box_ij)], run.study.modality)[0]
        mrml.set_model_grade(roi, prediction, k)
        mrml.set_graded_box(roi, box)
        if self.table_node.GetAttribute(mrml.SCALE_ATTRIBUTE) is None:
            self.table_node.SetAttribute(mrml.SCALE_ATTRIBUTE, prediction.scale)
        self.refresh_table()
        return prediction

    def merge_rerun(self, new_result: StudyResult, author: str = "") -> list[str]:
        """Take a re-run's model values and keep every clinician correction; return what changed, in words.

        Old and new levels are matched by box centre (the clinician's box if
        they moved it) along the spine, not by name. A matched level takes the
        new model name, box and grade, but keeps the clinician's grade, name
        and box where they gave one. An old level the re-run did not find is
        removed, unless the clinician corrected it: then it stays as the
        clinician's level (no model values). A new level is added, unless the
        clinician removed one there. When the clinician numbered the levels
        (renamed or re-anchored), the other levels are named to follow.
        """
        self.refresh_table()  # record ROIs deleted in Slicer before the old run is replaced
        run = self._run()[0]
        region = new_result.study.region if new_result.study.region in REGIONS else run.study.region
        limit = MATCH_DISTANCE_MM.get(region, MATCH_DISTANCE_MM["lumbar"])
        pairs = self._levels(run.study)
        matches = match_by_position([effective_box(level).center for _, level in pairs],
                                    [level.box.center for level in new_result.levels], limit)
        changes = []
        if (run.model.name, run.model.version) != (new_result.model.name, new_result.model.version):
            changes.append(f"Model: {run.model.name} {run.model.version} -> "
                           f"{new_result.model.name} {new_result.model.version}")
        renamed = {roi.GetAttribute(mrml.LEVEL_ID_ATTRIBUTE) for roi, level in pairs
                   if level.correction is not None and level.correction.name and not level.correction.added}
        named_by_clinician = renamed | {roi.GetAttribute(mrml.LEVEL_ID_ATTRIBUTE) for roi, level in pairs
                                        if level.correction is not None and level.correction.added}
        for index, (roi, old) in enumerate(pairs):
            if index in matches:
                changes += self._take_rerun_level(roi, old, new_result.levels[matches[index]], new_result)
            elif old.edited:
                self._keep_as_clinician_level(roi, old, new_result)
                changes.append(f"{effective_name(old)}: not found by the new run; kept with the clinician's "
                               "corrections")
            else:
                self._delete(roi, record=False)
                changes.append(f"{effective_name(old)}: not found by the new run; removed")

        unmatched = [j for j in range(len(new_result.levels)) if j not in set(matches.values())]
        removed = self.result().removed_levels
        found_again = match_by_position([new_result.levels[j].box.center for j in unmatched],
                                        [effective_box(level).center for level in removed], limit)
        new_rois = []
        for n, j in enumerate(unmatched):
            level = new_result.levels[j]
            if n in found_again:
                changes.append(f"{level.name}: found again by the new run; left out, as the clinician removed it")
                continue
            roi = mrml.add_level_roi(self.scene, level, new_result.model)
            roi.SetNodeReferenceID(mrml.TABLE_REFERENCE_ROLE, self.table_node.GetID())
            if self.volume_node is not None:
                roi.SetNodeReferenceID(mrml.VOLUME_REFERENCE_ROLE, self.volume_node.GetID())
            new_rois.append(roi)
            changes.append(f"{level.name}: new level (grade {_grade_text(level.grade)})")
        mrml.put_in_folder(self.scene, mrml.run_folder(self.table_node), new_rois)

        # the re-run becomes the run's record
        pairs = self._levels(new_result.study)
        base = StudyResult(study=new_result.study, model=new_result.model, levels=[level for _, level in pairs],
                           detections=new_result.detections, warnings=new_result.warnings,
                           timings_s=new_result.timings_s)
        mrml.store_run(self.table_node, base, [roi.GetAttribute(mrml.LEVEL_ID_ATTRIBUTE) for roi, _ in pairs])
        changes += self._follow_clinician_numbering(renamed, named_by_clinician, region, author)
        names = [roi.GetName() for roi in self.level_rois()]
        for name in sorted({name for name in names if names.count(name) > 1}):
            changes.append(f"{name}: {names.count(name)} levels now have this name; rename or re-anchor them")
        scales = {level.grade.scale for level in new_result.levels if level.grade is not None}
        if len(scales) == 1:
            self.table_node.SetAttribute(mrml.SCALE_ATTRIBUTE, scales.pop())
        history = list(mrml.json_attribute(self.table_node, mrml.HISTORY_ATTRIBUTE, []))
        history.append({"time": mrml.utc_timestamp(), "by": author,
                        "previous_model": f"{run.model.name} {run.model.version}",
                        "model": f"{new_result.model.name} {new_result.model.version}", "changes": changes})
        self.table_node.SetAttribute(mrml.HISTORY_ATTRIBUTE, json.dumps(history))
        mrml.name_run_folder(self.scene, mrml.run_folder(self.table_node),
                             mrml.study_name(new_result, self.volume_node), new_result.model)
        self.refresh_table()
        return changes

    def _take_rerun_level(self, roi, old: DiscLevel, new: DiscLevel, new_result: StudyResult) -> list[str]:
        """Give a matched level the re-run's model values, keeping the clinician's grade, name and box."""
        correction = old.correction or ClinicianCorrection()
        added = correction.added
        clinician_box = added or correction.box is not None
        clinician_name = added or correction.name is not None
        if not clinician_box:
            mrml.set_roi_box(roi, new.box)
        if not clinician_name:
            roi.SetName(new.name)
        mrml.set_level_attributes(roi, new, new_result.model)
        correction.added = False
        mrml.write_correction(roi, correction)

        label = roi.GetName()
        changes = []
        if added:
            changes.append(f"{label}: now found by the model (grade {_grade_text(new.grade)})")
            return changes
        if not clinician_name and old.name != new.name:
            changes.append(f"{old.name}: the model now numbers it {new.name}")
        if _grade_text(old.grade) != _grade_text(new.grade):
            changes.append(f"{label}: grade {_grade_text(old.grade)} -> {_grade_text(new.grade)}")
        moved = float(np.linalg.norm(np.subtract(old.box.center, new.box.center)))
        if moved > MOVED_REPORT_MM:
            kept = " (the clinician's box is kept)" if clinician_box else ""
            changes.append(f"{label}: box moved {moved:.1f} mm{kept}")
        return changes

    def _keep_as_clinician_level(self, roi, old: DiscLevel, new_result: StudyResult) -> None:
        """An old level the re-run did not find, kept for its corrections: the clinician's box, name and grade."""
        box = mrml.roi_to_box(roi)
        k = int(np.rint(lps_to_index(new_result.study, np.asarray(box.center, dtype=float))[2]))
        level = DiscLevel(name=roi.GetName(), slice_index=int(np.clip(k, 0, max(new_result.study.n_slices - 1, 0))),
                          box=box, detection_score=0.0)
        mrml.set_level_attributes(roi, level, new_result.model)
        correction = old.correction or ClinicianCorrection()
        correction.added = True
        mrml.write_correction(roi, correction)

    def _follow_clinician_numbering(self, renamed: set[str], named_by_clinician: set[str], region: str,
                                    author: str) -> list[str]:
        """Name the levels the clinician did not name so that they follow the clinician's numbering.

        Only when the levels the clinician renamed (``renamed``, by levelId) form
        one numbering along the spine; a single odd rename is nobody's numbering.
        """
        rois = self.level_rois()
        anchors = [(position, roi.GetName()) for position, roi in enumerate(rois)
                   if roi.GetAttribute(mrml.LEVEL_ID_ATTRIBUTE) in renamed and roi.GetName() in SPINE_DISCS]
        if not anchors or region not in REGIONS:
            return []
        names = name_levels(len(rois), region, anchors[0])
        if any(names[position] != name for position, name in anchors):
            return []
        changes = []
        for roi, name in zip(rois, names):
            if roi.GetAttribute(mrml.LEVEL_ID_ATTRIBUTE) in named_by_clinician:
                continue
            old_name = roi.GetName()
            if self._set_name(roi, name, author):
                changes.append(f"{old_name}: named {name} to follow the clinician's numbering")
        return changes

    # ------------------------------------------------------------------ exports

    def export(self, folder, stack: AxialStack | None = None) -> list[Path]:
        """Write result.json, levels.csv, one ``.mrk.json`` per level and report.html, all or nothing.

        Model and clinician values stand side by side in each. ``stack`` (the
        run's volume as an axial stack) gives the report its slice pictures.
        """
        result = self.result()
        images = {}
        if stack is not None:
            self._check_stack(stack, result.study)
            images = {level.slice_index: np.asarray(stack.array[level.slice_index]) for level in result.levels
                      if 0 <= level.slice_index < stack.n_slices}
        return writers.write_study_outputs(result, Path(folder), images)

    def export_annotation_set(self, folder, image: sitk.Image, include_patient_info: bool = False,
                              volume_format: str = "nii.gz") -> list[Path]:
        """Write a training example into ``folder``: the volume, the final ROIs and grades, and their provenance.

        Files: ``volume.nii.gz`` (or ``volume.nrrd``), one ``<level>.mrk.json``
        per level (the final box, name and grade), result.json and levels.csv
        (model and clinician values side by side, removed levels included) and
        provenance.json (model, who corrected what and when, the source, the
        SHA256 of every file). ``image`` is the run's volume as read (any
        orientation). Unless ``include_patient_info``, the volume carries no
        metadata (no patient name, ID or dates) and the source path is left
        out.

        A new or empty ``folder``, or one that holds only an earlier annotation
        set (which is replaced), takes the set itself. A folder that holds other
        files (a folder picker cannot insist on an empty one) gets the set in a
        new subfolder, ``annotation-set`` (``annotation-set-2``, ... when taken):
        the returned paths say where. Written all or nothing.
        """
        if volume_format not in VOLUME_FORMATS:
            raise InputError(f"The volume format must be one of {', '.join(VOLUME_FORMATS)}, not {volume_format!r}.")
        result, _, removal_records, _ = self._state()
        self._check_image(image, result)
        folder, replaced = _annotation_target(Path(os.path.abspath(folder)))
        volume_name = f"volume.{volume_format}"
        original_source = result.study.source
        if not include_patient_info:
            result.study.source = volume_name

        def write(staging: Path) -> list[str]:
            sitk.WriteImage(image if include_patient_info else _without_metadata(image), str(staging / volume_name),
                            True)
            names = [volume_name]
            markups = writers.markups_file_names(result.levels)
            for level, name in zip(result.levels, markups):
                writers.write_roi_markups(level, staging / name)
                names.append(name)
            (staging / writers.RESULT_FILE).write_text(result.to_json() + "\n", encoding="utf-8")
            writers.write_levels_csv(result, staging / writers.LEVELS_CSV_FILE)
            names += [writers.RESULT_FILE, writers.LEVELS_CSV_FILE]
            provenance = self._provenance(result, removal_records, markups, volume_name, original_source, image,
                                          include_patient_info)
            provenance["files"] = {name: sha256_file(staging / name) for name in names}
            (staging / PROVENANCE_FILE).write_text(json.dumps(provenance, indent=2, ensure_ascii=False) + "\n",
                                                  encoding="utf-8")
            return names + [PROVENANCE_FILE]

        return writers.write_all_or_nothing(folder, write, replaced)

    def _check_image(self, image: sitk.Image, result: StudyResult) -> None:
        """Refuse an image that is not the graded volume: its ROIs would mark the wrong voxels."""
        study = result.study
        if any(study.stack_size):
            same = (sorted(image.GetSize()[:3]) == sorted(int(v) for v in study.stack_size)
                    and np.allclose(sorted(image.GetSpacing()[:3]), sorted(study.stack_spacing_mm), rtol=1e-5))
            if not same:
                raise InputError("This image is not the volume the run graded (its size or spacing differ). "
                                 "Export the run's own volume.")
        for level in result.levels:
            index = np.asarray(image.TransformPhysicalPointToContinuousIndex(
                [float(v) for v in effective_box(level).center]))
            if np.any(index < -0.5) or np.any(index > np.asarray(image.GetSize()[:3]) - 0.5):
                raise InputError(f"{effective_name(level)} lies outside this image: export the run's own volume.")

    def _provenance(self, result: StudyResult, removal_records: list[dict[str, Any]], markups: list[str],
                    volume_name: str, original_source: str, image: sitk.Image,
                    include_patient_info: bool) -> dict[str, Any]:
        def summary(level: DiscLevel) -> dict[str, Any]:
            correction = level.correction
            added = bool(correction is not None and correction.added)
            return {
                "name": effective_name(level),
                "model_name": None if added else level.name,
                "final_grade": effective_grade(level),
                "grade_source": ("clinician" if correction is not None and correction.grade
                                 else "model" if level.grade is not None else None),
                "model_grade": level.grade.grade if level.grade is not None else None,
                "model_probability": level.grade.probability if level.grade is not None else None,
                "clinician_grade": correction.grade if correction is not None else None,
                "box_source": "clinician" if added or (correction is not None and correction.box is not None)
                else "model",
                "added_by_clinician": added,
                "corrected_by": correction.author if correction is not None else "",
                "corrected_at": correction.time if correction is not None else "",
            }

        levels = [{**summary(level), "markups_file": name} for level, name in zip(result.levels, markups)]
        removed = [{**summary(DiscLevel.from_dict(record["level"])), "removed_by": record.get("removed_by", ""),
                    "removed_at": record.get("removed_at", "")} for record in removal_records]
        provenance: dict[str, Any] = {
            "format": ANNOTATION_FORMAT,
            "format_version": ANNOTATION_FORMAT_VERSION,
            "created": mrml.utc_timestamp(),
            "model": result.model.to_dict(),
            "source": {
                "volume_file": volume_name,
                "modality": result.study.modality,
                "region": result.study.region,
                "original": original_source if include_patient_info else None,
            },
            "patient_info_included": bool(include_patient_info),
            "levels": levels,
            "removed_levels": removed,
            "reruns": mrml.json_attribute(self.table_node, mrml.HISTORY_ATTRIBUTE, []),
        }
        if include_patient_info:
            provenance["patient"] = {
                "name": image.GetMetaData(PATIENT_NAME_TAG).strip() if image.HasMetaDataKey(PATIENT_NAME_TAG) else "",
                "id": image.GetMetaData(PATIENT_ID_TAG).strip() if image.HasMetaDataKey(PATIENT_ID_TAG) else "",
            }
        return provenance


#: the subfolder an annotation set goes into when the chosen folder holds other files
ANNOTATION_SUBFOLDER = "annotation-set"


def _earlier_set_files(folder: Path) -> set[str] | None:
    """The files of the earlier annotation set that is all ``folder`` holds; None if it holds anything else."""
    # a staging folder left by a run that was killed is not the user's
    present = {p.name for p in folder.iterdir() if not p.name.startswith(writers.STAGING_PREFIX)}
    if not present:
        return set()
    try:
        previous = json.loads((folder / PROVENANCE_FILE).read_text(encoding="utf-8"))
        ours = previous.get("format") == ANNOTATION_FORMAT
        listed = set(previous.get("files", {})) | {PROVENANCE_FILE}
    except (OSError, ValueError, AttributeError, TypeError):
        return None
    return present if ours and present <= listed else None


def _annotation_target(folder: Path) -> tuple[Path, set[str]]:
    """Where an annotation set chosen to go into ``folder`` goes, and the earlier set's files it replaces there.

    A new or empty folder, or one holding only an earlier set, takes the set; any
    other folder gets it in a new subfolder, so that no file of the user's is
    replaced or mixed into the set.
    """
    if not folder.exists():
        return folder, set()
    if not folder.is_dir():
        raise InputError(f"{folder} is a file; choose a folder for the annotation set.")
    # an earlier export killed while its files moved must be undone before the folder is judged
    writers.recover_interrupted_writes(folder, for_writing=True)
    earlier = _earlier_set_files(folder)
    if earlier is not None:
        return folder, earlier
    number = 1
    while True:
        candidate = folder / (ANNOTATION_SUBFOLDER if number == 1 else f"{ANNOTATION_SUBFOLDER}-{number}")
        if not candidate.exists():
            return candidate, set()
        number += 1
