"""Tests of the phantom generator: reproducibility, geometry, ground truth, intensities.

Studies are kept small (few slices, small matrices) so the file runs in seconds;
the generator works in millimetres, so a small matrix only crops the field of view.
"""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from SpineStenosisGraderLib.training.phantom import (
    CERVICAL_LEVELS,
    LUMBAR_LEVELS,
    PhantomStudy,
    make_disc_slice,
    make_study,
)
from SpineStenosisGraderLib.scales import KANG, SCHIZAS


def arrays(study: PhantomStudy):
    return (
        sitk.GetArrayFromImage(study.image),
        sitk.GetArrayFromImage(study.canal_mask),
        sitk.GetArrayFromImage(study.sac_mask),
    )


def box_of(mask2d: np.ndarray):
    rows = np.flatnonzero(mask2d.any(axis=1))
    cols = np.flatnonzero(mask2d.any(axis=0))
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1


@pytest.fixture(scope="module")
def ct_lumbar() -> PhantomStudy:
    # Whole lumbar region on a small matrix: 1.2 mm pixels keep the body in view.
    return make_study(11, "CT", "lumbar", pixel_spacing_mm=1.2, matrix=288, slice_spacing_mm=3.0)


@pytest.fixture(scope="module")
def mr_lumbar() -> PhantomStudy:
    return make_study(5, "MR", "lumbar", pixel_spacing_mm=0.8, matrix=160)


# --------------------------------------------------------------------------- reproducibility


def test_same_seed_gives_identical_study():
    a = make_study(3, "MR", "lumbar", n_slices=6, matrix=128)
    b = make_study(3, "MR", "lumbar", n_slices=6, matrix=128)
    for x, y in zip(arrays(a), arrays(b)):
        np.testing.assert_array_equal(x, y)
    assert a.levels == b.levels
    assert a.canal_boxes == b.canal_boxes
    np.testing.assert_array_equal(a.disc_weight, b.disc_weight)
    assert a.image.GetOrigin() == b.image.GetOrigin()
    assert a.image.GetSpacing() == b.image.GetSpacing()


def test_different_seeds_give_different_studies():
    a = make_study(3, "CT", "cervical", n_slices=4, matrix=128)
    b = make_study(4, "CT", "cervical", n_slices=4, matrix=128)
    ia, ib = arrays(a)[0], arrays(b)[0]
    assert ia.shape != ib.shape or not np.array_equal(ia, ib)


def test_disc_slice_is_reproducible():
    one = make_disc_slice(21, "MR", "lumbar", "B", matrix=160)
    two = make_disc_slice(21, "MR", "lumbar", "B", matrix=160)
    np.testing.assert_array_equal(one[0], two[0])
    assert one[1:3] == two[1:3]


# --------------------------------------------------------------------------- geometry


def test_image_geometry_follows_itk_conventions(ct_lumbar):
    img = ct_lumbar.image
    assert img.GetDirection() == (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
    assert img.GetPixelID() == sitk.sitkFloat32
    assert ct_lumbar.canal_mask.GetPixelID() == sitk.sitkUInt8
    assert ct_lumbar.sac_mask.GetPixelID() == sitk.sitkUInt8
    sx, sy, sz = img.GetSpacing()
    assert sx == sy == pytest.approx(1.2) and sz == pytest.approx(3.0)
    for m in (ct_lumbar.canal_mask, ct_lumbar.sac_mask):
        assert m.GetSize() == img.GetSize()
        assert m.GetOrigin() == img.GetOrigin()
        assert m.GetSpacing() == img.GetSpacing()
    assert ct_lumbar.modality == "CT" and ct_lumbar.region == "lumbar" and ct_lumbar.seed == 11


def test_vertebral_body_is_anterior_to_the_canal(ct_lumbar):
    """Row 0 is anterior: bone in front of the canal has smaller j, and the canal
    sits in the posterior half of the body cross-section, near the midline."""
    image, canal, _ = arrays(ct_lumbar)
    ps = ct_lumbar.image.GetSpacing()[0]
    body_slices = [k for k in ct_lumbar.canal_boxes if ct_lumbar.disc_weight[k] == 0.0]
    assert body_slices
    for k in body_slices[::3]:
        i0, j0, i1, j1 = ct_lumbar.canal_boxes[k]
        jc, ic = np.argwhere(canal[k]).mean(axis=0)
        # 5-20 mm in front of the canal, in its columns: the vertebral body (bone)
        front = image[k, max(j0 - int(20 / ps), 0): j0 - int(5 / ps), i0:i1]
        assert np.median(front) > 150.0
        # the same depth behind the canal front is soft tissue or canal, not the body
        body = image[k] > -500.0
        rows = np.flatnonzero(body.any(axis=1))
        cols = np.flatnonzero(body.any(axis=0))
        assert jc > 0.5 * (rows[0] + rows[-1])  # posterior half of the body
        assert abs(ic - 0.5 * (cols[0] + cols[-1])) < 0.15 * (cols[-1] - cols[0])


def test_canal_boxes_match_the_mask(ct_lumbar, mr_lumbar):
    for study in (ct_lumbar, mr_lumbar):
        _, canal, sac = arrays(study)
        nonempty = [k for k in range(canal.shape[0]) if canal[k].any()]
        assert sorted(study.canal_boxes) == nonempty
        for k, box in study.canal_boxes.items():
            assert box == box_of(canal[k])
            i0, j0, i1, j1 = box
            assert 0 <= i0 < i1 <= canal.shape[2] and 0 <= j0 < j1 <= canal.shape[1]
        # the dural sac lies inside the canal
        assert not np.any(sac & (1 - canal))


def test_levels_are_ordered_and_disc_weight_peaks_at_them(ct_lumbar, mr_lumbar):
    for study, names in ((ct_lumbar, LUMBAR_LEVELS), (mr_lumbar, LUMBAR_LEVELS)):
        n = sitk.GetArrayFromImage(study.image).shape[0]
        dw = study.disc_weight
        assert dw.shape == (n,) and np.all(dw >= 0.0) and np.all(dw <= 1.0)
        got = [lv.name for lv in study.levels]
        assert len(got) >= 3
        expected = list(reversed(names))  # inferior -> superior
        start = expected.index(got[0])
        assert got == expected[start:start + len(got)]
        z = [lv.z_mm for lv in study.levels]
        ks = [lv.slice_index for lv in study.levels]
        assert z == sorted(z) and ks == sorted(ks)
        z0, dz = study.image.GetOrigin()[2], study.image.GetSpacing()[2]
        for lv in study.levels:
            assert abs(z0 + lv.slice_index * dz - lv.z_mm) <= 0.5 * dz + 1e-6
            k = lv.slice_index
            assert dw[k] >= 0.6
            lo, hi = max(k - 3, 0), min(k + 4, n)
            assert dw[k] >= dw[lo:hi].max() - 0.35
        # between two levels lies a vertebral body: no disc there
        for a, b in zip(study.levels, study.levels[1:]):
            assert dw[(a.slice_index + b.slice_index) // 2] < 0.2


def test_cervical_levels_and_names():
    study = make_study(2, "MR", "cervical", pixel_spacing_mm=0.8, matrix=160)
    got = [lv.name for lv in study.levels]
    expected = list(reversed(CERVICAL_LEVELS))
    assert len(got) >= 3
    start = expected.index(got[0])
    assert got == expected[start:start + len(got)]
    assert all(lv.grade in KANG.names for lv in study.levels)


# --------------------------------------------------------------------------- ground truth vs rendering


def _level_study(seed: int, grade: str, level: str = "L4-L5") -> tuple[PhantomStudy, object]:
    study = make_study(seed, "MR", "lumbar", grades={level: grade}, pixel_spacing_mm=0.6, matrix=160)
    lv = next(lv for lv in study.levels if lv.name == level)
    return study, lv


def test_sac_area_falls_with_schizas_grade():
    areas = {g: [] for g in SCHIZAS.names}
    for seed in range(3):
        for g in SCHIZAS.names:
            study, lv = _level_study(100 + seed, g)
            sac = arrays(study)[2][lv.slice_index]
            ps = study.image.GetSpacing()[0]
            assert lv.dural_sac_area_mm2 == pytest.approx(float(sac.sum()) * ps * ps)
            areas[g].append(lv.dural_sac_area_mm2)
    mean = {g: float(np.mean(v)) for g, v in areas.items()}
    assert mean["A"] > mean["B"] > mean["C"] > mean["D"]
    assert min(areas["A"]) > 125.0
    assert max(areas["C"]) < 90.0 and max(areas["D"]) < 75.0


def _midline_fat_behind_sac(study: PhantomStudy, k: int) -> float:
    """mm of canal contents behind the sac along the canal's centre column."""
    _, canal, sac = arrays(study)
    ps = study.image.GetSpacing()[0]
    i0, j0, i1, j1 = study.canal_boxes[k]
    best = 0.0
    for i in range((i0 + i1) // 2 - 1, (i0 + i1) // 2 + 2):
        rows = np.flatnonzero(sac[k, :, i])
        if rows.size == 0:
            continue
        behind = canal[k, rows[-1] + 1:, i]
        run = int(np.argmin(behind)) if not behind.all() else behind.size
        best = max(best, run * ps)
    return best


def test_grade_d_has_no_posterior_epidural_fat_and_c_has():
    for seed in (7, 8):
        study, lv = _level_study(seed, "D")
        assert lv.grade == "D" and lv.posterior_fat is False
        assert _midline_fat_behind_sac(study, lv.slice_index) <= 1.0
        study, lv = _level_study(seed, "C")
        assert lv.grade == "C" and lv.posterior_fat is True
        assert _midline_fat_behind_sac(study, lv.slice_index) >= 1.5


def test_csf_is_brighter_than_the_crowded_sac_on_mr():
    """Grade A shows CSF; grade C/D a homogeneous grey sac with no CSF signal."""
    study, lv = _level_study(31, "A", "L3-L4")
    img, _, sac = arrays(study)
    a_signal = np.median(img[lv.slice_index][sac[lv.slice_index] > 0])
    study, lv = _level_study(31, "D", "L3-L4")
    img, _, sac = arrays(study)
    d_signal = np.median(img[lv.slice_index][sac[lv.slice_index] > 0])
    assert a_signal > 1.5 * d_signal


def test_requested_grades_are_honoured():
    wanted = {"L4-L5": "D", "L2-L3": "B", "T12-L1": "C"}
    study = make_study(9, "CT", "lumbar", grades=wanted, pixel_spacing_mm=1.0, matrix=160, slice_spacing_mm=3.0)
    got = {lv.name: lv for lv in study.levels}
    for name, grade in wanted.items():
        assert got[name].grade == grade
    assert got["L4-L5"].posterior_fat is False
    cerv = make_study(9, "MR", "cervical", grades={"C5-C6": "3", "C3-C4": "0"}, pixel_spacing_mm=0.8, matrix=160)
    got = {lv.name: lv.grade for lv in cerv.levels}
    assert got["C5-C6"] == "3" and got["C3-C4"] == "0"


def test_forcing_a_grade_changes_only_that_level():
    """The seed fixes the patient; a forced grade must not reshuffle the rest."""
    kw = dict(pixel_spacing_mm=0.9, matrix=128, slice_spacing_mm=4.0)
    a = make_study(17, "MR", "lumbar", grades={"L4-L5": "A"}, **kw)
    d = make_study(17, "MR", "lumbar", grades={"L4-L5": "D"}, **kw)
    ia, id_ = arrays(a)[0], arrays(d)[0]
    assert ia.shape == id_.shape
    far = next(lv for lv in a.levels if lv.name == "L2-L3").slice_index
    near = next(lv for lv in a.levels if lv.name == "L4-L5").slice_index
    np.testing.assert_array_equal(ia[far], id_[far])
    assert not np.array_equal(ia[near], id_[near])
    assert [lv.grade for lv in a.levels if lv.name != "L4-L5"] == [lv.grade for lv in d.levels if lv.name != "L4-L5"]


def test_cervical_compression_shrinks_the_sac():
    areas = {}
    for g in ("0", "2"):
        study = make_study(4, "MR", "cervical", grades={"C5-C6": g}, pixel_spacing_mm=0.6, matrix=160)
        areas[g] = next(lv for lv in study.levels if lv.name == "C5-C6").dural_sac_area_mm2
    assert areas["0"] > areas["2"] + 30.0


def test_bad_arguments_are_rejected():
    with pytest.raises(ValueError):
        make_study(1, "PET", "lumbar", n_slices=1, matrix=64)
    with pytest.raises(ValueError):
        make_study(1, "CT", "thoracic", n_slices=1, matrix=64)
    with pytest.raises(ValueError):
        make_study(1, "CT", "lumbar", grades={"C5-C6": "A"}, n_slices=1, matrix=64)
    with pytest.raises(KeyError):
        make_study(1, "CT", "lumbar", grades={"L4-L5": "3"}, n_slices=1, matrix=64)
    with pytest.raises(KeyError):
        make_disc_slice(1, "MR", "cervical", "A")


# --------------------------------------------------------------------------- intensities


def test_ct_intensities_are_plausible(ct_lumbar):
    image, canal, sac = arrays(ct_lumbar)
    lv = min((lv for lv in ct_lumbar.levels), key=lambda lv: -lv.dural_sac_area_mm2)
    # CSF (the largest sac) is water-like
    k = lv.slice_index
    core = sac[k].astype(bool)
    assert -10.0 < np.median(image[k][core]) < 30.0
    # air outside the body, fat and muscle inside, cortical bone somewhere
    assert image[:, 0, 0].mean() < -900.0
    body = image[image > -500.0]
    assert np.mean((body > -120) & (body < -60)) > 0.05  # fat
    assert np.mean((body > 30) & (body < 70)) > 0.05  # muscle and soft tissue
    assert np.percentile(image, 99.9) > 500.0  # cortical bone
    assert image.min() >= -1024.0 and image.max() <= 3071.0


def test_mr_intensities_are_positive_and_csf_is_bright(mr_lumbar):
    image, _, sac = arrays(mr_lumbar)
    assert image.min() >= 0.0 and image.max() < 2000.0
    lv = max(mr_lumbar.levels, key=lambda lv: lv.dural_sac_area_mm2)
    if lv.grade == "A":
        k = lv.slice_index
        assert np.median(image[k][sac[k] > 0]) > np.median(image[k])


# --------------------------------------------------------------------------- acquisition


def test_overrides_set_the_grid():
    study = make_study(2, "MR", "lumbar", n_slices=5, slice_spacing_mm=3.5, pixel_spacing_mm=0.75, matrix=192)
    assert study.image.GetSize() == (192, 192, 5)
    assert study.image.GetSpacing() == pytest.approx((0.75, 0.75, 3.5))
    assert study.disc_weight.shape == (5,)


@pytest.mark.parametrize(
    "modality,region,ps_range,dz_range",
    [("MR", "lumbar", (0.5, 0.9), (3.0, 4.0)), ("CT", "lumbar", (0.6, 1.0), (1.0, 3.0)),
     ("MR", "cervical", (0.4, 0.8), (2.0, 5.0)), ("CT", "cervical", (0.3, 0.6), (1.0, 2.0))],
)
def test_default_acquisition_is_in_range(modality, region, ps_range, dz_range):
    # one slice is enough to see the drawn grid
    for seed in (0, 1):
        study = make_study(seed, modality, region, n_slices=1)
        sx, sy, sz = study.image.GetSpacing()
        assert ps_range[0] <= sx <= ps_range[1] and sx == sy
        assert dz_range[0] <= sz <= dz_range[1]
        m = study.image.GetSize()[0]
        assert 256 <= m <= 512 and study.image.GetSize()[1] == m
        assert 150.0 <= m * sx <= 460.0  # field of view (mm)


# --------------------------------------------------------------------------- disc slices


@pytest.mark.parametrize("modality", ["CT", "MR"])
@pytest.mark.parametrize("region", ["lumbar", "cervical"])
def test_make_disc_slice_shapes(modality, region):
    grade = (SCHIZAS if region == "lumbar" else KANG).names[-1]
    image, spacing, box, mask = make_disc_slice(5, modality, region, grade, pixel_spacing_mm=0.7, matrix=200)
    assert image.shape == (200, 200) and image.dtype == np.float32
    assert mask.shape == (200, 200) and mask.dtype == np.uint8
    assert spacing == (pytest.approx(0.7), pytest.approx(0.7))
    assert mask.any() and box == box_of(mask)
    # the canal is a few centimetres across at most
    i0, j0, i1, j1 = box
    assert (i1 - i0) * 0.7 < 45.0 and (j1 - j0) * 0.7 < 35.0


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 10_000),
    modality=st.sampled_from(["CT", "MR"]),
    region=st.sampled_from(["lumbar", "cervical"]),
    grade_index=st.integers(0, 3),
)
def test_disc_slice_box_is_inside_and_non_empty(seed, modality, region, grade_index):
    grade = (SCHIZAS if region == "lumbar" else KANG).names[grade_index]
    image, (si, sj), box, mask = make_disc_slice(seed, modality, region, grade, matrix=256)
    assert si == sj and si > 0
    assert mask.sum() * si * sj > 20.0  # at least a severely narrowed canal
    i0, j0, i1, j1 = box
    assert 0 <= i0 < i1 <= image.shape[1] and 0 <= j0 < j1 <= image.shape[0]
    assert np.isfinite(image).all()


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 10_000), modality=st.sampled_from(["CT", "MR"]))
def test_every_level_slice_has_a_canal(seed, modality):
    study = make_study(seed, modality, "lumbar", pixel_spacing_mm=0.9, matrix=128, slice_spacing_mm=4.0)
    for lv in study.levels:
        assert lv.slice_index in study.canal_boxes
        assert lv.dural_sac_area_mm2 > 20.0
