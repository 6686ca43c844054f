"""Model packages: a folder with a manifest, safetensors weights and their SHA256.

A package is checked before anything in it is used: the manifest must be ours,
every file must match its SHA256, and weights are read with safetensors,
which cannot run code. Nothing is ever unpickled.
"""

from __future__ import annotations

import importlib
import json
import os
import re
import shutil
import signal
import stat
import threading
import uuid
import zipfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from types import ModuleType
from typing import Any, Optional, Sequence, Union

from ..checksums import sha256_file
from ..errors import ModelPackageError
from ..result import ModelInfo
from ..scales import GradingScale, get_scale

#: inference backends; "auto" picks ONNX Runtime when the package has ONNX files and it is installed
BACKENDS = ("auto", "onnx", "torch")

#: manifest file keys of the ONNX graphs, by model (the safetensors keys are the model names)
ONNX_FILES = {"detector": "detector_onnx", "classifier": "classifier_onnx"}

MANIFEST_FORMAT = "spine-stenosis-grader/model-package"
MANIFEST_VERSION = 1
DEFAULT_PACKAGE_DIR = Path(__file__).resolve().parents[2] / "Resources" / "Models" / "default"


def import_holding_signals(name: str) -> ModuleType:
    """Import the module ``name`` with Ctrl-C and SIGTERM held until the import is over.

    ONNX Runtime and PyTorch load compiled modules whose initialisation turns a KeyboardInterrupt raised
    inside it into an ImportError ("import numpy failed"). Read as "not installed", that lost the user's
    Ctrl-C and fell back to PyTorch (about one Ctrl-C in five early in the detect stage). Python's handlers
    are held instead of the signals themselves: any thread may take a signal (numpy's BLAS threads too),
    but only the main thread runs the handlers. A signal that came in is handled once the import is over.
    """
    if threading.current_thread() is not threading.main_thread():
        return importlib.import_module(name)  # signals never reach a handler here
    caught: list[tuple[int, Any]] = []
    previous = {signum: signal.signal(signum, lambda *received: caught.append(received))
                for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        return importlib.import_module(name)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, signal.SIG_DFL if handler is None else handler)
        for signum, frame in caught[:1]:
            handler = previous[signum]
            if callable(handler):
                handler(signum, frame)  # raises KeyboardInterrupt, or the CLI's Terminated
            elif handler in (signal.SIG_DFL, None):
                signal.raise_signal(signum)


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
        scope = m.get("grade_scope")
        shown = ""
        if scope:
            pixel = f" with pixels up to {float(scope['max_pixel_mm']):g} mm" if "max_pixel_mm" in scope else ""
            shown = (f"Grades shown on {', '.join(str(name) for name in scope['modalities']) or 'no'} studies{pixel} only; "
                     "elsewhere the levels are located, not graded. ")
        return (
            f"{m['name']} {m['version']}: {m['task']} ({m['classifier']['scale']}), "
            f"{', '.join(m.get('modalities', []))} {', '.join(m.get('regions', []))}. {shown}"
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
            import_holding_signals("torch")  # only to say clearly when it is missing
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
                import_holding_signals("onnxruntime")
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
            ort = import_holding_signals("onnxruntime")
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
            from ..inference.detector import OnnxCanalDetector

            # one single-threaded session per core (see OnnxCanalDetector), at most four
            workers = max(1, min(4, self.threads or os.cpu_count() or 1))
            sessions = [self._checked_session(ONNX_FILES["detector"], 3, 3, threads=1) for _ in range(workers)]
            self._models["onnx_detector"] = OnnxCanalDetector(sessions)
        return self._models["onnx_detector"]

    def onnx_classifier(self):
        if "onnx_classifier" not in self._models:
            from ..inference.classifier import OnnxGradeClassifier

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
            from ..inference.detector import TorchCanalDetector, build_detector_model

            model = self._build(build_detector_model, "detector", self.detector_config)
            self._models["torch_detector"] = TorchCanalDetector(model)
        return self._models["torch_detector"]

    def torch_classifier(self):
        if "torch_classifier" not in self._models:
            from ..inference.classifier import TorchGradeClassifier, build_classifier_model

            model = self._build(build_classifier_model, "classifier", self.classifier_config,
                                len(self.scale.classes))
            self._models["torch_classifier"] = TorchGradeClassifier(model, self.scale, self.classifier_config)
        return self._models["torch_classifier"]

    def compatibility_warnings(self, modality: str, region: str) -> list[str]:
        """What is wrong with using this package on a study of ``modality`` ("CT", "MR") and ``region``.

        Empty when the package was made for such studies. An empty ``modality``
        or ``region`` (not known yet) is not checked.
        """
        return [message for message, _ in self._compatibility(modality, region)]

    def compatibility_mismatches(self, modality: str, region: str) -> list[str]:
        """The reasons ``check_compatible`` would refuse such a study (empty when it would not)."""
        return [message for message, mismatch in self._compatibility(modality, region) if mismatch]

    def check_compatible(self, modality: str, region: str, allow_mismatch: bool = False,
                         how_to_override: str = "") -> list[str]:
        """Refuse a study this package was not made for, unless ``allow_mismatch``; return the warnings.

        Refused: another modality, or a region the package does not even locate
        (its boxes and grades would be wrong). A region it locates but does not
        grade is a warning only: those levels are found and left ungraded.
        ``how_to_override`` (e.g. "pass --allow-model-mismatch") ends the message.
        """
        checks = self._compatibility(modality, region)
        mismatches = [message for message, mismatch in checks if mismatch]
        if mismatches and not allow_mismatch:
            advice = f"Choose a package made for such studies, or {how_to_override or 'override this check'} " \
                     "to grade anyway."
            raise ModelPackageError(" ".join(mismatches) + " " + advice)
        return [message for message, _ in checks]

    def grade_scope_problem(self, modality: str, pixel_spacing: Optional[Sequence[float]]) -> Optional[str]:
        """Why this package's grade is not shown on a study of ``modality`` with ``pixel_spacing`` (mm), or None.

        A package can limit its grade to the studies on which that grade was
        checked: ``grade_scope`` in its manifest lists the modalities and the
        coarsest in-plane pixel, and says why. Outside it the levels are still
        located. A package without ``grade_scope`` grades every study it locates.
        A ``pixel_spacing`` of None (not known yet: before the study is read as
        axial slices) checks the modality only.
        """
        scope = self.manifest.get("grade_scope")
        if not scope:
            return None
        why = f" ({scope['why']})" if scope.get("why") else ""
        modalities = [str(m).upper() for m in scope.get("modalities", [])]
        if modality and modality.upper() not in modalities:
            shown = ", ".join(modalities) if modalities else "no"
            return (f"The model package {self.name} {self.version} shows its grade on {shown} studies only, not "
                    f"{modality.upper()}{why}.")
        coarsest = scope.get("max_pixel_mm")
        if coarsest is None or pixel_spacing is None:
            return None
        pixel = max(float(v) for v in pixel_spacing)
        if pixel > float(coarsest) + 1e-6:
            return (f"This study's pixels are {pixel:g} mm, coarser than the {float(coarsest):g} mm up to which the "
                    f"grade of the model package {self.name} {self.version} was checked{why}.")
        return None

    def _compatibility(self, modality: str, region: str) -> list[tuple[str, bool]]:
        """Each problem as (message, whether the package was made for other studies altogether)."""
        problems = []
        modalities = [str(m).upper() for m in self.manifest.get("modalities", [])]
        if modality and modalities and modality.upper() not in modalities:
            problems.append((
                f"The model package {self.name} {self.version} was made for {', '.join(modalities)} studies, "
                f"not {modality.upper()}: its boxes and grades are likely wrong on this study.", True))
        graded = list(self.manifest.get("regions", []))
        located = list(self.manifest.get("detects_regions", graded))
        if region and graded and region not in graded:
            if region in located:
                problems.append((
                    f"The model package {self.name} {self.version} grades {', '.join(graded)} levels only: the "
                    f"{region} levels of this study will be located but not graded.", False))
            else:
                problems.append((
                    f"The model package {self.name} {self.version} was made for the {', '.join(located)} spine, "
                    f"not the {region} spine: expect missed or misplaced levels and no grades.", True))
        return problems


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
        raise ModelPackageError(
            f"{manifest_path}: the package has manifest version {version}, so it needs a newer SpineStenosisGrader "
            f"(this one reads version {MANIFEST_VERSION}). Update the extension, or use a package made for this "
            "version."
        )
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
    scope = manifest.get("grade_scope")
    if scope is not None and not (
            isinstance(scope, dict) and isinstance(scope.get("modalities"), list)
            and isinstance(scope.get("max_pixel_mm", 0.0), (int, float))
            and isinstance(scope.get("why", ""), str)):
        raise ModelPackageError(f"{manifest_path}: grade_scope must list the modalities graded (and may give "
                                "max_pixel_mm, a number, and why, a sentence).")
    scale = manifest["classifier"].get("scale", "")
    if not isinstance(scale, str):
        raise ModelPackageError(f"{manifest_path}: the classifier's scale must be the name of a grading scale.")
    try:
        get_scale(scale)
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


#: an imported package (all its files) may not be larger than this: model packages are tens of MB
MAX_IMPORT_BYTES = 2 * 1024 ** 3


def _size_text(n_bytes: int) -> str:
    """``2 GB``, ``300 MB``: binary units, as a file manager shows them."""
    if n_bytes >= 1024 ** 3:
        return f"{n_bytes / 1024 ** 3:.3g} GB"
    return f"{n_bytes / 1024 ** 2:.3g} MB"


def _is_os_junk(name: str) -> bool:
    """What macOS adds to folders and to the zips it makes: never part of a package, never copied."""
    return name.startswith("__MACOSX/") or PurePosixPath(name).name == ".DS_Store"


def _package_folder_name(package: ModelPackage) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", f"{package.name}-{package.version}").strip("._") or "package"


def _package_files(folder: Path) -> set[str]:
    """Every file under ``folder``, as POSIX paths relative to it."""
    paths = {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file() or p.is_symlink()}
    return {path for path in paths if not _is_os_junk(path)}


def _extract_zip(source: Path, target: Path) -> Path:
    """Extract a package zip into ``target`` safely; return the folder holding its manifest."""
    try:
        archive = zipfile.ZipFile(source)
    except (zipfile.BadZipFile, OSError) as exc:
        raise ModelPackageError(f"{source.name} is not a readable zip file ({exc}).") from None
    with archive:
        total = 0
        for info in archive.infolist():
            name = info.filename
            if info.is_dir() or _is_os_junk(name):
                continue
            parts = PurePosixPath(name.replace("\\", "/")).parts
            if name.startswith(("/", "\\")) or ".." in parts or (parts and ":" in parts[0]):
                raise ModelPackageError(f"{source.name} holds a file outside its own folder ({name}): refused.")
            if stat.S_ISLNK(info.external_attr >> 16):
                raise ModelPackageError(f"{source.name} holds a symbolic link ({name}): refused.")
            destination = target.joinpath(*parts)
            destination.parent.mkdir(parents=True, exist_ok=True)
            with archive.open(info) as reader, open(destination, "wb") as writer:
                # count what is really extracted: a zip's stated sizes can lie
                for block in iter(lambda: reader.read(1 << 20), b""):
                    total += len(block)
                    if total > MAX_IMPORT_BYTES:
                        raise ModelPackageError(f"{source.name} unpacks to more than "
                                                f"{_size_text(MAX_IMPORT_BYTES)}: not a model package.")
                    writer.write(block)
    if (target / "manifest.json").is_file():
        return target
    folders = [p for p in target.iterdir() if p.is_dir()]
    if len(folders) == 1 and not any(p.is_file() for p in target.iterdir()) and (folders[0] / "manifest.json").is_file():
        return folders[0]
    raise ModelPackageError(f"{source.name} holds no model package: no manifest.json at its top or in its one folder.")


def import_package(source: str | Path, packages_root: str | Path) -> ModelPackage:
    """Copy a model package (a folder, or a ``.zip`` of one) into ``packages_root``, verified, and load it.

    For sites without internet: the package is checked before anything is
    copied in (manifest, SHA256 of every file, only safetensors/ONNX/JSON) and
    refused if it holds a file its manifest does not list. The copy is checked
    again and moved into ``packages_root/<name>-<version>`` in one step.
    Importing the same package again returns the installed one; another
    package of the same name and version is refused.
    """
    source = Path(source)
    root = Path(packages_root)
    if not source.exists():
        raise ModelPackageError(f"{source} does not exist.")
    root.mkdir(parents=True, exist_ok=True)
    staging = root / f".import-{uuid.uuid4().hex[:12]}"
    staging.mkdir()
    try:
        if source.is_dir():
            folder = source
        elif zipfile.is_zipfile(source):
            folder = _extract_zip(source, staging / "unpacked")
        else:
            raise ModelPackageError(f"{source.name} is neither a model package folder nor a .zip of one.")
        package = load_package(folder)
        listed = {entry["path"] for entry in package.manifest["files"].values()}
        foreign = sorted(_package_files(folder) - listed - {"manifest.json"})
        if foreign:
            raise ModelPackageError(
                f"The package holds files its manifest does not list ({', '.join(foreign[:5])}"
                f"{', ...' if len(foreign) > 5 else ''}): it is not as published. Import the original package."
            )
        target = root / _package_folder_name(package)
        if target.exists():
            if (target / "manifest.json").is_file() and \
                    sha256_file(target / "manifest.json") == sha256_file(folder / "manifest.json"):
                return load_package(target)
            raise ModelPackageError(
                f"Another package named {package.name} {package.version} is already installed in {target}. "
                "Remove it first, or give the new package another version."
            )
        copy = staging / "package"
        for relative in sorted(listed | {"manifest.json"}):
            (copy / relative).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(folder / relative, copy / relative)
        load_package(copy)  # the copy, checked again
        copy.rename(target)
        return load_package(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
