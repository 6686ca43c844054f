"""The benchmark script runs and reports every figure. Speed is the benchmark's business, never the tests'."""

import importlib.util
import json
import math
import subprocess
import sys

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import ROOT, load_script
from SpineStenosisGraderLib.packages.package import DEFAULT_PACKAGE_DIR

SCRIPT = ROOT / "benchmarks" / "benchmark.py"

benchmark = load_script(SCRIPT, "ssg_benchmark")


def _onnx_missing() -> str:
    """Why the ONNX backend cannot be benchmarked here, or "" when it can."""
    if importlib.util.find_spec("onnxruntime") is None:
        return "onnxruntime is not installed"
    manifest = json.loads((DEFAULT_PACKAGE_DIR / "manifest.json").read_text(encoding="utf-8"))
    if not any(entry["path"].endswith(".onnx") for entry in manifest["files"].values()):
        return "the default model package on this branch has no ONNX files (the ONNX backend has not landed here)"
    return ""


ONNX_MISSING = _onnx_missing()
BACKENDS = ["torch"] if ONNX_MISSING else ["onnx", "torch"]


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    """One --quick run for the whole module: it takes about a minute on 2 idle cores."""
    out = tmp_path_factory.mktemp("benchmark") / "bench.json"
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--backends", ",".join(BACKENDS), "--json", str(out)],
        capture_output=True, text=True, timeout=900, check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(out.read_text(encoding="utf-8")), done.stdout


def _positive(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


def _check_backend(report: dict, backend: str) -> None:
    (study,) = report["studies"]
    ours = study["ours"][backend]
    for kind in ("median", "min", "max"):
        for stage in ("import", "load", "read", "detect", "levels", "grade", "write", "read_to_graded",
                      "first_result"):
            assert _positive(ours["stats"][kind][stage]), (backend, kind, stage)
    median = ours["stats"]["median"]
    assert median["first_result"] == pytest.approx(median["load"] + median["read_to_graded"])
    assert median["read_to_graded"] >= median["read"] + median["detect"]
    assert _positive(ours["peak_rss_mib_max"])
    (run,) = ours["runs"]
    assert "report.html" in run["written"] and "result.json" in run["written"]
    assert run["threads"]["torch"] in (None, 2)
    assert _positive(study["analysis"]["ratios"][f"seeds/{backend}"])
    assert _positive(study["analysis"]["bound_multiples"][backend]["detect_grade"])
    checks = [c for c in report["targets"] if c["backend"] == backend]
    assert len(checks) == 5 and all(isinstance(c["passed"], bool) for c in checks)


def test_quick_run_reports_every_stage_of_torch(quick_run):
    report, _ = quick_run
    _check_backend(report, "torch")
    (run,) = report["studies"][0]["ours"]["torch"]["runs"]
    assert run["modules_imported"]["torch"]


@pytest.mark.skipif(bool(ONNX_MISSING), reason=ONNX_MISSING or "ONNX Runtime backend available")
def test_quick_run_reports_every_stage_of_onnx(quick_run):
    report, _ = quick_run
    _check_backend(report, "onnx")
    assert _positive(report["studies"][0]["analysis"]["ratios"]["torch/onnx"])
    (run,) = report["studies"][0]["ours"]["onnx"]["runs"]
    assert run["threads"]["onnxruntime_sessions"], "no ONNX Runtime session was found in the onnx run"


def test_quick_run_counts_flops_and_times_the_seeds(quick_run):
    report, stdout = quick_run
    (study,) = report["studies"]
    assert study["name"] == "phantom CT" and study["size"] == [512, 512, 60]
    flops = study["flops"]
    for who in ("ours", "seeds"):
        assert _positive(flops[who]["detector"]) and _positive(flops[who]["total"]), who
    assert flops["ours"]["detector_slices"] > 0
    # the seeds' detector at 512 px with 1000 proposals is by far the larger
    assert flops["seeds"]["detector"] > flops["ours"]["detector"]
    assert flops["seeds"]["proposals"] > flops["ours"]["proposals_per_slice"]
    seeds = study["seeds"]
    assert seeds["extrapolated"] and len(seeds["timed_slices"]) == 3 and seeds["n_slices"] == 60
    for stage in ("read", "detect", "read_to_graded"):
        assert _positive(seeds["stats"]["median"][stage]), stage
    assert _positive(report["attainable_gflops"])
    assert _positive(study["analysis"]["flop_bound_s"]["ours"])
    assert report["machine"]["threads_used"] == 2 and report["machine"]["versions"]["torch"]
    # the printed Markdown names the extrapolation and carries the target lines
    assert "extrapolated from 3 of 60 slices" in stdout
    assert "| ours, torch |" in stdout and "### Targets" in stdout


def test_resampled_study_covers_the_same_anatomy():
    image = sitk.Image([40, 30, 25], sitk.sitkFloat32)
    image.SetSpacing((2.0, 2.0, 4.0))
    image.SetOrigin((10.0, -20.0, 30.0))
    image.SetDirection((-1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0))
    image = sitk.Add(image, -1000.0)
    image[20, 15, 12] = 500.0
    out = benchmark.resample_study(image, (64, 64, 10))
    assert out.GetSize() == (64, 64, 10) and out.GetPixelID() == sitk.sitkInt16
    assert np.allclose(out.GetDirection(), np.eye(3).ravel())  # LPS, so the array is the stack array
    # the larger in-plane side (80 mm) is kept, square pixels; z covers the 100 mm of slices
    assert out.GetSpacing() == pytest.approx((80.0 / 64, 80.0 / 64, 10.0))

    def centre(img):
        return np.array(img.TransformContinuousIndexToPhysicalPoint([(n - 1) / 2.0 for n in img.GetSize()]))

    assert centre(out) == pytest.approx(centre(image))
    assert sitk.GetArrayViewFromImage(out).min() == -1000


def test_a_missing_study_file_is_refused_before_anything_runs(tmp_path):
    done = subprocess.run([sys.executable, str(SCRIPT), "--study", str(tmp_path / "nothing.nii.gz")],
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 2
    assert "no such file" in done.stderr


REGION_SCRIPT = ROOT / "benchmarks" / "region_reading.py"


def test_the_region_reading_benchmark_times_both_readings_of_a_real_neck():
    done = subprocess.run([sys.executable, str(REGION_SCRIPT), "--runs", "1"],
                          capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    assert "sct_errsm_11_t2: 216 slices" in done.stdout
    (row,) = [line for line in done.stdout.splitlines() if line.startswith("| infer_region |")]
    with_hull, without_hull, ratio = (cell.strip() for cell in row.strip("|").split("|")[1:])
    # the figures are reported, never judged: speed is the benchmark's business
    assert float(with_hull.split()[0]) > 0 and float(without_hull.split()[0]) > 0 and float(ratio) > 0


def test_the_region_reading_benchmark_refuses_a_scan_that_is_not_mr():
    done = subprocess.run([sys.executable, str(REGION_SCRIPT), "--scan", "totalsegmentator_ct"],
                          capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 2 and "totalsegmentator_ct is not an MR scan" in done.stderr
