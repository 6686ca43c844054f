"""Measure a model package: canal detection on real scans, grades on unseen phantoms, time per study.

Every figure the README quotes comes from ``spine-stenosis-grader evaluate``,
which calls these functions on data the package did not train on.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from .annotations import AnnotatedScan, load_scans
from ..inference.detector import box_iou
from ..packages.package import ModelPackage
from ..pipeline import grade_stack
from .train import EVAL_SEED_BASE, classifier_sample, grade_samples

IOU_THRESHOLD = 0.5


@dataclass
class DetectionScore:
    scan: str
    canal_slices: int
    hits: int
    mean_iou: float
    #: detected disc levels whose slice lies within one disc half-height of a true disc
    discs_true: int
    discs_found: int
    discs_matched: int

    @property
    def hit_fraction(self) -> float:
        return self.hits / self.canal_slices if self.canal_slices else float("nan")

    def to_dict(self) -> dict[str, Any]:
        return {
            "scan": self.scan, "canal_slices": self.canal_slices, "hits_iou_ge_0_5": self.hits,
            "hit_fraction": round(self.hit_fraction, 4), "mean_iou": round(self.mean_iou, 4),
            "discs_true": self.discs_true, "discs_found": self.discs_found, "discs_matched": self.discs_matched,
        }


def score_detection(package: ModelPackage, scan: AnnotatedScan) -> DetectionScore:
    """Per canal-bearing slice: is the detected box at IoU >= 0.5 with the reference box?

    The detected box is read back from the result's LPS box, so the score also
    covers the way from canvas pixels to patient space and back.
    """
    result = grade_stack(scan.stack, package, modality=scan.modality, region=scan.region)
    by_slice = {d.slice_index: d for d in result.detections}
    ious = []
    for k, ref in scan.boxes.items():
        hit = by_slice.get(k)
        ious.append(box_iou(scan.stack.box_to_slice(hit.box)[1], ref) if hit else 0.0)
    dz = scan.stack.spacing[2]
    tolerance = max(dz, 6.0 if scan.region == "lumbar" else 4.0)
    # a disc whose centre lies outside the stack cannot be found
    inside = [z for z in scan.discs.values() if 0 <= z <= scan.stack.n_slices - 1]
    matched = match_levels([lv.slice_index for lv in result.levels], inside, tolerance / dz)
    return DetectionScore(scan.name, len(ious), int(sum(i >= IOU_THRESHOLD for i in ious)),
                          float(np.mean(ious)) if ious else float("nan"), len(inside), len(result.levels),
                          len(matched))


def match_levels(found: Sequence[float], true: Sequence[float], tolerance: float) -> list[tuple[int, int]]:
    """One-to-one matches (found index, true index) within ``tolerance``, closest pairs first."""
    pairs = sorted((abs(f - t), a, b) for a, f in enumerate(found) for b, t in enumerate(true)
                   if abs(f - t) <= tolerance)
    used_found: set[int] = set()
    used_true: set[int] = set()
    matches = []
    for _, a, b in pairs:
        if a not in used_found and b not in used_true:
            used_found.add(a)
            used_true.add(b)
            matches.append((a, b))
    return matches


def evaluate_detection(package: ModelPackage, catalogue: Path, use: Optional[str] = "holdout") -> list[DetectionScore]:
    return [score_detection(package, scan) for scan in load_scans(catalogue, use=use)]


def evaluate_levels(package: ModelPackage, n_studies: int = 12, seed_base: int = EVAL_SEED_BASE) -> dict[str, Any]:
    """Disc levels on whole phantom studies never trained on: found within 6 mm, false ones, names right.

    A study counts as named right when every true disc has a level within 6 mm carrying its name.
    """
    from .phantom import make_study
    from ..pipeline import grade_image

    true_total = matched_total = false_total = named_right = 0
    for n in range(n_studies):
        modality = ("MR", "CT")[n % 2]
        study = make_study(seed_base + n, modality=modality, region="lumbar")
        result, _ = grade_image(study.image, package)
        dz = study.image.GetSpacing()[2]
        truth = [lv.slice_index for lv in study.levels]
        matches = match_levels([lv.slice_index for lv in result.levels], truth, 6.0 / dz)
        true_total += len(truth)
        matched_total += len(matches)
        false_total += len(result.levels) - len(matches)
        names = {result.levels[a].name: study.levels[b].name for a, b in matches}
        # a false level is counted above; here: is every true disc found and named right?
        named_right += int(len(matches) == len(truth) and all(k == v for k, v in names.items()))
    return {
        "data": f"{n_studies} lumbar phantom studies (CT and MR alternating), seeds {seed_base}-"
                f"{seed_base + n_studies - 1} (never trained on)",
        "disc_recall_within_6mm": round(matched_total / true_total, 4),
        "false_levels_per_study": round(false_total / n_studies, 3),
        "studies_with_every_name_right": f"{named_right}/{n_studies}",
    }


def evaluate_grades(package: ModelPackage, n_slices: int = 400, seed_base: int = EVAL_SEED_BASE) -> dict[str, Any]:
    """Accuracy and Cohen's kappa of the grade on phantom disc slices never used in training."""
    from sklearn.metrics import accuracy_score, cohen_kappa_score, confusion_matrix, f1_score

    classifier = package.classifier()
    scale = package.scale
    samples = grade_samples(range(seed_base, seed_base + n_slices), "lumbar", scale.key)
    patches = np.stack([classifier_sample(s, package.classifier_config, None) for s in samples])
    probabilities = classifier.predict_proba(patches)
    predicted = probabilities.argmax(axis=1)
    truth = np.array([s.grade_index for s in samples])
    out: dict[str, Any] = {
        "data": f"{n_slices} phantom disc slices, seeds {seed_base}-{seed_base + n_slices - 1} (never trained on)",
        "accuracy": round(float(accuracy_score(truth, predicted)), 4),
        "cohen_kappa": round(float(cohen_kappa_score(truth, predicted)), 4),
        "cohen_kappa_quadratic": round(float(cohen_kappa_score(truth, predicted, weights="quadratic")), 4),
        "macro_f1": round(float(f1_score(truth, predicted, average="macro")), 4),
        "confusion": confusion_matrix(truth, predicted, labels=list(range(len(scale.names)))).tolist(),
        "classes": scale.names,
    }
    for modality in ("CT", "MR"):
        mask = np.array([s.modality == modality for s in samples])
        if mask.any():
            out[f"accuracy_{modality}"] = round(float(accuracy_score(truth[mask], predicted[mask])), 4)
            out[f"cohen_kappa_{modality}"] = round(float(cohen_kappa_score(truth[mask], predicted[mask])), 4)
    binary_positive = [scale.index(n) for n in next(iter(scale.binary.values()))]
    bt = np.isin(truth, binary_positive)
    bp = np.isin(predicted, binary_positive)
    out["binary"] = {
        "split": next(iter(scale.binary)),
        "accuracy": round(float(accuracy_score(bt, bp)), 4),
        "cohen_kappa": round(float(cohen_kappa_score(bt, bp)), 4),
    }
    return out


def time_studies(package: ModelPackage, paths: Sequence[Path], repeats: int = 3) -> dict[str, Any]:
    """Median wall time per study, end to end (read, detect, levels, grade, write)."""
    import tempfile

    from ..pipeline import grade_file, representative_slices
    from ..outputs.writers import write_study_outputs

    out = {}
    for path in paths:
        times = []
        for _ in range(repeats):
            with tempfile.TemporaryDirectory() as tmp:
                t0 = time.perf_counter()
                result, stack = grade_file(path, package)
                write_study_outputs(result, Path(tmp) / "out", representative_slices(result, stack))
                times.append(time.perf_counter() - t0)
        out[Path(path).name] = {"median_s": round(float(np.median(times)), 3), "runs": repeats,
                                "slices": result.study.n_slices}
    return out
