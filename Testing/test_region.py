"""The region is read from the anatomy: the outline of a neck or a trunk, the sacrum, the vertebral bodies."""

import numpy as np
import pytest
import SimpleITK as sitk

from SpineStenosisGraderLib.inference.landmarks import Landmark, VertebralBone
from SpineStenosisGraderLib.inference.levels import SliceCanal
from SpineStenosisGraderLib.inference.region import ROOTS_MIN_SAC_FILL, canal_contents, infer_region, neck_above
from SpineStenosisGraderLib.study.volume import to_axial_stack


def body_study(width_mm, fov_mm=400.0, modality="MR", pixel=1.0, slices=8):
    """An axial study of an elliptical body ``width_mm`` across (left-right) in a square field of view."""
    n = int(fov_mm / pixel)
    j, i = np.mgrid[0:n, 0:n]
    a, b = width_mm / 2 / pixel, width_mm / 3 / pixel
    inside = ((i - n / 2) / a) ** 2 + ((j - n / 2) / b) ** 2 <= 1.0
    slice_values = np.where(inside, 400.0, 5.0) if modality == "MR" else np.where(inside, 40.0, -1000.0)
    image = sitk.GetImageFromArray(np.repeat(slice_values[None], slices, axis=0).astype(np.float32))
    image.SetSpacing((pixel, pixel, 3.0))
    stack = to_axial_stack(image)
    canals = [SliceCanal(k, (n / 2 - 8, n / 2 + 5, n / 2 + 8, n / 2 + 20), 0.9, 0.1) for k in range(slices)]
    return stack, canals


@pytest.mark.parametrize("modality", ["MR", "CT"])
def test_a_neck_outline_is_cervical_and_a_trunk_outline_lumbar_but_never_sure(modality):
    stack, canals = body_study(120.0, modality=modality)
    estimate = infer_region(stack, modality, canals, [], None)
    assert estimate.region == "cervical" and estimate.confidence == "low"
    (outline,) = [e for e in estimate.evidence if e.startswith("neck: body outline ")]
    assert abs(float(outline.split()[3]) - 120.0) <= 4.0  # a pixel or two of edge and smoothing
    stack, canals = body_study(320.0, modality=modality)
    estimate = infer_region(stack, modality, canals, [], None)
    assert estimate.region == "lumbar" and estimate.confidence == "low"
    assert any("thoracic not ruled out" in e for e in estimate.evidence)


def test_a_field_of_view_that_cuts_a_narrow_outline_tells_nothing():
    stack, canals = body_study(150.0, fov_mm=100.0)
    estimate = infer_region(stack, "MR", canals, [], None)
    assert estimate.region == "unknown" and estimate.confidence == "none"


def test_vertebral_bodies_tell_the_region_on_ct_and_the_sacrum_makes_it_lumbar():
    stack, canals = body_study(330.0, modality="CT")
    bones = [VertebralBone(k, 10.0, 10.0, width) for k, width in enumerate([17, 18, 0, 19, 18])]
    assert infer_region(stack, "CT", canals, bones, None).region == "unknown"  # a neck's bodies in a trunk
    bones = [VertebralBone(k, 20.0, 20.0, width) for k, width in enumerate([31, 33, 30, 0, 32])]
    estimate = infer_region(stack, "CT", canals, bones, None)
    assert estimate.region == "thoracic" and estimate.confidence == "high"
    sacrum = Landmark("sacrum", (1, 2), 2, "sacral alae")
    assert infer_region(stack, "CT", canals, bones, sacrum).region == "lumbar"
    neck, neck_canals = body_study(120.0, modality="CT")
    assert infer_region(neck, "CT", neck_canals, [], sacrum).region == "unknown"  # a sacrum in a neck


@pytest.mark.parametrize("process_slices, region", [(5, "cervical"), (6, "cervical"), (8, "unknown")])
def test_a_neck_whose_transverse_processes_widen_most_slices_is_still_cervical(process_slices, region):
    # a cervical CT cropped to the spine (no outline): through its transverse processes, which spring from the
    # side of the body in front of the canal, the bone there reads 48 mm across; through the body alone 19 mm.
    # Where the processes hide the body on more than three slices in four, the crop's wider "bodies" and its
    # neck outline disagree
    stack, canals = body_study(120.0, modality="CT", slices=10)
    widths = [48.0] * process_slices + [19.0] * (10 - process_slices)
    bones = [VertebralBone(k, 24.0, 24.0, width) for k, width in enumerate(widths)]
    estimate = infer_region(stack, "CT", canals, bones, None)
    assert estimate.region == region
    if region == "cervical":
        assert estimate.confidence == "high" and "vertebral bodies 19 mm wide on a quarter" in estimate.evidence[1]


def test_a_neck_ct_phantom_is_cervical():
    # the phantom's cervical vertebrae: the transverse processes beside the body, in front of the canal, on
    # more than half the slices (the median of the bone's width there is 47-49 mm)
    from SpineStenosisGraderLib.pipeline import grade_stack
    from SpineStenosisGraderLib.training.phantom import make_study

    for seed in (0, 3):
        result = grade_stack(to_axial_stack(make_study(seed, "CT", "cervical").image), modality="CT")
        assert result.study.region == "cervical", result.study.region_evidence


def canal_study(cord_mm, csf=900.0, tissue=150.0, cord=250.0, slices=12, roots=False, grey_matter=False, clump_mm=0,
                touching_from=None, hazy_from=None, back_wall_from=None):
    """A T2 MR crop (1 mm pixels, no body outline) whose canal, 20 x 14 mm, holds a cord ``cord_mm`` across, or none.

    From slice ``touching_from`` on, the cord spans the canal from side to side, CSF only in front and behind.
    From slice ``hazy_from`` on, a dark smear 5 mm wide (too narrow for a cord) fills the sac's middle, as where a
    thick slice averages the roots: no cord, and no solid sac either.
    From slice ``back_wall_from`` on, a cord 13 mm across, 8 mm deep, lies against the sac's back wall: the thin
    CSF behind it is gone over 7 mm, so the dark around the canal joins it there, as on many slices of a neck.
    """
    n = 80
    j, i = np.mgrid[0:n, 0:n]
    image = np.full((n, n), tissue)
    sac = ((i - 40) / 10.0) ** 2 + ((j - 40) / 7.0) ** 2 <= 1.0
    image[sac] = csf
    if cord_mm:
        image[((i - 40) / (cord_mm / 2)) ** 2 + ((j - 40) / 4.0) ** 2 <= 1.0] = cord
    if grey_matter:  # T2*: the cord's grey matter, in its middle, is brighter than its white matter
        image[38:43, 37:44] = 0.7 * csf
    if roots:  # thin roots, a pixel each, scattered in the back of the sac
        image[44, 34:47:4] = cord
    if clump_mm:  # roots clumped together in the middle of the sac
        image[39:42, 40 - clump_mm // 2:40 + clump_mm - clump_mm // 2] = cord
    image[0, :] = 5.0  # the field of view cuts the outline: it tells nothing
    volume = np.repeat(image[None], slices, axis=0).astype(np.float32)
    if touching_from is not None:
        volume[touching_from:, ((i - 40) / 10.0) ** 2 + ((j - 40) / 4.0) ** 2 <= 1.0] = cord
    if hazy_from is not None:
        volume[hazy_from:, 34:46, 38:43] = cord
    if back_wall_from is not None:
        volume[back_wall_from:, ((i - 40) / 6.5) ** 2 + ((j - 40) / 4.0) ** 2 <= 1.0] = cord
        volume[back_wall_from:, 40:49, 37:44] = cord
    volume[:, :, 0] = 5.0
    itk = sitk.GetImageFromArray(volume)
    itk.SetSpacing((1.0, 1.0, 3.0))
    canals = [SliceCanal(k, (30.0, 33.0, 51.0, 48.0), 0.9, 0.1) for k in range(slices)]
    return to_axial_stack(itk), canals


def test_a_wide_cord_in_bright_csf_is_cervical():
    stack, canals = canal_study(13.0)
    estimate = infer_region(stack, "MR", canals, [], None)
    assert estimate.region == "cervical" and estimate.confidence == "low"
    assert any("spinal cord 13 mm across" in e for e in estimate.evidence)


def test_a_cord_whose_grey_matter_is_bright_is_still_a_cord():
    stack, canals = canal_study(13.0, grey_matter=True)
    assert infer_region(stack, "MR", canals, [], None).region == "cervical"


@pytest.mark.parametrize("enclosed,region", [(10, "cervical"), (6, "unknown")])
def test_a_neck_whose_thin_csf_hides_the_cords_edge_on_most_slices_is_still_cervical(enclosed, region):
    # a whole neck: on most slices the cord touches the canal's sides (thin cervical CSF), so only where
    # CSF surrounds it is its width read; 10 of 30 slices are enough, 6 of 30 are not
    stack, canals = canal_study(13.0, slices=30, touching_from=enclosed)
    estimate = infer_region(stack, "MR", canals, [], None)
    assert estimate.region == region
    if region == "cervical":
        assert any(f"on {enclosed} of 30 slices" in e for e in estimate.evidence)


def test_a_cord_against_the_canals_back_wall_is_read_inside_the_csfs_hull():
    # thin cervical CSF: the cord touches the back of the canal, so the dark around the canal joins it and it is
    # not enclosed; inside the convex hull of the CSF that wraps it from the front and the sides it is read
    stack, canals = canal_study(0.0, back_wall_from=0)
    contents = canal_contents(stack, canals[0])
    assert contents.cord_width_mm == 0 and contents.hull_cord_width_mm == 13.0
    estimate = infer_region(stack, "MR", canals, [], None)
    assert estimate.region == "cervical" and estimate.confidence == "low"
    assert any(e.endswith("on 12 of 12 slices, touching the canal's side in its thin CSF on 12 of them")
               for e in estimate.evidence)


def test_a_cord_read_inside_the_csfs_hull_does_not_outweigh_a_trunks_outline():
    # the same canal in the middle of a trunk 320 mm across: a trunk's thoracic cord or conus, blurred, might
    # read as wide as a neck's against its back wall, so there the hull is not read. The trunk's outline says
    # lumbar, as it did before the hull was read, rather than the outline and the cord disagreeing
    crop, canals = canal_study(0.0, back_wall_from=0)
    n, offset = 400, 160
    j, i = np.mgrid[0:n, 0:n]
    trunk = np.where(((i - n / 2) / 160.0) ** 2 + ((j - n / 2) / 107.0) ** 2 <= 1.0, 150.0, 5.0)
    volume = np.repeat(trunk[None], len(canals), axis=0)
    volume[:, offset:offset + 80, offset:offset + 80] = crop.array
    image = sitk.GetImageFromArray(volume.astype(np.float32))
    image.SetSpacing((1.0, 1.0, 3.0))
    moved = [SliceCanal(c.slice_index, tuple(v + offset for v in c.box_ij), 0.9, 0.1) for c in canals]
    estimate = infer_region(to_axial_stack(image), "MR", moved, [], None)
    assert estimate.region == "lumbar" and estimate.confidence == "low"
    assert any(e.startswith("trunk: body outline") for e in estimate.evidence)
    assert not any("spinal cord" in e for e in estimate.evidence)


@pytest.mark.parametrize("dark", [
    # lying supine, the roots sink to the back of the sac: a band against its back wall, CSF only in front
    [(slice(40, 48), slice(33, 47))],
    # roots fanned across the sac from its left wall: 4 mm deep, shallower than any cord
    [(slice(38, 42), slice(28, 47))],
    # a small clump in the middle of a wide sac, joined to its back wall by one root: too little of the sac
    [(slice(37, 43), slice(37, 44)), (slice(43, 49), slice(40, 41))],
    # a streak of roots 5 mm wide from the middle of the sac to its back wall: narrower than any cord
    [(slice(35, 48), slice(38, 43))],
], ids=["open at the back", "shallow", "small", "narrow"])
def test_nerve_roots_inside_the_csfs_hull_are_no_cord(dark):
    stack, canals = canal_study(0.0)
    volume = stack.array.copy()
    for rows, columns in dark:
        volume[:, rows, columns] = 250.0
    image = sitk.GetImageFromArray(volume.astype(np.float32))
    image.SetSpacing((1.0, 1.0, 3.0))
    contents = canal_contents(to_axial_stack(image), canals[0])
    assert contents.cord_width_mm == 0 and contents.hull_cord_width_mm == 0


@pytest.mark.parametrize("crowded,region", [(4, "lumbar"), (12, "cervical")])
def test_a_cord_read_inside_the_csfs_hull_is_no_neck_where_the_sac_holds_roots_on_other_slices(crowded, region):
    # a short lumbar series through a stenosed level: on 4 of 12 slices crowded roots fill the sac like a cord
    # against its back wall (a third of the slices, enough for a cord); on the other 8 the sac is plain with its
    # roots, which a neck never shows: lumbar. Crowded on all 12, nothing tells it from a neck
    stack, canals = canal_study(0.0, roots=True, back_wall_from=12 - crowded)
    assert infer_region(stack, "MR", canals, [], None).region == region


@pytest.mark.parametrize("clump_mm", [0, 4])
def test_a_sac_of_nerve_roots_is_lumbar(clump_mm):
    stack, canals = canal_study(0.0, roots=True, clump_mm=clump_mm)
    estimate = infer_region(stack, "MR", canals, [], None)
    assert estimate.region == "lumbar" and estimate.confidence == "low"
    assert any("no cord" in e for e in estimate.evidence)


@pytest.mark.parametrize("slices", [5, 8])
@pytest.mark.parametrize("cord_mm,region", [(13.0, "cervical"), (0.0, "lumbar")])
def test_a_short_series_of_a_few_thick_slices_is_read(slices, cord_mm, region):
    # a 40 mm series of 5 mm slices has 8, an angled block through one disc often 5: their canal tells the
    # region as a long series' does (4 slices say nothing: see below)
    stack, canals = canal_study(cord_mm, roots=not cord_mm, slices=slices)
    estimate = infer_region(stack, "MR", canals, [], None)
    assert estimate.region == region
    assert any(f"of {slices} slices" in e for e in estimate.evidence)


@pytest.mark.parametrize("roots_on,region", [(8, "lumbar"), (7, "unknown")])
def test_a_sac_of_roots_on_most_slices_and_no_cord_on_any_is_lumbar(roots_on, region):
    # a 4.4 mm sagittal series reformatted to axial blurs the roots on some slices: 8 of 12 slices with a
    # clear sac of roots (two thirds) are enough, 7 (under 60%) are not
    stack, canals = canal_study(0.0, roots=True, hazy_from=roots_on)
    hazy = canal_contents(stack, canals[-1])
    assert hazy.cord_width_mm == 0 and hazy.sac_fill < ROOTS_MIN_SAC_FILL
    assert canal_contents(stack, canals[0]).sac_fill >= ROOTS_MIN_SAC_FILL
    assert infer_region(stack, "MR", canals, [], None).region == region


@pytest.mark.parametrize("csf,cord_mm,region", [(330.0, 0.0, "lumbar"), (200.0, 0.0, "unknown"),
                                                 (330.0, 13.0, "unknown"), (900.0, 13.0, "cervical")])
def test_a_fast_spin_echo_t2_whose_csf_is_twice_as_bright_as_around_it_is_still_read(csf, cord_mm, region):
    # bright fat around the canal: CSF 330 over tissue 150 is about 2 times as bright as the canal's
    # surroundings, under the 3 of a T2 with dark fat, but the sac of roots is plain. CSF under 1.6 times as
    # bright (200) is read as no T2 at all. A wide dark blob in such faint CSF is not taken for a cervical cord
    stack, canals = canal_study(cord_mm, csf=csf, cord=100.0, roots=not cord_mm)
    estimate = infer_region(stack, "MR", canals, [], None)
    assert estimate.region == region


def mixed_canal_study(csf, roots, cords, hazy):
    """A canal of ``roots`` slices with a plain sac of roots, ``cords`` with an 8 mm cord, ``hazy`` with neither."""
    kinds = [(roots, dict(cord_mm=0.0, roots=True)), (cords, dict(cord_mm=8.0)),
             (hazy, dict(cord_mm=0.0, roots=True, hazy_from=0))]
    parts = [canal_study(csf=csf, cord=100.0, slices=n, **kind)[0].array for n, kind in kinds if n]
    image = sitk.GetImageFromArray(np.concatenate(parts).astype(np.float32))
    image.SetSpacing((1.0, 1.0, 3.0))
    n = roots + cords + hazy
    return to_axial_stack(image), [SliceCanal(k, (30.0, 33.0, 51.0, 48.0), 0.9, 0.1) for k in range(n)]


@pytest.mark.parametrize("csf,roots,cords,region", [
    (330.0, 10, 3, "lumbar"),  # fast spin-echo: roots on half the slices, "cords" on 3 of 20
    (330.0, 10, 5, "unknown"),  # a cord on a quarter of the slices: perhaps the thoracic spine
    (330.0, 8, 0, "unknown"),  # roots on 8 of 20 slices are too few
    (900.0, 10, 0, "unknown"),  # a T2 with dark fat still needs roots on 60% of the slices
    (900.0, 13, 3, "unknown"),  # and a cord on no more than one slice in ten
    (900.0, 14, 2, "lumbar"),
])
def test_a_fast_spin_echo_sac_needs_roots_on_fewer_slices_than_a_t2_with_dark_fat(csf, roots, cords, region):
    # a fast spin-echo T2's epidural fat is nearly as bright as its CSF, so its sac of roots is plain on fewer
    # slices, and clumped roots look like a cord on more; the rest of the 20 slices show neither
    stack, canals = mixed_canal_study(csf, roots, cords, 20 - roots - cords)
    assert infer_region(stack, "MR", canals, [], None).region == region


def test_where_the_canal_reaches_a_t2_contrast_its_fainter_slices_are_not_read():
    # a neck of 40 slices: on 24 its CSF is bright, and the cord is read where the CSF surrounds it (10 of
    # them); on the other 16, a faint chest end, the cord is unseen. Read on the bright slices only, the cord
    # shows on 10 of 24 and the neck is cervical; read on all 40 alike, on 10 of 40, too few to say
    stack, canals = canal_study(13.0, slices=24, touching_from=10)
    faint = canal_study(0.0, csf=330.0, roots=True, slices=16)[0].array
    image = sitk.GetImageFromArray(np.concatenate([stack.array, faint]).astype(np.float32))
    image.SetSpacing((1.0, 1.0, 3.0))
    canals = [SliceCanal(k, canals[0].box_ij, 0.9, 0.1) for k in range(40)]
    assert infer_region(to_axial_stack(image), "MR", canals, [], None).region == "cervical"


@pytest.mark.parametrize("kwargs", [
    dict(cord_mm=8.0),  # a thoracic cord or the conus: not cervical, and not lumbar either
    dict(cord_mm=13.0, cord=630.0),  # a T2* cord too bright (0.7 of the CSF) to be seen as one: never lumbar
    dict(cord_mm=13.0, csf=200.0, cord=100.0),  # CSF no brighter than its surroundings: not T2
    dict(cord_mm=0.0, csf=200.0),
    dict(cord_mm=13.0, slices=4),  # too few slices to say
    dict(cord_mm=0.0, roots=True, slices=4),
])
def test_the_canal_tells_nothing_when_its_contents_are_ambiguous(kwargs):
    stack, canals = canal_study(**kwargs)
    assert infer_region(stack, "MR", canals, [], None).region == "unknown"


def test_the_canals_contents_are_not_read_on_ct():
    stack, canals = canal_study(13.0)
    assert infer_region(stack, "CT", canals, [], None).region == "unknown"


FORAMEN = Landmark("foramen magnum", (6, 7), 7, "the canal opens into the cisterna magna on slice 6")


def test_the_skull_base_tells_a_neck_whose_canal_and_outline_tell_nothing():
    # a T2* of the neck cropped to the spine: the cord is too bright to be read (0.7 of the CSF) and the field
    # of view cuts the outline, but the canal opens into the cisterna magna at the top: the study shows the neck
    stack, canals = canal_study(13.0, cord=630.0)
    assert infer_region(stack, "MR", canals, [], None).region == "unknown"
    estimate = infer_region(stack, "MR", canals, [], None, FORAMEN)
    assert estimate.region == "cervical" and estimate.confidence == "low"
    assert FORAMEN.evidence in estimate.evidence


def test_the_skull_base_is_sure_where_the_neck_or_its_cord_agrees_and_unknown_where_the_anatomy_disagrees():
    neck, neck_canals = body_study(120.0)
    assert infer_region(neck, "MR", neck_canals, [], None, FORAMEN).confidence == "high"
    stack, canals = canal_study(13.0)  # a cervical cord in bright CSF
    assert infer_region(stack, "MR", canals, [], None, FORAMEN).confidence == "high"
    trunk, trunk_canals = body_study(320.0)
    estimate = infer_region(trunk, "MR", trunk_canals, [], None, FORAMEN)
    assert estimate.region == "unknown" and "disagree" in estimate.evidence[-1]
    stack, canals = canal_study(0.0, roots=True)  # a sac of nerve roots: lumbar
    assert infer_region(stack, "MR", canals, [], None).region == "lumbar"
    assert infer_region(stack, "MR", canals, [], None, FORAMEN).region == "unknown"


def neck_below_shoulders(fov_mm=200.0, neck_slices=4, slices=10, modality="CT"):
    """A field of view ``fov_mm`` across: the lowest slices cut by it (shoulders 320 mm across), the rest a neck."""
    stack, canals = body_study(320.0, fov_mm=fov_mm, modality=modality, slices=slices)
    neck, _ = body_study(130.0, fov_mm=fov_mm, modality=modality, slices=slices)
    array = stack.array.copy()
    array[slices - neck_slices:] = neck.array[slices - neck_slices:]
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(stack.spacing)
    return to_axial_stack(image), canals


def test_a_neck_ct_whose_field_cuts_the_shoulders_below_it_is_cervical():
    # a neck CT of the real kind (TotalSegmentator s0003: 190 mm across, the shoulders cut on the lower half): the
    # slices that show the whole outline are a neck's
    stack, canals = neck_below_shoulders()
    estimate = infer_region(stack, "CT", canals, [], None)
    assert estimate.region == "cervical" and estimate.confidence == "low"
    assert estimate.evidence[0].startswith("neck: body outline ")
    assert abs(float(estimate.evidence[0].split()[3]) - 130.0) <= 4.0
    assert estimate.evidence[0].endswith("of 7 slices, the field of view cutting the rest")
    # one whole slice is not enough, and a wider whole outline is no neck's
    stack, canals = neck_below_shoulders(neck_slices=1)
    assert infer_region(stack, "CT", canals, [], None).region == "unknown"
    # on MR the outline is read from a threshold that a lumbar MR's dark fat may cut: not read so there
    stack, canals = neck_below_shoulders(modality="MR")
    assert infer_region(stack, "MR", canals, [], None).region == "unknown"


@pytest.mark.parametrize("widths, region", [([30, 31, 0, 29, 34], "cervical"), ([48, 47, 0, 50, 49], "unknown"),
                                            ([17, 18, 0, 19, 18], "cervical"),
                                            ([27, 28, 40, 41, 0, 42, 43], "cervical"),
                                            ([36, 37, 40, 41, 0, 42, 43], "unknown")])
def test_a_neck_outline_over_vertebrae_as_wide_as_the_upper_chest_is_a_neck_study(widths, region):
    # a neck CT reaching T1-T3: the bone in front of the canal reads 21-28 mm through the bodies alone and 33-57 mm
    # where the transverse processes or the first ribs join them, so its median reads thoracic, or lumbar where the
    # detector tracks more of the slices through them (TotalSegmentator s0002 with a detector trained on another
    # neck CT: 39 mm, against 28.5 on a quarter of the slices). Bodies as wide as a lumbar CT's on that quarter too
    # (36 mm or more) still disagree with a neck's outline
    stack, canals = body_study(130.0, modality="CT")
    bones = [VertebralBone(k, 20.0, 20.0, float(width)) for k, width in enumerate(widths)]
    assert infer_region(stack, "CT", canals, bones, None).region == region


def shoulders_ct(airway_mm=None):
    """A CT of the lower neck through the shoulders: an outline 330 mm across, air ``airway_mm`` in front of the canal.

    ``airway_mm``: (nearest, farthest) from the canal's front edge, 12 mm either side of its centre; None for none.
    """
    stack, canals = body_study(330.0, modality="CT")
    if airway_mm is None:
        return stack, canals
    array = stack.array.copy()
    i0, j0, i1, _ = canals[0].box_ij
    ci = int((i0 + i1) / 2)
    array[:, int(j0 - airway_mm[1]):int(j0 - airway_mm[0]), ci - 12:ci + 12] = -1000.0
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(stack.spacing)
    return to_axial_stack(image), canals


@pytest.mark.parametrize("airway_mm, depth_mm, region", [((22, 36), 18.0, "cervical"), ((22, 36), 24.0, "cervical"),
                                                         (None, 18.0, "lumbar"), ((22, 36), 34.0, "lumbar"),
                                                         ((50, 70), 18.0, "lumbar"), ((22, 24), 18.0, "lumbar")])
def test_a_neck_through_the_shoulders_is_told_by_its_shallow_vertebrae_with_the_airway_before_them(airway_mm, depth_mm,
                                                                                                  region):
    # the lower neck of TotalSegmentator s0002 in a 40 mm series: the shoulders make its outline a trunk's and the
    # transverse processes its vertebrae 38-40 mm across, a lumbar body's width, so it was called lumbar. Its bodies
    # are 15-20 mm deep front to back, a lumbar body 30-40 mm, and the airway lies just before them. Shallow bodies
    # without the airway (the soft middle of an old lumbar body on 3 mm pixels reads so), air further forward
    # (bowel), or a sliver of it, are no neck
    stack, canals = shoulders_ct(airway_mm)
    bones = [VertebralBone(k, 30.0, 30.0, 39.0, depth_mm) for k in range(len(canals))]
    estimate = infer_region(stack, "CT", canals, bones, None)
    assert estimate.region == region
    if region == "cervical":
        assert estimate.confidence == "low"
        assert any(e.startswith(f"vertebral bodies at most {depth_mm:.0f} mm deep") for e in estimate.evidence)
        assert "the shoulders beside the lower neck" in estimate.evidence[-1]


@pytest.mark.parametrize("depth_mm, width_mm, neck", [(18.0, 28.0, True), (26.0, 32.0, True), (33.0, 54.0, False),
                                                      (18.0, 40.0, False), (30.0, 28.0, False)])
def test_the_vertebrae_above_the_first_ribs_are_a_necks_when_shallow_and_narrow(depth_mm, width_mm, neck):
    # 3 mm slices; ribs' heads on slice 10. Above them C7 and C6 read 17-20 mm deep and 26-29 mm wide on the neck CT
    # that shows them; the lower thoracic bodies above the highest ribs a narrow field of view left, 33 and 54 mm
    stack, _ = body_study(150.0, slices=30, modality="CT")
    assert stack.spacing[2] == 3.0
    above = [VertebralBone(k, 30.0, 30.0, width_mm, depth_mm) for k in range(11, 21)]
    # the bodies below the heads (T1 and the chest) are not read: T1-T3 are as deep as a lumbar body's soft middle
    below = [VertebralBone(k, 60.0, 60.0, 45.0, 34.0) for k in range(11)]
    assert neck_above(stack, below + above, 10, 30.0) == neck
    # read only up to 30 mm above the heads: deeper bodies higher up do not count, nor do too few bodies
    higher = [VertebralBone(k, 30.0, 30.0, 60.0, 40.0) for k in range(21, 30)]
    assert neck_above(stack, below + above + higher, 10, 30.0) == neck
    assert not neck_above(stack, below + above[:2], 10, 30.0)
