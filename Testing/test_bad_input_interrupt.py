"""Interrupting ``grade``: Ctrl-C and kills leave an earlier run's results whole, and Ctrl-C exits non-zero.

The grader runs as a real process that is signalled while it grades the sample
(its "detect" stage takes seconds), as a user or a job scheduler would do it.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from SpineStenosisGraderLib import cli, pipeline
from SpineStenosisGraderLib.outputs import report as report_module
from SpineStenosisGraderLib.outputs.writers import write_study_outputs
from SpineStenosisGraderLib.review.background import CLI_MODULE, process_environment
from test_cli import SAMPLE
from test_writers import make_images, make_result

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")


def _snapshot(folder: Path) -> dict[str, bytes | None]:
    """Every file and folder under ``folder`` (hidden staging folders included) with its bytes."""
    return {p.relative_to(folder).as_posix(): (p.read_bytes() if p.is_file() else None)
            for p in sorted(folder.rglob("*"))}


@pytest.fixture
def earlier_results(tmp_path) -> Path:
    """An output folder holding a finished earlier run and a file of the user's."""
    out = tmp_path / "out"
    result = make_result()
    write_study_outputs(result, out, make_images(result))
    (out / "my_notes.txt").write_text("the user's own file")
    return out


def _grade_and_signal(out: Path, signum: int) -> tuple[int, list[str], list[dict]]:
    """Grade the sample into ``out`` in a process of its own; send ``signum`` once it is detecting."""
    command = [sys.executable, "-m", CLI_MODULE, "grade", str(SAMPLE), "-o", str(out), "-q",
               "--progress-format", "jsonl"]
    # A terminal's Ctrl-C reaches a grader whose SIGINT is not ignored. A runner that started these tests
    # in the background (as CI may) passes SIGINT on ignored, and Python then leaves it ignored, as nohup
    # users expect; so the grader starts with the terminal's default.
    process = subprocess.Popen(command, env=process_environment(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    stages = []
    try:
        for line in process.stdout:
            stages.append(json.loads(line))
            if stages[-1]["stage"] == "detect":
                break
        # just inside the detector's work: the sample's detection takes about a second on an idle machine,
        # and on a busy one this process may wake late, so a longer wait let the grader finish first
        time.sleep(0.05)
        process.send_signal(signum)
        stdout, stderr = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    stages += [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]
    return process.returncode, stderr.strip().splitlines(), stages


def test_ctrl_c_while_grading_exits_130_and_leaves_the_earlier_results_whole(earlier_results):
    before = _snapshot(earlier_results)
    code, errors, stages = _grade_and_signal(earlier_results, signal.SIGINT)
    assert "write" not in [s["stage"] for s in stages], "the run got to writing before the signal: no test"
    assert code == 130
    assert errors == ["error: interrupted; nothing was written (the output folder is as it was)."]
    assert _snapshot(earlier_results) == before


def test_sigterm_while_grading_exits_143_and_leaves_the_earlier_results_whole(earlier_results):
    before = _snapshot(earlier_results)
    code, errors, stages = _grade_and_signal(earlier_results, signal.SIGTERM)
    assert "write" not in [s["stage"] for s in stages]
    assert code == 143 and errors[-1].startswith("error: interrupted; nothing was written")
    assert _snapshot(earlier_results) == before


def test_a_kill_while_grading_leaves_the_earlier_results_whole(earlier_results):
    before = _snapshot(earlier_results)
    code, _, stages = _grade_and_signal(earlier_results, signal.SIGKILL)
    assert "write" not in [s["stage"] for s in stages]
    assert code == -signal.SIGKILL
    assert _snapshot(earlier_results) == before


@pytest.fixture
def quick_grading(monkeypatch):
    """``grade`` without the seconds of grading: the pipeline gives a finished result at once."""
    result = make_result()
    monkeypatch.setattr(pipeline, "grade_file", lambda *args, **kwargs: (result, None))
    monkeypatch.setattr(pipeline, "representative_slices", lambda result, stack: make_images(result))


@pytest.mark.parametrize("signal_name, code", [("SIGINT", 130), ("SIGTERM", 143)])
def test_an_interruption_while_writing_leaves_the_earlier_results_whole(earlier_results, quick_grading, monkeypatch,
                                                                       capsys, signal_name, code):
    """Ctrl-C (or SIGTERM) after some new files are written: every one is taken back, the earlier run stays."""
    before = _snapshot(earlier_results)
    interruption = KeyboardInterrupt if signal_name == "SIGINT" else cli.Terminated

    def interrupted(*args, **kwargs):
        raise interruption()

    monkeypatch.setattr(report_module, "write_html_report", interrupted)  # after result.json, levels.csv, markups
    assert cli.main(["grade", str(SAMPLE), "-o", str(earlier_results), "-q"]) == code
    assert capsys.readouterr().err.strip().splitlines() == [
        "error: interrupted; nothing was written (the output folder is as it was)."]
    assert _snapshot(earlier_results) == before


def test_an_interruption_after_writing_says_the_results_are_there(tmp_path, quick_grading, monkeypatch, capsys):
    def interrupted_summary(*args, **kwargs):
        if kwargs.get("file") is not sys.stderr:  # the summary on stdout, after the writing
            raise KeyboardInterrupt()
        print(*args, **kwargs)

    monkeypatch.setattr(cli, "print", interrupted_summary, raising=False)
    out = tmp_path / "out"
    assert cli.main(["grade", str(SAMPLE), "-o", str(out)]) == 130
    assert f"interrupted after the results were written to {out}" in capsys.readouterr().err
    assert (out / "result.json").is_file()


def test_sigterm_handler_is_restored_after_main(quick_grading, tmp_path):
    before = signal.getsignal(signal.SIGTERM)
    assert cli.main(["grade", str(SAMPLE), "-o", str(tmp_path / "out"), "-q"]) == 0
    assert signal.getsignal(signal.SIGTERM) is before


class _Stopped(Exception):
    pass


def _module_that_swallows_an_interrupt(folder: Path, name: str, signum: int) -> None:
    # like ONNX Runtime's compiled module: a signal taken while it loads becomes an ImportError
    (folder / f"{name}.py").write_text(
        "import os, signal, time\n"
        "try:\n"
        f"    os.kill(os.getpid(), {int(signum)})\n"
        "    time.sleep(0.2)\n"
        "except BaseException as exc:\n"
        "    raise ImportError('import numpy failed') from exc\n"
        "LOADED = True\n")


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_while_a_backend_loads_interrupts_the_run_after_the_import_and_is_not_taken_for_a_missing_module(
        tmp_path, monkeypatch, signum):
    from SpineStenosisGraderLib.packages.package import import_holding_signals

    name = f"backend_loading_{int(signum)}"
    _module_that_swallows_an_interrupt(tmp_path, name, signum)
    monkeypatch.syspath_prepend(str(tmp_path))

    def stop(*_):
        raise _Stopped()

    previous = {s: signal.signal(s, stop) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        with pytest.raises(_Stopped):
            import_holding_signals(name)
        # the module loaded whole, and the run's own handlers are back
        assert sys.modules[name].LOADED is True
        assert signal.getsignal(signal.SIGINT) is stop and signal.getsignal(signal.SIGTERM) is stop
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        sys.modules.pop(name, None)


def test_ctrl_c_early_in_the_detect_stage_is_never_lost(tmp_path):
    # it was lost about one time in four when it came while ONNX Runtime loaded, 0.05 s into the stage: the
    # grader then fell back to PyTorch and wrote its results. Ten tries, each as the user's Ctrl-C would come
    # (the unit test above is the exact check; this one failed in 2 of 3 runs without the fix)
    for attempt in range(10):
        code, _, stages = _grade_and_signal(tmp_path / f"out{attempt}", signal.SIGINT)
        assert code == 130 and "write" not in [s["stage"] for s in stages], f"attempt {attempt}: the run went on"
        assert not (tmp_path / f"out{attempt}").exists()
