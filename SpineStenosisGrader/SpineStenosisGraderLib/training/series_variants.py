"""Short and thick series made from a real labelled scan, to measure what a whole scan cannot.

Users load series that a labelled research scan is not: a 40 mm CT series
through one disc, a clinical axial T2 with 3-4 mm slices, a sagittal T2 with
3 mm slices read as axial slices, a T2* of the neck whose field of view holds
little more than the spine. Cutting a real scan into short windows, averaging
its slices into thick ones (or its columns into thick sagittal slices), and
cropping it to its canal give such series with the scan's own labels, so the
level finding can be scored on them (``evaluation.evaluate_series_variants``).
The labels are carried over in patient coordinates, so they stay right
whatever the window, thickness or field of view.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
import SimpleITK as sitk

from ..study.volume import AxialStack

#: window lengths (mm) of the short series, the step between their starts, and how far past the outermost
#: discs the windows reach
SHORT_SERIES_MM = (40.0, 60.0, 90.0)
SHORT_SERIES_STEP_MM = 15.0
SHORT_SERIES_MARGIN_MM = 30.0
#: slice thicknesses (mm) of the thick series; each is made at two offsets, so the discs fall differently
THICK_SERIES_MM = (3.0, 4.5)
#: the short thick series: windows this long (mm), every SHORT_SERIES_STEP_MM, cut into slices about this thick,
#: as a CT series through one or two discs often is (the issue's held-out report: a 40 mm CT series through
#: T11-T12 found no level). Measured apart from the other series, whose pooled figures stay comparable
SHORT_THICK_SERIES_MM = (40.0, 5.0)
#: the left-right slice thickness (mm) of the sagittal series: the thickest sagittal slices the tool reads as
#: axial slices (``volume.COARSE_PIXEL_MM``)
SAGITTAL_SERIES_MM = 3.0
#: the cropped series reaches this far (mm) beyond the labelled canal on every side: the field of view of a
#: cord-centred protocol, which cuts the body's outline
FIELD_OF_VIEW_MARGIN_MM = 20.0
#: a crop that keeps more than this share of the slice is no tighter than the scan itself, and is not made
FIELD_OF_VIEW_MAX_SHARE = 0.75


@dataclass
class SeriesVariant:
    """A series made from a scan: what it is, its stack, and the scan's discs as slice indices in it."""

    description: str
    stack: AxialStack
    discs: dict[str, float]


def disc_slices_in(stack: AxialStack, variant: AxialStack, discs: dict[str, float]) -> dict[str, float]:
    """The scan's disc slice indices carried into ``variant`` through patient space."""
    if not discs:
        return {}
    names = list(discs)
    points = stack.index_to_lps(np.array([[0.0, 0.0, discs[n]] for n in names]))
    return {n: float(k) for n, k in zip(names, variant.lps_to_index(points)[:, 2])}


def cut(stack: AxialStack, first: int, stop: int) -> AxialStack:
    """Slices ``first`` to ``stop`` (exclusive) as a series of their own, in place in patient space."""
    if not 0 <= first < stop <= stack.n_slices:
        raise ValueError(f"slices {first}:{stop} are not inside a {stack.n_slices}-slice stack")
    return AxialStack(stack.image[:, :, first:stop], source=f"{stack.source} slices {first}-{stop - 1}")


def _runs_averaged(stack: AxialStack, axis: int, factor: int, offset: int, n: int, source: str) -> AxialStack:
    """``n`` runs of ``factor`` voxels along image axis ``axis`` (0: i, left to right; 2: k, the slices), from
    ``offset``, each averaged into one voxel at the centre of its run, so a label keeps its place in patient space.
    """
    array = sitk.GetArrayFromImage(stack.image).astype(np.float32)  # [k, j, i]
    along = 2 - axis
    taken = np.moveaxis(array, along, 0)[offset:offset + n * factor]
    runs = np.moveaxis(taken.reshape(n, factor, *taken.shape[1:]).mean(axis=1), 0, along)
    image = sitk.GetImageFromArray(np.ascontiguousarray(runs))
    image.SetDirection(stack.image.GetDirection())
    spacing = list(stack.spacing)
    spacing[axis] *= factor
    image.SetSpacing(tuple(spacing))
    centre = [0.0, 0.0, 0.0]
    centre[axis] = offset + (factor - 1) / 2.0
    image.SetOrigin(stack.image.TransformContinuousIndexToPhysicalPoint(tuple(centre)))
    return AxialStack(image, source=source)


def thicken(stack: AxialStack, thickness_mm: float, offset: int = 0) -> AxialStack:
    """Each run of slices about ``thickness_mm`` thick averaged into one, as a scanner's thick slice is.

    The averaged slice lies at the centre of its run, so a label's position in
    patient space does not move.
    """
    factor = max(1, int(round(thickness_mm / stack.spacing[2])))
    n = (stack.n_slices - offset) // factor
    if n < 1:
        raise ValueError(f"{stack.n_slices} slices make no {thickness_mm} mm slice from offset {offset}")
    return _runs_averaged(stack, 2, factor, offset, n, f"{stack.source} as {stack.spacing[2] * factor:.1f} mm slices")


def as_sagittal_slices(stack: AxialStack, thickness_mm: float) -> AxialStack:
    """The scan as a sagittal acquisition with slices at most ``thickness_mm`` thick gives it: each run of columns
    that wide or less, left to right, averaged into one at the centre of its run, so a label keeps its place in
    patient space.
    """
    # at most: a thicker series than the reader takes (volume.COARSE_PIXEL_MM) is not one a user can grade
    factor = max(1, int(np.floor(thickness_mm / stack.spacing[0] + 1e-6)))
    n = stack.image.GetSize()[0] // factor
    if n < 1:
        raise ValueError(f"a slice {stack.image.GetSize()[0]} columns wide makes no {thickness_mm} mm sagittal slice")
    source = f"{stack.source} as {stack.spacing[0] * factor:.1f} mm sagittal slices"
    return _runs_averaged(stack, 0, factor, 0, n, source)


def short_windows(n_slices: int, slice_spacing_mm: float, disc_slices: Sequence[float],
                  lengths_mm: Sequence[float] = SHORT_SERIES_MM) -> list[tuple[int, int]]:
    """(first, stop) windows of each length, every SHORT_SERIES_STEP_MM, around the discs; none as long as the scan."""
    if not len(disc_slices):
        return []
    low = max(0, int(np.floor(min(disc_slices) - SHORT_SERIES_MARGIN_MM / slice_spacing_mm)))
    high = min(n_slices, int(np.ceil(max(disc_slices) + SHORT_SERIES_MARGIN_MM / slice_spacing_mm)))
    step = max(1, int(round(SHORT_SERIES_STEP_MM / slice_spacing_mm)))
    windows = []
    for length_mm in lengths_mm:
        length = int(round(length_mm / slice_spacing_mm))
        if length >= n_slices:
            continue
        for first in range(low, max(low + 1, high - length + 1), step):
            windows.append((first, min(n_slices, first + length)))
    return windows


def short_thick_series(stack: AxialStack, discs: dict[str, float],
                       around: Optional[Sequence[float]] = None) -> list[SeriesVariant]:
    """The scan's SHORT_THICK_SERIES_MM windows, each averaged into slices about that thick, with its discs.

    The windows lie around the slices ``around`` (by default the discs), as in
    ``series_variants``. None for a scan with slices over 3.3 mm, two of which
    average to nearer 7 mm than 5: its own short windows are such series.
    """
    length_mm, thickness_mm = SHORT_THICK_SERIES_MM
    if int(round(thickness_mm / stack.spacing[2])) < 2:
        return []
    around = list(discs.values()) if around is None else list(around)
    out = []
    for first, stop in short_windows(stack.n_slices, stack.spacing[2], around, (length_mm,)):
        variant = thicken(cut(stack, first, stop), thickness_mm)
        out.append(SeriesVariant(f"{(stop - first) * stack.spacing[2]:.0f} mm from slice {first} in "
                                 f"{variant.spacing[2]:.1f} mm slices", variant, disc_slices_in(stack, variant, discs)))
    return out


def crop_to_canal(stack: AxialStack, canal_boxes: dict[int, Sequence[float]],
                  margin_mm: float = FIELD_OF_VIEW_MARGIN_MM) -> Optional[AxialStack]:
    """The scan cropped in the slice plane to ``margin_mm`` around every labelled canal box, in place in patient space.

    None where the crop would keep more than FIELD_OF_VIEW_MAX_SHARE of the slice.
    """
    if not canal_boxes:
        return None
    boxes = np.array(list(canal_boxes.values()), dtype=float)
    margin = np.array([margin_mm / stack.spacing[0], margin_mm / stack.spacing[1]])
    size = np.array(stack.image.GetSize()[:2])
    low = np.maximum(0, np.floor(boxes[:, :2].min(axis=0) - margin)).astype(int)
    high = np.minimum(size, np.ceil(boxes[:, 2:].max(axis=0) + margin)).astype(int)
    if np.prod(high - low) > FIELD_OF_VIEW_MAX_SHARE * np.prod(size):
        return None
    # SimpleITK moves the origin with the crop, so every voxel keeps its place in patient space
    return AxialStack(stack.image[int(low[0]):int(high[0]), int(low[1]):int(high[1]), :],
                      source=f"{stack.source} cropped to {margin_mm:.0f} mm around the canal")


def source_slices(stack: AxialStack, variant: AxialStack) -> np.ndarray:
    """Per slice of ``variant``, the scan slice nearest its centre in patient space: where its references lie."""
    centres = disc_slices_in(variant, stack, {str(k): float(k) for k in range(variant.n_slices)})
    return np.rint([centres[str(k)] for k in range(variant.n_slices)]).astype(int)


def series_variants(stack: AxialStack, discs: dict[str, float],
                    around: Optional[Sequence[float]] = None,
                    canal_boxes: Optional[dict[int, Sequence[float]]] = None) -> list[SeriesVariant]:
    """The short windows, thick series and cropped field of view of a scan, each with the scan's discs carried into it.

    The short windows lie around the slices ``around`` (by default the discs):
    for a scan whose labels give no disc positions, the slices of its labelled
    canal. The crop needs the labelled canal (``canal_boxes``, per slice).
    """
    out = []
    around = list(discs.values()) if around is None else list(around)
    for first, stop in short_windows(stack.n_slices, stack.spacing[2], around):
        variant = cut(stack, first, stop)
        out.append(SeriesVariant(f"{(stop - first) * stack.spacing[2]:.0f} mm from slice {first}", variant,
                                 disc_slices_in(stack, variant, discs)))
    for thickness in THICK_SERIES_MM:
        factor = int(round(thickness / stack.spacing[2]))
        if factor < 2:
            continue  # the scan's slices are that thick already
        for offset in sorted({0, factor // 2}):
            variant = thicken(stack, thickness, offset)
            out.append(SeriesVariant(f"{variant.spacing[2]:.1f} mm slices, offset {offset}", variant,
                                     disc_slices_in(stack, variant, discs)))
    if np.floor(SAGITTAL_SERIES_MM / stack.spacing[0] + 1e-6) >= 2:
        variant = as_sagittal_slices(stack, SAGITTAL_SERIES_MM)
        out.append(SeriesVariant(f"{variant.spacing[0]:.1f} mm sagittal slices", variant,
                                 disc_slices_in(stack, variant, discs)))
    cropped = crop_to_canal(stack, canal_boxes or {})
    if cropped is not None:
        width, height = (n * s for n, s in zip(cropped.image.GetSize()[:2], cropped.spacing[:2]))
        out.append(SeriesVariant(f"field of view {width:.0f} x {height:.0f} mm around the canal", cropped,
                                 disc_slices_in(stack, cropped, discs)))
    return out
