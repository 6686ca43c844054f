#!/usr/bin/env bash
# Set up .venv/ at the repository root.
#   bash install.sh            everything: grading, training, ONNX export and the tests
#   bash install.sh --runtime  grading only: numpy, SimpleITK, ONNX Runtime (about 0.5 GB, no PyTorch)
#   bash install.sh --tests-without-torch
#                              grading and the tests that need no PyTorch (the core library and the
#                              MRML side on slicer-core), for checking another Python: CI runs
#                              PYTHON=python3.12 VENV=.venv-py312 bash install.sh --tests-without-torch
# torch and torchvision are pinned to the releases this project is tested with; on the
# project's build machines pip takes them from local disk, elsewhere from PyPI.
# PYTHON picks the interpreter (default python3.11) and VENV the folder (default .venv).
set -euo pipefail
cd "$(dirname "$0")"
PYTHON="${PYTHON:-python3.11}"
VENV="${VENV:-.venv}"
command -v "$PYTHON" >/dev/null || PYTHON=python3
if [ ! -x "$VENV/bin/python" ]; then
  "$PYTHON" -m venv "$VENV"
fi
case "${1:-}" in
  --runtime)
    "$VENV/bin/python" -m pip install --quiet -e . ;;
  --tests-without-torch)
    "$VENV/bin/python" -m pip install --quiet -e ".[test]" ;;
  *)
    "$VENV/bin/python" -m pip install --quiet "torch==2.14.1" "torchvision==0.29.1"
    "$VENV/bin/python" -m pip install --quiet -e ".[train,test]" ;;
esac
echo "Set up $VENV: $("$VENV/bin/spine-stenosis-grader" --version) on $("$VENV/bin/python" --version)"
