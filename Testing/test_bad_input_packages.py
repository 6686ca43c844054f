"""Bad model packages: each is refused with one clear line, and an import leaves nothing behind.

Every test guards one check in ``packages/package.py``; with the check switched off the
package loads, or is refused for another reason (and the message test fails).
"""

from __future__ import annotations

import json
import stat
import zipfile
from pathlib import Path

import pytest

from SpineStenosisGraderLib.errors import ModelPackageError
from SpineStenosisGraderLib.packages import package as package_module
from SpineStenosisGraderLib.packages.package import MANIFEST_VERSION, import_package, load_package
from test_package import make_package


def _zip(folder: Path, path: Path, extra: dict[str, bytes] | None = None,
         links: dict[str, str] | None = None) -> Path:
    """``folder`` zipped under ``test-0/``, with extra members, and symbolic links (name -> target) as zip
    tools store them: the target as the data, the link type in the Unix mode."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for file in sorted(folder.iterdir()):
            archive.write(file, "test-0/" + file.name)
        for name, data in (extra or {}).items():
            archive.writestr(name, data)
        for name, target in (links or {}).items():
            info = zipfile.ZipInfo(name)
            info.create_system = 3  # Unix
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            archive.writestr(info, target)
    return path


def _nothing_installed(root: Path) -> bool:
    """No package and no staging folder left under the packages root."""
    return not root.exists() or list(root.iterdir()) == []


def _one_line(error: pytest.ExceptionInfo) -> str:
    text = str(error.value)
    assert "\n" not in text, text
    return text


@pytest.mark.parametrize("version", [MANIFEST_VERSION + 1, 99])
def test_a_package_of_a_newer_manifest_version_is_refused(tmp_path, version):
    folder = make_package(tmp_path / "p")
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["format_version"] = version
    (folder / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ModelPackageError, match=f"manifest version {version}.*newer SpineStenosisGrader") as error:
        load_package(folder)
    assert "update" in _one_line(error).lower()
    with pytest.raises(ModelPackageError, match="newer SpineStenosisGrader"):
        import_package(folder, tmp_path / "models")
    assert _nothing_installed(tmp_path / "models")


def test_this_versions_manifest_loads(tmp_path):
    """The control for the test above."""
    folder = make_package(tmp_path / "p")
    assert json.loads((folder / "manifest.json").read_text())["format_version"] == MANIFEST_VERSION
    assert load_package(folder).name == "test"


@pytest.mark.parametrize("target", ["/etc/passwd", "../../outside.json", "manifest.json"])
def test_a_zip_holding_a_symbolic_link_is_refused(tmp_path, target):
    archive = _zip(make_package(tmp_path / "p"), tmp_path / "package.zip", links={"test-0/extra.json": target})
    with pytest.raises(ModelPackageError, match=r"holds a symbolic link \(test-0/extra.json\): refused") as error:
        import_package(archive, tmp_path / "models")
    _one_line(error)
    assert _nothing_installed(tmp_path / "models")


@pytest.mark.parametrize("name", [
    "../../evil.json",
    "test-0/../../evil.json",
    "..\\..\\evil.json",
    "{tmp_path}/absolute-evil.json",
    "C:/evil.json",
], ids=["dot-dot", "dot-dot-inside", "backslashes", "absolute", "drive"])
def test_a_zip_member_that_leaves_the_folder_is_refused(tmp_path, name):
    name = name.format(tmp_path=tmp_path.as_posix())  # an absolute path where a broken check could do no harm
    archive = _zip(make_package(tmp_path / "p"), tmp_path / "package.zip", extra={name: b"{}"})
    with pytest.raises(ModelPackageError, match="holds a file outside its own folder.*refused") as error:
        import_package(archive, tmp_path / "models" / "inner")
    _one_line(error)
    assert not (tmp_path / "evil.json").exists() and not (tmp_path / "models" / "evil.json").exists()
    assert not (tmp_path / "absolute-evil.json").exists()
    assert _nothing_installed(tmp_path / "models" / "inner")


def test_a_zip_that_unpacks_to_more_than_the_limit_is_refused_while_unpacking(tmp_path, monkeypatch):
    """A few kilobytes of zip that inflate to megabytes (a zip bomb, scaled down with the limit)."""
    monkeypatch.setattr(package_module, "MAX_IMPORT_BYTES", 1024 * 1024)
    archive = _zip(make_package(tmp_path / "p"), tmp_path / "package.zip",
                   extra={"test-0/padding.json": b" " * (3 * 1024 * 1024)})
    assert archive.stat().st_size < 64 * 1024
    with pytest.raises(ModelPackageError, match=r"unpacks to more than 1 MB: not a model package") as error:
        import_package(archive, tmp_path / "models")
    _one_line(error)
    assert _nothing_installed(tmp_path / "models")


def test_a_zip_under_the_limit_imports(tmp_path, monkeypatch):
    """The control for the test above: the same package, without the padding, fits the same limit."""
    monkeypatch.setattr(package_module, "MAX_IMPORT_BYTES", 1024 * 1024)
    archive = _zip(make_package(tmp_path / "p"), tmp_path / "package.zip")
    assert import_package(archive, tmp_path / "models").name == "test"


def test_a_package_folder_whose_weights_link_outside_it_is_refused(tmp_path):
    folder = make_package(tmp_path / "p")
    outside = tmp_path / "elsewhere.safetensors"
    (folder / "detector.safetensors").rename(outside)
    (folder / "detector.safetensors").symlink_to(outside)
    with pytest.raises(ModelPackageError, match="points outside the package"):
        load_package(folder)
    with pytest.raises(ModelPackageError, match="points outside the package"):
        import_package(folder, tmp_path / "models")
    assert _nothing_installed(tmp_path / "models")


def _package_for(tmp_path: Path, **manifest_changes) -> "package_module.ModelPackage":
    package = load_package(make_package(tmp_path / "p"))
    package.manifest = dict(package.manifest, **manifest_changes)
    return package


def test_a_package_for_another_modality_is_refused_unless_overridden(tmp_path):
    package = _package_for(tmp_path, modalities=["CT"], regions=["lumbar"])
    assert package.check_compatible("CT", "lumbar") == []
    assert package.check_compatible("", "") == []  # not known yet: not checked
    with pytest.raises(ModelPackageError, match=r"made for CT studies, not MR: .*likely wrong.* Choose a package "
                                                r"made for such studies, or pass --allow-model-mismatch") as error:
        package.check_compatible("mr", "lumbar", how_to_override="pass --allow-model-mismatch")
    _one_line(error)
    (warning,) = package.check_compatible("MR", "lumbar", allow_mismatch=True)
    assert "not MR" in warning


def test_a_package_for_another_region_is_refused_unless_overridden(tmp_path):
    package = _package_for(tmp_path, modalities=["CT", "MR"], regions=["lumbar"], detects_regions=["lumbar"])
    with pytest.raises(ModelPackageError, match="made for the lumbar spine, not the cervical spine.*override"):
        package.check_compatible("MR", "cervical")
    assert "not the cervical spine" in package.check_compatible("MR", "cervical", allow_mismatch=True)[0]


def test_a_region_the_package_locates_but_does_not_grade_is_a_warning_only(tmp_path):
    package = _package_for(tmp_path, modalities=["CT", "MR"], regions=["lumbar"],
                           detects_regions=["lumbar", "cervical"])
    (warning,) = package.check_compatible("MR", "cervical")
    assert "located but not graded" in warning


def _small_ct(tmp_path: Path) -> Path:
    """A small CT volume file: enough to be read and graded, nothing to find in it."""
    import numpy as np
    import SimpleITK as sitk

    voxels = np.full((8, 64, 64), -1000.0, dtype=np.float32)  # air around a body of soft tissue: CT
    voxels[:, 8:56, 8:56] = np.random.default_rng(0).normal(40.0, 20.0, (8, 48, 48))
    image = sitk.GetImageFromArray(voxels)
    image.SetSpacing((1.0, 1.0, 3.0))
    path = tmp_path / "small_ct.nii.gz"
    sitk.WriteImage(image, str(path))
    return path


def _default_package_made_for(tmp_path: Path, **manifest_changes) -> Path:
    """A copy of the embedded package whose manifest claims other studies."""
    import shutil

    folder = tmp_path / "other"
    shutil.copytree(package_module.DEFAULT_PACKAGE_DIR, folder)
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest.update(manifest_changes)
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return folder


def test_grading_refuses_a_package_for_another_modality_and_says_how_to_override(tmp_path, capsys):
    from SpineStenosisGraderLib.cli import main

    study, package = _small_ct(tmp_path), _default_package_made_for(tmp_path, modalities=["MR"])
    assert main(["grade", str(study), "-o", str(tmp_path / "out"), "--model", str(package), "-q"]) == 2
    error = capsys.readouterr().err
    assert "made for MR studies, not CT" in error and "pass --allow-model-mismatch" in error
    assert not (tmp_path / "out").exists()
    assert main(["grade", str(study), "-o", str(tmp_path / "out"), "--model", str(package), "-q",
                 "--allow-model-mismatch"]) == 0
    result = json.loads((tmp_path / "out" / "result.json").read_text())
    assert any("made for MR studies, not CT" in w for w in result["warnings"])


def test_a_region_the_user_sets_is_checked_but_one_read_from_the_anatomy_never_refuses(tmp_path):
    from SpineStenosisGraderLib.pipeline import grade_file

    study = _small_ct(tmp_path)
    package = load_package(_default_package_made_for(tmp_path, regions=["lumbar"], detects_regions=["lumbar"]))
    with pytest.raises(ModelPackageError, match="not the cervical spine.*--allow-model-mismatch"):
        grade_file(study, package, region="cervical")
    result, _ = grade_file(study, package, region="cervical", allow_model_mismatch=True)
    assert any("not the cervical spine" in w for w in result.warnings)
    result, _ = grade_file(study, package)  # nothing here tells the region: no check, no refusal
    assert result.study.region == "unknown"
