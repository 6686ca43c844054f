"""A self-contained HTML report of one graded study, with slice pictures.

The report is one file a radiologist can open, mail or archive: images are
embedded as PNG data URIs, the style is inline, and a Content-Security-Policy
forbids scripts and remote content, so nothing is fetched and nothing runs.

This module also holds the small display rules that the report and the Slicer
markups share: which grade counts (the clinician's over the model's), the
colour of a level, and the label and unit of a measurement.
"""

from __future__ import annotations

import base64
import datetime as _dt
import html
import io
from pathlib import Path
from typing import Mapping, Optional, Sequence

import numpy as np

from ..result import SCHEMA_VERSION, DiscLevel, OrientedBox, StudyInfo, StudyResult
from ..scales import GradeClass, GradingScale, get_scale
from ..study.volume import lps_to_continuous_index

#: colour of a level with no grade, or a grade outside every known scale
NEUTRAL_COLOR = (0.62, 0.62, 0.62)

#: CT windows in HU: the overview shows bone and soft tissue together; the zoom
#: uses a soft-tissue window, which separates dural sac, fat, disc and ligament.
CT_OVERVIEW_WINDOW = (-200.0, 800.0)
CT_ZOOM_WINDOW = (-150.0, 250.0)
#: MR has no absolute scale: window each picture between these percentiles.
MR_PERCENTILES = (1.0, 99.0)

#: the zoom shows the box plus this fraction of its extent on every side,
#: and never less than ZOOM_MIN_MARGIN_MM
ZOOM_MARGIN = 0.6
ZOOM_MIN_MARGIN_MM = 12.0
#: a level's label is drawn above the orientation letters (text's default, 3)
LABEL_ZORDER = 4

_UNIT_SUFFIXES = (("mm2", "mm2"), ("mm3", "mm3"), ("mm", "mm"), ("pct", "%"), ("percent", "%"), ("deg", "deg"))
_UNIT_HTML = {"mm2": "mm\u00b2", "mm3": "mm\u00b3", "deg": "\u00b0"}
_ACRONYMS = {"ap": "AP", "lr": "LR", "csa": "CSA", "csf": "CSF", "dsa": "DSA"}


# --------------------------------------------------------------------------- geometry


def lps_to_index(study: StudyInfo, points_lps: np.ndarray) -> np.ndarray:
    """Continuous (i, j, k) index of LPS points in the study's axial stack.

    Inverts ITK's ``physical = origin + D @ (spacing * index)`` with the stack
    geometry stored in ``study``. ``points_lps`` has shape (3,) or (N, 3); the
    result has the same shape. Index (0, 0, k) is the centre of the first pixel,
    so pixel (i, j) of slice k covers i-0.5..i+0.5 and j-0.5..j+0.5.
    """
    return lps_to_continuous_index(study.stack_origin_lps, study.stack_spacing_mm,
                                   np.asarray(study.stack_direction_lps), points_lps)


# --------------------------------------------------------------------------- display rules


def effective_name(level: DiscLevel) -> str:
    """The level's name, as the clinician corrected it if they did."""
    if level.correction is not None and level.correction.name:
        return level.correction.name
    return level.name


def name_status(level: DiscLevel) -> str:
    """How far the level's name can be trusted, in words; empty when a landmark or a clinician fixed it."""
    if level.correction is not None and level.correction.name:
        return ""
    if not level.name_anchored:
        return "not anchored"
    return "" if level.name_confidence == "high" else "name unsure"


def canal_status(level: DiscLevel) -> str:
    """"canal not seen" where the detector lost the canal at the level (its box is interpolated); else empty."""
    return "" if level.canal_seen else "canal not seen"


def effective_box(level: DiscLevel) -> OrientedBox:
    """The level's box, as the clinician edited it if they did."""
    if level.correction is not None and level.correction.box is not None:
        return level.correction.box
    return level.box


def effective_grade(level: DiscLevel) -> Optional[str]:
    """The grade that counts: the clinician's if given, else the model's, else None."""
    if level.correction is not None and level.correction.grade:
        return level.correction.grade
    return level.grade.grade if level.grade is not None else None


def level_scale(level: DiscLevel) -> Optional[GradingScale]:
    """The grading scale of the level's prediction, or None if absent or unknown."""
    if level.grade is None:
        return None
    try:
        return get_scale(level.grade.scale)
    except KeyError:
        return None


def grade_class(level: DiscLevel, grade: Optional[str]) -> Optional[GradeClass]:
    """The scale's class called ``grade`` for this level, or None."""
    scale = level_scale(level)
    if scale is None or grade is None:
        return None
    try:
        return scale.grade_class(grade)
    except KeyError:
        return None


def grade_color(level: DiscLevel) -> tuple[float, float, float]:
    """RGB (0-1) of the level's effective grade; grey when there is none."""
    cls = grade_class(level, effective_grade(level))
    return tuple(float(c) for c in cls.color) if cls is not None else NEUTRAL_COLOR


def measurement_label(key: str) -> tuple[str, str]:
    """Human label and unit of a measurement key: ``"dural_sac_area_mm2"`` -> ("Dural sac area", "mm2")."""
    words = [w for w in key.replace("-", "_").split("_") if w]
    unit = ""
    if words:
        for suffix, name in _UNIT_SUFFIXES:
            if words[-1].lower() == suffix:
                unit = name
                words = words[:-1]
                break
    words = [_ACRONYMS.get(w.lower(), w) for w in words] or [key]
    label = " ".join(words)
    return label[:1].upper() + label[1:], unit


def format_measurement(key: str, value: float) -> str:
    """``"Dural sac area 80.5 mm²"`` style text (plain, not escaped)."""
    label, unit = measurement_label(key)
    return f"{label} {_format_value(value, unit)}"


def _format_value(value: float, unit: str) -> str:
    if not np.isfinite(value):
        return "n/a"
    digits = 0 if abs(value) >= 100 else 1 if abs(value) >= 10 else 2
    text = f"{value:.{digits}f}"
    unit_text = _UNIT_HTML.get(unit, unit)
    return f"{text}\u00a0{unit_text}" if unit_text else text


# --------------------------------------------------------------------------- pictures


def _window(
    image: np.ndarray, modality: str, region: Optional[np.ndarray] = None, zoom: bool = False
) -> tuple[float, float]:
    if modality.upper() == "CT":
        return CT_ZOOM_WINDOW if zoom else CT_OVERVIEW_WINDOW
    sample = image if region is None or region.size == 0 else region
    finite = sample[np.isfinite(sample)]
    if finite.size == 0:
        return 0.0, 1.0
    lo, hi = np.percentile(finite, MR_PERCENTILES)
    if hi <= lo:
        hi = lo + 1.0
    return float(lo), float(hi)


def _edge_letter(vector_lps: np.ndarray) -> str:
    """Patient direction letter of the dominant component of an LPS vector."""
    axis = int(np.argmax(np.abs(vector_lps)))
    positive = vector_lps[axis] > 0
    return ("L", "P", "S")[axis] if positive else ("R", "A", "I")[axis]


def _orientation_letters(study: StudyInfo) -> dict[str, str]:
    """Letters at the image edges when the slice is shown as stored (row j down, column i right)."""
    direction = np.asarray(study.stack_direction_lps, dtype=float).reshape(3, 3)
    col_axis, row_axis = direction[:, 0], direction[:, 1]
    return {
        "right": _edge_letter(col_axis),
        "left": _edge_letter(-col_axis),
        "bottom": _edge_letter(row_axis),
        "top": _edge_letter(-row_axis),
    }


def _box_pixel_rect(level: DiscLevel, study: StudyInfo) -> tuple[float, float, float, float]:
    """(i_min, i_max, j_min, j_max) of the box's corners in continuous pixel index."""
    index = lps_to_index(study, effective_box(level).corners())
    return (float(index[:, 0].min()), float(index[:, 0].max()), float(index[:, 1].min()), float(index[:, 1].max()))


def _text_color(rgb: Sequence[float]) -> str:
    luminance = 0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2]
    return "#111" if luminance > 0.55 else "#fff"


class _LevelPicture:
    """Draws a level's PNG: the whole slice with the box (left) and a zoom around the box (right).

    One figure serves every level of a report: building matplotlib Axes costs
    more than drawing on them. Importing it needs matplotlib (ImportError if absent).
    """

    def __init__(self) -> None:
        from matplotlib.figure import Figure  # lazy: the writers must import without matplotlib

        self.figure = Figure(figsize=(7.6, 3.8), dpi=100, facecolor="black")
        self.figure.subplots_adjust(left=0.005, right=0.995, top=0.995, bottom=0.005, wspace=0.02)
        self.axes = self.figure.subplots(1, 2)
        for ax in self.axes:
            ax.set_facecolor("black")
            ax.set_axis_off()

    def png(self, level: DiscLevel, study: StudyInfo, image: np.ndarray) -> bytes:
        for ax in self.axes:
            for artist in [*ax.images, *ax.patches, *ax.texts, *ax.lines]:
                artist.remove()
        _draw_level(self.axes[0], self.axes[1], level, study, image)
        buffer = io.BytesIO()
        self.figure.savefig(buffer, format="png", facecolor=self.figure.get_facecolor())
        return buffer.getvalue()


def _draw_level(ax_full, ax_zoom, level: DiscLevel, study: StudyInfo, image: np.ndarray) -> None:
    from matplotlib import patheffects
    from matplotlib.patches import Rectangle

    outline = [patheffects.withStroke(linewidth=2.2, foreground="black")]
    image = np.asarray(image, dtype=float)
    n_j, n_i = image.shape
    spacing_i, spacing_j = float(study.stack_spacing_mm[0]), float(study.stack_spacing_mm[1])
    aspect = spacing_j / spacing_i  # square millimetres, not square pixels
    color = grade_color(level)
    letters = _orientation_letters(study)
    i0, i1, j0, j1 = _box_pixel_rect(level, study)
    grade = effective_grade(level)
    uncertain = level.grade is not None and level.grade.uncertain and grade == level.grade.grade
    status = name_status(level)
    label = (effective_name(level) + (f" ({status})" if status else "") + (f"  {grade}" if grade else "")
             + (" ?" if uncertain else ""))

    # zoom region in pixels, margin measured in mm so it looks alike at any resolution
    margin_i = max(ZOOM_MARGIN * (i1 - i0), ZOOM_MIN_MARGIN_MM / spacing_i)
    margin_j = max(ZOOM_MARGIN * (j1 - j0), ZOOM_MIN_MARGIN_MM / spacing_j)
    zi0, zi1 = int(np.floor(max(i0 - margin_i, -0.5) + 0.5)), int(np.ceil(min(i1 + margin_i, n_i - 0.5) + 0.5))
    zj0, zj1 = int(np.floor(max(j0 - margin_j, -0.5) + 0.5)), int(np.ceil(min(j1 + margin_j, n_j - 0.5) + 0.5))
    box_visible = zi1 > zi0 and zj1 > zj0
    crop = image[zj0:zj1, zi0:zi1] if box_visible else image[:0, :0]

    lo, hi = _window(image, study.modality)
    ax_full.imshow(image, cmap="gray", vmin=lo, vmax=hi, aspect=aspect, interpolation="antialiased")
    ax_full.add_patch(Rectangle((i0, j0), i1 - i0, j1 - j0, fill=False, edgecolor=color, linewidth=1.6))
    label_y = j0 - 0.02 * n_j if j0 > 0.12 * n_j else j1 + 0.02 * n_j
    # not clipped to the image: a narrow one (a sagittal scan's reformat is 50 mm across) would cut the
    # label to a few letters. Near a side of the image it runs inward, so it stays off the zoom panel. It is
    # drawn over the orientation letters: on a narrow image the side letters fall under it.
    label_x, label_ha = ((i1, "right") if (i0 + i1) / 2 > 2 * n_i / 3 else (i0, "left") if (i0 + i1) / 2 < n_i / 3
                         else ((i0 + i1) / 2, "center"))
    ax_full.text(label_x, label_y, label, color=_text_color(color), fontsize=9, fontweight="bold",
                 ha=label_ha, va="bottom" if label_y < j0 else "top",
                 bbox=dict(boxstyle="round,pad=0.2", facecolor=color, edgecolor="none", alpha=0.9), clip_on=False,
                 zorder=LABEL_ZORDER)
    _draw_letters(ax_full, letters, outline)
    ax_full.text(0.02, 0.02, f"slice {level.slice_index}", transform=ax_full.transAxes, color="#ddd", fontsize=7,
                 ha="left", va="bottom", path_effects=outline)
    ax_full.set_xlim(-0.5, n_i - 0.5)
    ax_full.set_ylim(n_j - 0.5, -0.5)

    if box_visible:
        zlo, zhi = _window(image, study.modality, region=crop, zoom=True)
        ax_zoom.imshow(crop, cmap="gray", vmin=zlo, vmax=zhi, aspect=aspect, interpolation="antialiased",
                       extent=(zi0 - 0.5, zi1 - 0.5, zj1 - 0.5, zj0 - 0.5))
        ax_zoom.add_patch(Rectangle((i0, j0), i1 - i0, j1 - j0, fill=False, edgecolor=color, linewidth=2.0))
        ax_zoom.set_xlim(zi0 - 0.5, zi1 - 0.5)
        ax_zoom.set_ylim(zj1 - 0.5, zj0 - 0.5)
        _draw_letters(ax_zoom, letters, outline)
        _draw_scale_bar(ax_zoom, zi0, zi1, zj0, zj1, spacing_i, outline)
        window_note = "zoom: soft-tissue window" if study.modality.upper() == "CT" else "zoom: local window"
        ax_zoom.text(0.02, 0.02, window_note, transform=ax_zoom.transAxes, color="#ddd", fontsize=7,
                     ha="left", va="bottom", path_effects=outline)
    else:
        ax_zoom.text(0.5, 0.5, "box is outside this slice", transform=ax_zoom.transAxes, color="#ddd",
                     ha="center", va="center", fontsize=10)


def _draw_letters(ax, letters: Mapping[str, str], outline: list) -> None:
    style = dict(transform=ax.transAxes, color="#ffd54a", fontsize=10, fontweight="bold", path_effects=outline)
    ax.text(0.015, 0.5, letters["left"], ha="left", va="center", **style)
    ax.text(0.985, 0.5, letters["right"], ha="right", va="center", **style)
    ax.text(0.5, 0.985, letters["top"], ha="center", va="top", **style)
    ax.text(0.5, 0.015, letters["bottom"], ha="center", va="bottom", **style)


def _draw_scale_bar(ax, zi0: int, zi1: int, zj0: int, zj1: int, spacing_i: float, outline: list) -> None:
    width_mm = (zi1 - zi0) * spacing_i
    bar_mm = next((b for b in (50, 20, 10, 5, 2, 1) if b <= 0.3 * width_mm), None)
    if bar_mm is None:
        return
    bar_px = bar_mm / spacing_i
    x1 = zi1 - 0.5 - 0.05 * (zi1 - zi0)
    y = zj1 - 0.5 - 0.06 * (zj1 - zj0)
    from matplotlib import patheffects

    bar_outline = [patheffects.withStroke(linewidth=4, foreground="black")]
    ax.plot([x1 - bar_px, x1], [y, y], color="white", linewidth=2, solid_capstyle="butt", path_effects=bar_outline)
    ax.text(x1 - bar_px / 2, y - 0.02 * (zj1 - zj0), f"{bar_mm} mm", color="white", fontsize=7,
            ha="center", va="bottom", path_effects=outline)


def _png_data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


# --------------------------------------------------------------------------- html

_CSS = """
*{box-sizing:border-box}
body{font:14px/1.45 -apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif;color:#1d2329;background:#f3f5f7;margin:0}
main{max-width:1080px;margin:0 auto;padding:20px 24px 40px}
h1{font-size:22px;margin:0 0 2px}
h2{font-size:16px;margin:26px 0 10px;text-transform:uppercase;letter-spacing:.06em;color:#4a5560}
.sub{color:#56626d}
.banner{margin:14px 0;padding:10px 14px;border-radius:6px;background:#fdecea;border:1px solid #e0786e;color:#7a1c12;font-weight:600}
.banner .big{font-size:15px;text-transform:uppercase;letter-spacing:.04em;margin-right:6px}
.note{margin:10px 0;padding:8px 12px;border-left:4px solid #3b7dd8;background:#eaf2fc;border-radius:0 6px 6px 0}
.warn{margin:10px 0;padding:8px 12px;border-left:4px solid #e0a100;background:#fff6dc;border-radius:0 6px 6px 0}
.warn ul{margin:4px 0 0 18px;padding:0}
dl.meta{display:grid;grid-template-columns:max-content 1fr max-content 1fr;gap:4px 14px;margin:12px 0;background:#fff;padding:12px 14px;border-radius:8px;border:1px solid #dde2e7}
dl.meta dt{color:#66727d}
dl.meta dd{margin:0;font-weight:500;word-break:break-word}
table{border-collapse:collapse;width:100%;background:#fff;border:1px solid #dde2e7;border-radius:8px;overflow:hidden}
th,td{padding:7px 10px;text-align:left;border-bottom:1px solid #eceff2;vertical-align:middle}
th{background:#eef1f4;font-size:12px;text-transform:uppercase;letter-spacing:.04em;color:#4a5560}
td.num{text-align:right;font-variant-numeric:tabular-nums}
tr:last-child td{border-bottom:none}
.chip{display:inline-block;min-width:26px;padding:1px 8px;border-radius:11px;font-weight:700;text-align:center}
.flag{display:inline-block;padding:0 7px;border-radius:9px;background:#fff1c2;color:#6b5200;font-size:12px;font-weight:600}
.corr{display:inline-block;padding:0 7px;border-radius:9px;background:#e4ecfb;color:#1e4aa0;font-size:12px;font-weight:600}
.muted{color:#7a858f}
.card{background:#fff;border:1px solid #dde2e7;border-radius:10px;margin:14px 0;overflow:hidden;page-break-inside:avoid;break-inside:avoid}
.card>header{display:flex;align-items:center;gap:10px;padding:10px 14px;border-bottom:1px solid #eceff2;border-left:8px solid var(--c)}
.card>header .lvl{font-size:18px;font-weight:700}
.card .body{display:flex;flex-wrap:wrap;gap:14px;padding:12px 14px}
.card img{width:100%;max-width:620px;height:auto;border-radius:6px;background:#000;display:block}
.card .pic{flex:1 1 560px}
.card .facts{flex:1 1 260px;min-width:240px}
.facts h3{font-size:12px;text-transform:uppercase;letter-spacing:.05em;color:#66727d;margin:10px 0 4px}
.facts h3:first-child{margin-top:0}
.bar{display:grid;grid-template-columns:minmax(110px,160px) 1fr 40px;align-items:center;gap:6px;font-size:13px;margin:2px 0}
.bar .track{height:9px;background:#eef1f4;border-radius:5px;overflow:hidden}
.bar .fill{height:100%;border-radius:5px}
.bar .name{white-space:nowrap;overflow:hidden;text-overflow:ellipsis}
.bar.top .name{font-weight:700}
.def{font-size:13px;color:#3c4650}
.kv{font-size:13px;margin:1px 0}
.legend td:first-child{width:60px}
footer{margin-top:28px;font-size:12px;color:#7a858f}
@media print{body{background:#fff}main{padding:0}.card,table,dl.meta{border-color:#bbb}}
"""


def _esc(value: object) -> str:
    return html.escape(str(value), quote=True)


def _rgb_css(rgb: Sequence[float]) -> str:
    r, g, b = (int(round(255 * max(0.0, min(1.0, float(c))))) for c in rgb)
    return f"rgb({r},{g},{b})"


def _chip(text: str, rgb: Sequence[float], title: str = "") -> str:
    title_attr = f' title="{_esc(title)}"' if title else ""
    return (f'<span class="chip" style="background:{_rgb_css(rgb)};color:{_text_color(rgb)}"{title_attr}>'
            f"{_esc(text)}</span>")


def _grade_chip(level: DiscLevel, grade: Optional[str]) -> str:
    if grade is None:
        return '<span class="muted">not graded</span>'
    cls = grade_class(level, grade)
    rgb = cls.color if cls is not None else NEUTRAL_COLOR
    title = f"{cls.label}. {cls.definition}" if cls is not None else ""
    return _chip(grade, rgb, title)


def _percent(p: float) -> str:
    return f"{100.0 * p:.0f}%" if np.isfinite(p) else "n/a"


def _measurement_keys(levels: Sequence[DiscLevel]) -> list[str]:
    keys: list[str] = []
    for level in levels:
        for key in level.measurements:
            if key not in keys:
                keys.append(key)
    return keys


def _scales_used(levels: Sequence[DiscLevel]) -> list[GradingScale]:
    scales: list[GradingScale] = []
    for level in levels:
        scale = level_scale(level)
        if scale is not None and scale not in scales:
            scales.append(scale)
    return scales


def _header_html(result: StudyResult, generated: str) -> str:
    study, model = result.study, result.model
    scales = _scales_used(result.levels)
    clinical = model.clinical_use.strip() or "not for clinical use"
    caution = "not for clinical use" in clinical.lower()
    # say "not for clinical use" once, then whatever else the model's manifest says
    parts_text = [] if clinical.lower().strip(" .;") == "not for clinical use" else [_esc(clinical)]
    if model.trained_on:
        parts_text.append(f"trained on {_esc(model.trained_on)}")
    banner_text = " &middot; ".join(parts_text)
    big = "Not for clinical use" if caution else "Intended use:"
    separator = " &middot; " if caution and banner_text else " "
    banner = f'<div class="banner"><span class="big">{big}</span>{separator}{banner_text}</div>'
    pixel = f"{study.pixel_spacing_mm[0]:.2f} &times; {study.pixel_spacing_mm[1]:.2f} mm"
    spacing = f"{pixel}, slices {study.slice_spacing_mm:.2f} mm"
    meta = [
        ("Source", _esc(study.source)),
        ("Model", f"{_esc(model.name)} <span class=\"muted\">v{_esc(model.version)}</span>"),
        ("Modality", _esc(study.modality)),
        ("Task", _esc(model.task)),
        ("Region", _esc(study.region) + (f' <span class="muted">({_esc(study.region_confidence)}: '
                                          f'{_esc("; ".join(study.region_evidence))})</span>'
                                          if study.region_evidence else "")),
        ("Scale", "; ".join(_esc(s.title) for s in scales) or '<span class="muted">none</span>'),
        ("Slices", f"{int(study.n_slices)} <span class=\"muted\">({spacing})</span>"),
        ("Generated", _esc(generated)),
    ]
    parts = [
        "<header>",
        "<h1>Spinal canal stenosis grading</h1>",
        f'<div class="sub">{_esc(study.source)} &middot; {_esc(study.modality)} &middot; {_esc(study.region)}</div>',
        "</header>",
        banner,
        '<dl class="meta">' + "".join(f"<dt>{k}</dt><dd>{v}</dd>" for k, v in meta) + "</dl>",
    ]
    if study.numbering:
        parts.append(f'<div class="note"><b>Level numbering.</b> {_esc(study.numbering)}</div>')
    if result.warnings:
        items = "".join(f"<li>{_esc(w)}</li>" for w in result.warnings)
        parts.append(f'<div class="warn"><b>Warnings</b><ul>{items}</ul></div>')
    return "\n".join(parts)


def _summary_html(result: StudyResult) -> str:
    keys = _measurement_keys(result.levels)
    any_correction = any(level.correction is not None for level in result.levels)
    head = ["Level", "Model grade" if any_correction else "Grade", "Probability", "Confidence"]
    head += [" ".join(filter(None, [label, f"({_UNIT_HTML.get(unit, unit)})" if unit else ""]))
             for label, unit in (measurement_label(k) for k in keys)]
    if any_correction:
        head.append("Clinician")
    head.append("Slice")
    rows = []
    for level in result.levels:
        pred = level.grade
        status = name_status(level)
        cells = [f"<td><b>{_esc(effective_name(level))}</b>"
                 + (f' <span class="flag" title="{_esc(result.study.numbering)}">{_esc(status)}</span>' if status else "")
                 + "</td>",
                 f"<td>{_grade_chip(level, pred.grade if pred else None)}</td>",
                 f'<td class="num">{_percent(pred.probability) if pred else ""}</td>',
                 "<td>" + ('<span class="flag">uncertain</span>' if pred and pred.uncertain else
                           ('<span class="muted">ok</span>' if pred else "")) + "</td>"]
        for key in keys:
            value = level.measurements.get(key)
            shown = _esc(_format_value(value, measurement_label(key)[1])) if value is not None else ""
            cells.append(f'<td class="num">{shown}</td>')
        if any_correction:
            corr = level.correction
            text = ""
            if corr is not None:
                bits = []
                if corr.grade:
                    bits.append(_grade_chip(level, corr.grade))
                if corr.name and corr.name != level.name:
                    bits.append(f'<span class="muted">was {_esc(level.name)}</span>')
                if corr.box is not None:
                    bits.append('<span class="corr">box edited</span>')
                text = " ".join(bits)
            cells.append(f"<td>{text}</td>")
        cells.append(f'<td class="num">{int(level.slice_index)}</td>')
        rows.append("<tr>" + "".join(cells) + "</tr>")
    if not rows:
        rows.append(f'<tr><td colspan="{len(head)}" class="muted">No disc level was found.</td></tr>')
    return ("<table class=\"summary\"><thead><tr>" + "".join(f"<th>{h}</th>" for h in head)
            + "</tr></thead><tbody>" + "".join(rows) + "</tbody></table>")


def _legend_html(result: StudyResult) -> str:
    parts = []
    for scale in _scales_used(result.levels):
        rows = "".join(f"<tr><td>{_chip(c.name, c.color)}</td><td><b>{_esc(c.label)}</b>. "
                       f"<span class=\"def\">{_esc(c.definition)}</span></td></tr>" for c in scale.classes)
        parts.append(f"<h2>{_esc(scale.title)}</h2><table class=\"legend\"><tbody>{rows}</tbody></table>"
                     f'<div class="muted" style="margin-top:4px">{_esc(scale.reference)}</div>')
    return "\n".join(parts)


def _picture_html(level: DiscLevel, study: StudyInfo, image: Optional[np.ndarray],
                  painter: Optional[_LevelPicture]) -> str:
    if image is None:
        return '<div class="muted">No slice picture was provided for this level.</div>'
    if painter is None:
        return '<div class="muted">Slice pictures need matplotlib, which is not installed.</div>'
    alt = f"Slice {int(level.slice_index)} with the {effective_name(level)} box, and a zoom around it"
    return f'<img src="{_png_data_uri(painter.png(level, study, image))}" alt="{_esc(alt)}">'


def _card_html(level: DiscLevel, result: StudyResult, picture: str) -> str:
    pred = level.grade
    rgb = grade_color(level)
    name = effective_name(level)
    head = [f'<span class="lvl">{_esc(name)}</span>', _grade_chip(level, pred.grade if pred else None)]
    if name_status(level):
        head.append(f'<span class="flag" title="{_esc(result.study.numbering)}">{_esc(name_status(level))}</span>')
    if canal_status(level):
        head.append('<span class="flag" title="The detector lost the canal here: the box is interpolated from the '
                    f'slices above and below, and the CSF may be effaced by a severe stenosis.">{canal_status(level)}'
                    '</span>')
    if pred is not None:
        head.append(f"<span>{_percent(pred.probability)}</span>")
        if pred.uncertain:
            head.append('<span class="flag">uncertain</span>')
    if level.correction is not None and level.correction.grade:
        head.append(f'<span class="corr">clinician: {_esc(level.correction.grade)}</span>')


    facts = []
    if pred is not None:
        scale = level_scale(level)
        facts.append("<h3>Class probabilities</h3>")
        names = scale.names if scale is not None else list(pred.probabilities)
        names += [n for n in pred.probabilities if n not in names]
        for cls_name in names:
            p = float(pred.probabilities.get(cls_name, 0.0))
            cls = grade_class(level, cls_name)
            color = _rgb_css(cls.color if cls is not None else NEUTRAL_COLOR)
            top = " top" if cls_name == pred.grade else ""
            shown = cls.label if cls is not None else cls_name
            facts.append(f'<div class="bar{top}"><span class="name" title="{_esc(shown)}">{_esc(shown)}</span>'
                         f'<span class="track"><span class="fill" style="display:block;'
                         f'width:{100 * max(0.0, min(1.0, p)):.1f}%;'
                         f'background:{color}"></span></span><span class="num">{_percent(p)}</span></div>')
        cls = grade_class(level, pred.grade)
        if cls is not None:
            facts.append(f'<p class="def"><b>{_esc(cls.label)}</b>: {_esc(cls.definition)}</p>')
    if level.measurements:
        facts.append("<h3>Measurements</h3>")
        facts += [f'<div class="kv">{_esc(format_measurement(k, v))}</div>' for k, v in level.measurements.items()]
    corr = level.correction
    if corr is not None:
        facts.append("<h3>Clinician correction</h3>")
        if corr.grade:
            facts.append(f'<div class="kv">Grade {_grade_chip(level, corr.grade)}'
                         + (f' <span class="muted">(model: {_esc(pred.grade)})</span>' if pred else "") + "</div>")
        if corr.name and corr.name != level.name:
            facts.append(f'<div class="kv">Renamed from {_esc(level.name)}</div>')
        if corr.box is not None:
            facts.append('<div class="kv">Box edited</div>')
        if corr.author:
            facts.append(f'<div class="kv">By {_esc(corr.author)}</div>')
        if corr.note:
            facts.append(f'<div class="kv">&ldquo;{_esc(corr.note)}&rdquo;</div>')
    box = effective_box(level)
    facts.append("<h3>Box (LPS)</h3>")
    facts.append('<div class="kv">Centre (L, P, S) ' + ", ".join(f"{c:.1f}" for c in box.center) + " mm</div>")
    facts.append('<div class="kv">Size ' + " &times; ".join(f"{s:.1f}" for s in box.size) + " mm</div>")
    facts.append(f'<div class="kv">Slice {int(level.slice_index)} &middot; '
                 f"detection score {level.detection_score:.2f}</div>")

    return (f'<article class="card" style="--c:{_rgb_css(rgb)}"><header>{" ".join(head)}</header>'
            f'<div class="body"><div class="pic">{picture}</div>'
            f'<div class="facts">{"".join(facts)}</div></div></article>')


def _footer_html(result: StudyResult) -> str:
    bits = [f"SpineStenosisGrader result schema {_esc(SCHEMA_VERSION)}",
            f"model {_esc(result.model.name)} v{_esc(result.model.version)}"]
    if result.timings_s:
        total = sum(float(v) for v in result.timings_s.values())
        bits.append(f"processing {total:.1f} s")
    bits.append("pictures: radiological convention, patient right on the image left")
    return "<footer>" + " &middot; ".join(bits) + "</footer>"


def render_html_report(result: StudyResult, slice_images: Mapping[int, np.ndarray]) -> str:
    """The report as one HTML string (see :func:`write_html_report`)."""
    generated = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    cards = []
    painter: Optional[_LevelPicture] = None
    try:
        if slice_images:
            painter = _LevelPicture()
    except ImportError:
        pass  # the cards say pictures need matplotlib
    for level in result.levels:
        image = slice_images.get(level.slice_index) if slice_images is not None else None
        if image is not None:
            image = np.asarray(image)
            if image.ndim == 3 and 1 in image.shape:
                image = np.squeeze(image)
            if image.ndim != 2:
                raise ValueError(f"slice image of {level.name} must be 2D (rows, columns), got shape {image.shape}")
        cards.append(_card_html(level, result, _picture_html(level, result.study, image, painter)))
    title = f"Stenosis grading: {result.study.source}"
    csp = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"
    return "\n".join([
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f'<meta http-equiv="Content-Security-Policy" content="{csp}">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{_esc(title)}</title>",
        f"<style>{_CSS}</style></head><body><main>",
        _header_html(result, generated),
        "<h2>Summary</h2>",
        _summary_html(result),
        "<h2>Levels</h2>" if cards else "",
        *cards,
        _legend_html(result),
        _footer_html(result),
        "</main></body></html>",
    ])


def write_html_report(result: StudyResult, path: Path, slice_images: Mapping[int, np.ndarray]) -> None:
    """Write a self-contained HTML report of ``result`` to ``path``.

    ``slice_images[level.slice_index]`` is the level's representative axial
    slice as stored in the stack: shape (n_j, n_i), rows anterior to posterior,
    columns patient right to left, raw intensities (HU for CT). It is shown as
    is (radiological convention) with the level's box, and zoomed around it.
    A level without a picture gets a card without one.
    """
    Path(path).write_text(render_html_report(result, slice_images), encoding="utf-8")
