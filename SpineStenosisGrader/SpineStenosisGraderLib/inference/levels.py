"""Layer 4: group per-slice canal detections into disc levels and name them.

The detector says, per slice, how likely the slice cuts a disc. Runs of
disc-like slices along the spine are discs; each disc's representative slice
is the one the detector is surest of. Names are counted from the anatomy's
end that axial studies usually include (L5-S1 for lumbar, C2-C3 for
cervical), and one anchor ("this disc is L4-L5") renames every level, because
lumbar-only studies are misnumbered in about one patient in seven.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
from scipy import ndimage

from ..errors import InputError

#: every intervertebral disc, superior to inferior
SPINE_DISCS: tuple[str, ...] = (
    ("C2-C3", "C3-C4", "C4-C5", "C5-C6", "C6-C7", "C7-T1")
    + tuple(f"T{n}-T{n + 1}" for n in range(1, 12))
    + ("T12-L1", "L1-L2", "L2-L3", "L3-L4", "L4-L5", "L5-S1")
)
REGIONS = ("lumbar", "cervical")

#: nominal disc heights, for the thickness of a level's box
DISC_HEIGHT_MM = {"lumbar": 10.0, "cervical": 6.0}
#: consecutive cervical discs are 14-20 mm apart, lumbar ones 30-45 mm
CERVICAL_MAX_DISC_SPACING_MM = 25.0
#: two disc-like runs closer than this belong to one disc
MIN_DISC_SEPARATION_MM = 9.0


@dataclass
class SliceCanal:
    """A detection already mapped onto the stack: slice index, box (i0, j0, i1, j1) in edge coordinates."""

    slice_index: int
    box_ij: tuple[float, float, float, float]
    score: float
    disc_probability: float


@dataclass
class LevelCandidate:
    slice_index: int
    box_ij: tuple[float, float, float, float]
    score: float
    disc_probability: float
    #: the slices counted into this disc
    slices: tuple[int, ...]


def disc_profile(canals: Sequence[Optional[SliceCanal]], n_slices: int, min_score: float = 0.3) -> np.ndarray:
    profile = np.zeros(n_slices)
    for canal in canals:
        if canal is not None and canal.score >= min_score:
            profile[canal.slice_index] = canal.disc_probability
    return profile


def find_discs(canals: Sequence[Optional[SliceCanal]], n_slices: int, slice_spacing_mm: float,
               threshold: float = 0.5, min_score: float = 0.3) -> list[LevelCandidate]:
    """Disc levels, inferior first, from runs of slices the detector calls disc-like."""
    by_slice = {c.slice_index: c for c in canals if c is not None}
    profile = disc_profile(canals, n_slices, min_score)
    # light smoothing along the spine (about 2 mm) bridges one doubtful slice inside a disc;
    # the maximum keeps a disc that only one thick slice cuts
    sigma = 2.0 / max(slice_spacing_mm, 1e-3)
    smooth = np.maximum(ndimage.gaussian_filter1d(profile, sigma), profile) if sigma > 0.3 else profile
    runs, n = ndimage.label(smooth >= threshold)
    groups = [np.nonzero(runs == r)[0] for r in range(1, n + 1)]
    merged: list[np.ndarray] = []
    for group in groups:
        if merged and (group[0] - merged[-1][-1]) * slice_spacing_mm < MIN_DISC_SEPARATION_MM:
            merged[-1] = np.arange(merged[-1][0], group[-1] + 1)
        else:
            merged.append(group)
    levels = []
    for group in merged:
        candidates = [k for k in group if k in by_slice and by_slice[k].score >= min_score]
        if not candidates:
            continue
        strength = {k: profile[k] * by_slice[k].score for k in candidates}
        top = max(strength.values())
        centre = float(np.average(group, weights=profile[group] + 1e-9))
        # among the near-best slices, the one nearest the disc's centre of mass
        best = min((k for k in candidates if strength[k] >= 0.9 * top), key=lambda k: abs(k - centre))
        canal = by_slice[best]
        levels.append(LevelCandidate(
            slice_index=int(best), box_ij=canal.box_ij, score=canal.score,
            disc_probability=float(profile[best]), slices=tuple(int(k) for k in group),
        ))
    return levels


def infer_region(levels: Sequence[LevelCandidate], slice_spacing_mm: float, default: str = "lumbar") -> str:
    """Cervical or lumbar from the spacing of the discs, when there are two or more."""
    if len(levels) < 2:
        return default
    gaps = np.diff([lv.slice_index for lv in levels]) * slice_spacing_mm
    return "cervical" if float(np.median(gaps)) < CERVICAL_MAX_DISC_SPACING_MM else "lumbar"


def check_level_name(name: str) -> str:
    """A disc name as the user typed it ("l4-l5", "L4/L5") in its canonical form, or a clear error."""
    canonical = name.strip().upper().replace("/", "-")
    if canonical not in SPINE_DISCS:
        raise InputError(f"{name!r} is not a disc level name; use names like L4-L5 or C5-C6.")
    return canonical


def name_levels(n_levels: int, region: str, anchor: Optional[tuple[int, str]] = None) -> list[str]:
    """Names for ``n_levels`` consecutive discs listed inferior first.

    By default the lowest lumbar disc is L5-S1 and the highest cervical disc
    is C2-C3. ``anchor = (position, name)`` says the disc at ``position``
    (0 = most inferior; -1 = most superior) is ``name``; all others follow from it. Discs beyond
    the ends of the spine get names like "below L5-S1 (1)".
    """
    if region not in REGIONS:
        raise InputError(f"Region must be one of {', '.join(REGIONS)}, not {region!r}.")
    if anchor is not None:
        anchor = (anchor[0], check_level_name(anchor[1]))
    if n_levels == 0:
        return []
    if anchor is None:
        anchor = (0, "L5-S1") if region == "lumbar" else (n_levels - 1, "C2-C3")
    position, name = anchor
    if position < 0:
        position += n_levels
    if not 0 <= position < n_levels:
        raise InputError(f"Level position {position} is outside the {n_levels} levels found.")
    anchor_index = SPINE_DISCS.index(name)
    names = []
    for p in range(n_levels):
        # inferior discs (smaller p) are further down the list of SPINE_DISCS
        index = anchor_index + (position - p)
        if index < 0:
            names.append(f"above {SPINE_DISCS[0]} ({-index})")
        elif index >= len(SPINE_DISCS):
            names.append(f"below {SPINE_DISCS[-1]} ({index - len(SPINE_DISCS) + 1})")
        else:
            names.append(SPINE_DISCS[index])
    return names


def numbering_note(region: str, anchor: Optional[tuple[int, str]], names: Sequence[str]) -> str:
    if not names:
        return "No disc level was found."
    if anchor is not None:
        which = "the highest disc found" if anchor[0] == -1 else f"disc {anchor[0] + 1} from the bottom"
        return f"Numbered from the user's anchor: {which} is {anchor[1]}."
    if region == "lumbar":
        return ("Counted upward from the lowest disc found, taken as L5-S1. Check it against a sagittal view "
                "(transitional vertebrae, or a study that stops above the sacrum) and re-anchor if needed.")
    return ("Counted downward from the highest disc found, taken as C2-C3. Check it against a sagittal view "
            "and re-anchor if the study does not start at C2.")
