"""Synthetic training slices from label maps: randomised where meant to be, exact where the target is."""

import json

import numpy as np
import pytest

from conftest import DATA
from SpineStenosisGraderLib.training.annotations import load_annotated_scan, load_scans
from SpineStenosisGraderLib.training.synthesis import (
    SynthesisOptions, coarsen_slice, kmeans_1d, synthesize_from_map, synthesize_slice, tissue_map_from_scan,
)
from SpineStenosisGraderLib.training.train import build_detector_data, origin_of, train_detector

CATALOGUE = DATA / "scans.json"
FLAT = SynthesisOptions(noise=False, bias=False, resolution=False)


@pytest.fixture(scope="module")
def ct_scan():
    return next(s for s in load_scans(CATALOGUE) if s.name == "totalsegmentator_ct")


@pytest.fixture(scope="module")
def ct_map(ct_scan):
    return tissue_map_from_scan(ct_scan)


def toy_slab(n=3, size=96):
    """Background 0, a body 1, a bone ring 2 and a canal 3 in the middle."""
    jj, ii = np.mgrid[:size, :size]
    r = np.hypot(jj - size / 2, ii - size / 2)
    labels = np.zeros((size, size), dtype=np.uint8)
    labels[r < 40] = 1
    labels[r < 16] = 2
    labels[r < 8] = 3
    return np.repeat(labels[None], n, axis=0)


TOY = dict(tissue=("air", "muscle", "bone", "csf"), canal_ids=(3,))


def canal_slice(tmap, which=0.5):
    ks = np.flatnonzero(tmap.canal.any(axis=(1, 2)))
    return int(ks[int(len(ks) * which)])


def test_same_seed_same_slice_other_seed_other_slice(ct_map):
    k = canal_slice(ct_map)
    a = synthesize_from_map(ct_map, k, np.random.default_rng(5))
    b = synthesize_from_map(ct_map, k, np.random.default_rng(5))
    c = synthesize_from_map(ct_map, k, np.random.default_rng(6))
    assert np.array_equal(a.image, b.image) and a.box_ij == b.box_ij
    assert a.image.shape != c.image.shape or not np.allclose(a.image, c.image)


def test_output_is_float_in_unit_range(ct_map):
    rng = np.random.default_rng(0)
    for which in np.linspace(0.05, 0.95, 12):
        out = synthesize_from_map(ct_map, canal_slice(ct_map, which), rng)
        assert out.image.dtype == np.float32
        assert out.image.min() >= 0.0 and out.image.max() <= 1.0
        assert out.image.max() - out.image.min() > 0.1  # not a blank


def test_each_label_has_one_intensity_before_noise_and_bias(ct_map):
    rng = np.random.default_rng(1)
    for _ in range(6):
        out = synthesize_from_map(ct_map, canal_slice(ct_map), rng, FLAT)
        labels = np.unique(out.labels)
        assert labels.size >= 4
        for label in labels:
            values = out.image[out.labels == label]
            assert np.ptp(values) < 1e-5, f"label {label} ({ct_map.tissue[label]}) spreads over {np.ptp(values)}"


def label_means(out):
    return {int(v): float(out.image[out.labels == v].mean()) for v in np.unique(out.labels)}


def test_two_seeds_draw_different_contrasts():
    slab = toy_slab()
    options = SynthesisOptions(noise=False, bias=False, resolution=False, deform=False, crop=False)
    a = label_means(synthesize_slice(slab, (1.0, 1.0, 2.0), np.random.default_rng(1), options=options, **TOY))
    b = label_means(synthesize_slice(slab, (1.0, 1.0, 2.0), np.random.default_rng(2), options=options, **TOY))
    assert max(abs(a[v] - b[v]) for v in a) > 0.1
    # over many seeds the canal is sometimes brighter and sometimes darker than the bone around it
    order = set()
    for seed in range(40):
        m = label_means(synthesize_slice(slab, (1.0, 1.0, 2.0), np.random.default_rng(seed), options=options, **TOY))
        order.add(m[3] > m[2])
    assert order == {True, False}


def test_box_comes_from_the_deformed_canal():
    slab = toy_slab()
    undeformed = slab[1] == 3
    moved = 0
    for seed in range(12):
        out = synthesize_slice(slab, (1.0, 1.0, 2.0), np.random.default_rng(seed),
                               options=SynthesisOptions(crop=False), **TOY)
        assert np.array_equal(out.canal, out.labels == 3)
        jj, ii = np.nonzero(out.canal)
        assert out.box_ij == (ii.min(), jj.min(), ii.max() + 1, jj.max() + 1)
        moved += not np.array_equal(out.canal, undeformed)
    assert moved >= 6  # the deformation really moves the canal


def test_real_scan_slice_keeps_the_canal_box_of_its_label(ct_scan, ct_map):
    rng = np.random.default_rng(3)
    for k in list(ct_scan.boxes)[::9]:
        exact = synthesize_from_map(ct_map, k, rng, SynthesisOptions(deform=False, crop=False))
        assert exact.box_ij == ct_scan.boxes[k]
        deformed = synthesize_from_map(ct_map, k, rng, SynthesisOptions(crop=False))
        a, b = np.array(deformed.box_ij, float), np.array(ct_scan.boxes[k], float)
        inter = np.prod(np.clip(np.minimum(a[2:], b[2:]) - np.maximum(a[:2], b[:2]), 0, None))
        union = np.prod(a[2:] - a[:2]) + np.prod(b[2:] - b[:2]) - inter
        assert inter / union > 0.3
    # a cropped field of view keeps the canal, and the box with it
    for _ in range(10):
        out = synthesize_from_map(ct_map, canal_slice(ct_map), rng)
        i0, j0, i1, j1 = out.box_ij
        assert out.canal[j0:j1, i0:i1].sum() == out.canal.sum()


def test_unlabelled_voxels_become_intensity_clusters(ct_scan, ct_map):
    from SpineStenosisGraderLib.training.annotations import label_array

    seg = label_array(ct_scan.root, ct_scan.tissues[0], ct_scan.stack)
    unlabelled = (seg == 0) & (ct_scan.canal == 0)
    cluster_labels = np.unique(ct_map.labels[unlabelled])
    assert 3 <= cluster_labels.size <= 5
    assert not set(cluster_labels) & set(np.unique(ct_map.labels[seg > 0]))
    # by HU: the air around the patient and the subcutaneous fat are told apart
    assert {"air", "fat"} <= {ct_map.tissue[v] for v in cluster_labels}
    assert np.array_equal(ct_map.canal, ct_scan.canal > 0)


def test_a_catalogue_entry_without_tissues_is_clustered_whole(tmp_path):
    entry = next(e for e in json.loads(CATALOGUE.read_text())["scans"] if e["name"] == "tptbox_mri")
    entry.pop("tissues")
    tmap = tissue_map_from_scan(load_annotated_scan(entry, DATA))
    assert tmap.tissue.count("csf") == 1 and len(tmap.canal_ids) == 1
    assert len(tmap.tissue) >= 4


def test_kmeans_finds_separated_groups():
    values = np.concatenate([np.full(50, -1000.0), np.full(80, -100.0), np.full(60, 40.0), np.full(30, 700.0)])
    assert np.allclose(kmeans_1d(values, 4), [-1000, -100, 40, 700])


def test_exclude_scans_drops_a_scan_and_everything_made_from_it():
    kwargs = dict(n_phantoms=1, per_study=2, seed=0, synthetic_per_scan=4, synthetic_per_phantom=2,
                  synthetic_per_label_map=0)
    full = build_detector_data(CATALOGUE, **kwargs)
    sources = {d.source for d in full}
    assert {"totalsegmentator_ct", "synth:totalsegmentator_ct", "phantom-0", "synth:phantom-0"} <= sources
    fold = build_detector_data(CATALOGUE, exclude_scans=["totalsegmentator_ct", "phantom-0"], **kwargs)
    assert {origin_of(d.source) for d in fold} == {"tptbox_mri", "tptbox_ct", "sct_cervical_t2"}
    # what the other scans give does not depend on which scan is left out
    others = [d for d in full if origin_of(d.source) in {"tptbox_mri", "tptbox_ct", "sct_cervical_t2"}]
    assert len(others) == len(fold) and all(np.array_equal(a.image, b.image) for a, b in zip(others, fold))
    everything = build_detector_data(CATALOGUE, all_scans=True, exclude_scans=["tptbox_ct"], **kwargs)
    assert "synth:sct_cervical_t2" in {d.source for d in everything}
    assert not any(origin_of(d.source) == "tptbox_ct" for d in everything)


@pytest.mark.slow
def test_detector_training_is_deterministic():
    from SpineStenosisGraderLib.inference.detector import DEFAULT_DETECTOR_CONFIG

    data = build_detector_data(CATALOGUE, n_phantoms=1, per_study=3, seed=0, synthetic_per_scan=3,
                               synthetic_per_phantom=2, synthetic_per_label_map=0)
    weights = []
    for _ in range(2):
        model, losses = train_detector(data, dict(DEFAULT_DETECTOR_CONFIG), iterations=6, batch_size=2, seed=4)
        weights.append({k: v.clone() for k, v in model.state_dict().items()})
    assert weights[0].keys() == weights[1].keys()
    assert all(np.array_equal(weights[0][k].numpy(), weights[1][k].numpy()) for k in weights[0])


def _rise_mm(profile: np.ndarray, spacing_mm: float) -> float:
    """The 10-90% width of a rising edge along a profile, in mm."""
    low, high = float(profile.min()), float(profile.max())
    return float(np.argmax(profile >= low + 0.9 * (high - low)) - np.argmax(profile >= low + 0.1 * (high - low))) \
        * spacing_mm


def test_a_slice_coarsened_to_3_mm_pixels_blurs_its_edges_as_a_3_mm_acquisition_would():
    image = np.zeros((120, 120), dtype=np.float32)
    image[:, 60:] = 1.0  # a sharp edge on a 0.5 mm grid
    coarse = coarsen_slice(image, (0.5, 0.5), 3.0)
    assert coarse.shape == image.shape and coarse.dtype == np.float32
    # a 3 mm pixel's blur alone rises over 3.2 mm (10-90%); sampling at 3 mm and interpolating back adds to it
    assert _rise_mm(image[60], 0.5) <= 0.5 and 3.0 <= _rise_mm(coarse[60], 0.5) <= 7.0
    # the edge stays where it was, and flat parts keep their value
    assert abs(float(coarse[60, 59] + coarse[60, 60]) - 1.0) < 0.2
    assert np.allclose(coarse[:, :30], 0.0, atol=1e-3) and np.allclose(coarse[:, 90:], 1.0, atol=1e-3)


def test_coarsening_leaves_an_axis_already_as_coarse_and_a_finer_target_alone():
    image = np.random.default_rng(0).random((64, 64)).astype(np.float32)
    assert coarsen_slice(image, (1.0, 1.0), 0.8) is image
    # rows 3 mm apart already: coarsening to 3 mm blurs across the columns (0.5 mm) only
    coarse = coarsen_slice(image, (0.5, 3.0), 3.0)
    assert np.allclose(coarse.mean(axis=1), image.mean(axis=1), atol=0.05)
    assert float(np.abs(np.diff(coarse, axis=1)).mean()) < 0.25 * float(np.abs(np.diff(image, axis=1)).mean())


def _two_label_maps(tmp_path):
    """A catalogue of two SPIDER label maps and no scan."""
    catalogue = json.loads(CATALOGUE.read_text())
    maps = [e for e in catalogue["label_maps"] if e["name"] in ("spider_104_t2", "spider_166_t2")]
    for entry in maps:
        for key in ("canal", "discs"):
            entry[key]["file"] = str(DATA / entry[key]["file"])
        entry["image"] = str(DATA / entry["image"])
        entry["tissues"][0]["file"] = str(DATA / entry["tissues"][0]["file"])
    path = tmp_path / "maps.json"
    path.write_text(json.dumps({"scans": [], "label_maps": maps}))
    return path


def test_a_label_map_without_its_image_trains_the_detector_through_synthesis_only(tmp_path):
    catalogue = _two_label_maps(tmp_path)
    kwargs = dict(n_phantoms=0, per_study=0, seed=0, synthetic_per_scan=0, synthetic_per_phantom=0)
    data = build_detector_data(catalogue, synthetic_per_label_map=3, **kwargs)
    # its labels are no picture of a spine: no slice of them is taught as a real image
    assert sorted(d.source for d in data) == ["synth:spider_104_t2"] * 3 + ["synth:spider_166_t2"] * 3
    fold = build_detector_data(catalogue, synthetic_per_label_map=3, exclude_scans=["spider_104_t2"], **kwargs)
    assert [d.source for d in fold] == ["synth:spider_166_t2"] * 3
    assert all(np.array_equal(a.image, b.image) for a, b in zip(fold, data[3:]))
    assert build_detector_data(catalogue, synthetic_per_label_map=0, **kwargs) == []


def test_a_label_maps_unlabelled_voxels_are_drawn_as_patches_of_tissue(tmp_path):
    from SpineStenosisGraderLib.training.annotations import load_label_maps

    scan = next(iter(load_label_maps(_two_label_maps(tmp_path), exclude=["spider_166_t2"])))
    tmap = tissue_map_from_scan(scan)
    outside = tmap.labels[(scan.stack.array == 0) & ~tmap.canal]
    kinds = {tmap.tissue[v] for v in np.unique(outside)}
    # not one flat background: a flat one would teach that the canal and bone are all a slice holds
    assert len(kinds) >= 3 and not kinds & {"bone", "disc", "csf"}
    shares = np.bincount(outside) / outside.size
    assert np.sort(shares[shares > 0])[-1] < 0.6
    # the same map gives the same patches every time, so a retrain gives the same slices
    assert np.array_equal(tissue_map_from_scan(scan).labels, tmap.labels)
    assert set(tmap.tissue[v] for v in np.unique(tmap.labels[scan.stack.array > 200])) == {"disc"}
