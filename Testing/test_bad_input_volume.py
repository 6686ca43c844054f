"""Bad studies a user may hand the grader: each is refused with one clear line that says what to do.

Every test here guards one check in ``study/volume.py``: switching the check off
makes the study read (wrongly, or by exhausting the memory) or fail with another
message, and the test fail.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Sequence

import numpy as np
import pytest
import SimpleITK as sitk

from SpineStenosisGraderLib.errors import InputError
from SpineStenosisGraderLib.study import volume
from SpineStenosisGraderLib.study.volume import load_stack, to_axial_stack
from test_volume import MRI, write_dicom_series

AXIAL = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)  # DICOM image orientation: rows along L, columns along P
SLICE_MM = 4.0


def _slice_pixels(k: int, shape=(48, 48)) -> np.ndarray:
    """A slice with some structure (a blank stack is refused for being blank)."""
    j, i = np.mgrid[: shape[0], : shape[1]]
    return (100 * np.exp(-((i - 24) ** 2 + (j - 24) ** 2) / 200.0) + k).astype(np.int16)


def write_slices(folder: Path, series_uid: str, orientation: Sequence[float], positions: Sequence[Sequence[float]],
                 first: int = 0) -> None:
    """One DICOM file per position, all of one orientation, in one series (numbered from ``first``)."""
    folder.mkdir(parents=True, exist_ok=True)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    for n, position in enumerate(positions):
        number = first + n
        image = sitk.GetImageFromArray(_slice_pixels(number))
        image.SetSpacing((0.8, 0.8))  # the writer takes the pixel spacing from the image, not the tag
        for tag, value in [
            ("0008|0060", "CT"),
            ("0020|000e", series_uid),
            ("0020|000d", "1.2.826.0.1.3680043.2.1125.1"),
            ("0008|0016", "1.2.840.10008.5.1.4.1.1.2"),
            ("0008|0018", f"{series_uid}.{number + 1}"),
            ("0020|0037", "\\".join(f"{v:.6f}" for v in orientation)),
            ("0020|0032", "\\".join(f"{v:.6f}" for v in position)),
            ("0020|0013", str(number + 1)),
            ("0028|0030", "0.800000\\0.800000"),
            ("0018|0050", f"{SLICE_MM:.6f}"),
        ]:
            image.SetMetaData(tag, value)
        writer.SetFileName(str(folder / f"{number:04d}.dcm"))
        writer.Execute(image)


def _axial_positions(n: int, start: float = 0.0, sideways_mm: float = 0.0) -> list[tuple[float, float, float]]:
    """Slice origins ``SLICE_MM`` apart along S, each ``sideways_mm`` further along P than the one before."""
    return [(0.0, k * sideways_mm, start + k * SLICE_MM) for k in range(n)]


def _tilted_about_l(degrees: float) -> tuple[float, ...]:
    """Image orientation of slices tilted about the L axis (an angled lumbar MR slab)."""
    a = math.radians(degrees)
    return (1.0, 0.0, 0.0, 0.0, math.cos(a), math.sin(a))


def _one_line(error: pytest.ExceptionInfo) -> str:
    text = str(error.value)
    assert "\n" not in text and text.endswith("."), text
    return text


# --------------------------------------------------------------------------- awkward DICOM


@pytest.fixture(scope="module")
def two_stacks(tmp_path_factory) -> Path:
    """One series of two stacks at different angles: 24 axial slices, then 20 slices tilted 15 degrees."""
    folder = tmp_path_factory.mktemp("stacks")
    write_slices(folder, "1.2.826.0.1.3680043.2.1125.21", AXIAL, _axial_positions(24))
    normal = np.cross(_tilted_about_l(15)[:3], _tilted_about_l(15)[3:])
    tilted = [tuple(np.array([0.0, -20.0, 200.0]) + k * SLICE_MM * normal) for k in range(20)]
    write_slices(folder, "1.2.826.0.1.3680043.2.1125.21", _tilted_about_l(15), tilted, first=24)
    return folder


def test_a_series_of_several_oblique_stacks_asks_for_one(two_stacks):
    with pytest.raises(InputError, match=r"holds 2 stacks with different slice angles .*Choose one with --stack N"
                       ) as error:
        load_stack(two_stacks)
    text = _one_line(error)
    assert "24 slices" in text and "20 slices" in text


def test_stack_picks_each_oblique_stack_with_its_own_geometry(two_stacks):
    stacks = sorted((load_stack(two_stacks, stack=n) for n in (0, 1)), key=lambda s: s.n_slices)
    assert [s.n_slices for s in stacks] == [20, 24]
    assert stacks[0].tilt_deg() == pytest.approx(15.0, abs=0.01)
    assert stacks[1].tilt_deg() == pytest.approx(0.0, abs=0.01)
    assert stacks[0].spacing[2] == pytest.approx(SLICE_MM, abs=1e-3)
    # the tilted stack's first voxel is where its lowest slice says
    assert np.allclose(stacks[0].index_to_lps(np.zeros(3))[0], [0.0, -20.0, 200.0], atol=1e-3)
    with pytest.raises(InputError, match="--stack must be between 0 and 1"):
        load_stack(two_stacks, stack=2)


def test_repeated_slice_positions_are_refused(tmp_path):
    positions = _axial_positions(20)
    write_slices(tmp_path, "1.2.826.0.1.3680043.2.1125.22", AXIAL, positions)
    # a second echo (or a copy) of slice 7 at the same place, as another instance of the series
    write_slices(tmp_path, "1.2.826.0.1.3680043.2.1125.22", AXIAL, [positions[7]], first=20)
    with pytest.raises(InputError, match="share one position") as error:
        load_stack(tmp_path)
    assert "one slice per position" in _one_line(error)


def test_gantry_tilt_is_refused(tmp_path):
    # axial slices, each 1.1 mm further back than the one below: a CT gantry tilted about 15 degrees
    write_slices(tmp_path, "1.2.826.0.1.3680043.2.1125.23", AXIAL, _axial_positions(20, sideways_mm=1.1))
    with pytest.raises(InputError, match="gantry tilt") as error:
        load_stack(tmp_path)
    assert "Resample" in _one_line(error)


def test_an_untilted_series_written_the_same_way_reads(tmp_path):
    """The control for the three tests above: the helper's series read when nothing is wrong."""
    write_slices(tmp_path, "1.2.826.0.1.3680043.2.1125.24", AXIAL, _axial_positions(20))
    stack = load_stack(tmp_path)
    assert stack.n_slices == 20 and stack.spacing == pytest.approx((0.8, 0.8, SLICE_MM), abs=1e-4)


@pytest.mark.parametrize("damaged", ["0000.dcm", "0010.dcm", "0051.dcm"], ids=["first", "middle", "last"])
@pytest.mark.parametrize("keep", [0.5, 0.999])
def test_a_truncated_dicom_file_is_named(tmp_path, damaged, keep):
    """GDCM leaves a damaged file out of its series without a word: a first or last slice would just be gone."""
    reference = to_axial_stack(sitk.ReadImage(str(MRI)))
    assert reference.n_slices == 52
    write_dicom_series(reference.image, tmp_path, "1.2.826.0.1.3680043.2.1125.25")
    path = tmp_path / damaged
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(InputError, match=f"^{damaged} in .* is a damaged or truncated DICOM file") as error:
        load_stack(tmp_path)
    assert "export the series again" in _one_line(error)


def test_files_beside_a_series_that_are_not_dicom_are_no_concern(tmp_path):
    write_slices(tmp_path, "1.2.826.0.1.3680043.2.1125.26", AXIAL, _axial_positions(20))
    (tmp_path / "notes.txt").write_text("report to follow")
    (tmp_path / "DICOMDIR").write_bytes(b"\0" * 128 + b"DICM" + b"\0" * 16)
    assert load_stack(tmp_path).n_slices == 20


# --------------------------------------------------------------------------- wrong shapes and geometry


def test_a_thick_coronal_series_is_refused():
    # j runs front to back at 4 mm: coronal slices; read as axial, the pixels would be 0.5 x 4 mm
    image = sitk.GaussianSource(sitk.sitkFloat32, (256, 24, 256), sigma=(20, 20, 20), mean=(128, 12, 128))
    image.SetSpacing((0.5, 4.0, 0.5))
    with pytest.raises(InputError, match="sagittal or coronal series") as error:
        to_axial_stack(image)
    assert "Load the axial series" in _one_line(error)


@pytest.mark.parametrize("direction", [
    (1, 0, 0, 0.3, 1, 0, 0, 0, 1),  # sheared 17 degrees
    (1, 0, 0, 0, 1, 0, 0, 0, 2),  # an axis of length 2: the spacing would be wrong
], ids=["sheared", "scaled"])
def test_a_direction_matrix_that_is_not_a_rotation_is_refused(direction):
    image = sitk.GaussianSource(sitk.sitkFloat32, (64, 64, 30), sigma=(10, 10, 10), mean=(32, 32, 15))
    image.SetDirection(tuple(float(v) for v in direction))
    with pytest.raises(InputError, match="axes are not perpendicular") as error:
        to_axial_stack(image)
    assert "Resample" in _one_line(error)


def test_a_direction_rounded_as_dicom_writes_it_is_accepted():
    image = sitk.GaussianSource(sitk.sitkFloat32, (64, 64, 30), sigma=(10, 10, 10), mean=(32, 32, 15))
    a = math.radians(12)
    rotation = np.array([[1, 0, 0], [0, math.cos(a), -math.sin(a)], [0, math.sin(a), math.cos(a)]])
    image.SetDirection(tuple(float(v) for v in np.round(rotation, 5).reshape(-1)))
    assert to_axial_stack(image).tilt_deg() == pytest.approx(12.0, abs=0.01)


# --------------------------------------------------------------------------- too big


def _huge_metaimage(tmp_path: Path) -> Path:
    """A MetaImage header that announces 50000^3 bytes (125 TB) over a few bytes of data."""
    (tmp_path / "huge.raw").write_bytes(b"\0" * 64)
    header = tmp_path / "huge.mhd"
    header.write_text("ObjectType = Image\nNDims = 3\nDimSize = 50000 50000 50000\nElementSpacing = 1 1 1\n"
                      "ElementType = MET_UCHAR\nElementDataFile = huge.raw\n")
    return header


def _huge_nifti(tmp_path: Path) -> Path:
    """A NIfTI-1 file whose header announces 30000 x 30000 x 30000 int16 voxels, with none after it."""
    header = bytearray(352)
    header[0:4] = (348).to_bytes(4, "little")
    header[40:56] = np.array([3, 30000, 30000, 30000, 1, 1, 1, 1], "<i2").tobytes()
    header[70:72] = (4).to_bytes(2, "little")  # DT_INT16
    header[72:74] = (16).to_bytes(2, "little")
    header[76:108] = np.array([1, 1, 1, 1, 1, 1, 1, 1], "<f4").tobytes()
    header[108:112] = np.array([352], "<f4").tobytes()
    header[344:348] = b"n+1\0"
    path = tmp_path / "huge.nii"
    path.write_bytes(bytes(header))
    return path


@pytest.mark.parametrize("make", [_huge_metaimage, _huge_nifti], ids=["metaimage", "nifti"])
def test_a_volume_too_big_to_grade_is_refused_from_its_header(tmp_path, make):
    path = make(tmp_path)
    start = time.perf_counter()
    with pytest.raises(InputError, match=r"voxels \(\d+ million\): too big to grade") as error:
        load_stack(path)
    assert time.perf_counter() - start < 2.0
    assert "Crop Volume" in _one_line(error)


def test_a_dicom_series_too_big_to_grade_is_refused_before_its_voxels_are_read(tmp_path, monkeypatch):
    write_slices(tmp_path, "1.2.826.0.1.3680043.2.1125.27", AXIAL, _axial_positions(20))
    monkeypatch.setattr(volume, "MAX_VOXELS", 48 * 48 * 19)

    def no_reading(self):
        raise AssertionError("the voxels were read")

    monkeypatch.setattr(sitk.ImageSeriesReader, "Execute", no_reading)
    with pytest.raises(InputError, match=r"48 x 48 x 20 voxels .*too big to grade"):
        load_stack(tmp_path)


def test_an_image_from_slicer_too_big_to_grade_is_refused(monkeypatch):
    image = sitk.GaussianSource(sitk.sitkFloat32, (64, 64, 30), sigma=(10, 10, 10), mean=(32, 32, 15))
    monkeypatch.setattr(volume, "MAX_VOXELS", 64 * 64 * 29)
    with pytest.raises(InputError, match="too big to grade"):
        to_axial_stack(image)
    monkeypatch.setattr(volume, "MAX_VOXELS", 64 * 64 * 30)
    assert to_axial_stack(image).n_slices == 30
