"""Write a graded study to disk: result JSON, levels CSV, Slicer ROI markups, HTML report.

The markups are written as plain JSON in exactly the form Slicer's
``vtkMRMLMarkupsROIJsonStorageNode`` reads, so this module (and the CLI) needs
neither Slicer nor VTK. Facts about that format, checked against slicer-core:

* With ``"coordinateSystem": "LPS"`` the ``center`` is LPS and ``orientation``
  is the ROI-to-LPS rotation, row-major, whose *columns* are the box axes in
  LPS: the very layout of ``OrientedBox.orientation``. (Slicer converts by
  negating the first six values, i.e. rows x and y: ``R_lps = diag(-1,-1,1) @ R_ras``.)
* A Box ROI must carry one control point at its centre: without it Slicer
  reloads the ROI with size 0.
* Slicer reads a markup's ``name`` but neither writes it nor saves a node
  description or attributes. What does survive a load and re-save is
  ``measurements``: static measurements keep their value, units, description
  and print format, and Slicer makes the enabled ones the node's description
  and the label shown beside the box. So the grade travels as a measurement
  whose value is the probability and whose print format spells the grade.
"""

from __future__ import annotations

import csv
import errno
import hashlib
import json
import os
import re
import shutil
import socket
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Optional, Sequence

import numpy as np

from . import report as _report
from .report import (
    effective_box,
    effective_grade,
    effective_name,
    grade_class,
    grade_color,
    level_scale,
    measurement_label,
)
from ..errors import SpineStenosisGraderError
from ..checksums import sha256_file
from ..result import DiscLevel, OrientedBox, StudyResult

#: the schema id Slicer 5.x writes (the newest builds write v1.0.4); Slicer reads any v1.x.y
MARKUPS_SCHEMA = (
    "https://raw.githubusercontent.com/slicer/slicer/master/Modules/Loadable/Markups/"
    "Resources/Schema/markups-schema-v1.0.3.json#"
)
_ACCEPTED_SCHEMA = re.compile(r"markups-schema-v1\.[0-9]+\.[0-9]+\.json#*$", re.IGNORECASE)

RESULT_FILE = "result.json"
LEVELS_CSV_FILE = "levels.csv"
REPORT_FILE = "report.html"
MARKUPS_SUFFIX = ".mrk.json"

# orientation of the ROI's control point: Slicer writes its RAS identity, which is this in LPS
_CONTROL_POINT_ORIENTATION_LPS = [-1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0]
_IDENTITY = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
_WINDOWS_RESERVED = {"con", "prn", "aux", "nul", *(f"com{i}" for i in range(1, 10)), *(f"lpt{i}" for i in range(1, 10))}


# --------------------------------------------------------------------------- markups


def markups_file_name(level_name: str) -> str:
    """A safe file name for a level's markups: ``"L4-L5"`` -> ``"L4-L5.mrk.json"``.

    Anything but letters, digits, ``-``, ``_`` and ``.`` becomes ``_``, so a
    name can neither leave the output folder nor upset Windows.
    """
    stem = re.sub(r"[^A-Za-z0-9._-]", "_", level_name).strip(". ")
    if not stem:
        stem = "level"
    if stem.split(".")[0].lower() in _WINDOWS_RESERVED:
        stem = "_" + stem
    return stem + MARKUPS_SUFFIX


def _grade_text(level: DiscLevel) -> str:
    """One line saying the grade, e.g. ``"Schizas grade B: moderate stenosis; model probability 0.81"``."""
    pred = level.grade
    corr = level.correction
    parts = []
    if pred is not None:
        scale = level_scale(level)
        cls = grade_class(level, pred.grade)
        prefix = f"{scale.key.capitalize()} grade" if scale is not None else f"{pred.scale} grade"
        shown = cls.label if cls is not None else pred.grade
        parts.append(f"{prefix} {shown}; model probability {pred.probability:.2f}"
                     + (" (uncertain)" if pred.uncertain else ""))
    if corr is not None and corr.grade:
        who = f" ({corr.author})" if corr.author else ""
        parts.append(f"clinician grade {corr.grade}{who}")
    if corr is not None and corr.note:
        parts.append(f"note: {corr.note}")
    return "; ".join(parts) if parts else "not graded"


def _printf_literal(text: str) -> str:
    return text.replace("%", "%%")


def _markups_measurements(level: DiscLevel) -> list[dict[str, Any]]:
    measurements = []
    pred = level.grade
    if pred is not None:
        scale = level_scale(level)
        cls = grade_class(level, pred.grade)
        corr = level.correction
        if corr is not None and corr.grade:
            shown = f"{_printf_literal(corr.grade)} (clinician; model {_printf_literal(pred.grade)} p=%.2f)%s"
        else:
            flag = ", uncertain" if pred.uncertain else ""
            shown = f"{_printf_literal(pred.grade)} (p=%.2f{flag})%s"
        description = f"{cls.label}: {cls.definition}" if cls is not None else f"grade {pred.grade}"
        measurements.append({
            "name": f"{scale.key.capitalize()} grade" if scale is not None else "grade",
            "enabled": True,
            "value": float(pred.probability),
            "description": description,
            "printFormat": shown,
        })
    elif level.correction is not None and level.correction.grade:
        # no model grade to show a probability of: a format without conversions prints as is
        measurements.append({
            "name": "grade",
            "enabled": True,
            "value": 1.0,
            "description": "clinician grade; the model gave none",
            "printFormat": f"{_printf_literal(level.correction.grade)} (clinician)",
        })
    names = {m["name"] for m in measurements} | {"volume"}  # Slicer's own ROI measurement
    for key, value in level.measurements.items():
        label, unit = measurement_label(key)
        name = label if label not in names else key  # Slicer merges measurements of one name
        names.add(name)
        entry: dict[str, Any] = {"name": name, "enabled": True, "value": float(value),
                                 "printFormat": "%.1f %s" if unit else "%.2f%s"}
        if unit:
            entry["units"] = unit
        measurements.append(entry)
    return measurements


def roi_markups_document(level: DiscLevel, color: Optional[Sequence[float]] = None) -> dict[str, Any]:
    """The markups JSON document (as a dict) of one level's ROI; see :func:`write_roi_markups`."""
    box = effective_box(level)
    name = effective_name(level)
    rgb = [float(c) for c in (color if color is not None else grade_color(level))]
    center = [float(v) for v in box.center]
    markup = {
        "type": "ROI",
        "name": name,
        "coordinateSystem": "LPS",
        "coordinateUnits": "mm",
        "locked": False,
        "fixedNumberOfControlPoints": False,
        "labelFormat": "%N-%d",
        "lastUsedControlPointNumber": 1,
        "roiType": "Box",
        "center": center,
        "orientation": [float(v) for v in box.orientation],
        "size": [float(v) for v in box.size],
        "insideOut": False,
        "controlPoints": [{
            "id": "1",
            "label": f"{name}-1",
            "description": _grade_text(level),
            "associatedNodeID": "",
            "position": center,
            "orientation": list(_CONTROL_POINT_ORIENTATION_LPS),
            "selected": True,
            "locked": False,
            "visibility": True,
            "positionStatus": "defined",
        }],
        "measurements": _markups_measurements(level),
        "display": {
            "visibility": True,
            "opacity": 1.0,
            "color": rgb,
            "selectedColor": rgb,
            "propertiesLabelVisibility": True,
            "pointLabelsVisibility": False,
            "textScale": 3.0,
            "glyphType": "Sphere3D",
            "glyphScale": 3.0,
            "glyphSize": 5.0,
            "useGlyphScale": True,
            "sliceProjection": False,
            "lineThickness": 0.2,
            "handlesInteractive": True,
            "translationHandleVisibility": True,
            "rotationHandleVisibility": False,
            "scaleHandleVisibility": True,
            "interactionHandleScale": 3.0,
            "snapMode": "toVisibleSurface",
        },
    }
    if len(markup["center"]) != 3 or len(markup["size"]) != 3 or len(markup["orientation"]) != 9:
        raise ValueError(f"box of {name} needs a 3-vector centre and size and a 9-value orientation")
    return {"@schema": MARKUPS_SCHEMA, "markups": [markup]}


def write_roi_markups(level: DiscLevel, path: Path, color: tuple[float, float, float] | None = None) -> None:
    """Write one level as a Slicer Markups ROI file (``.mrk.json``), in LPS.

    The box is the clinician's if they edited it, else the model's; the name
    likewise. ``color`` (RGB 0-1) defaults to the colour of the level's grade.
    The grade and its probability are a measurement (shown beside the box and
    as the node's description in Slicer) and the control point's description.
    """
    document = roi_markups_document(level, color)
    # allow_nan=False: Slicer's JSON parser rejects NaN, so fail here, loudly
    text = json.dumps(document, indent=4, allow_nan=False, ensure_ascii=False)
    Path(path).write_text(text + "\n", encoding="utf-8")


def _units_scale(units: Any) -> float:
    code = units[0] if isinstance(units, (list, tuple)) and units else units
    if code in (None, "", "mm"):
        return 1.0
    if code == "um":
        return 1e-3
    raise ValueError(f"markups coordinate units {units!r} are not supported (mm or um)")


def _vector(value: Any, n: int, what: str) -> np.ndarray:
    array = np.asarray(value, dtype=float).ravel()
    if array.size != n or not np.all(np.isfinite(array)):
        raise ValueError(f"markups {what} must be {n} finite numbers, got {value!r}")
    return array


def read_roi_markups(path: Path) -> OrientedBox:
    """The box of the first ROI in a Slicer markups file, in LPS millimetres.

    Reads our own files and ones Slicer saved after the user moved, resized or
    rotated the ROI, in LPS or RAS. (Slicer does not save a node's name in the
    file; the file name is the place to look for it.)
    """
    path = Path(path)
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ValueError(f"{path.name} is not valid JSON: {error}") from None
    schema = document.get("@schema", "") if isinstance(document, dict) else ""
    if not _ACCEPTED_SCHEMA.search(str(schema)):
        raise ValueError(f"{path.name} is not a Slicer markups file (no markups-schema-v1.x @schema)")
    rois = [m for m in document.get("markups", []) if isinstance(m, dict) and m.get("type") == "ROI"]
    if not rois:
        raise ValueError(f"{path.name} holds no ROI markup")
    roi = rois[0]
    if "center" not in roi or "size" not in roi:
        raise ValueError(f"{path.name}: the ROI has no center or size")
    scale = _units_scale(roi.get("coordinateUnits", "mm"))
    center = _vector(roi["center"], 3, "center") * scale
    size = _vector(roi["size"], 3, "size") * scale
    orientation = _vector(roi.get("orientation", _IDENTITY), 9, "orientation").reshape(3, 3)
    system = str(roi.get("coordinateSystem", "LPS")).upper()
    if system == "RAS":
        flip = np.diag([-1.0, -1.0, 1.0])
        center = flip @ center
        orientation = flip @ orientation
    elif system != "LPS":
        raise ValueError(f"{path.name}: unknown coordinate system {system!r}")
    return OrientedBox(
        center=tuple(float(v) for v in center),
        size=tuple(float(v) for v in size),
        orientation=tuple(float(v) + 0.0 for v in orientation.ravel()),  # + 0.0 turns -0.0 into 0.0
    )


# --------------------------------------------------------------------------- csv

_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def _text_cell(text: Optional[str]) -> str:
    """Free text for a spreadsheet: a leading = + - @ would run as a formula in Excel."""
    text = "" if text is None else str(text)
    return "'" + text if text.startswith(_FORMULA_START) else text


def _num(value: Optional[float], digits: int) -> str:
    if value is None:
        return ""
    value = float(value)
    return f"{value:.{digits}f}" if np.isfinite(value) else ""


_CSV_HEAD = ["level", "name_anchored", "name_confidence", "region", "slice_index", "center_L_mm", "center_P_mm", "center_S_mm",
             "size_1_mm", "size_2_mm", "size_3_mm", "detection_score", "canal_seen",
             "task", "scale", "grade", "grade_label", "probability"]
_CSV_TAIL = ["clinician_grade", "clinician_name", "clinician_author", "clinician_note",
             "clinician_box_edited", "final_grade", "model_name", "model_version"]


def _csv_layout(result: StudyResult) -> tuple[list[str], dict[str, str]]:
    """The CSV header, and the column of each measurement key."""
    classes: list[str] = []
    for level in result.levels:
        if level.grade is not None:
            scale = level_scale(level)
            for name in (scale.names if scale is not None else []) + list(level.grade.probabilities):
                if name not in classes:
                    classes.append(name)
    columns = _CSV_HEAD + [f"prob_{c}" for c in classes] + ["uncertain"]
    taken = set(columns) | set(_CSV_TAIL)
    measurement_columns: dict[str, str] = {}
    for level in result.levels:
        for key in level.measurements:
            if key not in measurement_columns:
                column = key if key not in taken else f"measured_{key}"
                measurement_columns[key] = column
                columns.append(column)
                taken.add(column)
    return columns + _CSV_TAIL, measurement_columns


def levels_csv_columns(result: StudyResult) -> list[str]:
    """The CSV header for ``result``: fixed columns, one per grade class, one per measurement."""
    return _csv_layout(result)[0]


def write_levels_csv(result: StudyResult, path: Path) -> None:
    """One row per level: where, what grade with every class probability, measurements, corrections, model.

    The box is the model's (a clinician's edited box is in result.json and the
    markups); sizes run along the box's own axes (about L, P, S for an axial box).
    Empty cells mean "none". Columns: see :func:`levels_csv_columns`.
    """
    columns, measurement_columns = _csv_layout(result)
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns, extrasaction="raise")
        writer.writeheader()
        for level in result.levels:
            pred, corr = level.grade, level.correction
            row = dict.fromkeys(columns, "")
            row.update({
                "level": _text_cell(level.name),
                "name_anchored": "true" if level.name_anchored else "false",
                "name_confidence": _text_cell(level.name_confidence),
                "region": _text_cell(level.region),
                "slice_index": str(int(level.slice_index)),
                "center_L_mm": _num(level.box.center[0], 3),
                "center_P_mm": _num(level.box.center[1], 3),
                "center_S_mm": _num(level.box.center[2], 3),
                "size_1_mm": _num(level.box.size[0], 3),
                "size_2_mm": _num(level.box.size[1], 3),
                "size_3_mm": _num(level.box.size[2], 3),
                "detection_score": _num(level.detection_score, 4),
                "canal_seen": "true" if level.canal_seen else "false",
                "final_grade": _text_cell(effective_grade(level)),
                "model_name": _text_cell(result.model.name),
                "model_version": _text_cell(result.model.version),
            })
            if pred is not None:
                cls = grade_class(level, pred.grade)
                row.update({
                    "task": _text_cell(pred.task),
                    "scale": _text_cell(pred.scale),
                    "grade": _text_cell(pred.grade),
                    "grade_label": _text_cell(cls.label if cls is not None else ""),
                    "probability": _num(pred.probability, 4),
                    "uncertain": "true" if pred.uncertain else "false",
                })
                for name, p in pred.probabilities.items():
                    row[f"prob_{name}"] = _num(p, 4)
            if corr is not None:
                row.update({
                    "clinician_grade": _text_cell(corr.grade),
                    "clinician_name": _text_cell(corr.name),
                    "clinician_author": _text_cell(corr.author),
                    "clinician_note": _text_cell(corr.note),
                    "clinician_box_edited": "true" if corr.box is not None else "false",
                })
            for key, value in level.measurements.items():
                row[measurement_columns[key]] = _num(value, 3)
            writer.writerow(row)


# --------------------------------------------------------------------------- study outputs


def markups_file_names(levels: Sequence[DiscLevel]) -> list[str]:
    """File names of the levels' markups, made unique (case-insensitively, for macOS and Windows)."""
    names, seen = [], set()
    for level in levels:
        name = markups_file_name(effective_name(level))
        stem = name[: -len(MARKUPS_SUFFIX)]
        counter = 2
        while name.lower() in seen:
            name = f"{stem}_{counter}{MARKUPS_SUFFIX}"
            counter += 1
        seen.add(name.lower())
        names.append(name)
    return names


def _previous_run_files(out_dir: Path) -> set[str]:
    """Files our earlier run wrote to ``out_dir``, known from its result.json (empty if none or not ours)."""
    try:
        previous = StudyResult.from_json((out_dir / RESULT_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError, KeyError, TypeError):
        return set()
    return {RESULT_FILE, LEVELS_CSV_FILE, REPORT_FILE, *markups_file_names(previous.levels)}


def write_study_outputs(result: StudyResult, out_dir: Path, slice_images: Mapping[int, np.ndarray],
                        report: bool = True) -> list[Path]:
    """Write result.json, levels.csv, one ``<level>.mrk.json`` per level and report.html into ``out_dir``.

    ``report=False`` leaves out report.html, whose pictures are most of the writing time
    (the Slicer module reads only result.json and makes the report on export).

    All or nothing (see :func:`write_all_or_nothing`): files of an earlier run in
    ``out_dir`` (known from its result.json) are replaced, and its level markups
    that this run does not write are removed, so the folder never mixes two runs;
    other files are left alone. If anything fails, ``out_dir`` is left as it was.
    Returns the paths written.
    """
    out_dir = Path(os.path.abspath(out_dir))
    # before the earlier run's files are read from its result.json: a killed write may have taken it away
    recover_interrupted_writes(out_dir, for_writing=True)

    def write(staging: Path) -> list[str]:
        names = [RESULT_FILE, LEVELS_CSV_FILE]
        (staging / RESULT_FILE).write_text(result.to_json() + "\n", encoding="utf-8")
        write_levels_csv(result, staging / LEVELS_CSV_FILE)
        for level, name in zip(result.levels, markups_file_names(result.levels)):
            write_roi_markups(level, staging / name)
            names.append(name)
        if report:
            _report.write_html_report(result, staging / REPORT_FILE, slice_images)
            names.append(REPORT_FILE)
        return names

    return write_all_or_nothing(out_dir, write, _previous_run_files(out_dir))


#: the hidden folder a write is staged in. It lies inside the chosen folder: the user chose that
#: folder, so it is writable, while its parent need not be (a shared drive, a home folder's root),
#: and a rename from a subfolder never crosses file systems, so moving the files in cannot fail half way
#: for want of space
STAGING_PREFIX = ".spine-stenosis-grader-writing-"
#: in the staging folder while its files move in: what the commit moves, so that a later process can
#: undo a commit that was killed outright (SIGKILL, a power cut) half way. Removed once the commit is
#: complete, so a staging folder without one never needs undoing
JOURNAL_FILE = ".journal.json"
JOURNAL_FORMAT = "spine-stenosis-grader/commit-journal"
#: in the staging folder: the earlier files the commit replaced, kept until it is complete
_PREVIOUS = ".previous"
#: the computer a staging folder's writer runs on, in its name with the writer's PID: a process can
#: only be looked up on its own computer, and an output folder may be on a shared drive
_HOST = hashlib.sha256(socket.gethostname().encode("utf-8")).hexdigest()[:8]
_STAGING_NAME = re.compile(re.escape(STAGING_PREFIX) + r"([0-9a-f]{8})-([0-9]{1,10})-[0-9a-f]{12}")
#: names of the staging folders this process is writing in now (its PID may be that of a killed earlier writer)
_ACTIVE: set[str] = set()
#: a staging folder of another computer's writer that has not changed for this long is abandoned:
#: writing takes a minute at the most, moving the files in a second
_ABANDONED_AFTER_S = 3600.0


def _staging_folder(out_dir: Path) -> Path:
    return out_dir / f"{STAGING_PREFIX}{_HOST}-{os.getpid()}-{uuid.uuid4().hex[:12]}"


def _process_alive(pid: int) -> bool:
    """Whether a process ``pid`` runs on this computer (a zombie counts as running)."""
    if os.name == "nt":
        # os.kill(pid, 0) would terminate the process on Windows
        import ctypes
        from ctypes import wintypes

        kernel32 = ctypes.WinDLL("kernel32", use_last_error=True)
        kernel32.OpenProcess.restype = wintypes.HANDLE  # a handle is pointer-sized, not an int
        kernel32.OpenProcess.argtypes = (wintypes.DWORD, wintypes.BOOL, wintypes.DWORD)
        kernel32.GetExitCodeProcess.argtypes = (wintypes.HANDLE, ctypes.POINTER(wintypes.DWORD))
        kernel32.CloseHandle.argtypes = (wintypes.HANDLE,)
        handle = kernel32.OpenProcess(0x1000, False, pid)  # PROCESS_QUERY_LIMITED_INFORMATION
        if not handle:
            return ctypes.get_last_error() == 5  # ERROR_ACCESS_DENIED: it runs, as another user
        try:
            code = wintypes.DWORD()
            return not kernel32.GetExitCodeProcess(handle, ctypes.byref(code)) or code.value == 259  # STILL_ACTIVE
        finally:
            kernel32.CloseHandle(handle)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # it runs, as another user
    except (OverflowError, OSError):
        return False  # no such PID can run
    return True


def _writer_may_be_alive(staging: Path) -> bool:
    """Whether the process that made ``staging`` may still be writing in it; when in doubt, it may."""
    match = _STAGING_NAME.fullmatch(staging.name)
    if match is None:
        return True  # made by an earlier version, whose folder names no writer
    host, pid = match[1], int(match[2])
    if host != _HOST:
        # a process on another computer (sharing the drive) cannot be looked up from here
        try:
            changed = max(p.lstat().st_mtime for p in [staging, *staging.iterdir()])
        except OSError:
            return True
        return time.time() - changed < _ABANDONED_AFTER_S
    if pid == os.getpid():
        # our PID: this process writes there now, or a killed writer had the same PID
        # (in a container every run may get the same one)
        return staging.name in _ACTIVE
    return _process_alive(pid)


def _valid_journal(path: Path) -> Optional[dict[str, Any]]:
    """The journal at ``path`` if it is whole and ours and names only files of the folder itself, else None."""
    try:
        journal = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(journal, dict) or journal.get("format") != JOURNAL_FORMAT or journal.get("state") != "moving":
        return None
    files, stale = journal.get("files"), journal.get("stale")
    if not isinstance(files, dict) or not isinstance(stale, list):
        return None
    names = [*files, *stale]
    plain = all(isinstance(name, str) and name not in ("", ".", "..", JOURNAL_FILE, _PREVIOUS)
                and os.path.basename(name) == name and "/" not in name and "\\" not in name for name in names)
    if not plain or not all(isinstance(digest, str) for digest in files.values()):
        return None
    return journal


def _recover(staging: Path, out_dir: Path) -> bool:
    """Undo the interrupted commit of ``staging``, if it had begun, and remove the folder; False if left alone."""
    journal_path = staging / JOURNAL_FILE
    if os.path.lexists(journal_path):
        journal = _valid_journal(journal_path)
        if journal is None:
            backup = staging / _PREVIOUS
            if backup.is_dir() and any(backup.iterdir()):
                return False  # files moved, and a journal that does not say which: a person must look
            # else it was killed while it wrote the journal, before anything moved
        else:
            _roll_back(staging, out_dir, journal)
            journal_path.unlink()
    # no journal (left): killed before its commit began, so out_dir is untouched, or after it was complete
    shutil.rmtree(staging, ignore_errors=True)
    return True


def recover_interrupted_writes(out_dir: Path, for_writing: bool = False) -> list[Path]:
    """Undo what writes into ``out_dir`` that were killed outright left behind; return the staging folders removed.

    A write killed outright (SIGKILL, a power cut), which no exception handler
    survives, may leave its staging folder and, killed while its files moved,
    ``out_dir`` with some new files and some earlier ones only in the staging
    folder. Such a commit is rolled back, not forward, from its journal: the
    earlier files go back, the ones it moved in go (only while they are still the
    very files it moved in), and the staging folder is removed. The earlier results
    are whole again, and the run can simply be repeated. A staging folder without
    a journal never touched ``out_dir`` and is removed. Files the journal does not
    name are never touched.

    A staging folder whose writer may still be running (its PID on this computer,
    or another computer's that changed within the hour) is left alone; with
    ``for_writing``, one whose files are moving raises SpineStenosisGraderError,
    as writing now would mix the two. Writers to one folder are assumed to take
    turns (the Slicer module grades in a work folder of its own and exports from
    its one main thread; the command line writes once, at its end): they are not
    locked out of each other, but one never undoes another's live write.
    """
    out_dir = Path(out_dir)
    try:
        leftovers = sorted(p for p in out_dir.iterdir()
                           if p.name.startswith(STAGING_PREFIX) and p.is_dir() and not p.is_symlink())
    except (FileNotFoundError, NotADirectoryError):
        return []
    removed = []
    for staging in leftovers:
        if _writer_may_be_alive(staging):
            if for_writing and os.path.lexists(staging / JOURNAL_FILE):
                raise SpineStenosisGraderError(
                    f"Another run is moving its results into {out_dir} (or one on another computer was stopped "
                    "while it did, less than an hour ago). Try again once it has finished.")
            continue
        if _recover(staging, out_dir):
            removed.append(staging)
    return removed


def _make_folders(folder: Path) -> list[Path]:
    """Create ``folder`` and its missing parents; return the ones created, innermost first."""
    made: list[Path] = []
    try:
        for path in reversed([p for p in [folder, *folder.parents] if not p.exists()]):
            path.mkdir()
            made.insert(0, path)
    except BaseException:
        _remove_empty_folders(made)
        raise
    return made


def _remove_empty_folders(folders: Sequence[Path]) -> None:
    """Remove folders we created (innermost first), but only while they are empty: never a user's file."""
    for folder in folders:
        try:
            folder.rmdir()
        except OSError:
            return


def write_all_or_nothing(out_dir: Path, write: Callable[[Path], Sequence[str]],
                         replaced: Iterable[str] = ()) -> list[Path]:
    """Have ``write(staging)`` write files into an empty folder and return their names; move them into ``out_dir``.

    The staging folder is a hidden folder inside ``out_dir`` (created, with its
    parents, if missing). Only once ``write`` succeeded are the files moved in;
    ``replaced`` names earlier files in ``out_dir`` that go (those not written
    again are removed). If anything fails, every move is undone, the staging
    folder and the folders made for it are removed, and ``out_dir`` is as it was.
    Files not named are never touched. What an earlier write killed outright left
    in ``out_dir`` is undone first (:func:`recover_interrupted_writes`). Returns
    the paths written.
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise NotADirectoryError(f"{out_dir} exists and is not a folder")
    recover_interrupted_writes(out_dir, for_writing=True)
    created = _make_folders(out_dir)
    staging = _staging_folder(out_dir)
    _ACTIVE.add(staging.name)
    try:
        staging.mkdir()
        names = list(write(staging))
        for name in names:
            if (out_dir / name).is_dir():
                raise IsADirectoryError(f"{out_dir / name} is a folder; cannot write {name} there")
            if name in (JOURNAL_FILE, _PREVIOUS):
                raise ValueError(f"{name} is the name of the commit's own bookkeeping; write another")
        _commit(staging, out_dir, names, sorted(set(replaced) - set(names)))
    except BaseException:
        # a journal left means the commit could not undo all its moves: the staging folder holds the
        # earlier files, and the next write or load into out_dir finishes the undoing from it
        if not os.path.lexists(staging / JOURNAL_FILE):
            shutil.rmtree(staging, ignore_errors=True)
            _remove_empty_folders(created)
        raise
    finally:
        _ACTIVE.discard(staging.name)
    shutil.rmtree(staging, ignore_errors=True)
    return [out_dir / name for name in names]


def _fsync_file(path: Path) -> None:
    """Put a file's bytes on the disk before a rename makes them the result: a power cut then finds them whole."""
    # opened for writing: Windows flushes no file opened only for reading
    fd = os.open(path, os.O_RDWR | getattr(os, "O_BINARY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_folder(folder: Path) -> None:
    """Put the renames in ``folder`` on the disk, so that a power cut keeps the order in which they were made."""
    if os.name == "nt":
        return  # Windows cannot open a folder to flush it (NTFS logs renames in order)
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError as error:
        if error.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EBADF):  # file systems that cannot, e.g. some shares
            raise
    finally:
        os.close(fd)


def _write_journal(staging: Path, journal: Mapping[str, Any]) -> None:
    """Write the commit's journal and put it on the disk before anything moves."""
    path = staging / JOURNAL_FILE
    try:
        with open(path, "x", encoding="utf-8") as handle:
            json.dump(journal, handle, indent=1)
            handle.flush()
            os.fsync(handle.fileno())
        _fsync_folder(staging)
    except BaseException:
        # nothing has moved yet: without its journal the staging folder is mere leftovers
        try:
            path.unlink()
        except OSError:
            pass
        raise


def _commit(staging: Path, out_dir: Path, names: list[str], stale: list[str]) -> None:
    """Move the staged files into ``out_dir`` and the ``stale`` ones out, undoing every move if one fails.

    The journal, written before the first move and removed after the last, lets a later
    process undo the moves of a commit that was killed outright (see :func:`_roll_back`).
    """
    for name in names:
        _fsync_file(staging / name)
    journal = {
        "format": JOURNAL_FORMAT,
        "state": "moving",
        "host": _HOST,
        "pid": os.getpid(),
        # the SHA256 of each file moved in: undoing, a file is taken out only if it is still the one moved in
        "files": {name: sha256_file(staging / name) for name in names},
        "stale": list(stale),
    }
    _write_journal(staging, journal)
    backup = staging / _PREVIOUS
    # result.json last: a reader that finds it finds the files it lists
    order = sorted(names, key=lambda name: name == RESULT_FILE)
    try:
        backup.mkdir()
        for name in [*names, *stale]:
            target = out_dir / name
            if target.is_file() or target.is_symlink():
                os.replace(target, backup / name)
        # the earlier files are safe in .previous on the disk before any new one takes a place
        _fsync_folder(backup)
        _fsync_folder(out_dir)
        for name in order:
            os.replace(staging / name, out_dir / name)
        _fsync_folder(out_dir)
    except BaseException:
        try:
            _roll_back(staging, out_dir, journal)
            (staging / JOURNAL_FILE).unlink()
        except OSError:
            pass  # the journal stays: the next write or load into out_dir undoes the rest
        raise
    (staging / JOURNAL_FILE).unlink()  # the commit is complete: nothing to undo


def _roll_back(staging: Path, out_dir: Path, journal: Mapping[str, Any]) -> None:
    """Put ``out_dir`` back as it was before the journal's commit, from wherever the commit stopped.

    The moves are undone by renames in reverse: each file moved in goes back to the
    staging folder, then each earlier file comes back from ``.previous``. Every step
    leaves a state the commit itself went through, so an undoing that is stopped in
    turn is simply undone again. The state on disk, not a list kept in memory, says
    what moved, so this serves a failing commit and a later process alike.
    """
    backup = staging / _PREVIOUS
    files: Mapping[str, str] = journal["files"]
    for name, digest in files.items():
        target = out_dir / name
        moved_in = not os.path.lexists(staging / name)
        # still the very file the commit moved in, not one saved over it since (a clinician's corrected ROI)
        if moved_in and target.is_file() and not target.is_symlink() and sha256_file(target) == digest:
            os.replace(target, staging / name)
    for name in [*files, *journal["stale"]]:
        if os.path.lexists(backup / name) and not os.path.lexists(out_dir / name):
            os.replace(backup / name, out_dir / name)
    _fsync_folder(out_dir)
