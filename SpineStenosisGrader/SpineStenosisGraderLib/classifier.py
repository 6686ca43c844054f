"""Layer 5: grade a disc level from a crop of its representative slice.

The crop is cut in physical millimetres around the canal box's centre (not
from a resized picture, the seeds' own mistake), so the classifier always sees
the canal at the same scale. ``sample_patch`` is the one place that maps a
slice onto a model grid; training uses it with random rotation and scale.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
from scipy import ndimage

from .result import GradePrediction
from .scales import GradingScale

DEFAULT_CLASSIFIER_CONFIG: dict[str, Any] = {
    "backbone": "resnet10t",
    "crop_mm": 48.0,
    "input_size": 112,
    "task": "lumbar_central_canal",
    "scale": "schizas",
    #: below this top-class probability a grade is flagged as uncertain
    "uncertain_below": 0.6,
}


@dataclass(frozen=True)
class PatchGeometry:
    """Maps patch edge coordinates (u, v) to slice edge coordinates (i, j): ij = A @ uv + b."""

    matrix: np.ndarray
    offset: np.ndarray

    def to_slice(self, points_uv: np.ndarray) -> np.ndarray:
        return np.asarray(points_uv, dtype=float) @ self.matrix.T + self.offset

    def to_patch(self, points_ij: np.ndarray) -> np.ndarray:
        return (np.asarray(points_ij, dtype=float) - self.offset) @ np.linalg.inv(self.matrix).T

    def box_to_patch(self, box_ij: Sequence[float]) -> np.ndarray:
        """Axis-aligned bounds, in the patch, of a slice box (i0, j0, i1, j1)."""
        i0, j0, i1, j1 = box_ij
        corners = self.to_patch(np.array([[i0, j0], [i1, j0], [i0, j1], [i1, j1]], dtype=float))
        return np.concatenate([corners.min(axis=0), corners.max(axis=0)])


def sample_patch(
    slice_2d: np.ndarray,
    pixel_spacing: tuple[float, float],
    centre_ij: tuple[float, float],
    size: int,
    spacing_mm: float,
    angle_rad: float = 0.0,
    flip_lr: bool = False,
    fill: float = 0.0,
) -> tuple[np.ndarray, PatchGeometry]:
    """Resample a slice [j, i] onto a ``size`` x ``size`` patch at ``spacing_mm``, centred on ``centre_ij``.

    ``centre_ij`` is in edge coordinates. Rotation turns the patch about its
    centre; a left-right flip mirrors it. Returns the patch [v, u] and its geometry.
    """
    si, sj = pixel_spacing
    c, s = np.cos(angle_rad), np.sin(angle_rad)
    rotation = np.array([[c, -s], [s, c]])
    flip = np.diag([-1.0 if flip_lr else 1.0, 1.0])
    # patch mm -> slice pixels, per axis (i, j)
    to_pixels = np.diag([spacing_mm / si, spacing_mm / sj])
    matrix = to_pixels @ rotation @ flip
    centre_uv = np.array([size / 2.0, size / 2.0])
    offset = np.asarray(centre_ij, dtype=float) - matrix @ centre_uv
    geometry = PatchGeometry(matrix=matrix, offset=offset)
    image = np.asarray(slice_2d, dtype=np.float32)
    zoom_out = max(spacing_mm / si, spacing_mm / sj)
    if zoom_out > 1.5:
        image = ndimage.gaussian_filter(image, sigma=((spacing_mm / sj - 1) * 0.5, (spacing_mm / si - 1) * 0.5))
    # ndimage works in (row, col) = (j, i) index space; edge e is index e - 0.5 on both grids
    m_rc = matrix[::-1, ::-1]
    off_rc = offset[::-1] + m_rc @ np.array([0.5, 0.5]) - 0.5
    patch = ndimage.affine_transform(image, m_rc, offset=off_rc, output_shape=(size, size),
                                     order=1, mode="constant", cval=fill)
    return patch.astype(np.float32), geometry


def build_classifier_model(config: dict[str, Any], n_classes: int):
    import timm

    return timm.create_model(config["backbone"], pretrained=False, in_chans=1, num_classes=n_classes)


class GradeClassifier(ABC):
    """Gives each level's crop a probability per class of one grading scale."""

    def __init__(self, scale: GradingScale, config: dict[str, Any]) -> None:
        self.scale = scale
        self.config = config

    @abstractmethod
    def predict_proba(self, patches: np.ndarray) -> np.ndarray:
        """Patches [n, H, W] in [0, 1] -> probabilities [n, n_classes]."""

    def crop(self, normalised_slice: np.ndarray, pixel_spacing: tuple[float, float],
             box_ij: Sequence[float]) -> np.ndarray:
        i0, j0, i1, j1 = box_ij
        size = int(self.config["input_size"])
        patch, _ = sample_patch(normalised_slice, pixel_spacing, ((i0 + i1) / 2.0, (j0 + j1) / 2.0),
                                size, float(self.config["crop_mm"]) / size)
        return patch

    def grade(self, patches: np.ndarray) -> list[GradePrediction]:
        if len(patches) == 0:
            return []
        probabilities = self.predict_proba(np.asarray(patches, dtype=np.float32))
        out = []
        for row in probabilities:
            best = int(np.argmax(row))
            out.append(GradePrediction(
                task=self.config["task"],
                scale=self.scale.key,
                grade=self.scale.names[best],
                probabilities={name: float(p) for name, p in zip(self.scale.names, row)},
                uncertain=bool(row[best] < float(self.config.get("uncertain_below", 0.6))),
            ))
        return out


class TorchGradeClassifier(GradeClassifier):
    def __init__(self, model, scale: GradingScale, config: dict[str, Any]) -> None:
        super().__init__(scale, config)
        self.model = model.eval()

    def predict_proba(self, patches: np.ndarray) -> np.ndarray:
        import torch

        with torch.inference_mode():
            logits = self.model(torch.from_numpy(np.ascontiguousarray(patches))[:, None])
            return torch.softmax(logits, dim=1).numpy()

