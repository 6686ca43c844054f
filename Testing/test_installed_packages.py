"""The packages a user can choose from: the default, imported ones, and damaged ones listed with the reason."""

import json
import shutil

from SpineStenosisGraderLib.packages.installed_packages import installed_packages, manifest_facts, package_tasks
from SpineStenosisGraderLib.packages.package import DEFAULT_PACKAGE_DIR, load_default_package


def _copy_default(root, name, version):
    folder = root / name
    shutil.copytree(DEFAULT_PACKAGE_DIR, folder)
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest.update(name=name, version=version)
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return folder


def test_without_imported_packages_only_the_default_is_listed(tmp_path):
    for root in (None, tmp_path / "never-made", tmp_path):
        packages = installed_packages(root)
        assert len(packages) == 1
        assert packages[0].is_default and packages[0].usable
        assert packages[0].label == f"{packages[0].package.name} {packages[0].package.version}"


def test_imported_packages_follow_the_default_and_damaged_ones_say_why(tmp_path):
    _copy_default(tmp_path, "zeta", "2.0")
    _copy_default(tmp_path, "alpha", "1.0")
    damaged = _copy_default(tmp_path, "broken", "1.0")
    data = bytearray((damaged / "classifier.safetensors").read_bytes())
    data[-1] ^= 0xFF
    (damaged / "classifier.safetensors").write_bytes(bytes(data))
    (tmp_path / "notes").mkdir()  # a folder without a manifest is not a package
    _copy_default(tmp_path, ".import-0123", "3.0")  # an import still being checked
    (tmp_path / "readme.txt").write_text("not a package")

    packages = installed_packages(tmp_path)
    assert [p.label for p in packages] == [packages[0].label, "alpha 1.0", "zeta 2.0", "broken"]
    assert [p.is_default for p in packages] == [True, False, False, False]
    broken = packages[-1]
    assert not broken.usable and "SHA256" in broken.error and broken.path == damaged


def test_tasks_name_the_graded_task_and_its_scale():
    assert package_tasks(load_default_package()) == [
        ("lumbar_central_canal", "Lumbar central canal stenosis (Schizas)")]


def test_manifest_facts_of_the_default_package():
    facts = manifest_facts(load_default_package().manifest)
    assert facts["modalities"] == "CT, MR" and facts["regions"] == "lumbar"
    assert facts["grade_shown_on"] == "MR studies, pixels up to 1.5 mm"
    assert facts["scale"] == "Lumbar central canal stenosis (Schizas)"
    assert facts["licence"] == "Apache-2.0"
    assert "phantom" in facts["training_data"]
    assert "not for clinical use" in facts["intended_use"].lower()


def test_manifest_facts_never_leave_the_intended_use_empty():
    facts = manifest_facts({"name": "x", "classifier": {"scale": "nope"}, "training_data": "some scans",
                            "modalities": []})
    assert facts["intended_use"] == "Not for clinical use"
    assert facts["modalities"] == "unknown" and facts["licence"] == "unknown" and facts["scale"] == "nope"
    assert facts["training_data"] == "some scans"
    assert facts["grade_shown_on"] == "every study it locates"
