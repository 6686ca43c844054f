"""Layer 5: grade a disc level from a crop of its representative slice.

The crop is cut in physical millimetres around the canal box's centre (not
from a resized picture, the seeds' own mistake), so the classifier always sees
the canal at the same scale.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, Sequence

import numpy as np

from ..study.normalise import patch_window, sample_patch
from ..study.volume import AxialStack
from ..result import GradePrediction
from ..scales import GradingScale

DEFAULT_CLASSIFIER_CONFIG: dict[str, Any] = {
    "backbone": "resnet10t",
    "crop_mm": 48.0,
    "input_size": 112,
    "task": "lumbar_central_canal",
    "scale": "schizas",
    #: below this top-class probability a grade is flagged as uncertain
    "uncertain_below": 0.6,
}


def grade_patch(raw_slice: np.ndarray, pixel_spacing: tuple[float, float], centre_ij: tuple[float, float],
                config: dict[str, Any], modality: str, zoom: float = 1.0, angle_rad: float = 0.0,
                flip_lr: bool = False) -> np.ndarray:
    """The classifier's input: a ``crop_mm`` square around ``centre_ij``, windowed on itself.

    Training calls it with random zoom, rotation and flip; inference without.
    """
    size = int(config["input_size"])
    patch, _ = sample_patch(np.asarray(raw_slice, dtype=np.float32), pixel_spacing, centre_ij, size,
                            float(config["crop_mm"]) / size * zoom, angle_rad, flip_lr,
                            fill=float(np.min(raw_slice)))
    return patch_window(patch, modality).apply(patch)


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

    def crop(self, raw_slice: np.ndarray, pixel_spacing: tuple[float, float],
             box_ij: Sequence[float], modality: str) -> np.ndarray:
        """The level's crop from a raw slice [j, i] (HU or MR units), normalised."""
        i0, j0, i1, j1 = box_ij
        return grade_patch(raw_slice, pixel_spacing, ((i0 + i1) / 2.0, (j0 + j1) / 2.0), self.config, modality)

    def grade_places(self, stack: AxialStack, places: Sequence[tuple[int, Sequence[float]]],
                     modality: str) -> list[GradePrediction]:
        """The grade of each (slice index, canal box [i0, j0, i1, j1]) of ``stack``, from its crop."""
        if not places:
            return []
        pixel_spacing = (stack.spacing[0], stack.spacing[1])
        return self.grade(np.stack([self.crop(stack.array[k], pixel_spacing, box_ij, modality)
                                    for k, box_ij in places]))

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



class OnnxGradeClassifier(GradeClassifier):
    """The classifier exported to ONNX (``export.export_classifier``): patches [n, 1, H, W] -> logits."""

    def __init__(self, session, scale: GradingScale, config: dict[str, Any]) -> None:
        super().__init__(scale, config)
        self.session = session
        self.input_name = session.get_inputs()[0].name

    def predict_proba(self, patches: np.ndarray) -> np.ndarray:
        logits = self.session.run(None, {self.input_name: np.ascontiguousarray(patches[:, None], dtype=np.float32)})[0]
        logits = logits - logits.max(axis=1, keepdims=True)
        odds = np.exp(logits)
        return odds / odds.sum(axis=1, keepdims=True)
