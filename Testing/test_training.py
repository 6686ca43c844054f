"""Training: the command makes a valid, verifiable package, reproducibly by seed."""

import json

import pytest
from safetensors.numpy import load_file

from conftest import DATA
from SpineStenosisGraderLib.cli import main
from SpineStenosisGraderLib.packages.package import load_default_package, load_package
from SpineStenosisGraderLib.pipeline import grade_file
from SpineStenosisGraderLib.training import train as train_module
from SpineStenosisGraderLib.training.kernels import PORTABLE_KERNELS, portable_kernels_apply
from SpineStenosisGraderLib.training.train import KERNEL_VARIABLES, machine_state

TINY = ["--phantoms", "2", "--per-study", "3", "--detector-iterations", "2", "--grade-slices", "8",
        "--classifier-epochs", "1"]


def train_tiny(out, seed=0):
    assert main(["train", "--out", str(out), "--seed", str(seed), *TINY]) == 0
    return load_package(out)


def test_train_command_writes_a_package_the_grader_loads(tmp_path):
    package = train_tiny(tmp_path / "pkg")
    manifest = package.manifest
    assert manifest["training_data"]["detector_real_scans"] == ["sct_cervical_t2", "totalsegmentator_ct", "tptbox_ct",
                                                                "tptbox_mri"]
    assert "Not for clinical use" in manifest["intended_use"]
    assert set(manifest["files"]) == {"detector", "classifier", "detector_onnx", "classifier_onnx"}
    for entry in manifest["files"].values():
        assert entry["path"].endswith((".safetensors", ".onnx")) and len(entry["sha256"]) == 64
    assert manifest["onnx"]["detector"]["max_box_difference_px"] <= 0.05
    assert package.resolved_backend() == "onnx"
    # an untrained package still runs the whole pipeline without error
    result, _ = grade_file(DATA / "tptbox" / "sample_mri" / "sub-mri_label-6_T2w.nii.gz", package)
    assert result.model.name == manifest["name"]
    training = manifest["training_data"]
    assert training["command"].startswith("spine-stenosis-grader train --out ") and training["seed"] == 0
    assert set(training["code"]) == {"commit", "dirty"} and training["final_loss"]["detector"] > 0
    # the kind of CPU is recorded: on another one the same command gives other weights
    import torch

    machine = training["machine"]
    assert machine["torch"] == torch.__version__ and machine["cpu"]
    assert set(machine["kernel_settings"]) <= set(KERNEL_VARIABLES)
    # `train` ran itself again with the kernels chosen to round alike on x86-64 CPUs
    if portable_kernels_apply():
        assert training["portable_kernels"] is True
        assert machine["kernel_settings"].items() >= PORTABLE_KERNELS.items()
        assert machine["torch_cpu_capability"] == "AVX2"
    assert {"totalsegmentator_ct", "tptbox_mri", "tptbox_ct", "sct_cervical_t2", "phantoms"} <= set(
        training["detector_synthetic_slices"])


def test_the_machine_record_names_the_settings_that_pick_kernels(monkeypatch):
    # a stand-in name: setting a real one (ONEDNN_MAX_CPU_ISA) here could change the kernels of later tests
    monkeypatch.setattr(train_module, "KERNEL_VARIABLES", ("SSG_TEST_KERNEL_ISA", "SSG_TEST_UNSET"))
    monkeypatch.setenv("SSG_TEST_KERNEL_ISA", "AVX2")
    monkeypatch.delenv("SSG_TEST_UNSET", raising=False)
    assert machine_state()["kernel_settings"] == {"SSG_TEST_KERNEL_ISA": "AVX2"}


def test_a_leave_one_scan_out_fold_trains_the_detector_and_reuses_a_classifier(tmp_path):
    base = train_tiny(tmp_path / "base")
    fold_dir = tmp_path / "fold"
    assert main(["train", "--out", str(fold_dir), *TINY, "--exclude-scan", "tptbox_mri", "--detector-only",
                 "--classifier-from", str(tmp_path / "base")]) == 0
    fold = load_package(fold_dir).manifest
    assert fold["training_data"]["detector_real_scans"] == ["sct_cervical_t2", "totalsegmentator_ct", "tptbox_ct"]
    assert "tptbox_mri" not in fold["training_data"]["detector_synthetic_slices"]
    assert fold["files"]["classifier"]["sha256"] == base.manifest["files"]["classifier"]["sha256"]
    assert fold["training_data"]["classifier_from"]["sha256"] == base.manifest["files"]["classifier"]["sha256"]
    assert main(["train", "--out", str(tmp_path / "x"), "--exclude-scan", "no_such_scan"]) == 2


@pytest.mark.slow
def test_training_is_reproducible_by_seed(tmp_path):
    a = train_tiny(tmp_path / "a")
    b = train_tiny(tmp_path / "b")
    for key in ("detector", "classifier"):
        wa, wb = load_file(str(a.file(key))), load_file(str(b.file(key)))
        assert wa.keys() == wb.keys()
        assert all((wa[k] == wb[k]).all() for k in wa)
    ja = json.loads((tmp_path / "a" / "manifest.json").read_text())
    jb = json.loads((tmp_path / "b" / "manifest.json").read_text())
    assert ja["files"] == jb["files"]


def test_the_manifest_records_the_commit_the_training_started_from(tmp_path, monkeypatch):
    # a commit made while a package trains (it takes an hour) is not the code that trained it
    head = {"commit": "at-start", "dirty": False}
    monkeypatch.setattr(train_module, "git_state", lambda: dict(head))
    train_classifier = train_module.train_classifier

    def commit_meanwhile(*args, **kwargs):
        head["commit"] = "committed-meanwhile"
        return train_classifier(*args, **kwargs)

    monkeypatch.setattr(train_module, "train_classifier", commit_meanwhile)
    # in this process: the command may run itself again in a child process for its kernels
    training = train_module.train_default_package(
        tmp_path / "pkg", DATA / "scans.json", n_phantoms=2, per_study=3, detector_iterations=2, n_grade_slices=8,
        classifier_epochs=1, synthetic_per_scan=2, synthetic_per_phantom=1, synthetic_per_label_map=1)
    assert training["code"] == {"commit": "at-start", "dirty": False}
    made = load_package(tmp_path / "pkg").manifest
    assert made["training_data"]["code"]["commit"] == "at-start"
    # the manifest lists the label maps without images apart from the scans whose images it learned from
    assert len(made["training_data"]["detector_label_maps"]) == 28
    assert not set(made["training_data"]["detector_label_maps"]) & set(made["training_data"]["detector_real_scans"])
    assert "28 label maps without their images" in made["training_data"]["summary"]
    # the package the command makes shows its grade where the shipped one does, and no wider
    assert made["grade_scope"] == load_default_package().manifest["grade_scope"]


def test_the_default_recipe_learns_from_the_data_the_embedded_package_learned_from():
    # the manifest's command must remake the embedded package: label maps without images are opt-in
    # (--synthetic-per-label-map), as the embedded package learned from none
    shipped = load_default_package().manifest["training_data"]
    assert "detector_label_maps" not in shipped
    data = train_module.build_detector_data(DATA / "scans.json", n_phantoms=0, per_study=0, seed=0,
                                            synthetic_per_scan=0, synthetic_per_phantom=0)
    assert sorted({d.source for d in data}) == shipped["detector_real_scans"]


def _tiny_detector_data():
    import numpy as np

    from SpineStenosisGraderLib.training.train import DetectorSlice

    rng = np.random.default_rng(3)
    data = []
    for n in range(4):
        image = rng.random((160, 160)).astype(np.float16) * 0.3
        image[70:90, 72:88] = 0.9  # a bright canal-sized box to find
        data.append(DetectorSlice(image, (1.0, 1.0), (72.0, 70.0, 88.0, 90.0), 1 + n % 2, f"phantom-{n}"))
    return data


def test_the_detector_average_leaves_the_training_steps_alone_and_averages_their_weights():
    import numpy as np

    from SpineStenosisGraderLib.inference.detector import DEFAULT_DETECTOR_CONFIG
    from SpineStenosisGraderLib.training.train import train_detector

    data, config = _tiny_detector_data(), dict(DEFAULT_DETECTOR_CONFIG)
    runs = {decay: train_detector(data, config, iterations=6, batch_size=2, seed=1, ema_decay=decay)
            for decay in (0.0, 1e-12, 0.5)}
    weights = {decay: {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}
               for decay, (model, _) in runs.items()}
    # the average only reads the steps: the same batches and losses with it as without
    assert runs[0.5][1] == runs[0.0][1]
    # a decay of (almost) 0 is the last step's weights: each update comes after that step's optimiser step
    assert all(np.allclose(weights[1e-12][k], weights[0.0][k], rtol=0, atol=1e-6) for k in weights[0.0])
    # with 0.5 the last three steps are averaged: the weights and the batch-norm statistics differ from the last's
    changed = [k for k in weights[0.0] if not np.allclose(weights[0.5][k], weights[0.0][k], rtol=0, atol=1e-6)]
    assert any(k.endswith("running_mean") for k in changed) and any(k.endswith(".weight") for k in changed)
    assert not runs[0.5][0].training
    with pytest.raises(ValueError, match="EMA decay"):
        train_detector(data, config, iterations=2, batch_size=2, seed=1, ema_decay=1.0)


@pytest.mark.parametrize("decay", ["1", "-0.1", "1.5"])
def test_a_detector_average_decay_outside_0_to_1_is_refused_before_any_training(tmp_path, capsys, decay):
    out = tmp_path / "pkg"
    assert main(["train", "--native-kernels", "--detector-ema", decay, "--out", str(out), *TINY]) == 2
    assert "--detector-ema is a decay from 0 (off) to below 1" in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.parametrize("share", ["-0.1", "1.5"])
def test_a_sagittal_share_outside_0_to_1_is_refused_before_any_training(tmp_path, capsys, share):
    out = tmp_path / "pkg"
    assert main(["train", "--native-kernels", "--sagittal-share", share, "--out", str(out), *TINY]) == 2
    assert "--sagittal-share is a share of the detector's samples from 0 (none) to 1" in capsys.readouterr().err
    assert not out.exists()


def test_a_sagittal_series_sample_is_coarse_from_side_to_side_and_narrow():
    import numpy as np

    from SpineStenosisGraderLib.training.train import sagittal_strip

    rng = np.random.default_rng(0)
    # a pattern from front to back plus one from side to side, on 0.5 mm pixels, none blank
    image = (rng.random((300, 1)) + rng.random((1, 300)) + 0.5).astype(np.float32)
    box = (140.0, 120.0, 160.0, 150.0)  # a canal 10 mm across
    for seed in range(20):
        out = sagittal_strip(image, box, (0.5, 0.5), np.random.default_rng(seed))
        kept = np.nonzero(out.any(axis=0))[0]
        # the few sagittal slices hold the whole depth, and reach 15-35 mm (30-70 pixels) beside the canal
        assert out[:, kept[0]:kept[-1] + 1].all()
        assert 70 <= kept[0] <= 110 and 189 <= kept[-1] <= 229
        inner = out[:, kept[0] + 10:kept[-1] - 10]
        # slices 2.5-5 mm thick: the side-to-side pattern is smoothed, the front-to-back one kept as it was
        assert np.abs(np.diff(inner, axis=1)).mean() < 0.3 * np.abs(np.diff(image, axis=1)).mean()
        assert np.allclose(np.diff(inner, axis=0), np.diff(image[:, kept[0] + 10:kept[-1] - 10], axis=0),
                           rtol=0, atol=1e-4)


def test_the_detector_is_shown_sagittal_series_samples_only_when_asked(monkeypatch):
    import numpy as np

    from SpineStenosisGraderLib.training.train import DetectorSlice, detector_sample

    # the canvas as drawn, so that blank columns stay blank
    monkeypatch.setattr(train_module, "augment_intensity", lambda patch, rng: patch)
    image = np.full((300, 300), 0.6, dtype=np.float16)  # 150 mm across at 0.5 mm
    item = DetectorSlice(image, (0.5, 0.5), (140.0, 120.0, 160.0, 150.0), 1, "phantom-0")
    config = {"canvas": 256, "spacing_mm": 1.25}

    def widths_mm(share):
        out = []
        for seed in range(40):
            patch, box = detector_sample(item, config, np.random.default_rng(seed), sagittal_share=share)
            row = patch[int(round((box[1] + box[3]) / 2))]
            # the canvas pixel is 1.25 mm within +-15%
            out.append(float((row > 0.3).sum()) * 1.25)
        return np.array(out)

    # every sample a strip: at most 35 mm each side of the 10 mm canal, on pixels up to 15% larger
    assert widths_mm(1.0).max() < 95.0
    # none asked: most samples keep the slice's full width (some are cropped around the canal instead)
    assert np.median(widths_mm(0.0)) > 120.0
