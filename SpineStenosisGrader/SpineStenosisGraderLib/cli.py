"""Command line: grade a study, train the default package, evaluate a package.

Problems the user can fix are printed as one line on stderr with exit code 2;
nothing is left half-written in the output folder. An interruption (Ctrl-C, or
SIGTERM) is one line too, with exit code 130 (143 for SIGTERM), and leaves the
output folder as it was.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Optional, Sequence

from . import __version__
from .errors import SpineStenosisGraderError

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_CATALOGUE = REPO_ROOT / "Testing" / "Data" / "scans.json"


def _anchor(args: argparse.Namespace) -> Optional[tuple[int, str]]:
    """The user's level anchor, checked before any work is done."""
    from .inference.levels import check_level_name

    if args.lowest_level and args.highest_level:
        raise SpineStenosisGraderError("Give --lowest-level or --highest-level, not both.")
    if args.lowest_level:
        return (0, check_level_name(args.lowest_level))
    if args.highest_level:
        return (-1, check_level_name(args.highest_level))
    return None


def _check_output_folder(output: Path) -> None:
    """Fail before grading, not after, when the results could not be written."""
    if output.exists() and not output.is_dir():
        raise SpineStenosisGraderError(f"{output} is a file; give a folder for the results.")
    parent = output if output.exists() else next((p for p in output.parents if p.exists()), Path("."))
    if not os.access(parent, os.W_OK):
        raise SpineStenosisGraderError(f"Cannot write in {parent}; choose another output folder.")


def _grade(args: argparse.Namespace) -> int:
    from .packages.package import load_package
    from .pipeline import grade_file, representative_slices
    from .outputs.writers import write_study_outputs
    from .outputs.report import canal_status, name_status

    output = Path(args.output)
    _check_output_folder(output)
    anchor = _anchor(args)
    package = load_package(args.model, backend=args.backend)
    bars = []

    def progress(stage: str, fraction: float) -> None:
        if args.progress_format == "jsonl":
            # for programs that run the grader (the Slicer module): one line per stage, flushed at once
            print(json.dumps({"stage": stage, "fraction": round(float(fraction), 4)}), flush=True)
            return
        if stage == "read":
            # no bar until the study is read and checked, so bad input gives a single line
            return
        if not bars:
            from tqdm import tqdm

            bars.append(tqdm(total=100, unit="%", bar_format="{l_bar}{bar}| {elapsed}", disable=args.quiet))
        # one redraw per stage, with the new name and the new fraction together
        bars[0].set_description_str(stage, refresh=False)
        bars[0].update(max(0, int(fraction * 100) - bars[0].n))
        bars[0].refresh()

    def pipeline_progress(stage: str, fraction: float) -> None:
        # the outputs are still to be written when the pipeline is done: "done" is said once, at the end
        if stage != "done":
            progress(stage, fraction)

    try:
        result, stack = grade_file(args.input, package, modality=args.modality, region=args.region,
                                   series_uid=args.series, stack_number=args.stack, anchor=anchor,
                                   progress=pipeline_progress, allow_model_mismatch=args.allow_model_mismatch)
        progress("write", 0.95)
        try:
            written = write_study_outputs(result, output, representative_slices(result, stack),
                                          report=not args.no_report)
        except OSError as exc:
            raise SpineStenosisGraderError(f"Cannot write to {output}: {exc.strerror or exc}.") from None
        # an interruption from here on comes after the results are in place
        args.outputs_written = True
        progress("done", 1.0)
    finally:
        for bar in bars:
            bar.close()
    for warning in result.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    if not args.quiet:
        study = result.study
        print(f"region: {study.region} ({study.region_confidence}: {'; '.join(study.region_evidence)})")
        print(f"levels: {study.numbering}")
        for level in result.levels:
            if level.grade:
                flag = ", uncertain" if level.grade.uncertain else ""
                grade = f"{level.grade.grade} (p={level.grade.probability:.2f}{flag})"
            else:
                grade = "not graded"
            flags = [flag for flag in (name_status(level), canal_status(level)) if flag]
            print(f"{level.name:>8}  slice {level.slice_index:>4}  {grade}" + "".join(f"  [{f}]" for f in flags))
        print(f"{len(written)} files written to {args.output}")
    return 0


def _train(args: argparse.Namespace) -> int:
    from .training.kernels import kernels_are_portable, portable_environment, portable_kernels_apply

    if not args.native_kernels and portable_kernels_apply() and not kernels_are_portable():
        # the kernel settings are read when torch and MKL load: only a new process takes them
        import subprocess

        print("Training with the kernels chosen to round alike on x86-64 CPUs (in a child process).",
              file=sys.stderr)
        return subprocess.call([sys.executable, "-m", "SpineStenosisGraderLib.cli", *args.argv],
                               env=portable_environment())
    from .training.train import check_detector_ema, check_sagittal_share, train_default_package

    import shlex

    if args.classifier_from and not args.detector_only:
        raise SpineStenosisGraderError("--classifier-from goes with --detector-only.")
    try:
        # said before the minutes of making the training data, not after them
        check_detector_ema(0.0 if args.detector_ema is None else args.detector_ema)
    except ValueError:
        raise SpineStenosisGraderError(f"--detector-ema is a decay from 0 (off) to below 1, such as 0.995, not "
                                       f"{args.detector_ema:g}.") from None
    try:
        check_sagittal_share(0.0 if args.sagittal_share is None else args.sagittal_share)
    except ValueError:
        raise SpineStenosisGraderError(f"--sagittal-share is a share of the detector's samples from 0 (none) to 1, "
                                       f"such as 0.2, not {args.sagittal_share:g}.") from None
    classifier_from = None
    if args.detector_only:
        from .packages.package import DEFAULT_PACKAGE_DIR

        classifier_from = Path(args.classifier_from) if args.classifier_from else DEFAULT_PACKAGE_DIR
    given = {
        "n_phantoms": args.phantoms, "per_study": args.per_study, "detector_iterations": args.detector_iterations,
        "n_grade_slices": args.grade_slices, "classifier_epochs": args.classifier_epochs, "seed": args.seed,
        "synthetic_per_scan": args.synthetic_per_scan, "synthetic_per_phantom": args.synthetic_per_phantom,
        "synthetic_per_label_map": args.synthetic_per_label_map, "detector_ema": args.detector_ema,
        "sagittal_share": args.sagittal_share,
    }
    command = shlex.join(["spine-stenosis-grader", *args.argv])
    # the defaults live in train_default_package only
    training = train_default_package(Path(args.out), Path(args.catalogue),
                                     exclude_scans=tuple(args.exclude_scan), all_scans=args.all_scans,
                                     classifier_from=classifier_from, command=command,
                                     **{k: v for k, v in given.items() if v is not None})
    print(json.dumps(training, indent=2))
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from .training.annotations import load_catalogue
    from .training.evaluation import (evaluate_grades, evaluate_levels, evaluate_real, evaluate_series_variants,
                                      pooled, time_studies)
    from .packages.package import load_package

    package = load_package(args.model, backend=args.backend)
    use = None if args.scans == "all" else args.scans
    if args.write_manifest and not args.fold_packages and args.scans != "holdout":
        raise SpineStenosisGraderError("Only held-out figures are written into a manifest: use --scans holdout, "
                                       "or --fold-packages for leave-one-scan-out.")
    if args.fold_packages:
        folds = Path(args.fold_packages)
        # a scan no package trains on (use: holdout) needs no fold: the package itself never saw it
        held_out = {e["name"] for e in load_catalogue(Path(args.catalogue)) if e.get("use") == "holdout"}

        def package_for(scan: str):
            if scan in held_out and not (folds / scan).exists():
                return package
            if not (folds / scan / "manifest.json").is_file():
                raise SpineStenosisGraderError(
                    f"No fold package for {scan} in {folds}: train one without it "
                    f"(spine-stenosis-grader train --exclude-scan {scan} --out {folds / scan}).")
            return load_package(folds / scan, backend=args.backend)
    else:
        def package_for(scan: str):
            return package
    scores = evaluate_real(package_for, Path(args.catalogue), use=use)
    if not scores:
        raise SpineStenosisGraderError(f"The catalogue {args.catalogue} has no scans with use={args.scans}.")
    if args.write_manifest and any(s.trained_on for s in scores):
        raise SpineStenosisGraderError("Only held-out figures (from scans the package did not train on) are written "
                                       "into a manifest; use --fold-packages or --scans holdout.")
    summary = pooled(scores)
    metrics = {
        "real_scans": {
            "data": f"real scans ({args.scans}) in {Path(args.catalogue).name}, graded as a user would (no region "
                    "given); " + ("each by the fold package trained without it (leave-one-scan-out); scans "
                                  f"that no package trains on (use: holdout) by {package.name} {package.version}"
                                  if args.fold_packages else f"all by {package.name} {package.version}"),
            "canal_hit": "IoU >= 0.5 with the reference box, or a box no more than 10 mm wider than the reference "
                         "on any side that is centred on the reference canal or holds 90% of it",
            "pooled": summary,
            "per_scan": [s.to_dict() for s in scores],
        },
    }
    if args.series_variants:
        metrics["series_variants"] = evaluate_series_variants(package_for, Path(args.catalogue), use=use)
        metrics["short_thick_series"] = evaluate_series_variants(package_for, Path(args.catalogue), use=use,
                                                                 short_thick=True)
    if not args.real_only:
        metrics["levels"] = evaluate_levels(package)
        metrics["grade"] = evaluate_grades(package, n_slices=args.grade_slices)
    if args.time:
        metrics["time_per_study"] = time_studies(package, [Path(p) for p in args.time])
    print(json.dumps(metrics, indent=2))
    print(_real_scan_table(scores, summary), file=sys.stderr)
    if args.series_variants:
        for key, title in (("series_variants", "Short, thick and cropped series"),
                           ("short_thick_series", "Short thick series (40 mm in 5 mm slices)")):
            variants = metrics[key]
            print(f"\n{title}: " + ", ".join(
                f"{s['scan']} canal {s['canal_hits']}/{s['canal_slices']}, {s['discs_found']}/{s['discs_inside']} "
                f"discs, {s['false_levels']} false, names {s['names_right']}/{s['names_checked']}, "
                f"region {s['region_right']}/{s['series']}"
                for s in variants["per_scan"]) + f"; pooled {variants['pooled']}", file=sys.stderr)
    if args.write_manifest:
        manifest_path = package.path / "manifest.json"
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        manifest["metrics"] = metrics
        # the manifest is not among the hashed files, so the weights' SHA256 stay valid
        manifest_path.write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return 0


def _real_scan_table(scores, summary) -> str:
    """The per-scan figures as a Markdown table, for people (the JSON on stdout is for programs)."""
    lines = ["| scan | canal found | levels on canal (of those with a reference near) | discs found (8 mm) | "
             "false levels | names right | region (true -> found) |", "|---|---|---|---|---|---|---|"]
    for s in scores:
        mark = " (trained on)" if s.trained_on else ""
        names = f"{s.names_right}/{s.names_checked}" + ("" if s.names_anchored_by else " (not anchored)")
        discs, false = ((f"{s.discs_found}/{s.discs_inside}", str(s.false_levels)) if s.disc_reference
                        else ("no disc positions", f"{s.false_levels} above C2" if s.c2_reference else "not scored"))
        if s.landmark_span:
            discs += (f"; {s.levels_between_landmarks} levels for the {s.discs_between_landmarks} discs "
                      f"between {s.landmark_span[0]} and {s.landmark_span[1]}")
        canal = f"{s.hits}/{s.canal_slices}" if s.canal_slices else "no canal label"
        lines.append(f"| {s.scan}{mark} | {canal} | {s.levels_on_canal}/{s.levels_checked} | "
                     f"{discs} | {false} | {names} | {s.region_true} -> {s.region_found} |")
    spans = "" if not any(s.landmark_span for s in scores) else (
        f"; {summary['levels_between_landmarks']} levels for the discs between landmarks")
    lines.append(f"| pooled | {summary['canal_hits']} | {summary['levels_on_canal']} | "
                 f"{summary['discs_found_within_8mm']}{spans} | {summary['false_levels']} | {summary['names_right']} | "
                 f"{summary['region_right']} right |")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="spine-stenosis-grader",
        description="Find the spinal canal at every disc level of an axial spine CT or T2 MRI and grade it. "
                    "Not for clinical use.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    grade = sub.add_parser("grade", help="grade one study")
    grade.add_argument("input", help="NIfTI, NRRD or MHA file, or a DICOM series folder")
    grade.add_argument("-o", "--output", required=True,
                       help="folder for result.json, levels.csv, *.mrk.json, report.html")
    grade.add_argument("--model", help="model package folder (default: the embedded package)")
    grade.add_argument("--modality", choices=["CT", "MR"], help="override the detected modality")
    grade.add_argument("--region", choices=["lumbar", "thoracic", "cervical"],
                       help="set the region (otherwise read from the anatomy: sacrum, vertebral bodies, body outline)")
    grade.add_argument("--series", help="DICOM SeriesInstanceUID, when the folder holds several series")
    grade.add_argument("--stack", type=int, help="stack number, when a series holds stacks at several angles")
    grade.add_argument("--allow-model-mismatch", action="store_true",
                       help="grade even with a model package made for another modality or region")
    grade.add_argument("--lowest-level", help="name of the lowest disc found, e.g. L4-L5 (re-anchors every name)")
    grade.add_argument("--highest-level", help="name of the highest disc found, e.g. C3-C4")
    _add_backend_option(grade)
    grade.add_argument("--no-report", action="store_true",
                       help="leave out report.html (its pictures are most of the writing time)")
    grade.add_argument("-q", "--quiet", action="store_true", help="no progress bar or summary")
    grade.add_argument("--progress-format", choices=["bar", "jsonl"], default="bar",
                       help='bar: a progress bar on stderr (default); jsonl: one JSON object per line on stdout, '
                            '{"stage": ..., "fraction": ...}, flushed, for programs (printed even with -q)')
    grade.set_defaults(func=_grade)

    train = sub.add_parser("train", help="train the default model package (phantoms + annotated real scans)")
    train.add_argument("--out", default=str(REPO_ROOT / "SpineStenosisGrader" / "Resources" / "Models" / "default"))
    train.add_argument("--catalogue", default=str(DEFAULT_CATALOGUE), help="JSON catalogue of annotated scans")
    train.add_argument("--phantoms", type=int)
    train.add_argument("--per-study", type=int)
    train.add_argument("--detector-iterations", type=int)
    train.add_argument("--grade-slices", type=int)
    train.add_argument("--classifier-epochs", type=int)
    train.add_argument("--seed", type=int)
    train.add_argument("--synthetic-per-scan", type=int,
                       help="detector slices synthesised from each real scan's label map (0: none)")
    train.add_argument("--synthetic-per-phantom", type=int,
                       help="detector slices synthesised from each phantom study's label map (0: none)")
    train.add_argument("--synthetic-per-label-map", type=int,
                       help="detector slices synthesised from each of the catalogue's label maps without an image "
                            "(its 'label_maps'; 0: none)")
    train.add_argument("--detector-ema", type=float, metavar="DECAY",
                       help="return the detector's weights averaged (exponential moving average with this decay) "
                            "over the second half of training instead of the last step's (0: off)")
    train.add_argument("--sagittal-share", type=float, metavar="SHARE",
                       help="share of the detector's samples shown as a sagittal series read as axial slices: "
                            "coarse from side to side and narrow (0: none)")
    train.add_argument("--exclude-scan", action="append", default=[], metavar="NAME",
                       help="leave this catalogue scan, and every image synthesised from it, out of training "
                            "(repeat for more; for leave-one-scan-out)")
    train.add_argument("--all-scans", action="store_true",
                       help="train on every catalogue scan with disc positions, held-out ones included "
                            "(less --exclude-scan)")
    train.add_argument("--detector-only", action="store_true",
                       help="train only the detector; reuse the classifier of --classifier-from unchanged")
    train.add_argument("--classifier-from", metavar="PACKAGE_DIR",
                       help="with --detector-only: the package whose classifier to reuse (default: the embedded one)")
    train.add_argument("--native-kernels", action="store_true",
                       help="train with the kernels this CPU picks: faster (the default package in about 11 minutes "
                            "instead of 61 on 2 cores), but the weights then depend on the kind of CPU (default: "
                            "kernels chosen to round alike on x86-64 CPUs; Intel Xeons agree, an AMD EPYC did not: "
                            "see README)")
    train.set_defaults(func=_train)

    export = sub.add_parser("export-onnx", help="add ONNX Runtime graphs to a model package (needs PyTorch)")
    export.add_argument("package", nargs="?", help="model package folder (default: the embedded package)")
    export.set_defaults(func=_export_onnx)

    evaluate = sub.add_parser("evaluate", help="measure packages on real labelled scans (leave-one-scan-out with "
                                                 "--fold-packages) and on unseen phantoms")
    evaluate.add_argument("--model", help="model package folder (default: the embedded package)")
    evaluate.add_argument("--catalogue", default=str(DEFAULT_CATALOGUE))
    evaluate.add_argument("--scans", default="all", choices=["holdout", "train", "all"],
                          help="which catalogue scans by their 'use': all (default; with --fold-packages each is "
                               "scored leave-one-scan-out), held out of training, or trained on")
    evaluate.add_argument("--fold-packages", help="folder with one package per scan, named by the scan and trained "
                                                  "without it: each scan is scored by its own (leave-one-scan-out)")
    evaluate.add_argument("--real-only", action="store_true", help="only the real scans, not the phantoms")
    evaluate.add_argument("--series-variants", action="store_true",
                          help="also grade short windows, thick-slice versions, a 3 mm sagittal version and a field "
                               "of view cropped to the canal of each real scan, and apart from them short thick "
                               "series (40 mm windows in 5 mm slices) (a few minutes)")
    evaluate.add_argument("--grade-slices", type=int, default=400)
    evaluate.add_argument("--time", nargs="*", help="studies to time end to end (median of 3)")
    _add_backend_option(evaluate)
    evaluate.add_argument("--write-manifest", action="store_true", help="store the metrics in the package manifest")
    evaluate.set_defaults(func=_evaluate)
    return parser


def _add_backend_option(parser: argparse.ArgumentParser) -> None:
    from .packages.package import BACKENDS

    parser.add_argument("--backend", default="auto", choices=BACKENDS,
                        help="inference runtime: ONNX Runtime (the default when installed) or PyTorch")


def _export_onnx(args: argparse.Namespace) -> int:
    from .training.export import export_onnx, exported_package_summary
    from .packages.package import DEFAULT_PACKAGE_DIR

    folder = Path(args.package) if args.package else DEFAULT_PACKAGE_DIR
    report = export_onnx(folder)
    print(json.dumps(report, indent=2))
    print(f"Wrote {exported_package_summary(folder)} into {folder}; the manifest lists their SHA256.")
    return 0


class Terminated(KeyboardInterrupt):
    """SIGTERM (a polite kill: ``kill``, a job scheduler, a closing terminal) as an interruption.

    A KeyboardInterrupt, so that the cleanup that undoes a half-done write runs for it as
    for Ctrl-C; without it, Python would end at once and leave a write half done.
    """


def _raise_terminated(signum, frame) -> None:
    raise Terminated()


def _interrupted(args: argparse.Namespace, exc: KeyboardInterrupt) -> int:
    """Say what an interruption left behind; the exit code of the signal, as a shell gives it (128 + number)."""
    if getattr(args, "outputs_written", False):
        print(f"error: interrupted after the results were written to {args.output}.", file=sys.stderr)
    else:
        print("error: interrupted; nothing was written (the output folder is as it was).", file=sys.stderr)
    return 128 + (signal.SIGTERM if isinstance(exc, Terminated) else signal.SIGINT)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    # the exact command, for the manifest of a trained package
    args.argv = list(sys.argv[1:] if argv is None else argv)
    previous = None
    if threading.current_thread() is threading.main_thread():  # Python lets only the main thread set handlers
        previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        return args.func(args)
    except SpineStenosisGraderError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:
        return _interrupted(args, exc)
    except MemoryError:
        print("error: not enough memory for this study. Close other programs, or crop the study to the spine "
              "(Slicer's Crop Volume module) and grade the crop.", file=sys.stderr)
        return 2
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
