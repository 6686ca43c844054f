"""The light runtime: ONNX Runtime grades like torch, needs no torch, and refuses foreign graphs."""

import json
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from conftest import DATA, ROOT
from SpineStenosisGraderLib.inference.detector import box_iou
from SpineStenosisGraderLib.errors import ModelPackageError
from SpineStenosisGraderLib.packages.package import DEFAULT_PACKAGE_DIR, ONNX_FILES, load_package, write_manifest
from SpineStenosisGraderLib.pipeline import grade_file

SAMPLE_CT = DATA / "totalsegmentator_ct" / "example_ct.nii.gz"
SAMPLE_MR = DATA / "tptbox" / "sample_mri" / "sub-mri_label-6_T2w.nii.gz"


def test_the_default_package_runs_on_onnx_runtime_by_default():
    package = load_package()
    assert package.resolved_backend() == "onnx"
    assert set(ONNX_FILES.values()) <= set(package.manifest["files"])
    assert package.manifest["onnx"]["detector"]["max_box_difference_px"] <= 0.05


@pytest.mark.parametrize("path", [SAMPLE_CT, SAMPLE_MR], ids=["ct", "mr"])
def test_onnx_and_torch_backends_agree(path):
    # graded past the default package's grade scope (no grade on CT), so that the grades are compared too
    onnx_result, stack = grade_file(path, load_package(backend="onnx"), allow_model_mismatch=True)
    torch_result, _ = grade_file(path, load_package(backend="torch"), allow_model_mismatch=True)
    assert all(lv.grade is not None for lv in onnx_result.levels + torch_result.levels)
    assert [lv.name for lv in onnx_result.levels] == [lv.name for lv in torch_result.levels]
    assert [lv.slice_index for lv in onnx_result.levels] == [lv.slice_index for lv in torch_result.levels]
    assert [d.slice_index for d in onnx_result.detections] == [d.slice_index for d in torch_result.detections]
    ious = [box_iou(stack.box_to_slice(a.box)[1], stack.box_to_slice(b.box)[1])
            for a, b in zip(onnx_result.detections, torch_result.detections)]
    # Two overlapping boxes can tie in score to 1e-4; float rounding then picks either one
    # (1 slice in 190 on these scans). Every other box is the same.
    assert np.mean(np.asarray(ious) >= 0.99) >= 0.97
    assert min(ious) >= 0.75
    for a, b in zip(onnx_result.detections, torch_result.detections):
        assert a.score == pytest.approx(b.score, abs=1e-3)
    for a, b in zip(onnx_result.levels, torch_result.levels):
        assert (a.grade is None) == (b.grade is None)
        if a.grade is not None:
            assert a.grade.grade == b.grade.grade
            for name, p in a.grade.probabilities.items():
                assert p == pytest.approx(b.grade.probabilities[name], abs=1e-3)


def test_grading_needs_no_torch(tmp_path):
    """The whole CLI grade runs with torch, torchvision, timm and safetensors made unimportable."""
    script = textwrap.dedent(f"""
        import sys

        class Uninstalled:
            # as if they were not installed: importing them fails, and they never enter sys.modules
            # (a None entry there would break libraries, such as scipy, that look torch up in sys.modules)
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in ("torch", "torchvision", "timm", "safetensors", "onnx"):
                    raise ModuleNotFoundError(f"No module named {{name!r}}")
                return None

        sys.meta_path.insert(0, Uninstalled())
        sys.path.insert(0, {str(ROOT / "SpineStenosisGrader")!r})
        from SpineStenosisGraderLib.cli import main
        code = main(["grade", {str(SAMPLE_CT)!r}, "-o", {str(tmp_path / "out")!r}, "--highest-level", "T12-L1",
                     "--allow-model-mismatch"])
        assert not any(m == "torch" or m.startswith("torch.") for m in sys.modules)
        sys.exit(code)
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads((tmp_path / "out" / "result.json").read_text())
    names = [lv["name"] for lv in result["levels"]]
    assert names[-6:] == ["L5-S1", "L4-L5", "L3-L4", "L2-L3", "L1-L2", "T12-L1"]
    assert all(lv["grade"] for lv in result["levels"] if not lv["name"].startswith("below"))


def _copy_default(tmp_path):
    folder = tmp_path / "package"
    shutil.copytree(DEFAULT_PACKAGE_DIR, folder)
    return folder


def _tiny_onnx(path, input_shape):
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])], "foreign",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, input_shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, input_shape)],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), str(path))


def _resign(folder):
    manifest = json.loads((folder / "manifest.json").read_text())
    write_manifest(folder, manifest)


def test_a_foreign_onnx_graph_is_refused_even_with_a_matching_hash(tmp_path):
    folder = _copy_default(tmp_path)
    _tiny_onnx(folder / "detector.onnx", [2, 2])
    _resign(folder)
    with pytest.raises(ModelPackageError, match="not a detector of this kind"):
        load_package(folder, backend="onnx").detector()


def test_a_classifier_graph_with_the_wrong_classes_is_refused(tmp_path):
    folder = _copy_default(tmp_path)
    _tiny_onnx(folder / "classifier.onnx", ["n", 1, 112, 3])
    _resign(folder)
    with pytest.raises(ModelPackageError, match="gives 3 classes"):
        load_package(folder, backend="onnx").classifier()


def test_a_damaged_onnx_file_is_a_package_error(tmp_path):
    folder = _copy_default(tmp_path)
    (folder / "detector.onnx").write_bytes(b"not a protobuf at all")
    _resign(folder)
    with pytest.raises(ModelPackageError, match="not an ONNX model"):
        load_package(folder, backend="onnx").detector()


def _default_without_onnx(tmp_path):
    """A copy of the embedded package with its ONNX files and their manifest entries removed."""
    folder = _copy_default(tmp_path)
    manifest = json.loads((folder / "manifest.json").read_text())
    for key in ONNX_FILES.values():
        (folder / manifest["files"].pop(key)["path"]).unlink()
    (folder / "manifest.json").write_text(json.dumps(manifest))
    _resign(folder)
    return folder


def test_a_package_without_onnx_files_falls_back_to_torch_or_says_how_to_export(tmp_path):
    folder = _default_without_onnx(tmp_path)
    assert load_package(folder).resolved_backend() == "torch"
    with pytest.raises(ModelPackageError, match="export-onnx"):
        load_package(folder, backend="onnx").detector()


def test_an_unknown_backend_is_refused():
    with pytest.raises(ModelPackageError, match="backend must be one of"):
        load_package(backend="tensorflow")


def _graph_and_weights(path):
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path))
    nodes = [(n.op_type, list(n.input), list(n.output), [a.SerializeToString() for a in n.attribute])
             for n in model.graph.node]
    weights = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    return nodes, weights


def test_export_reproduces_the_shipped_graphs(tmp_path):
    """`spine-stenosis-grader export-onnx` remakes the shipped graphs from the shipped weights.

    On one machine the export is byte for byte repeatable. Across CPUs, torch folds a few
    float32 constants (batch norm into convolutions) with different rounding before they are
    stored, so a float16 weight may differ there by one float16 step and a float32
    one by float32 rounding; the graph itself
    must be the same operator for operator.
    """
    from SpineStenosisGraderLib.cli import main

    folder = _copy_default(tmp_path)
    manifest = json.loads((folder / "manifest.json").read_text())
    for key in ONNX_FILES.values():
        manifest["files"].pop(key)
        (folder / f"{key.split('_')[0]}.onnx").unlink()
    (folder / "manifest.json").write_text(json.dumps(manifest))
    _resign(folder)
    assert main(["export-onnx", str(folder)]) == 0
    first = {name: (folder / f"{name}.onnx").read_bytes() for name in ("detector", "classifier")}
    for name in first:
        shipped_nodes, shipped_weights = _graph_and_weights(DEFAULT_PACKAGE_DIR / f"{name}.onnx")
        nodes, weights = _graph_and_weights(folder / f"{name}.onnx")
        assert nodes == shipped_nodes
        assert weights.keys() == shipped_weights.keys()
        for key, value in weights.items():
            assert value.dtype == shipped_weights[key].dtype and value.shape == shipped_weights[key].shape
            if value.dtype == np.float16:
                step = np.spacing(np.abs(shipped_weights[key]).astype(np.float16)).astype(np.float32)
                assert np.all(np.abs(value.astype(np.float32) - shipped_weights[key].astype(np.float32)) <= step), key
            elif value.dtype == np.float32:
                assert np.allclose(value, shipped_weights[key], rtol=1e-5, atol=1e-7), key
            else:
                assert np.array_equal(value, shipped_weights[key]), key
    # and again on this machine: identical bytes
    for name in first:
        (folder / f"{name}.onnx").unlink()
    manifest = json.loads((folder / "manifest.json").read_text())
    for key in ONNX_FILES.values():
        manifest["files"].pop(key)
    (folder / "manifest.json").write_text(json.dumps(manifest))
    _resign(folder)
    assert main(["export-onnx", str(folder)]) == 0
    assert {name: (folder / f"{name}.onnx").read_bytes() for name in first} == first


def test_the_cli_grades_on_the_chosen_backend_and_says_which(tmp_path):
    from SpineStenosisGraderLib.cli import main

    for backend, runtime in (("torch", "torch"), ("onnx", "onnxruntime")):
        out = tmp_path / backend
        assert main(["grade", str(SAMPLE_MR), "-o", str(out), "--backend", backend, "-q"]) == 0
        assert json.loads((out / "result.json").read_text())["model"]["runtime"].startswith(runtime + " ")


def test_an_export_that_fails_its_check_writes_no_graph_and_says_the_package_still_runs(tmp_path, monkeypatch):
    from SpineStenosisGraderLib.training import export

    folder = _default_without_onnx(tmp_path)
    # a check no graph can pass: torch and ONNX Runtime never agree to better than a negative difference
    monkeypatch.setattr(export, "MAX_BOX_DIFFERENCE_PX", -1.0)
    with pytest.raises(ModelPackageError, match=r"differs from torch.*complete without ONNX files.*--backend torch"):
        export.export_onnx(folder)
    assert not list(folder.glob("*.onnx")) and not [p for p in folder.iterdir() if p.is_dir()]
    assert load_package(folder).resolved_backend() == "torch"
