"""Model packages: a folder with a manifest, safetensors weights and their SHA256.

A package is checked before anything in it is used: the manifest must be ours,
every file must match its SHA256, and weights are read with safetensors,
which cannot run code. Nothing is ever unpickled.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

from .errors import ModelPackageError
from .result import ModelInfo
from .scales import GradingScale, get_scale

#: inference backends; "auto" picks ONNX Runtime when the package has ONNX files and it is installed
BACKENDS = ("auto", "onnx", "torch")

#: manifest file keys of the ONNX graphs, by model (the safetensors keys are the model names)
ONNX_FILES = {"detector": "detector_onnx", "classifier": "classifier_onnx"}

MANIFEST_FORMAT = "spine-stenosis-grader/model-package"
MANIFEST_VERSION = 1
DEFAULT_PACKAGE_DIR = Path(__file__).resolve().parent.parent / "Resources" / "Models" / "default"


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass
class ModelPackage:
    """A verified model package: what it does, on what data, and its files."""

    path: Path
    manifest: dict[str, Any]
    backend: str = "auto"
    #: CPU threads for inference; None lets the runtime use every core
    threads: Optional[int] = None
    _models: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def name(self) -> str:
        return self.manifest["name"]

    @property
    def version(self) -> str:
        return self.manifest["version"]

    @property
    def scale(self) -> GradingScale:
        return get_scale(self.manifest["classifier"]["scale"])

    @property
    def detector_config(self) -> dict[str, Any]:
        return self.manifest["detector"]

    @property
    def classifier_config(self) -> dict[str, Any]:
        return self.manifest["classifier"]

    def info(self) -> ModelInfo:
        return ModelInfo(
            name=self.name,
            version=self.version,
            task=self.manifest["task"],
            trained_on=self.manifest.get("training_data", {}).get("summary", ""),
            clinical_use=self.manifest.get("intended_use", "not for clinical use"),
            runtime=self.runtime(),
        )

    def runtime(self) -> str:
        """The inference runtime and its version, for the provenance of every result."""
        from importlib.metadata import PackageNotFoundError, version

        name = "onnxruntime" if self.resolved_backend() == "onnx" else "torch"
        try:
            return f"{name} {version(name)}"
        except PackageNotFoundError:
            return name

    def summary(self) -> str:
        """One paragraph for a UI or a log."""
        m = self.manifest
        return (
            f"{m['name']} {m['version']}: {m['task']} ({m['classifier']['scale']}), "
            f"{', '.join(m.get('modalities', []))} {', '.join(m.get('regions', []))}. "
            f"Trained on {m.get('training_data', {}).get('summary', 'unknown data')}. "
            f"{m.get('intended_use', 'Not for clinical use')}. Licence: {m.get('licence', 'unknown')}."
        )

    def file(self, key: str) -> Path:
        return self.path / self.manifest["files"][key]["path"]

    def load_state_dict(self, key: str) -> dict[str, Any]:
        from safetensors.torch import load_file

        try:
            return load_file(str(self.file(key)))
        except Exception as exc:  # safetensors raises its own error types
            raise ModelPackageError(f"{self.file(key).name} is not a valid safetensors file: {exc}") from None

    def _build(self, builder, key: str, *args):
        """Build a model from the manifest and load its weights; mismatches become package errors."""
        try:
            import torch  # noqa: F401  (only to say clearly when it is missing)
        except ImportError:
            raise ModelPackageError(
                "The torch backend needs PyTorch: install it (in Slicer, through the PyTorch extension)."
            ) from None
        state = self.load_state_dict(key)
        try:
            model = builder(*args)
            model.load_state_dict(state)
        except (RuntimeError, KeyError, ValueError, TypeError) as exc:
            raise ModelPackageError(
                f"The {key} weights do not fit the settings in the manifest ({str(exc).splitlines()[0][:160]})."
            ) from None
        return model

    def resolved_backend(self) -> str:
        """The backend that runs this package's models: "onnx" or "torch".

        "auto" prefers ONNX Runtime: it is about 4x faster on a CPU and a 100 MB install
        instead of PyTorch's gigabytes. It falls back to torch for a package without ONNX files.
        """
        if "resolved_backend" not in self._models:
            self._models["resolved_backend"] = self._resolve_backend()
        return self._models["resolved_backend"]

    def _resolve_backend(self) -> str:
        has_onnx = all(key in self.manifest["files"] for key in ONNX_FILES.values())
        if self.backend == "torch":
            return "torch"
        if self.backend == "onnx" and not has_onnx:
            raise ModelPackageError(
                f"The package {self.name} {self.version} has no ONNX files; export them with "
                "`spine-stenosis-grader export-onnx <package folder>` (needs PyTorch), or use the torch backend."
            )
        if has_onnx:
            try:
                import onnxruntime  # noqa: F401
                return "onnx"
            except ImportError:
                if self.backend == "onnx":
                    raise ModelPackageError(
                        "The ONNX backend needs ONNX Runtime: `pip install onnxruntime` "
                        "(in Slicer, press Apply and accept the install)."
                    ) from None
        return "torch"

    def detector(self):
        """The canal detector (a ``detector.CanalDetector``) on this package's backend."""
        return self.onnx_detector() if self.resolved_backend() == "onnx" else self.torch_detector()

    def classifier(self):
        """The grade classifier (a ``classifier.GradeClassifier``) on this package's backend."""
        return self.onnx_classifier() if self.resolved_backend() == "onnx" else self.torch_classifier()

    def onnx_session(self, key: str, threads: int | None = None):
        """An ONNX Runtime session for the package file ``key`` (already SHA256-checked at load)."""
        try:
            import onnxruntime as ort
        except ImportError:
            raise ModelPackageError("The ONNX backend needs ONNX Runtime: `pip install onnxruntime`.") from None
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.inter_op_num_threads = 1
        if threads:
            options.intra_op_num_threads = threads
        options.log_severity_level = 3
        try:
            return ort.InferenceSession(str(self.file(key)), options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own error types for a damaged or foreign graph
            raise ModelPackageError(
                f"{self.file(key).name} is not an ONNX model this version can run "
                f"({str(exc).splitlines()[0][:160]}). Import the package again, or export it anew."
            ) from None

    def _checked_session(self, key: str, input_rank: int, n_outputs: int, threads: int | None = None):
        """A session whose input and outputs have the shape the pipeline feeds and reads."""
        session = self.onnx_session(key, threads or self.threads)
        inputs, outputs = session.get_inputs(), session.get_outputs()
        if len(inputs) != 1 or len(inputs[0].shape) != input_rank or len(outputs) != n_outputs:
            raise ModelPackageError(
                f"{self.file(key).name} is not a {key.replace('_onnx', '')} of this kind: it takes "
                f"{[i.shape for i in inputs]} and gives {len(outputs)} outputs."
            )
        return session

    def onnx_detector(self):
        if "onnx_detector" not in self._models:
            from .detector import OnnxCanalDetector

            # one single-threaded session per core (see OnnxCanalDetector), at most four
            workers = max(1, min(4, self.threads or os.cpu_count() or 1))
            sessions = [self._checked_session(ONNX_FILES["detector"], 3, 3, threads=1) for _ in range(workers)]
            self._models["onnx_detector"] = OnnxCanalDetector(sessions)
        return self._models["onnx_detector"]

    def onnx_classifier(self):
        if "onnx_classifier" not in self._models:
            from .classifier import OnnxGradeClassifier

            session = self._checked_session(ONNX_FILES["classifier"], 4, 1)
            classes = session.get_outputs()[0].shape[-1]
            if classes != len(self.scale.classes):
                raise ModelPackageError(
                    f"{self.file(ONNX_FILES['classifier']).name} gives {classes} classes; the {self.scale.key} "
                    f"scale in the manifest has {len(self.scale.classes)}."
                )
            self._models["onnx_classifier"] = OnnxGradeClassifier(session, self.scale, self.classifier_config)
        return self._models["onnx_classifier"]

    def torch_detector(self):
        """The detector, built from the manifest and loaded from safetensors."""
        if "torch_detector" not in self._models:
            from .detector import TorchCanalDetector, build_detector_model

            model = self._build(build_detector_model, "detector", self.detector_config)
            self._models["torch_detector"] = TorchCanalDetector(model)
        return self._models["torch_detector"]

    def torch_classifier(self):
        if "torch_classifier" not in self._models:
            from .classifier import TorchGradeClassifier, build_classifier_model

            model = self._build(build_classifier_model, "classifier", self.classifier_config,
                                len(self.scale.classes))
            self._models["torch_classifier"] = TorchGradeClassifier(model, self.scale, self.classifier_config)
        return self._models["torch_classifier"]


def load_package(path: Union[str, Path, None] = None, backend: str = "auto") -> ModelPackage:
    """Load and verify the package in folder ``path`` (or a manifest file); the default one when None.

    ``backend`` is one of ``BACKENDS``.
    """
    if backend not in BACKENDS:
        raise ModelPackageError(f"The backend must be one of {', '.join(BACKENDS)}, not {backend!r}.")
    p = Path(path) if path is not None else DEFAULT_PACKAGE_DIR
    manifest_path = p if p.is_file() else p / "manifest.json"
    if not manifest_path.exists():
        if path is None:
            raise ModelPackageError(
                f"The default model is missing from {DEFAULT_PACKAGE_DIR}. Reinstall, or train it with "
                "`spine-stenosis-grader train`."
            )
        raise ModelPackageError(f"{p} is not a model package: it has no manifest.json.")
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelPackageError(f"{manifest_path} is not a valid manifest ({exc}).") from None
    if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT:
        raise ModelPackageError(f"{manifest_path} is not a SpineStenosisGrader model package manifest.")
    _check_manifest(manifest, manifest_path)
    root = manifest_path.parent
    for key, entry in manifest["files"].items():
        file_path = root / entry["path"]
        if not file_path.resolve().is_relative_to(root.resolve()):
            raise ModelPackageError(f"The manifest points outside the package: {entry['path']}.")
        if not file_path.exists():
            raise ModelPackageError(f"The package is incomplete: {entry['path']} is missing.")
        if sha256_file(file_path) != entry["sha256"]:
            raise ModelPackageError(
                f"{entry['path']} does not match the SHA256 in the manifest: the file was changed or damaged. "
                "Import the package again from its original source."
            )
        if not entry["path"].endswith((".safetensors", ".onnx", ".json")):
            raise ModelPackageError(f"{entry['path']}: only safetensors, ONNX and JSON files are allowed in a package.")
    for key in ("detector", "classifier"):
        if key not in manifest.get("files", {}):
            raise ModelPackageError(f"The package has no {key} weights.")
    return ModelPackage(path=root, manifest=manifest, backend=backend)


def _check_manifest(manifest: dict[str, Any], manifest_path: Path) -> None:
    """Required keys and types, so that a damaged manifest is an error message, not a traceback."""
    version = manifest.get("format_version", 0)
    if not isinstance(version, int):
        raise ModelPackageError(f"{manifest_path}: format_version must be a whole number.")
    if version > MANIFEST_VERSION:
        raise ModelPackageError(f"The package needs a newer SpineStenosisGrader (manifest version {version}).")
    for key in ("name", "version", "task"):
        if not isinstance(manifest.get(key), str):
            raise ModelPackageError(f"{manifest_path}: the manifest has no {key}.")
    files = manifest.get("files")
    if not isinstance(files, dict) or not all(
        isinstance(e, dict) and isinstance(e.get("path"), str) and isinstance(e.get("sha256"), str)
        for e in files.values()
    ):
        raise ModelPackageError(f"{manifest_path}: every file entry needs a path and a sha256.")
    for key in ("detector", "classifier"):
        if not isinstance(manifest.get(key), dict):
            raise ModelPackageError(f"{manifest_path}: the manifest has no {key} settings.")
    try:
        get_scale(manifest["classifier"].get("scale", ""))
    except KeyError as exc:
        raise ModelPackageError(f"{manifest_path}: {exc.args[0]}") from None


def write_manifest(path: Path, manifest: dict[str, Any]) -> None:
    """Fill in the SHA256 of every listed file and write ``manifest.json``."""
    manifest = dict(manifest, format=MANIFEST_FORMAT, format_version=MANIFEST_VERSION)
    for entry in manifest["files"].values():
        entry["sha256"] = sha256_file(path / entry["path"])
        entry["bytes"] = (path / entry["path"]).stat().st_size
    (path / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")


def load_default_package(backend: str = "auto") -> ModelPackage:
    """The package shipped with the extension (trained by `spine-stenosis-grader train`)."""
    return load_package(None, backend)
