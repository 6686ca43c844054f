"""Annotated scans: a volume with a canal mask and named disc positions.

Researchers and annotators describe their scans in a small JSON catalogue
(see ``Testing/Data/scans.json``) instead of code: which file holds the image,
which labels make the canal, and where the discs are. The same loader feeds
training, evaluation and the tests, so the ground truth is derived one way.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from ..inference.levels import SliceCanal
from ..inference.tracking import bridge_gaps
from ..study.volume import AxialStack, load_stack, resample_like, to_axial_stack
from .matlab_volume import is_matlab_file, read_matlab_volume


@dataclass
class AnnotatedScan:
    name: str
    stack: AxialStack
    #: canal mask on the stack's grid, shape [k, j, i]
    canal: np.ndarray
    #: disc name -> continuous slice index k of the disc centre: the reference every score is made against
    discs: dict[str, float]
    modality: str
    region: str
    #: False when the labels count the discs but do not say which they are (an automatic
    #: segmentation of a crop): positions are scored, names are not
    disc_names_known: bool = True
    #: True when discs above the highest labelled one lie in the study unlabelled (labels of L1-L2 to L5-S1 on a
    #: study that reaches T12): a level found up there is not scored, neither found nor false
    more_discs_above: bool = False
    #: the same below the lowest labelled disc (labels of T10 to L3 on a study that reaches L4)
    more_discs_below: bool = False
    use: str = "train"
    notes: str = ""
    boxes: dict[int, tuple[int, int, int, int]] = field(default_factory=dict)
    #: the catalogue's ``tissues`` specs (segmentations for synthesis, read on demand) and their folder
    tissues: list[dict[str, Any]] = field(default_factory=list)
    root: Optional[Path] = None
    #: the disc positions the detector learns from, where the catalogue gives a ``training_method`` of its own
    #: (None: the reference ``discs``); see ``Testing/Data/README.md`` for why they may differ
    training_discs: Optional[dict[str, float]] = None
    #: the canal boxes the detector learns from, where they go beyond the reference ``boxes`` (None: those):
    #: a canal read as the bony ring's hole is carried across the open rings at the discs (``bridge_open_rings``)
    training_boxes: Optional[dict[int, tuple[int, int, int, int]]] = None
    #: vertebra name -> continuous slice index of a point the labels put at its body's level (e.g. "C2")
    landmarks: dict[str, float] = field(default_factory=dict)
    #: True for a label map without its image (the catalogue's ``label_maps``): its ``stack`` holds the labels,
    #: so only images synthesised from it train, and it is never graded
    labels_only: bool = False

    def __post_init__(self) -> None:
        if not self.boxes:
            self.boxes = canal_boxes(self.canal)

    def disc_weight(self, half_height_mm: float) -> np.ndarray:
        """Per slice, 1 within ``half_height_mm`` of a training disc centre, fading to 0 one slice further."""
        k = np.arange(self.stack.n_slices, dtype=float)
        dz = self.stack.spacing[2]
        weight = np.zeros_like(k)
        for kd in (self.discs if self.training_discs is None else self.training_discs).values():
            distance_mm = np.abs(k - kd) * dz
            weight = np.maximum(weight, np.clip(1.0 - (distance_mm - half_height_mm) / dz, 0.0, 1.0))
        return weight


def canal_boxes(canal: np.ndarray, min_pixels: int = 4) -> dict[int, tuple[int, int, int, int]]:
    """Per slice, the half-open pixel box (i0, j0, i1, j1) of the largest canal component."""
    boxes = {}
    for k in range(canal.shape[0]):
        sl = canal[k] > 0
        if sl.sum() < min_pixels:
            continue
        labels, n = ndimage.label(sl)
        if n > 1:
            sizes = ndimage.sum(sl, labels, range(1, n + 1))
            sl = labels == (int(np.argmax(sizes)) + 1)
        jj, ii = np.nonzero(sl)
        boxes[k] = (int(ii.min()), int(jj.min()), int(ii.max()) + 1, int(jj.max()) + 1)
    return boxes


#: the longest run of open rings a canal read as the bony ring's hole is carried across: a disc with the
#: foramina beside it (11-24 mm on the CT scans with such labels); a longer run is a vertebra left unlabelled
OPEN_RING_MAX_GAP_MM = 25.0


def bridge_open_rings(boxes: dict[int, tuple[int, int, int, int]], slice_spacing_mm: float,
                      max_gap_mm: float = OPEN_RING_MAX_GAP_MM) -> dict[int, tuple[int, int, int, int]]:
    """The canal boxes with each run of slices between two boxed ones, at most ``max_gap_mm`` long, filled.

    A canal read as the hole the bony ring encloses (``bone_holes``) has no box
    where the ring is open: at every disc, where the foramina open it at the
    sides. The canal runs on there, as one tube, so its box is the tube between
    the closed rings above and below, as the tracking bridges a canal the
    detector lost (``tracking.bridge_gaps``; every labelled ring is sure), to
    whole pixels. Without these the detector would learn a real CT's canal only
    on the slices through a vertebra's ring, and never what a disc looks like there.
    """
    if not boxes:
        return {}
    rings = [SliceCanal(k, boxes[k], 1.0, 0.0) if k in boxes else None for k in range(max(boxes) + 1)]
    return {c.slice_index: tuple(int(round(v)) for v in c.box_ij)
            for c in bridge_gaps(rings, slice_spacing_mm, max_gap_mm, sure_mm=0.0) if c is not None}


def read_catalogue_image(root: Path, spec: dict[str, Any], geometry: Optional[dict[str, Any]] = None) -> sitk.Image:
    """A catalogue file as an image: any format SimpleITK reads, or a MATLAB array (``variable``) placed by
    the entry's ``geometry``."""
    path = root / spec["file"]
    if not is_matlab_file(path):
        return sitk.ReadImage(str(path))
    if geometry is None or "variable" not in spec:
        raise ValueError(f"{spec['file']} is a MATLAB file: its spec needs a 'variable', and its catalogue "
                         "entry a 'geometry' (array_axes, spacing_mm).")
    return read_matlab_volume(path, spec["variable"], geometry)


def label_array(root: Path, spec: dict[str, Any], stack: AxialStack,
                geometry: Optional[dict[str, Any]] = None) -> np.ndarray:
    """A catalogue label file on the stack's grid (nearest neighbour, or linear for a thresholded map)."""
    image = read_catalogue_image(root, spec, geometry)
    nearest = "threshold" not in spec
    return sitk.GetArrayFromImage(resample_like(image, stack, nearest=nearest))


def _canal_from_spec(root: Path, spec: Optional[dict[str, Any]], stack: AxialStack,
                     geometry: Optional[dict[str, Any]] = None) -> np.ndarray:
    if spec is None:
        # no canal label (disc labels alone): no slice has a reference canal
        return np.zeros((stack.n_slices,) + stack.array.shape[1:], dtype=bool)
    array = label_array(root, spec, stack, geometry)
    if "threshold" in spec:
        mask = array > float(spec["threshold"])
    elif spec.get("bone_holes"):
        body = np.isin(array, spec.get("body_labels", []))
        mask = _bone_holes(array > 0, body, stack)
    else:
        mask = np.isin(array, spec["labels"])
    for extra in spec.get("union", []):
        mask |= _canal_from_spec(root, extra, stack, geometry)
    return mask


def _bone_holes(bone: np.ndarray, body: np.ndarray, stack: AxialStack) -> np.ndarray:
    """The vertebral foramen: the hole the bony ring encloses, slice by slice.

    Only where the posterior arch closes the ring; at disc levels the ring is
    open at the foramina and no hole exists, so those slices carry no box.
    Holes inside the vertebral body (``body``, e.g. gaps in a cancellous-bone
    label) are not the canal.
    """
    out = np.zeros_like(bone)
    min_area_px = 40.0 / (stack.spacing[0] * stack.spacing[1])
    for k in range(bone.shape[0]):
        holes = ndimage.binary_fill_holes(bone[k]) & ~bone[k] & ~ndimage.binary_fill_holes(body[k])
        labels, n = ndimage.label(holes)
        if n == 0:
            continue
        sizes = ndimage.sum(holes, labels, range(1, n + 1))
        best = int(np.argmax(sizes))
        if sizes[best] >= min_area_px:
            out[k] = labels == best + 1
    return out


#: a vertebral body spans the slices where its cut is at least this share of its largest cut
BODY_EXTENT_SHARE = 0.25


def _in_front_of_canal(canal: np.ndarray) -> Optional[np.ndarray]:
    """Per slice, the rows in front of the canal (shape [k, j, 1]); None when no slice has a canal.

    The stack is in LPS, so the front is the smaller j. A slice without canal
    takes the canal's front edge from the nearest slice with one.
    """
    fronts = np.array([np.nonzero(c.any(axis=1))[0].min() if c.any() else -1 for c in canal], dtype=float)
    known = np.nonzero(fronts >= 0)[0]
    if len(known) == 0:
        return None
    fronts = np.interp(np.arange(len(fronts)), known, fronts[known])
    return np.arange(canal.shape[1])[None, :, None] < fronts[:, None, None]


def _discs_from_spec(root: Path, spec: dict[str, Any], stack: AxialStack,
                     canal: Optional[np.ndarray] = None, geometry: Optional[dict[str, Any]] = None) -> dict[str, float]:
    if spec.get("method") == "points":
        # discs read off the images, each a point in patient space (LPS mm): no label file
        return {name: float(stack.lps_to_index(np.asarray(point, dtype=float))[0, 2])
                for name, point in spec["points_lps_mm"].items()}
    array = label_array(root, spec, stack, geometry)
    names = {int(k): v for k, v in spec["labels"].items()}
    method = spec.get("method", "centroid_midpoint")
    kk = np.arange(array.shape[0], dtype=float)

    def z_profile(label: int) -> np.ndarray:
        return (array == label).sum(axis=(1, 2)).astype(float)

    discs: dict[str, float] = {}
    if method == "disc_labels":
        for label, name in names.items():
            prof = z_profile(label)
            if prof.sum() > 0:
                discs[name] = float((prof * kk).sum() / prof.sum())
        return discs
    if method == "body_gap":
        if canal is None:
            raise ValueError("the body_gap disc method needs the scan's canal")
        return _discs_between_bodies(array, names, canal)
    present = []
    for label, name in names.items():
        prof = z_profile(label)
        if prof.sum() > 0:
            present.append((float((prof * kk).sum() / prof.sum()), label, name, prof))
    present.sort()
    # consecutive vertebrae, inferior first: the disc lies between them
    for (z_low, _, low_name, prof_low), (z_up, _, up_name, prof_up) in zip(present, present[1:]):
        if method == "boundary":
            z = (float(np.nonzero(prof_low)[0].max()) + float(np.nonzero(prof_up)[0].min())) / 2.0
        else:
            z = (z_low + z_up) / 2.0
        discs[f"{up_name}-{low_name}"] = z
    return discs


def _discs_between_bodies(array: np.ndarray, names: dict[int, str], canal: np.ndarray) -> dict[str, float]:
    """Each disc halfway between the top of the body below it and the bottom of the body above it.

    Whole-vertebra labels overlap along the spine (a spinous process hangs over
    the vertebra below), and a vertebra the study cuts has its centre in the
    wrong place, so a midpoint of centres can land inside a body. The bodies
    alone leave a clean gap at each disc. A disc is placed only where both
    bodies are in the study and the gap between them is too: a body cut by the
    study's end says nothing about the disc beyond it.
    """
    n = array.shape[0]
    front = _in_front_of_canal(canal > 0)
    if front is None:
        return {}
    bodies = []
    for label, name in names.items():
        # the vertebra's voxels in front of the canal: its body, without the arch and processes
        profile = ((array == label) & front).sum(axis=(1, 2)).astype(float)
        if profile.max() <= 0:
            continue
        extent = np.nonzero(profile >= BODY_EXTENT_SHARE * profile.max())[0]
        bodies.append((float(extent.mean()), int(extent.min()), int(extent.max()), name))
    bodies.sort()
    discs = {}
    for (_, _, top_below, name_below), (_, bottom_above, _, name_above) in zip(bodies, bodies[1:]):
        # a body that reaches the study's end on the disc's side may continue past it
        if top_below >= n - 1 or bottom_above <= 0:
            continue
        discs[f"{name_above}-{name_below}"] = (top_below + bottom_above) / 2.0
    return discs


#: a label map without its image is read on this grid (mm, nearest neighbour): the sagittal maps are 3-5 mm
#: thick, which no stack of axial slices may have, and the detector reads 1.25 mm pixels
LABEL_MAP_SPACING_MM = 1.0


def load_catalogue(path: Path, section: str = "scans") -> list[dict[str, Any]]:
    """A catalogue's entries: its ``scans`` (images with labels), or its ``label_maps`` (labels alone)."""
    with open(path, encoding="utf-8") as handle:
        return json.load(handle).get(section, [])


def _label_map_stack(path: Path) -> AxialStack:
    """A label map on a LABEL_MAP_SPACING_MM grid in its own orientation, read as an axial stack."""
    labels = sitk.ReadImage(str(path))
    size = [max(2, int(round(n * s / LABEL_MAP_SPACING_MM))) for n, s in zip(labels.GetSize(), labels.GetSpacing())]
    # the new grid's first voxel centre sits where the old grid's first voxel starts, shifted half a new voxel in
    direction = np.asarray(labels.GetDirection(), dtype=float).reshape(3, 3)
    start = np.asarray(labels.TransformContinuousIndexToPhysicalPoint([-0.5, -0.5, -0.5]))
    origin = start + direction @ np.full(3, LABEL_MAP_SPACING_MM / 2.0)
    grid = sitk.Resample(labels, size, sitk.Transform(), sitk.sitkNearestNeighbor, origin.tolist(),
                         [LABEL_MAP_SPACING_MM] * 3, labels.GetDirection(), 0, labels.GetPixelID())
    return to_axial_stack(grid, source=str(path))


def load_annotated_scan(entry: dict[str, Any], root: Path) -> AnnotatedScan:
    """Load one catalogue entry; paths in it are relative to ``root``."""
    image_spec = entry["image"] if isinstance(entry["image"], dict) else {"file": entry["image"]}
    geometry = entry.get("geometry")
    labels_only = bool(entry.get("labels_only", False))
    if labels_only:
        stack = _label_map_stack(root / image_spec["file"])
    elif is_matlab_file(root / image_spec["file"]):
        stack = to_axial_stack(read_catalogue_image(root, image_spec, geometry), source=str(root / image_spec["file"]))
    else:
        stack = load_stack(root / image_spec["file"])
    canal = _canal_from_spec(root, entry.get("canal"), stack, geometry).astype(np.uint8)
    discs = _discs_from_spec(root, entry["discs"], stack, canal, geometry) if entry.get("discs") else {}
    training_method = entry.get("discs", {}).get("training_method")
    training_discs = (_discs_from_spec(root, dict(entry["discs"], method=training_method), stack, canal, geometry)
                      if training_method else None)
    # the reference stays the closed rings: only there does the label show where the canal is
    boxes = canal_boxes(canal)
    bridged = bridge_open_rings(boxes, stack.spacing[2]) if (entry.get("canal") or {}).get("bone_holes") else None
    landmarks = {}
    if entry.get("landmarks"):
        array = label_array(root, entry["landmarks"], stack, geometry)
        for label, name in entry["landmarks"]["labels"].items():
            ks = np.nonzero(array == int(label))[0]
            if len(ks):
                landmarks[name] = float(ks.mean())
    return AnnotatedScan(
        name=entry["name"],
        stack=stack,
        canal=canal,
        discs=discs,
        modality=entry["modality"],
        region=entry["region"],
        disc_names_known=bool(entry.get("discs", {}).get("named", True)),
        more_discs_above=bool(entry.get("discs", {}).get("more_discs_above", False)),
        more_discs_below=bool(entry.get("discs", {}).get("more_discs_below", False)),
        use=entry.get("use", "train"),
        notes=entry.get("notes", ""),
        tissues=list(entry.get("tissues", [])),
        root=root,
        boxes=boxes,
        training_discs=training_discs,
        training_boxes=bridged,
        landmarks=landmarks,
        labels_only=labels_only,
    )


def load_scans(catalogue: Path, use: Optional[str] = None) -> list[AnnotatedScan]:
    root = catalogue.parent
    return [load_annotated_scan(e, root) for e in load_catalogue(catalogue) if use is None or e.get("use") == use]


def load_label_maps(catalogue: Path, exclude: Sequence[str] = ()) -> Iterator[AnnotatedScan]:
    """The catalogue's label maps without images (``label_maps``), less ``exclude``, each ``labels_only``."""
    root, excluded = catalogue.parent, set(exclude)
    return (load_annotated_scan(dict(e, labels_only=True), root) for e in load_catalogue(catalogue, "label_maps")
            if e["name"] not in excluded)
