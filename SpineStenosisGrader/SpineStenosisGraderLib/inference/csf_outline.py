"""Layer 3: on T2 MR, grow the canal box over the CSF that the detector's box cut off.

The detector boxes the bright CSF it sees. In the thoracic spine the cord lies
at the front of the canal, the CSF in front of it is a thin rim and the CSF
behind it is wide, so the detector's box slides back onto that wide CSF and
cuts the cord in half. On T2 the canal is the bright CSF and what it wraps
around (the cord, the nerve roots), so the box is grown to hold that CSF: the
largest bright blob that lies mostly inside the detector's box; from side to
side, a box reaching well beyond that CSF (where it wraps a cord, without the
root sleeves leaving it) is trimmed to it. Where bright
tissue beside the canal (root sleeves, fat, and far from the coil, where the
signal is low, whatever lies next to it) joins the CSF, the CSF is read in the
strip under the detector's box alone: its sides stay, its front and back are
grown. The box is kept as the detector drew it wherever the CSF cannot be read
cleanly even there: not a T2 contrast, or bright tissue (epidural fat, a bright
disc) joined to the CSF in front of it or behind it. How bright the CSF must be
is the study's: in a T2 whose CSF is bright on most slices, it is read on the
fainter slices far from the coil too.
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
from scipy import ndimage

from ..study.volume import AxialStack

#: T2: the CSF (95th percentile in the box) is this many times brighter than 15 mm around the box
T2_CSF_CONTRAST = 3.0
#: a study whose CSF reaches T2_CSF_CONTRAST on this share of its canal slices is a T2 with bright CSF, and
#: on its fainter slices (far from the coil: a whole neck's upper thoracic slices read 2.9) the CSF is read
#: where it is this many times brighter than around it. CT and T1 stay under 1; a fast spin-echo T2, whose
#: fat is bright too, reads about 2 on most slices and so never counts as such a study
T2_STUDY_SHARE = 0.5
FAINT_T2_CSF_CONTRAST = 2.0
#: CSF is what is brighter than this share of it: the partial-volume rim of a thin CSF layer included. On a
#: faint slice of a T2 (``study_csf_contrast``) the tissue around reads more than a third of the CSF, and what
#: is brighter than the median of it (fat, muscle edges) can pass half the CSF and join it: there the CSF is
#: what is brighter than halfway between the tissue's level (the CSF over its contrast) and the CSF's
CSF_FRACTION = 0.5
#: how far beyond the detector's box the CSF is looked for: the thin rim in front of a thoracic cord lies
#: up to about 5 mm in front of a box that cut the cord in half
SEARCH_MARGIN_MM = 6.0
#: a bright blob belongs to the canal when this share of it lies inside the detector's box grown by
#: INSIDE_MARGIN_MM; the rest of the window (fat, vessels, a bright disc) is left out
INSIDE_SHARE = 0.5
INSIDE_MARGIN_MM = 2.0
#: the cisterna magna behind the medulla is as wide as the canal: its CSF fills at least this share of the
#: canal box's columns on every row it is read on (``cistern_depth_mm``), looked for this far behind the box
CISTERN_MIN_SHARE = 0.5
CISTERN_SEARCH_MM = 20.0
#: a canal narrower or shallower than this is not read cleanly (a stenosed sac without CSF signal)
MIN_CANAL_MM = 5.0
#: where the CSF wraps a cord (a dark hole in it of at least this area: a thoracic cord is about 40 mm2, a
#: clump of nerve roots a few), its width is read without the root sleeves that leave it sideways as thin
#: wings, 2-4 mm thick, towards the foramina: an opening with a disc of this radius drops what is thinner
#: than 5 mm and keeps the sac, 14 mm and more across. Below the conus, where no cord is, the sleeves stay:
#: those of the traversing roots lie in the lateral recesses, which are canal
CORD_HOLE_MIN_MM2 = 20.0
ROOT_SLEEVE_RADIUS_MM = 2.5
#: from side to side, a box reaching further than this beyond the CSF's outline is trimmed to this: in the
#: thoracic spine the detector's box may take in the whole arch on either side of a thin CSF ring
TRIM_BEYOND_CSF_MM = 3.0
#: below the lowest slice the detector tracked, a lumbar sac is followed down over its CSF for at most this far.
#: In a steep lordosis the canal turns back into the sacrum so sharply that the detector, which learnt canals
#: cut nearly square, loses it up to 20 mm above the middle of L5-S1 (VB2 07, fastcleverseg_ivd_46), where the
#: sac is still bright; L5-S1 lies no further below than this
SAC_FOLLOW_MM = 30.0
#: from one slice to the next the followed sac's box moves by at most this plus SAC_BACK_PER_MM per mm between
#: the slices: the sac runs back at most about 1.5 mm per mm down (the lumbosacral angle), and its box jitters
#: by a pixel or two. A box that moves further has left the sac: where the sac ends in the sacrum, the CSF
#: read shrinks to a third of the box above it, 6 mm off (VB2 07)
SAC_STEP_MM = 2.5
SAC_BACK_PER_MM = 1.5
#: the sac is followed only on slices this thin or thinner: on thicker ones, where it turns back, it moves by
#: half its depth from one slice to the next, and which bright blob continues it is no longer clear (on the
#: 3 and 4 mm reformats of the lumbar validation T2, the dark bands in front of the followed sac set levels
#: in L4's and L5's bodies)
SAC_FOLLOW_MAX_SLICE_MM = 2.0
#: and only below a track this long, about three lumbar vertebrae: above a short one the levels cannot tell
#: L5-S1 from a disc remnant in the sacrum (``levels.drop_sacral_level``, the canal's bend), and on 40 and
#: 90 mm windows of a lumbar T2 a band in S1's body, in front of the followed sac, became L5-S1
SAC_FOLLOW_MIN_TRACK_MM = 100.0


def box_window(box_ij: Sequence[float], margin_i: int, margin_j: int,
               shape: tuple[int, int]) -> tuple[int, int, int, int]:
    """The pixel rows and columns (j0, j1, i0, i1) under the box grown by the margins, clipped to the slice."""
    i0, j0, i1, j1 = box_ij
    return (max(0, int(np.floor(j0)) - margin_j), min(shape[0], int(np.ceil(j1)) + margin_j),
            max(0, int(np.floor(i0)) - margin_i), min(shape[1], int(np.ceil(i1)) + margin_i))


def csf_contrast(image: np.ndarray, box_ij: Sequence[float], pixel_spacing: tuple[float, float]) -> tuple[float, float]:
    """(the CSF's brightness, 95th percentile in the box; how many times brighter it is than 15 mm around the box).

    On T2 the CSF outshines the muscle, bone and fat around the canal; on CT and T1 it does not.
    """
    j0, j1, i0, i1 = box_window(box_ij, 0, 0, image.shape)
    csf = float(np.percentile(image[j0:j1, i0:i1], 95))
    aj0, aj1, ai0, ai1 = box_window(box_ij, int(round(15.0 / pixel_spacing[0])), int(round(15.0 / pixel_spacing[1])),
                                    image.shape)
    return csf, csf / max(float(np.median(image[aj0:aj1, ai0:ai1])), 1e-6)


def study_csf_contrast(stack: AxialStack, boxes: Sequence[tuple[int, Sequence[float]]]) -> float:
    """The contrast from which the CSF under a box of this MR study is read (``csf_box``'s ``min_contrast``).

    ``boxes`` are the detector's (slice index, box) pairs. FAINT_T2_CSF_CONTRAST where at least T2_STUDY_SHARE
    of them reach T2_CSF_CONTRAST, else T2_CSF_CONTRAST.
    """
    spacing = (stack.spacing[0], stack.spacing[1])
    bright = [csf_contrast(stack.array[k], box_ij, spacing)[1] >= T2_CSF_CONTRAST for k, box_ij in boxes
              if _readable(box_ij, stack.array.shape[1:])]
    return FAINT_T2_CSF_CONTRAST if bright and np.mean(bright) >= T2_STUDY_SHARE else T2_CSF_CONTRAST


def csf_box(image: np.ndarray, box_ij: Sequence[float], pixel_spacing: tuple[float, float],
            min_contrast: float = T2_CSF_CONTRAST) -> Optional[tuple[float, float, float, float]]:
    """The box (i0, j0, i1, j1), in edge coordinates, around the CSF under a T2 slice's canal box, or None.

    A blob that runs out of the search window, or lies mostly outside the box as it takes in what lies beside
    the canal, is read again in the strip under the detector's own columns, where what joins it from the side
    is cut off: the box then keeps its sides, and only its front and back come from the CSF. None where the
    CSF cannot be read: less than ``min_contrast`` times as bright as around the box (CT, T1), or no bright blob
    mostly inside the box, even in the strip, that stays inside the window (front and back, in the strip) and
    is large enough to be a canal.
    """
    si, sj = pixel_spacing
    shape = image.shape
    threshold = _csf_threshold(image, box_ij, pixel_spacing, min_contrast)
    if threshold is None:
        return None  # CT, T1, or a slice where the canal is not the brightest thing around
    bj0, bj1, bi0, bi1 = box_window(box_ij, 0, 0, shape)
    wj0, wj1, wi0, wi1 = box_window(box_ij, int(round(SEARCH_MARGIN_MM / si)), int(round(SEARCH_MARGIN_MM / sj)), shape)
    bright = image[wj0:wj1, wi0:wi1] > threshold
    # the detector's box, grown a little, in window pixels: which blobs lie mostly inside it
    gj0, gj1, gi0, gi1 = box_window(box_ij, int(round(INSIDE_MARGIN_MM / si)), int(round(INSIDE_MARGIN_MM / sj)), shape)
    inside = np.zeros(bright.shape, bool)
    inside[gj0 - wj0:gj1 - wj0, gi0 - wi0:gi1 - wi0] = True
    canal = _canal_blob(bright, inside)
    in_strip = canal is None or _runs_out(canal)
    if in_strip:
        # CSF running out of the window is joined to something that is not canal (fat, root sleeves, and at the
        # low signal far from the coil whatever lies beside the canal): its outline from side to side says
        # nothing. In the strip under the detector's own columns, which it is trusted for, that join is cut,
        # and the CSF there still tells how far the canal reaches from front to back
        strip = slice(bi0 - wi0, bi1 - wi0)
        canal = _canal_blob(bright[:, strip], inside[:, strip])
        if canal is None or _runs_out(canal, sideways=False):
            return None
    rows = np.nonzero(canal.any(axis=1))[0]
    if (rows[-1] - rows[0] + 1) * sj < MIN_CANAL_MM:
        return None
    if in_strip:
        return float(box_ij[0]), float(wj0 + rows[0]), float(box_ij[2]), float(wj0 + rows[-1] + 1)
    columns = np.nonzero(_without_root_sleeves(canal, si, sj).any(axis=0))[0]
    if (columns[-1] - columns[0] + 1) * si < MIN_CANAL_MM:
        return None
    # from side to side the detector's box is trusted: CSF running out beside the sac follows the nerve roots
    # into their foramina, which are not canal; front to back is what the cord misled
    return (float(max(wi0 + columns[0], gi0)), float(wj0 + rows[0]),
            float(min(wi0 + columns[-1] + 1, gi1)), float(wj0 + rows[-1] + 1))


def _csf_threshold(image: np.ndarray, box_ij: Sequence[float], pixel_spacing: tuple[float, float],
                   min_contrast: float) -> Optional[float]:
    """What is brighter than this under and round a T2 slice's canal box is CSF; None where the CSF cannot be read.

    None for a box too small to read, or one whose CSF is less than ``min_contrast`` times as bright as round it.
    """
    if not _readable(box_ij, image.shape):
        return None
    csf, contrast = csf_contrast(image, box_ij, pixel_spacing)
    if contrast < min_contrast:
        return None
    # halfway is taken from a contrast of 1 at least: a caller may ask for less, and a blank slice reads 0
    fraction = CSF_FRACTION if contrast >= T2_CSF_CONTRAST else (1.0 + 1.0 / max(contrast, 1.0)) / 2.0
    return fraction * csf


def _without_root_sleeves(blob: np.ndarray, si: float, sj: float) -> np.ndarray:
    """The CSF blob without the root sleeves beside it, where it wraps a cord; the blob itself elsewhere."""
    filled = ndimage.binary_fill_holes(blob)
    holes, n = ndimage.label(filled & ~blob)
    if n == 0 or ndimage.sum_labels(np.ones(holes.shape), holes, np.arange(1, n + 1)).max() * si * sj \
            < CORD_HOLE_MIN_MM2:
        return blob
    # the cord filled in, so that the opening keeps the sac whole however thin its CSF around the cord
    ri, rj = int(round(ROOT_SLEEVE_RADIUS_MM / si)), int(round(ROOT_SLEEVE_RADIUS_MM / sj))
    yy, xx = np.mgrid[-rj:rj + 1, -ri:ri + 1]
    sac = ndimage.binary_opening(filled, (xx * si) ** 2 + (yy * sj) ** 2 <= ROOT_SLEEVE_RADIUS_MM ** 2)
    labels, m = ndimage.label(sac)
    if m == 0:
        return blob
    sizes = ndimage.sum_labels(np.ones(labels.shape), labels, np.arange(1, m + 1))
    # the opening also takes a pixel off the sac's rounded sides: the blob within a pixel of it is the sac
    return filled & ndimage.binary_dilation(labels == int(np.argmax(sizes)) + 1, np.ones((3, 3), bool))


def _readable(box_ij: Sequence[float], shape: tuple[int, ...]) -> bool:
    """Whether the box holds at least 3 x 3 pixels of the slice: fewer say nothing about the CSF."""
    j0, j1, i0, i1 = box_window(box_ij, 0, 0, shape)
    return j1 - j0 >= 3 and i1 - i0 >= 3


def _canal_blob(bright: np.ndarray, inside: np.ndarray) -> Optional[np.ndarray]:
    """The largest bright blob lying mostly (INSIDE_SHARE) ``inside``, as a mask; None when there is none."""
    # four-connected: eight-connected CSF also joins the sac to root sleeves and veins across single corners
    labels, n = ndimage.label(bright)
    if n == 0:
        return None
    ids = np.arange(1, n + 1)
    sizes = ndimage.sum_labels(np.ones(labels.shape), labels, ids)
    shares = ndimage.sum_labels(inside, labels, ids) / sizes
    candidates = ids[shares >= INSIDE_SHARE]
    if len(candidates) == 0:
        return None
    # the CSF around the cord or the roots is one blob; smaller bright bits beside it are root sleeves,
    # veins or fat, not canal
    return labels == candidates[int(np.argmax(sizes[candidates - 1]))]


def _runs_out(blob: np.ndarray, sideways: bool = True) -> bool:
    """Whether the blob reaches the window's front or back edge, or (``sideways``) its left or right edge."""
    return bool(blob[0].any() or blob[-1].any() or sideways and (blob[:, 0].any() or blob[:, -1].any()))


def cistern_depth_mm(image: np.ndarray, box_ij: Sequence[float], pixel_spacing: tuple[float, float],
                     min_contrast: float = T2_CSF_CONTRAST) -> float:
    """How deep (front to back, mm) the CSF under a T2 slice's canal box reaches, up to CISTERN_SEARCH_MM behind it.

    The spinal canal's CSF ends at its back wall; at the foramen magnum it opens
    into the cisterna magna behind the medulla, 20-30 mm deep, which a box drawn
    for the canal may leave out. The CSF is read under the box's own columns
    (what joins it from the side is cut off), and a row counts where it fills
    CISTERN_MIN_SHARE of them: a strip of bright fat or a vein joined to the
    sac's back is narrow. The depth runs from the box's front to the last row so
    filled, back from the box's last one. 0 where the CSF cannot be read (``csf_box``),
    fills no row of the box, or the slice's edge cuts the window behind the box.
    """
    _, sj = pixel_spacing
    threshold = _csf_threshold(image, box_ij, pixel_spacing, min_contrast)
    if threshold is None:
        return 0.0
    wj0, wj1, _, _ = box_window(box_ij, 0, int(round(CISTERN_SEARCH_MM / sj)), image.shape)
    bj0, bj1, bi0, bi1 = box_window(box_ij, 0, 0, image.shape)
    if wj1 >= image.shape[0] or bj0 == 0:
        return 0.0  # the slice ends beside the box: how far the CSF runs is not seen
    # from the box's front back only: in front of the canal lie the dens and C1's arch, not cistern
    strip = image[bj0:wj1, bi0:bi1] > threshold
    # the CSF in the box, and what joins it behind: the blob with most of its pixels in the box (a cistern's lies
    # mostly behind the box, so ``csf_box``'s test of a blob mostly inside it does not apply)
    labels, n = ndimage.label(strip)
    if n == 0:
        return 0.0
    in_box = ndimage.sum_labels(np.ones(labels[:bj1 - bj0].shape), labels[:bj1 - bj0], np.arange(1, n + 1))
    blob = labels == int(np.argmax(in_box)) + 1
    filled = blob.mean(axis=1) >= CISTERN_MIN_SHARE
    inside_rows = np.nonzero(filled[:bj1 - bj0])[0]
    if len(inside_rows) == 0:
        return 0.0
    # from the CSF's last row in the box, back over the rows it fills (the medulla in the box's middle may leave
    # its rows less filled: they are the box's, and count)
    last = int(inside_rows[-1])
    while last + 1 < len(filled) and filled[last + 1]:
        last += 1
    return float((last + 1) * sj)


def grow_over_csf(stack: AxialStack, slice_index: int, box_ij: tuple[float, float, float, float],
                  modality: str, min_contrast: float = T2_CSF_CONTRAST) -> tuple[float, float, float, float]:
    """The canal box of an MR slice grown over the CSF it cut off; the detector's box where it cut off none.

    Front to back grown, never shrunk: the bright CSF ends a partial-volume
    pixel inside the sac's wall, and on a small lumbar sac the tighter box
    would lose a third of its overlap with the canal; and where the CSF lies on
    one side of the cord only, the cord beyond it is canal that the CSF's
    outline leaves out. From side to side a box reaching more than
    TRIM_BEYOND_CSF_MM beyond the CSF is trimmed to that: what lies further out
    is the arch or the foramina, not canal. ``min_contrast`` is the study's (``study_csf_contrast``).
    """
    if modality != "MR":
        return box_ij
    csf = csf_box(stack.array[slice_index], box_ij, (stack.spacing[0], stack.spacing[1]), min_contrast)
    if csf is None:
        return box_ij
    reach = TRIM_BEYOND_CSF_MM / stack.spacing[0]
    return (max(min(box_ij[0], csf[0]), csf[0] - reach), min(box_ij[1], csf[1]),
            min(max(box_ij[2], csf[2]), csf[2] + reach), max(box_ij[3], csf[3]))


def follow_sac_down(stack: AxialStack, track: tuple[int, int], box_ij: Sequence[float],
                    min_contrast: float) -> dict[int, tuple[float, float, float, float]]:
    """The lumbar sac below the track's lowest slice, followed slice by slice over its CSF: {slice: box}.

    Each slice's box is ``csf_box`` under the box of the slice above it, so the
    CSF must lie mostly where the sac was one slice higher: the sac's own
    course, however steeply it turns back, and never a jump to something bright
    beside it. The CSF is read from FAINT_T2_CSF_CONTRAST (or ``min_contrast``,
    the study's, if lower): far from the coil, where the sac runs into the
    pelvis, a fast spin-echo T2's CSF reads 2-2.7 times the tissue around it.
    It stops where the CSF can no longer be read (the sac narrows into the
    sacrum, bright fat joins it), where the box moves more than the sac can
    between two slices (SAC_STEP_MM, SAC_BACK_PER_MM), after SAC_FOLLOW_MM, or
    at the first slice. ``track`` is the (lowest, highest) slice the detector
    tracked, and ``box_ij`` the canal box on the lowest. Empty where that
    box's CSF cannot be read, on slices thicker than SAC_FOLLOW_MAX_SLICE_MM,
    or below a track shorter than SAC_FOLLOW_MIN_TRACK_MM.
    """
    spacing = (stack.spacing[0], stack.spacing[1])
    dz = stack.spacing[2]
    lowest_slice, highest_slice = track
    followed: dict[int, tuple[float, float, float, float]] = {}
    if dz > SAC_FOLLOW_MAX_SLICE_MM or (highest_slice - lowest_slice) * dz < SAC_FOLLOW_MIN_TRACK_MM:
        return followed
    contrast = min(min_contrast, FAINT_T2_CSF_CONTRAST)
    above = csf_box(stack.array[lowest_slice], box_ij, spacing, contrast)
    k = lowest_slice - 1
    while above is not None and k >= 0 and (lowest_slice - k) * dz <= SAC_FOLLOW_MM:
        box = csf_box(stack.array[k], above, spacing, contrast)
        if box is None or _step_mm(above, box, spacing) > SAC_STEP_MM + SAC_BACK_PER_MM * dz:
            break
        followed[k] = above = box
        k -= 1
    return followed


def _step_mm(a: Sequence[float], b: Sequence[float], pixel_spacing: tuple[float, float]) -> float:
    """How far apart the centres of two boxes (i0, j0, i1, j1) are, in mm."""
    return float(np.hypot((b[0] + b[2] - a[0] - a[2]) / 2.0 * pixel_spacing[0],
                          (b[1] + b[3] - a[1] - a[3]) / 2.0 * pixel_spacing[1]))
