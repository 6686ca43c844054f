"""Model packages are verified before use: ours, complete, unchanged, and never pickled."""

import json
import shlex

import pytest

from SpineStenosisGraderLib.errors import ModelPackageError
from SpineStenosisGraderLib.training.kernels import PORTABLE_KERNELS
from SpineStenosisGraderLib.packages.package import (
    DEFAULT_PACKAGE_DIR,
    load_default_package,
    load_package,
    sha256_file,
    write_manifest,
)


def make_package(folder, files=None):
    folder.mkdir(parents=True, exist_ok=True)
    files = files or {"detector": "detector.safetensors", "classifier": "classifier.safetensors"}
    for name in files.values():
        (folder / name).write_bytes(b"weights of " + name.encode())
    write_manifest(folder, {
        "name": "test", "version": "0", "task": "test",
        "classifier": {"scale": "schizas"}, "detector": {},
        "files": {key: {"path": name} for key, name in files.items()},
    })
    return folder


def test_a_well_formed_package_loads(tmp_path):
    package = load_package(make_package(tmp_path / "p"))
    assert package.name == "test"
    assert package.scale.names == ["A", "B", "C", "D"]


def test_changed_weights_are_refused(tmp_path):
    folder = make_package(tmp_path / "p")
    (folder / "classifier.safetensors").write_bytes(b"something else")
    with pytest.raises(ModelPackageError, match="SHA256"):
        load_package(folder)


def test_missing_file_is_refused(tmp_path):
    folder = make_package(tmp_path / "p")
    (folder / "detector.safetensors").unlink()
    with pytest.raises(ModelPackageError, match="missing"):
        load_package(folder)


def test_pickle_files_are_refused_even_with_a_matching_hash(tmp_path):
    folder = make_package(tmp_path / "p", {"detector": "detector.pt", "classifier": "classifier.safetensors"})
    with pytest.raises(ModelPackageError, match="only safetensors"):
        load_package(folder)


def test_paths_outside_the_package_are_refused(tmp_path):
    (tmp_path / "outside.safetensors").write_bytes(b"x")
    folder = make_package(tmp_path / "p")
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["files"]["detector"] = {"path": "../outside.safetensors", "sha256": sha256_file(tmp_path / "outside.safetensors")}
    (folder / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ModelPackageError, match="outside"):
        load_package(folder)


@pytest.mark.parametrize("content", ["not json {", json.dumps({"name": "other tool"}), json.dumps([1, 2])])
def test_foreign_manifests_are_refused(tmp_path, content):
    (tmp_path / "manifest.json").write_text(content)
    with pytest.raises(ModelPackageError):
        load_package(tmp_path)


def test_a_folder_without_manifest_is_refused(tmp_path):
    with pytest.raises(ModelPackageError, match="no manifest"):
        load_package(tmp_path)


def test_the_default_package_is_honest_about_its_data():
    package = load_default_package()
    manifest = package.manifest
    assert package.path == DEFAULT_PACKAGE_DIR
    assert "not for clinical use" in manifest["intended_use"].lower()
    assert "phantom" in manifest["training_data"]["summary"]
    for key in ("task", "classifier", "detector", "normalisation", "licence", "metrics"):
        assert manifest[key]
    assert manifest["detector"]["spacing_mm"] > 0
    assert set(manifest["classifier"]["classes"]) == {"A", "B", "C", "D"}
    # safetensors (the weights of record) plus the ONNX graphs of the light runtime, both float16 on disk
    size = sum(entry["bytes"] for entry in manifest["files"].values())
    assert size <= 32 * 1024 * 1024
    assert "not for clinical use" in package.summary().lower()
    # made by the repository's own command, at a recorded commit, with kernels any x86-64 CPU reproduces
    training = manifest["training_data"]
    command = shlex.split(training["command"])
    # the defaults, written wherever --out said
    assert command[:2] == ["spine-stenosis-grader", "train"]
    assert len(command) == 2 or (len(command) == 4 and command[2] == "--out")
    assert len(training["code"]["commit"]) == 40 and training["code"]["dirty"] is False
    assert training["portable_kernels"] is True
    assert training["machine"]["kernel_settings"].items() >= PORTABLE_KERNELS.items()


@pytest.mark.parametrize("damage", [
    lambda m: m["files"]["detector"].pop("sha256"),
    lambda m: m.update(format_version="two"),
    lambda m: m["classifier"].update(scale="unknown-scale"),
    lambda m: m.pop("detector"),
    lambda m: m.update(grade_scope={"max_pixel_mm": 1.5}),
    lambda m: m.update(grade_scope={"modalities": ["MR"], "max_pixel_mm": "fine"}),
    lambda m: m.update(grade_scope=["MR"]),
])
def test_damaged_manifests_are_package_errors(tmp_path, damage):
    folder = make_package(tmp_path / "p")
    manifest = json.loads((folder / "manifest.json").read_text())
    damage(manifest)
    (folder / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ModelPackageError):
        load_package(folder)


def test_weights_that_do_not_fit_the_manifest_are_a_package_error(tmp_path):
    import shutil

    pytest.importorskip("torch", reason="the torch backend reads the weights into its networks")

    folder = tmp_path / "p"
    shutil.copytree(DEFAULT_PACKAGE_DIR, folder)
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["detector"]["fpn_channels"] = 32
    (folder / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ModelPackageError, match="do not fit"):
        load_package(folder).torch_detector()


def _scoped_package(tmp_path, scope):
    folder = make_package(tmp_path / "p")
    manifest = json.loads((folder / "manifest.json").read_text())
    if scope is not None:
        manifest["grade_scope"] = scope
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return load_package(folder)


def test_a_package_shows_its_grade_only_within_its_grade_scope(tmp_path):
    package = _scoped_package(tmp_path, {"modalities": ["MR"], "max_pixel_mm": 1.5, "why": "checked on T2 only"})
    assert package.grade_scope_problem("MR", (0.7, 0.7)) is None
    assert package.grade_scope_problem("mr", (1.5, 1.5)) is None  # the coarsest pixel checked is in
    ct = package.grade_scope_problem("CT", (0.7, 0.7))
    assert "MR studies only, not CT" in ct and "(checked on T2 only)" in ct
    # the coarser axis counts: an axial reformat of 4 mm sagittal slices has 0.6 x 4 mm pixels
    coarse = package.grade_scope_problem("MR", (0.6, 4.0))
    assert coarse is not None and "4 mm" in coarse and "1.5 mm" in coarse
    assert package.grade_scope_problem("MR", (1.6, 1.0)) is not None
    # before the study is read as axial slices its pixel is unknown: only the modality is checked
    assert package.grade_scope_problem("MR", None) is None
    assert "not CT" in package.grade_scope_problem("CT", None)


def test_a_package_without_a_grade_scope_grades_everything_it_locates(tmp_path):
    package = _scoped_package(tmp_path, None)
    assert package.grade_scope_problem("CT", (3.0, 3.0)) is None
    assert package.grade_scope_problem("MR", (5.0, 5.0)) is None
    no_pixel_limit = _scoped_package(tmp_path / "b", {"modalities": ["CT", "MR"]})
    assert no_pixel_limit.grade_scope_problem("CT", (3.0, 3.0)) is None


def test_the_default_package_shows_its_grade_on_fine_mr_only():
    """Its grade learned from phantoms called 6 of 8 levels of real CT without stenosis stenosed."""
    package = load_default_package()
    scope = package.manifest["grade_scope"]
    assert scope["modalities"] == ["MR"] and scope["max_pixel_mm"] == 1.5 and "phantoms" in scope["why"]
    # the Slicer panel shows the summary: it says so before anything is graded
    assert "Grades shown on MR studies with pixels up to 1.5 mm only" in package.summary()
