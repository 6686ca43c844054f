"""Study outputs: result JSON, levels CSV, Slicer ROI markups (checked with real MRML) and the HTML report."""

from __future__ import annotations

import base64
import csv
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from SpineStenosisGraderLib.errors import SpineStenosisGraderError
from SpineStenosisGraderLib.outputs import report as report_module
from SpineStenosisGraderLib.outputs import writers
from SpineStenosisGraderLib.outputs.report import grade_color, lps_to_index, render_html_report, write_html_report
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
from SpineStenosisGraderLib.outputs.writers import (
    levels_csv_columns,
    markups_file_name,
    read_roi_markups,
    write_levels_csv,
    write_roi_markups,
    write_study_outputs,
)
from SpineStenosisGraderLib.review.background import load_result, process_environment

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])
N_I, N_J, N_K = 96, 80, 12


def _rotation(axis, degrees: float) -> np.ndarray:
    axis = np.asarray(axis, dtype=float) / np.linalg.norm(axis)
    a = np.radians(degrees)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + np.sin(a) * k + (1 - np.cos(a)) * k @ k


def _study(source: str = "phantom_lumbar_T2.nii.gz", modality: str = "MR") -> StudyInfo:
    direction = _rotation([1, 0, 0], 12.0)  # a gantry-tilted stack
    return StudyInfo(
        source=source, modality=modality, region="lumbar", n_slices=N_K,
        slice_spacing_mm=4.0, pixel_spacing_mm=(0.8, 0.7),
        numbering="Counted from the sacrum: the lowest disc is L5-S1. Check against a sagittal view.",
        stack_origin_lps=(-38.0, -20.0, -60.0), stack_spacing_mm=(0.8, 0.7, 4.0),
        stack_direction_lps=tuple(direction.ravel()), stack_size=(N_I, N_J, N_K),
    )


def _point(study: StudyInfo, i: float, j: float, k: float) -> tuple[float, float, float]:
    d = np.asarray(study.stack_direction_lps).reshape(3, 3)
    p = np.asarray(study.stack_origin_lps) + d @ (np.asarray(study.stack_spacing_mm) * np.array([i, j, k]))
    return tuple(float(v) for v in p)


def _grade(grade: str, probabilities: dict[str, float], uncertain: bool = False) -> GradePrediction:
    return GradePrediction(task="central_canal", scale="schizas", grade=grade, probabilities=probabilities,
                           uncertain=uncertain)


def make_result(source: str = "phantom_lumbar_T2.nii.gz", modality: str = "MR") -> StudyResult:
    study = _study(source, modality)
    stack_axes = np.asarray(study.stack_direction_lps).reshape(3, 3)
    oblique = stack_axes @ _rotation([0.3, -0.2, 1.0], 25.0)
    levels = [
        DiscLevel("L3-L4", 2, OrientedBox(_point(study, 40, 44, 2), (16.0, 13.0, 4.0), tuple(stack_axes.ravel())),
                  0.97, _grade("A", {"A": 0.88, "B": 0.09, "C": 0.02, "D": 0.01}),
                  {"dural_sac_area_mm2": 142.3, "ap_diameter_mm": 12.1}),
        DiscLevel("L4-L5", 6, OrientedBox(_point(study, 50, 40, 6), (18.0, 12.0, 4.0), tuple(oblique.ravel())),
                  0.91, _grade("B", {"A": 0.21, "B": 0.52, "C": 0.22, "D": 0.05}, uncertain=True),
                  {"dural_sac_area_mm2": 88.0}, canal_seen=False),
        DiscLevel("L5-S1", 10, OrientedBox(_point(study, 46, 46, 10), (17.0, 12.5, 4.0), tuple(stack_axes.ravel())),
                  0.88, _grade("C", {"A": 0.02, "B": 0.18, "C": 0.70, "D": 0.10}),
                  correction=ClinicianCorrection(grade="D", author="Dr. O'Neil", note="=no posterior fat")),
    ]
    detections = [CanalDetection(lv.slice_index, lv.box, lv.detection_score, 0.9) for lv in levels]
    model = ModelInfo(name="canal-grader", version="0.3.1", task="central_canal",
                      trained_on="phantoms and public samples", clinical_use="not for clinical use")
    return StudyResult(study, model, levels, detections, warnings=["2 slices had no canal detection"],
                       timings_s={"detect": 1.2, "grade": 0.4})


def make_images(result: StudyResult, seed: int = 0) -> dict[int, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {lv.slice_index: rng.normal(300.0, 80.0, size=(N_J, N_I)) for lv in result.levels}


def _listing(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())} if folder.exists() else {}


def _staging_leftovers(parent: Path) -> list[Path]:
    return [p for p in parent.rglob("*") if "writing-" in p.name]


# --------------------------------------------------------------------------- study outputs


def test_study_outputs_are_all_written(tmp_path):
    result = make_result()
    out = tmp_path / "case1"
    paths = write_study_outputs(result, out, make_images(result))
    names = [p.name for p in paths]
    assert names == ["result.json", "levels.csv", "L3-L4.mrk.json", "L4-L5.mrk.json", "L5-S1.mrk.json", "report.html"]
    assert all(p.parent == out and p.is_file() and p.stat().st_size > 0 for p in paths)
    assert sorted(names) == sorted(p.name for p in out.iterdir())
    assert not _staging_leftovers(tmp_path)


def test_result_json_round_trips(tmp_path):
    result = make_result()
    write_study_outputs(result, tmp_path / "out", make_images(result))
    again = StudyResult.from_json((tmp_path / "out" / "result.json").read_text(encoding="utf-8"))
    assert again.to_dict() == result.to_dict()
    assert [lv.canal_seen for lv in again.levels] == [True, False, True]


def test_levels_csv_has_one_row_per_level(tmp_path):
    result = make_result()
    path = tmp_path / "levels.csv"
    write_levels_csv(result, path)
    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        rows = list(reader)
        header = reader.fieldnames
    assert header == levels_csv_columns(result)
    for column in ("level", "slice_index", "center_L_mm", "center_P_mm", "center_S_mm", "size_1_mm", "size_2_mm",
                   "size_3_mm", "grade", "probability", "prob_A", "prob_B", "prob_C", "prob_D", "uncertain",
                   "dural_sac_area_mm2", "ap_diameter_mm", "clinician_grade", "clinician_name", "model_name",
                   "model_version"):
        assert column in header
    assert [r["level"] for r in rows] == ["L3-L4", "L4-L5", "L5-S1"]
    first, second, third = rows
    assert float(first["center_L_mm"]) == pytest.approx(result.levels[0].box.center[0], abs=1e-3)
    assert float(first["center_S_mm"]) == pytest.approx(result.levels[0].box.center[2], abs=1e-3)
    assert float(second["size_1_mm"]) == pytest.approx(18.0)
    assert first["grade"] == "A" and float(first["prob_A"]) == pytest.approx(0.88)
    assert second["uncertain"] == "true" and first["uncertain"] == "false"
    # the detector lost the canal at L4-L5: its box is the tube between the slices around it
    assert [r["canal_seen"] for r in rows] == ["true", "false", "true"]
    assert float(first["dural_sac_area_mm2"]) == pytest.approx(142.3) and second["ap_diameter_mm"] == ""
    assert first["clinician_grade"] == "" and first["clinician_name"] == "" and first["final_grade"] == "A"
    assert third["clinician_grade"] == "D" and third["final_grade"] == "D" and third["grade"] == "C"
    assert third["clinician_note"] == "'=no posterior fat"  # not a spreadsheet formula
    assert {r["model_name"] for r in rows} == {"canal-grader"} and {r["model_version"] for r in rows} == {"0.3.1"}


def test_csv_of_a_result_without_grades(tmp_path):
    result = make_result()
    for level in result.levels:
        level.grade, level.measurements, level.correction = None, {}, None
    write_levels_csv(result, tmp_path / "levels.csv")
    rows = list(csv.DictReader(open(tmp_path / "levels.csv", newline="", encoding="utf-8")))
    assert len(rows) == 3 and all(r["grade"] == "" and r["final_grade"] == "" for r in rows)


# --------------------------------------------------------------------------- markups, checked with Slicer's MRML


def _scene():
    slicer = pytest.importorskip("slicer")
    scene = slicer.vtkMRMLScene()
    scene.AddNode(slicer.vtkMRMLSelectionNode())  # the markups logic wants one
    return slicer, scene


def _matrix3(vtk_matrix) -> np.ndarray:
    return np.array([[vtk_matrix.GetElement(r, c) for c in range(3)] for r in range(3)])


def _read_with_slicer(path: Path):
    slicer, scene = _scene()
    roi = slicer.vtkMRMLMarkupsROINode()
    scene.AddNode(roi)
    storage = slicer.vtkMRMLMarkupsROIJsonStorageNode()
    scene.AddNode(storage)
    storage.SetFileName(str(path))
    assert storage.ReadData(roi) == 1
    return roi, scene  # keep the scene alive with the node


@pytest.mark.parametrize("index", [0, 1, 2])
def test_markups_load_in_slicer_with_the_right_geometry(tmp_path, index):
    result = make_result()
    level = result.levels[index]
    path = tmp_path / markups_file_name(level.name)
    write_roi_markups(level, path)
    roi, _scene_alive = _read_with_slicer(path)

    assert roi.GetName() == level.name
    center = [0.0, 0.0, 0.0]
    roi.GetCenter(center)
    assert np.allclose(center, LPS_TO_RAS @ np.asarray(level.box.center), atol=1e-9)
    assert np.allclose(roi.GetSize(), level.box.size, atol=1e-9)
    object_to_node = _matrix3(roi.GetObjectToNodeMatrix())
    assert np.allclose(object_to_node, LPS_TO_RAS @ level.box.axes(), atol=1e-9)
    # every corner lands where ours is, in RAS
    ras_corners = np.asarray(center) + (np.array([[sx, sy, sz] for sx in (-1, 1) for sy in (-1, 1) for sz in (-1, 1)])
                                        * np.asarray(roi.GetSize()) / 2) @ object_to_node.T
    assert np.allclose(ras_corners, level.box.corners() @ LPS_TO_RAS, atol=1e-9)

    # Slicer turns the enabled measurements into the node description (attributes are not saved)
    description = roi.GetDescription()
    assert "grade" in description and f"p={level.grade.probability:.2f}" in description
    assert level.grade.grade in roi.GetNthControlPointDescription(0)


def test_markups_carry_grade_colour_and_clinician_grade(tmp_path):
    result = make_result()
    level = result.levels[2]  # corrected to D by a clinician
    path = tmp_path / "L5-S1.mrk.json"
    write_roi_markups(level, path)
    markup = json.loads(path.read_text())["markups"][0]
    assert markup["display"]["color"] == pytest.approx(list(grade_color(level)))
    assert grade_color(level) == pytest.approx((0.85, 0.10, 0.10))  # Schizas D is red
    roi, _scene_alive = _read_with_slicer(path)
    assert "D (clinician; model C p=0.70)" in roi.GetDescription()
    write_roi_markups(level, path, color=(0.0, 0.5, 1.0))
    assert json.loads(path.read_text())["markups"][0]["display"]["color"] == [0.0, 0.5, 1.0]


def test_markups_of_a_level_graded_only_by_the_clinician(tmp_path):
    level = make_result().levels[0]
    level.grade = None
    level.correction = ClinicianCorrection(grade="B", name="L3-L4", author="annotator 2")
    path = _written(level, tmp_path / "L3-L4.mrk.json")
    roi, _scene_alive = _read_with_slicer(path)
    assert "B (clinician)" in roi.GetDescription()
    assert "clinician grade B (annotator 2)" in roi.GetNthControlPointDescription(0)


def test_markups_logic_loads_the_files(tmp_path):
    slicer, scene = _scene()
    result = make_result()
    paths = write_study_outputs(result, tmp_path / "out", make_images(result))
    logic = slicer.vtkSlicerMarkupsLogic()
    logic.SetMRMLScene(scene)
    for level, path in zip(result.levels, [p for p in paths if p.name.endswith(".mrk.json")]):
        node_id = logic.LoadMarkups(str(path))
        assert node_id
        node = scene.GetNodeByID(node_id)
        assert node.IsA("vtkMRMLMarkupsROINode") and node.GetName() == level.name
        assert np.allclose(node.GetSize(), level.box.size)
        display = node.GetDisplayNode()
        assert np.allclose(display.GetColor(), grade_color(level))
        assert np.allclose(display.GetSelectedColor(), grade_color(level))


def test_slicer_util_load_markups_when_the_application_is_there(tmp_path):
    pytest.importorskip("slicer")
    try:
        from slicer import app  # noqa: F401  # only inside the Slicer application
        import slicer.util
    except ImportError:
        pytest.skip("slicer.util.loadMarkups needs slicer.app (the Slicer application)")
    level = make_result().levels[1]
    path = tmp_path / "L4-L5.mrk.json"
    write_roi_markups(level, path)
    node = slicer.util.loadMarkups(str(path))
    assert node.GetName() == "L4-L5"


def test_read_roi_markups_round_trips_our_files(tmp_path):
    for level in make_result().levels:
        path = tmp_path / markups_file_name(level.name)
        write_roi_markups(level, path)
        box = read_roi_markups(path)
        assert np.allclose(box.center, level.box.center)
        assert np.allclose(box.size, level.box.size)
        assert np.allclose(box.orientation, level.box.orientation)


@pytest.mark.parametrize("coordinate_system", ["LPS", "RAS"])
def test_read_roi_markups_reads_files_saved_by_slicer(tmp_path, coordinate_system):
    """A user moves and rotates the ROI in Slicer and saves it: we get the edited box back in LPS."""
    import vtk

    level = make_result().levels[1]
    roi, scene = _read_with_slicer(_written(level, tmp_path / "ours.mrk.json"))
    roi.CreateDefaultDisplayNodes()
    # the user's edit, in RAS: a new rotation, centre and size
    edit = _rotation([1.0, 2.0, -0.5], 40.0)
    matrix = vtk.vtkMatrix4x4()
    for r in range(3):
        for c in range(3):
            matrix.SetElement(r, c, edit[r, c])
        matrix.SetElement(r, 3, (5.0, -7.0, 30.0)[r])
    roi.SetAndObserveObjectToNodeMatrix(matrix)
    roi.SetSize(20.0, 11.0, 6.0)
    slicer = pytest.importorskip("slicer")
    storage = slicer.vtkMRMLMarkupsROIJsonStorageNode()
    scene.AddNode(storage)
    if coordinate_system == "RAS":
        storage.SetCoordinateSystem(slicer.vtkMRMLStorageNode.CoordinateSystemRAS)
    saved = tmp_path / "edited.mrk.json"
    storage.SetFileName(str(saved))
    assert storage.WriteData(roi) == 1
    assert json.loads(saved.read_text())["markups"][0]["coordinateSystem"] == coordinate_system

    box = read_roi_markups(saved)
    assert np.allclose(box.center, LPS_TO_RAS @ np.array([5.0, -7.0, 30.0]))
    assert np.allclose(box.size, (20.0, 11.0, 6.0))
    assert np.allclose(box.axes(), LPS_TO_RAS @ edit)


def _written(level: DiscLevel, path: Path) -> Path:
    write_roi_markups(level, path)
    return path


def test_read_roi_markups_rejects_other_files(tmp_path):
    path = tmp_path / "x.mrk.json"
    path.write_text(json.dumps({"markups": []}))
    with pytest.raises(ValueError, match="not a Slicer markups file"):
        read_roi_markups(path)
    path.write_text(json.dumps({"@schema": writers.MARKUPS_SCHEMA, "markups": [{"type": "Fiducial"}]}))
    with pytest.raises(ValueError, match="no ROI"):
        read_roi_markups(path)


def test_markups_file_names_are_safe():
    assert markups_file_name("L4-L5") == "L4-L5.mrk.json"
    assert markups_file_name("C7-T1") == "C7-T1.mrk.json"
    for hostile in ("../../etc/passwd", "a/b\\c", "..", "", "CON", "L4 L5?*"):
        name = markups_file_name(hostile)
        assert name.endswith(".mrk.json") and "/" not in name and "\\" not in name and not name.startswith(".")
        assert name.split(".")[0].lower() != "con"


def test_duplicate_level_names_get_distinct_files(tmp_path):
    result = make_result()
    result.levels[1].name = "l3-l4"  # same file as L3-L4 on a case-insensitive disk
    names = [p.name for p in write_study_outputs(result, tmp_path / "out", make_images(result))]
    assert "L3-L4.mrk.json" in names and "l3-l4_2.mrk.json" in names


# --------------------------------------------------------------------------- atomicity


def _fail(*args, **kwargs):
    raise RuntimeError("disk full, say")


def test_failed_write_leaves_no_output_folder(tmp_path, monkeypatch):
    result = make_result()
    monkeypatch.setattr(report_module, "write_html_report", _fail)
    out = tmp_path / "new" / "deeper" / "case"
    with pytest.raises(RuntimeError, match="disk full"):
        write_study_outputs(result, out, make_images(result))
    assert not out.exists()
    assert not (tmp_path / "new").exists()  # the parents we made are gone too
    assert list(tmp_path.iterdir()) == []


def test_failed_write_leaves_an_existing_folder_unchanged(tmp_path, monkeypatch):
    result = make_result()
    out = tmp_path / "case"
    write_study_outputs(result, out, make_images(result))
    (out / "my_notes.txt").write_text("the user's own file")
    before = _listing(out)

    changed = make_result()
    changed.levels[0].name = "L2-L3"
    monkeypatch.setattr(report_module, "write_html_report", _fail)
    with pytest.raises(RuntimeError):
        write_study_outputs(changed, out, make_images(changed))
    assert _listing(out) == before
    assert not _staging_leftovers(tmp_path)


def test_failure_while_moving_in_is_rolled_back(tmp_path, monkeypatch):
    result = make_result()
    out = tmp_path / "case"
    write_study_outputs(result, out, make_images(result))
    (out / "my_notes.txt").write_text("keep me")
    before = _listing(out)

    real_replace = os.replace
    calls = {"n": 0}

    def flaky_replace(src, dst):
        calls["n"] += 1
        if calls["n"] == 9:  # after the old files went out and some new ones came in
            raise OSError("device went away")
        return real_replace(src, dst)

    monkeypatch.setattr(writers.os, "replace", flaky_replace)
    changed = make_result()
    changed.levels[0].grade = _grade("B", {"A": 0.3, "B": 0.6, "C": 0.05, "D": 0.05})
    with pytest.raises(OSError, match="device went away"):
        write_study_outputs(changed, out, make_images(changed))
    assert _listing(out) == before
    assert not _staging_leftovers(tmp_path)


def test_the_commit_keeps_a_journal_while_files_move(tmp_path, monkeypatch):
    """From before the first move to after the last, the staging folder holds a journal of what the commit moves."""
    result = make_result()
    out = tmp_path / "case"
    write_study_outputs(result, out, make_images(result))
    real_replace = os.replace
    journals = []

    def watching_replace(source, target):
        staging, = [p for p in out.iterdir() if p.name.startswith(writers.STAGING_PREFIX)]
        journals.append(json.loads((staging / writers.JOURNAL_FILE).read_text(encoding="utf-8")))
        return real_replace(source, target)

    monkeypatch.setattr(writers.os, "replace", watching_replace)
    changed = make_result()
    changed.levels[0].name = "L2-L3"
    write_study_outputs(changed, out, make_images(changed))
    assert len(journals) == 12  # six earlier files out (L3-L4 as a stale one), six new ones in
    assert all(journal == journals[0] for journal in journals)
    journal = journals[0]
    assert journal["format"] == writers.JOURNAL_FORMAT and journal["state"] == "moving"
    assert journal["pid"] == os.getpid()
    assert sorted(journal["files"]) == sorted(p.name for p in out.iterdir())
    assert journal["files"]["result.json"] == hashlib.sha256((out / "result.json").read_bytes()).hexdigest()
    assert journal["stale"] == ["L3-L4.mrk.json"]
    assert not _staging_leftovers(tmp_path)  # the journal went with the staging folder


def _read_only(monkeypatch, folder: Path) -> None:
    """Make ``folder`` refuse new entries, as a folder the user may not write in does.

    By patching, not chmod: tests often run as root (in containers), whom a folder's mode does not stop.
    """
    folder = Path(os.path.abspath(folder))

    def guard(real, made):  # made: the argument that names the new entry
        def guarded(*args, **kwargs):
            target = Path(os.path.abspath(args[made]))
            if target.parent == folder:
                raise PermissionError(13, "Permission denied", str(target))
            return real(*args, **kwargs)
        return guarded

    for name, made in (("mkdir", 0), ("rename", 1), ("replace", 1)):
        monkeypatch.setattr(os, name, guard(getattr(os, name), made))


def test_a_chosen_folder_whose_parent_is_read_only_takes_the_outputs(tmp_path, monkeypatch):
    """The staging folder lies inside the chosen folder: its parent need not be writable."""
    parent = tmp_path / "shared"
    out = parent / "case"
    out.mkdir(parents=True)
    (out / "my_notes.txt").write_text("the user's own file")
    _read_only(monkeypatch, parent)
    with pytest.raises(PermissionError):
        (parent / "other").mkdir()  # the stand-in works
    result = make_result()
    write_study_outputs(result, out, make_images(result))
    assert StudyResult.from_json((out / "result.json").read_text()).levels[0].name == result.levels[0].name
    before = _listing(out)

    changed = make_result()
    changed.levels[0].name = "L2-L3"
    write_study_outputs(changed, out, make_images(changed))  # a re-run replaces the earlier one
    assert "L2-L3.mrk.json" in _listing(out) and (out / "my_notes.txt").read_text() == "the user's own file"
    monkeypatch.setattr(report_module, "write_html_report", _fail)
    with pytest.raises(RuntimeError):
        write_study_outputs(result, out, make_images(result))
    assert "L2-L3.mrk.json" in _listing(out) and before.keys() != _listing(out).keys()
    assert sorted(p.name for p in parent.iterdir()) == ["case"]
    assert not _staging_leftovers(tmp_path)


def test_rerun_replaces_our_files_and_keeps_the_users(tmp_path):
    result = make_result()
    out = tmp_path / "case"
    write_study_outputs(result, out, make_images(result))
    (out / "my_notes.txt").write_text("keep me")
    (out / "T12-L1.mrk.json").write_text("{}")  # not from our earlier run

    renumbered = make_result()
    for level, name in zip(renumbered.levels, ["L2-L3", "L3-L4", "L4-L5"]):
        level.name = name
    write_study_outputs(renumbered, out, make_images(renumbered))
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["result.json", "levels.csv", "report.html", "L2-L3.mrk.json", "L3-L4.mrk.json", "L4-L5.mrk.json",
         "my_notes.txt", "T12-L1.mrk.json"])  # L5-S1 of the earlier run is gone, the user's files stay
    assert StudyResult.from_json((out / "result.json").read_text()).levels[0].name == "L2-L3"
    assert not _staging_leftovers(tmp_path)


# --------------------------------------------------------------------------- killed outright

#: run in a process of its own, which kills itself (SIGKILL: no handler, no ``finally`` runs) at the
#: ``kill_at``-th call of one function, as a kill or a power cut would stop it there; argv: the output
#: folder, the job (``write`` a re-run into it, or ``recover`` it) and where to die
_KILLED_PROCESS = r"""
import os, shutil, signal, sys
from pathlib import Path

from SpineStenosisGraderLib.outputs import writers

out, job, function, kill_at = Path(sys.argv[1]), sys.argv[2], sys.argv[3], int(sys.argv[4])
owner, name = {"replace": (os, "replace"), "rmtree": (shutil, "rmtree"), "journal": (writers, "_write_journal"),
               "fsync_folder": (writers, "_fsync_folder")}[function]
real = getattr(owner, name)
calls = 0


def die_at_call(*args, **kwargs):
    global calls
    calls += 1
    if calls == kill_at:
        os.kill(os.getpid(), signal.SIGKILL)
    return real(*args, **kwargs)


setattr(owner, name, die_at_call)
if job == "write":
    from test_writers import make_images, rerun_result

    result = rerun_result()
    writers.write_study_outputs(result, out, make_images(result))
else:
    writers.recover_interrupted_writes(out)
sys.exit(3)  # the kill point was never reached
"""

#: where the writer of :func:`rerun_result` over :func:`make_result`'s files dies: before its journal
#: exists; at each of its 12 renames (six earlier files out, L3-L4 as a stale one, then levels.csv,
#: L2-L3 (new), L4-L5, L5-S1, report.html, result.json in); with all moved but the journal still there;
#: and once the commit is complete, removing the staging folder
_WRITE_KILL_POINTS = [("journal", 1), *(("replace", n) for n in range(1, 13)), ("fsync_folder", 4), ("rmtree", 1)]

posix_signals = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")


def rerun_result() -> StudyResult:
    """A re-run of :func:`make_result`'s study whose every file differs: each box moved, the first level renamed."""
    result = make_result()
    for level in result.levels:
        level.box = OrientedBox(tuple(c + 1.0 for c in level.box.center), level.box.size, level.box.orientation)
    result.levels[0].name = "L2-L3"  # a new markups file, and L3-L4's of the earlier run goes
    return result


def _files(folder: Path) -> dict[str, bytes]:
    """The files in ``folder`` with their bytes, the report's minute of writing left out."""
    files = {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}
    if "report.html" in files:
        files["report.html"] = re.sub(rb"\d{4}-\d\d-\d\d \d\d:\d\d UTC", b"", files["report.html"])
    return files


def _staging_folders(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.name.startswith(writers.STAGING_PREFIX))


def _earlier_run(folder: Path) -> dict[str, bytes]:
    """Write :func:`make_result` and a file of the user's into ``folder``; return its files."""
    result = make_result()
    write_study_outputs(result, folder, make_images(result))
    (folder / "my_notes.txt").write_text("the user's own file")
    return _files(folder)


def _run_killed(out: Path, job: str, function: str, kill_at: int) -> None:
    env = process_environment()
    env["PYTHONPATH"] += os.pathsep + str(Path(__file__).resolve().parent)  # for test_writers
    process = subprocess.run([sys.executable, "-c", _KILLED_PROCESS, str(out), job, function, str(kill_at)],
                             env=env, capture_output=True, text=True, timeout=120)
    assert process.returncode == -signal.SIGKILL, f"not killed ({process.returncode}): {process.stderr}"


@pytest.fixture(scope="module")
def rerun_files(tmp_path_factory) -> dict[str, bytes]:
    """The files of a complete re-run over an earlier one: the earlier run's replaced, the user's kept."""
    folder = tmp_path_factory.mktemp("reference")
    _earlier_run(folder)
    result = rerun_result()
    write_study_outputs(result, folder, make_images(result))
    return _files(folder)


@posix_signals
@pytest.mark.parametrize("function, kill_at", _WRITE_KILL_POINTS)
def test_a_write_killed_at_any_point_is_undone_by_the_next_load_or_write(tmp_path, rerun_files, function, kill_at):
    """Killed outright anywhere in its commit, a re-run leaves the earlier results whole once the folder is used."""
    out = tmp_path / "out"
    before = _earlier_run(out)
    _run_killed(out, "write", function, kill_at)
    assert len(_staging_folders(out)) == 1  # the kill left its staging folder
    if function == "replace" and kill_at > 1:
        assert _files(out) != before  # and a folder that mixes the two runs: the case to undo
    complete = function == "rmtree"  # killed only once its files were all in and its journal gone
    crashed = tmp_path / "crashed"
    shutil.copytree(out, crashed, symlinks=True)

    # a load undoes it ...
    loaded = load_result(out)
    assert _files(out) == (rerun_files if complete else before)
    assert not _staging_folders(out)
    assert loaded.to_dict() == (rerun_result() if complete else make_result()).to_dict()

    # ... and so does the next write, which then leaves exactly its own files (and the user's)
    result = rerun_result()
    write_study_outputs(result, crashed, make_images(result))
    assert _files(crashed) == rerun_files
    assert sorted(p.name for p in crashed.iterdir()) == sorted(rerun_files)  # no staging folder either


@pytest.fixture(scope="module")
def killed_half_way(tmp_path_factory) -> tuple[Path, dict[str, bytes]]:
    """An output folder whose re-run was killed with the earlier files out and two new ones in; its earlier files."""
    out = tmp_path_factory.mktemp("killed") / "out"
    before = _earlier_run(out)
    _run_killed(out, "write", "replace", 9)
    return out, before


@posix_signals
@pytest.mark.parametrize("kill_at", range(1, 9))  # two new files back to staging, six earlier ones back in
def test_an_undoing_killed_in_turn_is_undone_again(tmp_path, killed_half_way, kill_at):
    """Every step of the undoing leaves a state the commit went through: killed, it is just undone again."""
    crashed, before = killed_half_way
    out = tmp_path / "out"
    shutil.copytree(crashed, out, symlinks=True)
    _run_killed(out, "recover", "replace", kill_at)
    assert len(writers.recover_interrupted_writes(out)) == 1
    assert _files(out) == before
    assert not _staging_folders(out)


@posix_signals
def test_a_file_saved_over_one_the_killed_write_moved_in_is_kept(tmp_path, killed_half_way):
    """Undoing takes out only the very files the commit moved in: not one a clinician saved over them since."""
    crashed, before = killed_half_way
    out = tmp_path / "out"
    shutil.copytree(crashed, out, symlinks=True)
    assert "L2-L3.mrk.json" in _files(out)  # moved in by the killed re-run
    (out / "L2-L3.mrk.json").write_text('{"the clinician": "moved the box"}')
    writers.recover_interrupted_writes(out)
    assert _files(out) == {**before, "L2-L3.mrk.json": b'{"the clinician": "moved the box"}'}
    assert not _staging_folders(out)


def _leftover(out: Path, pid: int, host: str = writers._HOST, journal: dict | None = None,
              tag: str = "0123456789ab") -> Path:
    """A staging folder as a writer with ``pid`` leaves it: a staged file, and ``journal`` if given."""
    staging = out / f"{writers.STAGING_PREFIX}{host}-{pid}-{tag}"
    staging.mkdir()
    (staging / "result.json").write_text("{}")
    if journal is not None:
        (staging / writers.JOURNAL_FILE).write_text(json.dumps(journal))
    return staging


def _dead_pid() -> int:
    process = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return int(process.stdout)


def _users_files(out: Path) -> dict[str, bytes]:
    out.mkdir()
    (out / "my_notes.txt").write_text("the user's own file")
    (out / ".hidden-settings").write_text("also the user's")
    (out / "result.json").write_text("not ours, but named like our result")
    (out / "L4-L5.mrk.json").write_text("{}")
    return _files(out)


def test_a_staging_folder_without_a_journal_is_removed_and_nothing_else_touched(tmp_path):
    out = tmp_path / "out"
    before = _users_files(out)
    staging = _leftover(out, _dead_pid())
    (staging / writers._PREVIOUS).mkdir()
    assert writers.recover_interrupted_writes(out) == [staging]
    assert _files(out) == before and not _staging_folders(out)


def test_a_journal_cut_short_before_any_move_is_removed_but_one_beside_moved_files_is_left(tmp_path):
    out = tmp_path / "out"
    before = _users_files(out)
    staging = _leftover(out, _dead_pid())
    (staging / writers.JOURNAL_FILE).write_text('{"format": "spine-stenosis-grader/commit-jou')  # killed writing it
    assert writers.recover_interrupted_writes(out) == [staging]
    assert _files(out) == before and not _staging_folders(out)

    staging = _leftover(out, _dead_pid())
    (staging / writers.JOURNAL_FILE).write_text("not a journal")
    (staging / writers._PREVIOUS).mkdir()
    (staging / writers._PREVIOUS / "levels.csv").write_text("an earlier file, moved out")
    assert writers.recover_interrupted_writes(out) == []  # what moved is unknown: a person must look
    assert _files(out) == before and _staging_folders(out) == [staging]


def test_a_live_writers_staging_folder_is_left_alone(tmp_path):
    """A staging folder of a process that still runs is its own: never undone, and a write waits for its commit."""
    out = tmp_path / "out"
    before = _users_files(out)
    alive = os.getppid()  # the process that started the tests: running
    writing = _leftover(out, alive)
    assert writers.recover_interrupted_writes(out, for_writing=True) == []  # still writing: no commit to wait for
    journal = {"format": writers.JOURNAL_FORMAT, "state": "moving", "files": {"result.json": "0" * 64}, "stale": []}
    moving = _leftover(out, alive, journal=journal, tag="ba9876543210")
    assert writers.recover_interrupted_writes(out) == []
    result = make_result()
    with pytest.raises(SpineStenosisGraderError, match="Another run is moving its results"):
        write_study_outputs(result, out, make_images(result))
    assert _files(out) == before and _staging_folders(out) == sorted([writing, moving])


def test_another_computers_staging_folder_is_left_alone_for_an_hour(tmp_path):
    out = tmp_path / "out"
    before = _users_files(out)
    other = "0" * 8 if writers._HOST != "0" * 8 else "1" * 8
    staging = _leftover(out, 12345, host=other)
    assert writers.recover_interrupted_writes(out) == []
    two_hours_ago = time.time() - 7200
    for path in [*staging.iterdir(), staging]:
        os.utime(path, (two_hours_ago, two_hours_ago))
    assert writers.recover_interrupted_writes(out) == [staging]
    assert _files(out) == before and not _staging_folders(out)


def test_a_commit_that_cannot_undo_its_moves_leaves_them_for_the_next_write(tmp_path, monkeypatch):
    """When the undoing fails too, the journal and the earlier files stay in the staging folder, not deleted."""
    out = tmp_path / "out"
    before = _earlier_run(out)
    real_replace = os.replace
    calls = {"n": 0}

    def failing_replace(source, target):
        calls["n"] += 1
        if calls["n"] >= 9:  # the device went away after the earlier files went out and two new ones came in
            raise OSError(5, "Input/output error")
        return real_replace(source, target)

    monkeypatch.setattr(writers.os, "replace", failing_replace)
    result = rerun_result()
    with pytest.raises(OSError, match="Input/output error"):
        write_study_outputs(result, out, make_images(result))
    staging, = _staging_folders(out)
    assert (staging / writers.JOURNAL_FILE).is_file() and len(list((staging / writers._PREVIOUS).iterdir())) == 6
    monkeypatch.setattr(writers.os, "replace", real_replace)  # the device is back

    assert load_result(out).to_dict() == make_result().to_dict()
    assert _files(out) == before and not _staging_folders(out)


# --------------------------------------------------------------------------- html report

_EXTERNAL = re.compile(r"""(?:src|href|action|url)\s*[=(]\s*["']?\s*(?!data:)[a-z][a-z0-9+.-]*:""", re.IGNORECASE)


def _embedded_pngs(html_text: str) -> list[bytes]:
    return [base64.b64decode(m) for m in re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', html_text)]


def test_report_is_self_contained(tmp_path):
    result = make_result()
    path = tmp_path / "report.html"
    write_html_report(result, path, make_images(result))
    text = path.read_text(encoding="utf-8")
    assert not _EXTERNAL.search(text)
    assert "<script" not in text.lower() and "<link" not in text.lower()
    pngs = _embedded_pngs(text)
    assert len(pngs) == 3 and all(p.startswith(b"\x89PNG\r\n\x1a\n") for p in pngs)
    for name in ("L3-L4", "L4-L5", "L5-S1"):
        assert name in text
    assert "not for clinical use" in text.lower()
    assert "phantoms and public samples" in text
    assert "Counted from the sacrum" in text
    assert "2 slices had no canal detection" in text
    assert "canal-grader" in text and "0.3.1" in text
    assert "uncertain" in text
    # one level's card says the canal was not seen there (L4-L5's), the others' do not
    assert text.count(">canal not seen</span>") == 1
    cards = [text.index(f'<span class="lvl">{name}</span>') for name in ("L3-L4", "L4-L5", "L5-S1")]
    assert cards[1] < text.index(">canal not seen</span>") < cards[2]
    assert "Dr. O&#x27;Neil" in text


def test_report_escapes_hostile_text(tmp_path):
    evil = '<img src="http://evil.example/x.png" onerror="alert(1)"><script>alert(2)</script>'
    result = make_result(source=evil)
    result.levels[0].name = "<b>L3</b>"
    result.warnings.append("<script>steal()</script>")
    text = render_html_report(result, make_images(result))
    assert "<script" not in text.lower() and "<img src=\"http" not in text and "<b>L3</b>" not in text
    assert not _EXTERNAL.search(text)
    assert "&lt;script&gt;alert(2)&lt;/script&gt;" in text and "&lt;b&gt;L3&lt;/b&gt;" in text


def test_report_without_pictures_and_for_ct(tmp_path):
    result = make_result(modality="CT")
    text = render_html_report(result, {result.levels[0].slice_index: np.full((N_J, N_I), 40.0)})
    assert len(_embedded_pngs(text)) == 1
    assert text.count("No slice picture") == 2


def test_report_without_matplotlib_still_writes(monkeypatch):
    def no_matplotlib(*args, **kwargs):
        raise ImportError("No module named 'matplotlib'")

    monkeypatch.setattr(report_module, "_LevelPicture", no_matplotlib)
    result = make_result()
    text = render_html_report(result, make_images(result))
    assert not _embedded_pngs(text) and text.count("need matplotlib") == 3


def test_report_takes_a_singleton_3d_slice_and_refuses_a_volume():
    result = make_result()
    images = {k: v[np.newaxis] for k, v in make_images(result).items()}
    assert len(_embedded_pngs(render_html_report(result, images))) == 3
    images[result.levels[0].slice_index] = np.zeros((3, N_J, N_I))
    with pytest.raises(ValueError, match="must be 2D"):
        render_html_report(result, images)


def test_box_rectangle_uses_the_stack_geometry():
    """The box's pixel rectangle comes from its LPS corners mapped through the tilted stack."""
    result = make_result()
    level = result.levels[0]
    i0, i1, j0, j1 = report_module._box_pixel_rect(level, result.study)
    assert (i0 + i1) / 2 == pytest.approx(40.0) and (j0 + j1) / 2 == pytest.approx(44.0)
    assert i1 - i0 == pytest.approx(16.0 / 0.8) and j1 - j0 == pytest.approx(13.0 / 0.7)


# --------------------------------------------------------------------------- lps_to_index

_finite = dict(allow_nan=False, allow_infinity=False)


@settings(max_examples=200, deadline=None)
@given(
    raw=arrays(np.float64, (3, 3), elements=st.floats(-1.0, 1.0, **_finite)),
    spacing=arrays(np.float64, 3, elements=st.floats(0.05, 8.0, **_finite)),
    origin=arrays(np.float64, 3, elements=st.floats(-800.0, 800.0, **_finite)),
    index=arrays(np.float64, (5, 3), elements=st.floats(-50.0, 1000.0, **_finite)),
)
def test_lps_to_index_inverts_the_itk_mapping(raw, spacing, origin, index):
    # strictly diagonally dominant, so never singular (raw + 3 I is when every entry is -1), then orthonormal
    q, r = np.linalg.qr(raw + 4.0 * np.eye(3))
    direction = q * np.sign(np.diag(r))
    study = StudyInfo(source="s", modality="MR", region="lumbar", n_slices=1, slice_spacing_mm=1.0,
                      pixel_spacing_mm=(1.0, 1.0), stack_origin_lps=tuple(origin), stack_spacing_mm=tuple(spacing),
                      stack_direction_lps=tuple(direction.ravel()))
    points = origin + (direction @ (spacing * index).T).T
    assert np.allclose(lps_to_index(study, points), index, atol=1e-6)
    assert np.allclose(lps_to_index(study, points[0]), index[0], atol=1e-6)
    assert lps_to_index(study, points[0]).shape == (3,)


@pytest.mark.parametrize("width, centre_i", [(60, 40.0), (400, 40.0), (400, 200.0), (400, 380.0)])
def test_the_level_label_is_shown_whole_and_stays_on_its_own_panel(width, centre_i):
    # a sagittal neck's axial reformat is about 50 mm across: its label must not be cut to "name u"
    pytest.importorskip("matplotlib")
    result = make_result()
    level = result.levels[0]
    level.name_anchored = False
    level.box = OrientedBox(_point(result.study, centre_i, 44, 2), level.box.size, level.box.orientation)
    picture = report_module._LevelPicture()
    report_module._draw_level(picture.axes[0], picture.axes[1], level, result.study,
                              np.random.default_rng(0).normal(300.0, 80.0, size=(300, width)))
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(picture.figure)
    canvas.draw()  # lays the image panels out at their aspect, as saving the PNG does
    renderer = canvas.get_renderer()
    label = next(t for t in picture.axes[0].texts if t.get_text().startswith("L3-L4"))
    assert label.get_text() == "L3-L4 (not anchored)  A"
    shown = label.get_window_extent(renderer)
    if label.get_clip_on():  # clipped to the image: only what lies inside it is drawn
        assert picture.axes[0].bbox.contains(shown.x0, shown.y0) and picture.axes[0].bbox.contains(shown.x1, shown.y1)
    # on the left half of the figure, off the zoom panel
    assert 0 <= shown.x0 and shown.x1 <= picture.axes[1].bbox.x0
    # and over the orientation letters, which a narrow image's label covers (the R of a lumbar MR reformat
    # was drawn across its "L1-L2")
    letters = [t for t in picture.axes[0].texts if t.get_text() in ("R", "L", "A", "P", "S", "I")]
    assert len(letters) == 4 and all(label.get_zorder() > t.get_zorder() for t in letters)
