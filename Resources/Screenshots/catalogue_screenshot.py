#!/usr/bin/env python3
"""Make the extension catalogue's screenshot from a result folder of the command-line tool.

The screenshot is the tool's real output, not a mock: each panel is a level picture exactly as
``report.html`` embeds it (the slice with the level's box, name and grade, and a zoom around the
box), laid out in a grid under a title, with the level's grade from ``result.json`` as its caption.
It is not a screenshot of the Slicer module, which needs the Slicer application.

Regenerate the catalogue screenshot (from the repository root, with the project's venv)::

    .venv/bin/spine-stenosis-grader grade Testing/Data/totalsegmentator_ct/example_ct.nii.gz -o sample-output
    .venv/bin/python Resources/Screenshots/catalogue_screenshot.py sample-output

which writes ``Resources/Screenshots/sample-levels.png`` (``-o`` for another path).
"""

from __future__ import annotations

import argparse
import base64
import html
import io
import math
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]  # Resources/Screenshots/ -> the repository
sys.path.insert(0, str(ROOT / "SpineStenosisGrader"))

from SpineStenosisGraderLib.outputs.report import (  # noqa: E402
    effective_grade,
    effective_name,
    grade_class,
    grade_color,
    level_scale,
    name_status,
)
from SpineStenosisGraderLib.result import DiscLevel, StudyResult  # noqa: E402

DEFAULT_OUTPUT = ROOT / "Resources" / "Screenshots" / "sample-levels.png"
COLUMNS = 2
#: width of the screenshot in pixels; each panel is a downscaled report picture
WIDTH_PX = 1280
DPI = 100
#: colours of the PNG's palette: the pictures are greyscale slices plus a few grade colours
PALETTE_COLORS = 256
SAMPLE_TITLE = "SpineStenosisGrader: the command-line tool's report on the public sample CT"

_CARD = re.compile(r'<article class="card".*?</article>', re.S)
_CARD_NAME = re.compile(r'<span class="lvl">(.*?)</span>')
_CARD_PICTURE = re.compile(r'<img src="data:image/png;base64,([A-Za-z0-9+/=]+)"')


def report_pictures(report_html: str, result: StudyResult) -> list[tuple[DiscLevel, bytes]]:
    """Each level of ``result`` that has a picture in the report, with that picture's PNG bytes.

    The report writes one card per level, in the result's order; the card's name is checked
    against the level's, so a report from another run is refused rather than mislabelled.
    """
    cards = _CARD.findall(report_html)
    if len(cards) != len(result.levels):
        raise SystemExit(f"report.html has {len(cards)} level cards, result.json {len(result.levels)} levels: "
                         "are they from the same run?")
    pictures = []
    for level, card in zip(result.levels, cards):
        name = _CARD_NAME.search(card)
        if name is None or html.unescape(name.group(1)) != effective_name(level):
            raise SystemExit(f"report.html and result.json disagree on level {effective_name(level)}: "
                             "are they from the same run?")
        picture = _CARD_PICTURE.search(card)
        if picture is not None:
            pictures.append((level, base64.b64decode(picture.group(1))))
    if not pictures:
        raise SystemExit("report.html holds no level pictures (written with --no-report, or without matplotlib?)")
    return pictures


def caption(level: DiscLevel) -> str:
    """The level's name and grade as the report's card header gives them."""
    parts = [effective_name(level)]
    status = name_status(level)
    if status:
        parts[0] += f" ({status})"
    grade = effective_grade(level)
    if grade is None:
        parts.append("not graded")
    else:
        shown = grade_class(level, grade)
        parts.append(shown.label if shown is not None else f"grade {grade}")
        prediction = level.grade
        if prediction is not None and grade == prediction.grade:
            parts.append(f"p = {prediction.probability:.2f}" + (", uncertain" if prediction.uncertain else ""))
        else:
            parts.append("clinician's grade")
    return "   ".join(parts)


def render(result: StudyResult, pictures: list[tuple[DiscLevel, bytes]], title: str) -> bytes:
    """The screenshot as PNG bytes: a title, then the level pictures in a grid."""
    from matplotlib.figure import Figure
    from matplotlib.image import imread
    from PIL import Image

    images = [imread(io.BytesIO(png), format="png") for _, png in pictures]
    rows = math.ceil(len(images) / COLUMNS)
    cell_w = WIDTH_PX / COLUMNS / DPI
    cell_h = cell_w * images[0].shape[0] / images[0].shape[1]
    caption_h, title_h, footer_h = 0.30, 1.25, 0.42
    height = title_h + rows * (cell_h + caption_h) + footer_h
    figure = Figure(figsize=(WIDTH_PX / DPI, height), dpi=DPI, facecolor="#15181b")

    study, model = result.study, result.model
    scales = dict.fromkeys(scale.title for scale in map(level_scale, result.levels) if scale is not None)
    figure.text(0.5, 1 - 0.30 / height, title, ha="center", va="center", color="white", fontsize=17, fontweight="bold")
    figure.text(0.5, 1 - 0.85 / height,
                f"{study.source}  ·  {study.modality}, {study.region}  ·  {len(result.levels)} disc levels\n"
                + "".join(f"{scale_title}  ·  " for scale_title in scales)
                + f"model {model.name} v{model.version}  ·  not for clinical use",
                ha="center", va="center", color="#c9d1d9", fontsize=10.5, linespacing=1.5)
    for n, ((level, _), image) in enumerate(zip(pictures, images)):
        row, column = divmod(n, COLUMNS)
        top = 1 - (title_h + row * (cell_h + caption_h)) / height
        left = column / COLUMNS
        color = grade_color(level)
        figure.text(left + 0.012, top - caption_h / 2 / height, caption(level), ha="left", va="center",
                    color=color, fontsize=11.5, fontweight="bold")
        ax = figure.add_axes((left + 0.004, top - (caption_h + cell_h) / height, 1 / COLUMNS - 0.008, cell_h / height))
        ax.imshow(image, interpolation="antialiased")
        ax.set_axis_off()
    figure.text(0.5, footer_h / 2 / height,
                f"Level pictures unchanged from report.html of `spine-stenosis-grader grade {study.source} -o OUTDIR`. "
                "Not a screenshot of the Slicer module.",
                ha="center", va="center", color="#8b949e", fontsize=9)

    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", facecolor=figure.get_facecolor())
    # a palette keeps the file small: the catalogue downloads it with the extension list
    rgb = Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")
    small = io.BytesIO()
    rgb.quantize(colors=PALETTE_COLORS, method=Image.Quantize.MEDIANCUT).save(small, format="PNG", optimize=True)
    return small.getvalue()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("result_dir", type=Path, help="output folder of `spine-stenosis-grader grade`")
    parser.add_argument("-o", "--output", type=Path, default=DEFAULT_OUTPUT,
                        help=f"PNG to write (default {DEFAULT_OUTPUT.relative_to(ROOT)})")
    parser.add_argument("--title", default=SAMPLE_TITLE, help="the title line (default: %(default)s)")
    args = parser.parse_args(argv)

    result = StudyResult.from_json((args.result_dir / "result.json").read_text(encoding="utf-8"))
    pictures = report_pictures((args.result_dir / "report.html").read_text(encoding="utf-8"), result)
    png = render(result, pictures, args.title)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_bytes(png)
    print(f"{args.output}: {len(pictures)} levels, {len(png) / 1024:.0f} KiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
