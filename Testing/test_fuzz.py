"""Fuzzing the readers and the manifest parser: damaged input gives our own error, never a traceback.

Hypothesis damages a valid study file and a valid manifest (truncations, flipped
bytes, random bytes, wrong JSON types) for a bounded number of examples; whatever
comes out must be a result or an ``InputError`` / ``ModelPackageError``, the
errors the command line and the Slicer module turn into one line for the user.
"""

from __future__ import annotations

import copy
import gzip
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import SimpleITK as sitk
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from SpineStenosisGraderLib.errors import InputError, ModelPackageError
from SpineStenosisGraderLib.packages.installed_packages import installed_packages, manifest_facts
from SpineStenosisGraderLib.packages.package import load_package
from SpineStenosisGraderLib.study.volume import AxialStack, load_stack
from test_package import make_package

#: examples per test: with the default, every test here takes a few seconds and draws the same examples
#: on every run (no flaky CI); set SSG_FUZZ_EXAMPLES (e.g. 2000) for a longer run with fresh random examples
_EXAMPLES = os.environ.get("SSG_FUZZ_EXAMPLES")
FUZZ = settings(max_examples=int(_EXAMPLES or 80), deadline=None, derandomize=_EXAMPLES is None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


def _small_nifti() -> bytes:
    """A valid, small, uncompressed NIfTI-1 study: 24 x 20 x 18 voxels, an oblique 1 x 1 x 3 mm grid."""
    k, j, i = np.mgrid[:18, :20, :24]
    image = sitk.GetImageFromArray((100 * np.sin(i / 3.0) * np.cos(j / 4.0) + 10 * k).astype(np.int16))
    image.SetSpacing((1.0, 1.0, 3.0))
    image.SetOrigin((-12.0, 30.0, 400.0))
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "study.nii"
        sitk.WriteImage(image, str(path))
        return path.read_bytes()


NIFTI = _small_nifti()
NIFTI_GZ = gzip.compress(NIFTI, mtime=0)


def _read(data: bytes, suffix: str) -> None:
    """Read ``data`` as a study file: it must give a stack or an InputError."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / f"study{suffix}"
        path.write_bytes(data)
        try:
            stack = load_stack(path)
        except InputError as error:
            assert str(error) and "\n" not in str(error).strip()
            return
        assert isinstance(stack, AxialStack) and np.all(np.isfinite(stack.array))


def _damage(data: bytes, flips: list[tuple[int, int]], cut: int | None) -> bytes:
    damaged = bytearray(data)
    for position, value in flips:
        damaged[position % len(damaged)] = value
    return bytes(damaged[:cut] if cut is not None else damaged)


def test_the_fuzzed_study_reads_when_undamaged():
    """The control: the files the fuzzing damages are good studies."""
    for data, suffix in ((NIFTI, ".nii"), (NIFTI_GZ, ".nii.gz")):
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / f"study{suffix}"
            path.write_bytes(data)
            assert load_stack(path).n_slices == 18


flips = st.lists(st.tuples(st.integers(0, 10 ** 6), st.integers(0, 255)), max_size=8)


@FUZZ
@given(flips=flips, cut=st.none() | st.integers(0, len(NIFTI_GZ)))
def test_a_damaged_or_cut_nii_gz_gives_an_input_error(flips, cut):
    _read(_damage(NIFTI_GZ, flips, cut), ".nii.gz")


# the header (348 bytes) is where damage reaches the most code: the size, type, spacing and orientation
header_flips = st.lists(st.tuples(st.integers(0, 351), st.integers(0, 255)), min_size=1, max_size=6)


@FUZZ
@given(flips=header_flips, cut=st.none() | st.integers(0, len(NIFTI)), gzipped=st.booleans())
def test_a_damaged_nifti_header_gives_an_input_error(flips, cut, gzipped):
    data = _damage(NIFTI, flips, cut)
    _read(gzip.compress(data, mtime=0) if gzipped else data, ".nii.gz" if gzipped else ".nii")


@FUZZ
@given(data=st.binary(max_size=2048), suffix=st.sampled_from([".nii.gz", ".nii", ".nrrd", ".mha"]))
def test_random_bytes_named_as_a_study_give_an_input_error(data, suffix):
    _read(data, suffix)


# --------------------------------------------------------------------------- manifests

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2, 10 ** 12) | st.floats(allow_nan=False) | st.text(max_size=12),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)


@pytest.fixture(scope="module")
def valid_package(tmp_path_factory) -> tuple[Path, dict[str, Any]]:
    folder = make_package(tmp_path_factory.mktemp("fuzz") / "package")
    return folder, json.loads((folder / "manifest.json").read_text())


def _paths(value: Any, prefix: tuple = ()) -> list[tuple]:
    """Every key path in a JSON value (dict keys and list indices)."""
    found = [prefix] if prefix else []
    if isinstance(value, dict):
        for key, child in value.items():
            found += _paths(child, prefix + (key,))
    elif isinstance(value, list):
        for index, child in enumerate(value):
            found += _paths(child, prefix + (index,))
    return found


def _load(folder: Path, text: str) -> None:
    """Load a package whose manifest is ``text``: a package or a ModelPackageError, and its facts as strings."""
    (folder / "manifest.json").write_text(text, encoding="utf-8", errors="surrogatepass")
    try:
        load_package(folder)
    except ModelPackageError as error:
        assert str(error)
    try:
        manifest = json.loads(text)
    except ValueError:
        return
    if isinstance(manifest, dict):
        assert all(isinstance(v, str) for v in manifest_facts(manifest).values())


@FUZZ
@given(data=st.data())
def test_a_manifest_with_any_value_changed_or_removed_gives_a_package_error(valid_package, tmp_path_factory, data):
    source, manifest = valid_package
    damaged = copy.deepcopy(manifest)
    for _ in range(data.draw(st.integers(1, 3))):
        paths = _paths(damaged)
        if not paths:
            break
        path = data.draw(st.sampled_from(paths))
        parent = damaged
        for key in path[:-1]:
            parent = parent[key]
        if data.draw(st.booleans()) and isinstance(parent, dict):
            del parent[path[-1]]
        else:
            parent[path[-1]] = data.draw(json_values)
    folder = tmp_path_factory.mktemp("package")
    for file in source.iterdir():
        (folder / file.name).write_bytes(file.read_bytes())
    _load(folder, json.dumps(damaged))


@FUZZ
@given(text=st.text(max_size=300) | json_values.map(json.dumps))
def test_any_text_as_a_manifest_gives_a_package_error(tmp_path_factory, text):
    folder = tmp_path_factory.mktemp("package")
    _load(folder, text)


@FUZZ
@given(raw=st.binary(max_size=300))
def test_any_bytes_as_a_manifest_give_a_package_error_and_the_list_still_shows_it(tmp_path_factory, raw):
    root = tmp_path_factory.mktemp("packages")
    (root / "broken").mkdir()
    (root / "broken" / "manifest.json").write_bytes(raw)
    try:
        load_package(root / "broken")
    except ModelPackageError:
        pass
    listed = installed_packages(root)
    assert [p.path.name for p in listed[1:]] == ["broken"]
