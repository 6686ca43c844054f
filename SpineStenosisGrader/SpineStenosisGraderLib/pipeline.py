"""The whole study: read, normalise, detect, group into levels, grade, and assemble a StudyResult."""

from __future__ import annotations

import dataclasses
import time
from typing import Callable, Optional

import numpy as np
import SimpleITK as sitk

from .errors import InputError
from .inference.contrast import t1_warning
from .inference.csf_outline import T2_CSF_CONTRAST, follow_sac_down, grow_over_csf, study_csf_contrast
from .inference.landmarks import (CANAL_WALL_HU, NECK_CISTERN_DEPTH_RATIO, RIB_FREE_ABOVE_MM, band_column,
                                  band_contrast, band_depth_fraction, band_depths, disc_back_density, disc_bands,
                                  endplate_gaps, find_first_rib, find_foramen_magnum, find_lowest_rib,
                                  find_lumbosacral_bend, find_sacrum, find_skull_base_ct, marrow_is_dark,
                                  measure_bone, onto_the_discs)
from .inference.levels import (
    CT_FORAMEN_REACH,
    DISC_HEIGHT_MM,
    MIN_DISC_SEPARATION_MM,
    MR_FORAMEN_REACH,
    REGIONS,
    UNKNOWN_REGION,
    SliceCanal,
    box_depth_mm,
    check_level_name,
    drop_bandless_end_levels,
    drop_below_lumbosacral_bend,
    drop_cisterns,
    drop_sacral_level,
    find_discs,
    level_box,
    lowest_slice_above_sacrum,
    name_from_anatomy,
    region_of_disc,
)
from .inference.off_bone import candidates_off_bone
from .inference.on_spine import boxes_off_the_spine, off_spine_warning
from .inference.region import infer_region, neck_above
from .inference.tracking import MIN_CANAL_SCORE, bridge_gaps, track_canal
from .packages.package import ModelPackage, load_default_package
from .result import CanalDetection, DiscLevel, StudyInfo, StudyResult
from .study.normalise import detect_modality, normalised_canvas
from .study.volume import AxialStack, load_stack, to_axial_stack

#: a callback told the current stage and the overall fraction done
Progress = Callable[[str, float], None]


def _noop(stage: str, fraction: float) -> None:
    return None


#: how to grade with a package made for other studies, said when one is refused
OVERRIDE_MISMATCH = "pass --allow-model-mismatch (in Slicer, answer Yes when asked)"
#: said where a study's levels are found but its grade is not one the model is made or checked for
LOCATED_NOT_GRADED = (" The levels are located but not graded (on the command line, --allow-model-mismatch grades "
                      "them anyway); set grades by hand in the review.")


def grade_stack(stack: AxialStack, package: Optional[ModelPackage] = None, modality: Optional[str] = None,
                region: Optional[str] = None, anchor: Optional[tuple[int, str]] = None,
                progress: Optional[Progress] = None, allow_model_mismatch: bool = False) -> StudyResult:
    """Grade an axial stack that is already read and checked.

    A package made for another modality, or for a region the user set and the
    package does not locate, is refused unless ``allow_model_mismatch``.
    """
    progress = progress or _noop
    timings: dict[str, float] = {}
    package = package or load_default_package()
    if region is not None and region not in REGIONS:
        raise InputError(f"Region must be one of {', '.join(REGIONS)}, not {region!r}.")
    modality = detect_modality(stack, modality)
    if anchor is not None:
        anchor = (anchor[0], check_level_name(anchor[1]))
    warnings = list(stack.warnings)
    package.check_compatible(modality, region or "", allow_model_mismatch, OVERRIDE_MISMATCH)
    # overridden, a mismatch stays on record; a region located but not graded is said by the grade step
    warnings += package.compatibility_mismatches(modality, region or "")

    t0 = time.perf_counter()
    progress("detect", 0.05)
    config = package.detector_config
    canvas, grid = normalised_canvas(stack, modality, int(config["canvas"]), float(config["spacing_mm"]))
    candidates = package.detector().detect_candidates(canvas)
    if modality == "CT":
        # a box on the bone in front of the canal (a body's back wall, the dens) is moved behind it, onto the canal
        candidates = candidates_off_bone(stack, candidates, grid)
    found = track_canal(candidates, float(config["spacing_mm"]), stack.spacing[2], MIN_CANAL_SCORE)
    canals: list[Optional[SliceCanal]] = []
    # the region rules read the cord inside the detector's own boxes, as they were measured; every other step,
    # and the result, takes the box grown over the CSF it cut off
    detected: list[Optional[SliceCanal]] = []
    detections: list[CanalDetection] = []
    detector_boxes = {k: tuple(float(v) for v in grid.to_stack(np.asarray(hit.box_uv))[0])
                      for k, hit in enumerate(found) if hit is not None}
    # how bright the CSF must be to be read is the study's: a T2's faint slices far from the coil are read too
    min_contrast = study_csf_contrast(stack, list(detector_boxes.items())) if modality == "MR" else T2_CSF_CONTRAST
    for k, hit in enumerate(found):
        if hit is None:
            canals.append(None)
            detected.append(None)
            continue
        detector_box = detector_boxes[k]
        # the region is read from confident boxes only: a faint box the tube let in (``tracking``) is the
        # canal, but its size is the detector's least sure
        detected.append(SliceCanal(k, detector_box, hit.score, hit.disc_probability)
                        if hit.score >= MIN_CANAL_SCORE else None)
        box_ij = grow_over_csf(stack, k, detector_box, modality, min_contrast)
        canals.append(SliceCanal(k, box_ij, hit.score, hit.disc_probability))
        detections.append(CanalDetection(k, stack.slice_box(k, box_ij), hit.score, hit.disc_probability))
    timings["detect"] = time.perf_counter() - t0
    # a T1 shows its canal by shape, with dark CSF: its levels are located, but not graded by a model of T2
    not_t2 = t1_warning(stack, canals) if modality == "MR" else None
    if not_t2:
        warnings.append(not_t2 + (" Graded anyway, as asked." if allow_model_mismatch else LOCATED_NOT_GRADED))

    t0 = time.perf_counter()
    progress("levels", 0.75)
    dz = stack.spacing[2]
    # CT only: a tube the tracking followed in a hip bone is no canal, and no level, region or landmark is read from it
    off_spine = boxes_off_the_spine(stack, canals) if modality == "CT" else {}
    if off_spine:
        for k in off_spine:
            canals[k] = detected[k] = None
        detections = [d for d in detections if d.slice_index not in off_spine]
        warnings.append(off_spine_warning(off_spine))
    bones = measure_bone(stack, canals) if modality == "CT" else []
    sacrum = find_sacrum(stack, bones, canals)
    # MR here: there the box holds the CSF, which opens into the cisterna magna; on CT it holds the bony canal, whose
    # ring at C1 is already wide, so the skull base is read from the bone once the region is known (below)
    foramen = find_foramen_magnum(stack, canals) if modality == "MR" else None
    estimate = infer_region(stack, modality, detected, bones, sacrum, foramen)
    user_region = region
    if region is None:
        region = estimate.region
        if region == UNKNOWN_REGION and detections:
            warnings.append("The spine region could not be told from the slices, so the levels are not graded"
                            + ("" if anchor else " and are numbered, not named")
                            + ". Set the region (--region, or Spine region in Slicer).")
    elif estimate.region not in (UNKNOWN_REGION, region):
        warnings.append(f"The anatomy looks {estimate.region} ({'; '.join(estimate.evidence)}), "
                        f"but the region was set to {region}.")
    if user_region is None and region != UNKNOWN_REGION:
        # a region read from the anatomy is never a reason to refuse: the user did not choose it
        warnings += package.compatibility_mismatches("", region)
    if foramen is None and modality == "MR" and region == "cervical":
        # a neck's top slice may lie partly in the cistern: where the cord or the outline already says neck, a
        # shallower opening is the skull base too (it names the levels; the region is read already)
        foramen = find_foramen_magnum(stack, canals, NECK_CISTERN_DEPTH_RATIO, min_contrast)
    if modality == "CT" and region == "cervical":
        # on CT the skull base is read from the bone behind the canal, once the study is known to show the neck: in
        # the chest the spinous processes may overlap behind the canal as far as the study's top
        foramen = find_skull_base_ct(stack, canals)
    if modality == "MR" and region == "lumbar" and detections:
        # in a steep lordosis the detector loses the sac where it turns back into the sacrum, above L5-S1; its
        # bright CSF still shows it there
        lowest = detections[0].slice_index
        followed = follow_sac_down(stack, (lowest, detections[-1].slice_index), canals[lowest].box_ij, min_contrast)
        for k, box_ij in followed.items():
            canals[k] = SliceCanal(k, box_ij, 0.0, 0.0)
        detections = sorted(detections + [CanalDetection(k, stack.slice_box(k, box_ij), 0.0, 0.0)
                                          for k, box_ij in followed.items()], key=lambda d: d.slice_index)
        if followed:
            warnings.append(f"Below slice {lowest}, where the detector lost the canal, the sac was followed over "
                            f"its bright CSF down to slice {min(followed)} (detection score 0 there).")
    # the disc seen in the image, whatever the detector thinks of the slice: a gap in the bone on CT, a band in the
    # vertebral column on MR (dark on a T2 spin echo; bright where the marrow is darker than muscle, on a T2*)
    # on CT the bone in front of the canal, read once: for the gaps, and for the levels on an endplate below
    bone = disc_back_density(stack, canals, wall_hu=CANAL_WALL_HU) if modality == "CT" else None
    # on MR the column in front of the canal, read once: for the marrow's darkness, the bands, and the end levels
    column = band_column(stack, canals) if modality == "MR" else None
    bright_bands = modality == "MR" and marrow_is_dark(stack, canals, column)
    gaps = (endplate_gaps(stack, canals, bone) if modality == "CT"
            else disc_bands(stack, canals, DISC_HEIGHT_MM[region], band_depth_fraction(region), bright_bands,
                            column))
    # how deep each band is, in a lumbar MR: of two peaks in one tall body on bands, the disc's endplates darken
    # the column more than the vein entering its middle. Not in the neck: on the six validation necks it changed
    # one series only, a cropped one that got one more level above C2 (sct_errsm_21_t2)
    lumbar_mr = modality == "MR" and region == "lumbar"
    contrast = band_contrast(stack, canals, bright_bands, column) if lumbar_mr else None
    depths = band_depths(contrast, dz, DISC_HEIGHT_MM[region]) if lumbar_mr else None
    sacrum_top = sacrum.top_slice if sacrum else None
    foramen_slice = foramen.bottom_slice if foramen and region == "cervical" else None
    # where a disc narrows the canal most the detector may lose it for a few slices: a level may lie there, on the
    # tube between the slices around them
    bridged = bridge_gaps(canals, dz)
    # the opening is read at its back rim on CT, lower than where an MR's CSF opens into the cisterna magna
    foramen_reach = CT_FORAMEN_REACH if modality == "CT" else MR_FORAMEN_REACH
    # no disc is placed from the spacing between a peak on C1 or the dens, just below the skull base, and the disc
    # below it: on a neck CT the disc so placed lay in C2's body. On MR, where the opening is read higher above
    # C2-C3, a gap of 96 mm below such a peak (a neck in 3 mm slices) held four discs the spacing placed right
    disc_peaks = find_discs(bridged, stack.n_slices, dz, region, gaps, sacrum_top_slice=sacrum_top,
                            band_depths=depths, foramen_magnum_slice=foramen_slice if modality == "CT" else None,
                            foramen_reach=foramen_reach)
    discs, cistern_warnings = drop_cisterns(disc_peaks, stack.spacing, region)
    if modality == "CT":
        # the detector's disc sign may peak on an endplate next to the disc; the bone tells them apart
        # in a neck two levels may flank one disc (``find_discs`` keeps peaks 9 mm apart there), and after the move
        # they may lie closer than a cervical vertebra; elsewhere the peaks were a vertebra apart already, and in an
        # old thoracolumbar spine the soft middle of a body may read less dense than its disc (VerSe 012)
        separation = MIN_DISC_SEPARATION_MM["cervical"] if region == "cervical" else 0.0
        # L5-S1 may not move into the sacrum, where ``name_from_anatomy`` would drop it as a fused disc's remnant
        floor = 0 if sacrum_top is None else lowest_slice_above_sacrum(sacrum_top, dz)
        discs = onto_the_discs(stack, canals, discs, bone, separation, lowest_slice=floor)
    warnings.extend(cistern_warnings)
    # MR only: checked on 29 lumbar T2 scans; on a sagittal CT's 3-4 mm reformats (VerSe 014, in lordosis) the
    # bend lay high and dropped the L5-S1 below the labelled discs. On CT the alae are read instead
    bend = find_lumbosacral_bend(stack, canals) if modality == "MR" and region == "lumbar" and sacrum is None else None
    discs, sacral_warnings = drop_sacral_level(discs, dz, region, sacrum_found=sacrum is not None,
                                               bend_slice=bend.top_slice if bend else None)
    warnings.extend(sacral_warnings)
    discs, bend_warnings = drop_below_lumbosacral_bend(discs, dz, region, bend.top_slice if bend else None,
                                                       sacrum_found=sacrum is not None)
    warnings.extend(bend_warnings)
    if lumbar_mr:
        # near an end of the study a peak of the detector's one-sided evidence may lie in a body
        discs, end_warnings = drop_bandless_end_levels(discs, contrast, dz, region)
        warnings.extend(end_warnings)
    # CT only, and only where the vertebrae read lumbar: in a study of the chest every vertebra bears ribs, and the
    # lowest pair it shows need not be T12's. The user's anchor outranks every landmark, so then they are not read
    lowest_rib = (find_lowest_rib(stack, canals) if modality == "CT" and region == "lumbar" and anchor is None
                  else None)
    # CT only, in a neck or the upper chest: the highest ribs, below a neck that bears none, are the first. Where
    # the field of view cuts the upper ribs of a lower thoracic spine off, the highest ones read lie below no neck
    first_rib = (find_first_rib(stack, canals) if modality == "CT" and region in ("cervical", "thoracic")
                 and anchor is None else None)
    if first_rib is not None and not neck_above(stack, bones, first_rib.top_slice, RIB_FREE_ABOVE_MM):
        first_rib = None
    naming = name_from_anatomy(discs, region, dz, sacrum_top, anchor,
                               foramen_magnum_slice=foramen_slice,
                               foramen_reach=foramen_reach,
                               lowest_rib_slice=lowest_rib.top_slice if lowest_rib else None,
                               first_rib_slice=first_rib.top_slice if first_rib else None)
    warnings.extend(naming.warnings)
    warnings.extend(
        f"{name} (slice {c.slice_index}) lies where the detector lost the canal: its box is the canal interpolated "
        "from the slices above and below. The CSF may be effaced there by a severe stenosis: check this level on "
        "the images; a grade there is marked uncertain." for name, c in zip(naming.names, naming.kept)
        if bridged[c.slice_index].bridged)
    if not naming.kept:
        warnings.append("No disc level was found. Check that the study is an axial spine CT or T2 MRI.")
    thickness = max(1.0, DISC_HEIGHT_MM[region] / dz)
    # each level's box is the canal over the slices its ROI spans, not the one slice's box: a box that reaches
    # into a foramen on the level's slice alone (the thoracic CSF ring opening sideways) does not become the ROI
    # (a level where the canal was not seen takes the tube's boxes too)
    candidates = [dataclasses.replace(c, box_ij=level_box(canals if canals[c.slice_index] else bridged, c.slice_index,
                                                          dz, DISC_HEIGHT_MM[region] / 2.0))
                  for c in naming.kept]
    levels = [
        DiscLevel(
            name=name, slice_index=c.slice_index, box=stack.slice_box(c.slice_index, c.box_ij, thickness),
            detection_score=c.score,
            measurements={
                "canal_box_width_mm": (c.box_ij[2] - c.box_ij[0]) * stack.spacing[0],
                "canal_box_depth_mm": box_depth_mm(c.box_ij, stack.spacing),
            },
            region=region_of_disc(name) if naming.anchored else region,
            name_anchored=naming.anchored,
            name_confidence=confidence,
            canal_seen=not bridged[c.slice_index].bridged,
        )
        for name, c, confidence in zip(naming.names, candidates, naming.confidence)
    ]
    timings["levels"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    progress("grade", 0.85)
    graded_regions = package.manifest.get("regions", [])
    gradable = bool(levels) and region in graded_regions
    # a package shows its grade only on the studies it was checked on (its manifest's grade_scope): elsewhere
    # a wrong grade would read as a finding, so the levels are located and the clinician grades them
    out_of_scope = package.grade_scope_problem(modality, stack.spacing[:2]) if gradable else None
    if out_of_scope:
        warnings.append(out_of_scope + (" Graded anyway, as asked." if allow_model_mismatch else LOCATED_NOT_GRADED))
    if gradable and (not (not_t2 or out_of_scope) or allow_model_mismatch):
        places = [(c.slice_index, c.box_ij) for c in candidates]
        for level, grade in zip(levels, package.classifier().grade_places(stack, places, modality)):
            # where the canal was not seen the model reads a box that may miss it: its grade is no more than a hint
            level.grade = grade if grade is None or level.canal_seen else dataclasses.replace(grade, uncertain=True)
    elif levels and region != UNKNOWN_REGION and not gradable:
        warnings.append(
            f"The model package grades {', '.join(graded_regions)} levels only; the {region} levels "
            "are located but not graded."
        )
    timings["grade"] = time.perf_counter() - t0
    progress("done", 1.0)

    info = StudyInfo(
        source=stack.source,
        modality=modality,
        region=region,
        n_slices=stack.n_slices,
        slice_spacing_mm=dz,
        pixel_spacing_mm=(stack.spacing[0], stack.spacing[1]),
        numbering=naming.note,
        region_confidence="user" if user_region else estimate.confidence,
        region_evidence=(("set by the user",) if user_region else ()) + tuple(estimate.evidence),
        names_anchored_by=naming.landmark,
        stack_origin_lps=stack.origin,
        stack_spacing_mm=stack.spacing,
        stack_direction_lps=tuple(float(v) for v in stack.direction.reshape(-1)),
        stack_size=tuple(int(v) for v in stack.image.GetSize()),
    )
    return StudyResult(study=info, model=package.info(), levels=levels, detections=detections,
                       warnings=warnings, timings_s=timings)


def grade_image(image: sitk.Image, package: Optional[ModelPackage] = None, modality: Optional[str] = None,
                region: Optional[str] = None, source: str = "", progress: Optional[Progress] = None,
                anchor: Optional[tuple[int, str]] = None,
                allow_model_mismatch: bool = False) -> tuple[StudyResult, AxialStack]:
    """Grade a SimpleITK image (for example pulled from a Slicer volume node)."""
    stack = to_axial_stack(image, source=source)
    return grade_stack(stack, package, modality, region, anchor, progress, allow_model_mismatch), stack


def grade_file(path, package: Optional[ModelPackage] = None, modality: Optional[str] = None,
               region: Optional[str] = None, series_uid: Optional[str] = None, stack_number: Optional[int] = None,
               anchor: Optional[tuple[int, str]] = None, progress: Optional[Progress] = None,
               allow_model_mismatch: bool = False) -> tuple[StudyResult, AxialStack]:
    """Grade a volume file or DICOM folder."""
    progress = progress or _noop
    t0 = time.perf_counter()
    progress("read", 0.0)
    stack = load_stack(path, series_uid=series_uid, stack=stack_number)
    read_s = time.perf_counter() - t0
    result = grade_stack(stack, package, modality, region, anchor, progress, allow_model_mismatch)
    result.timings_s = {"read": read_s, **result.timings_s}
    return result, stack


def representative_slices(result: StudyResult, stack: AxialStack) -> dict[int, np.ndarray]:
    """The raw slices the report shows, keyed by stack slice index."""
    return {lv.slice_index: np.asarray(stack.array[lv.slice_index]) for lv in result.levels}
