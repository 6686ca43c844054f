#!/usr/bin/env bash
# Set up .venv/ at the repository root.
#   bash install.sh            everything: grading, training, ONNX export and the tests
#   bash install.sh --runtime  grading only: numpy, SimpleITK, ONNX Runtime (about 0.5 GB, no PyTorch)
# torch and torchvision are pinned to the releases this project is tested with; on the
# project's build machines pip takes them from local disk, elsewhere from PyPI.
set -euo pipefail
cd "$(dirname "$0")"
PYTHON="${PYTHON:-python3.11}"
command -v "$PYTHON" >/dev/null || PYTHON=python3
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
if [ "${1:-}" = "--runtime" ]; then
  .venv/bin/python -m pip install --quiet -e .
else
  .venv/bin/python -m pip install --quiet "torch==2.14.1" "torchvision==0.29.1"
  .venv/bin/python -m pip install --quiet -e ".[train,test]"
fi
echo "Set up .venv: $(.venv/bin/spine-stenosis-grader --version)"
