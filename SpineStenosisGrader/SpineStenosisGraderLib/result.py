"""The result of grading one study, in patient coordinates, and its JSON form.

Every box is stored in LPS millimetres (the convention of DICOM, ITK and of
Slicer's files), never in pixels: a pixel box means nothing once the volume is
flipped, permuted or resampled, and Slicer re-displays a file in RAS itself.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np

SCHEMA_VERSION = "1.3"  # 1.1: corrections say when and whether the clinician added the level; removed_levels
# 1.2: the region is read from the anatomy (study and level, with evidence); names say whether a landmark anchors them
# 1.3: a level says whether the canal was seen on its slice (canal_seen)
SCHEMA_ID = "spine-stenosis-grader/result"


@dataclass
class OrientedBox:
    """A box in patient space: centre and size in mm, axes as LPS unit vectors.

    ``orientation`` is a 3x3 matrix, row-major, whose *columns* are the box's
    axes in LPS (the same layout as an ITK direction matrix and as the
    ``orientation`` of a Slicer ROI markup). ``size[i]`` is the edge length
    along column ``i``.
    """

    center: tuple[float, float, float]
    size: tuple[float, float, float]
    orientation: tuple[float, ...] = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)

    def axes(self) -> np.ndarray:
        """The 3x3 matrix whose columns are the box axes in LPS."""
        return np.asarray(self.orientation, dtype=float).reshape(3, 3)

    def corners(self) -> np.ndarray:
        """The 8 corners, shape (8, 3), in LPS mm."""
        half = np.asarray(self.size, dtype=float) / 2.0
        signs = np.array([[sx, sy, sz] for sx in (-1, 1) for sy in (-1, 1) for sz in (-1, 1)], dtype=float)
        return np.asarray(self.center, dtype=float) + (signs * half) @ self.axes().T

    def to_dict(self) -> dict[str, Any]:
        return {
            "center_lps_mm": [float(v) for v in self.center],
            "size_mm": [float(v) for v in self.size],
            "orientation_lps": [float(v) for v in self.orientation],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "OrientedBox":
        return cls(
            center=tuple(float(v) for v in data["center_lps_mm"]),
            size=tuple(float(v) for v in data["size_mm"]),
            orientation=tuple(float(v) for v in data["orientation_lps"]),
        )


@dataclass
class CanalDetection:
    """The canal found on one axial slice.

    ``slice_index`` counts slices of the axial stack (see ``volume.AxialStack``:
    index 0 is the most inferior slice). ``disc_probability`` is the detector's
    belief that the slice passes through an intervertebral disc.
    """

    slice_index: int
    box: OrientedBox
    score: float
    disc_probability: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "slice_index": int(self.slice_index),
            "box": self.box.to_dict(),
            "score": float(self.score),
            "disc_probability": float(self.disc_probability),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "CanalDetection":
        return cls(
            slice_index=int(data["slice_index"]),
            box=OrientedBox.from_dict(data["box"]),
            score=float(data["score"]),
            disc_probability=float(data.get("disc_probability", 0.0)),
        )


@dataclass
class GradePrediction:
    """A grade on one scale, with the probability of every class."""

    task: str
    scale: str
    grade: str
    probabilities: dict[str, float]
    uncertain: bool = False

    @property
    def probability(self) -> float:
        return float(self.probabilities.get(self.grade, 0.0))

    def to_dict(self) -> dict[str, Any]:
        return {
            "task": self.task,
            "scale": self.scale,
            "grade": self.grade,
            "probability": self.probability,
            "probabilities": {k: float(v) for k, v in self.probabilities.items()},
            "uncertain": bool(self.uncertain),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "GradePrediction":
        return cls(
            task=data["task"],
            scale=data["scale"],
            grade=data["grade"],
            probabilities={k: float(v) for k, v in data["probabilities"].items()},
            uncertain=bool(data.get("uncertain", False)),
        )


@dataclass
class ClinicianCorrection:
    """What a clinician changed; the AI values are kept beside it, never overwritten.

    ``added`` marks a level the clinician placed (the model did not find it in
    this run): its ``DiscLevel`` box and name are then the clinician's and it
    has no model grade. ``time`` is when the level was last corrected (ISO 8601, UTC).
    """

    grade: Optional[str] = None
    name: Optional[str] = None
    box: Optional[OrientedBox] = None
    author: str = ""
    note: str = ""
    added: bool = False
    time: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "grade": self.grade,
            "name": self.name,
            "box": self.box.to_dict() if self.box else None,
            "author": self.author,
            "note": self.note,
            "added": bool(self.added),
            "time": self.time,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ClinicianCorrection":
        return cls(
            grade=data.get("grade"),
            name=data.get("name"),
            box=OrientedBox.from_dict(data["box"]) if data.get("box") else None,
            author=data.get("author", ""),
            note=data.get("note", ""),
            added=bool(data.get("added", False)),
            time=data.get("time", ""),
        )


@dataclass
class DiscLevel:
    """One intervertebral disc level: its name, slice, box and grade."""

    name: str
    slice_index: int
    box: OrientedBox
    detection_score: float
    grade: Optional[GradePrediction] = None
    measurements: dict[str, float] = field(default_factory=dict)
    correction: Optional[ClinicianCorrection] = None
    #: cervical, thoracic, lumbar or unknown: the named disc's region, else the study's
    region: str = ""
    #: the name rests on a landmark in the study (or the user's anchor), not on where the study ends
    name_anchored: bool = False
    #: how sure the name is: "high", "low" or "none"
    name_confidence: str = "none"
    #: False where the detector lost the canal at this level (``tracking.bridge_gaps``): its box is the canal
    #: interpolated from the slices above and below, and the CSF there may be effaced
    canal_seen: bool = True

    @property
    def edited(self) -> bool:
        """True when a clinician changed anything on this level: its grade, name or box, or added it."""
        c = self.correction
        return c is not None and bool(c.grade or c.name or c.box is not None or c.added)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "slice_index": int(self.slice_index),
            "box": self.box.to_dict(),
            "detection_score": float(self.detection_score),
            "grade": self.grade.to_dict() if self.grade else None,
            "measurements": {k: float(v) for k, v in self.measurements.items()},
            "correction": self.correction.to_dict() if self.correction else None,
            "region": self.region,
            "name_anchored": bool(self.name_anchored),
            "name_confidence": self.name_confidence,
            "canal_seen": bool(self.canal_seen),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "DiscLevel":
        return cls(
            name=data["name"],
            slice_index=int(data["slice_index"]),
            box=OrientedBox.from_dict(data["box"]),
            detection_score=float(data["detection_score"]),
            grade=GradePrediction.from_dict(data["grade"]) if data.get("grade") else None,
            measurements={k: float(v) for k, v in data.get("measurements", {}).items()},
            correction=ClinicianCorrection.from_dict(data["correction"]) if data.get("correction") else None,
            region=data.get("region", ""),
            # results before 1.2 counted names from the end of the study: never anchored
            name_anchored=bool(data.get("name_anchored", False)),
            name_confidence=data.get("name_confidence", "none"),
            # results before 1.3 placed levels only where the canal was seen
            canal_seen=bool(data.get("canal_seen", True)),
        )


@dataclass
class ModelInfo:
    """Which model package produced a result."""

    name: str
    version: str
    task: str
    trained_on: str = ""
    clinical_use: str = "not for clinical use"
    #: the inference runtime and its version, e.g. "onnxruntime 1.20.1"
    runtime: str = ""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ModelInfo":
        return cls(**{f.name: data[f.name] for f in dataclasses.fields(cls) if f.name in data})


@dataclass
class StudyInfo:
    """What was graded: the input, its modality and region, and its axial geometry."""

    source: str
    modality: str
    region: str
    n_slices: int
    slice_spacing_mm: float
    pixel_spacing_mm: tuple[float, float]
    numbering: str = ""
    #: how sure the region is ("high", "low" or "none") and what in the slices says so
    region_confidence: str = ""
    region_evidence: tuple[str, ...] = ()
    #: the landmark the level names rest on ("sacrum", "lowest rib", "first rib", "foramen magnum"), "user", or ""
    #: when they are not anchored
    names_anchored_by: str = ""
    #: origin, spacing and direction of the axial stack (ITK conventions, LPS), so a
    #: slice index in this file can be mapped back to patient space.
    stack_origin_lps: tuple[float, float, float] = (0.0, 0.0, 0.0)
    stack_spacing_mm: tuple[float, float, float] = (1.0, 1.0, 1.0)
    stack_direction_lps: tuple[float, ...] = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
    stack_size: tuple[int, int, int] = (0, 0, 0)

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in data.items()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "StudyInfo":
        kwargs = {}
        for f in dataclasses.fields(cls):
            if f.name in data:
                value = data[f.name]
                kwargs[f.name] = tuple(value) if isinstance(value, list) else value
        return cls(**kwargs)


@dataclass
class StudyResult:
    """Everything the grader found in one study.

    ``removed_levels`` are levels a clinician removed from the run as false,
    kept with their model values and corrections so that no correction is lost
    and a training set learns from them.
    """

    study: StudyInfo
    model: ModelInfo
    levels: list[DiscLevel]
    detections: list[CanalDetection]
    warnings: list[str] = field(default_factory=list)
    timings_s: dict[str, float] = field(default_factory=dict)
    removed_levels: list[DiscLevel] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA_ID,
            "schema_version": SCHEMA_VERSION,
            "study": self.study.to_dict(),
            "model": self.model.to_dict(),
            "levels": [level.to_dict() for level in self.levels],
            "detections": [d.to_dict() for d in self.detections],
            "warnings": list(self.warnings),
            "timings_s": {k: float(v) for k, v in self.timings_s.items()},
            "removed_levels": [level.to_dict() for level in self.removed_levels],
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "StudyResult":
        if data.get("schema") != SCHEMA_ID:
            raise ValueError(f"not a {SCHEMA_ID} document")
        major = str(data.get("schema_version", "0")).split(".")[0]
        if major != SCHEMA_VERSION.split(".")[0]:
            raise ValueError(
                f"result schema version {data.get('schema_version')} is not supported "
                f"(this version reads {SCHEMA_VERSION.split('.')[0]}.x)"
            )
        return cls(
            study=StudyInfo.from_dict(data["study"]),
            model=ModelInfo.from_dict(data["model"]),
            levels=[DiscLevel.from_dict(d) for d in data["levels"]],
            detections=[CanalDetection.from_dict(d) for d in data["detections"]],
            warnings=list(data.get("warnings", [])),
            timings_s=dict(data.get("timings_s", {})),
            removed_levels=[DiscLevel.from_dict(d) for d in data.get("removed_levels", [])],
        )

    @classmethod
    def from_json(cls, text: str) -> "StudyResult":
        return cls.from_dict(json.loads(text))
