"""Reading and geometry: a box found on a scan must sit on the same anatomy in LPS
whatever the file's axis order, flips, spacing or slice order."""

import gzip
import re
import struct
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import DATA
from SpineStenosisGraderLib.training.annotations import canal_boxes
from SpineStenosisGraderLib.errors import InputError
from SpineStenosisGraderLib.study.volume import AxialStack, load_stack, resample_like, to_axial_stack

MRI = DATA / "tptbox" / "sample_mri" / "sub-mri_label-6_T2w.nii.gz"
MRI_LABELS = DATA / "tptbox" / "sample_mri" / "sub-mri_seg-subreg_label-6_msk.nii.gz"


def reindex(image: sitk.Image, order: tuple[int, int, int], flips: tuple[bool, bool, bool]) -> sitk.Image:
    """The same physical image stored with its axes permuted and flipped (geometry adjusted)."""
    array = sitk.GetArrayFromImage(image)  # [k, j, i]
    spacing = np.array(image.GetSpacing())
    direction = np.array(image.GetDirection()).reshape(3, 3)
    origin = np.array(image.GetOrigin())
    size = np.array(image.GetSize())
    # flip index axes: new index = size - 1 - old; origin moves to the old last voxel
    for axis, flip in enumerate(flips):
        if flip:
            origin = origin + direction[:, axis] * spacing[axis] * (size[axis] - 1)
            direction[:, axis] = -direction[:, axis]
            array = np.flip(array, axis=2 - axis)
    # permute index axes: new axis n is old axis order[n]
    array = np.transpose(array, [2 - order[2 - n] for n in range(3)])
    out = sitk.GetImageFromArray(np.ascontiguousarray(array))
    out.SetSpacing(tuple(float(spacing[o]) for o in order))
    out.SetDirection(tuple(direction[:, list(order)].reshape(-1)))
    out.SetOrigin(tuple(origin))
    return out


def lps_boxes(image: sitk.Image, labels: sitk.Image) -> dict[int, np.ndarray]:
    """Canal box per slice in LPS (centre, size), keyed by the slice's rounded S coordinate."""
    stack = to_axial_stack(image)
    mask = sitk.GetArrayFromImage(resample_like(labels, stack))
    out = {}
    for k, box in canal_boxes(np.isin(mask, [60, 61])).items():
        b = stack.slice_box(k, box)
        out[round(b.center[2], 3)] = np.concatenate([b.center, b.size])
    return out


@pytest.fixture(scope="module")
def mri():
    return sitk.ReadImage(str(MRI)), sitk.ReadImage(str(MRI_LABELS))


def test_stack_is_lps_with_inferior_first(mri):
    stack = to_axial_stack(mri[0])
    assert np.allclose(stack.direction, np.eye(3), atol=1e-6)
    z = stack.index_to_lps(np.array([[0, 0, 0], [0, 0, stack.n_slices - 1]]))[:, 2]
    assert z[1] > z[0]


def test_index_and_lps_are_inverse(mri):
    stack = to_axial_stack(mri[0])
    points = np.random.default_rng(0).uniform(0, 40, size=(20, 3))
    assert np.allclose(stack.lps_to_index(stack.index_to_lps(points)), points)
    # and agrees with ITK itself
    for p in points[:3]:
        assert np.allclose(stack.index_to_lps(p)[0], stack.image.TransformContinuousIndexToPhysicalPoint(tuple(p)))


def test_slice_box_round_trip(mri):
    stack = to_axial_stack(mri[0])
    box = stack.slice_box(10, (3.0, 5.0, 20.5, 17.0))
    k, ij = stack.box_to_slice(box)
    assert k == pytest.approx(10)
    assert np.allclose(ij, (3.0, 5.0, 20.5, 17.0))


@settings(max_examples=12, deadline=None)
@given(order=st.permutations([0, 1, 2]), flips=st.tuples(st.booleans(), st.booleans(), st.booleans()))
def test_lps_boxes_do_not_move_when_axes_are_permuted_or_flipped(mri, order, flips):
    image, labels = mri
    reference = lps_boxes(image, labels)
    moved = lps_boxes(reindex(image, tuple(order), flips), reindex(labels, tuple(order), flips))
    assert reference.keys() == moved.keys()
    for z, ref in reference.items():
        assert np.allclose(moved[z], ref, atol=1e-3), (z, ref, moved[z])


@settings(max_examples=6, deadline=None)
@given(factor=st.sampled_from([0.5, 0.75, 1.5, 2.0]))
def test_lps_boxes_stay_put_when_resampled_in_plane(mri, factor):
    image, labels = mri
    reference = to_axial_stack(image)
    spacing = list(reference.spacing)
    spacing[0] *= factor
    spacing[1] *= factor
    size = [int(round(reference.image.GetSize()[n] * reference.spacing[n] / spacing[n])) for n in range(3)]
    resampled = sitk.Resample(reference.image, size, sitk.Transform(), sitk.sitkLinear, reference.origin,
                              spacing, reference.image.GetDirection())
    ref_boxes = lps_boxes(image, labels)
    new_boxes = lps_boxes(resampled, labels)
    common = sorted(set(ref_boxes) & set(new_boxes))
    assert len(common) > 20
    for z in common:
        # the mask is re-gridded, so box edges may move by up to one coarse pixel each side
        tolerance = max(spacing[0], reference.spacing[0]) * 1.01
        assert np.all(np.abs(new_boxes[z][:2] - ref_boxes[z][:2]) <= tolerance)
        assert np.all(np.abs(new_boxes[z][3:5] - ref_boxes[z][3:5]) <= 2 * tolerance)


@pytest.mark.parametrize("suffix", [".nii.gz", ".nrrd", ".mha"])
def test_every_volume_format_reads_to_the_same_stack(mri, tmp_path, suffix):
    path = tmp_path / f"study{suffix}"
    sitk.WriteImage(mri[0], str(path))
    stack = load_stack(path)
    reference = to_axial_stack(mri[0])
    assert np.allclose(stack.array, reference.array)
    assert np.allclose(stack.origin, reference.origin, atol=1e-4)
    assert np.allclose(stack.direction, reference.direction, atol=1e-6)


def write_dicom_series(image: sitk.Image, folder: Path, series_uid: str, modality: str = "MR",
                       reverse_names: bool = False) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    image = sitk.Cast(image, sitk.sitkInt16)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    direction = image.GetDirection()
    n = image.GetSize()[2]
    for k in range(n):
        sl = image[:, :, k]
        for tag, value in [
            ("0008|0060", modality),
            ("0020|000e", series_uid),
            ("0020|000d", "1.2.826.0.1.3680043.2.1125.1"),
            ("0008|0016", "1.2.840.10008.5.1.4.1.1.4"),
            ("0008|0018", f"{series_uid}.{k + 1}"),
            ("0020|0037", "\\".join(f"{v:.6f}" for v in (direction[0], direction[3], direction[6],
                                                        direction[1], direction[4], direction[7]))),
            ("0020|0032", "\\".join(f"{v:.6f}" for v in image.TransformIndexToPhysicalPoint((0, 0, k)))),
            ("0020|0013", str(k + 1)),
            ("0028|0030", f"{image.GetSpacing()[1]:.6f}\\{image.GetSpacing()[0]:.6f}"),
            ("0018|0050", f"{image.GetSpacing()[2]:.6f}"),
        ]:
            sl.SetMetaData(tag, value)
        name = f"{(n - k) if reverse_names else k:04d}.dcm"
        writer.SetFileName(str(folder / name))
        writer.Execute(sl)


def test_dicom_series_reads_with_geometry_whatever_the_file_order(mri, tmp_path):
    reference = to_axial_stack(mri[0])
    write_dicom_series(reference.image, tmp_path / "a", "1.2.826.0.1.3680043.2.1125.7", reverse_names=True)
    stack = load_stack(tmp_path / "a")
    assert stack.dicom_modality == "MR"
    assert stack.array.shape == reference.array.shape
    assert np.allclose(stack.origin, reference.origin, atol=1e-3)
    assert np.allclose(stack.spacing, reference.spacing, atol=1e-3)
    assert np.allclose(stack.array, np.round(reference.array), atol=1.0)


def test_mixed_dicom_folder_names_the_series(mri, tmp_path):
    reference = to_axial_stack(mri[0])
    write_dicom_series(reference.image, tmp_path / "mixed", "1.2.826.0.1.3680043.2.1125.7")
    write_dicom_series(reference.image[:, :, :20], tmp_path / "mixed", "1.2.826.0.1.3680043.2.1125.8")
    with pytest.raises(InputError, match="2 DICOM series.*--series"):
        load_stack(tmp_path / "mixed")
    stack = load_stack(tmp_path / "mixed", series_uid="1.2.826.0.1.3680043.2.1125.8")
    assert stack.n_slices == 20


def test_empty_folder_and_missing_path(tmp_path):
    with pytest.raises(InputError, match="No DICOM series"):
        load_stack(tmp_path)
    with pytest.raises(InputError, match="does not exist"):
        load_stack(tmp_path / "nothing.nii.gz")


def test_truncated_file_is_a_clear_error(tmp_path):
    data = MRI.read_bytes()
    path = tmp_path / "cut.nii.gz"
    path.write_bytes(data[: len(data) // 3])
    with pytest.raises(InputError, match="truncated"):
        load_stack(path)


def test_not_an_image(tmp_path):
    path = tmp_path / "notes.nrrd"
    path.write_text("hello")
    with pytest.raises(InputError, match="Cannot read"):
        load_stack(path)


def test_2d_image_is_refused():
    with pytest.raises(InputError, match="2D"):
        to_axial_stack(sitk.Image(64, 64, sitk.sitkFloat32))


def test_single_slice_volume_is_refused():
    with pytest.raises(InputError, match="too thin"):
        to_axial_stack(sitk.Image(64, 64, 1, sitk.sitkFloat32))


def test_thick_sagittal_series_is_refused():
    # i runs left-right at 4 mm: a sagittal acquisition with thick slices
    image = sitk.GaussianSource(sitk.sitkFloat32, (24, 256, 256), sigma=(20, 20, 20), mean=(12, 128, 128))
    image.SetSpacing((4.0, 0.5, 0.5))
    with pytest.raises(InputError, match="sagittal or coronal"):
        to_axial_stack(image)


def test_a_3_mm_sagittal_series_is_read_as_axial_slices():
    # i runs left-right at 3 mm: the axial slices of a 3 mm sagittal acquisition, coarse but still showing the
    # canal (measured on real scans, see COARSE_PIXEL_MM); 3.3 mm is refused
    image = sitk.GaussianSource(sitk.sitkFloat32, (32, 256, 256), sigma=(20, 20, 20), mean=(16, 128, 128))
    image.SetSpacing((3.0, 0.5, 0.5))
    stack = to_axial_stack(image)
    assert stack.spacing[:2] == pytest.approx((3.0, 0.5))
    image.SetSpacing((3.3, 0.5, 0.5))
    with pytest.raises(InputError, match="sagittal or coronal"):
        to_axial_stack(image)


def test_steeply_tilted_volume_is_refused():
    image = sitk.GaussianSource(sitk.sitkFloat32, (64, 64, 30), sigma=(10, 10, 10), mean=(32, 32, 15))
    # 45 degrees: as close to coronal as to axial, whichever axis is taken as the slice normal
    angle = np.radians(45)
    rot = np.array([[1, 0, 0], [0, np.cos(angle), -np.sin(angle)], [0, np.sin(angle), np.cos(angle)]])
    image.SetDirection(tuple(rot.reshape(-1)))
    with pytest.raises(InputError, match="tilted"):
        to_axial_stack(image)


def _with_values(image: sitk.Image, change) -> sitk.Image:
    array = sitk.GetArrayFromImage(image).astype(np.float32)
    change(array)
    changed = sitk.GetImageFromArray(array)
    changed.CopyInformation(image)
    return changed


def test_a_region_of_nan_voxels_is_refused(mri):
    def nan_region(array):
        array[3, 10:12, 10:12] = np.nan

    with pytest.raises(InputError, match=r"^4 voxels are NaN: .*export the study again"):
        to_axial_stack(_with_values(mri[0], nan_region))


def test_a_single_infinite_voxel_is_refused(mri):
    def one_inf(array):
        array[5, 20, 20] = np.inf

    with pytest.raises(InputError, match=r"^1 voxel is infinite"):
        to_axial_stack(_with_values(mri[0], one_inf))


def test_an_image_of_nan_is_refused(mri):
    array = np.full(sitk.GetArrayFromImage(mri[0]).shape, np.nan, dtype=np.float32)
    image = sitk.GetImageFromArray(array)
    with pytest.raises(InputError, match="NaN"):
        to_axial_stack(image)


def _nifti_with_pixdim(source: Path, target: Path, pixdim: tuple[float, float, float]) -> Path:
    """``source`` (a .nii) with its header's pixdim[1..3] set, as a program that writes NIfTI wrongly does."""
    header = bytearray(source.read_bytes())
    struct.pack_into("<3f", header, 80, *pixdim)
    target.write_bytes(bytes(header))
    return target


@pytest.mark.parametrize("pixdim", [(0.0, 0.7, 4.0), (0.7, 0.7, 0.0), (-0.7, 0.7, 4.0), (float("nan"), 0.7, 4.0)])
def test_a_nifti_whose_spacing_is_zero_or_negative_is_refused(mri, tmp_path, pixdim):
    plain = tmp_path / "plain.nii"
    sitk.WriteImage(mri[0], str(plain))
    bad = _nifti_with_pixdim(plain, tmp_path / "bad.nii", pixdim)
    with pytest.raises(InputError, match="spacing .* must be positive"):
        load_stack(bad)
    gzipped = tmp_path / "bad.nii.gz"
    gzipped.write_bytes(gzip.compress(bad.read_bytes()))
    with pytest.raises(InputError, match="spacing .* must be positive"):
        load_stack(gzipped)


def test_a_nifti_whose_sform_is_sheared_says_so_and_what_to_do(mri, tmp_path, monkeypatch):
    # a resampling program may leave a slightly sheared affine (the TotalSegmentator CT s0002 copied by
    # ZHANG-Haochen-insa/dataset: its axes 2 degrees from perpendicular) in the sform alone; ITK refuses it, and the
    # user is told why rather than that the file is damaged
    monkeypatch.delenv("ITK_NIFTI_SFORM_PERMISSIVE", raising=False)
    plain = tmp_path / "plain.nii"
    sitk.WriteImage(mri[0], str(plain))
    header = bytearray(plain.read_bytes())
    struct.pack_into("<2h", header, 252, 0, 2)  # qform_code 0 (none), sform_code 2 (aligned)
    sx, sy, sz = mri[0].GetSpacing()
    struct.pack_into("<12f", header, 280, sx, 0.03 * sy, 0.0, 0.0, 0.0, sy, 0.0, 0.0, 0.0, 0.0, sz, 0.0)
    sheared = tmp_path / "sheared.nii"
    sheared.write_bytes(bytes(header))
    with pytest.raises(InputError, match="not perpendicular") as error:
        load_stack(sheared)
    assert "Resample" in str(error.value) and "damaged" not in str(error.value)
    # the same header with the shear taken out reads
    struct.pack_into("<12f", header, 280, sx, 0.0, 0.0, 0.0, 0.0, sy, 0.0, 0.0, 0.0, 0.0, sz, 0.0)
    sheared.write_bytes(bytes(header))
    assert load_stack(sheared).n_slices == mri[0].GetSize()[2]


def test_a_metaimage_with_zero_spacing_is_refused(mri, tmp_path):
    good = tmp_path / "good.mha"
    sitk.WriteImage(mri[0], str(good))
    data = good.read_bytes()
    split = data.index(b"ElementDataFile")
    header = re.sub(rb"ElementSpacing = [^\n]*", b"ElementSpacing = 0 0 4", data[:split])
    bad = tmp_path / "bad.mha"
    bad.write_bytes(header + data[split:])
    with pytest.raises(InputError, match="spacing that is zero or negative"):
        load_stack(bad)


def test_blank_volume_is_refused():
    with pytest.raises(InputError, match="blank"):
        to_axial_stack(sitk.Image(64, 64, 20, sitk.sitkFloat32))


def test_stack_keeps_source(mri):
    assert isinstance(to_axial_stack(mri[0], source="x"), AxialStack)


def test_dicom_series_with_a_gap_is_refused(mri, tmp_path):
    reference = to_axial_stack(mri[0])
    write_dicom_series(reference.image, tmp_path / "gap", "1.2.826.0.1.3680043.2.1125.9")
    (tmp_path / "gap" / "0010.dcm").unlink()
    with pytest.raises(InputError, match="unevenly spaced"):
        load_stack(tmp_path / "gap")


def test_a_nifti_named_gz_that_is_not_gzip_is_a_clear_error(tmp_path):
    plain = tmp_path / "plain.nii"
    sitk.WriteImage(sitk.ReadImage(str(MRI)), str(plain))
    fake = tmp_path / "fake.nii.gz"
    fake.write_bytes(plain.read_bytes())
    with pytest.raises(InputError, match="truncated"):
        load_stack(fake)


def _png_named_nifti(path: Path) -> None:
    sitk.WriteImage(sitk.Image(32, 32, sitk.sitkUInt8), str(path.with_suffix(".png")))
    path.with_suffix(".png").rename(path)


@pytest.mark.parametrize("make, message", [
    (lambda path: path.write_bytes(b""), "Cannot read"),
    (lambda path: path.write_text("patient notes, not an image\n"), "Cannot read"),
    (_png_named_nifti, "Cannot read|2D"),
], ids=["empty-file", "text-named-nii-gz", "png-named-nii-gz"])
def test_files_that_are_not_volumes_are_one_line_errors(tmp_path, make, message):
    path = tmp_path / "study.nii.gz"
    make(path)
    with pytest.raises(InputError, match=message) as caught:
        load_stack(path)
    assert "\n" not in str(caught.value)


def test_a_4d_series_and_vector_pixels_are_refused(mri):
    volume = sitk.Cast(mri[0], sitk.sitkFloat32)
    with pytest.raises(InputError, match="4D"):
        to_axial_stack(sitk.JoinSeries([volume, volume]))
    with pytest.raises(InputError, match="colour or vector"):
        to_axial_stack(sitk.Compose([volume, volume, volume]))
