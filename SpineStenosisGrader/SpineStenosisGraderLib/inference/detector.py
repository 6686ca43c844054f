"""Layer 3: find the spinal canal on each axial slice.

The detector is a torchvision Faster R-CNN on a light timm backbone with a
two-level feature pyramid (strides 8 and 16: a lumbar canal is 12-20 px at
1.25 mm per pixel). There is one canal per slice, so the region proposal network
keeps a handful of proposals instead of torchvision's 1,000: the box head over
1,000 proposals is most of a mobile Faster R-CNN's cost.

It has two foreground classes, "canal" and "canal at a disc", so that the same
pass that finds the box also says whether the slice cuts a disc; the level
grouping reads that as a profile along the spine.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

CLASS_NAMES = ("background", "canal", "canal_at_disc")


@dataclass
class SliceDetection:
    """The canal on one canvas slice, in canvas edge coordinates (u0, v0, u1, v1)."""

    box_uv: tuple[float, float, float, float]
    score: float
    disc_probability: float


class CanalDetector(ABC):
    """Finds at most one canal per slice on normalised canvas slices [n, H, W] in [0, 1]."""

    @abstractmethod
    def detect_candidates(self, canvas: np.ndarray, batch_size: int = 4) -> list[list[SliceDetection]]:
        """One entry per slice: its canal candidates, best first (empty where none was found)."""

    def detect(self, canvas: np.ndarray, batch_size: int = 4) -> list[SliceDetection | None]:
        """One entry per slice: the best candidate, or None where no canal was found."""
        return [found[0] if found else None for found in self.detect_candidates(canvas, batch_size)]


DEFAULT_DETECTOR_CONFIG: dict[str, Any] = {
    "architecture": "fasterrcnn",
    "backbone": "resnet10t",
    "feature_indices": [2, 3],
    "fpn_channels": 64,
    "canvas": 256,
    "spacing_mm": 1.25,
    "anchor_sizes": [[10, 15, 22], [30, 44, 64]],
    "aspect_ratios": [0.45, 0.65, 0.9, 1.2],
    "rpn_pre_nms_top_n_test": 60,
    "rpn_post_nms_top_n_test": 12,
    "box_detections_per_img": 4,
    "box_score_thresh": 0.05,
    "box_head_channels": 256,
}


def build_detector_model(config: dict[str, Any]):
    """The torch module for ``config`` (untrained). Imports torch lazily: inference packages may not need it."""
    import timm
    import torch
    from torch import nn
    from torchvision.models.detection import FasterRCNN
    from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
    from torchvision.models.detection.anchor_utils import AnchorGenerator
    from torchvision.models.detection.transform import GeneralizedRCNNTransform
    from torchvision.ops import FeaturePyramidNetwork, MultiScaleRoIAlign

    class CanvasTransform(GeneralizedRCNNTransform):
        """Normalise and pad, never resize: the canvas is already at the model's mm per pixel.

        torchvision would scale every input to ``min_size``; a crop of the canvas must instead
        keep its scale (the ONNX graph takes any size). For the full canvas the two agree.
        """

        def resize(self, image, target=None):
            return image, target

    class PyramidBackbone(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body = timm.create_model(
                config["backbone"], pretrained=False, features_only=True,
                out_indices=tuple(config["feature_indices"]), in_chans=1,
            )
            channels = self.body.feature_info.channels()
            self.fpn = FeaturePyramidNetwork(channels, config["fpn_channels"])
            self.out_channels = config["fpn_channels"]

        def forward(self, x: torch.Tensor) -> "OrderedDict[str, torch.Tensor]":
            features = self.body(x)
            return self.fpn(OrderedDict((str(n), f) for n, f in enumerate(features)))

    n_levels = len(config["feature_indices"])
    anchors = AnchorGenerator(
        sizes=tuple(tuple(s) for s in config["anchor_sizes"]),
        aspect_ratios=(tuple(config["aspect_ratios"]),) * n_levels,
    )
    canvas = int(config["canvas"])
    head = int(config["box_head_channels"])
    model = FasterRCNN(
        PyramidBackbone(),
        # a narrow box head: torchvision's 1024-wide default is most of the weights
        box_head=TwoMLPHead(config["fpn_channels"] * 7 * 7, head),
        box_predictor=FastRCNNPredictor(head, len(CLASS_NAMES)),
        rpn_anchor_generator=anchors,
        box_roi_pool=MultiScaleRoIAlign([str(n) for n in range(n_levels)], output_size=7, sampling_ratio=2),
        # the canvas is fed at its own size: torchvision would otherwise upscale to 800 px
        min_size=canvas,
        max_size=canvas,
        image_mean=[0.5],
        image_std=[0.25],
        rpn_pre_nms_top_n_train=200,
        rpn_post_nms_top_n_train=50,
        rpn_pre_nms_top_n_test=config["rpn_pre_nms_top_n_test"],
        rpn_post_nms_top_n_test=config["rpn_post_nms_top_n_test"],
        rpn_batch_size_per_image=64,
        box_batch_size_per_image=32,
        box_detections_per_img=config["box_detections_per_img"],
        box_score_thresh=config["box_score_thresh"],
    )
    model.transform = CanvasTransform(canvas, canvas, model.transform.image_mean, model.transform.image_std)
    return model


def canal_candidates(boxes: np.ndarray, scores: np.ndarray, labels: np.ndarray) -> list[SliceDetection]:
    """Fold per-class detections into canal candidates, best first, each with a disc probability.

    torchvision runs NMS per class, so the same canal can come back once as
    "canal" and once as "canal at a disc". Each candidate is the best-scoring
    box not yet taken, with every box that overlaps it; its disc probability is
    the share of the disc class among them. The tracking chooses among the
    candidates, so a slice keeps its second-best box for when the best one lies
    off the canal.
    """
    boxes, scores, labels = np.asarray(boxes), np.asarray(scores), np.asarray(labels)
    taken = np.zeros(len(scores), dtype=bool)
    out = []
    for top in np.argsort(-scores, kind="stable"):
        if taken[top]:
            continue
        overlaps = (_iou(boxes[top], boxes) > 0.3) & ~taken
        taken |= overlaps
        disc_score = float(scores[overlaps & (labels == 2)].max(initial=0.0))
        plain_score = float(scores[overlaps & (labels == 1)].max(initial=0.0))
        total = disc_score + plain_score
        out.append(SliceDetection(
            box_uv=tuple(float(v) for v in boxes[top]),
            score=float(min(1.0, total)),
            disc_probability=disc_score / total if total > 0 else 0.0,
        ))
    return out


def _iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    x0 = np.maximum(box[0], boxes[:, 0])
    y0 = np.maximum(box[1], boxes[:, 1])
    x1 = np.minimum(box[2], boxes[:, 2])
    y1 = np.minimum(box[3], boxes[:, 3])
    inter = np.clip(x1 - x0, 0, None) * np.clip(y1 - y0, 0, None)
    area = (box[2] - box[0]) * (box[3] - box[1])
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    return inter / np.maximum(area + areas - inter, 1e-9)


def box_iou(a: Sequence[float], b: Sequence[float]) -> float:
    """IoU of two (x0, y0, x1, y1) boxes."""
    return float(_iou(np.asarray(a, dtype=float), np.asarray([b], dtype=float))[0])


class OnnxCanalDetector(CanalDetector):
    """The same Faster R-CNN exported to ONNX (``export.export_detector``), run by ONNX Runtime.

    The graph takes one normalised slice [1, H, W] of any size divisible by 32
    and returns its boxes, labels and scores, as the torch model does. A third of
    a slice's time goes to the many small post-processing operators, which run one
    after another, so the slices are shared among single-threaded sessions that run
    side by side (ONNX Runtime releases the GIL): 20-30% faster on two cores than
    one session with two threads.
    """

    def __init__(self, sessions: Sequence[Any]) -> None:
        self.sessions = list(sessions)
        self.input_name = self.sessions[0].get_inputs()[0].name

    def _run(self, session, images: np.ndarray) -> list[list[SliceDetection]]:
        results: list[list[SliceDetection]] = []
        for image in images:
            boxes, labels, scores = session.run(None, {self.input_name: np.ascontiguousarray(image[None])})
            results.append(canal_candidates(boxes, scores, labels))
        return results

    def detect_candidates(self, canvas: np.ndarray, batch_size: int = 4) -> list[list[SliceDetection]]:
        from concurrent.futures import ThreadPoolExecutor

        canvas = np.asarray(canvas, dtype=np.float32)
        workers = min(len(self.sessions), len(canvas))
        if workers <= 1:
            return self._run(self.sessions[0], canvas)
        results: list[list[SliceDetection]] = [[] for _ in range(len(canvas))]
        with ThreadPoolExecutor(workers) as pool:
            # interleaved shares: neighbouring slices cost about the same
            shares = {w: pool.submit(self._run, self.sessions[w], canvas[w::workers]) for w in range(workers)}
            for w, share in shares.items():
                results[w::workers] = share.result()
        return results


class TorchCanalDetector(CanalDetector):
    """The Faster R-CNN run in torch on the CPU."""

    def __init__(self, model, threads: int | None = None) -> None:
        import torch

        if threads:
            torch.set_num_threads(threads)
        self.model = model.eval()

    def detect_candidates(self, canvas: np.ndarray, batch_size: int = 4) -> list[list[SliceDetection]]:
        import torch

        results: list[list[SliceDetection]] = []
        with torch.inference_mode():
            for start in range(0, len(canvas), batch_size):
                batch = [torch.from_numpy(np.ascontiguousarray(s))[None] for s in canvas[start:start + batch_size]]
                for out in self.model(batch):
                    results.append(canal_candidates(
                        out["boxes"].numpy(), out["scores"].numpy(), out["labels"].numpy()
                    ))
        return results
