"""Shared pytest set-up: make the core library importable from a plain checkout."""

import importlib.util
import os
import sys
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "SpineStenosisGrader"))

#: real public scans shipped with the repository (see Testing/Data/README.md)
DATA = ROOT / "Testing" / "Data"


def load_script(path: Path, name: str) -> ModuleType:
    """Import a script of the repository that is not in a package (benchmarks/, Resources/Screenshots/) by its path."""
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# Two cores: keep torch and BLAS from oversubscribing them during tests.
os.environ.setdefault("OMP_NUM_THREADS", "2")


import locale  # noqa: E402

import pytest  # noqa: E402

#: the locale the test session started with
INITIAL_LOCALE = locale.setlocale(locale.LC_ALL)


@pytest.fixture(autouse=True)
def _locale_kept():
    """Put back the session's locale after each test: GDCM's DICOM writer (in a test or in a module
    fixture) sets the C locale for the whole process, and every later test's subprocess output would
    then be decoded as ASCII."""
    yield
    locale.setlocale(locale.LC_ALL, INITIAL_LOCALE)
