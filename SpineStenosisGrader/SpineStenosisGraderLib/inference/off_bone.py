"""Layer 3: on CT, a canal candidate whose middle is bone is moved back onto the canal behind that bone, or dropped.

On CT the canal holds CSF, the cord, nerve roots and epidural fat (about 60 HU
and less; a bulging disc at its front, 70-100 HU), so the middle of a box on
the canal is never bone. The detector may still box the bone just in front of
the canal: on the two validation neck CTs (TotalSegmentator s0002 and s0003,
never trained on) the embedded model's boxes on the back of a vertebral body
(at a disc, where the canal is shallow) and on the dens read 222-797 HU at
their middle, 15 boxes in all, and every one missed the canal; of its boxes on
the canal, on those and on the four other CTs of the catalogue, all but one
read 130 HU or less there (that one, on s0002, 206 HU, is moved and stays on
the canal).

The canal lies right behind that bone: behind a vertebral body's back wall, or
behind the dens. So such a candidate is moved back, keeping its size, until
its front edge lies where the bone ends; if there is no end within
BEHIND_MM, or the moved box's middle is bone too, the candidate is no canal
and is dropped. Moved or dropped before the tracking (``tracking``), a
candidate competes on the tube like any other, so a box on bone behind the
canal (a lamina), moved into the muscles, is not followed either.

In a CT myelogram the contrast in the CSF reads as bone: there the middle of
the detector's best box reads 150 HU or more on most slices, and no box is
moved (MYELOGRAM_SHARE).
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from ..study.normalise import SliceGrid
from ..study.volume import AxialStack
from .detector import SliceDetection
from .landmarks import BONE_HU

#: how far behind the box's middle the bone's end is looked for: a lumbar body is about 30 mm deep, and the box's
#: middle lies within it
BEHIND_MM = 20.0
#: the bone ends where this much of soft tissue follows it: one row of partial volume in a body is not its end
SOFT_RUN_MM = 2.0
#: where the best candidate's middle reads as bone on more than this share of the slices with one, the canal holds
#: contrast (a CT myelogram): on the two neck CTs it did on 21 of 98 and 37 of 125 slices (the skull's included), on
#: the four other CTs of the catalogue on 10% or fewer
MYELOGRAM_SHARE = 0.5


def middle_hu(image: np.ndarray, box_ij: Sequence[float]) -> float:
    """The median of the box's middle (half its width and half its depth) on a CT slice, in HU; NaN outside it."""
    i0, j0, i1, j1 = box_ij
    ci, cj, qi, qj = (i0 + i1) / 2.0, (j0 + j1) / 2.0, (i1 - i0) / 4.0, (j1 - j0) / 4.0
    r0, c0 = max(0, int(round(cj - qj))), max(0, int(round(ci - qi)))
    patch = image[r0:max(r0 + 1, int(round(cj + qj))), c0:max(c0 + 1, int(round(ci + qi)))]
    return float(np.median(patch)) if patch.size else float("nan")


def move_off_bone(image: np.ndarray, box_ij: Sequence[float], row_mm: float) -> Optional[tuple[float, ...]]:
    """The box (i0, j0, i1, j1; rows grow backwards) as it is, moved back behind the bone at its middle, or None.

    The bone's end is the first row behind the box's middle where the median
    over the middle half of its columns falls below BONE_HU, and stays there for
    SOFT_RUN_MM. None where no such row lies within BEHIND_MM, or where the
    moved box's middle is bone too.
    """
    if not middle_hu(image, box_ij) >= BONE_HU:
        return tuple(float(v) for v in box_ij)
    i0, j0, i1, j1 = (float(v) for v in box_ij)
    ci, qi = (i0 + i1) / 2.0, (i1 - i0) / 4.0
    columns = slice(max(0, int(round(ci - qi))), max(1, int(round(ci + qi))))
    start = max(0, int(round((j0 + j1) / 2.0)))
    stop = min(image.shape[0], start + int(round(BEHIND_MM / row_mm)) + 1)
    run = max(1, int(round(SOFT_RUN_MM / row_mm)))
    if stop - start < run:
        return None
    soft = np.median(image[start:stop, columns], axis=1) < BONE_HU
    ends = [r for r in range(len(soft) - run + 1) if soft[r:r + run].all()]
    if not ends:
        return None
    front = float(start + ends[0])
    moved = (i0, front, i1, front + (j1 - j0))
    return moved if middle_hu(image, moved) < BONE_HU else None


def candidates_off_bone(stack: AxialStack, candidates: Sequence[Sequence[SliceDetection]],
                        grid: SliceGrid) -> list[list[SliceDetection]]:
    """Each CT slice's canal candidates (canvas boxes on ``grid``) moved off the bone at their middle, or dropped.

    A moved candidate keeps its scores: the detector saw the canal on the
    slice, and boxed the bone just in front of it. In a CT myelogram
    (MYELOGRAM_SHARE) the candidates are returned as they are.
    """
    boxes = [[grid.to_stack(np.asarray(candidate.box_uv))[0] for candidate in found] for found in candidates]
    best = [middle_hu(stack.array[k], on_slice[0]) for k, on_slice in enumerate(boxes) if on_slice]
    if best and np.mean(np.asarray(best) >= BONE_HU) > MYELOGRAM_SHARE:
        return [list(found) for found in candidates]
    out: list[list[SliceDetection]] = []
    for k, (found, on_slice) in enumerate(zip(candidates, boxes)):
        kept = []
        for candidate, box_ij in zip(found, on_slice):
            moved = move_off_bone(stack.array[k], box_ij, stack.spacing[1])
            if moved is None:
                continue
            if not np.allclose(moved, box_ij):
                box_uv = tuple(float(v) for v in grid.to_canvas(np.asarray(moved))[0])
                candidate = SliceDetection(box_uv, candidate.score, candidate.disc_probability)
            kept.append(candidate)
        out.append(kept)
    return out
