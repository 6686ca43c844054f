"""Layer 4: which part of the spine a study shows, from the anatomy on its slices.

Disc spacing does not tell the region: a 3 mm abdominal MR and a cervical CT
can have the same spacing between the slices that cut discs. What does tell it:

- the sacral alae (see ``landmarks``): lumbar;
- the vertebral body's width on CT: about 15-22 mm in the neck, 25-38 mm in the
  chest and 40-50 mm in the lumbar spine;
- the body outline, where the field of view holds all of it: a neck is
  100-150 mm across, a trunk 250 mm or more.

Where none of these can be read (an MR cropped to the spine, say) the region is
"unknown": the study is not graded on a guess, and the user sets the region.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Sequence

import numpy as np
from scipy import ndimage

from ..study.volume import AxialStack
from .landmarks import Landmark, VertebralBone
from .levels import SliceCanal

UNKNOWN = "unknown"
#: vertebral body width thresholds on CT, mm (cervical bodies reach about 22 mm at C7,
#: T1 about 25; lumbar bodies are 40 mm or more, T12 about 38)
CERVICAL_MAX_BODY_MM = 24.0
LUMBAR_MIN_BODY_MM = 38.0
#: a body outline narrower than this is a neck; a trunk is wider than TRUNK_MIN_WIDTH_MM
NECK_MAX_WIDTH_MM = 180.0
TRUNK_MIN_WIDTH_MM = 200.0
#: slices with a body measurement needed before the median is trusted
MIN_MEASURED_SLICES = 3
#: CT air and MR background lie below these: HU, and a fraction of the slice's 99th percentile
CT_BODY_HU = -400.0
MR_BODY_FRACTION = 0.08


@dataclass
class RegionEstimate:
    """The region, how sure it is ("high", "low" or "none"), and what it was read from."""

    region: str
    confidence: str
    evidence: list[str] = field(default_factory=list)


def outline_width_mm(stack: AxialStack, k: int, modality: str) -> tuple[float, bool]:
    """Left-right width of the body outline on slice ``k``, and whether the field of view cuts it."""
    image = np.asarray(stack.array[k], dtype=np.float32)
    if modality == "CT":
        inside = image > CT_BODY_HU
    else:
        smooth = ndimage.uniform_filter(image, 3)
        inside = smooth > MR_BODY_FRACTION * float(np.percentile(smooth, 99))
    labels, n = ndimage.label(inside)
    if n == 0:
        return 0.0, True
    sizes = ndimage.sum_labels(np.ones_like(labels), labels, range(1, n + 1))
    body = labels == (int(np.argmax(sizes)) + 1)
    columns = np.nonzero(body.any(axis=0))[0]
    clipped = bool(columns.min() == 0 or columns.max() == image.shape[1] - 1)
    return float((columns.max() - columns.min() + 1) * stack.spacing[0]), clipped


def _outline(stack: AxialStack, canals: Sequence[Optional[SliceCanal]],
             modality: str) -> Optional[tuple[str, str]]:
    """("cervical", why) for a neck's outline, ("trunk", why) for a trunk's, None when the slices do not tell."""
    tracked = [c.slice_index for c in canals if c is not None]
    if not tracked:
        return None
    # a handful of slices spread along the track is enough, and keeps this cheap on long studies
    picks = sorted(set(int(v) for v in np.linspace(min(tracked), max(tracked), num=min(7, len(tracked)))))
    widths = [outline_width_mm(stack, k, modality) for k in picks]
    whole = [w for w, clipped in widths if not clipped]
    if len(whole) * 2 > len(widths):
        width = float(np.median(whole))
        if width < NECK_MAX_WIDTH_MM:
            return "cervical", f"neck: body outline {width:.0f} mm across"
        if width > TRUNK_MIN_WIDTH_MM:
            return "trunk", f"trunk: body outline {width:.0f} mm across"
        return None
    cut = float(np.median([w for w, _ in widths]))
    if cut > TRUNK_MIN_WIDTH_MM:
        # even cut by the field of view, the outline is wider than any neck
        return "trunk", f"trunk: body outline wider than {cut:.0f} mm"
    return None


def infer_region(stack: AxialStack, modality: str, canals: Sequence[Optional[SliceCanal]],
                 bones: Sequence[VertebralBone], sacrum: Optional[Landmark]) -> RegionEstimate:
    """The region the study shows, from its anatomy; "unknown" when the slices do not tell."""
    evidence: list[str] = []
    outline = _outline(stack, canals, modality)
    outline_region = outline[0] if outline else None
    if outline:
        evidence.append(outline[1])
    if sacrum is not None:
        evidence.append(sacrum.evidence)
        if outline_region == "cervical":
            return RegionEstimate(UNKNOWN, "none", evidence + ["the sacrum and a neck outline disagree"])
        return RegionEstimate("lumbar", "high", evidence)
    bodies = [b.body_width_mm for b in bones if b.body_width_mm > 0]
    body_region = None
    if len(bodies) >= MIN_MEASURED_SLICES:
        width = float(np.median(bodies))
        body_region = ("cervical" if width <= CERVICAL_MAX_BODY_MM
                       else "lumbar" if width >= LUMBAR_MIN_BODY_MM else "thoracic")
        evidence.append(f"vertebral bodies {width:.0f} mm wide (median of {len(bodies)} slices)")
    if body_region is not None:
        if outline_region == "cervical" and body_region != "cervical" or \
                outline_region == "trunk" and body_region == "cervical":
            return RegionEstimate(UNKNOWN, "none", evidence + ["the body outline and the vertebrae disagree"])
        return RegionEstimate(body_region, "high" if outline_region else "low", evidence)
    if outline_region == "cervical":
        return RegionEstimate("cervical", "low", evidence)
    if outline_region == "trunk":
        # an axial trunk study for canal stenosis is nearly always lumbar; nothing here rules out thoracic
        return RegionEstimate("lumbar", "low", evidence + ["no vertebral landmark: thoracic not ruled out"])
    return RegionEstimate(UNKNOWN, "none", evidence or ["the slices show neither a landmark nor the body outline"])
