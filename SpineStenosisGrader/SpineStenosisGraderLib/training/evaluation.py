"""Measure a model package: canal detection on real scans, grades on unseen phantoms, time per study.

Every figure the README quotes comes from ``spine-stenosis-grader evaluate``,
which calls these functions on data the package did not train on.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np

from .annotations import AnnotatedScan, load_scans
from ..inference.detector import box_iou
from ..inference.levels import SPINE_DISCS
from ..packages.package import ModelPackage
from ..pipeline import grade_stack
from .synthesis import coarsen_slice
from .train import EVAL_SEED_BASE, classifier_sample, grade_samples

IOU_THRESHOLD = 0.5


#: a disc at least this far inside the study must be found (its centre to the study's end)
DISC_INSIDE_MM = 4.0
#: a disc is found when a level lies within this of it; a level farther than FALSE_LEVEL_MM from every disc is false
DISC_FOUND_MM = 8.0
FALSE_LEVEL_MM = 10.0
#: a box centred on the canal that is no wider than the reference by more than this still finds the canal
#: (the reference of a cord-only or bony-hole label is narrower or wider than the dural sac the model boxes)
CENTRED_MARGIN_MM = 10.0
#: a box holds the reference canal (a cord, say) when this share of its pixels lies inside the box
HELD_FRACTION = 0.9
#: a level's box is checked against the reference canal on its slice, or the nearest one within this
LEVEL_REFERENCE_MM = 6.0
#: in-plane pixel sizes (mm) the grade is also scored at, its phantom slices coarsened to them: a thin reformat,
#: and a thick one such as the README's sample (3 mm)
GRADE_PIXEL_MM = (1.5, 3.0)


@dataclass
class RealScanScore:
    """How a package does on one real labelled scan: canal per slice, levels, region and names."""

    scan: str
    modality: str
    #: whether the package trained on this scan (then the figures are a fit, not a test)
    trained_on: bool
    region_true: str
    region_found: str
    region_evidence: str
    canal_slices: int
    hits: int
    mean_iou: float
    #: detections on slices without a reference canal (e.g. the sacral canal below a label that stops at S1)
    detections_off_reference: int
    levels: int
    #: levels with a reference canal on or near their slice, and how many of them sit on it
    levels_checked: int
    levels_on_canal: int
    discs_inside: int
    discs_found: int
    disc_errors_mm: list[float]
    false_levels: int
    names_checked: int
    names_right: int
    names_anchored_by: str
    rows: list[dict[str, Any]]
    #: False for a scan whose labels give no disc positions (a cord mask alone): its levels are checked on the
    #: canal and no disc is scored; a level is called false only above C2's body, where the labels mark it
    disc_reference: bool = True
    #: whether the labels mark C2's body, so that levels above it are counted as false
    c2_reference: bool = False
    #: where the labels mark two vertebral bodies (C2 and T2 on a whole neck): their names, how many discs lie
    #: between them, and how many levels were found there. Without disc positions this still tells a missed
    #: or an extra disc, though not where
    landmark_span: Optional[tuple[str, str]] = None
    discs_between_landmarks: int = 0
    levels_between_landmarks: int = 0

    @property
    def hit_fraction(self) -> float:
        return self.hits / self.canal_slices if self.canal_slices else float("nan")

    def to_dict(self) -> dict[str, Any]:
        return {
            "scan": self.scan, "modality": self.modality, "trained_on": self.trained_on,
            "region": {"true": self.region_true, "found": self.region_found,
                       "right": self.region_true == self.region_found,
                       "evidence": self.region_evidence},
            "canal": {"reference_slices": self.canal_slices, "hits": self.hits,
                      "hit_fraction": round(self.hit_fraction, 4), "mean_iou": round(self.mean_iou, 4),
                      "detections_off_reference": self.detections_off_reference},
            "levels": {"found": self.levels, "checked_against_a_reference": self.levels_checked,
                       "on_canal": self.levels_on_canal, "false": self.false_levels,
                       "false_means": ("farther than 10 mm from every disc" if self.disc_reference
                                       else "above C2's body" if self.c2_reference else "not scored")},
            "discs": {"reference": self.disc_reference, "inside_study": self.discs_inside,
                      "found_within_8mm": self.discs_found, "errors_mm": [round(e, 1) for e in self.disc_errors_mm],
                      **({"between_landmarks": {"vertebrae": "-".join(self.landmark_span),
                                                "discs": self.discs_between_landmarks,
                                                "levels_found": self.levels_between_landmarks}}
                         if self.landmark_span else {})},
            "names": {"checked": self.names_checked, "right": self.names_right,
                      "anchored_by": self.names_anchored_by or "not anchored"},
            "per_level": self.rows,
        }


def canal_hit(found: Sequence[float], reference: Sequence[float], canal_slice: np.ndarray,
              spacing: Sequence[float]) -> bool:
    """IoU >= 0.5 with the reference box, or a box on the canal and not much wider than the reference.

    On the canal: centred on it, or holding HELD_FRACTION of it. A cord-only
    reference needs the second: in the thoracic spine the cord lies at the
    front of the canal, so a box around the canal is centred behind it.
    """
    if box_iou(found, reference) >= IOU_THRESHOLD:
        return True
    mi, mj = CENTRED_MARGIN_MM / spacing[0], CENTRED_MARGIN_MM / spacing[1]
    if not (found[0] >= reference[0] - mi and found[2] <= reference[2] + mi
            and found[1] >= reference[1] - mj and found[3] <= reference[3] + mj):
        return False
    ci, cj = int(np.floor((found[0] + found[2]) / 2.0)), int(np.floor((found[1] + found[3]) / 2.0))
    if 0 <= cj < canal_slice.shape[0] and 0 <= ci < canal_slice.shape[1] and canal_slice[cj, ci]:
        return True
    jj, ii = np.nonzero(canal_slice)
    # pixel centres inside the box's edges
    inside = (ii + 0.5 >= found[0]) & (ii + 0.5 <= found[2]) & (jj + 0.5 >= found[1]) & (jj + 0.5 <= found[3])
    return bool(len(ii) and inside.mean() >= HELD_FRACTION)


def disc_inside(k: float, n_slices: int, slice_spacing_mm: float) -> bool:
    """Whether a disc at slice ``k`` lies at least DISC_INSIDE_MM inside the study, and so must be found."""
    return min(k + 0.5, n_slices - 0.5 - k) * slice_spacing_mm >= DISC_INSIDE_MM


def match_inside_discs(level_slices: Sequence[float], discs: dict[str, float], n_slices: int,
                       slice_spacing_mm: float) -> tuple[list[str], list[float], list[tuple[int, int]]]:
    """The discs inside the study (``disc_inside``), their names and slices, and the levels matched to them.

    The matches are (level index, inside-disc index) pairs within DISC_FOUND_MM, one to one (``match_levels``).
    """
    names = [name for name, k in discs.items() if disc_inside(k, n_slices, slice_spacing_mm)]
    slices = [discs[name] for name in names]
    return names, slices, match_levels(list(level_slices), slices, DISC_FOUND_MM / slice_spacing_mm)


def trained_on(package: ModelPackage, scan_name: str) -> bool:
    training = package.manifest.get("training_data", {})
    return scan_name in training.get("detector_real_scans", [])


def above_the_labelled_discs(level_slice: float, discs: Sequence[float], slice_spacing_mm: float) -> bool:
    """Whether a level lies more than FALSE_LEVEL_MM above the highest labelled disc (slices run feet to head)."""
    return bool(discs) and (level_slice - max(discs)) * slice_spacing_mm > FALSE_LEVEL_MM


def below_the_labelled_discs(level_slice: float, discs: Sequence[float], slice_spacing_mm: float) -> bool:
    """Whether a level lies more than FALSE_LEVEL_MM below the lowest labelled disc."""
    return bool(discs) and (min(discs) - level_slice) * slice_spacing_mm > FALSE_LEVEL_MM


def unlabelled_side(level_slice: float, discs: Sequence[float], slice_spacing_mm: float,
                    more_discs_above: bool = False, more_discs_below: bool = False) -> Optional[str]:
    """"above" or "below" where a level lies beyond the labelled discs on a side where discs lie unlabelled (it
    is then not scored), else None."""
    if more_discs_above and above_the_labelled_discs(level_slice, discs, slice_spacing_mm):
        return "above"
    if more_discs_below and below_the_labelled_discs(level_slice, discs, slice_spacing_mm):
        return "below"
    return None


def level_is_false(level_slice: float, discs: Sequence[float], landmarks: dict[str, float],
                   slice_spacing_mm: float, more_discs_above: bool = False,
                   more_discs_below: bool = False) -> tuple[Optional[float], bool]:
    """(mm to the nearest disc or None, whether the level is false) for a level at ``level_slice``.

    With disc positions, a level farther than FALSE_LEVEL_MM from every disc is
    false, unless ``more_discs_above`` (the labels stop below the study's top
    disc, e.g. at L1-L2 in a study that reaches T12) and it lies above the
    highest labelled disc, or ``more_discs_below`` and it lies below the lowest:
    there it may be a disc no label marks. Without disc
    positions, where the labels mark C2's body, a level above its middle is
    false: no disc lies there, as C2-C3, the highest, is below it (slice indices
    run from the feet to the head). Otherwise nothing is called false.
    """
    if discs:
        distance = min(abs(z - level_slice) for z in discs) * slice_spacing_mm
        unlabelled = unlabelled_side(level_slice, discs, slice_spacing_mm, more_discs_above, more_discs_below)
        return distance, distance > FALSE_LEVEL_MM and unlabelled is None
    return None, "C2" in landmarks and level_slice > landmarks["C2"]


def discs_between_names(upper: str, lower: str) -> list[str]:
    """The discs between the bodies of two vertebrae, superior first ("C2", "T2": C2-C3 to T1-T2)."""
    first = next(i for i, name in enumerate(SPINE_DISCS) if name.split("-")[0] == upper)
    last = next(i for i, name in enumerate(SPINE_DISCS) if name.split("-")[1] == lower)
    return list(SPINE_DISCS[first:last + 1])


def discs_between(upper: str, lower: str) -> int:
    """How many discs lie between the bodies of two vertebrae ("C2", "T2": C2-C3 to T1-T2, 7)."""
    return len(discs_between_names(upper, lower))


def names_by_count(level_slices: Sequence[float], landmarks: dict[str, float]) -> dict[int, Optional[str]]:
    """For each level between the two labelled bodies, its name counted from the upper body.

    Where the labels give no disc positions but two vertebral bodies (C2 and T2 on
    a whole neck), the highest level below the upper body is the first disc below
    it (C2-C3), the next the second, and so on. An extra or a missed level shifts
    the names after it, as it would for the reader. A level past the last disc
    between the bodies gets None. Keys are indices into ``level_slices``.
    """
    span = landmark_span(landmarks)
    if span is None:
        return {}
    upper, lower = landmarks[span[0]], landmarks[span[1]]
    between = sorted((a for a, k in enumerate(level_slices) if lower < k < upper),
                     key=lambda a: level_slices[a], reverse=True)
    names = discs_between_names(*span)
    return {a: (names[order] if order < len(names) else None) for order, a in enumerate(between)}


def landmark_span(landmarks: dict[str, float]) -> Optional[tuple[str, str]]:
    """The highest and the lowest of the labelled vertebral bodies (slice indices run from the feet up), if two."""
    if len(landmarks) < 2:
        return None
    ordered = sorted(landmarks, key=lambda name: landmarks[name], reverse=True)
    return ordered[0], ordered[-1]


def score_real_scan(package: ModelPackage, scan: AnnotatedScan) -> RealScanScore:
    """Grade the scan as a user would (no region given) and score it against its labels.

    The detected boxes are read back from the result's LPS boxes, so the score
    also covers the way from canvas pixels to patient space and back.
    """
    stack = scan.stack
    result = grade_stack(stack, package, modality=scan.modality)
    spacing = stack.spacing
    dz = spacing[2]
    by_slice = {d.slice_index: stack.box_to_slice(d.box)[1] for d in result.detections}
    ious, hits = [], 0
    for k, ref in scan.boxes.items():
        found = by_slice.get(k)
        ious.append(box_iou(found, ref) if found else 0.0)
        hits += int(found is not None and canal_hit(found, ref, scan.canal[k] > 0, spacing))
    # levels: on the canal, near a disc, named right
    level_places = [stack.box_to_slice(lv.box) for lv in result.levels]
    level_slices = [float(k) for k, _ in level_places]
    true_names, true_slices, matches = match_inside_discs(level_slices, scan.discs, stack.n_slices, dz)
    matched = {a: b for a, b in matches}
    all_discs = list(scan.discs.values())
    # without disc positions, only a level above a labelled C2 is known to be false
    c2_only = not all_discs and "C2" in scan.landmarks
    rows, on_canal, levels_checked, false_levels, names_right = [], 0, 0, 0, 0
    unscoped = model_grades(package, stack, scan.modality, result, level_places)
    for a, level in enumerate(result.levels):
        k = int(round(level_slices[a]))
        # a bony-hole reference has no box where the ring opens at the disc: take the nearest reference
        # slice within a disc's half-height, where the canal has not moved
        near = [r for r in scan.boxes if abs(r - k) * dz <= LEVEL_REFERENCE_MM]
        r = min(near, key=lambda r: abs(r - k)) if near else None
        level_box = level_places[a][1]
        # None: no reference canal near enough to tell
        is_on = None if r is None else canal_hit(level_box, scan.boxes[r], scan.canal[r] > 0, spacing)
        on_canal += int(is_on is True)
        levels_checked += int(is_on is not None)
        distance, false = level_is_false(level_slices[a], all_discs, scan.landmarks, dz, scan.more_discs_above,
                                         scan.more_discs_below)
        side = unlabelled_side(level_slices[a], all_discs, dz, scan.more_discs_above, scan.more_discs_below)
        false_levels += int(false)
        true_name = true_names[matched[a]] if a in matched and scan.disc_names_known else None
        names_right += int(true_name is not None and level.name == true_name)
        rows.append({"name": level.name, "slice": k, "on_canal": is_on,
                     "nearest_disc_mm": None if distance is None else round(distance, 1), "true_name": true_name,
                     "grade": level.grade.grade if level.grade else None, "model_grade": unscoped[a],
                     **({f"{side}_the_labelled_discs": True} if side else {}),
                     **({"above_c2": false} if c2_only else {})})
    errors = sorted(abs(level_slices[a] - true_slices[b]) * dz for a, b in matches)
    span = landmark_span(scan.landmarks)
    by_count = names_by_count(level_slices, scan.landmarks)
    names_checked = len(matches) if scan.disc_names_known else 0
    if not all_discs and by_count:
        # no disc positions: the levels between the two labelled bodies are named by their count
        for a, expected in by_count.items():
            rows[a]["name_by_count"] = expected
            names_right += int(result.levels[a].name == expected)
        names_checked = len(by_count)
    return RealScanScore(
        scan=scan.name, modality=scan.modality, trained_on=trained_on(package, scan.name),
        region_true=scan.region, region_found=result.study.region,
        region_evidence="; ".join(result.study.region_evidence),
        canal_slices=len(ious), hits=hits, mean_iou=float(np.mean(ious)) if ious else float("nan"),
        detections_off_reference=sum(1 for k in by_slice if k not in scan.boxes),
        levels=len(result.levels), levels_checked=levels_checked, levels_on_canal=on_canal,
        discs_inside=len(true_names), discs_found=len(matches),
        disc_errors_mm=errors, false_levels=false_levels, names_checked=names_checked, names_right=names_right,
        names_anchored_by=result.study.names_anchored_by, rows=rows, disc_reference=bool(scan.discs),
        c2_reference=c2_only, landmark_span=span,
        discs_between_landmarks=0 if span is None else discs_between(*span), levels_between_landmarks=len(by_count),
    )


def model_grades(package: ModelPackage, stack, modality: str, result, level_places: Sequence[tuple[float, Any]]
                 ) -> list[Optional[str]]:
    """The package's classifier's grade of each of ``result``'s levels, shown to the user or not (its
    grade_scope, a T1); ``level_places`` are the levels' (slice, box) on the stack.

    This is the evidence for a grade scope: the public scans carry no grades, but most are of people without
    stenosis (volunteers, an abdominal CT), so a level graded B-D there is most likely wrong. None outside the
    regions the package grades.
    """
    grades = [level.grade.grade if level.grade else None for level in result.levels]
    withheld = [a for a, grade in enumerate(grades) if grade is None]
    if not withheld or result.study.region not in package.manifest.get("regions", []):
        return grades
    # only the levels whose grade was not shown: the others' is the classifier's already
    places = [(int(round(level_places[a][0])), level_places[a][1]) for a in withheld]
    for a, prediction in zip(withheld, package.classifier().grade_places(stack, places, modality)):
        grades[a] = prediction.grade
    return grades


def model_grade_a(scores: Sequence[RealScanScore]) -> dict[str, str]:
    """Per modality, how many graded real levels the classifier calls A (no stenosis), of how many."""
    out = {}
    for modality in ("CT", "MR"):
        graded = [r["model_grade"] for s in scores if s.modality == modality for r in s.rows if r.get("model_grade")]
        if graded:
            out[modality] = f"{graded.count('A')}/{len(graded)}"
    return out


def pooled(scores: Sequence[RealScanScore]) -> dict[str, Any]:
    """The figures of several scans together, and the worst single scan's canal hit rate."""
    slices = sum(s.canal_slices for s in scores)
    errors = [e for s in scores for e in s.disc_errors_mm]
    return {
        "scans": len(scores),
        "canal_hit_fraction": round(sum(s.hits for s in scores) / slices, 4) if slices else None,
        "canal_hits": f"{sum(s.hits for s in scores)}/{slices}",
        # a scan without a canal label (disc labels alone) has no hit rate
        "worst_scan_hit_fraction": (round(min(s.hit_fraction for s in scores if s.canal_slices), 4)
                                    if slices else None),
        "levels_on_canal": f"{sum(s.levels_on_canal for s in scores)}/{sum(s.levels_checked for s in scores)}",
        "levels_without_a_reference_near": sum(s.levels - s.levels_checked for s in scores),
        "region_right": f"{sum(s.region_true == s.region_found for s in scores)}/{len(scores)}",
        "discs_found_within_8mm": f"{sum(s.discs_found for s in scores)}/{sum(s.discs_inside for s in scores)}",
        "disc_error_median_mm": round(float(np.median(errors)), 1) if errors else None,
        "false_levels": sum(s.false_levels for s in scores),
        "names_right": f"{sum(s.names_right for s in scores)}/{sum(s.names_checked for s in scores)}",
        # the share of real levels the classifier calls A, shown or not: most public scans are of people without
        # stenosis (see model_grades)
        "model_grade_A": model_grade_a(scores),
        "scans_without_disc_positions": [s.scan for s in scores if not s.disc_reference],
        # a count, not a match: levels found between two labelled vertebral bodies, against the discs there
        "levels_between_landmarks": f"{sum(s.levels_between_landmarks for s in scores if s.landmark_span)}/"
                                    f"{sum(s.discs_between_landmarks for s in scores if s.landmark_span)}",
        "scans_with_as_many_levels_as_discs_between_landmarks":
            f"{sum(s.levels_between_landmarks == s.discs_between_landmarks for s in scores if s.landmark_span)}/"
            f"{sum(1 for s in scores if s.landmark_span)}",
        "scans_trained_on": [s.scan for s in scores if s.trained_on],
    }


def evaluate_real(packages: Callable[[str], ModelPackage], catalogue: Path,
                  use: Optional[str] = None) -> list[RealScanScore]:
    """Score every catalogue scan (``use`` = "train", "holdout" or None for all) with ``packages(scan name)``.

    For leave-one-scan-out, ``packages`` gives each scan the package trained without it.
    """
    return [score_real_scan(packages(scan.name), scan) for scan in load_scans(catalogue, use=use)]


def score_levels(result_levels: Sequence[float], discs: Sequence[float], n_slices: int,
                 slice_spacing_mm: float, more_discs_above: bool = False,
                 more_discs_below: bool = False) -> tuple[int, int, int]:
    """(discs inside the study, of those found within DISC_FOUND_MM, false levels).

    A level is false as ``level_is_false`` says: farther than FALSE_LEVEL_MM
    from every disc, unless ``more_discs_above`` and it lies above the highest
    labelled disc (or ``more_discs_below`` and below the lowest), where a disc
    no label marks may lie. With no disc at all, every level is false.
    """
    inside = [k for k in discs if disc_inside(k, n_slices, slice_spacing_mm)]
    found = len(match_levels(list(result_levels), inside, DISC_FOUND_MM / slice_spacing_mm))
    false = sum(1 for k in result_levels
                if not discs or level_is_false(k, discs, {}, slice_spacing_mm, more_discs_above, more_discs_below)[1])
    return len(inside), found, false


def score_series_names(level_names: Sequence[str], level_slices: Sequence[float], discs: dict[str, float],
                       n_slices: int, slice_spacing_mm: float, disc_names_known: bool = True,
                       landmarks: Optional[dict[str, float]] = None) -> tuple[int, int]:
    """(levels whose true name the labels tell, of those named right) on one series.

    With disc positions, a level within DISC_FOUND_MM of a disc inside the series
    has that disc's name (where the labels name the discs). Without, where the
    labels mark two vertebral bodies and the series holds the upper one (C2 on a
    neck), the levels below it are named by their count from it, as on a whole
    scan (``names_by_count``): a series that ends below it shows nothing to count
    from, so none of its names is checked.
    """
    if discs:
        if not disc_names_known:
            return 0, 0
        names, _, matches = match_inside_discs(level_slices, discs, n_slices, slice_spacing_mm)
        return len(matches), sum(level_names[a] == names[b] for a, b in matches)
    span = landmark_span(landmarks or {})
    if span is None or not 0.0 <= landmarks[span[0]] <= n_slices - 1:
        return 0, 0
    expected = names_by_count(list(level_slices), landmarks)
    return len(expected), sum(level_names[a] == name for a, name in expected.items())


def evaluate_series_variants(packages: Callable[[str], ModelPackage], catalogue: Path,
                             use: Optional[str] = None, short_thick: bool = False) -> dict[str, Any]:
    """Canal, levels and region on short, thick and cropped series made from every catalogue scan (``series_variants``).

    Each scan's series are graded as a user would, by ``packages(scan name)``:
    for leave-one-scan-out, the package trained without that scan. A scan with
    disc positions is scored on its discs; one with a canal label on the canal
    of each series slice whose centre lies on a labelled scan slice (the
    reference of that slice, as on the whole scan: ``canal_hit``); one with
    neither has nothing to score here. Without disc positions, a level above
    the middle of a labelled C2 is false. Names are checked where the labels
    tell them (``score_series_names``).

    With ``short_thick``, the short thick series instead (``short_thick_series``:
    40 mm windows in 5 mm slices), reported apart so that the figures of the
    others stay comparable from one version to the next.
    """
    from .series_variants import (FIELD_OF_VIEW_MARGIN_MM, SHORT_THICK_SERIES_MM, disc_slices_in, series_variants,
                                  short_thick_series, source_slices)

    per_scan, missed, wrong_names = [], [], []
    keys = ("series", "discs_inside", "discs_found", "false_levels", "names_checked", "names_right", "region_right",
            "canal_slices", "canal_hits")
    for scan in (s for s in load_scans(catalogue, use=use) if s.discs or s.boxes):
        package = packages(scan.name)
        counts = dict.fromkeys(keys, 0)
        regions: dict[str, int] = {}
        around = list(scan.discs.values()) or sorted(scan.boxes)
        made = (short_thick_series(scan.stack, scan.discs, around) if short_thick
                else series_variants(scan.stack, scan.discs, around, scan.boxes))
        for variant in made:
            stack = variant.stack
            result = grade_stack(stack, package, modality=scan.modality)
            levels = [float(lv.slice_index) for lv in result.levels]
            landmarks = disc_slices_in(scan.stack, stack, scan.landmarks)
            names_checked, names_right = score_series_names([lv.name for lv in result.levels], levels,
                                                            variant.discs, stack.n_slices, stack.spacing[2],
                                                            scan.disc_names_known, landmarks)
            if scan.discs:
                inside, found, false = score_levels(levels, list(variant.discs.values()), stack.n_slices,
                                                    stack.spacing[2], scan.more_discs_above, scan.more_discs_below)
            else:
                inside, found = 0, 0
                false = sum(level_is_false(k, [], landmarks, stack.spacing[2])[1] for k in levels)
            # each box carried onto the scan's own slice grid through patient space, where its reference lies: the
            # same pixels as the series' own, but for a cropped field of view
            boxes = {d.slice_index: scan.stack.box_to_slice(d.box)[1] for d in result.detections}
            canal_slices, canal_hits = 0, 0
            for k, r in enumerate(source_slices(scan.stack, stack)):
                if int(r) not in scan.boxes:
                    continue
                canal_slices += 1
                # the boxes are on the scan's grid, whose pixels a sagittal series does not share
                canal_hits += int(k in boxes and canal_hit(boxes[k], scan.boxes[int(r)], scan.canal[int(r)] > 0,
                                                           scan.stack.spacing))
            counts["series"] += 1
            counts["discs_inside"] += inside
            counts["discs_found"] += found
            counts["false_levels"] += false
            counts["names_checked"] += names_checked
            counts["names_right"] += names_right
            counts["region_right"] += int(result.study.region == scan.region)
            regions[result.study.region] = regions.get(result.study.region, 0) + 1
            counts["canal_slices"] += canal_slices
            counts["canal_hits"] += canal_hits
            if found < inside or false:
                missed.append(f"{scan.name}, {variant.description}: {found}/{inside} discs, {false} false "
                              f"(levels at {', '.join(f'{k:.0f}' for k in levels) or 'none'}; discs at "
                              f"{', '.join(f'{k:.1f}' for k in sorted(variant.discs.values())) or 'none labelled'})")
            if names_right < names_checked:
                named = ", ".join(f"{lv.name} at {k:.0f}" for lv, k in zip(result.levels, levels))
                wrong_names.append(f"{scan.name}, {variant.description}: {names_right}/{names_checked} names right "
                                   f"(levels {named}; {_labels_in(variant.discs or landmarks)}; "
                                   f"{result.study.numbering.split(':')[0]})")
        per_scan.append({"scan": scan.name, "trained_on": trained_on(package, scan.name), **counts,
                         "regions_found": regions})
    total = {key: sum(s[key] for s in per_scan) for key in keys}
    regions_found = {region: sum(s["regions_found"].get(region, 0) for s in per_scan)
                     for region in sorted({r for s in per_scan for r in s["regions_found"]})}
    length_mm, thickness_mm = SHORT_THICK_SERIES_MM
    data = (f"short thick series: windows of {length_mm:.0f} mm (every 15 mm) of each real scan with disc positions "
            f"or a canal label, its slices averaged by twos or more into slices about {thickness_mm:.0f} mm thick "
            "(6 mm from 3 mm slices; a scan with thicker slices makes none), its labels carried over in patient "
            "space; a disc "
            f"counts when its centre is at least {DISC_INSIDE_MM:.0f} mm inside the series; a series slice's canal "
            "reference is that of the scan slice at its centre")
    return {
        "data": data if short_thick else
                "short windows (40, 60 and 90 mm, every 15 mm), thick-slice versions (3 and 4.5 mm) and a 3 mm "
                "sagittal version (its columns averaged left to right) of each "
                "real scan with disc positions or a canal label, and the scan cropped to "
                f"{FIELD_OF_VIEW_MARGIN_MM:.0f} mm around its labelled canal where that cuts at least a quarter of "
                "the slice, its labels carried over in patient space; a disc "
                f"counts when its centre is at least {DISC_INSIDE_MM:.0f} mm inside the series; a series slice's "
                "canal reference is that of the scan slice at its centre",
        "pooled": {"series": total["series"],
                   "canal_found": f"{total['canal_hits']}/{total['canal_slices']}",
                   "discs_found_within_8mm": f"{total['discs_found']}/{total['discs_inside']}",
                   "false_levels": total["false_levels"],
                   "names_right": f"{total['names_right']}/{total['names_checked']}",
                   "region_right": f"{total['region_right']}/{total['series']}",
                   "regions_found": regions_found,
                   "scans_trained_on": [s["scan"] for s in per_scan if s["trained_on"]]},
        "per_scan": per_scan,
        "series_with_a_missed_disc_or_a_false_level": missed,
        "series_with_a_wrong_name": wrong_names,
    }


def _labels_in(places: dict[str, float]) -> str:
    """The labels' places on a series' slices, for a person reading why a name was wrong."""
    return "labels " + (", ".join(f"{name} at {k:.1f}" for name, k in sorted(places.items(), key=lambda p: p[1]))
                        or "none")


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

    def graded(items: Sequence[Any]) -> np.ndarray:
        """The grade index the classifier gives each slice's crop."""
        patches = np.stack([classifier_sample(s, package.classifier_config, None) for s in items])
        return classifier.predict_proba(patches).argmax(axis=1)

    predicted = graded(samples)
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
    modalities = np.array([s.modality for s in samples])
    for modality in ("CT", "MR"):
        mask = modalities == modality
        if mask.any():
            out[f"accuracy_{modality}"] = round(float(accuracy_score(truth[mask], predicted[mask])), 4)
            out[f"cohen_kappa_{modality}"] = round(float(cohen_kappa_score(truth[mask], predicted[mask])), 4)
    # the phantoms are drawn at 0.5-1 mm pixels; real studies come at up to 3 mm (the README's sample)
    by_pixel: dict[str, dict[str, float]] = {}
    for pixel_mm in GRADE_PIXEL_MM:
        guessed = graded([dataclasses.replace(s, image=coarsen_slice(s.image, s.spacing, pixel_mm)) for s in samples])
        by_pixel[f"{pixel_mm:g}"] = {
            m: round(float(accuracy_score(truth[modalities == m], guessed[modalities == m])), 4)
            for m in ("CT", "MR") if (modalities == m).any()}
    out["accuracy_at_pixel_mm"] = by_pixel
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
