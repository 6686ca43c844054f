"""Domain-randomised training slices synthesised from label maps (the SynthSeg recipe).

Billot et al. (Medical Image Analysis 2023) train on images drawn from label
maps with every acquisition property randomised: a Gaussian intensity per
label with random mean and spread, a smooth multiplicative bias field, random
blur and resolution, noise, gamma, and a smooth random deformation of the
labels. A model that sees thousands of contrasts learns the shapes, not one
scanner's grey levels. Here that is used for the canal detector:

- A ``TissueMap`` is a label volume on a scan's grid. Real scans bring their
  segmentations (the catalogue's ``tissues`` list, each label assigned a
  tissue class); the voxels no file labels are split into a few intensity
  clusters of the real image (1D k-means), so air, fat, muscle and unlabelled
  bone differ. Phantom studies are clustered the same way, with their canal
  and dural sac as labels.
- ``synthesize_slice`` draws one image from a slab of labels around a slice.
  Means come from contrast families (CT, T2, T2*, fat-suppressed T2, T1,
  ordered as those tissues are) or, often, are fully random. The canal box is
  taken from the deformed canal labels, so the target moves with the anatomy.

The output is float in [0, 1], as ``IntensityWindow.apply`` gives the detector.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass
from typing import Any, Optional, Sequence, Union

import numpy as np
from scipy import ndimage

from .annotations import AnnotatedScan, canal_boxes, label_array
from ..study.normalise import CT_WINDOW, intensity_window

#: the tissue classes a label can be; each contrast family orders them
TISSUES = ("air", "fat", "muscle", "soft", "bowel", "blood", "csf", "cord", "disc", "bone", "cortical", "other")

# Mean intensity in [0, 1] (display scale) per tissue and contrast family. CT is
# HU through the detector's window; the MR families follow the textbook order.
_CT_HU = {"air": -1000, "fat": -100, "muscle": 50, "soft": 40, "bowel": 20, "blood": 120, "csf": 8, "cord": 30,
          "disc": 80, "bone": 260, "cortical": 950}
CONTRAST_PRIORS: dict[str, dict[str, float]] = {
    "CT": {t: min(1.0, max(0.0, (hu - CT_WINDOW[0]) / (CT_WINDOW[1] - CT_WINDOW[0]))) for t, hu in _CT_HU.items()},
    "T2": {"air": 0.02, "fat": 0.75, "muscle": 0.2, "soft": 0.35, "bowel": 0.5, "blood": 0.1, "csf": 0.95,
           "cord": 0.5, "disc": 0.6, "bone": 0.45, "cortical": 0.04},
    "T2star": {"air": 0.02, "fat": 0.35, "muscle": 0.25, "soft": 0.3, "bowel": 0.4, "blood": 0.6, "csf": 0.9,
               "cord": 0.55, "disc": 0.65, "bone": 0.15, "cortical": 0.03},
    "T2fatsat": {"air": 0.02, "fat": 0.08, "muscle": 0.2, "soft": 0.35, "bowel": 0.5, "blood": 0.2, "csf": 0.95,
                 "cord": 0.5, "disc": 0.6, "bone": 0.15, "cortical": 0.03},
    "T1": {"air": 0.02, "fat": 0.85, "muscle": 0.3, "soft": 0.4, "bowel": 0.35, "blood": 0.2, "csf": 0.12,
           "cord": 0.45, "disc": 0.35, "bone": 0.65, "cortical": 0.04},
}
#: how often each family is drawn; "random" ignores the tissue and draws every mean uniformly
CONTRAST_FAMILIES = {"random": 0.3, "CT": 0.2, "T2": 0.2, "T2star": 0.1, "T2fatsat": 0.1, "T1": 0.1}

#: tissues only the canal holds: canal labels are exactly the labels of these tissues
CANAL_TISSUES = ("csf", "cord")
#: unlabelled voxels of a real or phantom image are split into this many intensity clusters
DEFAULT_CLUSTERS = 4
#: the thickest slab a synthetic slice averages, mm
MAX_THICKNESS_MM = 5.0
#: a label map without its image has nothing to cluster outside its labels: there a smooth random field of
#: blobs about this size (mm) is clustered instead, so the muscle, fat and soft tissue around the spine are
#: drawn as patches of their own and not as one flat background
TEXTURE_MM = 8.0


@dataclass
class TissueMap:
    """A label volume [k, j, i] on a scan's grid; label ``n`` has tissue class ``tissue[n]``."""

    source: str
    labels: np.ndarray
    tissue: tuple[str, ...]
    canal_ids: tuple[int, ...]
    spacing: tuple[float, float, float]  #: (i, j, k) mm
    disc_weight: np.ndarray  #: per slice, as the detector's class uses it

    @property
    def canal(self) -> np.ndarray:
        return np.isin(self.labels, self.canal_ids)

    def slab(self, k: int, half: int) -> np.ndarray:
        """Slices k - half .. k + half, the volume's end slices repeated beyond its ends."""
        index = np.clip(np.arange(k - half, k + half + 1), 0, self.labels.shape[0] - 1)
        return self.labels[index]


@dataclass(frozen=True)
class SynthesisOptions:
    """Switches for the randomisations, so tests can look at one at a time."""

    deform: bool = True
    noise: bool = True  #: scanner noise and each label's own spread
    bias: bool = True
    resolution: bool = True  #: blur, pixel size and slice thickness
    gamma: bool = True
    crop: bool = True


@dataclass
class SyntheticSlice:
    image: np.ndarray  #: float32 [j, i] in [0, 1]
    labels: np.ndarray  #: the deformed (and cropped) centre label slice
    canal: np.ndarray  #: bool, the canal on ``labels``
    box_ij: Optional[tuple[int, int, int, int]]  #: half-open box of the largest canal component
    spacing: tuple[float, float]
    contrast: str


# --------------------------------------------------------------------------- label maps


def kmeans_1d(values: np.ndarray, k: int, iterations: int = 30) -> np.ndarray:
    """Sorted cluster centres of 1D values (Lloyd's algorithm from quantiles; deterministic)."""
    values = np.sort(np.asarray(values, dtype=np.float64).ravel())
    if values.size == 0:
        return np.zeros(0)
    centres = np.quantile(values, (np.arange(k) + 0.5) / k)
    cumsum = np.concatenate([[0.0], np.cumsum(values)])
    for _ in range(iterations):
        # on sorted values a cluster is a run between consecutive midpoints
        cuts = np.searchsorted(values, (centres[1:] + centres[:-1]) / 2.0)
        edges = np.concatenate([[0], cuts, [values.size]])
        counts = np.diff(edges)
        sums = cumsum[edges[1:]] - cumsum[edges[:-1]]
        new = np.where(counts > 0, sums / np.maximum(counts, 1), centres)
        if np.allclose(new, centres):
            break
        centres = new
    return np.unique(centres)


def _cluster_tissue(centre: float, modality: str, window_low: float, window_high: float) -> str:
    """A cluster's tissue class from its centre: by HU on CT, by brightness on MR."""
    if modality == "CT":
        for limit, tissue in ((-500, "air"), (-40, "fat"), (150, "muscle"), (500, "bone")):
            if centre < limit:
                return tissue
        return "cortical"
    rel = (centre - window_low) / max(window_high - window_low, 1e-6)
    for limit, tissue in ((0.08, "air"), (0.35, "muscle"), (0.6, "soft")):
        if rel < limit:
            return tissue
    return "fat"


def _add_clusters(labels: np.ndarray, image: np.ndarray, free: np.ndarray, modality: str, n_clusters: int,
                  tissue: list[str]) -> None:
    """Label the ``free`` voxels by intensity cluster of the (lightly smoothed) image, in place."""
    smooth = ndimage.gaussian_filter(image.astype(np.float32), sigma=(0.0, 1.0, 1.0))
    values = smooth[free]
    if values.size == 0:
        return
    sample = values[:: max(1, values.size // 200_000)]
    centres = kmeans_1d(sample, n_clusters)
    window = intensity_window(image, modality)
    # a few comparisons beat a binary search per voxel on tens of millions of voxels
    cluster = np.zeros(values.shape, dtype=np.int64)
    for cut in (centres[1:] + centres[:-1]) / 2.0:
        cluster += values > cut
    base = len(tissue)
    labels[free] = base + cluster
    tissue.extend(_cluster_tissue(float(c), modality, window.low, window.high) for c in centres)


def _label_set(spec_labels: Any) -> list[int]:
    """Catalogue label lists: ints or "a-b" ranges."""
    out: list[int] = []
    for item in spec_labels:
        if isinstance(item, str) and "-" in item:
            lo, hi = (int(v) for v in item.split("-"))
            out.extend(range(lo, hi + 1))
        else:
            out.append(int(item))
    return out


def _finish(source: str, labels: np.ndarray, tissue: list[str], canal: np.ndarray, image: np.ndarray,
            modality: str, n_clusters: int, spacing, disc_weight: np.ndarray) -> TissueMap:
    """Give the canal its own labels, cluster what is left, and compact the ids."""
    # canal voxels keep a label only if it is a canal tissue; the rest of the canal is CSF
    labels[canal & ~np.isin(np.asarray(tissue), CANAL_TISSUES)[labels]] = len(tissue)
    tissue.append("csf")
    # a canal tissue outside the canal (a resampling fringe) is unlabelled
    labels[~canal & np.isin(np.asarray(tissue), CANAL_TISSUES)[labels]] = 0
    _add_clusters(labels, image, labels == 0, modality, n_clusters, tissue)
    present = np.flatnonzero(np.bincount(labels.ravel(), minlength=len(tissue)))
    lookup = np.zeros(len(tissue), dtype=np.int64)
    lookup[present] = np.arange(present.size)
    compact = lookup[labels].astype(np.uint8 if present.size < 256 else np.uint16)
    canal_ids = tuple(int(v) for v in np.unique(compact[canal]))
    return TissueMap(source=source, labels=compact, tissue=tuple(tissue[p] for p in present),
                     canal_ids=canal_ids, spacing=tuple(float(s) for s in spacing), disc_weight=disc_weight)


def tissue_map_from_scan(scan: AnnotatedScan, n_clusters: int = DEFAULT_CLUSTERS) -> TissueMap:
    """The scan's segmentations (catalogue ``tissues``) plus intensity clusters of what they leave."""
    from ..inference.levels import DISC_HEIGHT_MM

    # id 0 is "not labelled yet"; it never survives _finish
    labels = np.zeros(scan.canal.shape, dtype=np.int64)
    tissue = ["unlabelled"]
    for spec in scan.tissues:
        array = label_array(scan.root, spec, scan.stack)
        if "threshold" in spec:
            groups = [(spec.get("class", "other"), array > float(spec["threshold"]))]
        else:
            classes = {name: _label_set(values) for name, values in spec.get("classes", {}).items()}
            named = {v for values in classes.values() for v in values}
            classes["other"] = [int(v) for v in np.unique(array) if v != 0 and int(v) not in named]
            groups = [(name, array == value) for name, values in classes.items() for value in values]
        for name, mask in groups:
            free = mask & (labels == 0)  # earlier files take precedence
            if free.any():
                labels[free] = len(tissue)
                tissue.append(name)
    weight = scan.disc_weight(DISC_HEIGHT_MM[scan.region] / 2.5)
    image = texture(scan.name, scan.canal.shape, scan.stack.spacing) if scan.labels_only else scan.stack.array
    return _finish(scan.name, labels, tissue, scan.canal > 0, image, "MR" if scan.labels_only else scan.modality,
                   n_clusters, scan.stack.spacing, weight)


def texture(name: str, shape: tuple[int, ...], spacing: Sequence[float]) -> np.ndarray:
    """A smooth random field [k, j, i] with blobs of about TEXTURE_MM, the same for the same ``name``."""
    rng = np.random.default_rng(zlib.crc32(name.encode()))
    noise = rng.standard_normal(shape).astype(np.float32)
    return ndimage.gaussian_filter(noise, [TEXTURE_MM / 2.0 / float(v) for v in reversed(tuple(spacing))])


def tissue_map_from_phantom(study, n_clusters: int = DEFAULT_CLUSTERS + 1) -> TissueMap:
    """A phantom study's dural sac (CSF) and the rest of its canal (epidural fat), plus image clusters."""
    import SimpleITK as sitk

    image = sitk.GetArrayFromImage(study.image)
    canal = sitk.GetArrayFromImage(study.canal_mask) > 0
    sac = sitk.GetArrayFromImage(study.sac_mask) > 0
    labels = np.zeros(canal.shape, dtype=np.int64)
    labels[sac & canal] = 1
    labels[canal & ~sac] = 2
    tissue = ["unlabelled", "csf", "fat"]
    return _finish(f"phantom-{study.seed}", labels, tissue, canal, image, study.modality, n_clusters,
                   study.image.GetSpacing(), np.asarray(study.disc_weight))


# --------------------------------------------------------------------------- synthesis


def _smooth_field(rng: np.random.Generator, shape: tuple[int, int], spacing: tuple[float, float],
                  grid_mm: float, sigma: float) -> np.ndarray:
    """A smooth random field on the slice: normals on a coarse grid, cubic-upsampled."""
    coarse = (max(2, int(math.ceil(shape[0] * spacing[1] / grid_mm)) + 1),
              max(2, int(math.ceil(shape[1] * spacing[0] / grid_mm)) + 1))
    values = rng.normal(0.0, sigma, size=coarse)
    rows = np.linspace(0, coarse[0] - 1, shape[0])
    cols = np.linspace(0, coarse[1] - 1, shape[1])
    rr, cc = np.meshgrid(rows, cols, indexing="ij")
    return ndimage.map_coordinates(values, [rr, cc], order=3, mode="nearest")


def _deform(slab: np.ndarray, spacing: tuple[float, float], rng: np.random.Generator) -> np.ndarray:
    """The same smooth in-plane displacement on every slice of the slab; labels stay labels."""
    _, h, w = slab.shape
    sigma_mm = rng.uniform(0.0, 4.0)
    grid_mm = rng.uniform(25.0, 60.0)
    dj = _smooth_field(rng, (h, w), spacing, grid_mm, sigma_mm) / spacing[1]
    di = _smooth_field(rng, (h, w), spacing, grid_mm, sigma_mm) / spacing[0]
    jj, ii = np.meshgrid(np.arange(h, dtype=np.float64), np.arange(w, dtype=np.float64), indexing="ij")
    coords = [jj + dj, ii + di]
    return np.stack([ndimage.map_coordinates(s, coords, order=0, mode="nearest") for s in slab])


def draw_contrast(tissue: Sequence[str], rng: np.random.Generator, noise: bool = True
                  ) -> tuple[str, np.ndarray, np.ndarray]:
    """A contrast family and, per label, a mean and a spread (zero without ``noise``)."""
    names = list(CONTRAST_FAMILIES)
    family = names[int(rng.choice(len(names), p=np.array(list(CONTRAST_FAMILIES.values()))))]
    n = len(tissue)
    if family == "random":
        means = rng.uniform(0.0, 1.0, size=n)
    else:
        prior = CONTRAST_PRIORS[family]
        # every label draws its own mean around its tissue's: two vertebrae are not one grey
        centre = np.array([prior.get(t, np.nan) for t in tissue])
        other = np.isnan(centre)
        centre[other] = rng.uniform(0.1, 0.9, size=int(other.sum()))
        means = np.clip(centre + rng.normal(0.0, 0.06, size=n), 0.0, 1.0)
    spread = rng.uniform(0.0, 0.05, size=n) * np.where(np.asarray(tissue) == "bowel", 3.0, 1.0)
    return family, means, (spread if noise else np.zeros(n))


def _thickness_weights(half: int, dk: float, thickness: float) -> np.ndarray:
    """How much of a slab slice at each offset a slice ``thickness`` mm thick covers."""
    offsets = np.arange(-half, half + 1) * dk
    lo = np.maximum(offsets - dk / 2.0, -thickness / 2.0)
    hi = np.minimum(offsets + dk / 2.0, thickness / 2.0)
    weights = np.clip(hi - lo, 0.0, None)
    return weights / weights.sum()


def _resample_to(image: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    rows = np.linspace(0, image.shape[0] - 1, shape[0])
    cols = np.linspace(0, image.shape[1] - 1, shape[1])
    rr, cc = np.meshgrid(rows, cols, indexing="ij")
    return ndimage.map_coordinates(image, [rr, cc], order=1, mode="nearest")


#: a pixel of width w blurs like a Gaussian whose FWHM is w: sigma = w / 2.355
FWHM_PER_SIGMA = 2.355


def coarsen_slice(image: np.ndarray, spacing: tuple[float, float],
                  pixel_mm: Union[float, tuple[float, float]]) -> np.ndarray:
    """``image`` (pixel ``spacing`` (i, j) mm) as if acquired at ``pixel_mm`` pixels, on its own grid.

    ``pixel_mm`` is one size for both axes or a pair (i, j), as a sagittal
    series read as axial slices is coarse from side to side only. Blurred by
    the acquired pixel's width beyond its own, sampled at the coarse pixel size
    and interpolated back, as a scanner's coarse slice is when shown on a finer
    grid. An axis already as coarse is left as it is.
    """
    own = np.array([spacing[1], spacing[0]], dtype=float)  # rows, columns
    wanted = np.broadcast_to(np.asarray(pixel_mm, dtype=float), (2,))[::-1]  # (i, j) -> rows, columns
    acquired = np.maximum(own, wanted)
    if np.all(acquired <= own):
        return image
    sigma = np.sqrt(acquired ** 2 - own ** 2) / FWHM_PER_SIGMA / own
    blurred = ndimage.gaussian_filter(np.asarray(image, dtype=np.float32), sigma=sigma, mode="nearest")
    coarse = tuple(max(4, int(round(n * o / a))) for n, o, a in zip(image.shape, own, acquired))
    return _resample_to(_resample_to(blurred, coarse), image.shape).astype(np.float32)


def _crop_box(canal: np.ndarray, spacing: tuple[float, float], rng: np.random.Generator
              ) -> tuple[slice, slice]:
    """A random field of view around the canal: from a tight spine crop to the whole slice."""
    h, w = canal.shape
    jj, ii = np.nonzero(canal)
    if jj.size == 0:
        return slice(0, h), slice(0, w)
    margin = rng.uniform(15.0, 200.0, size=4)
    j0 = int(max(0, jj.min() - margin[0] / spacing[1]))
    j1 = int(min(h, jj.max() + 1 + margin[1] / spacing[1]))
    i0 = int(max(0, ii.min() - margin[2] / spacing[0]))
    i1 = int(min(w, ii.max() + 1 + margin[3] / spacing[0]))
    return slice(j0, j1), slice(i0, i1)


def synthesize_slice(labels: np.ndarray, spacing: Sequence[float], rng: np.random.Generator, *,
                     tissue: Sequence[str], canal_ids: Sequence[int],
                     options: SynthesisOptions = SynthesisOptions()) -> SyntheticSlice:
    """One random-contrast image of the centre slice of a label slab [n, j, i] (or a slice [j, i]).

    ``spacing`` is (i, j) or (i, j, k) in mm. Thick slices average the slab's
    slices (partial volume); the returned image, labels and box are on the
    slab's in-plane grid, cropped when the field of view is.
    """
    slab = labels[None] if labels.ndim == 2 else labels
    si, sj = float(spacing[0]), float(spacing[1])
    sk = float(spacing[2]) if len(spacing) > 2 else MAX_THICKNESS_MM
    half = slab.shape[0] // 2
    if options.deform:
        slab = _deform(slab, (si, sj), rng)
    centre = slab[half]
    canal = np.isin(centre, canal_ids)
    if options.crop and rng.random() < 0.6:
        rows, cols = _crop_box(canal, (si, sj), rng)
        slab, centre, canal = slab[:, rows, cols], centre[rows, cols], canal[rows, cols]
    family, means, spread = draw_contrast(tissue, rng, options.noise)
    thickness = sk
    if options.resolution and half > 0 and rng.random() < 0.6:
        thickness = rng.uniform(sk, max(sk, MAX_THICKNESS_MM))
    weights = _thickness_weights(half, sk, thickness)
    image = np.zeros(centre.shape, dtype=np.float64)
    for w, layer in zip(weights, slab):
        if w > 0:
            image += w * (means[layer] + spread[layer] * rng.standard_normal(layer.shape))
    if options.bias:
        strength = rng.uniform(0.0, 0.35) * (0.3 if family == "CT" else 1.0)
        image *= np.exp(_smooth_field(rng, image.shape, (si, sj), rng.uniform(60.0, 150.0), strength))
    shape = image.shape
    if options.resolution:
        # acquired at a random pixel size (0.3-3 mm, log-uniform), shown on the slab's grid
        acquired = np.exp(rng.uniform(math.log(0.3), math.log(3.0), size=2))
        zoom = np.array([sj, si]) / acquired  # < 1: coarser than the grid
        sigma = np.where(zoom < 1.0, 0.42 / np.maximum(zoom, 1e-3), rng.uniform(0.0, 0.5))
        image = ndimage.gaussian_filter(image, sigma=sigma, mode="nearest")
        if (zoom < 1.0).any():
            coarse = tuple(max(4, int(round(n * min(z, 1.0)))) for n, z in zip(shape, zoom))
            image = _resample_to(image, coarse)
    if options.noise:
        sigma_noise = rng.uniform(0.0, 0.06)
        noise = rng.normal(0.0, sigma_noise, size=(2,) + image.shape)
        if family == "CT":
            image = image + noise[0]
        else:  # magnitude images: Rician
            image = np.sqrt((image + noise[0]) ** 2 + noise[1] ** 2)
    if image.shape != shape:
        image = _resample_to(image, shape)
    low, high = np.percentile(image, [rng.uniform(0.0, 1.5), rng.uniform(98.5, 100.0)])
    image = np.clip((image - low) / max(high - low, 1e-6), 0.0, 1.0)
    if options.gamma:
        image = image ** math.exp(rng.normal(0.0, 0.3))
    boxes = canal_boxes(canal[None].astype(np.uint8))
    return SyntheticSlice(image=image.astype(np.float32), labels=centre, canal=canal, box_ij=boxes.get(0),
                          spacing=(si, sj), contrast=family)


def synthesize_from_map(tmap: TissueMap, k: int, rng: np.random.Generator,
                        options: SynthesisOptions = SynthesisOptions()) -> SyntheticSlice:
    """A synthetic slice k of a tissue map, with a slab thick enough for the thickest slice drawn."""
    half = int(math.ceil(MAX_THICKNESS_MM / tmap.spacing[2] / 2.0 - 0.5)) if options.resolution else 0
    return synthesize_slice(tmap.slab(k, half), tmap.spacing, rng, tissue=tmap.tissue,
                            canal_ids=tmap.canal_ids, options=options)
