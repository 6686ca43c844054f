"""ONNX graphs of a package's models, for the light runtime (numpy, SimpleITK and ONNX Runtime only).

Exporting needs PyTorch; running the result does not. The graphs are made from
the package's safetensors weights, checked against the torch models on real
inputs before they are written, and listed with their SHA256 in the manifest.

Weights are stored as float16 in the graph (each followed by a Cast to float32
that ONNX Runtime folds away when it loads the session), so the ONNX files are
no larger than the safetensors ones; the arithmetic stays float32.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any, Optional

import numpy as np

from ..errors import ModelPackageError
from ..packages.package import ONNX_FILES, ModelPackage, load_package, write_manifest

#: ONNX opset: 17 is what torch's TorchScript exporter handles for torchvision's detection ops
OPSET = 17
#: float32 initialisers with at least this many values are stored as float16
MIN_HALF_SIZE = 1024
#: torch and ONNX Runtime must agree this closely on the check inputs
MAX_BOX_DIFFERENCE_PX = 0.05
MAX_PROBABILITY_DIFFERENCE = 1e-3


def store_weights_as_half(model_path: Path) -> None:
    """Rewrite large float32 initialisers as float16 + Cast, in place."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    model = onnx.load(str(model_path))
    graph = model.graph
    casts = []
    for init in graph.initializer:
        if init.data_type != TensorProto.FLOAT:
            continue
        values = numpy_helper.to_array(init)
        if values.size < MIN_HALF_SIZE:
            continue
        name = init.name
        half_name = name + "_float16"
        init.CopyFrom(numpy_helper.from_array(values.astype(np.float16), half_name))
        casts.append(helper.make_node("Cast", [half_name], [name], to=TensorProto.FLOAT, name=name + "_cast"))
    # the casts come first so every consumer finds its float32 tensor defined
    nodes = casts + list(graph.node)
    del graph.node[:]
    graph.node.extend(nodes)
    onnx.checker.check_model(model)
    onnx.save(model, str(model_path))


def export_detector(package: ModelPackage, path: Path, check_canvas: np.ndarray) -> dict[str, Any]:
    """Export the detector; ``check_canvas`` [n, H, W] are slices to compare torch and ONNX Runtime on."""
    import torch

    model = package.torch_detector().model.eval()
    size = int(package.detector_config["canvas"])
    with torch.inference_mode():
        torch.onnx.export(
            model, ([torch.zeros(1, size, size)],), str(path), dynamo=False, opset_version=OPSET,
            input_names=["image"], output_names=["boxes", "labels", "scores"],
            dynamic_axes={"image": {1: "height", 2: "width"}, "boxes": {0: "n"}, "labels": {0: "n"},
                          "scores": {0: "n"}},
        )
    store_weights_as_half(path)
    return _check_detector(package, path, check_canvas)


def export_classifier(package: ModelPackage, path: Path, check_patches: np.ndarray) -> dict[str, Any]:
    """Export the classifier with a dynamic batch; ``check_patches`` [n, H, W] to compare the two on."""
    import torch

    model = package.torch_classifier().model.eval()
    size = int(package.classifier_config["input_size"])
    with torch.inference_mode():
        torch.onnx.export(
            model, (torch.zeros(2, 1, size, size),), str(path), dynamo=False, opset_version=OPSET,
            input_names=["patches"], output_names=["logits"], dynamic_axes={"patches": {0: "n"}, "logits": {0: "n"}},
        )
    store_weights_as_half(path)
    return _check_classifier(package, path, check_patches)


def _session(path: Path):
    import onnxruntime as ort

    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _check_detector(package: ModelPackage, path: Path, canvas: np.ndarray) -> dict[str, Any]:
    """Both backends must find the same canal on every check slice: same box, score and disc share."""
    from ..inference.detector import OnnxCanalDetector

    torch_hits = package.torch_detector().detect(canvas)
    onnx_hits = OnnxCanalDetector([_session(path)]).detect(canvas)
    worst = {"box_px": 0.0, "score": 0.0}
    for k, (a, b) in enumerate(zip(torch_hits, onnx_hits)):
        if (a is None) != (b is None):
            raise ModelPackageError(f"The ONNX detector disagrees with torch on check slice {k}: found vs none.")
        if a is None:
            continue
        worst["box_px"] = max(worst["box_px"], float(np.abs(np.subtract(a.box_uv, b.box_uv)).max()))
        worst["score"] = max(worst["score"], abs(a.score - b.score), abs(a.disc_probability - b.disc_probability))
    if worst["box_px"] > MAX_BOX_DIFFERENCE_PX or worst["score"] > MAX_PROBABILITY_DIFFERENCE:
        raise ModelPackageError(f"The ONNX detector differs from torch by {worst}; not written.")
    return {"check_slices": int(len(canvas)), "max_box_difference_px": worst["box_px"],
            "max_score_difference": worst["score"]}


def _check_classifier(package: ModelPackage, path: Path, patches: np.ndarray) -> dict[str, Any]:
    from ..inference.classifier import OnnxGradeClassifier

    reference = package.torch_classifier().predict_proba(patches)
    exported = OnnxGradeClassifier(_session(path), package.scale, package.classifier_config).predict_proba(patches)
    worst = float(np.abs(reference - exported).max())
    if worst > MAX_PROBABILITY_DIFFERENCE:
        raise ModelPackageError(f"The ONNX classifier's probabilities differ from torch by {worst:.2g}; not written.")
    return {"check_patches": int(len(patches)), "max_probability_difference": worst}


def check_inputs(package: ModelPackage, seed: int = 7) -> tuple[list[np.ndarray], np.ndarray]:
    """Real-looking inputs to compare the backends on: canvases and crops of phantom studies, CT and MR."""
    from ..study.normalise import normalised_canvas
    from .phantom import make_study
    from ..study.volume import to_axial_stack

    canvases, patches = [], []
    classifier = package.torch_classifier()
    config = package.detector_config
    for offset, modality in enumerate(("CT", "MR")):
        study = make_study(seed=seed + offset, modality=modality, region="lumbar")
        stack = to_axial_stack(study.image)
        picks = np.linspace(0, stack.n_slices - 1, 6).round().astype(int)
        canvas, grid = normalised_canvas(stack, modality, int(config["canvas"]), float(config["spacing_mm"]),
                                         slice_indices=picks)
        canvases.append(canvas)
        # a smaller input too: the graph takes any size divisible by 32
        canvases.append(canvas[:2, 64:192, 64:192])
        spacing = (stack.spacing[0], stack.spacing[1])
        for level in study.levels:
            box = study.canal_boxes.get(level.slice_index)
            if box is not None:
                patches.append(classifier.crop(stack.array[level.slice_index], spacing, box, modality))
    return canvases, np.stack(patches)


def export_onnx(package_dir: Path) -> dict[str, Any]:
    """Add ONNX graphs of the package's models to the package in ``package_dir`` and update its manifest.

    The new files are written beside the old ones only once both pass their checks.
    """
    package_dir = Path(package_dir)
    package = load_package(package_dir, backend="torch")
    canvases, patches = check_inputs(package)
    report: dict[str, Any] = {"opset": OPSET}
    with tempfile.TemporaryDirectory(dir=package_dir) as staging:
        staging_dir = Path(staging)
        try:
            detector_checks = [export_detector(package, staging_dir / "detector.onnx", canvases[0])]
            detector_checks += [_check_detector(package, staging_dir / "detector.onnx", c) for c in canvases[1:]]
            report["detector"] = {
                "check_slices": sum(c["check_slices"] for c in detector_checks),
                "max_box_difference_px": max(c["max_box_difference_px"] for c in detector_checks),
                "max_score_difference": max(c["max_score_difference"] for c in detector_checks),
            }
            report["classifier"] = export_classifier(package, staging_dir / "classifier.onnx", patches)
        except ModelPackageError as error:
            # the weights and manifest are already whole: say that the package still runs, and how
            raise ModelPackageError(
                f"{error} The package in {package_dir} is complete without ONNX files: grade with it using "
                "--backend torch (in Slicer, with the PyTorch extension).") from error
        for name in ("detector.onnx", "classifier.onnx"):
            (staging_dir / name).replace(package_dir / name)
    manifest = json.loads((package_dir / "manifest.json").read_text(encoding="utf-8"))
    manifest["files"][ONNX_FILES["detector"]] = {"path": "detector.onnx"}
    manifest["files"][ONNX_FILES["classifier"]] = {"path": "classifier.onnx"}
    manifest["onnx"] = dict(report, weights_dtype="float16 stored, float32 arithmetic",
                            made_by="spine-stenosis-grader export-onnx")
    write_manifest(package_dir, manifest)
    return report


def exported_package_summary(package_dir: Optional[Path] = None) -> str:
    """One line on the ONNX files of a package, for the CLI."""
    package = load_package(package_dir, backend="onnx")
    sizes = {key: package.file(key).stat().st_size for key in ONNX_FILES.values()}
    return ", ".join(f"{package.manifest['files'][k]['path']} {v / 1e6:.1f} MB" for k, v in sizes.items())
