"""Grading a study in a background process: its command, its progress lines, start, poll and cancel.

A user interface must not freeze while a study is graded, and Cancel must stop
the run at once and leave nothing behind. So the study is graded by the command
line (``python -m SpineStenosisGraderLib.cli grade ... --progress-format jsonl``)
in a process of its own, which reports each stage as one JSON line on stdout,
and the caller polls it from a timer: no thread ever touches the caller's
objects, and killing the process cannot leave an MRML scene half-changed.

Everything a run makes (the study written for the grader, its outputs) lives in
one work folder, removed when the run is cancelled or cleaned up. Qt-free, so
that it is tested here with real processes.
"""

from __future__ import annotations

import enum
import json
import os
import queue
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import SimpleITK as sitk

from ..errors import SpineStenosisGraderError
from ..result import StudyResult
from ..outputs.writers import RESULT_FILE, recover_interrupted_writes

#: the module the background process runs
CLI_MODULE = "SpineStenosisGraderLib.cli"
#: the folder that holds the SpineStenosisGraderLib package (put on the process's PYTHONPATH)
LIBRARY_PARENT = Path(__file__).resolve().parents[2]
INPUT_FILE = "input.nrrd"
OUTPUT_FOLDER = "output"
#: lines of the process's stderr kept to explain a failure
STDERR_TAIL = 20


@dataclass(frozen=True)
class GradingProgress:
    """One progress report of the grader: the stage it started and the overall fraction done."""

    stage: str
    fraction: float


class RunState(enum.Enum):
    NOT_STARTED = "not started"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def finished(self) -> bool:
        return self in (RunState.SUCCEEDED, RunState.FAILED, RunState.CANCELLED)


def grade_command(python: str | Path, input_path: str | Path, output_dir: str | Path,
                  package_dir: str | Path | None = None, modality: str | None = None,
                  region: str | None = None, backend: str | None = None,
                  allow_model_mismatch: bool = False) -> list[str]:
    """The command line that grades ``input_path`` into ``output_dir`` and reports progress as JSON lines.

    ``python`` is the interpreter to run it with (in Slicer, ``PythonSlicer``); None
    for ``package_dir``, ``modality`` and ``region`` leaves them to the grader (the
    embedded package; detected from the image). ``backend`` (``"onnx"``, ``"torch"``)
    is passed only when one is asked for, so that the grader picks by default.
    ``allow_model_mismatch`` grades with a package made for other studies (the user said so).
    """
    command = [str(python), "-m", CLI_MODULE, "grade", str(input_path), "-o", str(output_dir),
               "-q", "--progress-format", "jsonl",
               # the module reads result.json only; the report is made on export, so it costs no wait here
               "--no-report"]
    if package_dir is not None:
        command += ["--model", str(package_dir)]
    if modality is not None:
        command += ["--modality", modality]
    if region is not None:
        command += ["--region", region]
    if backend not in (None, "auto"):
        command += ["--backend", backend]
    if allow_model_mismatch:
        command.append("--allow-model-mismatch")
    return command


def process_environment(base: Mapping[str, str] | None = None,
                        library_parent: str | Path = LIBRARY_PARENT) -> dict[str, str]:
    """``base`` (default: this process's environment) with the library importable and UTF-8 pipes."""
    env = dict(os.environ if base is None else base)
    paths = [str(library_parent)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    # the pipes are read as UTF-8 whatever the system locale (file names in messages)
    env["PYTHONIOENCODING"] = "utf-8"
    env["PYTHONUNBUFFERED"] = "1"
    return env


def parse_progress_line(line: str) -> GradingProgress | None:
    """The progress in one stdout line of the grader, or None if the line is not a progress report.

    Anything else (a library that prints, a blank line) is not progress and is
    ignored rather than treated as an error.
    """
    line = line.strip()
    if not line.startswith("{"):
        return None
    try:
        data = json.loads(line)
    except json.JSONDecodeError:
        return None
    if not isinstance(data, dict) or not isinstance(data.get("stage"), str):
        return None
    fraction = data.get("fraction")
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)):
        return None
    return GradingProgress(data["stage"], min(1.0, max(0.0, float(fraction))))


def failure_message(stderr_lines: Sequence[str], return_code: int | None) -> str:
    """What to tell the user when the grader failed: its own one-line error if it gave one."""
    errors = [line.strip() for line in stderr_lines if line.strip().startswith("error:")]
    if errors:
        return errors[-1][len("error:"):].strip()
    tail = [line.rstrip() for line in stderr_lines if line.strip()]
    if tail:
        # a crash, not a message from the grader: the end of the traceback says what broke
        return "The grader stopped unexpectedly:\n" + "\n".join(tail[-5:])
    return f"The grader stopped unexpectedly (exit code {return_code}) without saying why."


def load_result(output_dir: str | Path) -> StudyResult:
    """The ``StudyResult`` a finished run wrote into ``output_dir``.

    A write into it that was killed outright is undone first, so that the result
    read is a whole one, never a mix of two runs.
    """
    path = Path(output_dir) / RESULT_FILE
    try:
        recover_interrupted_writes(output_dir)
    except OSError as exc:
        raise SpineStenosisGraderError(f"An interrupted write in {output_dir} cannot be undone: "
                                       f"{exc.strerror or exc}.") from None
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise SpineStenosisGraderError(f"The grader wrote no result ({path}: {exc.strerror or exc}).") from None
    try:
        return StudyResult.from_json(text)
    except (ValueError, KeyError, TypeError) as exc:
        raise SpineStenosisGraderError(f"The grader's result {path} cannot be read: {exc}.") from None


def _popen_options() -> dict:
    """Start the process in its own group so that cancelling kills it and everything it started.

    ``PythonSlicer`` is a launcher that starts the real interpreter as a child:
    killing the launcher alone would leave the grading running.
    """
    if os.name == "nt":
        startupinfo = subprocess.STARTUPINFO()
        startupinfo.dwFlags |= subprocess.STARTF_USESHOWWINDOW  # no console window pops up
        startupinfo.wShowWindow = 0
        return {"creationflags": subprocess.CREATE_NEW_PROCESS_GROUP, "startupinfo": startupinfo}
    return {"start_new_session": True}


def _kill_process_tree(process: subprocess.Popen) -> None:
    """Kill ``process`` and every process it started (it leads a group of its own, see ``_popen_options``)."""
    if os.name == "nt":
        if process.poll() is None:
            # /T: the whole tree under the launcher
            subprocess.run(["taskkill", "/F", "/T", "/PID", str(process.pid)], capture_output=True,
                           creationflags=getattr(subprocess, "CREATE_NO_WINDOW", 0), check=False)
    else:
        try:
            # the group outlives its leader: kill it even when the launcher has already exited
            os.killpg(process.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    if process.poll() is None:
        process.kill()


class GradingRun:
    """One study graded in a background process, polled by the caller.

    ``start()`` returns at once; call ``poll()`` (for example from a timer) to get
    the new progress reports and update ``state``; once it is
    ``RunState.SUCCEEDED``, ``result()`` reads the grader's ``StudyResult``.
    ``cancel()`` kills the process and everything it started and removes the work
    folder; ``cleanup()`` removes the work folder after a finished run.
    """

    def __init__(self, command: Sequence[str], work_dir: str | Path,
                 env: Mapping[str, str] | None = None) -> None:
        self.command = [str(part) for part in command]
        self.work_dir = Path(work_dir)
        self.env = dict(env) if env is not None else process_environment()
        self.state = RunState.NOT_STARTED
        #: the last progress report, None before the first one
        self.progress: GradingProgress | None = None
        #: one line saying why the run failed, when it did
        self.error = ""
        self.return_code: int | None = None
        self._process: subprocess.Popen | None = None
        self._stdout_lines: queue.Queue[str] = queue.Queue()
        self._stderr_lines: list[str] = []
        self._readers: list[threading.Thread] = []
        self._started_at = 0.0

    @classmethod
    def for_image(cls, image: sitk.Image, python: str | Path, package_dir: str | Path | None = None,
                  modality: str | None = None, region: str | None = None, backend: str | None = None,
                  temp_root: str | Path | None = None, env: Mapping[str, str] | None = None,
                  allow_model_mismatch: bool = False) -> GradingRun:
        """A run that grades ``image``: written to a new work folder under ``temp_root`` (not started yet)."""
        if temp_root is not None:
            Path(temp_root).mkdir(parents=True, exist_ok=True)
        work_dir = Path(tempfile.mkdtemp(prefix="SpineStenosisGrader-", dir=temp_root))
        try:
            sitk.WriteImage(image, str(work_dir / INPUT_FILE))
        except BaseException:
            shutil.rmtree(work_dir, ignore_errors=True)
            raise
        command = grade_command(python, work_dir / INPUT_FILE, work_dir / OUTPUT_FOLDER, package_dir,
                                modality, region, backend, allow_model_mismatch)
        return cls(command, work_dir, env)

    @property
    def output_dir(self) -> Path:
        return self.work_dir / OUTPUT_FOLDER

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    @property
    def elapsed_s(self) -> float:
        return time.monotonic() - self._started_at if self._started_at else 0.0

    def start(self) -> None:
        if self.state is not RunState.NOT_STARTED:
            raise RuntimeError("A grading run can be started only once.")
        self.work_dir.mkdir(parents=True, exist_ok=True)
        try:
            self._process = subprocess.Popen(
                self.command, env=self.env, cwd=str(self.work_dir), stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, encoding="utf-8", errors="replace",
                **_popen_options(),
            )
        except OSError as exc:
            self._finish(RunState.FAILED, f"Cannot start the grader ({self.command[0]}): {exc.strerror or exc}.")
            self.cleanup()
            raise SpineStenosisGraderError(self.error) from None
        self._started_at = time.monotonic()
        self.state = RunState.RUNNING
        self._readers = [
            threading.Thread(target=self._read_lines, args=(self._process.stdout, self._stdout_lines.put),
                             daemon=True),
            threading.Thread(target=self._read_lines, args=(self._process.stderr, self._stderr_lines.append),
                             daemon=True),
        ]
        for reader in self._readers:
            reader.start()

    @staticmethod
    def _read_lines(stream, sink) -> None:
        # a pipe is read to its end even if nobody polls, so a chatty grader never blocks on a full pipe
        for line in stream:
            sink(line.rstrip("\r\n"))
        stream.close()

    def poll(self) -> list[GradingProgress]:
        """The progress reported since the last call; updates ``state`` when the process has ended."""
        if self.state is not RunState.RUNNING:
            return []
        exited = self._process.poll() is not None
        if exited:
            # the pipes are at their end once the process is gone: read them to the last line
            for reader in self._readers:
                reader.join(timeout=5)
        reports = self._drain_progress()
        if exited:
            self.return_code = self._process.returncode
            if self.return_code == 0 and (self.output_dir / RESULT_FILE).is_file():
                self._finish(RunState.SUCCEEDED)
            else:
                self._finish(RunState.FAILED, failure_message(self._stderr_lines, self.return_code))
        return reports

    def _drain_progress(self) -> list[GradingProgress]:
        reports = []
        while True:
            try:
                line = self._stdout_lines.get_nowait()
            except queue.Empty:
                break
            report = parse_progress_line(line)
            if report is not None:
                reports.append(report)
                self.progress = report
        return reports

    def _finish(self, state: RunState, error: str = "") -> None:
        self.state = state
        self.error = error

    @property
    def warnings(self) -> list[str]:
        """The grader's warnings (also in its result), as it printed them."""
        return [line.strip()[len("warning:"):].strip() for line in self._stderr_lines
                if line.strip().startswith("warning:")]

    def wait(self, timeout_s: float | None = None, interval_s: float = 0.1) -> RunState:
        """Poll until the run has finished (for scripts and tests); cancels it after ``timeout_s``."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while self.state is RunState.RUNNING:
            self.poll()
            if self.state is not RunState.RUNNING:
                break
            if deadline is not None and time.monotonic() > deadline:
                self.cancel()
                raise TimeoutError(f"Grading took more than {timeout_s:.0f} s and was cancelled.")
            time.sleep(interval_s)
        return self.state

    def result(self) -> StudyResult:
        if self.state is not RunState.SUCCEEDED:
            raise RuntimeError(f"The run has no result: it is {self.state.value}.")
        return load_result(self.output_dir)

    def cancel(self) -> None:
        """Stop the run now: kill the process tree and remove the work folder. Harmless once finished."""
        if self.state is RunState.RUNNING:
            _kill_process_tree(self._process)
            try:
                self._process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
            for reader in self._readers:
                reader.join(timeout=5)
            self.return_code = self._process.returncode
            self._finish(RunState.CANCELLED)
        elif self.state is RunState.NOT_STARTED:
            self._finish(RunState.CANCELLED)
        self.cleanup()

    def cleanup(self) -> None:
        """Remove the work folder (the study copy and the grader's outputs)."""
        if self.state is RunState.RUNNING:
            raise RuntimeError("Cancel the run before removing its files.")
        shutil.rmtree(self.work_dir, ignore_errors=True)
