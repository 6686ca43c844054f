"""Layer 4: anatomical landmarks that fix the level names, read from the slices around the canal.

Counting levels from the end of a study names them right only when the study
ends where the count assumes. A landmark the study contains does not depend on
that. The landmark found here is the sacrum on CT: below L5-S1 the bone in front
of the canal spreads sideways into the sacral alae and on to the sacroiliac
joints, more than 100 mm across, while a lumbar vertebra's body and transverse
processes span 50-90 mm. Above the lumbar spine, the lowest pair of ribs on
CT: a rib runs from its head, beside the body of the vertebra that bears it,
downwards and outwards, so followed slice by slice its section moves away from
the canal as the slices go down, while a transverse process lies level beside
it; the lowest pair whose heads the study shows, with lumbar vertebrae below
them, is the 12th, on T12.

The discs themselves are also read from the image here, beside the
detector's evidence: on CT as gaps between endplates, on MR as bands in the
vertebral column in front of the canal: dark on a T2 spin echo, whose fatty
marrow is bright, and bright where the marrow is dark (a T2* gradient echo).

Everything is measured in millimetres on the raw slices, so the spacing and the
field of view do not matter.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
from scipy import ndimage

from ..study.volume import AxialStack
from .csf_outline import cistern_depth_mm
from .levels import CISTERN_DEPTH_RATIO, LevelCandidate, SliceCanal, box_depth_mm, drop_closer_than
from .tracking import bridge_gaps

#: cancellous bone and denser, in HU: well above muscle and disc (40-100 HU)
BONE_HU = 150.0
#: bone connected to the vertebra this wide on both sides of the canal is the sacral ala
ALA_HALF_WIDTH_MM = 45.0
ALA_WIDTH_MM = 100.0
#: how far in front of the canal the vertebral body (or the sacrum's) is looked for
BODY_SEARCH_MM = 15.0
#: the neighbourhood of the canal searched for bone: sideways (past the sacroiliac joints) and front and back
CROP_HALF_WIDTH_MM = 130.0
CROP_MARGIN_MM = 25.0
#: less bone than this in front of the canal is no vertebral body (a cervical body cut is about 200 mm2)
MIN_BODY_AREA_MM2 = 80.0
#: the disc's back, in front of the canal (mm from the canal's front edge, and half-width about its centre)
DISC_BACK_MM = (1.0, 12.0)
DISC_BACK_HALF_WIDTH_MM = 5.0
#: on CT the canal's front wall (the back of a disc, 70-100 HU, or of a body) is the first row in front of the
#: canal's box that reaches this, and whose mean with the two rows in front of it does too: the canal's CSF and
#: epidural fat read about 35 HU and less
CANAL_WALL_HU = 60.0
#: how far in front of the box that wall is looked for: a box may hold only the back of a deep canal
CANAL_WALL_SEARCH_MM = 15.0
#: an endplate is this much denser (HU) than the gap it bounds, and lies within ENDPLATE_REACH_MM of it:
#: a disc is 5-12 mm tall, while the middle of a vertebral body (darker where the basivertebral veins
#: leave it) is 7 mm or more from either endplate
ENDPLATE_CONTRAST_HU = 50.0
ENDPLATE_REACH_MM = 6.0
#: how surely a gap is a disc: its contrast (the weaker of its two endplates' density over its own) against this
#: quantile of the contrast of the study's gaps, which counts as a sure disc. In osteoporotic bone the soft middle
#: of a body passes the gap test too: on VerSe 012 (an old patient's CT, bodies of 100-250 HU) its gaps in the
#: bodies reached 70-135 HU of contrast, its discs 160-285
ENDPLATE_SURE_QUANTILE = 75.0
#: on CT a level whose slice reads as bone (BONE_HU) just in front of the canal lies in an endplate, not in the
#: disc; it is moved to the least dense slice within this of it (half a lumbar disc), on slices no thicker than
#: ON_DISC_MAX_SLICE_MM: on thicker ones one slice is more than half a disc, and an endplate's partial volume
#: raises the disc's own slice. On the README's sample (3 mm) one leave-one-out seed put L4-L5 on L4's lower
#: endplate, 200 HU, 10.5 mm above its disc, whose slices read 75-93 HU
ON_DISC_HALF_MM = 5.0
ON_DISC_MAX_SLICE_MM = 3.0
#: on MR, the column in front of the canal read for dark bands: from 2 mm in front of the canal's box (the first
#: millimetre is the dura and the posterior longitudinal ligament, dark on T2 at every level) to 12 mm, and
#: half as wide as the narrowest (cervical) vertebral body
BAND_DEPTH_MM = (2.0, 12.0)
BAND_HALF_WIDTH_MM = 4.0
#: the marrow a band is measured against: the 75th percentile of the column within this of the slice, mostly
#: vertebral body, as a body is 12-30 mm tall and a disc 4-12 mm
BAND_MARROW_HALF_LENGTH_MM = 10.0
BAND_MARROW_QUANTILE = 75.0
#: a disc's band (its endplates, its annulus) is this much darker than the marrow around it
BAND_DEPTH_FRACTION = 0.35
#: in the lumbar spine less: a healthy lumbar nucleus is bright on T2 and fills much of the column read, so
#: the band is shallower. On 17 healthy lumbar T2 scans (fastcleverseg VB2, looked at to choose it) the
#: column is darker by a median of 30% at the labelled discs (7 in 10 of them 25-40%), and by at most 29%
#: (mostly under 20%) at its other local dips between T11 and L5: with 0.35, 67 of their 102 discs showed
#: no band. A body's darker middle (its veins) stays under it
LUMBAR_BAND_DEPTH_FRACTION = 0.25
#: where the marrow is dark (``marrow_is_dark``) a band is bright, and the marrow is read as this low a quantile
#: of the column around a slice, the mirror of BAND_MARROW_QUANTILE
BRIGHT_BAND_MARROW_QUANTILE = 25.0
#: the deep muscles of the back and neck (multifidus, semispinalis), which the marrow is compared with: beside the
#: spinous processes, this far to either side of the canal's centre and this far behind it (mm)
MUSCLE_LATERAL_MM = (8.0, 20.0)
MUSCLE_BEHIND_MM = (25.0, 40.0)
#: the marrow darker than this share of the muscle is dark: on the T2* gradient echo of the neck checked
#: (``sct_errsm_18_gre``) the column in front of the canal reads 0.31 of the muscle, on 36 T2 spin-echo scans
#: 0.83-5.9 times it (12 necks and lumbar spines of the catalogue, VB2's 17 and VB1's 7 lumbar spines). The
#: darkest are VB1's 07 and 03 (0.83, 0.93), whose fat looks suppressed (the dataset lists TIRM scans; these may be
#: two), and whose discs the dark bands find (8/8, 7/8): a fat-suppressed T2's disc is bright in its nucleus, but
#: its posterior annulus is still dark in front of the canal
DARK_MARROW_RATIO = 0.5
#: samples of muscle needed to read it: fewer, and the marrow is taken as a spin echo's
MIN_MUSCLE_SAMPLES = 20
#: below the alae the sacral canal runs at most the sacrum's length: bone as wide higher up the canal
#: (a rib-bearing vertebra with its ribs, say) is not the sacrum
SACRUM_BELOW_ALAE_MM = 100.0
#: the vertebral bodies above the alae (mm, the median of ``VertebralBone.body_width_mm``) are lumbar, L5 the
#: widest (45-55 mm): on the README's sample they read 48-51 mm in every series that shows the alae, while in
#: the neck CTs' short and thick series bone as wide at the cervicothoracic junction had bodies of 30-39 mm above
SACRUM_MIN_BODY_ABOVE_MM = 42.0
#: on CT a rib's section is bone beside the vertebra and not joined to it (the joints between a rib and its
#: vertebra part them): this big (mm2, a rib cut across or obliquely; the iliac wings and the sacrum's parts are
#: larger), this far to the side of the canal's centre and this far behind the canal's front edge (mm; the lower
#: ribs run backwards from their heads before they turn forwards round the trunk, beyond RIB_LATERAL_MM[1])
RIB_AREA_MM2 = (15.0, 400.0)
RIB_LATERAL_MM = (15.0, 100.0)
RIB_BEHIND_FRONT_MM = (-20.0, 40.0)
#: the ribs are read on pixels of about this size (mm) or finer, every second or third pixel of a fine slice: a
#: rib is 6-10 mm thick
RIB_PIXEL_MM = 1.5
#: a section on the next slice (or one more, past a missed one) continues the same rib when it lies within this
#: of it, side to side and front to back, plus this much per mm between the slices: a lower rib runs about 1.5 mm
#: outwards per mm downwards near its head
RIB_STEP_MM = 4.0
RIB_LATERAL_PER_MM = 2.0
RIB_AP_PER_MM = 1.0
RIB_MAX_SKIPPED_SLICES = 1
#: a rib is followed over at least this much of the spine, comes at least this much closer to the canal from its
#: lowest section to its highest, and its highest section, its head's end, lies within this of the canal's centre.
#: On the README's sample (3 mm slices) the 12th ribs run from 84-90 mm beside the canal up to 43-50 mm over
#: 39-45 mm; the 11th, cut by the top of the study, reach no closer than 69 mm; its iliac crests and transverse
#: processes come no closer going up, by 10 mm at most
RIB_MIN_SPAN_MM = 9.0
RIB_MIN_APPROACH_MM = 12.0
RIB_HEAD_MAX_LATERAL_MM = 55.0
#: and it is followed in from at least this far beside the canal, beyond the tips of the transverse processes
#: (35-45 mm) and the sacroiliac joints, or from where the edge of the field of view cuts it (``RibSection.edge_mm``,
#: less this margin), and going up it never moves more than this away from the canal from one section to the
#: next. On the sample, the sacrum's parts beside its joints came in from 56 mm to 43 mm over 12 mm, and
#: resampled to 5.6 mm slices (``benchmarks/``) the facets and processes of L3 and L4 ran from 42 mm in to 16 mm
#: and back out to 28 mm; VerSe 012's 105 mm field of view cuts its 12th rib 52 mm out, from where, on its 3 and
#: 4 mm versions, it comes in steadily to 34-40 mm
RIB_MIN_REACH_MM = 60.0
RIB_EDGE_MARGIN_MM = 3.0
RIB_MAX_OUTWARD_STEP_MM = 3.0
#: the study must show this much of the canal below the lowest rib's head, a vertebra's height and more: then the
#: vertebra below it, which bears no rib, is in the study, and the rib is the lowest one of the spine, not the
#: lowest one the study happens to show
RIB_FREE_BELOW_MM = 30.0
#: and for the first ribs, this much above the highest rib's head, where the cervical vertebrae bear no rib
RIB_FREE_ABOVE_MM = 30.0
#: the two ribs of a pair have their heads within this of each other (mm; 1 mm apart on the sample)
RIB_PAIR_MM = 10.0
#: the canal's depth is read against its median over at least this much of the spine (about three cervical
#: vertebrae), so that the median is the canal's and not a cistern's
FORAMEN_MIN_TRACK_MM = 50.0
#: the cisterna magna is seen over at least this much at the top of the study: one wide box is no cistern
FORAMEN_MIN_RUN_MM = 3.0
#: and its deepest box is at least this deep: behind the medulla the cistern makes the CSF space 22-28 mm deep
#: at the top of the validation necks, while C2's canal, deeper than the canal below it, reads up to 19 mm on
#: them (the median over 5 mm). Not on the T2* of the neck: its top 7.5 mm slice lies in C2 (by the same subject's
#: sagittal T2) and reads 23.5 mm (20.5 in its crop), so it passes for the cistern (README). Read against the
#: median alone, the top of a C2-C5 crop in 3 mm sagittal slices (`sct_cervical_t2`, graded by the seed-1 fold
#: that did not train on it) was taken for the cistern, 17 mm deep against 12 mm, and the true C3-C4 below it was
#: dropped as C2
CISTERN_MIN_DEPTH_MM = 20.0
#: on slices this thick or thicker one slice cannot show the opening: it averages 5 mm or more of a canal that
#: deepens towards C1, and on the T2* of the neck (7.5 mm) the top slice, in C2, read 23.5 mm against the
#: slices' median of 16 while the next one down read 21.2 (1.33 times). There two slices must lie beyond the
#: cistern's ratio (1.35 times the median, also where the neck's own ratio is read). On the necks' 3 and 4 mm
#: versions one top slice, half in the cistern, is the opening, and names them right
THICK_OPENING_SLICE_MM = 5.0
#: where the study is known to show the neck, the top slices this near the highest canal box are as deep as their
#: CSF reaches behind the box (``csf_outline.cistern_depth_mm``), however shallow the box: at the top of two
#: validation necks (sct_errsm_11_t2, sct_errsm_18_t2) a detector trained as the default one, on the same scans
#: with the later recipe, boxed the medulla and the CSF in front of it, 14-17 mm deep, on the top 1-2 mm, while
#: the cisterna magna's CSF ran on 6-10 mm and more behind the box; the boxes alone then showed no opening, and
#: the names went one or two levels wrong. Only near the top: lower down, CSF joined to something bright behind
#: the canal is no cistern
CISTERN_BEHIND_MM = 3.0
#: and where the track stops below the study's top, the slices above it, up to this far, are as deep as their CSF
#: reaches under the top box, while that is deeper than the cistern's ratio: on the 3 mm sagittal version of a whole
#: neck (sct_errsm_11_t2) and on a 4 mm version of it the detector lost the top slices, in the cisterna magna, so
#: the opening read under 3 mm (FORAMEN_MIN_RUN_MM), and a level on C1 took C2-C3's name
CISTERN_ABOVE_TRACK_MM = 10.0
#: on CT the skull base shows as bone behind the canal: the occipital bone round the back of the foramen magnum
#: and the skull above it. It is read behind the canal's box (SKULL_BEHIND_HALF_WIDTH_MM either side of its
#: centre, SKULL_BEHIND_DEPTH_MM back from its back edge) as the share of pixels above SKULL_BONE_HU, its median
#: over SKULL_MEDIAN_MM of slices: on two neck CTs (TotalSegmentator s0002, s0003) it read 0.07-0.28 from the back
#: rim of the foramen magnum to the top of the study, and 0.00-0.04 over C1's thin posterior arch, below it, and
#: between the spinous processes further down
SKULL_BONE_HU = 300.0
SKULL_BEHIND_HALF_WIDTH_MM = 15.0
SKULL_BEHIND_DEPTH_MM = 60.0
SKULL_BEHIND_MIN_SHARE = 0.06
SKULL_MEDIAN_MM = 4.5
#: that bone runs unbroken over at least this much, up to the top of the study (within SKULL_TOP_GAP_MM): a
#: spinous process behind the canal, however long, is followed by the gap to the next, and the top of a study of
#: the chest or the neck that stops below the skull shows no such run (the skull reaches above the foramen
#: magnum by 30 mm and more)
SKULL_MIN_RUN_MM = 15.0
SKULL_TOP_GAP_MM = 3.0
#: in a study whose cord or outline already says neck, the opening is read from this many times the canal's
#: median depth (1.35 elsewhere, ``levels.CISTERN_DEPTH_RATIO``): on 3 and 4 mm slices the top slice lies partly
#: in the cistern and partly in the canal below it, and reads 1.25-1.35 times the median. Lumbar series reach
#: that ratio too (a window of a lumbar T2 at 1.25), but they are not read as necks
NECK_CISTERN_DEPTH_RATIO = 1.25
#: followed downwards, the lumbar canal turns backwards into the sacrum (the lumbosacral angle; the sacrum slopes
#: back 30-60 degrees), so in the lower half of a lumbar track its steepest backward slope, this steep or steeper
#: (mm backwards per mm downwards), marks the lumbosacral junction. On the six lumbar T2 scans of VB1 whose L5-S1
#: is labelled, the embedded detector's track bent most steeply at -0.85 to -1.54, 1-7 mm from L5-S1 on four and
#: 16-26 mm above it, in L5's body, on two; the lordosis above it is shallower
LUMBOSACRAL_BEND_SLOPE = -1.0
#: the track's AP position is smoothed over this before its slope is read, so a box's jitter is no bend
BEND_SMOOTHING_MM = 5.0
#: a track this short (slices) has no lower half to read
BEND_MIN_TRACK = 10


@dataclass
class VertebralBone:
    """The bone joined to the vertebra in front of the canal on one slice, in mm."""

    slice_index: int
    #: lateral reach of the bone left and right of the canal centre
    left_mm: float
    right_mm: float
    #: width of the bone 4-15 mm in front of the canal: the vertebral body's width, where one is cut
    body_width_mm: float
    #: how far the bone reaches forward from the canal's front edge at its centre: the vertebral body's depth, where
    #: one is cut (0 where ``body_width_mm`` is; at most the crop's BODY_SEARCH_MM + CROP_MARGIN_MM)
    body_depth_mm: float = 0.0

    @property
    def width_mm(self) -> float:
        return self.left_mm + self.right_mm


@dataclass
class Landmark:
    """A landmark the study contains: its name, the slices that show it, and why it was believed."""

    name: str
    slices: tuple[int, ...]
    #: the most superior slice that shows it
    top_slice: int
    evidence: str

    @property
    def bottom_slice(self) -> int:
        """The most inferior slice that shows it."""
        return min(self.slices)


def vertebral_bone(stack: AxialStack, canal: SliceCanal) -> Optional[VertebralBone]:
    """The bone in front of the canal on a CT slice, or None when there is none (a disc, or no bone)."""
    sx, sy = stack.spacing[0], stack.spacing[1]
    i0, j0, i1, j1 = canal.box_ij
    height, width = stack.array.shape[1:]
    centre = (i0 + i1) / 2.0
    search = int(round(BODY_SEARCH_MM / sy))
    # only the neighbourhood of the canal is needed: a crop keeps this cheap on 512-pixel slices
    top = int(np.floor(j0)) - int(round((BODY_SEARCH_MM + CROP_MARGIN_MM) / sy))
    bottom = int(np.ceil(j1)) + int(round(CROP_MARGIN_MM / sy))
    left = max(0, int(np.floor(centre - CROP_HALF_WIDTH_MM / sx)))
    right = min(width, int(np.ceil(centre + CROP_HALF_WIDTH_MM / sx)))
    front = int(np.floor(j0)) - max(0, top)
    ci = int(round(centre)) - left
    if not 0 <= ci < right - left or front - search < 0:
        return None
    image = stack.array[canal.slice_index, max(0, top):min(height, bottom), left:right]
    # filled: an old vertebra's cancellous bone may be darker than BONE_HU inside its cortex
    bone = ndimage.binary_fill_holes(ndimage.binary_closing(image > BONE_HU, iterations=1))
    labels, _ = ndimage.label(bone)
    column = labels[front - search:front, ci]
    touching = np.unique(column[column > 0])
    if len(touching) == 0:
        return None
    sizes = ndimage.sum_labels(np.ones_like(labels), labels, touching)
    component = labels == touching[int(np.argmax(sizes))]
    columns = np.nonzero(component.any(axis=0))[0] + left
    body_rows = component[front - search:max(0, front - int(round(4.0 / sy)))]
    body_columns = np.nonzero(body_rows.any(axis=0))[0]
    body_width = (body_columns.max() - body_columns.min() + 1) * sx if len(body_columns) else 0.0
    # the body's front edge on the canal's middle columns
    middle = component[:front, max(0, ci - 1):ci + 2].any(axis=1)
    body_depth = (front - np.argmax(middle)) * sy if middle.any() else 0.0
    if body_rows.sum() * sx * sy < MIN_BODY_AREA_MM2:
        # an endplate's rim or a facet, not a vertebral body cut across
        body_width, body_depth = 0.0, 0.0
    return VertebralBone(canal.slice_index, max(0.0, (centre - columns.min()) * sx),
                         max(0.0, (columns.max() + 1 - centre) * sx), float(body_width), float(body_depth))


def measure_bone(stack: AxialStack, canals: Sequence[Optional[SliceCanal]]) -> list[VertebralBone]:
    """The vertebral bone on every slice with a canal (CT only)."""
    return [bone for canal in canals if canal is not None
            for bone in [vertebral_bone(stack, canal)] if bone is not None]


def canal_front_wall(image: np.ndarray, j0: float, columns: slice, row_mm: float,
                     wall_hu: float = CANAL_WALL_HU, search_mm: float = CANAL_WALL_SEARCH_MM) -> float:
    """The canal's front edge on a CT slice: ``j0``, or the back of a wall that lies in front of it.

    ``j0`` is the front edge of the canal's box (rows grow backwards, LPS; row
    j spans [j, j + 1)). The rows from the one that holds ``j0`` forward, over
    ``search_mm``, are read: a row is wall when the median of its ``columns``
    reaches ``wall_hu``, and so does the mean of that median and those of the
    two rows in front of it (near the image's top edge, of those that exist).
    The first wall row's back edge is the canal's front, unless it lies behind
    ``j0``: where the box already reaches the wall, its edge stands. On a
    sagittal CT read as axial slices, in lordosis (VerSe 014), the box held
    only the back of a deep canal on some slices, so what lay "in front of the
    canal" was its CSF, which read as a disc between two endplates inside a
    vertebral body. With no wall within ``search_mm``, ``j0`` stands too.
    """
    first = int(np.ceil(j0)) - 1
    reach = int(round(search_mm / row_mm))
    # the searched rows, and the two in front of the last one, which the wall's mean may read
    rows = np.arange(first, max(-1, first - 2 - reach), -1)
    patch = image[rows, columns] if len(rows) else np.empty((0, 0))
    if patch.size == 0:
        return j0
    medians = np.median(patch, axis=1).astype(float)
    # a wall row has wall in front of it too: one row of noise or partial volume in the CSF is not enough
    ahead = np.array([medians[i:i + 3].mean() for i in range(len(medians))])
    wall = np.nonzero((medians >= wall_hu) & (ahead >= wall_hu))[0]
    wall = wall[wall < reach]
    return min(j0, float(rows[wall[0]] + 1)) if len(wall) else j0


def disc_back_density(stack: AxialStack, canals: Sequence[Optional[SliceCanal]],
                      depth_mm: tuple[float, float] = DISC_BACK_MM,
                      half_width_mm: float = DISC_BACK_HALF_WIDTH_MM,
                      wall_hu: Optional[float] = None) -> np.ndarray:
    """Median intensity just in front of the canal on each slice with a canal (NaN elsewhere): disc or body.

    On CT it is the HU; ``depth_mm`` is the (near, far) distance in front of the canal's box, and
    ``half_width_mm`` the half-width about its centre. With ``wall_hu`` (CT), the distance is
    counted from the canal's front wall (``canal_front_wall``) instead of the box's edge.
    """
    sx, sy = stack.spacing[0], stack.spacing[1]
    near, far = depth_mm
    density = np.full(stack.n_slices, np.nan)
    for canal in canals:
        if canal is None:
            continue
        i0, j0, i1, _ = canal.box_ij
        centre = (i0 + i1) / 2.0
        columns = slice(max(0, int(round(centre - half_width_mm / sx))),
                        max(0, int(round(centre + half_width_mm / sx))))
        if wall_hu is not None:
            j0 = canal_front_wall(stack.array[canal.slice_index], j0, columns, sy, wall_hu)
        rows = slice(max(0, int(round(j0 - far / sy))), max(0, int(round(j0 - near / sy))))
        patch = stack.array[canal.slice_index, rows, columns]
        if patch.size:
            density[canal.slice_index] = float(np.median(patch))
    return density


def _running_percentile(values: np.ndarray, half: int, quantile: float) -> np.ndarray:
    """The ``quantile`` of ``2 * half + 1`` values about each one, the window shifted inward at the ends.

    Not padded: a padded window counts the end value many times, and a band at an
    end of the study would set its own marrow level.
    """
    n, size = len(values), 2 * half + 1
    if n <= size:
        return np.full(n, np.percentile(values, quantile))
    starts = np.clip(np.arange(n) - half, 0, n - size)
    return np.array([np.percentile(values[s:s + size], quantile) for s in starts])


def band_depth_fraction(region: str) -> float:
    """How much darker (or brighter) than the marrow around it a disc's band is in ``region`` (see ``disc_bands``)."""
    return LUMBAR_BAND_DEPTH_FRACTION if region == "lumbar" else BAND_DEPTH_FRACTION


def _muscle_level(stack: AxialStack, canals: Sequence[Optional[SliceCanal]]) -> Optional[float]:
    """The median intensity of the deep back muscles (MUSCLE_LATERAL_MM, MUSCLE_BEHIND_MM) over the slices with a
    canal; None with fewer than MIN_MUSCLE_SAMPLES inside the image and not blank (a crop's blank margin is 0).
    """
    sx, sy = stack.spacing[0], stack.spacing[1]
    lateral = np.arange(MUSCLE_LATERAL_MM[0], MUSCLE_LATERAL_MM[1] + 1e-6, 4.0)
    behind = np.arange(MUSCLE_BEHIND_MM[0], MUSCLE_BEHIND_MM[1] + 1e-6, 5.0)
    size_j, size_i = stack.array.shape[1:]
    samples = []
    for canal in canals:
        if canal is None:
            continue
        i0, j0, i1, j1 = canal.box_ij
        ci, cj = (i0 + i1) / 2.0, (j0 + j1) / 2.0
        # the stack is LPS: its rows run from front to back
        ii = np.round(ci + np.concatenate([-lateral, lateral]) / sx).astype(int)
        jj = np.round(cj + behind / sy).astype(int)
        ii, jj = ii[(ii >= 0) & (ii < size_i)], jj[(jj >= 0) & (jj < size_j)]
        samples.extend(stack.array[canal.slice_index][np.ix_(jj, ii)].ravel())
    samples = np.asarray(samples, dtype=float)
    samples = samples[samples > 0]
    return float(np.median(samples)) if len(samples) >= MIN_MUSCLE_SAMPLES else None


def band_column(stack: AxialStack, canals: Sequence[Optional[SliceCanal]]) -> np.ndarray:
    """The vertebral column in front of the canal (MR) on each slice with a canal, NaN elsewhere: BAND_DEPTH_MM in
    front of the box, BAND_HALF_WIDTH_MM either side of its centre. The disc bands and the marrow are read from it.
    """
    return disc_back_density(stack, canals, BAND_DEPTH_MM, BAND_HALF_WIDTH_MM)


def marrow_is_dark(stack: AxialStack, canals: Sequence[Optional[SliceCanal]],
                   column: Optional[np.ndarray] = None) -> bool:
    """Whether the vertebral marrow is darker than the back's muscle (MR): then a disc is a bright band.

    On a T2 spin echo the fatty marrow is brighter than muscle, and a disc's
    endplates and annulus darken the column in front of the canal. On a T2*
    gradient echo the trabecular bone darkens the marrow: it is darker than
    muscle, and the disc's water makes a bright band. The marrow is the median of that column
    over the slices with a canal (DARK_MARROW_RATIO). False where the muscle
    cannot be read: the spin echo's dark bands, as before this was read.
    ``column`` is ``band_column``, when the caller already read it.
    """
    if column is None:
        column = band_column(stack, canals)
    muscle = _muscle_level(stack, canals)
    if muscle is None or np.isnan(column).all():
        return False
    return bool(np.nanmedian(column) < DARK_MARROW_RATIO * muscle)


def _band_column(stack: AxialStack, canals: Sequence[Optional[SliceCanal]], bright: bool,
                 column: Optional[np.ndarray] = None) -> Optional[tuple[np.ndarray, np.ndarray]]:
    """The slices where the column in front of the canal (MR) was read, and its band contrast on every slice.

    The contrast is 1 - the column's intensity over the marrow's (BAND_MARROW_QUANTILE of the column within
    BAND_MARROW_HALF_LENGTH_MM of the slice); with ``bright``, 1 - the marrow's (BRIGHT_BAND_MARROW_QUANTILE) over
    the column's. NaN where there is nothing to compare with. Untracked slices take their neighbours' column, so a
    missed slice does not look like a band. None with fewer than three slices read. ``column`` is
    ``band_column``, when the caller already read it.
    """
    if column is None:
        column = band_column(stack, canals)
    tracked = np.nonzero(~np.isnan(column))[0]
    if len(tracked) < 3:
        return None
    filled = np.interp(np.arange(stack.n_slices), tracked, column[tracked])
    half = max(1, int(round(BAND_MARROW_HALF_LENGTH_MM / stack.spacing[2])))
    marrow = _running_percentile(filled, half, BRIGHT_BAND_MARROW_QUANTILE if bright else BAND_MARROW_QUANTILE)
    numerator, denominator = (marrow, filled) if bright else (filled, marrow)
    ratio = np.full(stack.n_slices, np.nan)
    np.divide(numerator, denominator, out=ratio, where=denominator > 0)
    return tracked, 1.0 - ratio


def band_contrast(stack: AxialStack, canals: Sequence[Optional[SliceCanal]], bright: bool = False,
                  column: Optional[np.ndarray] = None) -> np.ndarray:
    """Per slice, how much darker (``bright``: brighter) the vertebral column in front of the canal (MR) is than the
    marrow around it.

    About 0.25-0.7 at a disc, near 0 or below in a vertebral body (see ``disc_bands``). NaN where it cannot be
    read: everywhere when fewer than three slices have a canal. ``column`` is ``band_column``, when the caller
    already read it.
    """
    read = _band_column(stack, canals, bright, column)
    return np.full(stack.n_slices, np.nan) if read is None else read[1]


def disc_bands(stack: AxialStack, canals: Sequence[Optional[SliceCanal]], disc_height_mm: float = 0.0,
               depth_fraction: float = BAND_DEPTH_FRACTION, bright: bool = False,
               column: Optional[np.ndarray] = None) -> np.ndarray:
    """Per slice, 1 where the vertebral column in front of the canal (MR) has a disc's band.

    On T2 MR the marrow of a vertebral body is brighter than a disc's endplates
    and annulus, so the column just in front of the canal darkens at every disc
    (on T1 the fatty marrow is brighter still; no T1 scan has been checked).
    Where the marrow is dark (``marrow_is_dark``: a T2* gradient echo), the
    disc is brighter than it: ``bright`` reads those bands. A band is a slice
    darker (``bright``: brighter) than the marrow around it (``band_contrast``)
    by ``depth_fraction`` (``band_depth_fraction`` of the region: shallower in
    the lumbar spine), and at least as dark (bright) as its neighbours. The
    intensity is compared within the study only,
    so the MR's arbitrary scale does not matter. Each band also marks the slices
    within a quarter of ``disc_height_mm`` (the region's disc height) on either
    side of it; with 0, its own slice alone. ``column`` is ``band_column``, when
    the caller already read it.
    """
    bands = np.zeros(stack.n_slices)
    read = _band_column(stack, canals, bright, column)
    if read is None:
        return bands
    tracked, contrast = read
    for k in tracked:
        # a neighbour without marrow to compare with does not count; a slice without it is no band (NaN)
        neighbours = [contrast[j] for j in (max(0, k - 1), min(stack.n_slices - 1, k + 1)) if not np.isnan(contrast[j])]
        bands[k] = float(contrast[k] >= depth_fraction and contrast[k] >= max(neighbours, default=-np.inf))
    # a band is the one darkest (brightest) slice of a disc, whose evidence a smoothing over a slice or two would erase:
    # it marks the slices within a quarter of the disc's height either side
    return _over_a_quarter_disc(bands, stack.spacing[2], disc_height_mm)


def band_depths(contrast: np.ndarray, slice_spacing_mm: float, disc_height_mm: float) -> np.ndarray:
    """Per slice, the deepest band contrast (``band_contrast``) within a quarter of ``disc_height_mm`` either side.

    How deep the band a level sits on is, counted over the same reach as ``disc_bands``' marks: two peaks in one
    vertebra may both lie on a band, and the disc's endplates darken the column more than a vein entering the
    middle of a body does (-inf where nothing near was read).
    """
    return _over_a_quarter_disc(np.where(np.isnan(contrast), -np.inf, contrast), slice_spacing_mm, disc_height_mm)


def _over_a_quarter_disc(values: np.ndarray, slice_spacing_mm: float, disc_height_mm: float) -> np.ndarray:
    """Each slice's value raised to the largest within a quarter of ``disc_height_mm`` either side (whole slices)."""
    spread = int(disc_height_mm / 4.0 // slice_spacing_mm)
    return ndimage.maximum_filter1d(values, 2 * spread + 1) if spread else values


def endplate_gaps(stack: AxialStack, canals: Sequence[Optional[SliceCanal]],
                  density: Optional[np.ndarray] = None) -> np.ndarray:
    """Per slice, how surely the bone in front of the canal (CT) shows a disc: a gap between two endplates.

    That is a disc seen in the bone, whatever the detector thinks of the slice.
    0 where the slice is no gap bounded by an endplate above and below; at a
    gap, its contrast over ENDPLATE_SURE_QUANTILE of the study's gaps' contrast,
    up to 1. The contrast is read against the study's own: a young patient's
    endplates stand out more than an old one's, but in any study the discs
    stand out more than the soft middle of a body. ``density`` is the bone
    in front of the canal (``disc_back_density`` from the canal's front wall,
    CANAL_WALL_HU), when the caller already read it for ``onto_the_discs``.
    """
    if density is None:
        density = disc_back_density(stack, canals, wall_hu=CANAL_WALL_HU)
    reach = max(1, int(round(ENDPLATE_REACH_MM / stack.spacing[2])))
    contrast = np.zeros(stack.n_slices)
    for k in np.nonzero(~np.isnan(density))[0]:
        below, above = density[max(0, k - reach):k], density[k + 1:k + 1 + reach]
        if below.size == 0 or above.size == 0 or np.isnan(below).all() or np.isnan(above).all():
            continue
        # an endplate is bone (the middle of a body, darker where its veins leave it, is flanked by
        # cancellous bone that may be darker than BONE_HU), and denser than the gap by the contrast
        bound = max(density[k] + ENDPLATE_CONTRAST_HU, BONE_HU)
        endplates = min(np.nanmax(below), np.nanmax(above))
        if endplates >= bound:
            contrast[k] = endplates - density[k]
    if not contrast.any():
        return contrast
    sure = float(np.percentile(contrast[contrast > 0], ENDPLATE_SURE_QUANTILE))
    return np.minimum(contrast / sure, 1.0)


def onto_the_discs(stack: AxialStack, canals: Sequence[Optional[SliceCanal]], levels: Sequence[LevelCandidate],
                   density: np.ndarray, separation_mm: float = 0.0,
                   lowest_slice: int = 0) -> list[LevelCandidate]:
    """CT levels moved off the endplates: a level on a slice that reads as bone in front of the canal goes to the disc.

    The detector's disc sign may peak on an endplate next to the disc; the bone
    just in front of the canal (``density``: ``disc_back_density`` from the
    canal's front wall, CANAL_WALL_HU, as ``endplate_gaps`` reads it) tells
    them apart: 75-100 HU at a disc, 150 HU (BONE_HU) and more at an endplate.
    Such a level moves to the slice of least density within ON_DISC_HALF_MM,
    where a canal was tracked, unless another level already lies there (two
    levels of a neck, 9 mm apart, may flank one disc). Levels on slices that do
    not read as bone, and every level of a study with slices thicker than
    ON_DISC_MAX_SLICE_MM, stay. Two levels that end up closer than
    ``separation_mm`` are one disc: the one on the less dense slice stays, the
    other was on its endplate (the pipeline passes a neck's shortest vertebra in
    a neck, and 0, no merging, elsewhere). No level moves below ``lowest_slice``:
    the pipeline passes ``levels.lowest_slice_above_sacrum``, as the low
    density of the sacral canal's surroundings must not draw L5-S1 into it.
    """
    dz = stack.spacing[2]
    if dz > ON_DISC_MAX_SLICE_MM:
        return list(levels)
    half = int(round(ON_DISC_HALF_MM / dz))
    taken = {level.slice_index for level in levels}
    moved = []
    for level in levels:
        k = level.slice_index
        # a level already below ``lowest_slice`` stays where it is, for the caller to judge
        if density[k] >= BONE_HU and k >= lowest_slice:
            near = [j for j in range(max(0, lowest_slice, k - half), min(stack.n_slices, k + half + 1))
                    if not np.isnan(density[j])]
            # the least dense, the nearest of equals
            j = min(near, key=lambda i: (density[i], abs(i - k)))
            if density[j] < density[k] and j not in taken:
                taken = (taken - {k}) | {j}
                level = dataclasses.replace(level, slice_index=j, box_ij=canals[j].box_ij)
        moved.append(level)
    moved.sort(key=lambda level: level.slice_index)
    # of two too close, the one on the denser slice, its endplate, goes
    return drop_closer_than(moved, dz, separation_mm,
                            lambda lower, upper: density[lower.slice_index] > density[upper.slice_index])


def find_foramen_magnum(stack: AxialStack, canals: Sequence[Optional[SliceCanal]],
                        depth_ratio: float = CISTERN_DEPTH_RATIO,
                        csf_contrast: Optional[float] = None) -> Optional[Landmark]:
    """The foramen magnum: where the canal at the superior end of the study opens into the cisterna magna.

    The spinal canal keeps its depth (front to back) from level to level, while
    through the foramen magnum its CSF opens into the cisterna magna behind the
    medulla, and the canal's box grows to ``depth_ratio`` times the canal's
    median depth and more (NECK_CISTERN_DEPTH_RATIO where the study is known to
    show the neck). The cistern is the run of such slices that reaches the
    most superior slice where a canal was tracked, and at least CISTERN_MIN_DEPTH_MM
    deep somewhere; the landmark's ``bottom_slice``
    is where the canal opens. No such run, no landmark: a study that ends below
    the skull base, or whose canal was not tracked up to it. The run must reach
    the very top: allowing it to start 2 mm below (a cropped neck's top box may
    stop short of the cistern's back) found a "cistern" in 3 of 1061 lumbar
    series, at the top of windows ending in the lumbar sac. On slices
    THICK_OPENING_SLICE_MM or thicker, two slices must be that deep: one thick
    slice in C1 or C2 reads as deep as the cistern.
    With ``csf_contrast`` (MR: the study's, ``csf_outline.study_csf_contrast``)
    the slices within CISTERN_BEHIND_MM of the top are as deep as their CSF
    reaches behind the box (``csf_outline.cistern_depth_mm``) where that is
    deeper: a detector may box the medulla and the CSF in front of it there.
    Above the top, where the detector may have lost the canal as it opens,
    the slices up to CISTERN_ABOVE_TRACK_MM are read so under the top box, as
    long as they are deeper than ``depth_ratio`` times the median.
    """
    boxes = {c.slice_index: c.box_ij for c in canals if c is not None}
    depth = {k: box_depth_mm(box, stack.spacing) for k, box in boxes.items()}
    dz = stack.spacing[2]
    if len(depth) * dz < FORAMEN_MIN_TRACK_MM:
        return None
    median = float(np.median(list(depth.values())))
    top = max(depth)

    if csf_contrast is not None:
        pixel = (stack.spacing[0], stack.spacing[1])
        for k in depth:
            if (top - k) * dz <= CISTERN_BEHIND_MM:
                depth[k] = max(depth[k], cistern_depth_mm(stack.array[k], boxes[k], pixel, csf_contrast))
        for k in range(top + 1, stack.n_slices):
            if (k - top) * dz > CISTERN_ABOVE_TRACK_MM:
                break
            above = cistern_depth_mm(stack.array[k], boxes[top], pixel, csf_contrast)
            if above <= depth_ratio * median:
                break
            depth[k] = above
    run = []
    for k in sorted(depth, reverse=True):
        if depth[k] <= depth_ratio * median:
            break
        run.append(k)
    if len(run) * dz < FORAMEN_MIN_RUN_MM or max(depth[k] for k in run) < CISTERN_MIN_DEPTH_MM:
        return None
    if dz >= THICK_OPENING_SLICE_MM and sum(depth[k] > CISTERN_DEPTH_RATIO * median for k in run) < 2:
        return None
    return Landmark(
        name="foramen magnum", slices=tuple(sorted(run)), top_slice=max(run),
        evidence=(f"the canal opens into the cisterna magna on slice {min(run)}: {depth[min(run)]:.0f} mm deep "
                  f"and more above it, against a median of {median:.0f} mm"),
    )


def find_skull_base_ct(stack: AxialStack, canals: Sequence[Optional[SliceCanal]]) -> Optional[Landmark]:
    """The foramen magnum on CT: where the occipital bone begins behind the canal, in a study that reaches the skull.

    ``find_foramen_magnum`` reads the opening of the canal's CSF into the
    cisterna magna on MR; on CT the box holds the bony canal, whose ring at C1 is
    wide already, so the bone is read instead: the midline behind the canal holds
    bone (SKULL_BEHIND_MIN_SHARE) on every slice from the back rim of the foramen
    magnum to the top of the study, over at least SKULL_MIN_RUN_MM. Above the
    highest tracked canal the canal's last box stands in for it. The landmark's
    ``bottom_slice`` is where that bone begins. For a study of the neck only (the
    pipeline reads it where the region is cervical): in the chest the long,
    overlapping spinous processes may lie behind the canal over many slices.
    """
    tracked = sorted((c for c in canals if c is not None and not c.bridged), key=lambda c: c.slice_index)
    if not tracked:
        return None
    sx, sy, dz = stack.spacing
    by_slice = {c.slice_index: c for c in tracked}
    height, width = stack.array.shape[1:]
    first = tracked[0].slice_index
    shares = np.zeros(stack.n_slices - first)
    box = None
    for i, k in enumerate(range(first, stack.n_slices)):
        box = by_slice[k].box_ij if k in by_slice else box
        i0, _, i1, j1 = box
        centre = (i0 + i1) / 2.0
        rows = slice(min(height, int(np.ceil(j1))), min(height, int(np.ceil(j1 + SKULL_BEHIND_DEPTH_MM / sy))))
        columns = slice(max(0, int(round(centre - SKULL_BEHIND_HALF_WIDTH_MM / sx))),
                        min(width, int(round(centre + SKULL_BEHIND_HALF_WIDTH_MM / sx))))
        patch = stack.array[k, rows, columns]
        shares[i] = float(np.mean(patch > SKULL_BONE_HU)) if patch.size else 0.0
    # a slice or two of thin occipital bone does not break the run, nor one of a spinous process make one
    shares = ndimage.median_filter(shares, max(1, int(round(SKULL_MEDIAN_MM / dz))), mode="nearest")
    # the run of bone down from the top of the study, which may end a slice or so below it (indices from ``first``)
    top = len(shares) - 1
    start = next((i for i in range(top, max(-1, top - int(SKULL_TOP_GAP_MM / dz) - 1), -1)
                  if shares[i] >= SKULL_BEHIND_MIN_SHARE), None)
    if start is None:
        return None
    bottom = start
    while bottom > 0 and shares[bottom - 1] >= SKULL_BEHIND_MIN_SHARE:
        bottom -= 1
    if (start - bottom + 1) * dz < SKULL_MIN_RUN_MM:
        return None
    bottom, start = first + bottom, first + start
    slices = tuple(range(bottom, start + 1))
    return Landmark(
        name="foramen magnum", slices=slices, top_slice=start,
        evidence=(f"the skull base: bone behind the canal from slice {bottom} to the top of the study "
                  f"({(start - bottom + 1) * dz:.0f} mm), the occipital bone round the foramen magnum"),
    )


def find_lumbosacral_bend(stack: AxialStack, canals: Sequence[Optional[SliceCanal]]) -> Optional[Landmark]:
    """Where the canal, followed downwards, turns backwards most steeply in the lower half of its track.

    The sacrum's canal runs backwards as it descends, so below the lumbosacral
    junction the canal's position (front to back, in patient coordinates)
    changes fast from slice to slice. The bend is read from the canal alone, so
    it serves where the bone is not read for the sacrum's alae: on MR (the
    pipeline reads it there only). It is not a name's anchor: on two of six
    scans checked it lay in L5's body, up to 26 mm above L5-S1. None when the
    track is short or bends less than LUMBOSACRAL_BEND_SLOPE.
    """
    tracked = [c for c in canals if c is not None]
    if len(tracked) < BEND_MIN_TRACK:
        return None
    ks = np.array([c.slice_index for c in tracked], dtype=float)
    centres = np.array([[(c.box_ij[0] + c.box_ij[2]) / 2.0, (c.box_ij[1] + c.box_ij[3]) / 2.0, c.slice_index]
                        for c in tracked])
    # posterior in LPS is +y, whatever the stack's in-plane axes
    back = stack.index_to_lps(centres)[:, 1]
    dz = stack.spacing[2]
    span = np.arange(int(ks.min()), int(ks.max()) + 1)
    smooth = ndimage.gaussian_filter1d(np.interp(span, ks, back), BEND_SMOOTHING_MM / dz)
    # the stack runs feet to head (LPS); should its slices run the other way, up is down the index
    up = 1.0 if stack.direction[2, 2] >= 0 else -1.0
    # backwards per millimetre upwards: a canal that moves back as the slices go down has a negative slope
    slope = np.gradient(smooth, span * dz) * up
    lower = (span - np.percentile(span, 50)) * up <= 0
    i = int(np.argmin(np.where(lower, slope, np.inf)))
    if slope[i] > LUMBOSACRAL_BEND_SLOPE:
        return None
    return Landmark(
        name="lumbosacral bend", slices=(int(span[i]),), top_slice=int(span[i]),
        evidence=f"the canal turns backwards {-slope[i]:.1f} mm per mm downwards on slice {int(span[i])}",
    )


def find_sacrum(stack: AxialStack, bones: Sequence[VertebralBone],
                canals: Sequence[Optional[SliceCanal]]) -> Optional[Landmark]:
    """The sacrum: the lowest run of slices where the bone in front of the canal spreads into the alae."""
    tracked = [c.slice_index for c in canals if c is not None]
    if not tracked or not bones:
        return None
    dz = stack.spacing[2]
    alae = sorted(b.slice_index for b in bones
                  if b.width_mm >= ALA_WIDTH_MM and min(b.left_mm, b.right_mm) >= ALA_HALF_WIDTH_MM)
    if not alae:
        return None
    # the run of ala slices at the lower end of the track; one slice without may lie between
    run = [alae[0]]
    for k in alae[1:]:
        if (k - run[-1]) * dz > 2.0 * dz + 0.5:
            break
        run.append(k)
    if (run[0] - min(tracked)) * dz > SACRUM_BELOW_ALAE_MM or len(run) * dz < 4.0:
        return None
    # the alae lie below L5, the widest vertebral body: above bone as wide, bodies a neck's or a chest's width
    # are the first ribs' (or the shoulders') bone joined to T1 or T2 in thick slices
    above = [b.body_width_mm for b in bones if b.slice_index > run[-1] and b.body_width_mm > 0]
    if len(above) >= 3 and float(np.median(above)) < SACRUM_MIN_BODY_ABOVE_MM:
        return None
    widths = [b.width_mm for b in bones if b.slice_index in run]
    return Landmark(
        name="sacrum", slices=tuple(run), top_slice=run[-1],
        evidence=(f"sacral alae: bone {min(widths):.0f}-{max(widths):.0f} mm across on slices "
                  f"{run[0]}-{run[-1]}, near the lower end of the canal"),
    )


@dataclass
class RibSection:
    """Bone beside the vertebra, not joined to it, on one CT slice: where a rib is cut."""

    slice_index: int
    #: +1 on the side of larger column indices, -1 on the other
    side: int
    #: from the canal's centre, side to side, and behind the canal's front edge, in mm
    lateral_mm: float
    behind_front_mm: float
    #: from the canal's centre to where a section cut by the edge of the field of view on its side lies: two of the
    #: pixels it is read on inside the edge, in mm
    edge_mm: float = np.inf


def rib_sections(stack: AxialStack, canal: SliceCanal) -> list[RibSection]:
    """The sections of ribs beside the canal on a CT slice: bone near it that is not the vertebra's (RIB_AREA_MM2)."""
    # every second or third pixel of a fine slice: that keeps the labelling of a 512-pixel slice cheap
    step = (max(1, int(RIB_PIXEL_MM / stack.spacing[0])), max(1, int(RIB_PIXEL_MM / stack.spacing[1])))
    sx, sy = stack.spacing[0] * step[0], stack.spacing[1] * step[1]
    i0, j0, i1, _ = canal.box_ij
    i0, i1, j0 = i0 / step[0], i1 / step[0], j0 / step[1]
    height, width = (-(-n // s) for n, s in zip(stack.array.shape[1:], step[::-1]))
    centre = (i0 + i1) / 2.0
    top = max(0, int(np.floor(j0 + RIB_BEHIND_FRONT_MM[0] / sy)) - int(round(BODY_SEARCH_MM / sy)))
    bottom = min(height, int(np.ceil(j0 + RIB_BEHIND_FRONT_MM[1] / sy)) + int(round(CROP_MARGIN_MM / sy)))
    left = max(0, int(np.floor(centre - CROP_HALF_WIDTH_MM / sx)))
    right = min(width, int(np.ceil(centre + CROP_HALF_WIDTH_MM / sx)))
    rows, columns = slice(top * step[1], bottom * step[1], step[1]), slice(left * step[0], right * step[0], step[0])
    image = stack.array[canal.slice_index, rows, columns]
    # not filled, unlike ``vertebral_bone``: a rib's section is small, and what lies inside the vertebra's cortex is
    # too near the canal to be one
    labels, n = ndimage.label(ndimage.binary_closing(image > BONE_HU, iterations=1))
    if n == 0:
        return []
    # the vertebra is the bone just in front of the canal, as ``vertebral_bone`` reads it; a rib's head joined to
    # it at its joint is part of it there, and the rib is read below its head
    ci = int(np.clip(round(centre) - left, 0, labels.shape[1] - 1))
    front = int(np.floor(j0)) - top
    column = labels[max(0, front - int(round(BODY_SEARCH_MM / sy))):max(0, front - int(round(3.0 / sy))), ci]
    vertebra = set(int(v) for v in np.unique(column[column > 0]))
    # each label's pixel count and centre at once: far cheaper than ndimage's per-label measurements
    flat = labels.ravel()
    counts = np.bincount(flat, minlength=n + 1)[1:].astype(float)
    rows_of, columns_of = np.indices(labels.shape)
    mean_j = np.bincount(flat, weights=rows_of.ravel(), minlength=n + 1)[1:] / np.maximum(counts, 1.0)
    mean_i = np.bincount(flat, weights=columns_of.ravel(), minlength=n + 1)[1:] / np.maximum(counts, 1.0)
    # a pixel's centre lies half a pixel past its index, in the box's edge coordinates
    lateral = (mean_i + 0.5 + left - centre) * sx
    behind = (mean_j + 0.5 + top - j0) * sy
    area = counts * sx * sy
    rib = ((RIB_AREA_MM2[0] <= area) & (area <= RIB_AREA_MM2[1])
           & (RIB_LATERAL_MM[0] <= np.abs(lateral)) & (np.abs(lateral) <= RIB_LATERAL_MM[1])
           & (RIB_BEHIND_FRONT_MM[0] <= behind) & (behind <= RIB_BEHIND_FRONT_MM[1]))
    edges = {1: stack.array.shape[2] * stack.spacing[0] - centre * sx - 2 * sx, -1: centre * sx - 2 * sx}
    sections = []
    for m in np.nonzero(rib)[0]:
        if m + 1 not in vertebra:
            side = 1 if lateral[m] > 0 else -1
            sections.append(RibSection(canal.slice_index, side, float(abs(lateral[m])), float(behind[m]), edges[side]))
    return sections


def _follow_ribs(sections: Sequence[RibSection], slice_spacing_mm: float) -> list[list[RibSection]]:
    """The sections joined into ribs, each inferior first: a section continues the nearest rib it lies close to."""
    ribs: list[list[RibSection]] = []
    for k in sorted({s.slice_index for s in sections}):
        here = [s for s in sections if s.slice_index == k]
        taken: set[int] = set()
        for rib in ribs:
            last = rib[-1]
            gap_mm = (k - last.slice_index) * slice_spacing_mm
            if k - last.slice_index > RIB_MAX_SKIPPED_SLICES + 1:
                continue
            near = [(abs(s.lateral_mm - last.lateral_mm) + abs(s.behind_front_mm - last.behind_front_mm), m)
                    for m, s in enumerate(here)
                    if m not in taken and s.side == last.side
                    and abs(s.lateral_mm - last.lateral_mm) <= RIB_STEP_MM + RIB_LATERAL_PER_MM * gap_mm
                    and abs(s.behind_front_mm - last.behind_front_mm) <= RIB_STEP_MM + RIB_AP_PER_MM * gap_mm]
            if near:
                m = min(near)[1]
                taken.add(m)
                rib.append(here[m])
        ribs.extend([s] for m, s in enumerate(here) if m not in taken)
    return ribs


def _whole_ribs(stack: AxialStack, canals: Sequence[Optional[SliceCanal]]) -> tuple[list[list[RibSection]], list[int]]:
    """The ribs followed in to their heads (``find_lowest_rib`` says which count), each inferior first, and the
    slices where the canal was tracked."""
    tracked = sorted(c.slice_index for c in canals if c is not None)
    if not tracked:
        return [], tracked
    dz = stack.spacing[2]
    # the canal is one tube: on a slice the tracking left out between two tracked ones it lies between their boxes,
    # and a rib crossing that slice is read there too, so that the rib is not cut in two
    between = bridge_gaps(canals, dz, max_gap_mm=None)[tracked[0]:tracked[-1] + 1]
    sections = [s for c in between for s in rib_sections(stack, c)]
    ribs = []
    for rib in _follow_ribs(sections, dz):
        low, head = rib[0], rib[-1]
        if ((head.slice_index - low.slice_index) * dz >= RIB_MIN_SPAN_MM
                and low.lateral_mm - head.lateral_mm >= RIB_MIN_APPROACH_MM
                and low.lateral_mm >= min(RIB_MIN_REACH_MM, low.edge_mm - RIB_EDGE_MARGIN_MM)
                and all(b.lateral_mm - a.lateral_mm <= RIB_MAX_OUTWARD_STEP_MM for a, b in zip(rib, rib[1:]))
                and head.lateral_mm <= RIB_HEAD_MAX_LATERAL_MM and head.slice_index < tracked[-1]):
            ribs.append(rib)
    return ribs, tracked


def _end_pair(ribs: Sequence[list[RibSection]], dz: float,
              highest: bool) -> Optional[tuple[list[RibSection], list[RibSection]]]:
    """The rib whose head is the lowest (or the ``highest``) and its partner: of the ribs on the other side with
    heads within RIB_PAIR_MM of it, the one whose head lies furthest the same way. None without a partner."""
    def head(rib: list[RibSection]) -> int:
        return rib[-1].slice_index

    end = (max if highest else min)(ribs, key=head)
    partners = [other for other in ribs
                if other[-1].side != end[-1].side and abs(head(other) - head(end)) * dz <= RIB_PAIR_MM]
    return (end, (max if highest else min)(partners, key=head)) if partners else None


def _pair_evidence(rib: list[RibSection], partner: list[RibSection], slices: Sequence[int]) -> str:
    return (f"a pair of ribs runs in from {rib[0].lateral_mm:.0f} and {partner[0].lateral_mm:.0f} mm beside "
            f"the canal to their heads, {rib[-1].lateral_mm:.0f} and {partner[-1].lateral_mm:.0f} mm beside "
            f"it on slice {' and '.join(str(j) for j in slices)}")


def find_lowest_rib(stack: AxialStack, canals: Sequence[Optional[SliceCanal]]) -> Optional[Landmark]:
    """The heads of the lowest pair of ribs on CT, where the study shows the rib-free vertebra below; None otherwise.

    Each rib is followed from section to section (``rib_sections``). It counts
    when it runs over RIB_MIN_SPAN_MM in from RIB_MIN_REACH_MM beside the canal
    (or from the edge of the field of view), comes RIB_MIN_APPROACH_MM closer
    to it going up (never more than RIB_MAX_OUTWARD_STEP_MM away from it
    between two sections), and ends within RIB_HEAD_MAX_LATERAL_MM of it below
    the study's top slice (a rib cut by the top of the study shows no head).
    Ribs come in pairs: the lowest head counts only with a head on the other
    side within RIB_PAIR_MM of it (a 12th rib seen on one side only may have
    its partner missed, and the pair above it is then the 11th), and the
    landmark's ``top_slice`` is the lower of the two. It is no landmark unless
    the canal was tracked RIB_FREE_BELOW_MM below it: a study of the chest
    shows ribs on every vertebra, and its lowest pair is not T12's.
    """
    ribs, tracked = _whole_ribs(stack, canals)
    if not ribs:
        return None
    dz = stack.spacing[2]
    pair = _end_pair(ribs, dz, highest=False)
    if pair is None or (pair[0][-1].slice_index - tracked[0]) * dz < RIB_FREE_BELOW_MM:
        return None
    lowest, partner = pair
    k = lowest[-1].slice_index
    slices = tuple(sorted({k, partner[-1].slice_index}))
    return Landmark(name="lowest rib", slices=slices, top_slice=k,
                    evidence=_pair_evidence(lowest, partner, slices) + ", with no rib below them")


def find_first_rib(stack: AxialStack, canals: Sequence[Optional[SliceCanal]]) -> Optional[Landmark]:
    """The heads of the highest pair of ribs on CT, the first (on T1), where the study shows the neck above them.

    The ribs are read as ``find_lowest_rib`` reads them. The highest head
    counts only with a head on the other side within RIB_PAIR_MM of it, and
    only where the canal was tracked RIB_FREE_ABOVE_MM above it with no rib
    there: the cervical vertebrae above T1 bear none (a cervical rib on C7 is
    rare, and the names then shift: the evidence says which ribs were read).
    The landmark's ``top_slice`` is the higher of the two heads. None where
    the study shows no such pair.
    """
    ribs, tracked = _whole_ribs(stack, canals)
    if not ribs:
        return None
    dz = stack.spacing[2]
    pair = _end_pair(ribs, dz, highest=True)
    if pair is None or (tracked[-1] - pair[0][-1].slice_index) * dz < RIB_FREE_ABOVE_MM:
        return None
    highest, partner = pair
    k = highest[-1].slice_index
    slices = tuple(sorted({k, partner[-1].slice_index}))
    return Landmark(name="first rib", slices=slices, top_slice=k,
                    evidence=_pair_evidence(highest, partner, slices) + ", with no rib above them in the neck")
