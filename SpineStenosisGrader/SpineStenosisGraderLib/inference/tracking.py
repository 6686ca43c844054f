"""Layer 3: join each slice's canal candidates into one continuous canal through the study.

There is one spinal canal and it is a tube: from one slice to the next its
centre moves by a few millimetres at most. A detector that looks at one slice
at a time can still be fooled by a hip, a bowel loop or a neck muscle that looks
like a canal on that slice. So the canal is chosen for the whole study at once:
the path through the slices' candidates (at most one per slice, skipping
slices) that maximises the candidates' evidence minus a penalty for every jump
larger than the tube allows. A strong false box that lies off the tube costs
more in jumps than it brings in score, and a slice where no candidate fits the
tube is left without a canal instead of getting a guess. Inside the track, a
slice skipped for want of a confident candidate takes a faint one that lies on
the tube and has the size of the canal around it: on an unfamiliar contrast
the detector's scores drop everywhere, but its box still lands on the canal.

This is a longest-path problem on a DAG ordered by slice, solved exactly by
dynamic programming.
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from .detector import SliceDetection
from .levels import SliceCanal

#: a candidate scoring below this brings no evidence for the canal
MIN_CANAL_SCORE = 0.3
#: how far the canal centre may move between slices without penalty: a base for box jitter,
#: plus a slope per mm along the spine (the lumbar lordosis and cervical curve tilt the
#: canal by at most about 30 degrees against the axial plane: tan 30 = 0.58)
JUMP_BASE_MM = 6.0
JUMP_SLOPE = 0.6
#: penalty per mm of jump beyond that allowance, in units of detection score
JUMP_PENALTY_PER_MM = 0.15
#: the track may skip slices with no fitting candidate over at most this distance
MAX_GAP_MM = 30.0
#: an untracked stretch inside the track no longer than this is bridged for the disc levels (``bridge_gaps``): a disc
#: is 5-12 mm tall, and where it compresses the canal the detector may lose the canal over the whole disc and a slice
#: or two around it (3 mm at the L3-L4 of fastcleverseg_ivd_46 in a 40 mm window; 13 mm at its L4-L5, a gap that
#: BRIDGE_SURE_MM leaves open, as the boxes below it are faint)
BRIDGE_MAX_GAP_MM = 15.0
#: and only where the detector was sure of the canal (MIN_CANAL_SCORE) on this much of the BRIDGE_MAX_GAP_MM on
#: either side: where the sac tapers into the sacrum the detector loses it too, between faint boxes, and there the
#: disc sign found the remnant of a fused sacral disc (fastcleverseg_ivd_11, 22 mm below its L5-S1)
BRIDGE_SURE_MM = 5.0
#: a faint candidate on a skipped slice inside the track is the canal when its centre lies this close to the
#: tube between the tracked slices around it, and its sides are within this factor of theirs
FAINT_CENTRE_MM = 4.0
FAINT_SIZE_RATIO = 1.5


def _centres(candidates: Sequence[SliceDetection]) -> np.ndarray:
    return np.array([[(c.box_uv[0] + c.box_uv[2]) / 2.0, (c.box_uv[1] + c.box_uv[3]) / 2.0] for c in candidates])


def track_canal(candidates: Sequence[Sequence[SliceDetection]], pixel_mm: float, slice_mm: float,
                min_score: float = MIN_CANAL_SCORE) -> list[Optional[SliceDetection]]:
    """The canal on each slice, or None where no candidate continues the tube.

    ``candidates[k]`` are slice k's canal candidates on a canvas of ``pixel_mm``
    mm per pixel; slices are ``slice_mm`` apart. Candidates below ``min_score``
    are never chosen.
    """
    nodes: list[tuple[int, SliceDetection]] = [
        (k, c) for k, slice_candidates in enumerate(candidates) for c in slice_candidates if c.score >= min_score
    ]
    chosen: list[Optional[SliceDetection]] = [None] * len(candidates)
    if not nodes:
        return chosen
    ks = np.array([k for k, _ in nodes])
    centres_mm = _centres([c for _, c in nodes]) * pixel_mm
    # evidence: how far above the threshold each candidate scores (a bare pass brings almost nothing)
    reward = np.array([c.score for _, c in nodes]) - min_score + 1e-6
    best = reward.copy()
    previous = np.full(len(nodes), -1)
    max_gap = max(MAX_GAP_MM, 2.5 * slice_mm)
    for a in range(len(nodes)):
        # earlier nodes on earlier slices within reach (nodes are ordered by slice)
        dz_mm = (ks[a] - ks[:a]) * slice_mm
        reach = np.nonzero((dz_mm > 0) & (dz_mm <= max_gap))[0]
        if len(reach) == 0:
            continue
        jump = np.hypot(*(centres_mm[reach] - centres_mm[a]).T)
        allowed = JUMP_BASE_MM + JUMP_SLOPE * dz_mm[reach]
        value = best[reach] + reward[a] - JUMP_PENALTY_PER_MM * np.maximum(0.0, jump - allowed)
        top = int(np.argmax(value))
        if value[top] > best[a]:
            best[a] = value[top]
            previous[a] = reach[top]
    a = int(np.argmax(best))
    while a >= 0:
        chosen[ks[a]] = nodes[a][1]
        a = int(previous[a])
    return _fill_faint_slices(chosen, candidates, pixel_mm)


def _fill_faint_slices(chosen: list[Optional[SliceDetection]], candidates: Sequence[Sequence[SliceDetection]],
                       pixel_mm: float) -> list[Optional[SliceDetection]]:
    """Inside the track, a slice skipped for want of a confident candidate takes a faint one that lies on the tube.

    The tube between the two tracked slices around it says where the canal
    is; a candidate there, of the neighbours' size, is the canal seen faintly
    (an unfamiliar contrast lowers every score), not a guess. Beyond the track's
    ends nothing is added: there the tube says nothing.
    """
    tracked = [k for k, c in enumerate(chosen) if c is not None]
    filled = list(chosen)
    for a, b in zip(tracked, tracked[1:]):
        lo, hi = np.array(chosen[a].box_uv), np.array(chosen[b].box_uv)
        for k in range(a + 1, b):
            t = (k - a) / (b - a)
            expected = (1 - t) * lo + t * hi
            size = expected[2:] - expected[:2]
            fits = []
            for c in candidates[k]:
                box = np.array(c.box_uv)
                centre_mm = np.hypot(*(((box[:2] + box[2:]) - (expected[:2] + expected[2:])) / 2.0)) * pixel_mm
                ratio = (box[2:] - box[:2]) / np.maximum(size, 1e-6)
                if centre_mm <= FAINT_CENTRE_MM and np.all(ratio >= 1 / FAINT_SIZE_RATIO) and np.all(
                        ratio <= FAINT_SIZE_RATIO):
                    fits.append(c)
            if fits:
                filled[k] = max(fits, key=lambda c: c.score)
    return filled


def bridge_gaps(canals: Sequence[Optional[SliceCanal]], slice_mm: float,
                max_gap_mm: Optional[float] = BRIDGE_MAX_GAP_MM,
                sure_mm: float = BRIDGE_SURE_MM) -> list[Optional[SliceCanal]]:
    """The canal with its untracked stretches inside the track bridged: the tube between the slices around them.

    Where a disc narrows the canal most, its CSF may vanish and the detector
    lose the canal for a few slices: the very level a stenosis grader must not
    miss. There the canal still lies between its boxes above and below, so a
    bridged slice gets the box interpolated between them (score 0, disc
    probability 0, ``bridged``) for placing a level; it is no detection.
    Stretches longer than ``max_gap_mm``, those without ``sure_mm`` of slices
    the detector was sure of within ``max_gap_mm`` on either side, and slices
    beyond the track's ends stay None. With ``max_gap_mm`` None every stretch
    inside the track is bridged (where a rib is followed across it).
    """
    tracked = [k for k, c in enumerate(canals) if c is not None]
    sure = np.array([c is not None and c.score >= MIN_CANAL_SCORE for c in canals], dtype=bool)
    bridged = list(canals)
    for a, b in zip(tracked, tracked[1:]):
        if b - a < 2:
            continue
        if max_gap_mm is not None:
            reach = int(max_gap_mm // slice_mm)
            if ((b - a - 1) * slice_mm > max_gap_mm
                    or min(sure[max(0, a + 1 - reach):a + 1].sum(), sure[b:b + reach].sum()) * slice_mm < sure_mm):
                continue
        lo, hi = np.array(canals[a].box_ij, dtype=float), np.array(canals[b].box_ij, dtype=float)
        for k in range(a + 1, b):
            t = (k - a) / (b - a)
            box = tuple(float(v) for v in (1 - t) * lo + t * hi)
            bridged[k] = SliceCanal(k, box, 0.0, 0.0, bridged=True)
    return bridged


def spread_along_track(canals: Sequence[Optional[SliceCanal]], count: int) -> list[int]:
    """Up to ``count`` slice indices spread evenly from the lowest to the highest slice with a canal, sorted.

    A handful of such slices is enough to read what changes slowly along the study (the body's outline, its
    middle), and keeps that cheap on long studies. Empty where no slice has a canal.
    """
    tracked = [c.slice_index for c in canals if c is not None]
    if not tracked:
        return []
    return sorted(set(int(v) for v in np.linspace(min(tracked), max(tracked), num=min(count, len(tracked)))))
