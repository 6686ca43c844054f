"""Grading in a background process: the command, progress lines, and real runs that succeed, fail and are cancelled."""

import os
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import DATA, ROOT
from SpineStenosisGraderLib.review.background import (
    INPUT_FILE,
    GradingProgress,
    GradingRun,
    RunState,
    failure_message,
    grade_command,
    load_result,
    parse_progress_line,
    process_environment,
)
from SpineStenosisGraderLib.cli import build_parser
from SpineStenosisGraderLib.errors import SpineStenosisGraderError
from SpineStenosisGraderLib.packages.package import DEFAULT_PACKAGE_DIR

SAMPLE = DATA / "totalsegmentator_ct" / "example_ct.nii.gz"
LIBRARY_PARENT = ROOT / "SpineStenosisGrader"


def _cli_args(command):
    """The arguments the CLI would parse from ``command`` (python -m SpineStenosisGraderLib.cli ...)."""
    assert command[1:3] == ["-m", "SpineStenosisGraderLib.cli"]
    return build_parser().parse_args(command[3:])


def test_command_grades_into_the_output_folder_with_jsonl_progress():
    command = grade_command("/opt/Slicer/bin/PythonSlicer", "/tmp/w/input.nrrd", "/tmp/w/output")
    assert command[0] == "/opt/Slicer/bin/PythonSlicer"
    args = _cli_args(command)
    assert (args.command, args.input, args.output) == ("grade", "/tmp/w/input.nrrd", "/tmp/w/output")
    assert args.progress_format == "jsonl" and args.quiet and args.no_report
    assert args.model is None and args.modality is None and args.region is None


def test_command_passes_the_package_modality_and_region_it_is_given():
    args = _cli_args(grade_command("python", "in.nrrd", "out", DEFAULT_PACKAGE_DIR, "MR", "cervical"))
    assert (args.model, args.modality, args.region) == (str(DEFAULT_PACKAGE_DIR), "MR", "cervical")


def test_command_asks_for_a_backend_only_when_one_is_chosen():
    assert "--backend" not in grade_command("python", "in.nrrd", "out", backend="auto")
    assert _cli_args(grade_command("python", "in.nrrd", "out")).backend == "auto"
    for backend in ("onnx", "torch"):
        assert _cli_args(grade_command("python", "in.nrrd", "out", backend=backend)).backend == backend


def test_command_overrides_the_package_check_only_when_the_user_said_so():
    assert not _cli_args(grade_command("python", "in.nrrd", "out")).allow_model_mismatch
    assert _cli_args(grade_command("python", "in.nrrd", "out", allow_model_mismatch=True)).allow_model_mismatch


def test_environment_puts_the_library_first_and_keeps_the_callers_path():
    env = process_environment({"PYTHONPATH": os.pathsep.join(["/a", str(LIBRARY_PARENT)]), "HOME": "/h"},
                              LIBRARY_PARENT)
    assert env["PYTHONPATH"].split(os.pathsep) == [str(LIBRARY_PARENT), "/a"]
    assert env["HOME"] == "/h" and env["PYTHONIOENCODING"] == "utf-8"


@pytest.mark.parametrize("line, expected", [
    ('{"stage": "detect", "fraction": 0.05}', GradingProgress("detect", 0.05)),
    ('  {"stage": "done", "fraction": 1}\n', GradingProgress("done", 1.0)),
    ('{"stage": "odd", "fraction": 1.5}', GradingProgress("odd", 1.0)),
    ('{"stage": "detect", "fraction": true}', None),
    ('{"stage": 3, "fraction": 0.5}', None),
    ('{"fraction": 0.5}', None),
    ('{"stage": "detect"', None),
    ('["stage", 0.5]', None),
    ("L4-L5  slice   40  B (p=0.80)", None),
    ("", None),
])
def test_progress_lines_are_parsed_and_anything_else_is_ignored(line, expected):
    assert parse_progress_line(line) == expected


def test_failure_message_prefers_the_graders_own_error_line():
    assert failure_message(["warning: thin slices", "error: The image is 2D; load the series."], 2) == \
        "The image is 2D; load the series."
    crash = failure_message(["Traceback (most recent call last):", '  File "x.py"', "MemoryError"], 1)
    assert crash.startswith("The grader stopped unexpectedly") and crash.endswith("MemoryError")
    assert "exit code -9" in failure_message([], -9)


def test_load_result_says_what_is_wrong(tmp_path):
    with pytest.raises(SpineStenosisGraderError, match="wrote no result"):
        load_result(tmp_path)
    (tmp_path / "result.json").write_text('{"schema": "something else"}')
    with pytest.raises(SpineStenosisGraderError, match="cannot be read"):
        load_result(tmp_path)


def test_a_run_grades_the_sample_in_the_background(tmp_path):
    # graded past the default package's grade scope (it shows no grade on CT), so that the run's grade step works
    run = GradingRun.for_image(sitk.ReadImage(str(SAMPLE)), sys.executable, DEFAULT_PACKAGE_DIR,
                               temp_root=tmp_path / "temp", env=process_environment(library_parent=LIBRARY_PARENT),
                               allow_model_mismatch=True)
    assert run.work_dir.parent == tmp_path / "temp" and (run.work_dir / INPUT_FILE).is_file()
    assert run.state is RunState.NOT_STARTED and run.poll() == []
    started = time.monotonic()
    run.start()
    assert time.monotonic() - started < 2.0  # start() does not wait for the grading
    stages = []
    while run.state is RunState.RUNNING:
        stages += [report.stage for report in run.poll()]
        assert time.monotonic() - started < 300
        time.sleep(0.05)
    assert run.state is RunState.SUCCEEDED, run.error
    assert stages == ["read", "detect", "levels", "grade", "write", "done"]
    assert run.progress == GradingProgress("done", 1.0) and run.return_code == 0
    result = run.result()
    assert len(result.levels) >= 4 and all(level.grade is not None for level in result.levels)
    assert any("Graded anyway, as asked." in w for w in result.warnings)
    assert result.study.source.endswith(INPUT_FILE)
    with pytest.raises(RuntimeError):
        run.start()
    run.cleanup()
    assert not run.work_dir.exists()


def test_a_failed_run_reports_the_graders_error(tmp_path):
    flat = sitk.GetImageFromArray(np.zeros((64, 64), np.float32))
    run = GradingRun.for_image(flat, sys.executable, temp_root=tmp_path,
                               env=process_environment(library_parent=LIBRARY_PARENT))
    run.start()
    assert run.wait(timeout_s=120) is RunState.FAILED
    assert run.return_code == 2 and "2D" in run.error
    with pytest.raises(RuntimeError):
        run.result()
    run.cleanup()
    assert not run.work_dir.exists()


def test_a_program_that_cannot_start_leaves_nothing_behind(tmp_path):
    run = GradingRun.for_image(sitk.ReadImage(str(SAMPLE)), tmp_path / "no-such-python", temp_root=tmp_path)
    with pytest.raises(SpineStenosisGraderError, match="Cannot start the grader"):
        run.start()
    assert run.state is RunState.FAILED and not run.work_dir.exists()


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    status = Path(f"/proc/{pid}/stat")
    # killed but not yet reaped by init: a zombie runs nothing
    return status.exists() and status.read_text().split(")")[-1].split()[0] == "Z"


@pytest.mark.skipif(os.name == "nt", reason="checks the process tree through POSIX process IDs")
def test_cancel_kills_the_launcher_and_the_grader_it_started_and_removes_the_files(tmp_path):
    """PythonSlicer is a launcher that runs the interpreter as its child; Cancel must stop both."""
    launcher = tmp_path / "launcher.py"
    child_pid_file = tmp_path / "child.pid"
    launcher.write_text(
        "import pathlib, subprocess, sys\n"
        "child = subprocess.Popen(sys.argv[2:])\n"
        "pathlib.Path(sys.argv[1]).write_text(str(child.pid))\n"
        "sys.exit(child.wait())\n"
    )
    run = GradingRun.for_image(sitk.ReadImage(str(SAMPLE)), sys.executable, temp_root=tmp_path / "temp",
                               env=process_environment(library_parent=LIBRARY_PARENT))
    run.command = [sys.executable, str(launcher), str(child_pid_file), *run.command]
    run.start()
    deadline = time.monotonic() + 120
    while run.progress is None:  # the grader itself is running once it reports
        run.poll()
        assert run.state is RunState.RUNNING, run.error
        assert time.monotonic() < deadline
        time.sleep(0.05)
    launcher_pid, grader_pid = run.pid, int(child_pid_file.read_text())
    run.cancel()
    assert run.state is RunState.CANCELLED
    assert not run.work_dir.exists()
    deadline = time.monotonic() + 10
    while not (_gone(launcher_pid) and _gone(grader_pid)):
        assert time.monotonic() < deadline, "the grader survived Cancel"
        time.sleep(0.05)
    assert run.poll() == [] and run.state is RunState.CANCELLED
    run.cancel()  # a second Cancel is harmless


def test_wait_cancels_a_run_that_takes_too_long(tmp_path):
    run = GradingRun([sys.executable, "-c", "import time; time.sleep(60)"], tmp_path / "work")
    run.start()
    with pytest.raises(TimeoutError):
        run.wait(timeout_s=0.5)
    assert run.state is RunState.CANCELLED and not (tmp_path / "work").exists()


#: a grader that would run for a minute: it reports progress, then sleeps, with a child that sleeps too;
#: both ignore SIGTERM and SIGINT, so that only a kill that cannot be refused stops them in time
_MINUTE_LONG_GRADER = """
import json, pathlib, signal, subprocess, sys, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
signal.signal(signal.SIGINT, signal.SIG_IGN)
child = subprocess.Popen([sys.executable, "-c", "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
                          "signal.signal(signal.SIGINT, signal.SIG_IGN); time.sleep(60)"])
pathlib.Path(sys.argv[1]).write_text(str(child.pid))
print(json.dumps({"stage": "detect", "fraction": 0.05}), flush=True)
time.sleep(60)
"""


@pytest.mark.skipif(os.name == "nt", reason="checks the process tree through POSIX process IDs")
def test_cancel_stops_a_minute_long_run_and_its_children_within_two_seconds(tmp_path):
    """A run that would go on for a minute, so that a Cancel that kills nothing cannot pass by waiting."""
    script, child_pid_file = tmp_path / "grader.py", tmp_path / "child.pid"
    script.write_text(_MINUTE_LONG_GRADER)
    run = GradingRun([sys.executable, str(script), str(child_pid_file)], tmp_path / "work")
    run.start()
    deadline = time.monotonic() + 30
    while run.progress is None or not child_pid_file.exists():
        run.poll()
        assert run.state is RunState.RUNNING, run.error
        assert time.monotonic() < deadline
        time.sleep(0.05)
    pids = [run.pid, int(child_pid_file.read_text())]
    assert not any(_gone(pid) for pid in pids)
    try:
        started = time.monotonic()
        run.cancel()
        assert time.monotonic() - started < 2.0, "cancel() did not return promptly"
        assert run.state is RunState.CANCELLED and not (tmp_path / "work").exists()
        while not all(_gone(pid) for pid in pids):
            assert time.monotonic() - started < 2.0, "a process of the run survived Cancel"
            time.sleep(0.02)
    finally:
        for pid in pids:  # when Cancel failed: leave no sleeper behind
            if not _gone(pid):
                os.kill(pid, 9)
