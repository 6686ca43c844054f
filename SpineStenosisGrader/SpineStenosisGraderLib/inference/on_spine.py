"""Whether a CT canal box lies on the spine: near the middle of the body, left to right.

The tracking (``tracking``) follows the strongest tube of boxes, and where a
study holds little of the spine's canal that tube may lie elsewhere: on short
windows of the README's pelvis below its L5-S1, the embedded and leave-one-out
models followed tubes in the hip bones, 47-83 mm beside the middle of the body,
and put a level there. Such a box has bone around it, as the canal has, but the
spinal canal lies within a few centimetres of the middle of the body. A box
further aside is no canal: the slice says so.

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
from .region import outline_columns

#: the spinal canal lies within this of the middle of the body (``body_middle``), left to right. On the four CT
#: scans of the catalogue it lies 3-15 mm from it; the tubes the models followed in the sample's hip bones lay 49-83 mm
#: from it. A scoliosis shifts the canal sideways, by several centimetres in a severe curve: there its boxes may be
#: taken for bone beside the spine, and the warning says so
MAX_OFF_MIDLINE_MM = 45.0
#: an outline within this of the field of view's edge is cut by it: the sample's pelvis fills its 366 mm field but
#: for one column of air
FIELD_EDGE_MM = 5.0
#: the body's middle is read on this many slices spread along the track (3 ms each on a 512-pixel slice), and the
#: median taken: a patient lies straight enough on the table for a few centimetres' tolerance
MIDLINE_PICKS = 7


def _slice_middle(stack: AxialStack, k: int) -> Optional[float]:
    """The middle of the CT body on slice ``k``, left to right, in image columns (0.5 is the first column's centre).

    The body outline's middle; where the field of view cuts the outline (within
    FIELD_EDGE_MM of its edge) on both sides, the field's own (a field narrower
    than the body is centred on the body, or on the spine). None where it cuts
    one side only, or the slice shows no body.
    """
    columns = outline_columns(stack, k, "CT")
    if columns is None:
        return None
    first, last, _ = columns
    width = stack.array.shape[2]
    edge = int(round(FIELD_EDGE_MM / stack.spacing[0]))
    cut_left, cut_right = first <= edge, last >= width - 1 - edge
    if cut_left and cut_right:
        return width / 2.0
    if cut_left or cut_right:
        return None
    return (first + last + 1) / 2.0


def body_middle(stack: AxialStack, canals: Sequence[Optional[SliceCanal]]) -> Optional[float]:
    """The middle of the CT body, left to right, in image columns: the median over MIDLINE_PICKS tracked slices.

    None where no picked slice tells it.
    """
    tracked = [c.slice_index for c in canals if c is not None]
    if not tracked:
        return None
    picks = sorted(set(int(v) for v in np.linspace(min(tracked), max(tracked), num=min(MIDLINE_PICKS, len(tracked)))))
    middles = [m for k in picks for m in [_slice_middle(stack, k)] if m is not None]
    return float(np.median(middles)) if middles else None


def boxes_off_the_spine(stack: AxialStack, canals: Sequence[Optional[SliceCanal]]) -> dict[int, float]:
    """The CT slices whose canal box lies more than MAX_OFF_MIDLINE_MM beside the middle of the body, and how far (mm).

    None are where no slice tells the body's middle (``body_middle``).
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
