"""The command line end to end on the embedded default model, and its handling of bad input."""

import csv
import json
import shutil

import numpy as np
import pytest
import SimpleITK as sitk

from conftest import DATA
from SpineStenosisGraderLib.training.annotations import load_scans
from SpineStenosisGraderLib.cli import main
from SpineStenosisGraderLib.training.evaluation import match_levels
from SpineStenosisGraderLib.packages.package import DEFAULT_PACKAGE_DIR
from SpineStenosisGraderLib.result import StudyResult

SAMPLE = DATA / "totalsegmentator_ct" / "example_ct.nii.gz"


@pytest.fixture(scope="module")
def graded_sample(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "out"
    assert main(["grade", str(SAMPLE), "-o", str(out), "-q"]) == 0
    return out


@pytest.fixture(scope="module")
def graded_anyway(tmp_path_factory):
    """The sample graded past the package's grade scope, as a researcher may ask."""
    out = tmp_path_factory.mktemp("cli") / "anyway"
    assert main(["grade", str(SAMPLE), "-o", str(out), "-q", "--allow-model-mismatch"]) == 0
    return out


def test_grade_writes_every_output(graded_sample):
    names = {p.name for p in graded_sample.iterdir()}
    assert {"result.json", "levels.csv", "report.html"} <= names
    result = StudyResult.from_json((graded_sample / "result.json").read_text())
    assert len(result.levels) >= 4
    for level in result.levels:
        assert f"{level.name}.mrk.json" in names
    assert result.model.name == "spine-stenosis-grader-default"
    assert "not for clinical use" in result.model.clinical_use.lower()
    assert len(result.detections) >= 30
    rows = (graded_sample / "levels.csv").read_text().strip().splitlines()
    assert len(rows) == len(result.levels) + 1


def test_the_default_package_locates_but_does_not_grade_a_ct_and_every_output_says_so(graded_sample):
    """Its grade learned from phantoms calls most levels of real CT without stenosis stenosed: on CT the
    levels are found and named, the grade is left to the clinician, and the user is told why."""
    result = StudyResult.from_json((graded_sample / "result.json").read_text())
    assert [lv.name for lv in result.levels] == ["L5-S1", "L4-L5", "L3-L4", "L2-L3", "L1-L2", "T12-L1"]
    assert all(level.grade is None for level in result.levels)
    (scope,) = [w for w in result.warnings if "shows its grade on MR studies only, not CT" in w]
    assert "--allow-model-mismatch" in scope
    # the package grades lumbar levels, so the "other region" warning must not appear
    assert not any("grades lumbar levels only" in w for w in result.warnings)
    with open(graded_sample / "levels.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [row["grade"] for row in rows] == [""] * len(result.levels)
    for level in result.levels:
        markups = json.loads((graded_sample / f"{level.name}.mrk.json").read_text())
        assert not any(m["name"] == "Schizas grade" for m in markups["markups"][0].get("measurements", []))
    assert "not graded" in (graded_sample / "report.html").read_text()


def test_every_level_has_a_grade_of_the_scale_and_the_csv_says_the_same(graded_anyway):
    """The grade fields, checked against the scale's definition (not against what the code computed)."""
    uncertain_below = json.loads((DEFAULT_PACKAGE_DIR / "manifest.json").read_text())["classifier"]["uncertain_below"]
    result = StudyResult.from_json((graded_anyway / "result.json").read_text())
    assert any("shows its grade on MR studies only" in w and "Graded anyway, as asked." in w
               for w in result.warnings)
    with open(graded_anyway / "levels.csv", newline="") as handle:
        rows = {row["level"]: row for row in csv.DictReader(handle)}
    for level in result.levels:
        grade = level.grade
        assert grade.grade in ("A", "B", "C", "D")  # Schizas: none or minor, moderate, severe, extreme
        assert list(grade.probabilities) == ["A", "B", "C", "D"]
        assert all(0.0 <= p <= 1.0 for p in grade.probabilities.values())
        assert sum(grade.probabilities.values()) == pytest.approx(1.0, abs=1e-4)
        # the grade is the most probable class, and "uncertain" says its probability is below the manifest's bar
        # (or that the canal was not seen at the level)
        assert grade.probabilities[grade.grade] == max(grade.probabilities.values())
        assert grade.uncertain == (grade.probabilities[grade.grade] < uncertain_below or not level.canal_seen)
        row = rows[level.name]
        assert (row["grade"], row["scale"], row["final_grade"]) == (grade.grade, "schizas", grade.grade)
        assert row["uncertain"] == ("true" if grade.uncertain else "false")
        for name, p in grade.probabilities.items():
            assert float(row[f"prob_{name}"]) == pytest.approx(p, abs=1e-4)
        markups = json.loads((graded_anyway / f"{level.name}.mrk.json").read_text())
        (measurement, *_) = markups["markups"][0]["measurements"]
        assert measurement["name"] == "Schizas grade" and measurement["printFormat"].startswith(f"{grade.grade} (p=")


def test_sample_levels_land_on_the_real_discs(graded_sample):
    """Every labelled disc of the sample has a level within 8 mm, and each level's box is on the canal."""
    scan = next(s for s in load_scans(DATA / "scans.json") if s.name == "totalsegmentator_ct")
    result = StudyResult.from_json((graded_sample / "result.json").read_text())
    dz = scan.stack.spacing[2]
    lumbar = {name: z for name, z in scan.discs.items() if name != "T11-T12"}  # T11-T12 lies at the stack's end
    matches = match_levels([lv.slice_index for lv in result.levels], list(lumbar.values()), 8.0 / dz)
    assert len(matches) == len(lumbar)
    for level in result.levels:
        k, (i0, j0, i1, j1) = scan.stack.box_to_slice(level.box)
        ref = scan.boxes.get(level.slice_index)
        if ref is not None:
            ci, cj = (i0 + i1) / 2, (j0 + j1) / 2
            assert ref[0] - 2 <= ci <= ref[2] + 2 and ref[1] - 2 <= cj <= ref[3] + 2


def test_reanchoring_on_the_sample_gives_the_labelled_names(tmp_path):
    """The sample reaches down into the sacrum, where rudimentary sacral discs look like discs and
    push the default count (from the bottom) off; one anchor at the top puts every name right."""
    scan = next(s for s in load_scans(DATA / "scans.json") if s.name == "totalsegmentator_ct")
    out = tmp_path / "anchored"
    assert main(["grade", str(SAMPLE), "-o", str(out), "-q", "--highest-level", "T12-L1"]) == 0
    result = StudyResult.from_json((out / "result.json").read_text())
    dz = scan.stack.spacing[2]
    named = {lv.name: lv.slice_index for lv in result.levels}
    for name in ("L5-S1", "L4-L5", "L3-L4", "L2-L3", "L1-L2", "T12-L1"):
        assert abs(named[name] - scan.discs[name]) * dz <= 8.0, name
    # the anchored levels are lumbar, and the default package does not grade a CT
    l4_l5 = next(level for level in result.levels if level.name == "L4-L5")
    assert l4_l5.region == "lumbar" and l4_l5.grade is None


def test_lowest_level_reanchors_names(tmp_path):
    out = tmp_path / "anchored"
    assert main(["grade", str(SAMPLE), "-o", str(out), "-q", "--lowest-level", "L4-L5"]) == 0
    result = json.loads((out / "result.json").read_text())
    assert result["levels"][0]["name"] == "L4-L5"
    assert "anchor" in result["study"]["numbering"]


def test_truncated_input_fails_cleanly(tmp_path, capsys):
    data = SAMPLE.read_bytes()
    bad = tmp_path / "cut.nii.gz"
    bad.write_bytes(data[: len(data) // 2])
    out = tmp_path / "out"
    assert main(["grade", str(bad), "-o", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and "truncated" in err[0]
    assert not out.exists()


def test_2d_input_fails_cleanly(tmp_path, capsys):
    path = tmp_path / "slice.nrrd"
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((64, 64), np.float32)), str(path))
    assert main(["grade", str(path), "-o", str(tmp_path / "out")]) == 2
    assert "2D" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_tampered_model_is_refused(tmp_path, capsys):
    package = tmp_path / "pkg"
    shutil.copytree(DEFAULT_PACKAGE_DIR, package)
    weights = package / "detector.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    assert main(["grade", str(SAMPLE), "-o", str(tmp_path / "out"), "--model", str(package)]) == 2
    assert "SHA256" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_foreign_model_is_refused(tmp_path, capsys):
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "manifest.json").write_text(json.dumps({"name": "x", "files": {"detector": {"path": "m.pt"}}}))
    (foreign / "m.pt").write_bytes(b"\x80\x04not a model")
    assert main(["grade", str(SAMPLE), "-o", str(tmp_path / "out"), "--model", str(foreign)]) == 2
    assert "not a SpineStenosisGrader model package" in capsys.readouterr().err


def test_output_that_is_a_file_fails_before_grading(tmp_path, capsys):
    target = tmp_path / "results.txt"
    target.write_text("mine")
    assert main(["grade", str(SAMPLE), "-o", str(target)]) == 2
    assert "is a file" in capsys.readouterr().err
    assert target.read_text() == "mine"


def test_a_bad_level_name_fails_before_grading(tmp_path, capsys):
    assert main(["grade", str(SAMPLE), "-o", str(tmp_path / "out"), "--lowest-level", "L9-L10"]) == 2
    assert "not a disc level name" in capsys.readouterr().err


def test_evaluate_refuses_to_store_training_scans_as_held_out(capsys):
    assert main(["evaluate", "--scans", "train", "--write-manifest"]) == 2
    assert "held-out" in capsys.readouterr().err


def _one_scan_catalogue(tmp_path, use):
    """A catalogue of the true-axial T2* scan alone (15 slices: quick), with the ``use`` given."""
    entry = next(e for e in json.loads((DATA / "scans.json").read_text())["scans"] if e["name"] == "sct_errsm_18_gre")
    entry["image"] = str(DATA / entry["image"])
    entry["canal"] = dict(entry["canal"], file=str(DATA / entry["canal"]["file"]))
    catalogue = tmp_path / "scans.json"
    catalogue.write_text(json.dumps({"scans": [dict(entry, use=use)]}))
    return catalogue


def test_leave_one_out_scores_a_scan_no_package_trains_on_with_the_package_itself(tmp_path, capsys):
    folds = tmp_path / "folds"
    folds.mkdir()
    catalogue = _one_scan_catalogue(tmp_path, "holdout")
    assert main(["evaluate", "--real-only", "--catalogue", str(catalogue), "--fold-packages", str(folds)]) == 0
    metrics = json.loads(capsys.readouterr().out)["real_scans"]
    assert "scans that no package trains on (use: holdout) by" in metrics["data"]
    (score,) = metrics["per_scan"]
    assert score["scan"] == "sct_errsm_18_gre" and not score["trained_on"]
    assert score["canal"]["reference_slices"] == 15
    # its discs were read by eye (scans.json): they are scored, and a level far from all of them is false
    assert score["discs"]["reference"] is True and score["discs"]["inside_study"] == 5
    assert score["levels"]["false_means"] == "farther than 10 mm from every disc"
    # a scan the packages train on still needs its fold: the package itself saw it
    catalogue = _one_scan_catalogue(tmp_path, "train")
    assert main(["evaluate", "--real-only", "--catalogue", str(catalogue), "--fold-packages", str(folds)]) == 2
    assert "No fold package for sct_errsm_18_gre" in capsys.readouterr().err


def test_jsonl_progress_is_one_json_object_per_line_on_stdout(tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["grade", str(SAMPLE), "-o", str(out), "-q", "--progress-format", "jsonl"]) == 0
    lines = capsys.readouterr().out.splitlines()
    events = [json.loads(line) for line in lines]  # with -q, nothing but progress on stdout
    assert all(set(event) == {"stage", "fraction"} for event in events)
    assert [e["stage"] for e in events] == ["read", "detect", "levels", "grade", "write", "done"]
    fractions = [e["fraction"] for e in events]
    assert fractions == sorted(fractions) and fractions[0] == 0.0 and fractions[-1] == 1.0
    assert (out / "result.json").exists()


def test_jsonl_progress_stops_before_a_bad_input_with_the_error_on_stderr(tmp_path, capsys):
    path = tmp_path / "slice.nrrd"
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((64, 64), np.float32)), str(path))
    assert main(["grade", str(path), "-o", str(tmp_path / "out"), "--progress-format", "jsonl"]) == 2
    captured = capsys.readouterr()
    assert [json.loads(line)["stage"] for line in captured.out.splitlines()] == ["read"]
    assert captured.err.startswith("error:") and "2D" in captured.err


def test_no_report_leaves_the_report_out_and_removes_an_earlier_one(tmp_path):
    mr = DATA / "tptbox" / "sample_mri" / "sub-mri_label-6_T2w.nii.gz"
    out = tmp_path / "out"
    assert main(["grade", str(mr), "-o", str(out), "-q"]) == 0
    assert (out / "report.html").exists()
    assert main(["grade", str(mr), "-o", str(out), "-q", "--no-report"]) == 0
    assert not (out / "report.html").exists()
    assert StudyResult.from_json((out / "result.json").read_text()).levels


def _sample_with(tmp_path, change):
    image = sitk.ReadImage(str(SAMPLE))
    array = sitk.GetArrayFromImage(image).astype(np.float32)
    change(array)
    changed = sitk.GetImageFromArray(array)
    changed.CopyInformation(image)
    path = tmp_path / "bad.nii"
    sitk.WriteImage(changed, str(path))
    return path


def _nan_region(array):
    array[40:50, 30:60, 30:60] = np.nan


def _one_inf(array):
    array[50, 50, 50] = np.inf


def _zero_spacing_file(tmp_path):
    import struct

    path = _sample_with(tmp_path, lambda array: None)
    header = bytearray(path.read_bytes())
    struct.pack_into("<f", header, 80, 0.0)  # pixdim[1]: the first axis has no size
    path.write_bytes(bytes(header))
    return path


@pytest.mark.parametrize("make, message", [
    (lambda tmp_path: _sample_with(tmp_path, _nan_region), "NaN"),
    (lambda tmp_path: _sample_with(tmp_path, _one_inf), "1 voxel is infinite"),
    (_zero_spacing_file, "spacing of 0 x 3 x 3 mm"),
], ids=["nan-region", "one-inf-voxel", "zero-spacing"])
def test_bad_voxel_values_and_spacing_are_one_line_errors_and_write_nothing(tmp_path, capsys, make, message):
    path = make(tmp_path)
    out = tmp_path / "out"
    assert main(["grade", str(path), "-o", str(out), "--progress-format", "jsonl"]) == 2
    captured = capsys.readouterr()
    err = captured.err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and message in err[0]
    assert "done" not in captured.out
    assert not out.exists()


def test_background_grading_never_imports_matplotlib_or_tqdm(tmp_path):
    """The Slicer module grades with --no-report --progress-format jsonl: requirements.txt leaves both out."""
    import subprocess
    import sys

    from conftest import ROOT

    blocker = (
        "import sys, importlib.abc\n"
        "class Block(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in ('matplotlib', 'tqdm'):\n"
        "            raise ImportError('blocked: ' + name)\n"
        "sys.meta_path.insert(0, Block())\n"
        "from SpineStenosisGraderLib.cli import main\n"
        "sys.exit(main(sys.argv[1:]))\n"
    )
    out = tmp_path / "out"
    done = subprocess.run(
        [sys.executable, "-c", blocker, "grade", str(SAMPLE), "-o", str(out), "--no-report",
         "--progress-format", "jsonl"],
        capture_output=True, text=True, timeout=600, cwd=ROOT,
        env={**__import__("os").environ, "PYTHONPATH": str(ROOT / "SpineStenosisGrader")})
    assert done.returncode == 0, done.stderr
    assert (out / "result.json").exists() and not (out / "report.html").exists()
    requirements = (ROOT / "SpineStenosisGrader" / "Resources" / "requirements.txt").read_text()
    names = [line.split(">")[0].split("=")[0].strip().lower() for line in requirements.splitlines()
             if line.strip() and not line.startswith("#")]
    assert "matplotlib" not in names and "tqdm" not in names
