"""Landmarks read from the bone around the canal on CT: the gaps between endplates that are discs."""

import numpy as np
import SimpleITK as sitk

from SpineStenosisGraderLib.inference.landmarks import disc_back_density, endplate_gaps
from SpineStenosisGraderLib.inference.levels import SliceCanal
from SpineStenosisGraderLib.study.volume import to_axial_stack

CANAL = (40.0, 50.0, 60.0, 66.0)  # i0, j0, i1, j1 in 1 mm pixels; anterior is smaller j


def spine_ct(densities, slice_mm=3.0):
    """A CT whose bone just in front of the canal has the given HU per slice, soft tissue elsewhere."""
    n = len(densities)
    volume = np.full((n, 100, 100), 40.0, dtype=np.float32)
    for k, hu in enumerate(densities):
        volume[k, 36:50, 42:58] = hu
    image = sitk.GetImageFromArray(volume)
    image.SetSpacing((1.0, 1.0, slice_mm))
    stack = to_axial_stack(image)
    return stack, [SliceCanal(k, CANAL, 0.9, 0.1) for k in range(n)]


def vertebrae(discs, n):
    # body 120 HU; endplates 300 HU next to each disc (80 HU); the middle of each body darker (60 HU),
    # where the basivertebral veins leave it: a gap as deep as a disc's, but between cancellous bone
    densities = np.full(n, 120.0)
    for d in discs:
        densities[d] = 80.0
        densities[[d - 1, d + 1]] = 300.0
        if d + 5 < n:
            densities[d + 5] = 60.0
    return densities


def test_the_gaps_between_endplates_are_the_discs_not_the_middle_of_a_body():
    discs = [5, 15, 25, 35]
    stack, canals = spine_ct(vertebrae(discs, 40))
    assert np.nonzero(endplate_gaps(stack, canals))[0].tolist() == discs


def test_the_density_is_read_in_front_of_the_canal_on_slices_with_a_canal_only():
    densities = vertebrae([5, 15], 20)
    stack, canals = spine_ct(densities)
    canals[7] = None
    measured = disc_back_density(stack, canals)
    assert np.isnan(measured[7])
    assert np.array_equal(np.delete(measured, 7), np.delete(densities, 7))


def test_a_gap_needs_an_endplate_on_both_sides():
    densities = vertebrae([5, 15, 25], 30)
    densities[[14]] = 120.0  # no endplate below the disc at slice 15
    stack, canals = spine_ct(densities)
    assert np.nonzero(endplate_gaps(stack, canals))[0].tolist() == [5, 25]
