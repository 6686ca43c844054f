"""Layer 4: which part of the spine a study shows, from the anatomy on its slices.

Disc spacing does not tell the region: a 3 mm abdominal MR and a cervical CT
can have the same spacing between the slices that cut discs. What does tell it:

- the sacral alae (see ``landmarks``): lumbar;
- the vertebral body's width on CT: about 15-22 mm in the neck, 25-38 mm in the
  chest and 40-50 mm in the lumbar spine (read on the slices that cut the body
  alone, not the neck's transverse processes beside it);
- the body outline, where the field of view holds all of it: a neck is
  100-150 mm across, a trunk 250 mm or more;
- on T2 MR, what the bright CSF of the canal holds: a cervical cord is 11-14 mm
  across (a thoracic cord or the conus 8-10 mm), and below the conus the sac
  holds only thin nerve roots, so its CSF is one solid bright blob. The cord is
  read where the CSF encloses it and, where the thin cervical CSF leaves it
  touching the canal's side, inside the convex hull of the CSF (not in a trunk);
- on MR, the foramen magnum (see ``landmarks``): where the canal at the top of
  the study opens into the cisterna magna, the study reaches the skull base, so
  it shows the neck. This is what tells a T2* of the neck cropped to the spine,
  whose CSF is too faint for the cord to be read and whose outline is cut.

Where none of these can be read (a T1 MR cropped to the spine, say, or a
thoracic cord) the region is "unknown": the study is not graded on a guess, and
the user sets the region.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import Optional, Sequence

import numpy as np
from scipy import ndimage
from scipy.spatial import ConvexHull, QhullError

from ..study.volume import AxialStack
from .csf_outline import T2_CSF_CONTRAST, box_window, csf_contrast
from .landmarks import Landmark, VertebralBone
from .levels import SliceCanal
from .tracking import spread_along_track

UNKNOWN = "unknown"
#: vertebral body width thresholds on CT, mm (cervical bodies reach about 22 mm at C7,
#: T1 about 25; lumbar bodies are 40 mm or more, T12 about 38)
CERVICAL_MAX_BODY_MM = 24.0
LUMBAR_MIN_BODY_MM = 38.0
#: a body outline narrower than this is a neck; a trunk is wider than TRUNK_MIN_WIDTH_MM
NECK_MAX_WIDTH_MM = 180.0
TRUNK_MIN_WIDTH_MM = 200.0
#: on CT, this many slices with a whole outline, all of them a neck's, tell a neck where the field of view cuts
#: the outline on the rest (the shoulders)
NECK_MIN_WHOLE_SLICES = 2
#: slices with a body measurement needed before their widths are read
MIN_MEASURED_SLICES = 3
#: a neck's bodies are read as this percentile of the slices' widths, not their median. In the neck the
#: transverse processes spring from the side of the body, in front of the canal, so on the slices that cut
#: them the bone in front of the canal is the whole vertebra, 45-50 mm across, as wide as a lumbar body; on
#: the rest (a third to half of them) it is the body alone (a CT phantom of the neck: 19-20 mm here, 46-49 mm
#: at the median). Lumbar and thoracic bodies are read at the median, as a quarter of a short lumbar series'
#: slices may cut an endplate's rim, 24-32 mm across (this percentile is 36 mm or more on the four lumbar CT
#: scans and their 100 short, thick and cropped series, `evaluate --series-variants`)
NECK_BODY_PERCENTILE = 25.0
#: under a neck's outline on CT, vertebrae whose NECK_BODY_PERCENTILE reads this or less are a neck's whatever their
#: median: on the two real neck CTs (TotalSegmentator s0002 and s0003) it read 25.5-28.5 mm with three detectors,
#: while the transverse processes and the first ribs, joined to the bodies on most slices, put the median at
#: 30-39 mm, as wide as a lumbar body with one of them. On the lumbar CT scans and their series it reads 36 mm or more
NECK_OUTLINE_MAX_BODY_MM = 32.0
#: on CT, vertebral bodies whose depth front to back (``VertebralBone.body_depth_mm``) reads this or less on
#: BODY_DEPTH_PERCENTILE of the slices that cut one, with the airway before them, are a neck's, whatever their width.
#: On the two real neck CTs the bodies read 12-20 mm from C3 to C7 and 20-24 mm at C2 and T1-T3 (the 90th percentile
#: 22.5 mm on each), while the lumbar CT scans read 33-39 mm at their 90th percentile (lower thoracic bodies 28-35 mm).
#: The transverse processes and the shoulders widen a neck, not its bodies' depth. The depth alone is not enough: a
#: body's soft middle and thin cortex on 3 mm pixels may leave only its back to the bone threshold (a 39 mm window of
#: the README's sample read 24 mm), so the airway must be seen too
NECK_MAX_BODY_DEPTH_MM = 26.0
BODY_DEPTH_PERCENTILE = 90.0
#: the airway of a neck on CT: air this far in front of the canal's front edge (mm), on a band this wide either side
#: of its centre, over at least AIRWAY_MIN_RUN_MM front to back. In the neck the pharynx, larynx and trachea lie
#: 20-40 mm in front of the canal (a body 15-20 mm deep and the tissue before it); in the abdomen a lumbar body alone
#: is 30-40 mm deep, with the aorta and the vena cava before it, so no bowel gas lies this near
AIRWAY_IN_FRONT_MM = (10.0, 45.0)
AIRWAY_HALF_WIDTH_MM = 4.0
AIRWAY_MIN_RUN_MM = 3.0
#: the airway must show on this share of the slices read (OUTLINE_PICKS along the track)
AIRWAY_MIN_SHARE = 0.5
#: CT air and MR background lie below these: HU, and a fraction of the slice's 99th percentile
CT_BODY_HU = -400.0
MR_BODY_FRACTION = 0.08
#: the body outline is read on this many slices spread along the track
OUTLINE_PICKS = 7


#: a T2 study whose canal never reaches T2_CSF_CONTRAST (a fast spin-echo T2, whose fat is bright too: its
#: CSF is about 2 times as bright as 15 mm around the canal, where CT and T1 stay under 1) is read from the
#: slices where the CSF is at least this many times brighter
FAST_SPIN_ECHO_CSF_CONTRAST = 1.6
#: a cord is the dark (below this fraction of the CSF) blob at the canal's centre, enclosed by CSF
CORD_FRACTION_OF_CSF = 0.6
#: narrower dark blobs are nerve roots (or a clump of them), not a cord: the conus is 8 mm or more across
CORD_MIN_WIDTH_MM = 6.0
#: a cord this wide is cervical: thoracic cords and the conus are 8-10 mm across
CERVICAL_CORD_MIN_WIDTH_MM = 11.0
#: where the cervical CSF is thin, the cord touches the canal's side on many slices and the dark around the
#: canal joins it, so it is not enclosed. Inside the convex hull of the CSF it still is: a dark blob there is a
#: cord when it is at least this deep (front to back; on the slices of the validation necks' series where such
#: a blob is 11 mm wide or more, 8 mm at the median; on those of the lumbar T2, a band of roots at the back of
#: the sac, 4 mm), fills at least this share of the hull (0.23 or more on 95% of the necks' slices; no more
#: than 0.25 on 95% of the lumbar ones), and the CSF lies around it in at least this share of 16 directions
#: (CSF in front only leaves the back half open)
HULL_CORD_MIN_DEPTH_MM = 5.0
HULL_CORD_MIN_HULL_SHARE = 0.25
HULL_CORD_MIN_ENCLOSURE = 0.75
#: a cord read so says cervical only where no more than this share of the slices shows a sac of nerve roots:
#: above and below a stenosed lumbar level, where crowded roots might pass for a cord, the sac is plain
HULL_CORD_MAX_ROOTS_SHARE = 0.2
#: on pixels coarser than COARSE_PIXEL_MM (a sagittal series of 3 mm slices read as axial slices, whose columns are
#: the slices), the cord's edge columns take in the CSF beside it, and the CSF's blob fills its box as a sac's does:
#: on the five whole necks' 3 mm sagittal versions on 17-35% of the slices (1-9% on their 1 mm pixels), against
#: 71-94% on the five lumbar T2's, where a cord is read on 8% or fewer. There up to this share is no veto
COARSE_PIXEL_MM = 2.0
COARSE_HULL_CORD_MAX_ROOTS_SHARE = 0.5
#: below the conus the sac is CSF with thin roots: its bright part (above this fraction of the CSF) is one
#: solid blob that fills most of its bounding box (an ellipse fills 0.79); a cord, even one as bright as
#: 0.7 of the CSF on T2*, leaves a hole or a C, and cervical CSF fills about a third of its box
SAC_BRIGHT_FRACTION = 0.75
ROOTS_MIN_SAC_FILL = 0.55
#: the share of slices that must show such a sac, with no cord on more than one in ten (the cord is what
#: tells a cervical or thoracic study); a sagittal series of 4.4 mm slices reformatted to axial blurs the
#: roots into the sac's middle on a third of its slices
ROOTS_SHARE = 0.6
#: more than this share of slices with a cord rules lumbar out
LUMBAR_MAX_CORD_SHARE = 0.1
#: read at the fast spin-echo contrast, the epidural fat is nearly as bright as the CSF: the brightest blob
#: takes in fat and fills its box less on many slices, and a clump of roots or fat shows as a dark "cord"
#: against the faint CSF. A sac of roots on under half the slices is enough there, and "cords" on up to one
#: in five do not rule lumbar out; such a reading never says cervical, and a cord on 30% of the slices
#: still says nothing (CERVICAL_CORD_SHARE), so a thoracic cord is not taken for roots
FAST_SPIN_ECHO_ROOTS_SHARE = 0.45
FAST_SPIN_ECHO_MAX_CORD_SHARE = 0.2
#: how many T2 slices a canal reading needs before it says anything. A 40 mm series of 5 mm slices has 8: with
#: 10 needed, every such MR series was "unknown". With 5, the 137 short thick series of the validation scans,
#: the 353 of VB1's and VB2's lumbar T2 and the 21 of the training scans (both folds) read no region wrong,
#: and every longer series reads as before (`evaluate --series-variants`)
MIN_CANAL_READINGS = 5
#: the share of T2 slices that must show an enclosed cord to call it cervical. Only about a third: the
#: cervical CSF is thin, so on many slices the cord touches the canal's sides and its width is not read
#: (a third of the slices of a whole neck, brainstem to the mid-thoracic spine); below the conus no cord
#: is enclosed at all
CERVICAL_CORD_SHARE = 0.3


@dataclass
class CanalContents:
    """What the canal holds on one T2 MR slice: the width of an enclosed cord (0 if none), how solid its CSF is."""

    slice_index: int
    csf_contrast: float
    cord_width_mm: float
    #: the share of its bounding box the brightest CSF blob fills
    sac_fill: float
    #: the CSF (above CORD_FRACTION_OF_CSF of it) in the window around the box, and the pixel spacing (mm)
    csf_mask: np.ndarray = field(repr=False, compare=False)
    pixel_spacing: tuple[float, float] = (1.0, 1.0)

    @cached_property
    def hull_cord_width_mm(self) -> float:
        """The width of a cord read inside the convex hull of the CSF (``_cord_in_csf_hull``; 0 if none).

        Read when first asked for: ``_cord`` needs it only where the enclosed cord does not already tell.
        """
        return _cord_in_csf_hull(self.csf_mask, self.pixel_spacing)


def _largest_blob(mask: np.ndarray) -> Optional[np.ndarray]:
    """The largest connected blob of ``mask`` (4-connected), or None when the mask is empty."""
    labels, n = ndimage.label(mask)
    if n == 0:
        return None
    sizes = ndimage.sum_labels(np.ones_like(labels), labels, range(1, n + 1))
    return labels == int(np.argmax(sizes)) + 1


def _middle_third(labels: np.ndarray) -> np.ndarray:
    """The middle third of a window each way (at least one pixel), where a cord lies."""
    h, w = labels.shape
    return labels[int(h / 3):max(int(h / 3) + 1, int(2 * h / 3)), int(w / 3):max(int(w / 3) + 1, int(2 * w / 3))]


def _around_box(image: np.ndarray, box_ij: Sequence[float], margin_i: int, margin_j: int) -> np.ndarray:
    """The part of ``image`` under the box (i0, j0, i1, j1) grown by the margins, in pixels."""
    j0, j1, i0, i1 = box_window(box_ij, margin_i, margin_j, image.shape)
    return image[j0:j1, i0:i1]


def canal_contents(stack: AxialStack, canal: SliceCanal) -> Optional[CanalContents]:
    """The cord (or its absence) inside the canal box on an MR slice; None when the box is too small to read."""
    sx, sy = stack.spacing[0], stack.spacing[1]
    image = stack.array[canal.slice_index]
    inner = _around_box(image, canal.box_ij, 0, 0)
    if inner.shape[0] < 4 or inner.shape[1] < 4:
        return None
    csf, contrast = csf_contrast(image, canal.box_ij, (sx, sy))
    # a margin of a few pixels: a tight box may cut the CSF around the cord
    window = _around_box(image, canal.box_ij, 3, 3)
    labels, _ = ndimage.label(window < CORD_FRACTION_OF_CSF * csf)
    # the cord is the dark blob reaching the box's middle third; on T2* its grey matter may be brighter
    # than its white matter, so the blob need not cover the very centre
    middle = _middle_third(labels)
    width = 0.0
    for label in np.unique(middle[middle > 0]):
        blob = labels == label
        # dark that reaches the window's edge is the canal's wall, not a cord the CSF encloses
        if not (blob[0].any() or blob[-1].any() or blob[:, 0].any() or blob[:, -1].any()):
            width = max(width, float(np.count_nonzero(blob.any(axis=0)) * sx))
    width = width if width >= CORD_MIN_WIDTH_MM else 0.0
    return CanalContents(canal.slice_index, contrast, width, _sac_fill(window > SAC_BRIGHT_FRACTION * csf),
                         window >= CORD_FRACTION_OF_CSF * csf, (sx, sy))


#: directions in which the CSF is looked for around a cord
_RAY_ANGLES = np.linspace(0.0, 2.0 * np.pi, 16, endpoint=False)


def _cord_in_csf_hull(csf: np.ndarray, spacing: tuple[float, float]) -> float:
    """Width (mm) of the dark blob reaching the middle third of ``csf`` (a CSF mask) inside the CSF's convex hull.

    0 when there is none, or when it is too shallow, too small a share of the hull or too open to be a cord
    (HULL_CORD_MIN_DEPTH_MM, HULL_CORD_MIN_HULL_SHARE, HULL_CORD_MIN_ENCLOSURE).
    """
    largest = _largest_blob(csf)
    if largest is None:
        return 0.0
    points = np.argwhere(largest).astype(float)
    try:
        hull = ConvexHull(points)
    except QhullError:  # fewer than three pixels, or all on a line
        return 0.0
    h, w = csf.shape
    grid = np.argwhere(np.ones((h, w), dtype=bool)).astype(float)
    inside = (grid @ hull.equations[:, :2].T + hull.equations[:, 2] <= 1e-9).all(axis=1).reshape(h, w)
    dark, _ = ndimage.label(inside & ~csf)
    middle = _middle_third(dark)
    candidates = np.unique(middle[middle > 0])
    if len(candidates) == 0:
        return 0.0
    blob = dark == candidates[int(np.argmax([np.count_nonzero(dark == c) for c in candidates]))]
    rows, columns = np.nonzero(blob)
    depth_mm = float((rows.max() - rows.min() + 1) * spacing[1])
    width_mm = float((columns.max() - columns.min() + 1) * spacing[0])
    hull_share = float(blob.sum()) / float(inside.sum())
    # walk out from the blob's centre, half a pixel at a time, until the CSF or the window's edge
    steps = np.arange(1.0, float(h + w), 0.5)
    ray_rows = np.rint(rows.mean() + np.outer(np.sin(_RAY_ANGLES), steps)).astype(int)
    ray_columns = np.rint(columns.mean() + np.outer(np.cos(_RAY_ANGLES), steps)).astype(int)
    within = (ray_rows >= 0) & (ray_rows < h) & (ray_columns >= 0) & (ray_columns < w)
    on_csf = np.zeros_like(within)
    on_csf[within] = csf[ray_rows[within], ray_columns[within]]
    # a ray that leaves the window stays out of it, so any CSF on it lies before its edge
    enclosure = float(on_csf.any(axis=1).mean())
    if (depth_mm < HULL_CORD_MIN_DEPTH_MM or hull_share < HULL_CORD_MIN_HULL_SHARE
            or enclosure < HULL_CORD_MIN_ENCLOSURE or width_mm < CORD_MIN_WIDTH_MM):
        return 0.0
    return width_mm


def _sac_fill(bright: np.ndarray) -> float:
    """The share of its bounding box that the largest bright blob fills (0 when there is none)."""
    blob = _largest_blob(bright)
    if blob is None:
        return 0.0
    rows, columns = np.nonzero(blob.any(axis=1))[0], np.nonzero(blob.any(axis=0))[0]
    return float(np.count_nonzero(blob)) / float((rows[-1] - rows[0] + 1) * (columns[-1] - columns[0] + 1))


def _cord(stack: AxialStack, canals: Sequence[Optional[SliceCanal]], trunk: bool = False) -> Optional[tuple[str, str]]:
    """("cervical", why) for a wide cord in bright CSF, ("lumbar", why) for a sac of roots, None otherwise.

    ``trunk``: the body outline is a trunk's. A cord read inside the CSF's hull is then not read at all
    (the outline outweighs it), where an enclosed cord still makes the region "unknown" (``infer_region``).
    """
    readings = [r for c in canals if c is not None for r in [canal_contents(stack, c)] if r is not None]

    def bright_enough(contrast: float) -> list[CanalContents]:
        """The readings whose CSF is ``contrast`` times as bright as around it, if enough of them to say anything."""
        bright = [r for r in readings if r.csf_contrast >= contrast]
        return bright if len(bright) >= MIN_CANAL_READINGS and len(bright) >= 0.5 * len(readings) else []

    t2 = bright_enough(T2_CSF_CONTRAST)
    fast_spin_echo = not t2
    if fast_spin_echo:
        t2 = bright_enough(FAST_SPIN_ECHO_CSF_CONTRAST)
    if not t2:
        return None  # not a T2 contrast (or too few slices): what is dark in the canal says nothing
    cords = [r.cord_width_mm for r in t2 if r.cord_width_mm > 0]
    # against CSF only twice as bright as its surroundings, a dark blob may be clumped roots or the sacral
    # canal's fat (16 mm "cords" in a lumbar MR's lowest 40 mm): it says lumbar, never cervical
    if not fast_spin_echo:
        if len(cords) >= CERVICAL_CORD_SHARE * len(t2) and np.median(cords) >= CERVICAL_CORD_MIN_WIDTH_MM:
            return "cervical", (f"a spinal cord {np.median(cords):.0f} mm across in the canal on {len(cords)} of "
                                f"{len(t2)} slices")
        # where the thin cervical CSF leaves the cord touching the canal's side, it is read in the CSF's hull.
        # A trunk's thoracic cord and conus, blurred, may read 11 mm or more there: a trunk is never read so
        widths = [max(r.cord_width_mm, 0.0 if trunk else r.hull_cord_width_mm) for r in t2]
        roots_veto = (COARSE_HULL_CORD_MAX_ROOTS_SHARE if max(stack.spacing[:2]) > COARSE_PIXEL_MM
                      else HULL_CORD_MAX_ROOTS_SHARE)
        read = [w for w in widths if w > 0]
        sacs = [r for r, w in zip(t2, widths) if w == 0 and r.sac_fill >= ROOTS_MIN_SAC_FILL]
        if (len(read) >= CERVICAL_CORD_SHARE * len(t2) and np.median(read) >= CERVICAL_CORD_MIN_WIDTH_MM
                and len(sacs) <= roots_veto * len(t2)):
            return "cervical", (f"a spinal cord {np.median(read):.0f} mm across in the canal on {len(read)} of "
                                f"{len(t2)} slices, touching the canal's side in its thin CSF on "
                                f"{len(read) - len(cords)} of them")
    if len(cords) >= CERVICAL_CORD_SHARE * len(t2):
        return None  # a thoracic cord or the conus: the cord alone does not tell which
    roots = [r for r in t2 if r.cord_width_mm == 0 and r.sac_fill >= ROOTS_MIN_SAC_FILL]
    roots_share, cord_share = ((FAST_SPIN_ECHO_ROOTS_SHARE, FAST_SPIN_ECHO_MAX_CORD_SHARE) if fast_spin_echo
                               else (ROOTS_SHARE, LUMBAR_MAX_CORD_SHARE))
    if len(cords) <= cord_share * len(t2) and len(roots) >= roots_share * len(t2):
        return "lumbar", f"no cord in the canal on {len(t2) - len(cords)} of {len(t2)} slices: nerve roots in CSF"
    return None


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
    body = _largest_blob(inside)
    if body is None:
        return 0.0, True
    columns = np.nonzero(body.any(axis=0))[0]
    clipped = bool(columns.min() == 0 or columns.max() == image.shape[1] - 1)
    return float((columns.max() - columns.min() + 1) * stack.spacing[0]), clipped


def _outline(stack: AxialStack, canals: Sequence[Optional[SliceCanal]],
             modality: str) -> Optional[tuple[str, str]]:
    """("cervical", why) for a neck's outline, ("trunk", why) for a trunk's, None when the slices do not tell."""
    picks = spread_along_track(canals, OUTLINE_PICKS)
    if not picks:
        return None
    widths = [outline_width_mm(stack, k, modality) for k in picks]
    whole = [w for w, clipped in widths if not clipped]
    if len(whole) * 2 > len(widths):
        width = float(np.median(whole))
        if width < NECK_MAX_WIDTH_MM:
            return "cervical", f"neck: body outline {width:.0f} mm across"
        if width > TRUNK_MIN_WIDTH_MM:
            return "trunk", f"trunk: body outline {width:.0f} mm across"
        return None
    # a CT of the neck whose field holds the neck whole but cuts the shoulders below it (and perhaps the head
    # above): the slices that show the whole outline are a neck's. A trunk is never that narrow, and on CT the
    # air around the body leaves no doubt where the outline is (an MR's outline is read from a threshold, and
    # a lumbar MR's dark fat may cut it)
    neck = [w for w in whole if w < NECK_MAX_WIDTH_MM]
    if modality == "CT" and len(neck) >= NECK_MIN_WHOLE_SLICES and len(neck) == len(whole):
        return "cervical", (f"neck: body outline {float(np.median(neck)):.0f} mm across on {len(neck)} of "
                            f"{len(widths)} slices, the field of view cutting the rest")
    cut = float(np.median([w for w, _ in widths]))
    if cut > TRUNK_MIN_WIDTH_MM:
        # even cut by the field of view, the outline is wider than any neck
        return "trunk", f"trunk: body outline wider than {cut:.0f} mm"
    return None


def airway_share(stack: AxialStack, canals: Sequence[Optional[SliceCanal]]) -> float:
    """The share of slices, spread along the track, with air just in front of the canal's vertebra (CT only)."""
    tracked = [c for c in canals if c is not None]
    if not tracked:
        return 0.0
    picks = [tracked[int(m)] for m in sorted(set(np.linspace(0, len(tracked) - 1, OUTLINE_PICKS).round()))]
    sx, sy = stack.spacing[0], stack.spacing[1]
    half = max(1, int(round(AIRWAY_HALF_WIDTH_MM / sx)))
    run = max(1, int(round(AIRWAY_MIN_RUN_MM / sy)))
    found = 0
    for canal in picks:
        k = canal.slice_index
        i0, j0, i1, _ = canal.box_ij
        ci, front = int(round((i0 + i1) / 2.0)), int(np.floor(j0))
        # j runs towards Posterior (``study.volume``): the front of the canal is at smaller rows
        rows = slice(max(0, front - int(round(AIRWAY_IN_FRONT_MM[1] / sy))),
                     max(0, front - int(round(AIRWAY_IN_FRONT_MM[0] / sy))))
        band = np.asarray(stack.array[k, rows, max(0, ci - half):ci + half + 1], dtype=np.float32)
        if band.size == 0:
            continue
        air = (np.median(band, axis=1) < CT_BODY_HU).astype(float)
        # ``run`` air rows in a row: a lumen, not a pixel or two of partial volume
        found += int(len(air) >= run and np.convolve(air, np.ones(run), mode="valid").max() >= run)
    return found / len(picks)


def neck_above(stack: AxialStack, bones: Sequence[VertebralBone], slice_index: int, reach_mm: float) -> bool:
    """Whether the vertebrae up to ``reach_mm`` above ``slice_index`` are a neck's (CT).

    Their bodies are no deeper than NECK_MAX_BODY_DEPTH_MM on BODY_DEPTH_PERCENTILE
    of the slices that cut one, and no wider than NECK_OUTLINE_MAX_BODY_MM at the
    median (``VertebralBone``). Above the first ribs of the neck CT that shows
    them they read 17-20 mm deep and 26-29 mm wide in every version of it; above
    the highest ribs read in a lower thoracic spine whose upper ribs the field of
    view cut off (VerSe 012), 33 mm and 54 mm. The airway, which ``infer_region``
    also asks for, lies too far forward there: in front of C6 and C7 the trachea
    lay within AIRWAY_IN_FRONT_MM of the canal on 14-43% of the slices.
    """
    dz = stack.spacing[2]
    above = [b for b in bones if 0 < (b.slice_index - slice_index) * dz <= reach_mm]
    depths = [b.body_depth_mm for b in above if b.body_depth_mm > 0]
    widths = [b.body_width_mm for b in above if b.body_width_mm > 0]
    return (len(depths) >= MIN_MEASURED_SLICES and len(widths) >= MIN_MEASURED_SLICES
            and float(np.percentile(depths, BODY_DEPTH_PERCENTILE)) <= NECK_MAX_BODY_DEPTH_MM
            and float(np.median(widths)) <= NECK_OUTLINE_MAX_BODY_MM)


def infer_region(stack: AxialStack, modality: str, canals: Sequence[Optional[SliceCanal]],
                 bones: Sequence[VertebralBone], sacrum: Optional[Landmark],
                 foramen_magnum: Optional[Landmark] = None) -> RegionEstimate:
    """The region the study shows, from its anatomy; "unknown" when the slices do not tell.

    ``foramen_magnum`` is the skull base where the study reaches it (MR only,
    ``landmarks.find_foramen_magnum``): it says cervical, sure only where the
    neck's outline or its cord says so too.
    """
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
        neck_width = float(np.percentile(bodies, NECK_BODY_PERCENTILE))
        if neck_width <= CERVICAL_MAX_BODY_MM < width:
            body_region = "cervical"
            evidence.append(f"vertebral bodies {neck_width:.0f} mm wide on a quarter of {len(bodies)} slices, and "
                            f"{width:.0f} mm at the median: a neck's, with its transverse processes beside the body")
        else:
            body_region = ("cervical" if width <= CERVICAL_MAX_BODY_MM
                           else "lumbar" if width >= LUMBAR_MIN_BODY_MM else "thoracic")
            evidence.append(f"vertebral bodies {width:.0f} mm wide (median of {len(bodies)} slices)")
    depths = [b.body_depth_mm for b in bones if b.body_depth_mm > 0]
    neck_depth = False
    if len(depths) >= MIN_MEASURED_SLICES and body_region != "cervical":
        deep = float(np.percentile(depths, BODY_DEPTH_PERCENTILE))
        airway = airway_share(stack, canals) if deep <= NECK_MAX_BODY_DEPTH_MM else 0.0
        if airway >= AIRWAY_MIN_SHARE:
            body_region, neck_depth = "cervical", True
            evidence.append(f"vertebral bodies at most {deep:.0f} mm deep front to back on nine in ten of "
                            f"{len(depths)} slices, with the airway just in front of them on {airway:.0%} of the "
                            "slices read: a neck's (a lumbar body is 30 mm deep or more)")
    if body_region is not None:
        if outline_region == "cervical" and (body_region == "thoracic" or body_region == "lumbar"
                                             and neck_width <= NECK_OUTLINE_MAX_BODY_MM):
            # a neck reaching the upper thoracic spine: on real neck CTs the bone in front of the canal reads
            # 21-28 mm across through the bodies alone from C3 to T3, and 33-57 mm where the transverse processes
            # (and below C7 the ribs' heads) join them, so the median reads thoracic, or even lumbar
            return RegionEstimate("cervical", "low", evidence + [
                f"a neck's outline over vertebrae {neck_width:.0f} mm wide on a quarter of the slices (wider where the "
                "transverse processes or the first ribs join them): a neck study"])
        if neck_depth and outline_region == "trunk":
            # the shoulders beside the lower neck widen its outline, never its vertebrae's depth
            return RegionEstimate("cervical", "low", evidence + [
                "a wide outline round a neck's vertebrae: the shoulders beside the lower neck"])
        if outline_region == "cervical" and body_region != "cervical" or \
                outline_region == "trunk" and body_region == "cervical":
            return RegionEstimate(UNKNOWN, "none", evidence + ["the body outline and the vertebrae disagree"])
        return RegionEstimate(body_region, "high" if outline_region else "low", evidence)
    cord = _cord(stack, canals, trunk=outline_region == "trunk") if modality == "MR" else None
    if foramen_magnum is not None:
        evidence.append(foramen_magnum.evidence)
        if cord is not None:
            evidence.append(cord[1])
        if outline_region == "trunk" or cord is not None and cord[0] != "cervical":
            return RegionEstimate(UNKNOWN, "none", evidence + [
                "the skull base at the top of the study and the anatomy below it disagree"])
        return RegionEstimate("cervical", "high" if outline_region == "cervical" or cord is not None else "low",
                              evidence)
    if cord is not None:
        evidence.append(cord[1])
        if (outline_region == "cervical" and cord[0] != "cervical"
                or outline_region == "trunk" and cord[0] == "cervical"):
            return RegionEstimate(UNKNOWN, "none", evidence + ["the body outline and the canal's contents disagree"])
        return RegionEstimate(cord[0], "high" if outline_region else "low", evidence)
    if outline_region == "cervical":
        return RegionEstimate("cervical", "low", evidence)
    if outline_region == "trunk":
        # an axial trunk study for canal stenosis is nearly always lumbar; nothing here rules out thoracic
        return RegionEstimate("lumbar", "low", evidence + ["no vertebral landmark: thoracic not ruled out"])
    return RegionEstimate(UNKNOWN, "none", evidence or ["the slices show neither a landmark nor the body outline"])
