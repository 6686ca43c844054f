"""Layer 2: intensities by modality, and slices resampled to the model's physical scale.

A model sees anatomy at one scale (mm per pixel) and one intensity range,
whatever the scanner: CT through a fixed HU window, MR through percentiles
of the study (MR units are arbitrary). The mapping between a model pixel and
a stack pixel is kept exactly (``SliceGrid``), so boxes go back to patient
space without rounding.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
from scipy import ndimage

from .errors import InputError
from .volume import AxialStack

MODALITIES = ("CT", "MR")

#: HU window that keeps CSF, fat, muscle, disc and bone apart
CT_WINDOW = (-200.0, 1000.0)
MR_PERCENTILES = (1.0, 99.5)


def detect_modality(stack: AxialStack, override: Optional[str] = None) -> str:
    """CT or MR: the user's choice first, then the DICOM header, then the intensities.

    CT in Hounsfield units has air near -1000; MR magnitude images are never
    far below zero.
    """
    if override:
        value = override.upper()
        if value not in MODALITIES:
            raise InputError(f"Modality must be CT or MR, not {override!r}.")
        return value
    if stack.dicom_modality in MODALITIES:
        return stack.dicom_modality
    values = np.asarray(stack.array[:: max(1, stack.n_slices // 16), ::4, ::4])
    low = float(np.percentile(values, 1.0))
    return "CT" if low < -300.0 else "MR"


@dataclass(frozen=True)
class IntensityWindow:
    """Maps raw values linearly to [0, 1]; stored in model manifests."""

    low: float
    high: float

    def apply(self, values: np.ndarray) -> np.ndarray:
        scaled = (np.asarray(values, dtype=np.float32) - self.low) / max(self.high - self.low, 1e-6)
        return np.clip(scaled, 0.0, 1.0)


def intensity_window(stack_values: np.ndarray, modality: str) -> IntensityWindow:
    if modality == "CT":
        return IntensityWindow(*CT_WINDOW)
    sample = np.asarray(stack_values[:: max(1, stack_values.shape[0] // 24)], dtype=np.float32)
    # air outside the body would drag the low percentile to zero; use tissue only
    tissue = sample[sample > np.percentile(sample, 5)]
    if tissue.size == 0:
        tissue = sample.ravel()
    low, high = np.percentile(tissue, MR_PERCENTILES)
    return IntensityWindow(float(low), float(high))


@dataclass(frozen=True)
class SliceGrid:
    """A square model canvas of ``size`` pixels at ``spacing_mm``, centred on the stack slice.

    Model pixel (u, v) in edge coordinates maps to stack edge coordinates
    (i, j) = scale * (u, v) + offset, per axis.
    """

    size: int
    spacing_mm: float
    scale: tuple[float, float]
    offset: tuple[float, float]

    @classmethod
    def for_stack(cls, stack: AxialStack, size: int, spacing_mm: float) -> "SliceGrid":
        sx, sy, _ = stack.spacing
        ni, nj = stack.image.GetSize()[:2]
        scale = (spacing_mm / sx, spacing_mm / sy)
        # centre of canvas (size / 2 in edge coordinates) onto centre of slice (n / 2)
        offset = (ni / 2.0 - scale[0] * size / 2.0, nj / 2.0 - scale[1] * size / 2.0)
        return cls(size=size, spacing_mm=spacing_mm, scale=scale, offset=offset)

    def to_stack(self, box_uv: np.ndarray) -> np.ndarray:
        """Boxes (N, 4) as (u0, v0, u1, v1) on the canvas -> (i0, j0, i1, j1) on the stack."""
        box_uv = np.asarray(box_uv, dtype=float).reshape(-1, 4)
        s = np.array([self.scale[0], self.scale[1]] * 2)
        o = np.array([self.offset[0], self.offset[1]] * 2)
        return box_uv * s + o

    def to_canvas(self, box_ij: np.ndarray) -> np.ndarray:
        box_ij = np.asarray(box_ij, dtype=float).reshape(-1, 4)
        s = np.array([self.scale[0], self.scale[1]] * 2)
        o = np.array([self.offset[0], self.offset[1]] * 2)
        return (box_ij - o) / s

    def resample(self, slices: np.ndarray, fill: float = 0.0) -> np.ndarray:
        """Slices [n, j, i] (already normalised) onto the canvas: [n, size, size], float32.

        Downsampling smooths first so thin structures (rootlets, cortex) do not alias.
        """
        slices = np.asarray(slices, dtype=np.float32)
        sigma_j = max(0.0, (self.scale[1] - 1.0) * 0.5)
        sigma_i = max(0.0, (self.scale[0] - 1.0) * 0.5)
        if sigma_i > 0.2 or sigma_j > 0.2:
            slices = ndimage.gaussian_filter(slices, sigma=(0.0, sigma_j, sigma_i), mode="nearest")
        # edge coordinate e maps to index e - 0.5 on both grids
        matrix = np.diag([1.0, self.scale[1], self.scale[0]])
        offset = np.array([
            0.0,
            self.offset[1] + 0.5 * self.scale[1] - 0.5,
            self.offset[0] + 0.5 * self.scale[0] - 0.5,
        ])
        out_shape = (slices.shape[0], self.size, self.size)
        return ndimage.affine_transform(slices, matrix, offset=offset, output_shape=out_shape,
                                        order=1, mode="constant", cval=fill).astype(np.float32)


def normalised_canvas(stack: AxialStack, modality: str, size: int, spacing_mm: float,
                      slice_indices: Optional[np.ndarray] = None) -> tuple[np.ndarray, SliceGrid]:
    """The stack's slices, windowed and resampled onto the model canvas."""
    grid = SliceGrid.for_stack(stack, size, spacing_mm)
    window = intensity_window(stack.array, modality)
    source = stack.array if slice_indices is None else stack.array[np.asarray(slice_indices)]
    normalised = window.apply(source)
    return grid.resample(normalised, fill=0.0), grid
