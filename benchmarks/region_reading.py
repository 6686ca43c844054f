#!/usr/bin/env python3
"""Time the region reading of a real MR with and without the cord read inside the CSF's hull, in one run.

``region._cord_in_csf_hull`` (6 December 2026) reads a cord that touches the canal's side, on the T2
slices of a study whose enclosed cord does not already tell the region (so not on a whole neck such as
the default scan, whose cost it shows is nil; ``--scan fastcleverseg_ivd_11``, a lumbar T2, reads it on
every slice). This grades one catalogue scan once, keeps what the pipeline hands ``infer_region``, and then
times ``infer_region`` on it ``--runs`` times with the hull reading and as many times without it
(the hull reading replaced by "no cord there"), alternating the two, and the whole grading three
times. It prints a Markdown table: median (min-max) seconds and the ratio of the medians.

Run from anywhere: ``python benchmarks/region_reading.py`` (about a minute on 2 cores);
``--scan NAME`` picks another MR scan of ``Testing/Data/scans.json``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "SpineStenosisGrader"))

from SpineStenosisGraderLib import pipeline  # noqa: E402
from SpineStenosisGraderLib.inference import region  # noqa: E402
from SpineStenosisGraderLib.packages.package import load_default_package  # noqa: E402
from SpineStenosisGraderLib.training.annotations import load_annotated_scan, load_catalogue  # noqa: E402


def _timed(call: Callable[[], Any]) -> float:
    start = time.perf_counter()
    call()
    return time.perf_counter() - start


def _stats(times: list[float]) -> str:
    return f"{statistics.median(times):.3f} ({min(times):.3f}-{max(times):.3f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scan", default="sct_errsm_11_t2", help="an MR scan of the catalogue (default: a whole neck)")
    parser.add_argument("--runs", type=int, default=7, help="timed runs of each reading (default 7)")
    args = parser.parse_args()

    catalogue = ROOT / "Testing" / "Data" / "scans.json"
    entries = [e for e in load_catalogue(catalogue) if e["name"] == args.scan]
    scan = load_annotated_scan(entries[0], catalogue.parent) if entries else None
    if scan is None or scan.modality != "MR":
        parser.error(f"{args.scan} is not an MR scan of {catalogue}")
    stack = scan.stack
    package = load_default_package()

    captured: dict[str, Any] = {}
    infer_region = pipeline.infer_region

    def keep_arguments(*positional: Any, **named: Any) -> Any:
        captured.update(positional=positional, named=named)
        return infer_region(*positional, **named)

    pipeline.infer_region = keep_arguments
    try:
        grade = [_timed(lambda: pipeline.grade_stack(stack, package, modality="MR")) for _ in range(3)]
    finally:
        pipeline.infer_region = infer_region

    def read() -> Any:
        return infer_region(*captured["positional"], **captured["named"])

    hull_reading = region._cord_in_csf_hull
    with_hull, without_hull = [], []
    try:
        for _ in range(args.runs):
            region._cord_in_csf_hull = hull_reading
            with_hull.append(_timed(read))
            region._cord_in_csf_hull = lambda csf, spacing: 0.0
            without_hull.append(_timed(read))
    finally:
        region._cord_in_csf_hull = hull_reading

    print(f"{args.scan}: {stack.n_slices} slices, {stack.spacing[0]:.2f} x {stack.spacing[1]:.2f} mm pixels; "
          f"{args.runs} runs of each reading, alternating; seconds, median (min-max)\n")
    print("| step | with the hull reading | without it | ratio of medians |")
    print("|---|---|---|---|")
    print(f"| infer_region | {_stats(with_hull)} | {_stats(without_hull)} | "
          f"{statistics.median(with_hull) / statistics.median(without_hull):.2f} |")
    print(f"| grade_stack (3 runs, with it) | {_stats(grade)} | | |")


if __name__ == "__main__":
    main()
