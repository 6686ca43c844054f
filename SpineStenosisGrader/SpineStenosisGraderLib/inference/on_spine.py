"""Whether a CT canal box lies on the spine: near the middle of the body, left to right.

The tracking (``tracking``) follows the strongest tube of boxes, and where a
study holds little of the spine's canal that tube may lie elsewhere: on short
windows of the README's pelvis below its L5-S1, the embedded and leave-one-out
models followed tubes in the hip bones, 47-83 mm beside the middle of the body,
and put a level there. Such a box has bone around it, as the canal has, but the
spinal canal lies within a few centimetres of the middle of the body. A box
further aside is no canal: the slice says so.

The middle is where the skeleton is mirror-symmetric, left to right: the
column about which the slice's bone, counted column by column, best matches its
own mirror image (``slice_middle``). Bone is symmetric even where the field of
view cuts the soft tissue on one side (the sample's pelvis fills its field but
for 15-21 mm on one side), and on a field cropped to the spine the vertebra
alone is. On every labelled slice of the four CT scans of the catalogue the
canal's reference box lies within 9 mm of it.

Whether a vertebra lies in front of the box (``landmarks.vertebral_bone``) was
tried as a second test and left out: on the sample's 3 mm pixels it reads no
bone on three 6 mm slices running in T11 and T12, and took true canal boxes for
false ones.
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from ..study.volume import AxialStack
from .levels import SliceCanal
from .tracking import spread_along_track

#: the spinal canal lies within this of the middle of the body (``body_middle``), left to right. On the four CT
#: scans of the catalogue it lies within 9 mm of it; the tubes the models followed in the sample's hip bones lay
#: 47-83 mm from it. A scoliosis shifts the canal sideways, by several centimetres in a severe curve: there its boxes
#: may be taken for bone beside the spine, and the warning says so
MAX_OFF_MIDLINE_MM = 45.0
#: bone, for the symmetry: cortical and dense cancellous bone, above contrast-filled vessels and bowel (150-350 HU)
#: but for the densest, whose small area weighs little against the skeleton's
SYMMETRY_BONE_HU = 300.0
#: the bone's columns are counted in bins this wide: the middle is wanted to a few millimetres, not to a pixel
SYMMETRY_BIN_MM = 2.5
#: the body's middle is read on this many slices spread along the track, and the median taken: a patient lies
#: straight enough on the table for a few centimetres' tolerance, and a slice through the thighs, whose bones need
#: not lie symmetric about the spine, is outvoted
MIDLINE_PICKS = 7


def slice_middle(stack: AxialStack, k: int) -> Optional[float]:
    """The column about which slice ``k``'s bone is most nearly mirror-symmetric (pixel-edge coordinates).

    The bone is counted column by column, in bins about SYMMETRY_BIN_MM wide,
    and each mirror line scores what every pair of bins it maps onto each other
    share (the smaller count). A bone the field of view cuts away (a hip beside
    a spine-centred field) then costs nothing, where a product of the counts
    would mirror the spine onto the other hip, whose columns are taller. A
    field that cuts one hip bone away whole but holds the other is read about
    that hip, the larger symmetric bone, and its canal taken for bone beside
    the spine: a field of view is centred on the body or on the spine, not 100
    mm beside it. None where the slice shows no bone.
    """
    counts = (np.asarray(stack.array[k]) > SYMMETRY_BONE_HU).sum(axis=0).astype(float)
    if not counts.any():
        return None
    width = max(1, int(round(SYMMETRY_BIN_MM / stack.spacing[0])))
    bins = np.add.reduceat(counts, np.arange(0, len(counts), width))
    n = len(bins)
    # line m pairs bin i with bin m - i, about the bins' edge-coordinate (m + 1) / 2; pairs outside the image share 0
    lines = np.arange(2 * n - 1)[:, None]
    mirrored = lines - np.arange(n)[None, :]
    inside = (mirrored >= 0) & (mirrored < n)
    shared = np.where(inside, np.minimum(bins[None, :], bins[np.clip(mirrored, 0, n - 1)]), 0.0).sum(axis=1)
    return (int(np.argmax(shared)) + 1) / 2.0 * width


def body_middle(stack: AxialStack, canals: Sequence[Optional[SliceCanal]]) -> Optional[float]:
    """The middle of the CT body, left to right, in image columns: the median over MIDLINE_PICKS tracked slices.

    None where no picked slice shows bone.
    """
    middles = [m for k in spread_along_track(canals, MIDLINE_PICKS) for m in [slice_middle(stack, k)] if m is not None]
    return float(np.median(middles)) if middles else None


def boxes_off_the_spine(stack: AxialStack, canals: Sequence[Optional[SliceCanal]]) -> dict[int, float]:
    """The CT slices whose canal box lies more than MAX_OFF_MIDLINE_MM beside the middle of the body, and how far (mm).

    Empty where no picked slice shows bone, so the middle is not known (``body_middle``).
    """
    middle = body_middle(stack, canals)
    if middle is None:
        return {}
    beside = {c.slice_index: abs((c.box_ij[0] + c.box_ij[2]) / 2.0 - middle) * stack.spacing[0]
              for c in canals if c is not None}
    return {k: mm for k, mm in beside.items() if mm > MAX_OFF_MIDLINE_MM}


def off_spine_warning(off: dict[int, float]) -> str:
    """What the user is told of the boxes ``boxes_off_the_spine`` found: the slices, as runs, and how far aside."""
    runs: list[list[int]] = []
    for k in sorted(off):
        if runs and k == runs[-1][-1] + 1:
            runs[-1].append(k)
        else:
            runs.append([k])
    slices = ", ".join(f"{run[0]}-{run[-1]}" if len(run) > 1 else f"{run[0]}" for run in runs)
    low, high = round(min(off.values())), round(max(off.values()))
    return (f"The detector's canal box on slice(s) {slices} is not on the spine: it lies "
            f"{low if low == high else f'{low}-{high}'} mm beside the middle of the body, so no canal is reported "
            "there. A bone of the hip or pelvis can look like the canal on a few slices; in a severe scoliosis the "
            "canal itself may lie that far aside.")
