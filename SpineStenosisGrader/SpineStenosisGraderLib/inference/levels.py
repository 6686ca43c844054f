"""Layer 4: group per-slice canal detections into disc levels and name them.

The detector says, per slice, how likely the slice cuts a disc; on CT the bone
in front of the canal adds a gap between two endplates. The discs are the peaks
of that evidence along the tracked canal, one per vertebra at most; each disc's
representative slice is the peak's. Where two discs lie a whole vertebra too
far apart for the region, the disc between them, too faint to make a peak of
its own, is placed at the evidence's best local peak there, with a warning.

Names come from a landmark the study contains (the sacrum: the lowest disc
above it is L5-S1), or from the user's anchor ("this disc is L4-L5"), which
renames every level. Without either, the levels are still counted from the end
that axial studies usually include (L5-S1 for lumbar, C2-C3 for cervical), but
they are marked as not anchored everywhere they are shown: lumbar-only studies
are misnumbered in about one patient in seven.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Callable, Optional, Sequence

import numpy as np
from scipy import ndimage, signal

from ..errors import InputError

#: every intervertebral disc, superior to inferior
SPINE_DISCS: tuple[str, ...] = (
    ("C2-C3", "C3-C4", "C4-C5", "C5-C6", "C6-C7", "C7-T1")
    + tuple(f"T{n}-T{n + 1}" for n in range(1, 12))
    + ("T12-L1", "L1-L2", "L2-L3", "L3-L4", "L4-L5", "L5-S1")
)
REGIONS = ("lumbar", "thoracic", "cervical")
#: the study's region when its slices do not tell (see ``region``)
UNKNOWN_REGION = "unknown"

#: nominal disc heights, for the thickness of a level's box
DISC_HEIGHT_MM = {"lumbar": 10.0, "thoracic": 6.0, "cervical": 6.0, UNKNOWN_REGION: 8.0}
#: the default count, when no landmark names the levels: the disc each region's count starts from
DEFAULT_ANCHORS = {"lumbar": (0, "L5-S1"), "thoracic": (0, "T12-L1"), "cervical": (-1, "C2-C3")}
#: two disc peaks closer than this are one disc: about half the shortest vertebral body of the region
#: (lumbar bodies are 25-30 mm tall, thoracic 17-25 mm, cervical 12-15 mm)
MIN_DISC_SEPARATION_MM = {"lumbar": 20.0, "thoracic": 12.0, "cervical": 9.0, UNKNOWN_REGION: 9.0}
#: on slices this thick or thicker, two lumbar disc peaks closer than THICK_LUMBAR_SEPARATION_MM are one disc. One
#: slice is a fifth of a body there, and on CT the middle of a body, where its vein leaves it through the back wall,
#: reads as a gap in the bone as a disc does: on a clinical CT of 5 mm slices and on 4-6 mm versions of the
#: validation CTs, peaks 20 mm apart were a disc and a body's middle, never two discs. On 1 mm slices two lower
#: thoracic discs of a lumbar MR lay 21 mm apart (VB2's scan 20), so thinner slices keep the 20 mm
THICK_SLICE_MM = 4.0
THICK_LUMBAR_SEPARATION_MM = 22.0
#: the detector's disc probability is read against its own level along the spine: a running low
#: quantile over this half-length (on an unfamiliar contrast it rises at discs but may stay under 0.5,
#: or stay above it everywhere)
BASELINE_HALF_LENGTH_MM = 20.0
BASELINE_QUANTILE = 40.0
#: a disc peak rises at least this far above the baseline, and its probability is at least MIN_DISC_PROBABILITY
MIN_PEAK_RISE = 0.06
MIN_DISC_PROBABILITY = 0.3
#: the profile is smoothed over about this (mm), so one doubtful slice does not split a disc
SMOOTHING_MM = 1.5
#: in a cervical study, a level whose canal box is this many times deeper (front to back) than the median of the
#: study's levels lies in a cistern above the spine (the cisterna magna at the foramen magnum), not at a disc:
#: on the whole-neck T2 validation scans the levels at discs reach 1.24 times the median, those at the
#: cisterna 1.37-1.66
CISTERN_DEPTH_RATIO = 1.35
#: the median needs this many levels to stand for the canal
CISTERN_MIN_LEVELS = 4
#: below the foramen magnum (where the canal opens into the cisterna magna, ``landmarks.find_foramen_magnum``)
#: lie C1's ring and C2's dens and body before the first disc, C2-C3: no disc lies within this of the opening.
#: On the whole-neck validation scans C2-C3 lies 30-35 mm below it, and the dark bands of C1, the dens and the
#: dens's base, taken for discs, 13-19 mm
C1_C2_BELOW_FORAMEN_MM = 25.0
#: the highest disc no further than this below the opening is C2-C3; C3-C4 lies a cervical vertebra lower
#: (49-53 mm on those scans), and a highest disc that far down says C2-C3 was missed
C2_C3_BELOW_FORAMEN_MM = 42.0
#: a highest disc below C2-C3's reach and no further than this is C3-C4 (C2-C3 missed), as the lowest disc
#: above the sacrum's L5-S1 window is L4-L5: C4-C5 lies another cervical vertebra (15-19 mm on those scans) lower
C3_C4_BELOW_FORAMEN_MM = 60.0
#: on CT the foramen magnum is read where the occipital bone begins behind the canal (``landmarks.find_skull_base_ct``),
#: the back rim of the opening, which lies lower than where the MR's CSF opens into the cisterna magna: on the two
#: neck CTs C2-C3 lay 37.5 and 42 mm below it, C3-C4 54 and 56 mm, and the dens and C1's ring 6-15 mm
CT_C2_C3_BELOW_FORAMEN_MM = 50.0
CT_C3_C4_BELOW_FORAMEN_MM = 68.0
#: and no disc lies within this of that rim: C2 is the tallest cervical vertebra (about 35-45 mm from the dens's tip,
#: which reaches up to the opening, to its lower endplate), and a level 30-32 mm below the rim lay in C2's body on
#: s0002 with four detectors (its cancellous bone, 256 HU, reads as a gap between the cortex above and below it)
CT_C1_C2_BELOW_FORAMEN_MM = 34.0
#: a lowest lumbar level closer to the next than this share of the median spacing between the levels above
#: is a remnant disc in the sacrum: on the 22 lumbar MR scans checked (``fastcleverseg``), the S1-S2 remnant
#: lay 0.55-0.66 of that spacing below L5-S1 (21-23 mm), while L5-S1 lay 0.78 or more below L4-L5
SACRAL_SPACING_RATIO = 0.72
#: unless the lowest and the third lowest lie less than this many spacings apart: then the second lowest is
#: the one in the wrong place (in L5's body, say), and L5-S1 is the lowest
NEXT_TWO_SPACING_RATIO = 1.15
#: the levels needed to know the lumbar spacing: the lowest and four above it, so that the median of the
#: three or more spacings above the lowest stands for the spine even where one disc was missed (a spacing of
#: two vertebrae); up to SACRAL_SPACINGS_ABOVE spacings above the lowest give the typical one
SACRAL_MIN_LEVELS = 5
SACRAL_SPACINGS_ABOVE = 4
#: a lowest level less than this below the canal's bend into the sacrum is no remnant, however close to the
#: next: the bend lies at L5-S1 or above it (``BELOW_LUMBOSACRAL_BEND_MM``), and the S1-S2 remnant 21 mm or more
#: below L5-S1. In a steep lordosis L5 is a wedge, short at the back, so at the canal L5-S1 may lie only 0.66
#: of the spacing of the levels above it below L4-L5 (VB2 07, where the sac was followed below the detector's
#: track)
SACRAL_BELOW_BEND_MM = 10.0
#: disc-to-disc distance along an adult spine (mm): a vertebral body and a disc; cervical bodies are about
#: 14 mm tall, lower thoracic 20-25 mm, lumbar 25-30 mm, with 5-10 mm of disc
TYPICAL_DISC_SPACING_MM = {"lumbar": 33.0, "thoracic": 23.0, "cervical": 16.0}
#: two discs found this many typical spacings apart have a disc between them that the evidence missed
MISSED_DISC_GAP = 1.5
#: how much a disc seen in the image (``landmarks.endplate_gaps`` on CT, ``landmarks.disc_bands`` on MR) weighs
#: against the detector
ENDPLATE_WEIGHT = 0.7
#: of two peaks in one vertebra, both on a band, the one whose band is deeper by this much (``band_contrast``) is
#: the disc: a vein entering the middle of a lumbar body darkens the column by about 0.25, a disc's endplates by
#: 0.45-0.7 (VB1 03). The two endplates of one disc often darken it alike (within 0.01 on fastcleverseg_ivd_42's
#: L5-S1), and there the detector still decides; where they differ more (0.45 and 0.58, fastcleverseg_ivd_20's
#: L4-L5), the deeper is kept, on the disc either way
BAND_DEPTH_MARGIN = 0.1
#: the L5-S1 disc lies just above the top of the sacral alae: within this of it, plus half a slice (the alae's
#: top slice may lie up to a slice below their top). The alae are first seen where S1's body joins them, at or
#: just below its upper endplate, and the disc's middle at the canal is half a disc (4-6 mm) above that endplate;
#: 10 mm or more above the alae the slices cut L5's body, 25-30 mm tall, where a false peak must not be L5-S1
L5_S1_ABOVE_SACRUM_MM = 10.0
#: disc-like slices this far below the top of the alae are inside the sacrum
INSIDE_SACRUM_MM = 4.0
#: a lumbar disc spacing: a lowest disc this far above the sacrum is L4-L5, and L5-S1 was missed
L4_L5_ABOVE_SACRUM_MM = 65.0
#: T12-L1 lies this far below the head of the lowest rib (``landmarks.find_lowest_rib``; mm, negative above): the
#: 12th rib's head lies on T12's body, at its pedicle, and T12-L1 below that body (6 mm below on the README's
#: sample, 3 mm slices); a level found up to a few mm above its disc may lie level with the head, while T11-T12
#: lies above T12's pedicle
T12_L1_BELOW_RIB_MM = (-3.0, 30.0)
#: C7-T1 lies this far above the heads of the first ribs (``landmarks.find_first_rib``; mm): the highest section
#: of the rib followed in lies 12-15 mm below the labelled C7-T1 in the neck CT that shows them
#: (``totalseg_s0003_ct`` and its 3 mm versions), 4-7 mm in its 4.5 mm versions, whose slices put the rib's top
#: lower; T1-T2 lies 5-15 mm below them, and C6-C7 20 mm and more above
C7_T1_ABOVE_FIRST_RIB_MM = (2.0, 18.0)
#: disc-like places this far below where the canal turns back into the sacrum (``landmarks.find_lumbosacral_bend``)
#: lie in the sacrum: the bend lies at L5-S1 or up to 26 mm above it, in L5's body, and the sacral disc remnants
#: a sacral vertebra (25-35 mm) or more below L5-S1. Over the 29 lumbar T2 scans of VB1, VB2 and fastcleverseg_ivd
#: graded by eleven detectors, every level dropped with 25 mm lay 31 mm or more below L5-S1 (an L5-S1 found 5 mm
#: above its disc stays, 21 mm below its bend); 20 mm dropped that L5-S1, and 30 or 35 mm left remnants in
BELOW_LUMBOSACRAL_BEND_MM = 25.0
#: near an end of a study the detector's disc evidence is one-sided (its running baseline and smoothing see one
#: side only), and on the lumbar MR validation series cut into 40-90 mm windows it peaked 2-8 mm inside a
#: window's end, in a vertebral body, 12-19 mm from the nearest disc. There the vertebral column in front of the
#: canal (``landmarks.band_contrast``) shows no disc: a lumbar MR level within END_LEVEL_MM of either end of the
#: study is kept only if the column's band contrast reaches END_LEVEL_MIN_CONTRAST within END_LEVEL_BAND_REACH_MM
#: of it. Of the 356 levels within 8 mm of a disc on those series 4 stay under 0.2 (a healthy lumbar disc's band is
#: 25-40% deep), of the 44 more than 10 mm from every disc 17. Away from the ends the rule is not applied: the lowest
#: (L5-S1, cut obliquely where the spine bends into the sacrum) and the thoracolumbar discs show the weakest bands,
#: and dropping every bandless level there lost discs and shifted names on VB1 and VB2
END_LEVEL_MM = 10.0
END_LEVEL_MIN_CONTRAST = 0.2
END_LEVEL_BAND_REACH_MM = 3.0
#: on thicker slices a band is averaged with the bodies on either side, and a true disc's reads under 0.2
END_LEVEL_MAX_SLICE_MM = 3.0


@dataclass(frozen=True)
class ForamenReach:
    """Where the discs lie below the foramen magnum as one modality reads it, in mm below the opening."""

    #: no disc lies closer: C1 and C2
    no_disc_mm: float
    #: the highest disc no further than this is C2-C3
    c2_c3_mm: float
    #: a highest disc further than that, but no further than this, is C3-C4 (C2-C3 was missed)
    c3_c4_mm: float


#: on MR the opening is where the canal's CSF opens into the cisterna magna (``landmarks.find_foramen_magnum``)
MR_FORAMEN_REACH = ForamenReach(C1_C2_BELOW_FORAMEN_MM, C2_C3_BELOW_FORAMEN_MM, C3_C4_BELOW_FORAMEN_MM)
#: on CT it is the opening's back rim, where the occipital bone begins behind the canal (``find_skull_base_ct``)
CT_FORAMEN_REACH = ForamenReach(CT_C1_C2_BELOW_FORAMEN_MM, CT_C2_C3_BELOW_FORAMEN_MM, CT_C3_C4_BELOW_FORAMEN_MM)


@dataclass
class SliceCanal:
    """A detection already mapped onto the stack: slice index, box (i0, j0, i1, j1) in edge coordinates."""

    slice_index: int
    box_ij: tuple[float, float, float, float]
    score: float
    disc_probability: float
    #: True where no canal was seen and the box is the tube between the slices around it (``tracking.bridge_gaps``)
    bridged: bool = False


@dataclass
class LevelCandidate:
    slice_index: int
    box_ij: tuple[float, float, float, float]
    score: float
    disc_probability: float
    #: the slices counted into this disc
    slices: tuple[int, ...]
    #: why a disc too faint for a peak of its own was placed: "spacing" (the discs around it lie a whole
    #: vertebra too far apart) or "sacrum" (L5-S1 lies just above the sacral alae); "end" for a disc whose evidence
    #: peaks on the study's end slice; "" for a disc the evidence found at a peak
    placed_from: str = ""


def level_box(canals: Sequence[Optional[SliceCanal]], slice_index: int, slice_spacing_mm: float,
              half_mm: float) -> tuple[float, float, float, float]:
    """A level's box: side by side, the median of the canal boxes on the slices within ``half_mm`` of its slice.

    The level's ROI is a disc thick, so it shows the canal over those slices; one
    slice's box may reach sideways into a foramen where its neighbours do not.
    With no tracked slice that near (only on slices thicker than ``half_mm``),
    the slice's own box.
    """
    near = [c.box_ij for c in canals
            if c is not None and abs(c.slice_index - slice_index) * slice_spacing_mm <= half_mm]
    if not near:
        return canals[slice_index].box_ij
    return tuple(float(v) for v in np.median(np.array(near, dtype=float), axis=0))


def box_depth_mm(box_ij: Sequence[float], pixel_spacing_mm: Sequence[float]) -> float:
    """A canal box's depth, front to back, in mm: its extent along the rows (j) of the slice."""
    return (box_ij[3] - box_ij[1]) * pixel_spacing_mm[1]


def disc_profile(canals: Sequence[Optional[SliceCanal]], n_slices: int, min_score: float = 0.3) -> np.ndarray:
    """The detector's disc probability per slice; NaN where no canal was tracked (or too unsure a one)."""
    profile = np.full(n_slices, np.nan)
    for canal in canals:
        if canal is not None and canal.score >= min_score:
            profile[canal.slice_index] = canal.disc_probability
    return profile


def min_disc_separation_mm(region: str, slice_spacing_mm: float) -> float:
    """How close two disc peaks may lie and still be two discs (MIN_DISC_SEPARATION_MM; THICK_LUMBAR_SEPARATION_MM
    for a lumbar study on slices THICK_SLICE_MM thick or thicker)."""
    if region == "lumbar" and slice_spacing_mm >= THICK_SLICE_MM:
        return THICK_LUMBAR_SEPARATION_MM
    return MIN_DISC_SEPARATION_MM.get(region, MIN_DISC_SEPARATION_MM[UNKNOWN_REGION])


def find_discs(canals: Sequence[Optional[SliceCanal]], n_slices: int, slice_spacing_mm: float,
               region: str = UNKNOWN_REGION, endplate_gaps: Optional[np.ndarray] = None,
               min_score: float = 0.3, sacrum_top_slice: Optional[int] = None,
               band_depths: Optional[np.ndarray] = None,
               foramen_magnum_slice: Optional[int] = None,
               foramen_reach: ForamenReach = MR_FORAMEN_REACH) -> list[LevelCandidate]:
    """Disc levels, inferior first: the peaks of the disc evidence along the tracked canal.

    The evidence is the detector's disc probability. ``endplate_gaps`` (per
    slice, from 0 to 1, how surely the image itself shows a disc: on CT a gap
    in the bone between two endplates, on MR a dark band in the vertebral
    column; see ``landmarks``) raises it, also on a slice whose canal box is
    faint (below ``min_score``, let in by the tracking's tube, or followed over
    the CSF below the track): the detector is
    often unsure of the canal right at a disc, so there its probability is not used. A
    slice bridged by the tracking (``tracking.bridge_gaps``), where the detector
    lost the canal, takes its neighbours' evidence, and a level may lie there. A
    peak must rise MIN_PEAK_RISE above the profile's running baseline, so a
    detector that is unsure on an unfamiliar contrast still places the discs
    where its probability rises, and a profile that is high everywhere yields
    none. Peaks closer than the region's shortest vertebra (``min_disc_separation_mm``) are
    one disc, and the stronger one stays; an end of the study where the evidence
    still rises competes too, as a disc past the end. Where two discs lie a
    whole vertebra too far apart, the one between is placed from their spacing; a
    disc at or past an end of the study counts as one of the two.
    In a lumbar study that shows the sacrum (``sacrum_top_slice``, the most
    superior slice of the alae), L5-S1 is placed just above it when no disc was
    found there. ``band_depths`` (MR, ``landmarks.band_depths``: how deep the band
    about each slice is) tells two peaks in one vertebra apart where both lie on a
    band: the deeper band is the disc's. Below ``foramen_magnum_slice`` (a neck
    that reaches the skull base) lie C1 and C2, with no disc: a peak within
    ``foramen_reach.no_disc_mm`` of it stays for ``name_from_anatomy`` to drop, but no
    disc is placed between it and the disc below, inside C2.
    """
    profile = disc_profile(canals, n_slices, min_score)
    confident = np.nonzero(~np.isnan(profile))[0]
    if len(confident) == 0:
        return []
    by_slice = {c.slice_index: c for c in canals if c is not None}
    gaps = np.zeros(n_slices) if endplate_gaps is None else np.asarray(endplate_gaps, dtype=float)
    # a faint box the tube let in, or a sac followed over its CSF below the track (``csf_outline``), lies on the
    # canal, so the image's own disc sign there (a gap in the bone, a dark band) counts; its detector probability
    # does not, and the nearest confident one's stands in for it
    seen = np.array(sorted(k for k, c in by_slice.items() if not c.bridged), dtype=int)
    # a bridged slice (``tracking.bridge_gaps``) is a place for a level, not evidence: the image's disc sign is not
    # read there, where the canal itself was not seen (in the sacrum that would find its fused discs' remnants)
    tracked = np.array(sorted(by_slice), dtype=int)
    profile = np.interp(np.arange(n_slices), confident, profile[confident])
    evidence = np.full(n_slices, np.nan)
    evidence[seen] = np.maximum(profile[seen], (1.0 - ENDPLATE_WEIGHT) * profile[seen] + ENDPLATE_WEIGHT * gaps[seen])
    # untracked slices between tracked ones take their neighbours' value, so the filters see a continuous spine
    filled = np.interp(np.arange(n_slices), seen, evidence[seen])
    evidence[tracked] = filled[tracked]
    half = max(1, int(round(BASELINE_HALF_LENGTH_MM / slice_spacing_mm)))
    baseline = ndimage.percentile_filter(filled, BASELINE_QUANTILE, size=2 * half + 1, mode="nearest")
    sigma = SMOOTHING_MM / slice_spacing_mm
    smooth = ndimage.gaussian_filter1d(filled, sigma) if sigma > 0.3 else filled
    rise = smooth - baseline
    peaks, _ = signal.find_peaks(rise, height=MIN_PEAK_RISE)
    # the slices counted into a disc: those near its peak that rise at least half as far
    spread = np.nonzero(rise >= MIN_PEAK_RISE / 2.0)[0]
    levels: list[LevelCandidate] = []
    at_end: list[LevelCandidate] = []
    for peak in peaks:
        reach = max(SMOOTHING_MM, slice_spacing_mm / 2.0)
        # a slice where the canal was seen, if any is that near: a bridged one only where none is
        near = seen[np.abs(seen - peak) * slice_spacing_mm <= reach]
        if peak in by_slice and by_slice[peak].bridged:
            # a peak where the detector lost the canal for longer than the smoothing's reach: the evidence there
            # is its neighbours', drawn straight across, so where it peaks says little, and the slice seen
            # nearest lies at the run's end; the disc that narrowed the canal lies in the run's middle
            low = high = int(peak)
            while by_slice.get(low - 1) is not None and by_slice[low - 1].bridged:
                low -= 1
            while by_slice.get(high + 1) is not None and by_slice[high + 1].bridged:
                high += 1
            middle = (low + high) // 2
            if np.min(np.abs(seen - middle)) * slice_spacing_mm > reach:
                near = np.array([middle])
        if len(near) == 0:
            near = tracked[np.abs(tracked - peak) * slice_spacing_mm <= reach]
        if len(near) == 0:
            continue
        k = int(max(near, key=lambda j: (evidence[j], -abs(j - peak))))
        if evidence[k] < MIN_DISC_PROBABILITY:
            continue
        group = spread[np.abs(spread - peak) * slice_spacing_mm <= MIN_DISC_SEPARATION_MM[UNKNOWN_REGION] / 2.0]
        canal = by_slice[k]
        levels.append(LevelCandidate(slice_index=k, box_ij=canal.box_ij, score=canal.score,
                                     disc_probability=float(evidence[k]), slices=tuple(int(j) for j in group)))
    # where the evidence still rises at an end of the track, a disc lies at or past the end of the study: that
    # end competes for its vertebra like a peak, so that a weaker peak in the body next to it is not taken for
    # the disc, but it is no level, as the disc is not (wholly) in the study
    for end, inward in ((tracked[0], tracked[1:2]), (tracked[-1], tracked[-2:-1])):
        if len(inward) and evidence[end] > evidence[inward[0]] and evidence[end] >= MIN_DISC_PROBABILITY:
            canal = by_slice[int(end)]
            at_end.append(LevelCandidate(slice_index=int(end), box_ij=canal.box_ij, score=canal.score,
                                         disc_probability=float(evidence[end]), slices=(int(end),)))
    levels = sorted(levels + [end for end in at_end if all(lv.slice_index != end.slice_index for lv in levels)],
                    key=lambda lv: lv.slice_index)
    kept = _one_per_vertebra(levels, slice_spacing_mm, min_disc_separation_mm(region, slice_spacing_mm), gaps,
                             band_depths)
    levels = [level for level in kept if not any(level is end for end in at_end)]
    # the ends that won their vertebra. Not the sacrum's end, whose disc-like place is its fused remnant, nor a neck's
    # top, where C1 and the dens look like discs whether or not the study reaches the skull base: neither is a level
    # nor spaces the discs (a disc so placed in series of the validation necks lay above C2's middle)
    won = [end for end in kept if any(end is e for e in at_end)
           and not (sacrum_top_slice is not None and end.slice_index == tracked[0])
           and not (region == "cervical" and end.slice_index == tracked[-1])]
    # an end whose evidence is a disc's by the study's own measure (as strong as the weakest disc found inside it)
    # cuts that disc: a disc a few mm inside the study peaks on its end slice, where no peak can be found. On thick
    # slices the detector's evidence on one end slice says little (two 5 mm CT windows of the VerSe scans got a
    # level in a vertebral body so), so the image's own disc sign must be there too
    weakest = min((lv.disc_probability for lv in levels), default=MIN_DISC_PROBABILITY)
    cut = [end for end in won if rise[end.slice_index] >= MIN_PEAK_RISE
           and end.disc_probability >= max(weakest, MIN_DISC_PROBABILITY)
           and (slice_spacing_mm < THICK_SLICE_MM or gaps[end.slice_index] > 0)]
    levels = sorted(levels + [replace(end, placed_from="end") for end in cut], key=lambda lv: lv.slice_index)
    # any other disc at or past an end of the study still spaces the discs: one missed between it and the nearest
    # level is looked for as between two levels
    ends = [end for end in won if not any(end is c for c in cut)]
    # where a disc too faint for a peak of its own is placed: a local peak of the rise on a tracked slice
    local = set(int(k) for k in signal.find_peaks(np.concatenate(([-np.inf], rise, [-np.inf])))[0] - 1)
    faint_peaks = [int(k) for k in tracked if int(k) in local]
    if sacrum_top_slice is not None and region == "lumbar":
        # first, so that a disc missed above L5-S1 is looked for from where L5-S1 really is
        levels = _place_disc_above_sacrum(levels, rise, faint_peaks, by_slice, slice_spacing_mm, sacrum_top_slice)

    def filled(chain: list[LevelCandidate]) -> list[LevelCandidate]:
        chain = sorted(chain + ends, key=lambda lv: lv.slice_index)
        return [lv for lv in _fill_missed_discs(chain, rise, faint_peaks, by_slice, slice_spacing_mm, region)
                if not any(lv is end for end in ends)]

    if foramen_magnum_slice is None:
        return filled(levels)
    # the levels are sorted, so those on C1 and the dens are the highest ones
    n_below_c2 = sum((foramen_magnum_slice - lv.slice_index) * slice_spacing_mm >= foramen_reach.no_disc_mm
                     for lv in levels)
    return filled(levels[:n_below_c2]) + levels[n_below_c2:]


def _disc_at_best_peak(window: Sequence[int], rise: np.ndarray, by_slice: dict[int, SliceCanal],
                       placed_from: str) -> Optional[LevelCandidate]:
    """A disc placed at the window's slice of highest rise (the first of equals), or None for an empty window."""
    if not window:
        return None
    k = max(window, key=lambda i: rise[i])
    canal = by_slice[k]
    return LevelCandidate(slice_index=k, box_ij=canal.box_ij, score=canal.score,
                          disc_probability=canal.disc_probability, slices=(k,), placed_from=placed_from)


def l5_s1_window_mm(slice_spacing_mm: float) -> tuple[float, float]:
    """Where L5-S1 lies, in mm above the top slice of the sacral alae (below it is negative)."""
    return -INSIDE_SACRUM_MM, L5_S1_ABOVE_SACRUM_MM + slice_spacing_mm / 2.0


def lowest_slice_above_sacrum(sacrum_top_slice: int, slice_spacing_mm: float) -> int:
    """The lowest slice not inside the sacrum: those more than INSIDE_SACRUM_MM below the top of its alae are."""
    return sacrum_top_slice - int(np.floor(INSIDE_SACRUM_MM / slice_spacing_mm))


def _place_disc_above_sacrum(levels: list[LevelCandidate], rise: np.ndarray, faint_peaks: Sequence[int],
                             by_slice: dict[int, SliceCanal], slice_spacing_mm: float,
                             sacrum_top_slice: int) -> list[LevelCandidate]:
    """Place L5-S1 just above the sacral alae when no disc was found there.

    L5-S1 sits on the sacrum, so a study that shows the alae and tracks the
    canal above them holds it, however faint its evidence (a collapsed disc, a
    detector that never saw this pelvis). It is placed at the evidence's highest
    local peak within half a disc of where the anatomy puts it, half a disc above
    the alae; with no peak there, at that place; with no canal tracked in
    ``l5_s1_window_mm``, nowhere. A disc
    found less than a lumbar vertebra (MIN_DISC_SEPARATION_MM) above the placed
    one lies in L5's body: the landmark outranks that peak, as bone evidence
    outranks the detector in ``_one_per_vertebra``.
    """
    low, high = l5_s1_window_mm(slice_spacing_mm)

    def height_mm(k: int) -> float:
        return (k - sacrum_top_slice) * slice_spacing_mm

    if any(low <= height_mm(lv.slice_index) <= high for lv in levels):
        return levels
    # the disc's middle is half a disc above the alae's top; a faint peak counts only within half a disc of
    # that (a noise peak a slice higher, in L5's body, does not), else the disc is placed where the anatomy
    # puts it: the evidence may only rise towards a false peak in L5's body, or stay flat
    expected = DISC_HEIGHT_MM["lumbar"] / 2.0
    near = [k for k in faint_peaks if abs(height_mm(k) - expected) <= expected and low <= height_mm(k) <= high]
    tracked = [k for k in by_slice if low <= height_mm(k) <= high]
    nearest = min(tracked, key=lambda k: (abs(height_mm(k) - expected), k), default=None)
    placed = _disc_at_best_peak(near or ([] if nearest is None else [nearest]), rise, by_slice, "sacrum")
    if placed is None:
        return levels
    kept = [lv for lv in levels
            if (lv.slice_index - placed.slice_index) * slice_spacing_mm >= MIN_DISC_SEPARATION_MM["lumbar"]
            or lv.slice_index < placed.slice_index]
    return sorted(kept + [placed], key=lambda lv: lv.slice_index)


def _fill_missed_discs(levels: list[LevelCandidate], rise: np.ndarray, faint_peaks: Sequence[int],
                       by_slice: dict[int, SliceCanal], slice_spacing_mm: float,
                       region: str) -> list[LevelCandidate]:
    """Add a disc where two found ones lie a whole vertebra too far apart.

    The spine is a chain of vertebrae of slowly changing height, so a gap of
    MISSED_DISC_GAP typical spacings or more holds a disc the evidence did not
    raise above its threshold (an unfamiliar contrast, a degenerate disc). It is
    placed at the highest local peak of the evidence near where the spacing puts
    it; with no peak there, none is added. Without a known region the spacing
    is not known, and nothing is added.
    """
    if region not in TYPICAL_DISC_SPACING_MM or len(levels) < 2:
        return levels
    typical = TYPICAL_DISC_SPACING_MM[region]
    filled = [levels[0]]
    for lower, upper in zip(levels, levels[1:]):
        gap_mm = (upper.slice_index - lower.slice_index) * slice_spacing_mm
        missed = int(round(gap_mm / typical)) - 1 if gap_mm >= MISSED_DISC_GAP * typical else 0
        step = (upper.slice_index - lower.slice_index) / (missed + 1)
        for j in range(1, missed + 1):
            expected = lower.slice_index + j * step
            placed = _disc_at_best_peak([k for k in faint_peaks if abs(k - expected) <= step / 4.0], rise,
                                        by_slice, "spacing")
            if placed is not None:
                filled.append(placed)
        filled.append(upper)
    return filled


def _one_per_vertebra(levels: list[LevelCandidate], slice_spacing_mm: float, separation_mm: float,
                      endplate_gaps: np.ndarray, band_depths: Optional[np.ndarray] = None) -> list[LevelCandidate]:
    """Drop the weaker of two discs closer than ``separation_mm`` until none are; the image's evidence (a gap in
    the bone, a band, then the band's depth) outranks the detector."""
    def weaker(lower: LevelCandidate, upper: LevelCandidate) -> bool:
        """Whether ``lower`` is the weaker of the two (the disc evidence alone: how sure the canal is says nothing
        about which of the two is the disc)."""
        gaps = float(endplate_gaps[lower.slice_index]), float(endplate_gaps[upper.slice_index])
        if gaps[0] != gaps[1]:
            return gaps[0] < gaps[1]
        if band_depths is not None:
            depths = float(band_depths[lower.slice_index]), float(band_depths[upper.slice_index])
            if abs(depths[0] - depths[1]) >= BAND_DEPTH_MARGIN:
                return depths[0] < depths[1]
        return lower.disc_probability < upper.disc_probability

    return drop_closer_than(levels, slice_spacing_mm, separation_mm, weaker)


def drop_closer_than(levels: Sequence[LevelCandidate], slice_spacing_mm: float, separation_mm: float,
                     weaker: Callable[[LevelCandidate, LevelCandidate], bool]) -> list[LevelCandidate]:
    """Of the closest two levels (sorted inferior first), drop the ``weaker(lower, upper)`` one, until none lie
    closer than ``separation_mm``: two discs that close are one."""
    levels = list(levels)
    while len(levels) > 1:
        distances = np.diff([lv.slice_index for lv in levels]) * slice_spacing_mm
        i = int(np.argmin(distances))
        if distances[i] >= separation_mm:
            break
        levels.pop(i if weaker(levels[i], levels[i + 1]) else i + 1)
    return levels


def drop_sacral_level(levels: Sequence[LevelCandidate], slice_spacing_mm: float, region: str,
                      sacrum_found: bool, bend_slice: Optional[int] = None) -> tuple[list[LevelCandidate], list[str]]:
    """Drop a lumbar study's lowest level when it lies too close below the next: a disc remnant in the sacrum.

    The sacrum's segments are fused, but on MR the remnant of the disc between
    S1 and S2 often still shows as a dark band, about 20-25 mm below L5-S1 where
    the lumbar discs lie 30-45 mm apart. Where the study shows no sacral alae
    to place L5-S1 from, a lowest level closer than SACRAL_SPACING_RATIO of the
    spacing of the levels above it to the next is taken for that remnant, unless
    the next is itself too close to the one above it (then one of the two is in
    a vertebral body, and the spacing does not tell which), or unless it lies
    less than SACRAL_BELOW_BEND_MM below where the canal turns back into the
    sacrum (``bend_slice``, ``landmarks.find_lumbosacral_bend``): the remnant
    lies a sacral segment below L5-S1, which lies at the bend or below it.
    Returns the levels kept and a warning for a level dropped.
    """
    levels = list(levels)
    if region != "lumbar" or sacrum_found or len(levels) < SACRAL_MIN_LEVELS:
        return levels, []
    if bend_slice is not None and (bend_slice - levels[0].slice_index) * slice_spacing_mm < SACRAL_BELOW_BEND_MM:
        return levels, []
    ks = [lv.slice_index for lv in levels]
    spacings = np.diff(ks) * slice_spacing_mm
    typical = float(np.median(spacings[1:1 + SACRAL_SPACINGS_ABOVE]))
    lowest = spacings[0]
    if lowest >= SACRAL_SPACING_RATIO * typical or lowest + spacings[1] < NEXT_TWO_SPACING_RATIO * typical:
        return levels, []
    return levels[1:], [f"No level at slice {ks[0]}: it lies {lowest:.0f} mm below the next, under "
                        f"{SACRAL_SPACING_RATIO:.0%} of the {typical:.0f} mm between the lumbar levels above: "
                        "the remnant of a disc inside the sacrum rather than L5-S1. Add it back if it is a disc."]


def drop_below_lumbosacral_bend(levels: Sequence[LevelCandidate], slice_spacing_mm: float, region: str,
                                bend_slice: Optional[int], sacrum_found: bool) -> tuple[list[LevelCandidate], list[str]]:
    """Drop a lumbar study's levels that lie BELOW_LUMBOSACRAL_BEND_MM or more below the canal's bend into the sacrum.

    Where the study shows the sacral alae, the sacrum itself places L5-S1 and this
    is not needed. Returns the levels kept and a warning naming those dropped.
    """
    levels = list(levels)
    if region != "lumbar" or sacrum_found or bend_slice is None:
        return levels, []
    below = [lv for lv in levels if (bend_slice - lv.slice_index) * slice_spacing_mm > BELOW_LUMBOSACRAL_BEND_MM]
    if not below:
        return levels, []
    return [lv for lv in levels if lv not in below], [
        f"No level at slice{'s' if len(below) > 1 else ''} {', '.join(str(lv.slice_index) for lv in below)}: more "
        f"than {BELOW_LUMBOSACRAL_BEND_MM:.0f} mm below where the canal turns back into the sacrum (slice "
        f"{bend_slice}), so {'remnants of discs' if len(below) > 1 else 'the remnant of a disc'} inside the sacrum "
        "rather than L5-S1. Add one back if it is a disc."]


def drop_bandless_end_levels(levels: Sequence[LevelCandidate], contrast: np.ndarray, slice_spacing_mm: float,
                              region: str) -> tuple[list[LevelCandidate], list[str]]:
    """Drop a lumbar MR study's levels near either end of the study where the column in front shows no disc.

    ``contrast`` is ``landmarks.band_contrast`` of the study, one value per
    slice. A level within END_LEVEL_MM of the first or last slice goes when the
    contrast stays under END_LEVEL_MIN_CONTRAST within END_LEVEL_BAND_REACH_MM
    of it; where the contrast cannot be read (NaN) it stays. Only lumbar studies
    (a cervical disc's band is often shallow: 63 of 896 neck levels below C2
    read under 0.1) with slices up to END_LEVEL_MAX_SLICE_MM. Returns the levels
    kept and a warning naming those dropped.
    """
    levels = list(levels)
    if region != "lumbar" or slice_spacing_mm > END_LEVEL_MAX_SLICE_MM:
        return levels, []
    n = len(contrast)
    # the slices no further from the level than the reach, and at least its neighbours
    reach = max(1, int(END_LEVEL_BAND_REACH_MM // slice_spacing_mm))
    kept, warnings = [], []
    for level in levels:
        k = level.slice_index
        inside_mm = min(k, n - 1 - k) * slice_spacing_mm
        near = contrast[max(0, k - reach):k + reach + 1]
        if inside_mm > END_LEVEL_MM or np.isnan(near).all() or np.nanmax(near) >= END_LEVEL_MIN_CONTRAST:
            kept.append(level)
            continue
        warnings.append(f"No level at slice {k}: it lies {inside_mm:.0f} mm inside an end of the study, where the "
                        "detector's disc sign is read from one side only, and the vertebral column in front of the "
                        "canal shows no disc there (no dark band). Add it back if it is a disc.")
    return kept, warnings


def drop_cisterns(levels: Sequence[LevelCandidate], pixel_spacing_mm: Sequence[float],
                  region: str) -> tuple[list[LevelCandidate], list[str]]:
    """Drop the cervical levels whose canal is a cistern: far deeper than the study's other levels, at its top.

    The cervical canal keeps its depth from level to level (12-18 mm), while at
    the foramen magnum the CSF opens into the cisterna magna behind the medulla,
    where a whole-neck scan still shows bright CSF and dark bands (C1, the
    dens) but no disc. The cistern lies above the spine, so only the highest
    levels are read, down to the first that is not so deep (a deep canal lower
    down, in the thoracic spine of a whole-neck scan, is no cistern). Returns
    the levels kept and a warning per level dropped.
    """
    # the canal's depth is read at the levels the disc evidence found: one placed from the spacing of the discs
    # around it (``_fill_missed_discs``) is where a disc should be, not more of the canal
    found = [box_depth_mm(lv.box_ij, pixel_spacing_mm) for lv in levels if not lv.placed_from]
    if region != "cervical" or len(found) < CISTERN_MIN_LEVELS:
        return list(levels), []
    median = float(np.median(found))
    kept, warnings = list(levels), []
    # the levels are sorted inferior first
    while kept:
        d = box_depth_mm(kept[-1].box_ij, pixel_spacing_mm)
        if d <= CISTERN_DEPTH_RATIO * median:
            break
        level = kept.pop()
        warnings.insert(0, f"No level at slice {level.slice_index}: the canal there is {d:.0f} mm deep, "
                           f"{d / median:.1f} times the levels' median of {median:.0f} mm: a cistern above the "
                           "spine rather than a disc.")
    return kept, warnings


def check_level_name(name: str) -> str:
    """A disc name as the user typed it ("l4-l5", "L4/L5") in its canonical form, or a clear error."""
    canonical = name.strip().upper().replace("/", "-")
    if canonical not in SPINE_DISCS:
        raise InputError(f"{name!r} is not a disc level name; use names like L4-L5 or C5-C6.")
    return canonical


def name_levels(n_levels: int, region: str, anchor: Optional[tuple[int, str]] = None) -> list[str]:
    """Names for ``n_levels`` consecutive discs listed inferior first.

    By default the lowest lumbar disc is L5-S1, the lowest thoracic one T12-L1
    and the highest cervical disc C2-C3. ``anchor = (position, name)`` says the disc at ``position``
    (0 = most inferior; -1 = most superior) is ``name``; all others follow from it. Discs beyond
    the ends of the spine get names like "below L5-S1 (1)".
    """
    if region not in REGIONS:
        raise InputError(f"Region must be one of {', '.join(REGIONS)}, not {region!r}.")
    if anchor is not None:
        anchor = (anchor[0], check_level_name(anchor[1]))
    if n_levels == 0:
        return []
    position, name = anchor if anchor is not None else DEFAULT_ANCHORS[region]
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


def region_of_disc(name: str) -> str:
    """The region of a named disc: that of the vertebra above it (T12-L1 is thoracic, L5-S1 lumbar)."""
    if name not in SPINE_DISCS:
        return UNKNOWN_REGION
    return {"C": "cervical", "T": "thoracic", "L": "lumbar"}[name[0]]


@dataclass
class LevelNaming:
    """The names of the discs found, and how far they can be trusted.

    ``anchored`` says the names rest on a landmark in the study or on the user's
    anchor, not on where the study happens to end. ``confidence`` is one of
    "high", "low" or "none" per level. ``kept`` lists the candidates that are
    levels: discs found inside the sacrum are not.
    """

    kept: list[LevelCandidate]
    names: list[str]
    anchored: bool
    landmark: str
    confidence: list[str]
    note: str
    warnings: list[str] = field(default_factory=list)


def unanchored_names(n_levels: int) -> list[str]:
    """Names that claim no level: "disc 1" is the most inferior disc found."""
    return [f"disc {p + 1}" for p in range(n_levels)]


def name_from_anatomy(candidates: Sequence[LevelCandidate], region: str, slice_spacing_mm: float,
                      sacrum_top_slice: Optional[int] = None,
                      anchor: Optional[tuple[int, str]] = None,
                      foramen_magnum_slice: Optional[int] = None,
                      lowest_rib_slice: Optional[int] = None,
                      foramen_reach: ForamenReach = MR_FORAMEN_REACH,
                      first_rib_slice: Optional[int] = None) -> LevelNaming:
    """Name the discs (inferior first) from the user's anchor, else a landmark, else count them unanchored.

    ``sacrum_top_slice`` is the most superior slice showing the sacral alae, where
    the study contains the sacrum. Discs found inside the sacrum are dropped
    with a warning: they are the fused sacral segments, not levels.
    ``foramen_magnum_slice`` is where the canal opens into the cisterna magna,
    where a cervical study reaches the skull base. Discs found within
    ``foramen_reach.no_disc_mm`` below it (or above it) are dropped with a warning: they are
    C1 and C2, which have no disc; ``foramen_reach`` also says how far below it the
    highest disc is C2-C3, and C3-C4 (CT_FORAMEN_REACH where the opening is read
    on CT, at its back rim). ``lowest_rib_slice`` is where the heads of the
    lowest pair of ribs lie (``landmarks.find_lowest_rib``), taken as the 12th:
    the highest disc within T12_L1_BELOW_RIB_MM below it is T12-L1, in a lumbar
    or thoracic study without the sacrum. Where the sacrum names the levels,
    ribs that disagree with it are a warning: a transitional vertebra, or 11 or
    13 pairs of ribs. ``first_rib_slice`` is where the heads of the highest pair
    of ribs lie below the rib-free neck (``landmarks.find_first_rib``), taken as
    the first: the lowest disc C7_T1_ABOVE_FIRST_RIB_MM above them is C7-T1, in a
    cervical or thoracic study. It outranks the foramen magnum, whose count runs
    past C1 and C2 and down the neck, and where the two disagree a warning says
    so. A
    disc placed from the spacing of its neighbours, or above the sacrum, is named
    with the rest, with a warning.
    """
    naming = _name_from_anatomy(candidates, region, slice_spacing_mm, sacrum_top_slice, anchor,
                                foramen_magnum_slice if region == "cervical" else None,
                                lowest_rib_slice if region in ("lumbar", "thoracic") else None, foramen_reach,
                                first_rib_slice if region in ("cervical", "thoracic") else None)
    why = {"spacing": "where the spacing of the discs around it says one was missed; the disc evidence there is weak",
           "sacrum": "just above the sacrum, where L5-S1 lies; the disc evidence there is weak",
           "end": "on the study's end slice, where its disc evidence is strongest; the disc may lie partly outside "
                  "the study"}
    naming.warnings.extend(
        f"{name} (slice {c.slice_index}) is placed {why[c.placed_from]}, so check it on a sagittal view."
        for name, c in zip(naming.names, naming.kept) if c.placed_from)
    return naming


def _name_from_anatomy(candidates: Sequence[LevelCandidate], region: str, slice_spacing_mm: float,
                       sacrum_top_slice: Optional[int], anchor: Optional[tuple[int, str]],
                       foramen_magnum_slice: Optional[int], lowest_rib_slice: Optional[int] = None,
                       foramen_reach: ForamenReach = MR_FORAMEN_REACH,
                       first_rib_slice: Optional[int] = None) -> LevelNaming:
    kept = list(candidates)
    warnings: list[str] = []

    def below_rib(levels: Sequence[LevelCandidate]) -> Optional[int]:
        """The position of the level the lowest ribs make T12-L1: the highest one near below their heads."""
        if lowest_rib_slice is None:
            return None
        low, high = T12_L1_BELOW_RIB_MM
        fits = [i for i, c in enumerate(levels) if low <= (lowest_rib_slice - c.slice_index) * slice_spacing_mm <= high]
        return fits[-1] if fits else None

    def rib_disagrees(names: Sequence[str], levels: Sequence[LevelCandidate]) -> list[str]:
        """A warning where the lowest ribs put T12-L1 elsewhere than the names from the sacrum do."""
        i = below_rib(levels)
        if i is None or names[i] == "T12-L1":
            return []
        return [f"The lowest pair of ribs, taken as the 12th (their heads on slice {lowest_rib_slice}), makes the "
                f"level on slice {levels[i].slice_index} T12-L1, where the count from the sacrum makes it {names[i]}: a "
                "transitional vertebra (L6, or a sacralised L5) or 11 or 13 pairs of ribs. Check the count on a "
                "sagittal view and re-anchor if needed."]

    def above_first_rib(levels: Sequence[LevelCandidate]) -> Optional[int]:
        """The position of the level the first ribs make C7-T1: the lowest one near above their heads."""
        if first_rib_slice is None:
            return None
        low, high = C7_T1_ABOVE_FIRST_RIB_MM
        fits = [i for i, c in enumerate(levels) if low <= (c.slice_index - first_rib_slice) * slice_spacing_mm <= high]
        return fits[0] if fits else None

    def below_foramen_mm(c: LevelCandidate) -> float:
        return (foramen_magnum_slice - c.slice_index) * slice_spacing_mm

    if foramen_magnum_slice is not None:
        above_c2_c3 = [c for c in kept if below_foramen_mm(c) < foramen_reach.no_disc_mm]
        if above_c2_c3:
            warnings.append(f"{len(above_c2_c3)} disc-like place(s) less than {foramen_reach.no_disc_mm:.0f} mm below "
                            f"the foramen magnum (slice {', '.join(str(c.slice_index) for c in above_c2_c3)}) are "
                            "not levels: C1 and C2 lie there, with no disc.")
            kept = [c for c in kept if c not in above_c2_c3]
    if sacrum_top_slice is not None:
        inside = [c for c in kept if c.slice_index < lowest_slice_above_sacrum(sacrum_top_slice, slice_spacing_mm)]
        if inside:
            warnings.append(f"{len(inside)} disc-like place(s) inside the sacrum (slice "
                            f"{', '.join(str(c.slice_index) for c in inside)}) are not levels.")
            kept = [c for c in kept if c not in inside]
    n = len(kept)
    if n == 0:
        return LevelNaming([], [], False, "", [], "No disc level was found.", warnings)
    if anchor is not None:
        names = name_levels(n, region if region in REGIONS else "lumbar", anchor)
        which = "the highest disc found" if anchor[0] == -1 else f"disc {anchor[0] + 1} from the bottom"
        return LevelNaming(kept, names, True, "user", ["high"] * n,
                           f"Numbered from the user's anchor: {which} is {anchor[1]}.", warnings)
    if sacrum_top_slice is not None and region == "lumbar":
        gap_mm = (kept[0].slice_index - sacrum_top_slice) * slice_spacing_mm
        if gap_mm <= l5_s1_window_mm(slice_spacing_mm)[1]:
            names = name_levels(n, "lumbar", (0, "L5-S1"))
            return LevelNaming(kept, names, True, "sacrum", ["high"] * n, (
                "Named from the sacrum: the lowest disc above the sacral alae is L5-S1. The count assumes five "
                "lumbar vertebrae; with a transitional vertebra (L6, or a sacralised L5) re-anchor the levels."),
                warnings + rib_disagrees(names, kept))
        if gap_mm <= L4_L5_ABOVE_SACRUM_MM:
            names = name_levels(n, "lumbar", (0, "L4-L5"))
            return LevelNaming(kept, names, True, "sacrum", ["low"] * n, (
                f"Named from the sacrum: no disc was found just above it, and the lowest disc found lies "
                f"{gap_mm:.0f} mm above the sacral alae, where L4-L5 is expected. Check L5-S1 on a sagittal "
                "view."), warnings + ["L5-S1 was not found above the sacrum; the lowest level is taken as L4-L5."]
                + rib_disagrees(names, kept))
    rib_level = below_rib(kept)
    if rib_level is not None:
        names = name_levels(n, "lumbar", (rib_level, "T12-L1"))
        # low: the 12th ribs may be missing or short, and a 13th pair (on L1) is not told from them
        return LevelNaming(kept, names, True, "lowest rib", ["low"] * n, (
            f"Named from the lowest pair of ribs, taken as the 12th: their heads lie on slice {lowest_rib_slice}, on "
            f"T12, so the highest disc just below them (slice {kept[rib_level].slice_index}) is T12-L1. With 11 or 13 "
            "pairs of ribs the names shift: check them against a sagittal view that shows the sacrum or C2."),
            warnings)

    def foramen_names(levels: Sequence[LevelCandidate]) -> Optional[list[str]]:
        """The names the foramen magnum gives: the highest level C2-C3 or C3-C4 by how far below it lies."""
        if foramen_magnum_slice is None:
            return None
        below_mm = below_foramen_mm(levels[-1])
        if below_mm <= foramen_reach.c2_c3_mm:
            return name_levels(len(levels), "cervical", (-1, "C2-C3"))
        if below_mm <= foramen_reach.c3_c4_mm:
            return name_levels(len(levels), "cervical", (-1, "C3-C4"))
        return None

    first_rib_level = above_first_rib(kept)
    if first_rib_level is not None:
        names = name_levels(n, "cervical", (first_rib_level, "C7-T1"))
        from_foramen = foramen_names(kept)
        disagree = ([] if from_foramen is None or from_foramen == names else [(
            f"The foramen magnum (slice {foramen_magnum_slice}) makes the highest level {from_foramen[-1]}, where "
            f"the first ribs make it {names[-1]}: a disc missed or found twice between them, or a rib on C7. Check "
            "the count on a sagittal view and re-anchor if needed.")])
        # low: a first rib too short to be followed, or a rib on C7, shifts the names
        return LevelNaming(kept, names, True, "first rib", ["low"] * n, (
            f"Named from the first pair of ribs, the highest in the study, below a neck that bears none: their heads "
            f"lie on slice {first_rib_slice}, on T1, so the lowest disc just above them (slice "
            f"{kept[first_rib_level].slice_index}) is C7-T1. With a rib on C7 the names shift: check them against a "
            "sagittal view that shows C2."), warnings + disagree)
    if foramen_magnum_slice is not None:
        below_mm = below_foramen_mm(kept[-1])
        names = foramen_names(kept)
        # low: the opening is read off the canal's depth (MR) or the bone behind it (CT), checked on a few necks
        if names is not None and names[-1] == "C2-C3":
            return LevelNaming(kept, names, True, "foramen magnum", ["low"] * n, (
                f"Named from the foramen magnum: the highest disc, {below_mm:.0f} mm below it, is C2-C3 (C1 and C2 "
                "lie between them). Check C2-C3 on a sagittal view."), warnings)
        if names is not None:
            return LevelNaming(kept, names, True, "foramen magnum", ["low"] * n, (
                f"Named from the foramen magnum: no disc was found where C2-C3 lies, and the highest disc found, "
                f"{below_mm:.0f} mm below it, is C3-C4. Check C2-C3 on a sagittal view."), warnings + [
                    f"C2-C3 was not found: the highest disc found lies {below_mm:.0f} mm below the foramen magnum, "
                    "where C3-C4 is expected, and is taken as C3-C4."])
        warnings.append(f"The highest disc found lies {below_mm:.0f} mm below the foramen magnum, where C4-C5 or a "
                        "lower disc is expected, so C2-C3 was not found and the names are not anchored to it.")
    if region in REGIONS:
        names = name_levels(n, region)
        start = names[0] if DEFAULT_ANCHORS[region][0] == 0 else names[-1]
        end = "lowest" if DEFAULT_ANCHORS[region][0] == 0 else "highest"
        return LevelNaming(kept, names, False, "", ["none"] * n, (
            "Not anchored: the study shows no landmark (the sacrum, the lowest or the first ribs on CT, or the "
            f"foramen magnum above C2) to name the levels from, so they are counted from the {end} disc found, "
            f"taken as {start}. Check them against a sagittal view and re-anchor (\"This level is...\")."), warnings)
    return LevelNaming(kept, unanchored_names(n), False, "", ["none"] * n, (
        "Not anchored: the spine region could not be told from the slices, so the levels are numbered disc 1, "
        "disc 2, ... from the bottom. Set the region, or re-anchor one level (\"This level is...\")."), warnings)
