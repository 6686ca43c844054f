"""Shared pytest set-up: make the core library importable from a plain checkout."""

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "SpineStenosisGrader"))

#: real public scans shipped with the repository (see Testing/Data/README.md)
DATA = ROOT / "Testing" / "Data"

# Two cores: keep torch and BLAS from oversubscribing them during tests.
os.environ.setdefault("OMP_NUM_THREADS", "2")
