#!/usr/bin/env python3
"""Benchmark our default pipeline (ONNX Runtime and torch) against the seeds' configuration, in one run.

It prints a Markdown table (and writes JSON with ``--json``) with, for each study:

* the median (min-max) of ``--runs`` timed runs of our pipeline per backend, each run in a fresh
  subprocess with ``--threads`` threads, so that model load is timed on its own: load, read,
  detect, levels, grade, write, read-to-graded-levels and first result (load + read to graded);
* the seeds' configuration timed in the same run: torchvision's Faster R-CNN ResNet50-FPN at
  512 px with its default 1000 test proposals on every slice, and timm's EfficientNet-B0 at 224 px
  per level found by our pipeline. Random weights (timing only). Its detector is timed on
  ``--seed-slices`` evenly spaced slices and extrapolated linearly to the study, unless ``--full-seed``;
* the ratios between them, the FLOPs per study counted with ``torch.utils.flop_counter`` on what
  actually runs, the machine's attainable GFLOP/s (float32 matrix products, numpy and torch),
  the FLOP bound and our time as a multiple of it, and each pipeline subprocess's peak RSS;
* the issue's targets as pass/fail lines.

Run from anywhere: ``python benchmarks/benchmark.py`` (about 8 minutes on 2 cores);
``--quick`` takes about 40 s (1 run, 3 seed slices, the phantom study only).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from importlib import metadata
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "SpineStenosisGrader"))

SAMPLE_CT = ROOT / "Testing" / "Data" / "totalsegmentator_ct" / "example_ct.nii.gz"
#: a real T2 MR, so that the MR-only steps (the slice gain, the box grown over the CSF) are timed too
SAMPLE_MR = ROOT / "Testing" / "Data" / "sct_errsm" / "errsm_23" / "t2" / "t2.nii.gz"
#: (i, j, k) voxels of the studies the targets are stated for
STUDY_SIZE = (512, 512, 60)
PHANTOM_SEED = 0
BACKENDS = ("onnx", "torch")
BACKEND_LABELS = {"onnx": "ONNX Runtime", "torch": "torch"}
#: our stages, in pipeline order; "read_to_graded" is the wall time of grade_file around them
PIPELINE_STAGES = ("read", "detect", "levels", "grade")
#: every per-run figure of our pipeline, in seconds
OUR_FIGURES = ("import", "load", *PIPELINE_STAGES, "read_to_graded", "first_result", "write", "warm_read_to_graded")
SEED_FIGURES = ("load", "read", "detect", "grade", "read_to_graded")

TARGET_READ_TO_GRADED_S = 2.0
TARGET_FIRST_RESULT_S = 5.0
TARGET_SPEED_UP = 30.0
TARGET_FLOP_BOUND_MULTIPLE = 3.0
TARGET_PEAK_RSS_MIB = 1536.0

SEED_DETECTOR = "torchvision fasterrcnn_resnet50_fpn (min_size=max_size=512, 1000 test proposals)"
SEED_CLASSIFIER = "timm efficientnet_b0 at 224 px, one level at a time"
SEED_INPUT_SIZE = 512
SEED_CLASSIFIER_SIZE = 224


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _peak_rss_mib() -> float:
    # ru_maxrss is in KiB on Linux
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


# --------------------------------------------------------------------------- children


def _proxy(inner: Any, method: str, around: Callable[[Callable, tuple, dict], Any]) -> Any:
    """``inner`` with ``method`` routed through ``around(original, args, kwargs)``; the rest passes through."""

    class Proxy:
        def __getattr__(self, name: str) -> Any:
            return getattr(inner, name)

    proxy = Proxy()
    original = getattr(inner, method)
    setattr(proxy, method, lambda *args, **kwargs: around(original, args, kwargs))
    return proxy


def _ort_threads(*models: Any) -> list[int]:
    """intra_op_num_threads of every ONNX Runtime session held by these models (0 means ORT's default)."""
    try:
        import onnxruntime
    except ImportError:
        return []
    found = []
    for model in models:
        for value in vars(model).values():
            for item in value if isinstance(value, (list, tuple)) else [value]:
                if isinstance(item, onnxruntime.InferenceSession):
                    found.append(int(item.get_session_options().intra_op_num_threads))
    return found


def _count_proposals(roi_heads: Any, counts: list[int]) -> None:
    """Append to ``counts`` the number of proposals the box head runs on, per image, at every call."""
    # RoIHeads.forward(features, proposals, image_shapes): proposals is one tensor per image of the batch
    roi_heads.register_forward_pre_hook(lambda module, inputs: counts.extend(len(p) for p in inputs[1]))


class _Recorder:
    """Wraps a package's loaded models: records the shapes fed to them and, when told, counts their FLOPs."""

    def __init__(self, package: Any) -> None:
        self.detector_model = package.detector()
        self.classifier_model = package.classifier()
        self.counting = False
        self.reset()
        # the pipeline asks the package for its models: hand it recording proxies of the loaded ones
        package.detector = lambda: _proxy(self.detector_model, "detect_candidates", partial(self._call, "detector"))
        package.classifier = lambda: _proxy(self.classifier_model, "grade", partial(self._call, "classifier"))
        roi_heads = getattr(getattr(self.detector_model, "model", None), "roi_heads", None)
        if roi_heads is not None:
            _count_proposals(roi_heads, self.proposals)

    def reset(self) -> None:
        self.calls: dict[str, list[list[int]]] = {"detector": [], "classifier": []}
        self.flops = {"detector": 0, "classifier": 0}
        if hasattr(self, "proposals"):
            self.proposals.clear()
        else:
            self.proposals: list[int] = []

    def _call(self, kind: str, call: Callable, args: tuple, kwargs: dict) -> Any:
        self.calls[kind].append([int(v) for v in args[0].shape])
        if not self.counting:
            return call(*args, **kwargs)
        from torch.utils.flop_counter import FlopCounterMode

        with FlopCounterMode(display=False) as counter:
            out = call(*args, **kwargs)
        self.flops[kind] += int(counter.get_total_flops())
        return out


def child_ours(spec: dict[str, Any]) -> dict[str, Any]:
    """One fresh run of our pipeline: import, load, grade the study, write its outputs, grade it again warm.

    With ``count_flops`` (torch backend) the study is then graded once more with the detector and
    classifier calls under ``FlopCounterMode``, after every timed figure and the peak RSS are taken;
    with ``count_only`` that is all the child does.
    """
    threads = int(spec["threads"])
    backend = spec["backend"]
    t0 = time.perf_counter()
    from SpineStenosisGraderLib.packages import package as package_module
    from SpineStenosisGraderLib import pipeline
    from SpineStenosisGraderLib.outputs import writers

    import_s = time.perf_counter() - t0

    t0 = time.perf_counter()
    package = package_module.load_default_package(backend=backend)
    if hasattr(package, "threads"):
        package.threads = threads
    recorder = _Recorder(package)
    load_s = time.perf_counter() - t0
    if "torch" in sys.modules:
        import torch

        torch.set_num_threads(threads)
    if backend == "onnx" and "onnxruntime" not in sys.modules:
        raise SystemExit(
            "The onnx backend created no ONNX Runtime session: this branch has no ONNX backend yet "
            "(merge main once it lands), or run with --backends torch."
        )

    def graded_levels(result, stack) -> list[dict[str, Any]]:
        return [{"name": lv.name, "slice_index": lv.slice_index, "box_ij": list(stack.box_to_slice(lv.box)[1])}
                for lv in result.levels]

    out: dict[str, Any] = {"backend": backend}
    # every study is timed through the grade step, the default package's CT too (it shows no grade on CT, but a
    # package that does runs the classifier there): the comparison with the seeds is read to graded
    if not spec.get("count_only"):
        t0 = time.perf_counter()
        result, stack = pipeline.grade_file(spec["study"], package=package, allow_model_mismatch=True)
        read_to_graded_s = time.perf_counter() - t0
        out.update(n_slices=stack.n_slices, levels=graded_levels(result, stack),
                   detector_calls=recorder.calls["detector"], classifier_calls=recorder.calls["classifier"])

        t0 = time.perf_counter()
        writers.write_study_outputs(result, Path(spec["out_dir"]), pipeline.representative_slices(result, stack))
        write_s = time.perf_counter() - t0
        written = sorted(p.name for p in Path(spec["out_dir"]).iterdir())
        if "report.html" not in written:
            raise SystemExit(f"write_study_outputs wrote no report.html (it wrote {written}).")
        times = {
            "import": import_s,
            "load": load_s,
            **{stage: float(result.timings_s[stage]) for stage in PIPELINE_STAGES},
            "read_to_graded": read_to_graded_s,
            "first_result": load_s + read_to_graded_s,
            "write": write_s,
        }
        if spec.get("warm"):
            # a second study in the same process: what a user sees from the second study on
            recorder.reset()
            t0 = time.perf_counter()
            pipeline.grade_file(spec["study"], package=package, allow_model_mismatch=True)
            times["warm_read_to_graded"] = time.perf_counter() - t0
        torch_threads = sys.modules["torch"].get_num_threads() if "torch" in sys.modules else None
        out.update(
            times=times,
            peak_rss_mib=_peak_rss_mib(),
            written=written,
            threads={"torch": torch_threads,
                     "onnxruntime_sessions": _ort_threads(recorder.detector_model, recorder.classifier_model)},
            modules_imported={name: name in sys.modules for name in ("torch", "torchvision", "timm", "onnxruntime")},
        )
    if spec.get("count_flops") or spec.get("count_only"):
        if backend != "torch":
            raise SystemExit("FLOPs are counted on the torch backend only.")
        recorder.reset()
        recorder.counting = True
        result, stack = pipeline.grade_file(spec["study"], package=package, allow_model_mismatch=True)
        out["flop_count"] = {
            "flops": dict(recorder.flops),
            "detector_calls": recorder.calls["detector"],
            "classifier_calls": recorder.calls["classifier"],
            "proposals_per_slice": list(recorder.proposals),
            "levels": graded_levels(result, stack),
        }
    return out


def _seed_slice_tensor(raw_slice, window: tuple[float, float]):
    """A slice as the seeds feed it: windowed to [0, 1], three identical channels."""
    import numpy as np
    import torch

    scaled = np.clip((raw_slice.astype(np.float32) - window[0]) / (window[1] - window[0]), 0.0, 1.0)
    return torch.from_numpy(scaled)[None].expand(3, -1, -1)


def _seed_level_tensor(raw_slice, box_ij: list[float], window: tuple[float, float]):
    """A level as the seeds grade it: the detected box cut out and resized to 224 px, ImageNet-normalised."""
    import torch
    from torch.nn import functional

    nj, ni = raw_slice.shape
    i0, j0, i1, j1 = box_ij
    i0, j0 = max(0, int(i0)), max(0, int(j0))
    i1, j1 = min(ni, max(i0 + 8, round(i1))), min(nj, max(j0 + 8, round(j1)))
    crop = _seed_slice_tensor(raw_slice[j0:j1, i0:i1], window)[None]
    resized = functional.interpolate(crop, size=(SEED_CLASSIFIER_SIZE,) * 2, mode="bilinear", align_corners=False)
    mean = torch.tensor([0.485, 0.456, 0.406])[None, :, None, None]
    std = torch.tensor([0.229, 0.224, 0.225])[None, :, None, None]
    return (resized - mean) / std


def child_seeds(spec: dict[str, Any]) -> dict[str, Any]:
    """The seeds' configuration: ``runs`` timed runs on one study, then its FLOPs; random weights."""
    import numpy as np
    import SimpleITK as sitk
    import timm
    import torch
    from torch.utils.flop_counter import FlopCounterMode
    from torchvision.models.detection import fasterrcnn_resnet50_fpn

    torch.set_num_threads(int(spec["threads"]))
    t0 = time.perf_counter()
    detector = fasterrcnn_resnet50_fpn(weights=None, weights_backbone=None, num_classes=2,
                                       min_size=SEED_INPUT_SIZE, max_size=SEED_INPUT_SIZE).eval()
    classifier = timm.create_model("efficientnet_b0", pretrained=False, num_classes=4).eval()
    load_s = time.perf_counter() - t0

    array = sitk.GetArrayFromImage(sitk.ReadImage(spec["study"]))
    n_slices = int(array.shape[0])
    window = tuple(float(v) for v in np.percentile(array[:: max(1, n_slices // 16)], (1.0, 99.5)))
    if spec["full"]:
        timed = list(range(n_slices))
    else:
        timed = sorted({int(v) for v in np.linspace(0, n_slices - 1, min(int(spec["slices"]), n_slices)).round()})
    levels = spec["levels"]

    # counting first also warms the models up, so no timed run pays for first-call set-up
    proposals: list[int] = []
    _count_proposals(detector.roi_heads, proposals)
    counted = timed[:: max(1, len(timed) // int(spec["flop_slices"]))][: int(spec["flop_slices"])]
    with torch.inference_mode():
        with FlopCounterMode(display=False) as counter:
            for k in counted:
                detector([_seed_slice_tensor(array[k], window)])
        detector_flops_per_slice = counter.get_total_flops() / len(counted)
        with FlopCounterMode(display=False) as counter:
            classifier(torch.zeros(1, 3, SEED_CLASSIFIER_SIZE, SEED_CLASSIFIER_SIZE))
        classifier_flops_per_level = counter.get_total_flops()
    counted_proposals = list(proposals)

    runs = []
    for _ in range(int(spec["runs"])):
        t0 = time.perf_counter()
        array = sitk.GetArrayFromImage(sitk.ReadImage(spec["study"]))
        read_s = time.perf_counter() - t0
        per_slice = []
        with torch.inference_mode():
            for k in timed:
                t0 = time.perf_counter()
                detector([_seed_slice_tensor(array[k], window)])
                per_slice.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            for level in levels:
                k = min(n_slices - 1, max(0, int(level["slice_index"])))
                classifier(_seed_level_tensor(array[k], level["box_ij"], window))
            grade_s = time.perf_counter() - t0
        detect_s = sum(per_slice) * n_slices / len(timed)
        runs.append({
            "load": load_s, "read": read_s, "detect": detect_s, "grade": grade_s,
            "read_to_graded": read_s + detect_s + grade_s, "timed_slice_s": per_slice,
        })
    return {
        "runs": runs,
        "n_slices": n_slices,
        "timed_slices": timed,
        "extrapolated": len(timed) < n_slices,
        "n_levels": len(levels),
        "flops": {
            "detector_per_slice": detector_flops_per_slice,
            "classifier_per_level": classifier_flops_per_level,
            "detector": detector_flops_per_slice * n_slices,
            "classifier": classifier_flops_per_level * len(levels),
            "counted_slices": counted,
            "proposals_per_slice": counted_proposals,
        },
    }


def child_matmul(spec: dict[str, Any]) -> dict[str, Any]:
    """Attainable GFLOP/s: median of timed square float32 matrix products, numpy and torch (bf16 for reference)."""
    import numpy as np
    import torch

    torch.set_num_threads(int(spec["threads"]))
    rng = np.random.default_rng(0)
    results = []
    for n in spec["sizes"]:
        a = rng.standard_normal((n, n), dtype=np.float32)
        b = rng.standard_normal((n, n), dtype=np.float32)
        ta, tb = torch.from_numpy(a), torch.from_numpy(b)
        candidates = {
            "numpy float32": partial(np.matmul, a, b),
            "torch float32": partial(torch.matmul, ta, tb),
            "torch bfloat16": partial(torch.matmul, ta.bfloat16(), tb.bfloat16()),
        }
        for library, product in candidates.items():
            product()
            times = []
            for _ in range(int(spec["repeats"])):
                t0 = time.perf_counter()
                product()
                times.append(time.perf_counter() - t0)
            median = statistics.median(times)
            results.append({"library": library, "size": n, "median_s": median, "gflops": 2.0 * n ** 3 / median / 1e9})
    return {"products": results, "numpy_blas_threads": _blas_threads()}


def _blas_threads() -> int | None:
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return None
    infos = [info for info in threadpool_info() if info.get("user_api") == "blas"]
    return int(infos[0]["num_threads"]) if infos else None


def child_reference(spec: dict[str, Any]) -> dict[str, Any]:
    """The seeds' configuration, on the levels our pipeline found.

    Without ``flop_count`` (no torch run of ours was timed) it first counts our FLOPs on the torch
    backend itself, in the same process: both need torch, and importing it is most of a child's start-up.
    """
    flop_count = spec.get("flop_count")
    if flop_count is None:
        flop_count = child_ours({"backend": "torch", "study": spec["study"], "threads": spec["threads"],
                                 "count_only": True})["flop_count"]
    return {"flop_count": flop_count, "seeds": child_seeds(dict(spec, levels=flop_count["levels"]))}


CHILDREN = {"ours": child_ours, "seeds": child_reference, "matmul": child_matmul}


def run_child(mode: str, spec: dict[str, Any], threads: int, work: Path) -> dict[str, Any]:
    """Run one child in a fresh interpreter with ``threads`` threads everywhere; return what it reports."""
    work.mkdir(parents=True, exist_ok=True)
    spec_path = work / f"{mode}-{time.monotonic_ns()}.json"
    out_path = spec_path.with_suffix(".out.json")
    spec_path.write_text(json.dumps(dict(spec, threads=threads, out=str(out_path))), encoding="utf-8")
    env = dict(os.environ)
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        env[name] = str(threads)
    done = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--child", mode, str(spec_path)],
                          env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0 or not out_path.exists():
        tail = "\n".join((done.stderr or done.stdout).strip().splitlines()[-12:])
        raise SystemExit(f"The {mode} benchmark child failed (exit code {done.returncode}):\n{tail}")
    return json.loads(out_path.read_text(encoding="utf-8"))


def child_main(mode: str, spec_path: str) -> None:
    spec = json.loads(Path(spec_path).read_text(encoding="utf-8"))
    result = CHILDREN[mode](spec)
    Path(spec["out"]).write_text(json.dumps(result), encoding="utf-8")


# --------------------------------------------------------------------------- studies


def resample_study(image, size: tuple[int, int, int] = STUDY_SIZE):
    """``image`` on a ``size`` grid covering the same anatomy: square pixels over its larger in-plane extent.

    Reoriented to LPS first, so that a file's voxel array is the pipeline's stack array. The
    shorter in-plane side is padded with the image's minimum (air).
    """
    import numpy as np
    import SimpleITK as sitk

    image = sitk.DICOMOrient(image, "LPS")
    old_size = np.array(image.GetSize(), dtype=float)
    old_spacing = np.array(image.GetSpacing())
    extent = old_size * old_spacing
    pixel = max(extent[0], extent[1]) / size[0]
    spacing = np.array([pixel, pixel, extent[2] / size[2]])
    direction = np.array(image.GetDirection()).reshape(3, 3)
    centre = np.array(image.GetOrigin()) + direction @ ((old_size - 1) / 2.0 * old_spacing)
    origin = centre - direction @ ((np.array(size) - 1) / 2.0 * spacing)
    low = float(sitk.GetArrayViewFromImage(image).min())
    resampled = sitk.Resample(image, [int(v) for v in size], sitk.Transform(), sitk.sitkLinear,
                              origin.tolist(), spacing.tolist(), direction.reshape(-1).tolist(), low,
                              sitk.sitkFloat32)
    # CT in HU, stored as int16 like a scanner's series
    return sitk.Cast(sitk.Round(sitk.Clamp(resampled, sitk.sitkFloat32, -32768.0, 32767.0)), sitk.sitkInt16)


def _describe(image, path: Path, name: str, description: str) -> dict[str, Any]:
    return {
        "name": name,
        "path": str(path),
        "description": description,
        "size": [int(v) for v in image.GetSize()],
        "spacing_mm": [round(float(v), 3) for v in image.GetSpacing()],
    }


def prepare_studies(work: Path, quick: bool, extra: list[str]) -> list[dict[str, Any]]:
    """The real sample CT, a real whole-neck T2 and a phantom, resampled to 60x512x512 as NIfTI, plus ``extra`` files."""
    import SimpleITK as sitk
    from SpineStenosisGraderLib.training import phantom

    work.mkdir(parents=True, exist_ok=True)
    studies = []
    if not quick:
        image = resample_study(sitk.ReadImage(str(SAMPLE_CT)))
        path = work / "real_ct_60x512x512.nii.gz"
        sitk.WriteImage(image, str(path), useCompression=True)
        studies.append(_describe(image, path, "real CT", f"{SAMPLE_CT.name} (TotalSegmentator sample) resampled"))
        studies[-1]["built_in"] = True
        image = resample_study(sitk.ReadImage(str(SAMPLE_MR)))
        path = work / "real_mr_60x512x512.nii.gz"
        sitk.WriteImage(image, str(path), useCompression=True)
        studies.append(_describe(image, path, "real MR", "errsm_23 sagittal T2 of a whole neck (sct_errsm), "
                                                         "reformatted to axial and resampled"))
        studies[-1]["built_in"] = True
    image = resample_study(phantom.make_study(seed=PHANTOM_SEED, modality="CT", region="lumbar").image)
    path = work / "phantom_ct_60x512x512.nii.gz"
    sitk.WriteImage(image, str(path), useCompression=True)
    studies.append(_describe(image, path, "phantom CT", f"lumbar CT phantom (seed {PHANTOM_SEED}) resampled"))
    studies[-1]["built_in"] = True
    for i, name in enumerate(extra):
        source = Path(name).resolve()
        reader = sitk.ImageFileReader()
        reader.SetFileName(str(source))
        reader.ReadImageInformation()
        info = {"name": f"study {i + 1}", "path": str(source), "description": f"{source.name}, as it is",
                "size": list(reader.GetSize()), "spacing_mm": [round(v, 3) for v in reader.GetSpacing()],
                "built_in": False}
        studies.append(info)
    return studies


# --------------------------------------------------------------------------- machine


def machine_info(threads: int) -> dict[str, Any]:
    model, flags = platform.processor() or "unknown", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and model in ("unknown", platform.processor()):
                model = value.strip()
            elif key.strip() == "flags" and not flags:
                flags = set(value.split())
    except OSError:
        pass
    wanted = ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni", "amx_tile", "amx_bf16", "amx_int8")
    versions = {}
    for name in ("onnxruntime", "torch", "torchvision", "timm", "numpy", "SimpleITK"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return {
        "cpu": model,
        "logical_cpus": os.cpu_count(),
        "threads_used": threads,
        "flags": {flag: flag in flags for flag in wanted},
        "python": platform.python_version(),
        "versions": versions,
    }


# --------------------------------------------------------------------------- statistics


def summarise(runs: list[dict[str, float]], figures: tuple[str, ...]) -> dict[str, dict[str, float]]:
    """Median, min and max of each figure the runs measured."""
    figures = tuple(name for name in figures if all(name in run for run in runs))
    return {
        kind: {name: func([run[name] for run in runs]) for name in figures}
        for kind, func in (("median", statistics.median), ("min", min), ("max", max))
    }


def analyse(study: dict[str, Any], matmul_gflops: float, backends: list[str]) -> dict[str, Any]:
    """Ratios, FLOP bounds and target checks of one study's measurements."""
    seeds = study["seeds"]["stats"]["median"]
    flops_ours = study["flops"]["ours"]["total"]
    flops_seeds = study["flops"]["seeds"]["total"]
    bound_ours = flops_ours / (matmul_gflops * 1e9)
    bound_seeds = flops_seeds / (matmul_gflops * 1e9)
    analysis: dict[str, Any] = {
        "flop_bound_s": {"ours": bound_ours, "seeds": bound_seeds},
        "ratios": {},
        "bound_multiples": {"seeds": seeds["detect"] / max(bound_seeds, 1e-12)},
    }
    for backend in backends:
        median = study["ours"][backend]["stats"]["median"]
        analysis["ratios"][f"seeds/{backend}"] = seeds["read_to_graded"] / median["read_to_graded"]
        analysis["bound_multiples"][backend] = {
            "detect_grade": (median["detect"] + median["grade"]) / bound_ours,
            "read_to_graded": median["read_to_graded"] / bound_ours,
        }
    if "onnx" in backends and "torch" in backends:
        analysis["ratios"]["torch/onnx"] = (study["ours"]["torch"]["stats"]["median"]["read_to_graded"]
                                            / study["ours"]["onnx"]["stats"]["median"]["read_to_graded"])
    return analysis


def targets(study: dict[str, Any], backends: list[str]) -> list[dict[str, Any]]:
    checks = []
    for backend in backends:
        ours = study["ours"][backend]
        median = ours["stats"]["median"]
        label = f"{study['name']}, {BACKEND_LABELS[backend]}"
        rows = [
            (f"read to graded levels {median['read_to_graded']:.2f} s < {TARGET_READ_TO_GRADED_S:g} s",
             median["read_to_graded"] < TARGET_READ_TO_GRADED_S),
            ((f"first result (model load + read to graded) {median['first_result']:.2f} s "
              f"< {TARGET_FIRST_RESULT_S:g} s (with library import {median['import'] + median['first_result']:.2f} s)"),
             median["first_result"] < TARGET_FIRST_RESULT_S),
            ((f"{study['analysis']['ratios'][f'seeds/{backend}']:.0f}x faster than the seeds' configuration "
              f"(>= {TARGET_SPEED_UP:g}x)"), study["analysis"]["ratios"][f"seeds/{backend}"] >= TARGET_SPEED_UP),
            ((f"detect + grade at {study['analysis']['bound_multiples'][backend]['detect_grade']:.1f}x the FLOP bound "
              f"(<= {TARGET_FLOP_BOUND_MULTIPLE:g}x)"),
             study["analysis"]["bound_multiples"][backend]["detect_grade"] <= TARGET_FLOP_BOUND_MULTIPLE),
            (f"peak RSS {ours['peak_rss_mib_max']:.0f} MiB <= {TARGET_PEAK_RSS_MIB:g} MiB",
             ours["peak_rss_mib_max"] <= TARGET_PEAK_RSS_MIB),
        ]
        checks += [{"study": study["name"], "backend": backend, "check": f"{label}: {text}", "passed": bool(ok)}
                   for text, ok in rows]
    return checks


# --------------------------------------------------------------------------- report


def _s(value: float) -> str:
    return f"{value:.3f}" if value < 10 else f"{value:.1f}"


def _cell(stats: dict[str, dict[str, float]], name: str) -> str:
    if name not in stats["median"]:
        return "—"
    median, low, high = stats["median"][name], stats["min"][name], stats["max"][name]
    return _s(median) if low == high else f"{_s(median)} ({_s(low)}–{_s(high)})"


def _gflop(flops: float) -> str:
    return f"{flops / 1e9:.2f}" if flops < 1e11 else f"{flops / 1e9:.0f}"


def markdown(report: dict[str, Any]) -> str:
    m = report["machine"]
    o = report["options"]
    flags = ", ".join(f"{k} {'yes' if v else 'no'}" for k, v in m["flags"].items())
    versions = ", ".join(f"{k} {v or 'not installed'}" for k, v in m["versions"].items())
    lines = [
        "## Benchmark",
        "",
        f"Machine: {m['cpu']}, {m['logical_cpus']} logical CPUs, {m['threads_used']} threads used. {flags}.",
        f"Python {m['python']}; {versions}.",
        "",
        (f"{o['runs']} run(s) per configuration and study, each of ours in a fresh process. Times in seconds: "
         "median (min–max). *read→graded* is the wall time from reading the file to graded levels; "
         "*first result* adds the model load (package, weights and session or model creation, including "
         "importing the backend); *import* is importing our library before that."),
        "",
        "Attainable float32 matrix-product rate (square, median of repeats):",
        "",
        "| library | size | GFLOP/s |",
        "|---|---|---|",
    ]
    lines += [f"| {p['library']} | {p['size']} | {p['gflops']:.0f} |" for p in report["matmul"]["products"]]
    lines += ["", (f"Attainable float32 rate used for the FLOP bound: **{report['attainable_gflops']:.0f} GFLOP/s** "
                   "(best float32 median)."), ""]
    for study in report["studies"]:
        size = "×".join(str(v) for v in study["size"])
        spacing = "×".join(f"{v:g}" for v in study["spacing_mm"])
        seeds = study["seeds"]
        n_timed = len(seeds["timed_slices"])
        extrapolated = (f"detect extrapolated from {n_timed} of {seeds['n_slices']} slices"
                        if seeds["extrapolated"] else f"detect timed on all {seeds['n_slices']} slices")
        ours_any = study["ours"][report["options"]["backends"][0]]
        lines += [
            f"### {study['name']}: {study['description']} ({size} voxels, {spacing} mm)",
            "",
            (f"Our pipeline found {len(ours_any['levels'])} levels "
             f"({', '.join(lv['name'] for lv in ours_any['levels']) or 'none'})."),
            "",
            ("| configuration | import | load | read | detect | levels | grade | read→graded | first result "
             "| write | warm read→graded | peak RSS (MiB) |"),
            "|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for backend in report["options"]["backends"]:
            ours = study["ours"][backend]
            cells = [_cell(ours["stats"], name) for name in OUR_FIGURES]
            lines.append(f"| ours, {BACKEND_LABELS[backend]} | " + " | ".join(cells)
                         + f" | {ours['peak_rss_mib_max']:.0f} |")
        st = seeds["stats"]
        lines += [
            (f"| seeds' configuration¹ | — | {_cell(st, 'load')}² | {_cell(st, 'read')} | {_cell(st, 'detect')}³ "
             f"| — | {_cell(st, 'grade')} | {_cell(st, 'read_to_graded')} | — | — | — | — |"),
            "",
            (f"¹ {SEED_DETECTOR} on every slice, one slice at a time, plus {SEED_CLASSIFIER} for each of the "
             f"{seeds['n_levels']} levels our pipeline found; random weights (timing only). "
             "² Building the models with random initialisation, not loading weights. "
             f"³ {extrapolated.capitalize()}."),
            "",
        ]
        a = study["analysis"]
        f_ours, f_seeds = study["flops"]["ours"], study["flops"]["seeds"]
        lines += [
            "| FLOPs per study | detector | classifier | total GFLOP | FLOP bound (s) |",
            "|---|---|---|---|---|",
            (f"| ours | {_gflop(f_ours['detector'])} GFLOP: {f_ours['detector_slices']} slices at "
             f"{f_ours['canvas']}, {f_ours['proposals_per_slice']:.1f} proposals per slice "
             f"| {_gflop(f_ours['classifier'])} GFLOP: {f_ours['levels']} levels at {f_ours['classifier_input']} "
             f"| {_gflop(f_ours['total'])} | {a['flop_bound_s']['ours']:.3f} |"),
            (f"| seeds' configuration | {_gflop(f_seeds['detector'])} GFLOP: {seeds['n_slices']} slices at "
             f"{SEED_INPUT_SIZE}², {f_seeds['proposals']:.0f} proposals per slice "
             f"| {_gflop(f_seeds['classifier'])} GFLOP: {seeds['n_levels']} levels at {SEED_CLASSIFIER_SIZE}² "
             f"| {_gflop(f_seeds['total'])} | {a['flop_bound_s']['seeds']:.2f} |"),
            "",
            "| ratio | value |",
            "|---|---|",
        ]
        for key, value in a["ratios"].items():
            slower, faster = key.split("/")
            slower = "seeds' configuration" if slower == "seeds" else f"ours {BACKEND_LABELS[slower]}"
            lines.append(f"| read→graded, {slower} / ours {BACKEND_LABELS[faster]} | {value:.1f}× |")
        for backend in report["options"]["backends"]:
            mult = a["bound_multiples"][backend]
            lines.append(f"| ours {BACKEND_LABELS[backend]} / FLOP bound: detect + grade; read→graded "
                         f"| {mult['detect_grade']:.1f}×; {mult['read_to_graded']:.1f}× |")
        lines += [f"| seeds' detect / its FLOP bound | {a['bound_multiples']['seeds']:.1f}× |", ""]
    lines += ["### Targets (issue 4)", ""]
    for check in report["targets"]:
        lines.append(f"- {'PASS' if check['passed'] else 'FAIL'}: {check['check']}")
    skipped = [s["name"] for s in report["studies"] if not s["targets_apply"]]
    if skipped:
        lines.append(f"- (not checked on {', '.join(skipped)}: the targets are for 60-slice 512×512 studies)")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5, help="timed runs per configuration and study (default 5)")
    parser.add_argument("--backends", default="onnx,torch", help="our backends, comma-separated (default onnx,torch)")
    parser.add_argument("--seed-slices", type=int, default=10,
                        help="slices the seeds' detector is timed on per run, extrapolated to the study (default 10)")
    parser.add_argument("--full-seed", action="store_true", help="time the seeds' detector on every slice")
    parser.add_argument("--threads", type=int, default=2, help="threads for every configuration (default 2)")
    parser.add_argument("--study", action="append", default=[], metavar="FILE",
                        help="also benchmark this volume file, as it is (repeatable)")
    parser.add_argument("--quick", action="store_true",
                        help="1 run, 3 seed slices, the phantom study only, no warm repeat "
                             "(a smoke test, not a measurement)")
    parser.add_argument("--json", metavar="OUT", help="also write every measurement to this JSON file")
    parser.add_argument("--child", nargs=2, metavar=("MODE", "SPEC"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return args
    args.backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    unknown = [b for b in args.backends if b not in BACKENDS]
    if unknown or not args.backends:
        parser.error(f"--backends takes {' and/or '.join(BACKENDS)}, comma-separated; not {unknown or 'nothing'}.")
    if args.quick:
        args.runs, args.seed_slices = 1, 3
    if args.runs < 1 or args.seed_slices < 1 or args.threads < 1:
        parser.error("--runs, --seed-slices and --threads must be at least 1.")
    for name in args.study:
        if not Path(name).is_file():
            parser.error(f"--study {name}: no such file. Give a volume file (NIfTI, NRRD or MHA).")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child:
        child_main(*args.child)
        return 0
    with tempfile.TemporaryDirectory(prefix="ssg-benchmark-") as tmp:
        work = Path(tmp)
        report = benchmark(args, work)
    print(markdown(report), end="")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return 0


def benchmark(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    threads = args.threads
    _log("Matrix-product benchmark ...")
    sizes, repeats = ((1024,), 3) if args.quick else ((1024, 2048), 5)
    matmul = run_child("matmul", {"sizes": list(sizes), "repeats": repeats}, threads, work / "children")
    attainable = max(p["gflops"] for p in matmul["products"] if "float32" in p["library"])
    _log("Writing the studies ...")
    studies = prepare_studies(work / "studies", args.quick, args.study)
    for study in studies:
        study["targets_apply"] = study["built_in"]
        study["ours"] = {}
        runs: dict[str, list[dict[str, Any]]] = {b: [] for b in args.backends}
        for r in range(args.runs):
            # alternate the backends so that a slow spell of the shared machine hits both alike
            for backend in args.backends:
                _log(f"{study['name']}: ours, {backend}, run {r + 1} of {args.runs} ...")
                spec = {"backend": backend, "study": study["path"], "out_dir": str(work / "out" / f"{backend}-{r}"),
                        "warm": not args.quick, "count_flops": backend == "torch" and r == 0}
                runs[backend].append(run_child("ours", spec, threads, work / "children"))
        for backend, done in runs.items():
            study["ours"][backend] = {
                "stats": summarise([run["times"] for run in done], OUR_FIGURES),
                "peak_rss_mib_max": max(run["peak_rss_mib"] for run in done),
                "levels": done[0]["levels"],
                "runs": done,
            }
        _log(f"{study['name']}: the seeds' configuration ({args.runs} runs) ...")
        reference = run_child("seeds", {
            "study": study["path"], "runs": args.runs, "slices": args.seed_slices, "full": args.full_seed,
            "flop_slices": 1 if args.quick else 2,
            "flop_count": runs["torch"][0]["flop_count"] if "torch" in runs else None,
        }, threads, work / "children")
        counted, seeds = reference["flop_count"], reference["seeds"]
        slices = sum(call[0] for call in counted["detector_calls"])
        canvases = sorted({f"{c[1]}×{c[2]}" for c in counted["detector_calls"]})
        inputs = sorted({f"{c[1]}×{c[2]}" for c in counted["classifier_calls"]})
        proposals = counted["proposals_per_slice"]
        ours_flops = {
            "detector": counted["flops"]["detector"],
            "classifier": counted["flops"]["classifier"],
            "total": counted["flops"]["detector"] + counted["flops"]["classifier"],
            "detector_slices": slices,
            "canvas": ", ".join(canvases) or "—",
            "levels": sum(call[0] for call in counted["classifier_calls"]),
            "classifier_input": ", ".join(inputs) or "—",
            "proposals_per_slice": statistics.mean(proposals) if proposals else 0.0,
            "detector_calls": counted["detector_calls"],
            "classifier_calls": counted["classifier_calls"],
        }
        seeds["stats"] = summarise(seeds["runs"], SEED_FIGURES)
        seed_proposals = seeds["flops"]["proposals_per_slice"]
        study["seeds"] = seeds
        study["flops"] = {
            "ours": ours_flops,
            "seeds": {
                "detector": seeds["flops"]["detector"],
                "classifier": seeds["flops"]["classifier"],
                "total": seeds["flops"]["detector"] + seeds["flops"]["classifier"],
                "proposals": statistics.mean(seed_proposals) if seed_proposals else 0.0,
            },
        }
        study["analysis"] = analyse(study, attainable, args.backends)
    checks = [check for study in studies if study["targets_apply"] for check in targets(study, args.backends)]
    return {
        "machine": machine_info(threads),
        "options": {"runs": args.runs, "backends": args.backends, "seed_slices": args.seed_slices,
                    "full_seed": args.full_seed, "threads": threads, "quick": args.quick},
        "matmul": matmul,
        "attainable_gflops": attainable,
        "studies": studies,
        "targets": checks,
    }


if __name__ == "__main__":
    sys.exit(main())
