"""Layer 3: is this MR study the T2 contrast the model reads, or a T1?

The model finds and grades the canal by its bright CSF: on T2 (and T2*, and a
fat-suppressed T2) the middle of the canal outshines the bone, fat and
muscle around it. On a T1 the CSF is dark and the epidural fat and marrow
around it bright, so the detector may still box the canal by its shape, and
a user would then read levels, names and grades off a series the model was
never meant for. So the study says so: where the middle of the tracked
canal is darker than the tissue around it on most slices, the study is
taken for a T1 and the user is asked for the T2 series.
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from ..study.volume import AxialStack
from .csf_outline import box_window
from .levels import SliceCanal

#: the ring the canal's middle is compared with reaches this far beyond the box: bone, fat and muscle
RING_MM = 8.0
#: a study whose canal middle reads below this share of its ring, on the median tracked slice, is a T1.
#: The median reads 1.46-4.41 on every real T2 and T2* checked (lumbar, whole necks, a 7.5 mm T2*) and
#: 0.52-0.76 on four real lumbar T1 scans: the CSF darker than what surrounds it
T1_CORE_SHARE = 1.0
#: fewer tracked slices than this say too little to judge the contrast by
MIN_SLICES = 5


def canal_core_share(image: np.ndarray, box_ij: Sequence[float], pixel_spacing: Sequence[float]) -> float:
    """The median of the box's middle half (each side halved) over the median of the box and RING_MM around it."""
    i0, j0, i1, j1 = box_ij
    ci, cj = (i0 + i1) / 2.0, (j0 + j1) / 2.0
    hi, hj = max((i1 - i0) / 4.0, 0.5), max((j1 - j0) / 4.0, 0.5)
    core = image[int(np.floor(cj - hj)):int(np.ceil(cj + hj)), int(np.floor(ci - hi)):int(np.ceil(ci + hi))]
    rj0, rj1, ri0, ri1 = box_window(box_ij, int(round(RING_MM / pixel_spacing[0])),
                                    int(round(RING_MM / pixel_spacing[1])), image.shape)
    ring = image[rj0:rj1, ri0:ri1]
    if core.size == 0 or ring.size == 0:
        return float("nan")
    return float(np.median(core)) / max(float(np.median(ring)), 1e-6)


def t1_warning(stack: AxialStack, canals: Sequence[Optional[SliceCanal]]) -> Optional[str]:
    """A warning for an MR study whose tracked canal reads as a T1's (dark CSF), else None."""
    # a view of each slice: the medians read a few hundred pixels of it, so it is not copied
    shares = [canal_core_share(np.asarray(stack.array[c.slice_index]), c.box_ij, stack.spacing)
              for c in canals if c is not None]
    shares = [s for s in shares if np.isfinite(s)]
    if len(shares) < MIN_SLICES:
        return None
    median = float(np.median(shares))
    if median >= T1_CORE_SHARE:
        return None
    return (f"This looks like a T1-weighted series: the middle of the canal is darker than the tissue around it "
            f"({median:.2f} times as bright: the median over {len(shares)} slices), where on T2 the CSF is the "
            "brightest thing there. "
            "The model finds and grades the canal on T2 (or T2*) only: load the study's axial T2 series instead.")
