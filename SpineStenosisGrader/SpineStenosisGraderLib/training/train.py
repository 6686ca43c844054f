"""Layer 8: train the default model package, reproducibly, from phantoms and annotated real scans.

``spine-stenosis-grader train`` runs this. Seeds fix the phantoms, the
augmentations and the weight initialisation, so the same command gives the
same package on the same software. Phantom seeds used here never overlap the
evaluation seeds in ``evaluation.py``.
"""

from __future__ import annotations

import contextlib
import math
import os
import subprocess
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence

import numpy as np
from tqdm import tqdm

from .kernels import KERNEL_VARIABLES, kernels_are_portable
from .annotations import AnnotatedScan, load_annotated_scan, load_catalogue, load_label_maps
from .synthesis import TissueMap, coarsen_slice, synthesize_from_map, tissue_map_from_phantom, tissue_map_from_scan
from ..inference.classifier import DEFAULT_CLASSIFIER_CONFIG, build_classifier_model, grade_patch
from ..inference.detector import DEFAULT_DETECTOR_CONFIG, build_detector_model
from ..inference.levels import DISC_HEIGHT_MM
from ..study.normalise import intensity_window, sample_patch
from ..packages.package import write_manifest
from ..scales import get_scale
from ..study.volume import to_axial_stack

#: phantom seeds for training start here; evaluation uses EVAL_SEED_BASE and up
TRAIN_SEED_BASE = 0
EVAL_SEED_BASE = 1_000_000
#: a synthetic slice's source is this prefix and the scan or phantom its label map came from
SYNTH_PREFIX = "synth:"
#: threads torch trains with: fixed, because the sum order of a reduction depends on it
TRAIN_THREADS = 2
#: share of each detector batch drawn from each pool, renormalised over the pools that have slices;
#: without synthetic slices real and phantom keep the 0.4 : 0.6 the package before synthesis trained with
POOL_FRACTIONS = {"real": 0.26, "phantom": 0.39, "synthetic": 0.35}
#: the detector's weights (and batch-norm statistics) may be an exponential moving average over the second half
#: of training, with this decay (0: the last step's weights). One run's last step is one draw; an average over
#: many steps is meant to vary less from seed to seed. It changes nothing in the steps themselves
DETECTOR_EMA_DECAY = 0.0
#: the average starts (as a copy) at this fraction of the iterations: before it the learning rate is high
DETECTOR_EMA_START = 0.5
#: share of detector samples shown as a sagittal series read as axial slices: the reader takes sagittal slices
#: up to 3 mm as axial ones, and lumbar MR resampled from thicker sagittal slices exists (16 of 4.4 mm). Each
#: such slice is coarse from side to side (SAGITTAL_THICKNESS_MM) and narrow (SAGITTAL_MARGIN_MM beside the
#: canal). 0 draws nothing, so the samples, and the weights, are those of a trainer without it
SAGITTAL_STRIP_SHARE = 0.0
SAGITTAL_THICKNESS_MM = (2.5, 5.0)
SAGITTAL_MARGIN_MM = (15.0, 35.0)


@dataclass
class DetectorSlice:
    """One training slice: normalised [j, i], pixel spacing, canal box (edge coordinates) and class."""

    image: np.ndarray
    spacing: tuple[float, float]
    box_ij: tuple[float, float, float, float]
    label: int
    source: str


def slices_from_scan(scan: AnnotatedScan) -> list[DetectorSlice]:
    window = intensity_window(scan.stack.array, scan.modality)
    weight = scan.disc_weight(DISC_HEIGHT_MM[scan.region] / 2.5)
    spacing = (scan.stack.spacing[0], scan.stack.spacing[1])
    out = []
    for k, box in (scan.boxes if scan.training_boxes is None else scan.training_boxes).items():
        out.append(DetectorSlice(window.apply(scan.stack.array[k]).astype(np.float16), spacing,
                                 tuple(float(v) for v in box), 2 if weight[k] >= 0.5 else 1, scan.name))
    return out


def origin_of(source: str) -> str:
    """The scan or phantom a slice comes from, whether real or synthesised from its labels."""
    return source[len(SYNTH_PREFIX):] if source.startswith(SYNTH_PREFIX) else source


def pool_of(source: str) -> str:
    if source.startswith(SYNTH_PREFIX):
        return "synthetic"
    return "phantom" if source.startswith("phantom") else "real"


def synthetic_slices(tmap: TissueMap, count: int, rng: np.random.Generator) -> list[DetectorSlice]:
    """``count`` domain-randomised slices of the tissue map's canal slices (disc slices favoured)."""
    keys = np.flatnonzero(tmap.canal.any(axis=(1, 2)))
    if count <= 0 or keys.size == 0:
        return []
    weights = 1.0 + 3.0 * (tmap.disc_weight[keys] >= 0.5)
    out = []
    for k in rng.choice(keys, size=count, replace=True, p=weights / weights.sum()):
        synth = synthesize_from_map(tmap, int(k), rng)
        if synth.box_ij is None:  # the deformation or crop left too little canal
            continue
        out.append(DetectorSlice(synth.image.astype(np.float16), synth.spacing,
                                 tuple(float(v) for v in synth.box_ij),
                                 2 if tmap.disc_weight[k] >= 0.5 else 1, SYNTH_PREFIX + tmap.source))
    return out


def _component_rng(seed: int, component: str) -> np.random.Generator:
    """One generator per scan or phantom: leaving one out does not change what the others give."""
    return np.random.default_rng([seed, zlib.crc32(component.encode())])


def slices_from_phantom(seed: int, modality: str, region: str, per_study: int,
                        rng: np.random.Generator, synthetic: int = 0, synth_seed: int = 0) -> list[DetectorSlice]:
    from .phantom import make_study

    study = make_study(seed, modality=modality, region=region)
    stack = to_axial_stack(study.image, source=f"phantom-{seed}")
    window = intensity_window(stack.array, modality)
    keys = sorted(study.canal_boxes)
    # favour disc slices: they are the ones graded, and rarer than body slices
    weights = np.array([1.0 + 3.0 * float(study.disc_weight[k] >= 0.5) for k in keys])
    chosen = rng.choice(keys, size=min(per_study, len(keys)), replace=False, p=weights / weights.sum())
    spacing = (stack.spacing[0], stack.spacing[1])
    out = [
        DetectorSlice(window.apply(stack.array[k]).astype(np.float16), spacing,
                      tuple(float(v) for v in study.canal_boxes[k]),
                      2 if study.disc_weight[k] >= 0.5 else 1, f"phantom-{seed}")
        for k in chosen
    ]
    if synthetic > 0:
        out.extend(synthetic_slices(tissue_map_from_phantom(study), synthetic,
                                    _component_rng(synth_seed, f"phantom-{seed}")))
    return out


def augment_intensity(patch: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    gamma = float(np.exp(rng.uniform(-0.35, 0.35)))
    out = np.clip(patch, 0.0, 1.0) ** gamma
    out = out * rng.uniform(0.85, 1.15) + rng.uniform(-0.08, 0.08)
    out = out + rng.normal(0.0, rng.uniform(0.0, 0.04), size=out.shape)
    return np.clip(out, 0.0, 1.0).astype(np.float32)


def detector_sample(item: DetectorSlice, config: dict[str, Any], rng: np.random.Generator,
                    augment: bool = True, sagittal_share: float = SAGITTAL_STRIP_SHARE
                    ) -> tuple[np.ndarray, np.ndarray]:
    """A canvas and its target box (u0, v0, u1, v1), with geometric and intensity augmentation.

    With ``sagittal_share`` > 0, that share of augmented samples is made a sagittal series' slice
    (``sagittal_strip``) instead of being offered the field-of-view crop.
    """
    size = int(config["canvas"])
    spacing = float(config["spacing_mm"]) * (rng.uniform(0.85, 1.15) if augment else 1.0)
    h, w = item.image.shape
    centre = np.array([w / 2.0, h / 2.0])
    if augment:
        shift_mm = rng.uniform(-45.0, 45.0, size=2)
        centre = centre + shift_mm / np.asarray(item.spacing)
    angle = math.radians(rng.uniform(-10.0, 10.0)) if augment else 0.0
    flip = bool(augment and rng.random() < 0.5)
    image = item.image.astype(np.float32)
    if augment and sagittal_share > 0.0 and rng.random() < sagittal_share:
        image = sagittal_strip(image, item.box_ij, item.spacing, rng)
    elif augment and rng.random() < 0.25:
        image = _crop_field_of_view(image, item.box_ij, item.spacing, rng)
    patch, geometry = sample_patch(image, item.spacing, tuple(centre), size, spacing, angle, flip)
    box = geometry.rounded_box_to_patch(item.box_ij)
    if augment:
        patch = augment_intensity(patch, rng)
    return patch, np.clip(box, 0.0, size)


def _crop_field_of_view(image: np.ndarray, box_ij: Sequence[float], spacing: tuple[float, float],
                        rng: np.random.Generator) -> np.ndarray:
    """Blank everything outside a random rectangle around the canal: cropped studies exist."""
    margin = rng.uniform(25.0, 70.0, size=4) / np.array([spacing[0], spacing[1], spacing[0], spacing[1]])
    return _blank_beyond(image, box_ij, margin)


def _blank_beyond(image: np.ndarray, box_ij: Sequence[float], margin_px: Sequence[float]) -> np.ndarray:
    """``image`` blank beyond ``margin_px`` (i0, j0, i1, j1 sides; inf keeps that side whole) around the box."""
    i0, j0, i1, j1 = box_ij
    a0 = int(max(0, i0 - margin_px[0]))
    b0 = int(max(0, j0 - margin_px[1]))
    a1 = int(min(image.shape[1], i1 + margin_px[2]))
    b1 = int(min(image.shape[0], j1 + margin_px[3]))
    out = np.zeros_like(image)
    out[b0:b1, a0:a1] = image[b0:b1, a0:a1]
    return out


def sagittal_strip(image: np.ndarray, box_ij: Sequence[float], spacing: tuple[float, float],
                   rng: np.random.Generator) -> np.ndarray:
    """An axial slice as a sagittal series shows it: coarse from side to side, and blank beyond its few slices."""
    thickness = rng.uniform(*SAGITTAL_THICKNESS_MM)
    image = coarsen_slice(image, spacing, (thickness, 0.0))
    side = rng.uniform(*SAGITTAL_MARGIN_MM, size=2) / spacing[0]
    # front to back the sagittal slices hold the whole depth
    return _blank_beyond(image, box_ij, (side[0], math.inf, side[1], math.inf))


def _cosine_lr(step: int, total: int, base: float, warmup: int) -> float:
    if step < warmup:
        return base * (step + 1) / warmup
    return base * 0.5 * (1.0 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


@contextlib.contextmanager
def deterministic_torch(seed: int, threads: int = TRAIN_THREADS) -> Iterator[None]:
    """Same seed, same software, same weights: deterministic kernels and a fixed thread count.

    With the portable kernels (``kernels.py``) oneDNN is off as well, so that the
    weights are the same on more kinds of CPU than this one (Intel Xeons agree; an AMD EPYC does not).
    """
    import torch

    previous = (torch.get_num_threads(), torch.are_deterministic_algorithms_enabled(),
                torch.is_deterministic_algorithms_warn_only_enabled(), torch.backends.mkldnn.enabled)
    torch.set_num_threads(threads)
    # warn_only: an op without a deterministic kernel warns instead of stopping a run
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.manual_seed(seed)
    if kernels_are_portable():
        torch.backends.mkldnn.enabled = False
    try:
        yield
    finally:
        torch.set_num_threads(previous[0])
        torch.use_deterministic_algorithms(previous[1], warn_only=previous[2])
        torch.backends.mkldnn.enabled = previous[3]


def check_detector_ema(decay: float) -> None:
    """Refuse (ValueError) a decay of the detector's weight average outside [0, 1); 0 turns it off."""
    if not 0.0 <= decay < 1.0:
        raise ValueError(f"the detector's EMA decay must be in [0, 1), not {decay}")


def check_sagittal_share(share: float) -> None:
    """Refuse (ValueError) a share of sagittal-series samples outside [0, 1]."""
    if not 0.0 <= share <= 1.0:
        raise ValueError(f"the share of sagittal-series samples must be in [0, 1], not {share}")


def train_detector(data: Sequence[DetectorSlice], config: dict[str, Any], iterations: int, batch_size: int,
                   seed: int, lr: float = 1.5e-3, fractions: Optional[dict[str, float]] = None,
                   ema_decay: float = DETECTOR_EMA_DECAY, sagittal_share: float = SAGITTAL_STRIP_SHARE):
    """Train the Faster R-CNN; each batch item comes from a pool (real, synthetic, phantom) by ``fractions``.

    With ``ema_decay`` > 0 the model returned is the moving average (``DETECTOR_EMA_DECAY``).
    """
    check_detector_ema(ema_decay)
    check_sagittal_share(sagittal_share)
    with deterministic_torch(seed):
        return _train_detector(data, config, iterations, batch_size, seed, lr, fractions or POOL_FRACTIONS,
                               ema_decay, sagittal_share)


def _train_detector(data, config, iterations, batch_size, seed, lr, fractions, ema_decay, sagittal_share):
    import torch

    rng = np.random.default_rng(seed)
    model = build_detector_model(config)
    model.train()
    ema = None
    ema_start = int(iterations * DETECTOR_EMA_START)
    optimiser = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    pools = {name: [d for d in data if pool_of(d.source) == name] for name in fractions}
    pools = {name: items for name, items in pools.items() if items}
    names = list(pools)
    # one uniform draw per item against cumulative shares (none with one pool): without synthetic
    # slices this is the draw sequence, and so the weights, of the trainer before synthesis
    cuts = np.cumsum([fractions[n] for n in names])[:-1] / sum(fractions[n] for n in names)
    losses: list[float] = []
    bar = tqdm(range(iterations), desc="detector", unit="it")
    for step in bar:
        for group in optimiser.param_groups:
            group["lr"] = _cosine_lr(step, iterations, lr, warmup=max(1, iterations // 20))
        images, targets = [], []
        for _ in range(batch_size):
            pool = pools[names[int(np.searchsorted(cuts, rng.random(), side="right")) if len(names) > 1 else 0]]
            item = pool[int(rng.integers(len(pool)))]
            patch, box = detector_sample(item, config, rng, sagittal_share=sagittal_share)
            images.append(torch.from_numpy(patch)[None])
            targets.append({
                "boxes": torch.tensor(box[None], dtype=torch.float32),
                "labels": torch.tensor([item.label], dtype=torch.int64),
            })
        loss_parts = model(images, targets)
        loss = sum(loss_parts.values())
        optimiser.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
        optimiser.step()
        if ema_decay > 0.0 and step >= ema_start:
            if ema is None:
                from timm.utils import ModelEmaV3

                # a copy of the weights and buffers (batch-norm statistics too), averaged from here on
                ema = ModelEmaV3(model, decay=ema_decay)
            else:
                ema.update(model)
        losses.append(float(loss.detach()))
        if step % 10 == 0:
            bar.set_postfix(loss=f"{np.mean(losses[-20:]):.3f}")
    return (ema.module if ema is not None else model).eval(), losses


@dataclass
class GradeSample:
    image: np.ndarray
    spacing: tuple[float, float]
    box_ij: tuple[float, float, float, float]
    grade_index: int
    modality: str


def grade_samples(seeds: Sequence[int], region: str, scale_key: str) -> list[GradeSample]:
    """Disc-level phantom slices with balanced grades (the seed picks the grade and modality)."""
    from .phantom import make_disc_slice

    names = get_scale(scale_key).names
    out = []
    for seed in tqdm(seeds, desc="grade phantoms", unit="slice"):
        grade = names[seed % len(names)]
        modality = "MR" if (seed // len(names)) % 3 else "CT"
        # a 256 matrix is enough around the canal and generates three times faster than 512
        image, spacing, box, _ = make_disc_slice(seed, modality, region, grade, matrix=256)
        # raw intensities: the crop is windowed on itself, as at inference
        out.append(GradeSample(image.astype(np.float32), tuple(spacing), tuple(float(v) for v in box),
                               names.index(grade), modality))
    return out


def classifier_sample(item: GradeSample, config: dict[str, Any], rng: Optional[np.random.Generator]) -> np.ndarray:
    """The crop the classifier sees; with ``rng``, jittered as a detector's box would be."""
    i0, j0, i1, j1 = item.box_ij
    centre = np.array([(i0 + i1) / 2.0, (j0 + j1) / 2.0])
    image = item.image.astype(np.float32)
    if rng is None:
        return grade_patch(image, item.spacing, tuple(centre), config, item.modality)
    centre = centre + rng.normal(0.0, 1.5, size=2) / np.asarray(item.spacing)
    patch = grade_patch(image, item.spacing, tuple(centre), config, item.modality, rng.uniform(0.9, 1.1),
                        math.radians(rng.uniform(-12, 12)), bool(rng.random() < 0.5))
    return augment_intensity(patch, rng)


def train_classifier(data: Sequence[GradeSample], config: dict[str, Any], n_classes: int, epochs: int,
                     batch_size: int, seed: int, lr: float = 2e-3):
    with deterministic_torch(seed):
        return _train_classifier(data, config, n_classes, epochs, batch_size, seed, lr)


def _train_classifier(data, config, n_classes, epochs, batch_size, seed, lr):
    import torch

    rng = np.random.default_rng(seed + 1)
    model = build_classifier_model(config, n_classes)
    model.train()
    optimiser = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-3)
    steps_per_epoch = max(1, len(data) // batch_size)
    total = epochs * steps_per_epoch
    losses: list[float] = []
    bar = tqdm(range(total), desc="classifier", unit="it")
    loss_fn = torch.nn.CrossEntropyLoss(label_smoothing=0.05)
    for step in bar:
        for group in optimiser.param_groups:
            group["lr"] = _cosine_lr(step, total, lr, warmup=max(1, total // 20))
        picks = rng.integers(len(data), size=batch_size)
        x = torch.from_numpy(np.stack([classifier_sample(data[p], config, rng) for p in picks]))[:, None]
        y = torch.tensor([data[p].grade_index for p in picks], dtype=torch.int64)
        loss = loss_fn(model(x), y)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        losses.append(float(loss.detach()))
        if step % 10 == 0:
            bar.set_postfix(loss=f"{np.mean(losses[-20:]):.3f}")
    return model.eval(), losses


PHANTOM_MIX = (("MR", "lumbar"), ("CT", "lumbar"), ("MR", "cervical"), ("CT", "cervical"))


#: synthetic slices drawn from each real scan's label map, and from each phantom study's
SYNTHETIC_PER_SCAN = 300
SYNTHETIC_PER_PHANTOM = 4
#: per label map without an image (the catalogue's ``label_maps``), by default none: the embedded package learned
#: from none, and three seeds with 40 per map (the 28 SPIDER maps then give about as many synthetic slices as the
#: four scans with images) did not do better on the validation scans as a whole (README, "Retraining")
SYNTHETIC_PER_LABEL_MAP = 0


def training_scans(catalogue: Path, all_scans: bool = False, exclude_scans: Sequence[str] = ()) -> list[str]:
    """Names of the catalogue scans the detector trains on: ``use: train`` (or all), less the excluded.

    A scan without disc positions (a cord mask alone) never trains it, not even with ``all_scans``: every
    one of its slices would be taught as one that cuts no disc. Nor does one without a canal label (disc
    labels alone): every slice would be taught as one without a canal. Nor does one whose canal label is the cord
    alone (``canal.cord_only``): the detector boxes the dural sac around it.
    """
    entries = load_catalogue(catalogue)
    names = [e["name"] for e in entries]
    known = set(names) | {e["name"] for e in load_catalogue(catalogue, "label_maps")}
    unknown = sorted(set(exclude_scans) - known - {s for s in exclude_scans if s.startswith("phantom-")})
    if unknown:
        from ..errors import SpineStenosisGraderError

        raise SpineStenosisGraderError(f"Not in {catalogue.name}: {', '.join(unknown)} (it has {', '.join(names)}).")
    return [e["name"] for e in entries
            if (all_scans or e.get("use") == "train") and e.get("discs") and e.get("canal")
            and not e["canal"].get("cord_only") and e["name"] not in set(exclude_scans)]


def build_detector_data(catalogue: Path, n_phantoms: int, per_study: int, seed: int, *,
                        synthetic_per_scan: int = SYNTHETIC_PER_SCAN,
                        synthetic_per_phantom: int = SYNTHETIC_PER_PHANTOM,
                        synthetic_per_label_map: int = SYNTHETIC_PER_LABEL_MAP,
                        exclude_scans: Sequence[str] = (), all_scans: bool = False) -> list[DetectorSlice]:
    """Real slices, phantom slices, and slices synthesised from their label maps and from label maps alone.

    Nothing derived from a scan in ``exclude_scans`` is kept (its real slices
    and every synthetic slice drawn from its labels), for leave-one-scan-out.
    A label map without its image (the catalogue's ``label_maps``) gives
    synthetic slices only: its labels are no picture of a spine.
    """
    rng = np.random.default_rng(seed)
    data: list[DetectorSlice] = []
    wanted = set(training_scans(catalogue, all_scans, exclude_scans))
    # only the scans trained on are read: the catalogue also lists large validation scans
    for entry in load_catalogue(catalogue):
        if entry["name"] not in wanted:
            continue
        scan = load_annotated_scan(entry, catalogue.parent)
        data.extend(slices_from_scan(scan))
        if synthetic_per_scan > 0:
            data.extend(synthetic_slices(tissue_map_from_scan(scan), synthetic_per_scan,
                                         _component_rng(seed, scan.name)))
    if synthetic_per_label_map > 0:
        for scan in tqdm(load_label_maps(catalogue, exclude_scans), desc="label maps", unit="map"):
            data.extend(synthetic_slices(tissue_map_from_scan(scan), synthetic_per_label_map,
                                         _component_rng(seed, scan.name)))
    for n in tqdm(range(n_phantoms), desc="detector phantoms", unit="study"):
        modality, region = PHANTOM_MIX[n % len(PHANTOM_MIX)]
        data.extend(slices_from_phantom(TRAIN_SEED_BASE + n, modality, region, per_study, rng,
                                        synthetic_per_phantom, seed))
    excluded = set(exclude_scans)
    return [d for d in data if origin_of(d.source) not in excluded]


def git_state() -> dict[str, Any]:
    """The commit of the code that trained, and whether the work tree differed from it."""
    root = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                                timeout=10, check=True).stdout.strip()
        status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                                capture_output=True, text=True, timeout=10, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}
    return {"commit": commit, "dirty": bool(status.strip())}


def machine_state() -> dict[str, Any]:
    """The CPU and library versions that trained.

    With the portable kernels (``kernels.py``) the record shows they were in force;
    with ``--native-kernels`` it tells which kind of CPU can remake the weights.
    """
    import platform

    import timm
    import torch
    import torchvision

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            cpu = next((line.split(":", 1)[1].strip() for line in handle if line.startswith("model name")), cpu)
    except OSError:
        pass
    # these variables change which kernels torch, oneDNN and MKL pick, so they change the weights too
    kernel_settings = {name: os.environ[name] for name in KERNEL_VARIABLES if name in os.environ}
    return {"cpu": cpu, "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "kernel_settings": kernel_settings, "python": platform.python_version(), "torch": torch.__version__,
            "torchvision": torchvision.__version__, "timm": timm.__version__}


def load_classifier(package_dir: Path):
    """An existing package's classifier, its config and where it came from, to reuse it unchanged."""
    from ..packages.package import load_package

    package = load_package(package_dir, backend="torch")
    config = {k: v for k, v in package.classifier_config.items() if k not in ("classes", "definitions")}
    model = package.torch_classifier().model
    origin = {"package": f"{package.name} {package.version}",
              "sha256": package.manifest["files"]["classifier"]["sha256"],
              "training_data": package.manifest.get("training_data", {}).get("summary", "")}
    return model, config, origin


#: the studies a package made here shows its grade on. Its grade learns from phantom disc slices only, and the
#: phantoms' CT does not look like real CT (their posterior elements are far heavier, and at CT's soft-tissue
#: contrast the sac hardly shows), so on real CT believed free of stenosis it calls most levels stenosed; on
#: real T2 it calls every such level A. Phantom slices coarsened beyond 1.5 mm pixels are graded near chance.
#: ``evaluate`` measures both (metrics ``model_grade_A`` and ``grade.accuracy_at_pixel_mm``)
GRADE_SCOPE = {
    "modalities": ["MR"],
    "max_pixel_mm": 1.5,
    "why": "its grade is learned from phantoms: on real CT believed free of stenosis it called most levels "
           "stenosed, and on phantom slices with pixels coarser than 1.5 mm it is little better than chance; "
           "see the README's Grade section",
}


def save_package(out_dir: Path, detector, classifier, detector_config: dict[str, Any],
                 classifier_config: dict[str, Any], training: dict[str, Any], metrics: dict[str, Any],
                 version: str) -> None:
    from safetensors.torch import save_file

    out_dir.mkdir(parents=True, exist_ok=True)
    for key, model in (("detector", detector), ("classifier", classifier)):
        # float16 on disk halves the package; load_state_dict casts back to the model's float32
        state = {k: (v.half() if v.is_floating_point() else v).contiguous() for k, v in model.state_dict().items()}
        save_file(state, str(out_dir / f"{key}.safetensors"))
    scale = get_scale(classifier_config["scale"])
    manifest = {
        "name": "spine-stenosis-grader-default",
        "version": version,
        "task": "canal detection, disc levels and lumbar central canal grade",
        "modalities": ["CT", "MR"],
        "regions": ["lumbar"],
        "detects_regions": ["lumbar", "cervical"],
        "grade_scope": GRADE_SCOPE,
        "intended_use": "Not for clinical use: trained on phantoms and public samples",
        "licence": "Apache-2.0",
        "detector": detector_config,
        "classifier": dict(classifier_config, classes=scale.names,
                           definitions={c.name: c.definition for c in scale.classes}),
        "normalisation": {"CT": {"window_hu": [-200.0, 1000.0]},
                          "MR": {"percentiles": [1.0, 99.5],
                                 "detector": "of the study's voxels above its 5th percentile; at inference, a slice "
                                             "darkened by the coil's fall-off is first lifted to 0.8 of the median "
                                             "slice's brightness, and a study whose median slice is below half "
                                             "the window, to 0.8 of it (study/normalise.py slice_gains)",
                                 "classifier": "of the level's crop"}},
        "training_data": training,
        "metrics": metrics,
        "weights_dtype": "float16",
        "files": {
            "detector": {"path": "detector.safetensors"},
            "classifier": {"path": "classifier.safetensors"},
        },
    }
    write_manifest(out_dir, manifest)


def train_default_package(out_dir: Path, catalogue: Path, *, n_phantoms: int = 96, per_study: int = 24,
                          detector_iterations: int = 700, detector_batch: int = 8,
                          n_grade_slices: int = 2400, classifier_epochs: int = 10, classifier_batch: int = 48,
                          seed: int = 0, version: str = "0.5.0",
                          synthetic_per_scan: int = SYNTHETIC_PER_SCAN,
                          synthetic_per_phantom: int = SYNTHETIC_PER_PHANTOM,
                          synthetic_per_label_map: int = SYNTHETIC_PER_LABEL_MAP,
                          detector_ema: float = DETECTOR_EMA_DECAY,
                          sagittal_share: float = SAGITTAL_STRIP_SHARE,
                          exclude_scans: Sequence[str] = (), all_scans: bool = False,
                          classifier_from: Optional[Path] = None, command: Optional[str] = None) -> dict[str, Any]:
    """Train detector and classifier and write the package. Returns what was done, for the log.

    ``exclude_scans`` leaves catalogue scans (and everything synthesised from
    them) out, for leave-one-scan-out folds; ``all_scans`` trains on held-out
    scans too. With ``classifier_from`` only the detector is trained and that
    package's classifier is reused as it is (it trains on phantoms alone).
    """
    check_sagittal_share(sagittal_share)
    started = time.time()
    # the code as it is now, when it is loaded: a commit made while the hour of training runs is not what trained
    code = git_state()
    detector_config = dict(DEFAULT_DETECTOR_CONFIG)
    data = build_detector_data(catalogue, n_phantoms, per_study, seed, synthetic_per_scan=synthetic_per_scan,
                               synthetic_per_phantom=synthetic_per_phantom,
                               synthetic_per_label_map=synthetic_per_label_map, exclude_scans=exclude_scans,
                               all_scans=all_scans)
    data_minutes = (time.time() - started) / 60.0
    detector, det_losses = train_detector(data, detector_config, detector_iterations, detector_batch, seed,
                                            ema_decay=detector_ema, sagittal_share=sagittal_share)
    if classifier_from is not None:
        classifier, classifier_config, classifier_origin = load_classifier(Path(classifier_from))
        cls_losses: list[float] = []
        grade_summary = f"the classifier of {classifier_origin['package']} reused unchanged"
    else:
        classifier_config = dict(DEFAULT_CLASSIFIER_CONFIG)
        scale = get_scale(classifier_config["scale"])
        grade_data = grade_samples(range(TRAIN_SEED_BASE, TRAIN_SEED_BASE + n_grade_slices), "lumbar", scale.key)
        classifier, cls_losses = train_classifier(grade_data, classifier_config, len(scale.classes),
                                                  classifier_epochs, classifier_batch, seed)
        classifier_origin = None
        grade_summary = f"{n_grade_slices} phantom disc slices for the grade"
    real_names = sorted({d.source for d in data if pool_of(d.source) == "real"})
    map_names = set(e["name"] for e in load_catalogue(catalogue, "label_maps"))
    label_maps = sorted({origin_of(d.source) for d in data if origin_of(d.source) in map_names})
    synth_counts: dict[str, int] = {}
    for d in data:
        if pool_of(d.source) == "synthetic":
            key = "phantoms" if origin_of(d.source).startswith("phantom") else origin_of(d.source)
            synth_counts[key] = synth_counts.get(key, 0) + 1
    if command is None:
        command = (f"spine-stenosis-grader train --catalogue {catalogue.name} --phantoms {n_phantoms} "
                   f"--per-study {per_study} --detector-iterations {detector_iterations} "
                   f"--grade-slices {n_grade_slices} --classifier-epochs {classifier_epochs} --seed {seed} "
                   f"--synthetic-per-scan {synthetic_per_scan} --synthetic-per-phantom {synthetic_per_phantom} "
                   f"--synthetic-per-label-map {synthetic_per_label_map} --detector-ema {detector_ema} "
                   f"--sagittal-share {sagittal_share}"
                   + "".join(f" --exclude-scan {name}" for name in exclude_scans)
                   + (" --all-scans" if all_scans else "")
                   + (f" --detector-only --classifier-from {classifier_from}" if classifier_from else ""))
    training = {
        "summary": (f"{n_phantoms} phantom studies (CT and T2 MR, lumbar and cervical), the public scans "
                    f"{', '.join(real_names)}"
                    + (" and images synthesised from the label maps of all of them and of the phantoms (random "
                       "contrast, resolution, noise, bias and deformation)" if synth_counts else "")
                    + (f", and from {len(label_maps)} label maps without their images (the catalogue's "
                       "label_maps)" if label_maps else "")
                    + f" for the detector; {grade_summary}"),
        "detector_real_scans": real_names,
        "detector_label_maps": label_maps,
        "detector_excluded_scans": sorted(exclude_scans),
        "detector_phantom_seeds": [TRAIN_SEED_BASE, TRAIN_SEED_BASE + n_phantoms - 1],
        "detector_slices": len(data),
        "detector_synthetic_slices": synth_counts,
        "detector_pool_fractions": POOL_FRACTIONS,
        "detector_ema": {"decay": detector_ema, "from_iteration": int(detector_iterations * DETECTOR_EMA_START)}
        if detector_ema > 0 else None,
        "detector_sagittal_share": sagittal_share,
        "command": command,
        "code": code,
        "machine": machine_state(),
        "seed": seed,
        "torch_threads": TRAIN_THREADS,
        # with portable kernels Intel Xeons give these weights (an AMD EPYC did not); without, only this kind of CPU
        "portable_kernels": kernels_are_portable(),
        "final_loss": {"detector": float(np.mean(det_losses[-50:])),
                       "classifier": float(np.mean(cls_losses[-50:])) if cls_losses else None},
        "last_losses": {"detector": [round(v, 6) for v in det_losses[-5:]],
                        "classifier": [round(v, 6) for v in cls_losses[-5:]]},
        "data_minutes": round(data_minutes, 1),
        "minutes": round((time.time() - started) / 60.0, 1),
    }
    if classifier_origin is not None:
        training["classifier_from"] = classifier_origin
    else:
        training["grade_phantom_seeds"] = [TRAIN_SEED_BASE, TRAIN_SEED_BASE + n_grade_slices - 1]
    save_package(out_dir, detector, classifier, detector_config, classifier_config, training, {}, version)
    # the light runtime's graphs, made from the weights just written (see export.py)
    from .export import export_onnx

    training["onnx"] = export_onnx(out_dir)
    return training
