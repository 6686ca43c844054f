"""Kernels chosen to round alike on x86-64 CPUs, so that ``train`` gives the same weights on more of them.

torch, oneDNN and MKL each pick a kernel for the CPU they run on (AVX-512 and
AMX on one Xeon, AVX2 on an older EPYC), and the kernels sum in different
orders. Over hundreds of training steps those last-bit differences grow into
other weights. Training therefore runs with:

- torch's own vectorised kernels held to AVX2 (``ATEN_CPU_CAPABILITY``), which
  every x86-64 CPU this project runs on has;
- MKL in its strict conditional-reproducibility mode on its ``COMPATIBLE``
  branch (``MKL_CBWR``), the one branch Intel documents as giving the same
  results on Intel and non-Intel CPUs alike (the AVX2 branch falls back to
  per-CPU dispatch on non-Intel CPUs);
- oneDNN off, because it sizes its blocks, and so its sums, by the CPU's caches;
  convolutions then run as im2col and MKL's matrix product.

Both variables are read when torch and MKL load, so the training command runs
itself again in a child process with them set (``cli.py``). The price is time:
on 2 cores the default package takes about 61 minutes instead of 11 (the
detector about three times slower, the classifier more).

They are not enough: Intel Xeons remake the shipped package byte for byte, but
an AMD EPYC (AVX-512) with these settings made other weights on 5 December 2026
(README, "Retraining the default model").
"""

from __future__ import annotations

import os
import platform
import sys
from typing import Mapping, Optional

#: the settings meant to make training's kernels the same on every x86-64 CPU (an AMD EPYC still differs)
PORTABLE_KERNELS = {"ATEN_CPU_CAPABILITY": "avx2", "MKL_CBWR": "COMPATIBLE,STRICT"}
#: every environment variable that picks or limits the kernels of torch, oneDNN and MKL, so changes the weights
#: (a package's manifest records those set); the portable settings are among them by construction
KERNEL_VARIABLES = (*PORTABLE_KERNELS, "ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA", "MKL_ENABLE_INSTRUCTIONS")


def portable_kernels_apply() -> bool:
    """True on x86-64, the only architecture whose kernels these settings pin (elsewhere there is no MKL)."""
    return platform.machine().lower() in ("x86_64", "amd64")


def portable_environment(environ: Optional[Mapping[str, str]] = None) -> dict[str, str]:
    """``environ`` (default: this process's) with the portable kernel settings added."""
    env = dict(os.environ if environ is None else environ)
    env.update(PORTABLE_KERNELS)
    return env


def kernels_are_portable() -> bool:
    """Whether this process trains with the portable kernels.

    The variables must have been set before torch loaded; if torch is loaded,
    its dispatch must show it (a CPU without AVX2 falls back to plain kernels).
    """
    if not portable_kernels_apply():
        return False
    if any(os.environ.get(name) != value for name, value in PORTABLE_KERNELS.items()):
        return False
    torch = sys.modules.get("torch")
    return torch is None or torch.backends.cpu.get_cpu_capability() == "AVX2"
