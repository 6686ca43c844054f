"""Reproducible phantoms of axial spine CT and T2 MRI, with ground truth.

The public scans the project ships carry no stenosis grades, so the grades the
detector and the classifiers learn from come from here. A phantom study is an
axial stack (lumbar or cervical, CT in HU or T2 MR in arbitrary units) with:

- a canal mask and a dural-sac mask on the same grid,
- the disc levels, their grade (Schizas A-D lumbar, Kang 0-3 cervical) and the
  dural-sac area measured on the rendered mask,
- the canal box on every slice and how much of every slice lies in a disc.

Geometry follows ITK/LPS with an identity direction: index i runs to patient
Left, j to Posterior, k to Superior. In ``sitk.GetArrayFromImage`` order
``[k, j, i]`` row 0 is anterior and column 0 is the patient's right, i.e. the
usual radiological display. Everything is modelled in millimetres and sampled
on the requested grid, so the anatomy keeps its physical size whatever the
pixel spacing: a detector that sees phantoms and real scans at one physical
scale must not be able to tell them apart by size.

Shapes are implicit functions (approximate signed distances in mm) evaluated
only inside small pixel windows around each structure; a signed distance
turns into an anti-aliased coverage with a ramp 1-1.8 pixels wide (the
scanner's blur varies by study), which is the in-plane partial-volume
effect. Along z, every structure has an extent in mm and its weight on a
slice is the fraction of the slice thickness it covers, which is the
through-plane partial-volume effect (and the definition of ``disc_weight``).
Noise comes from small per-study banks sampled with random shifts, because
drawing fresh normals for every voxel costs more than the whole rendering.
Tissues far from the spine change slowly along z: they are rendered every
few millimetres and blended between, which halves the cost of a stack.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from types import SimpleNamespace

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from ..scales import KANG, SCHIZAS, GradingScale

__all__ = [
    "CERVICAL_LEVELS",
    "LUMBAR_LEVELS",
    "PhantomLevel",
    "PhantomStudy",
    "make_disc_slice",
    "make_study",
]

#: lumbar disc levels, superior to inferior (the order clinicians read them)
LUMBAR_LEVELS = ("T12-L1", "L1-L2", "L2-L3", "L3-L4", "L4-L5", "L5-S1")
#: cervical disc levels, superior to inferior
CERVICAL_LEVELS = ("C2-C3", "C3-C4", "C4-C5", "C5-C6", "C6-C7", "C7-T1")

MODALITIES = ("CT", "MR")
REGIONS = ("lumbar", "cervical")

# Vertebrae from inferior to superior, one more than the named discs; the
# names matter only for the few that look different (sacrum, ribs, C7, C2).
_VERTEBRAE = {
    "lumbar": ("S1", "L5", "L4", "L3", "L2", "L1", "T12"),
    "cervical": ("T1", "C7", "C6", "C5", "C4", "C3", "C2"),
}

# Class priors with the heavy imbalance seen in clinical data (seed 004 found
# ~77% A); a little flatter than that so every class keeps enough examples.
_GRADE_PRIOR = {
    "lumbar": {"A": 0.60, "B": 0.20, "C": 0.12, "D": 0.08},
    "cervical": {"0": 0.55, "1": 0.25, "2": 0.13, "3": 0.07},
}
# Relative stenosis risk by level: lower lumbar and mid cervical levels are
# where degeneration concentrates. Means are ~1 so the overall mix keeps the prior.
_LEVEL_RISK = {
    "T12-L1": 0.35, "L1-L2": 0.5, "L2-L3": 0.8, "L3-L4": 1.1, "L4-L5": 1.7, "L5-S1": 1.35,
    "C2-C3": 0.5, "C3-C4": 0.9, "C4-C5": 1.1, "C5-C6": 1.55, "C6-C7": 1.3, "C7-T1": 0.6,
}
# Target dural-sac area (mm2) at the disc centre, by Schizas grade; the
# ranges sit inside the clinical bands (A ~130-250, B ~80-130, C ~45-85, D ~30-70).
_LUMBAR_AREA = {"A": (140.0, 235.0), "B": (88.0, 124.0), "C": (50.0, 78.0), "D": (33.0, 62.0)}


# --------------------------------------------------------------------------- public types


@dataclass
class PhantomLevel:
    """One named disc level of a phantom study and its ground truth."""

    name: str  #: "L4-L5", "C5-C6"
    z_mm: float  #: LPS z (superior positive) of the disc centre, at the canal centre
    slice_index: int  #: index k of the slice nearest the disc centre
    grade: str  #: Schizas "A".."D" (lumbar) or Kang "0".."3" (cervical)
    dural_sac_area_mm2: float  #: sac_mask area on slice ``slice_index``
    posterior_fat: bool  #: posterior epidural fat present at the disc


@dataclass
class PhantomStudy:
    """A rendered phantom stack with its masks, levels and per-slice truth."""

    image: sitk.Image  #: float32; CT in HU, MR in arbitrary positive units (~0..1000)
    canal_mask: sitk.Image  #: uint8; canal contents inside the bony/ligamentous ring
    sac_mask: sitk.Image  #: uint8; dural sac only
    levels: list[PhantomLevel]  #: inferior -> superior
    canal_boxes: dict[int, tuple[int, int, int, int]]  #: k -> (i0, j0, i1, j1), half-open
    disc_weight: np.ndarray  #: (n_slices,), fraction of each slice's thickness inside a disc
    modality: str  #: "CT" or "MR"
    region: str  #: "lumbar" or "cervical"
    seed: int


# --------------------------------------------------------------------------- public functions


def make_study(
    seed: int,
    modality: str = "MR",
    region: str = "lumbar",
    *,
    grades: dict[str, str] | None = None,
    n_slices: int | None = None,
    slice_spacing_mm: float | None = None,
    pixel_spacing_mm: float | None = None,
    matrix: int | None = None,
) -> PhantomStudy:
    """Render one phantom study, reproducibly from ``seed``.

    Unset arguments are drawn from ``numpy.random.default_rng(seed)`` within
    the ranges of routine protocols. ``grades`` maps level names of the region
    to grades of its scale; levels not in it get a grade drawn with a
    realistic class imbalance. The stack covers the whole region or a random
    window of at least three levels; either way it contains the levels named
    in ``grades`` (with ``n_slices`` the stack is centred on them).
    """
    modality, region = _check_kind(modality, region)
    phantom = _Phantom(
        seed, modality, region, grades=grades, n_slices=n_slices,
        slice_spacing_mm=slice_spacing_mm, pixel_spacing_mm=pixel_spacing_mm, matrix=matrix,
    )
    return phantom.study()


def make_disc_slice(
    seed: int,
    modality: str,
    region: str,
    grade: str,
    *,
    pixel_spacing_mm: float | None = None,
    matrix: int | None = None,
) -> tuple[np.ndarray, tuple[float, float], tuple[int, int, int, int], np.ndarray]:
    """Render one axial slice through the centre of a disc of the given grade.

    The fast path for classifier training: only one slice is rendered, at the
    disc centre of a level chosen by the seed; the patient is the one
    ``make_study(seed, ...)`` would draw.
    Returns ``(image, (spacing_i_mm, spacing_j_mm), (i0, j0, i1, j1), canal_mask)``
    with the image as rows = j, columns = i (float32) and the mask as uint8.
    """
    modality, region = _check_kind(modality, region)
    scale = _scale_of(region)
    scale.index(grade)  # raises KeyError with the valid names
    names = LUMBAR_LEVELS if region == "lumbar" else CERVICAL_LEVELS
    level = names[int(np.random.default_rng([seed, 7]).integers(len(names)))]
    phantom = _Phantom(
        seed, modality, region, grades={level: grade}, n_slices=1,
        pixel_spacing_mm=pixel_spacing_mm, matrix=matrix, focus_level=level,
    )
    image, canal, _sac = phantom.render()
    box = _box_of(canal[0])
    ps = phantom.ps
    return image[0], (ps, ps), box if box is not None else (0, 0, 0, 0), canal[0]


# --------------------------------------------------------------------------- helpers


def _check_kind(modality: str, region: str) -> tuple[str, str]:
    mod = str(modality).upper()
    reg = str(region).lower()
    if mod not in MODALITIES:
        raise ValueError(f"modality must be one of {MODALITIES}, not {modality!r}")
    if reg not in REGIONS:
        raise ValueError(f"region must be one of {REGIONS}, not {region!r}")
    return mod, reg


def _scale_of(region: str) -> GradingScale:
    return SCHIZAS if region == "lumbar" else KANG


def _box_of(mask2d: np.ndarray) -> tuple[int, int, int, int] | None:
    rows = np.flatnonzero(mask2d.any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(mask2d.any(axis=0))
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1


def _overlap(a0, a1, b0, b1):
    """Length of the intersection of [a0, a1] and [b0, b1] (arrays broadcast)."""
    return np.clip(np.minimum(a1, b1) - np.maximum(a0, b0), 0.0, None)


def _span(a0: float, a1: float, b0: float, b1: float) -> float:
    """``_overlap`` for plain floats (numpy calls on scalars are slow)."""
    return max(0.0, min(a1, b1) - max(a0, b0))


def _ramp(d: np.ndarray, inv_width: float) -> np.ndarray:
    """Coverage of a pixel by a shape, from its signed distance (mm).

    A linear ramp 1/inv_width mm wide (about a pixel): the cheapest
    anti-aliasing that still gives partial-volume edges; a Gaussian blur of
    the whole volume would cost more than rendering it.
    """
    a = d * (-inv_width)
    a += 0.5
    np.maximum(a, 0.0, out=a)
    np.minimum(a, 1.0, out=a)
    return a


def _sd_ellipse(u, v, cu, cv, a, b, ang=0.0):
    """Approximate signed distance (mm) to an ellipse with semi-axes a (u) and b (v)."""
    du = u - cu + 1e-4  # keeps the centre pixel off the 0/0 of the formula
    dv = v - cv
    if ang:
        c, s = math.cos(ang), math.sin(ang)
        du, dv = c * du + s * dv, c * dv - s * du
    x = du * (1.0 / a)
    y = dv * (1.0 / b)
    k0 = np.sqrt(x * x + y * y)
    k1 = np.sqrt((x * (1.0 / a)) ** 2 + (y * (1.0 / b)) ** 2)
    # k0/k1 is the local length scale; bounded by the semi-axes, which also
    # makes the estimate sane far inside and far outside.
    ratio = np.clip(k0 / (k1 + 1e-12), min(a, b), max(a, b))
    return (k0 - 1.0) * ratio


def _sd_circle(u, v, cu, cv, r):
    return np.sqrt((u - cu) ** 2 + (v - cv) ** 2) - r


def _sd_capsule(u, v, ax, ay, bx, by, ra, rb=None):
    """Signed distance to a segment with a radius that tapers from ra to rb."""
    pax = u - ax
    pay = v - ay
    bax = bx - ax
    bay = by - ay
    h = (pax * bax + pay * bay) * (1.0 / (bax * bax + bay * bay + 1e-9))
    np.clip(h, 0.0, 1.0, out=h)
    d = np.sqrt((pax - bax * h) ** 2 + (pay - bay * h) ** 2)
    if rb is None:
        return d - ra
    return d - (ra + (rb - ra) * h)


def _sd_canal(u, v, cw, ca, tri, p):
    """Radial signed distance to the bony canal outline.

    A superellipse (half-width cw, half-depth ca, exponent p) whose width
    shrinks towards posterior with ``tri``: 0 gives the oval upper lumbar
    canal, ~0.4 the triangular canal of L4-L5/L5-S1 and of the neck.
    """
    w = cw * np.clip(1.0 - tri * v * (1.0 / ca), 0.3, None)
    uu = u + 1e-4
    r = np.sqrt(uu * uu + v * v)
    f = (np.abs(uu) / w) ** p + (np.abs(v) * (1.0 / ca)) ** p
    return r * (1.0 - f ** (-1.0 / p))


def _sd_row_convex(X, Y, A, b_ant, b_post, p_ant, p_post):
    """Signed distance to a body outline, on a full slice, cheaply.

    The outline is a superellipse, rounder in front than behind. X (columns)
    and Y (rows, negative = anterior) are 1D. Half-widths per row and
    half-heights per column are 1D, so the only full-slice work is combining
    the horizontal and vertical distances; for a convex shape symmetric about
    both axes they share their sign, and |dx dy| / hypot(dx, dy) is the
    distance to the locally straight boundary.
    """
    ay = np.abs(Y)
    neg = Y < 0
    bt = np.where(neg, b_ant, b_post)
    pt = np.where(neg, p_ant, p_post)
    t = 1.0 - (ay / bt) ** pt
    xw = np.where(t > 0, A * np.clip(t, 0, None) ** (1.0 / pt), -(ay - bt))
    ax_ = np.abs(X)
    s = 1.0 - (ax_ / A) ** p_ant
    yw_a = np.where(s > 0, b_ant * np.clip(s, 0, None) ** (1.0 / p_ant), -(ax_ - A))
    s = 1.0 - (ax_ / A) ** p_post
    yw_p = np.where(s > 0, b_post * np.clip(s, 0, None) ** (1.0 / p_post), -(ax_ - A))
    f32 = np.float32
    dx = ax_.astype(f32)[None, :] - xw.astype(f32)[:, None]
    # rows in front use the anterior half-heights, rows behind the posterior ones
    # (Y ascends with the row index, so the anterior rows come first)
    dy = np.empty_like(dx)
    k = int(neg.sum())
    ayc = ay.astype(f32)[:, None]
    np.subtract(ayc[:k], yw_a.astype(f32)[None, :], out=dy[:k])
    np.subtract(ayc[k:], yw_p.astype(f32)[None, :], out=dy[k:])
    hyp = np.sqrt(dx * dx + dy * dy)
    hyp += 1e-6
    out = dx * dy
    np.copysign(out, dx, out=out)
    out /= hyp
    return out


def _smooth_field(rng: np.random.Generator, n: int, sigma_px: float) -> np.ndarray:
    """An n x n Gaussian random field with unit variance and correlation length sigma_px.

    Wide kernels are done on a coarser grid and interpolated bilinearly: a
    smooth field loses nothing, and a wide Gaussian at full resolution would
    cost more than rendering a slice.
    """
    step = max(int(sigma_px / 1.5), 1)
    nc = n // step + 2
    t = rng.standard_normal((nc, nc), dtype=np.float32)
    if sigma_px > 0.05:
        t = ndimage.gaussian_filter(t, sigma_px / step, output=np.float32, truncate=3.0)
    if step > 1:
        pos = np.arange(n) / step
        i0 = pos.astype(int)
        f = (pos - i0).astype(np.float32)
        t = t[i0] * (1.0 - f)[:, None] + t[i0 + 1] * f[:, None]
        t = t[:, i0] * (1.0 - f)[None, :] + t[:, i0 + 1] * f[None, :]
    else:
        t = np.ascontiguousarray(t[:n, :n])
    sub = t[::3, ::3]  # the statistics of a subsample are plenty for a normalisation
    t -= sub.mean()
    t *= 1.0 / (sub.std() + 1e-6)
    return t


def _upsample2(c: np.ndarray, n: int) -> np.ndarray:
    """Bilinear x2 upsampling of a (n//2 + 1)-square grid to n x n (pixel 2i on node i)."""
    h = (n + 1) // 2
    rows = np.empty((n, c.shape[1]), np.float32)
    rows[0::2] = c[:h]
    rows[1::2] = c[: n // 2]
    rows[1::2] += c[1: n // 2 + 1]
    rows[1::2] *= 0.5
    out = np.empty((n, n), np.float32)
    out[:, 0::2] = rows[:, :h]
    out[:, 1::2] = rows[:, : n // 2]
    out[:, 1::2] += rows[:, 1: n // 2 + 1]
    out[:, 1::2] *= 0.5
    return out


def _U(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(rng.uniform(lo, hi))


# --------------------------------------------------------------------------- model pieces


@dataclass
class _Disc:
    """A disc (or a fused joint beyond the region) and its stenosis state."""

    name: str | None
    z: float
    h: float
    fused: bool = False
    grade: str = ""
    sigma: float = 0.0  # severity 0..~1, solved so that the sac matches the grade
    w_d: float = 1.0  # share of the severity carried by the disc bulge
    w_l: float = 1.0  # ... by ligamentum flavum hypertrophy
    w_f: float = 1.0  # ... by facet hypertrophy
    prot_u: float = 0.0  # lateral offset of a focal protrusion
    prot_f: float = 0.0  # fraction of the bulge that is focal
    crowd: float = 0.0  # 0: CSF with dorsal rootlets .. 1: homogeneous sac
    m_post: float = 3.0  # posterior epidural fat between sac and flavum (mm)
    m_lat: float = 1.0
    m_ant: float = 0.5
    big_sac: float = 0.0  # grade D: the sac fills all the room left, no fat
    nucleus: float = 1.0  # 1 healthy (bright on T2) .. 0 degenerated (dark)
    hyper: bool = False  # cervical Kang 3: high T2 signal in the cord
    target: float = 0.0
    posterior_fat: bool = True


@dataclass
class _Vertebra:
    name: str
    zb: float  # inferior endplate
    zt: float  # superior endplate
    z_lo: float  # centre of the disc below
    h_lo: float
    z_hi: float
    h_hi: float

    @property
    def H(self) -> float:
        return self.zt - self.zb


class _Window:
    """A pixel window of the slice with the spine-frame coordinates of its pixels."""

    __slots__ = ("rows", "cols", "u", "v", "shape")

    def __init__(self, rows: slice, cols: slice, u: np.ndarray, v: np.ndarray):
        self.rows = rows
        self.cols = cols
        self.u = u
        self.v = v
        self.shape = None if u is None else u.shape


class _Frame:
    """The spine's local frame on one slice.

    u points to patient left and v to posterior, origin at the canal centre,
    rotated by theta in-plane. Windows are cut from local bounding boxes.
    """

    def __init__(self, xs, ys, ox, oy, ps, xc, yc, theta):
        self.xs, self.ys, self.ox, self.oy, self.ps = xs, ys, ox, oy, ps
        self.xc, self.yc = xc, yc
        self.c, self.s = math.cos(theta), math.sin(theta)
        self.n = xs.size

    def to_world(self, u, v):
        return self.xc + self.c * u - self.s * v, self.yc + self.s * u + self.c * v

    def window(self, u0, u1, v0, v1) -> _Window | None:
        cu = np.array([u0, u1, u0, u1])
        cv = np.array([v0, v0, v1, v1])
        x, y = self.to_world(cu, cv)
        i0 = max(int(math.floor((x.min() - self.ox) / self.ps)), 0)
        i1 = min(int(math.ceil((x.max() - self.ox) / self.ps)) + 1, self.n)
        j0 = max(int(math.floor((y.min() - self.oy) / self.ps)), 0)
        j1 = min(int(math.ceil((y.max() - self.oy) / self.ps)) + 1, self.n)
        if i1 <= i0 or j1 <= j0:
            return None
        dx = (self.xs[i0:i1] - self.xc)[None, :]
        dy = (self.ys[j0:j1] - self.yc)[:, None]
        u = self.c * dx + self.s * dy
        v = self.c * dy - self.s * dx
        return _Window(slice(j0, j1), slice(i0, i1), u.astype(np.float32), v.astype(np.float32))


def _paint(img: np.ndarray, w: _Window, alpha: np.ndarray, value) -> None:
    """Composite a tissue over the slice: img <- img + alpha (value - img)."""
    sub = img[w.rows, w.cols]
    sub += alpha * (value - sub)


# --------------------------------------------------------------------------- the phantom


class _Phantom:
    """All random parameters of one study, and its renderer."""

    def __init__(
        self,
        seed: int,
        modality: str,
        region: str,
        *,
        grades: dict[str, str] | None = None,
        n_slices: int | None = None,
        slice_spacing_mm: float | None = None,
        pixel_spacing_mm: float | None = None,
        matrix: int | None = None,
        focus_level: str | None = None,
    ):
        self._anchors: dict[int, np.ndarray] = {}
        self._bias2d: np.ndarray | None = None
        self._off_f = self._off_m = (0, 0)  # texture shifts of the slice being painted
        self.seed = int(seed)
        self.modality = modality
        self.region = region
        self.lumbar = region == "lumbar"
        self.scale = _scale_of(region)
        self.names = LUMBAR_LEVELS if self.lumbar else CERVICAL_LEVELS
        grades = dict(grades or {})
        for name, g in grades.items():
            if name not in self.names:
                raise ValueError(f"{name!r} is not a {region} level ({', '.join(self.names)})")
            self.scale.index(g)
        # Every draw happens in a fixed order whatever the overrides, so one
        # seed keeps its anatomy when only the acquisition is changed.
        rng = np.random.default_rng(self.seed)
        self._draw_acquisition(rng, n_slices, slice_spacing_mm, pixel_spacing_mm, matrix)
        self._draw_spine(rng, grades)
        self._draw_body(rng)
        self._draw_window(rng, grades, n_slices, focus_level)
        self._draw_grid(rng)
        self._draw_tissues(rng)
        self._draw_rootlets(rng)
        for disc in self.discs:
            # a single disc slice needs only its own level solved
            if disc.name is not None and focus_level in (None, disc.name):
                self._solve_severity(disc)
        self._draw_noise(rng)

    # ------------------------------------------------------------------ random draws

    def _draw_acquisition(self, rng, n_slices, slice_spacing, pixel_spacing, matrix):
        if self.lumbar and self.modality == "MR":
            ps, dz = _U(rng, 0.5, 0.9), _U(rng, 3.0, 4.0)
        elif self.lumbar:
            ps, dz = _U(rng, 0.6, 1.0), _U(rng, 1.0, 3.0)
        elif self.modality == "MR":
            ps, dz = _U(rng, 0.4, 0.8), _U(rng, 2.0, 5.0)
        else:
            ps, dz = _U(rng, 0.3, 0.6), _U(rng, 1.0, 2.0)
        self.fov_pref = _U(rng, 0.0, 1.0)
        # Edge softness (ramp width in pixels): scanners blur a little, MR more than CT.
        self.soft = _U(rng, 1.0, 1.8) if self.modality == "MR" else _U(rng, 1.0, 1.4)
        self.ps = float(pixel_spacing) if pixel_spacing else round(ps, 4)
        self.spacing = float(slice_spacing) if slice_spacing else round(dz, 3)
        if self.ps <= 0 or self.spacing <= 0:
            raise ValueError("pixel and slice spacing must be positive")
        self.thickness = self.spacing  # contiguous slices
        self.inv = 1.0 / (self.ps * self.soft)
        self.matrix_req = int(matrix) if matrix else None
        if self.matrix_req is not None and self.matrix_req < 8:
            raise ValueError("matrix must be at least 8")
        self.n_req = int(n_slices) if n_slices else None
        if n_slices is not None and int(n_slices) < 1:
            raise ValueError("n_slices must be at least 1")

    def _draw_spine(self, rng, grades):
        lum = self.lumbar
        n = len(self.names)
        gap_lo, gap_hi = (34.0, 40.0) if lum else (15.0, 18.0)
        z = _U(rng, -150.0, 150.0)
        disc_z = [z]
        for _ in range(n - 1):
            z += _U(rng, gap_lo, gap_hi)
            disc_z.append(z)
        names_inf = list(reversed(self.names))  # inferior -> superior
        discs = []
        for i, name in enumerate(names_inf):
            if lum:
                h = _U(rng, 7.0, 10.0) if name == "T12-L1" else _U(rng, 8.0, 12.0)
            else:
                h = _U(rng, 4.6, 6.4)
            discs.append(_Disc(name=name, z=disc_z[i], h=h))
        self.mean_gap = float(np.mean(np.diff(disc_z)))
        # A study-wide degeneration factor makes stenoses cluster in a patient.
        degen = _U(rng, 0.5, 1.5)
        prior = _GRADE_PRIOR[self.region]
        classes = self.scale.names
        for i, disc in enumerate(discs):
            risk = _LEVEL_RISK[disc.name] * degen
            p = np.array([prior[c] * (risk if j else 1.0) for j, c in enumerate(classes)])
            p[0] = max(1.0 - p[1:].sum(), 0.08)
            p /= p.sum()
            drawn = classes[int(rng.choice(len(classes), p=p))]
            disc.grade = grades.get(disc.name, drawn)
            # a level's own generator: forcing a grade must not shift the
            # draws of anything else in the study
            self._draw_disc_state(np.random.default_rng([self.seed, 3, i]), disc)
        self.named = discs
        # Spine path: lordosis (canal drifts anteriorly mid-region), a little
        # scoliosis and in-plane rotation.
        z_mid = 0.5 * (disc_z[0] + disc_z[-1])
        half = 0.5 * (disc_z[-1] - disc_z[0]) + (30.0 if lum else 15.0)
        self.path = SimpleNamespace(
            z_mid=z_mid, half=half,
            lord=_U(rng, 5.0, 20.0) if lum else _U(rng, 2.0, 8.0),
            z_apex=z_mid + _U(rng, -0.2, 0.1) * half,
            scol=_U(rng, 0.0, 4.0 if lum else 2.0), scol_len=_U(rng, 150, 400), scol_ph=_U(rng, 0, 6.28),
            theta0=math.radians(float(rng.normal(0.0, 3.0))), theta1=math.radians(float(rng.normal(0.0, 2.0))),
            tilt_gain=_U(rng, 0.6, 1.0) if self.modality == "CT" else _U(rng, 0.0, 0.3),
        )
        # Per-level shape parameters, anchored at disc centres, and per-vertebra
        # ones, anchored at body centres; both are interpolated along z.
        r = np.linspace(0.0, 1.0, n)  # 0 = lowest level
        g = lambda lo, hi: rng.uniform(lo, hi, n)  # noqa: E731
        if lum:
            tri_base = np.array([0.42, 0.38, 0.25, 0.15, 0.08, 0.05])
            self.disc_par = dict(
                cw=11.0 + 1.8 * (1 - r) + g(-0.7, 0.7), ca=g(8.0, 10.2), tri=tri_base + g(-0.06, 0.06),
                p=g(2.1, 2.6), sw_f=g(0.76, 0.88), sa_f=g(0.74, 0.86), lf0=g(2.2, 3.4),
                sap_a=g(3.6, 4.6), sap_b=g(7.0, 8.5),
                # facet joint angle from the sagittal plane: near-sagittal high, oblique low
                fa=np.radians(np.array([50.0, 45.0, 38.0, 32.0, 28.0, 25.0]) + g(-6, 6)),
            )
        else:
            self.disc_par = dict(
                cw=g(11.0, 13.0), ca=g(7.2, 8.6), tri=g(0.35, 0.55), p=g(2.0, 2.4),
                sw_f=g(0.84, 0.9), sa_f=g(0.84, 0.9), lf0=g(1.4, 2.2), sap_a=g(4.6, 5.6), sap_b=g(6.0, 7.0),
            )
        nv = n + 1
        rv = np.linspace(0.0, 1.0, nv)
        gv = lambda lo, hi: rng.uniform(lo, hi, nv)  # noqa: E731
        if lum:
            tp = np.array([0.0, 17.0, 27.0, 32.0, 29.0, 22.0, 12.0]) + gv(-3, 3)
            self.vert_par = dict(
                bw=19.5 + 5.0 * (1 - rv) + gv(-0.8, 0.8), bd=14.0 + 2.5 * (1 - rv) + gv(-0.6, 0.6),
                ped_r=gv(3.8, 4.8), lam_t=gv(4.0, 6.0), sp_len=gv(25.0, 33.0), sp_r=gv(2.4, 3.2),
                tp_len=tp, tp_r=np.where(np.arange(nv) == 1, 5.0, 3.4) + gv(-0.4, 0.4),
                marrow=gv(-0.12, 0.12),
            )
        else:
            sp = np.array([30.0, 27.0, 18.0, 14.0, 13.0, 13.0, 19.0]) + gv(-2, 2)
            self.vert_par = dict(
                bw=8.0 + 1.8 * (1 - rv) + gv(-0.4, 0.4), bd=gv(7.0, 8.2), ped_r=gv(2.4, 3.0),
                lam_t=gv(2.6, 3.6), sp_len=sp, sp_r=gv(2.0, 2.8), tp_len=gv(11.0, 14.0),
                tp_r=gv(2.6, 3.2), marrow=gv(-0.12, 0.12),
            )
        self.cord = SimpleNamespace(w=_U(rng, 5.0, 6.4), a=_U(rng, 3.5, 4.0))  # semi-axes, mm
        self.conus_z = discs[-2].z + _U(rng, -8.0, 14.0) if lum else None  # near L1-L2

    def _draw_disc_state(self, rng, disc: _Disc):
        """Severity mix, fat margins and appearance of one named level."""
        grade = disc.grade
        k = self.scale.index(grade)
        w = rng.dirichlet([2.0, 2.0, 2.0]) * 3.0
        disc.w_d, disc.w_l, disc.w_f = (0.4 + 0.6 * w).tolist()
        if not self.lumbar:
            disc.w_f *= 0.3  # facets matter little for the cervical central canal
        disc.prot_f = _U(rng, 0.0, 0.7)
        disc.prot_u = _U(rng, -4.0, 4.0)
        disc.nucleus = float(np.clip(_U(rng, 0.5, 1.0) - 0.25 * k + rng.normal(0, 0.15), 0.0, 1.0))
        if self.lumbar:
            disc.m_lat = _U(rng, 0.8, 1.8)
            disc.m_ant = _U(rng, 0.3, 1.0)
            disc.crowd = [_U(rng, 0.0, 0.15), _U(rng, 0.42, 0.58), _U(rng, 0.88, 1.0), 1.0][k]
            disc.m_post = _U(rng, 2.5, 5.0)
            if grade == "D":
                disc.m_post, disc.big_sac, disc.posterior_fat = 0.0, 1.0, False
            lo, hi = _LUMBAR_AREA[grade]
            disc.target = _U(rng, lo, hi)
        else:
            disc.m_lat = _U(rng, 0.5, 1.0)
            disc.m_ant = _U(rng, 0.2, 0.5)
            disc.m_post = _U(rng, 0.6, 1.4)
            if k >= 2:
                disc.m_post, disc.posterior_fat = 0.0, False
            disc.hyper = k == 3
            disc.target = [_U(rng, 3.2, 6.0), _U(rng, 0.5, 1.4), _U(rng, 0.64, 0.86), _U(rng, 0.52, 0.76)][k]

    def _draw_body(self, rng):
        """Body (abdomen or neck) outline and the soft tissues around the spine."""
        hab = _U(rng, 0.0, 1.0)  # habitus: thin .. obese
        if self.lumbar:
            A = 140.0 + 45.0 * hab + _U(rng, 0, 10)
            B = 100.0 + 35.0 * hab + _U(rng, 0, 10)
            tf_ant, tf_lat, tf_post = 8 + 35 * hab + _U(rng, -3, 3), 10 + 40 * hab + _U(rng, -3, 3), 6 + 24 * hab
            # the paraspinal muscles bulge behind the spinous tips (real scans:
            # ~70-85 mm from the canal centre to the skin)
            d_back = tf_post + _U(rng, 52.0, 72.0)
            self.body = SimpleNamespace(
                A=A, B=B, p_ant=_U(rng, 2.0, 2.5), p_post=_U(rng, 2.6, 3.6), tf_ant=tf_ant, tf_lat=tf_lat,
                tf_post=tf_post, d_back=d_back, wall=_U(rng, 8.0, 14.0),
                es_a=_U(rng, 20.0, 27.0), ps_a=_U(rng, 16.0, 23.0),
                ps_b=_U(rng, 13.0, 18.0), ql_a=_U(rng, 12.0, 18.0),
                kid_z=self.named[-2].z + _U(rng, -10.0, 15.0), kid_h=_U(rng, 48.0, 60.0),
                kid_u=_U(rng, 58.0, 72.0), liver=_U(rng, 0.8, 1.2),
                ao_u=_U(rng, 8.0, 16.0), ao_r=_U(rng, 9.0, 12.0), ivc_u=_U(rng, 18.0, 26.0),
                bif_z=self.named[1].z + _U(rng, 8.0, 25.0), il_top=self.named[1].z - _U(rng, 0.0, 15.0),
                il_t=_U(rng, 5.0, 8.0),
            )
        else:
            A = 55.0 + 12.0 * hab + _U(rng, 0, 5)
            B = 52.0 + 10.0 * hab + _U(rng, 0, 5)
            tf = 3.0 + 8.0 * hab
            self.body = SimpleNamespace(
                A=A, B=B, p_ant=_U(rng, 2.0, 2.3), p_post=_U(rng, 2.2, 2.8), tf_ant=tf, tf_lat=tf,
                tf_post=tf + 2.0, d_back=_U(rng, 44.0, 56.0) + 0.5 * tf,
                air_r=_U(rng, 7.0, 9.5), air_gap=_U(rng, 12.0, 18.0),
                car_u=_U(rng, 17.0, 23.0), thy_z=self.named[1].z + _U(rng, -3.0, 6.0),
                lar_z=self.named[2].z + _U(rng, 0.0, 6.0),
            )
        self.body.fatty = _U(rng, 0.0, 1.0)
        self.bx, self.by = _U(rng, -30.0, 30.0), _U(rng, -30.0, 30.0)
        self.yc0 = self.by + self.body.B - self.body.d_back
        self.xc0 = self.bx + _U(rng, -8.0, 8.0)

    def _draw_window(self, rng, grades, n_slices, focus_level):
        """Which part of the region the stack covers."""
        named = self.named
        gap = self.mean_gap
        subset = rng.random() < 0.4
        n_lv = int(rng.integers(3, 6))
        m_lo, m_hi = _U(rng, 0.3, 0.6), _U(rng, 0.3, 0.6)
        start = int(rng.integers(0, len(named) - n_lv + 1))
        need = [i for i, d in enumerate(named) if d.name in grades]
        if need:
            lo_ok, hi_ok = max(need) - n_lv + 1, min(need)
            if lo_ok <= hi_ok:
                start = int(np.clip(start, max(lo_ok, 0), min(hi_ok, len(named) - n_lv)))
            else:
                subset = False
        if not subset:
            start, n_lv = 0, len(named)
        first, last = named[start], named[start + n_lv - 1]
        z_lo = first.z - m_lo * gap
        z_hi = last.z + m_hi * gap
        if focus_level is not None:
            disc = next(d for d in named if d.name == focus_level)
            z_centre, n = disc.z, 1
        elif self.n_req is not None:
            # a short stack asked for with grades should contain those levels
            z_centre = float(np.mean([named[i].z for i in need])) if need else 0.5 * (z_lo + z_hi)
            n = self.n_req
        else:
            n = max(int(math.ceil((z_hi - z_lo) / self.spacing)), 1)
            z_centre = 0.5 * (z_lo + z_hi)
        self.n = n
        self.z0 = z_centre - 0.5 * (n - 1) * self.spacing
        self.z_slices = self.z0 + self.spacing * np.arange(n)
        # Unnamed discs beyond the region, so that any stack has anatomy:
        # the sacrum and C1-C2 have no disc, T11-T12 and T1-T2 do.
        lo_needed = self.z_slices[0] - 2.0 * gap
        hi_needed = self.z_slices[-1] + 2.0 * gap
        below, above = [], []
        z = named[0].z
        while z > lo_needed:
            z -= gap * (0.9 if self.lumbar else 1.0)
            fused = self.lumbar
            below.append(_Disc(name=None, z=z, h=(5.0 if fused else 4.5), fused=fused))
        z = named[-1].z
        while z < hi_needed:
            z += gap * (0.85 if self.lumbar else 1.0)
            fused = not self.lumbar
            above.append(_Disc(name=None, z=z, h=(7.0 if self.lumbar else 4.5), fused=fused))
        self.discs = list(reversed(below)) + named + above
        for d in self.discs:
            if d.name is None:
                d.grade = self.scale.names[0]
                d.m_post, d.m_lat, d.m_ant = (3.0, 1.2, 0.6) if self.lumbar else (1.0, 0.7, 0.3)
        self.zd = np.array([d.z for d in self.discs])
        self.vertebrae = []
        names_v = _VERTEBRAE[self.region]
        i_first = len(below)  # index of the lowest named disc in self.discs
        for j in range(len(self.discs) - 1):
            lo, hi = self.discs[j], self.discs[j + 1]
            vi = j + 1 - i_first  # index into names_v of the vertebra between disc j and j+1
            if 0 <= vi < len(names_v):
                name = names_v[vi]
            elif self.lumbar:
                name = "S" if vi < 0 else "T"
            else:
                name = "T" if vi < 0 else "C1"
            self.vertebrae.append(_Vertebra(name, lo.z + lo.h / 2, hi.z - hi.h / 2, lo.z, lo.h, hi.z, hi.h))
        # vertebra parameters were drawn for the named vertebrae, at their body centres
        self.zv_named = np.array([named[0].z - 0.5 * gap]
                                 + [0.5 * (named[q].z + named[q + 1].z) for q in range(len(named) - 1)]
                                 + [named[-1].z + 0.5 * gap])
        self.zd_named = np.array([d.z for d in named])

    def _draw_grid(self, rng):
        """Matrix, field of view and origin."""
        b = self.body
        width = 2.0 * b.A
        # Lumbar MR is often a small field of view on the spine that crops the
        # body; otherwise the field of view fits the body.
        small = self.lumbar and self.modality == "MR" and self.fov_pref < 0.35
        if small:
            fov_target = 180.0 + 80.0 * self.fov_pref / 0.35
        elif self.lumbar:
            fov_target = float(np.clip(width * (1.02 + 0.15 * self.fov_pref), 180.0, 420.0))
        else:
            fov_target = float(np.clip(2.0 * max(b.A, b.B) * (1.25 + 0.5 * self.fov_pref), 180.0, 260.0))
        if self.matrix_req is not None:
            m = self.matrix_req
        else:
            m = int(np.clip(round(fov_target / self.ps / 32.0) * 32, 256, 512))
        self.M = m
        fov = m * self.ps
        # Radiographers centre a small field of view on the spine, a large one on the body.
        cx = self.bx + _U(rng, -10.0, 10.0)
        frac = float(np.clip((2 * b.B + 20 - fov) / (2 * b.B), 0.0, 1.0))
        cy = self.by + (self.yc0 - 20.0 - self.by) * frac + _U(rng, -8.0, 8.0)
        if small:
            cx = self.xc0 + _U(rng, -8.0, 8.0)
        shift = rng.uniform(-60.0, 60.0, 2)  # table position: absolute coordinates vary
        self.bx += shift[0]
        self.by += shift[1]
        self.xc0 += shift[0]
        self.yc0 += shift[1]
        self.ox = cx + shift[0] - 0.5 * (m - 1) * self.ps
        self.oy = cy + shift[1] - 0.5 * (m - 1) * self.ps
        self.xs = (self.ox + self.ps * np.arange(m)).astype(np.float64)
        self.ys = (self.oy + self.ps * np.arange(m)).astype(np.float64)

    def _draw_tissues(self, rng):
        """Intensity of every tissue for this study (HU or T2 units)."""
        U = lambda lo, hi: _U(rng, lo, hi)  # noqa: E731
        if self.modality == "CT":
            contrast = rng.random() < 0.3
            canc = U(170.0, 330.0)
            self.V = dict(
                air=-1000.0, fat=U(-105.0, -82.0), muscle=U(42.0, 58.0), skin=U(20.0, 50.0),
                csf=U(2.0, 13.0), root=U(18.0, 30.0), cord=U(25.0, 38.0), epi_ant=U(-30.0, 20.0),
                annulus=U(82.0, 100.0), nucleus_h=U(68.0, 82.0), nucleus_d=U(70.0, 90.0), lig=U(62.0, 95.0),
                cancellous=canc, cortical=U(800.0, 1300.0), endplate=U(420.0, 650.0),
                blood=U(160.0, 280.0) if contrast else U(35.0, 50.0), bowel=U(20.0, 45.0),
                kidney=U(140.0, 220.0) if contrast else U(25.0, 40.0),
                liver=U(90.0, 120.0) if contrast else U(50.0, 65.0),
                thyroid=U(80.0, 120.0), cartilage=U(120.0, 260.0), joint=U(20.0, 60.0), hyper=0.0,
                ganglion=U(30.0, 45.0), esoph=U(35.0, 50.0),
            )
            self.V["hyper"] = self.V["cord"]  # CT cannot show cord oedema
            self.T = dict(fat=8.0, muscle=9.0, cancellous=0.3 * canc, bowel=22.0, liver=6.0, kidney=8.0,
                          annulus=5.0, skin=6.0)
        else:
            s = U(0.6, 1.05)
            self.V = {k: v * s for k, v in dict(
                air=0.0, fat=U(560.0, 800.0), muscle=U(110.0, 200.0), skin=U(220.0, 400.0),
                csf=U(860.0, 1000.0), root=U(170.0, 290.0), cord=U(280.0, 380.0), epi_ant=U(250.0, 450.0),
                annulus=U(80.0, 160.0), nucleus_h=U(560.0, 850.0), nucleus_d=U(150.0, 280.0), lig=U(55.0, 130.0),
                cancellous=U(250.0, 420.0), cortical=U(15.0, 50.0), endplate=U(40.0, 100.0),
                blood=U(30.0, 120.0), bowel=U(220.0, 420.0), kidney=U(380.0, 560.0), liver=U(150.0, 250.0),
                thyroid=U(300.0, 450.0), cartilage=U(60.0, 150.0), joint=U(500.0, 800.0), hyper=U(600.0, 800.0),
                ganglion=U(300.0, 420.0), esoph=U(150.0, 260.0),
            ).items()}
            # texture amplitudes, relative to each tissue's signal
            rel = dict(fat=0.08, muscle=0.2, cancellous=0.12, bowel=0.45, liver=0.06, kidney=0.06,
                       annulus=0.08, skin=0.1)
            self.T = {k: f * self.V[k] for k, f in rel.items()}

    def _draw_rootlets(self, rng):
        """Cauda equina rootlets: a dorsal layout (normal, supine) and a spread one (crowded)."""
        n = 22 if self.lumbar else 0
        phi = rng.uniform(math.radians(20), math.radians(160), n)
        rho = rng.uniform(0.45, 0.86, n)
        k = np.arange(n)
        rho_f = 0.82 * np.sqrt((k + 0.5) / max(n, 1))
        phi_f = k * 2.39996 + _U(rng, 0, 6.28)
        # Rootlets leave the sac pairwise at each level, the lowest last; the
        # last ones pass below the stack (sacral roots).
        zs = np.sort(self.zd_named)
        exit_z = np.concatenate([np.repeat(zs[1:], 2), np.full(max(n - 2 * (len(zs) - 1), 0), -1e9)])[:n]
        rng.shuffle(exit_z)
        self.roots = SimpleNamespace(
            n=n, du=rho * np.cos(phi), dv=rho * np.sin(phi), fu=rho_f * np.cos(phi_f), fv=rho_f * np.sin(phi_f),
            r=rng.uniform(0.6, 1.0, n), ph=rng.uniform(0, 6.28, n), exit_z=exit_z,
        )

    def _draw_noise(self, rng):
        """Texture and noise banks, reused on every slice with random shifts."""
        m = self.M
        pad = 64
        P = m + pad
        ps = self.ps
        self.pad = pad

        def bank(sigma_mm):
            return _smooth_field(rng, P, sigma_mm / ps)

        self.tex_fine = bank(0.7)
        self.tex_med = bank(2.2)
        # bowel loops (~8 mm) slide through this field along z
        self.tex_coarse = np.stack([_smooth_field(rng, P + 256, 4.0 / ps) for _ in range(2)]) if self.lumbar else None
        nb = 3 if self.n > 2 else 1
        if self.modality == "CT":
            self.noise_sigma = _U(rng, 10.0, 30.0)
            self.noise = [bank(0.45) for _ in range(nb)]  # CT noise is slightly correlated
            self.noise2 = None
        else:
            self.noise_sigma = _U(rng, 0.02, 0.07) * self.V["csf"]
            self.noise = [bank(0.0) for _ in range(nb)]
            # Rician noise needs the square of the imaginary channel only
            self.noise2 = [(self.noise_sigma * bank(0.0)) ** 2 for _ in range(nb)]
        self.bias = rng.normal(0.0, 1.0, 8) * np.array([0.15, 0.10, 0.10, 0.10, 0.05, 0.05, 0.05, 0.0]) + np.array(
            [0.0, 0.12, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0])
        self.slice_rng = np.random.default_rng([self.seed, 1])

    # ------------------------------------------------------------------ geometry along z

    def _frame(self, z: float) -> _Frame:
        p = self.path
        t = (z - p.z_apex) / p.half
        yc = self.yc0 + p.lord * (t * t - 0.3)
        xc = self.xc0 + p.scol * math.sin(2 * math.pi * (z - p.z_mid) / p.scol_len + p.scol_ph)
        theta = p.theta0 + p.theta1 * (z - p.z_mid) / 100.0
        return _Frame(self.xs, self.ys, self.ox, self.oy, self.ps, xc, yc, theta)

    def _tan_tilt(self, z: float) -> float:
        """Tilt of the disc planes against the axial plane, following the lordosis."""
        p = self.path
        slope = 2.0 * p.lord * (z - p.z_apex) / (p.half * p.half)
        return float(np.clip(slope * p.tilt_gain, -0.2, 0.2))

    def _anat(self, z: float) -> SimpleNamespace:
        a = {k: float(np.interp(z, self.zd_named, v)) for k, v in self.disc_par.items()}
        a.update({k: float(np.interp(z, self.zv_named, v)) for k, v in self.vert_par.items()})
        return SimpleNamespace(**a)

    def _vert_weights(self, z: float) -> SimpleNamespace:
        """Fraction of the slice covered by each posterior element, summed over vertebrae."""
        T = self.thickness
        z0, z1 = z - 0.5 * T, z + 0.5 * T
        w = dict(ped=0.0, tp=0.0, lam=0.0, sap=0.0, iap=0.0, pars=0.0, ala=0.0, rib=0.0, unc=0.0)
        lum = self.lumbar
        for vt in self.vertebrae:
            H = vt.H
            if vt.zb - 40 > z1 or vt.zt + 40 < z0:
                continue
            iv = {
                "ped": (vt.zb + 0.42 * H, vt.zb + 0.92 * H),
                "tp": (vt.zb + (0.45 if lum else 0.3) * H, vt.zb + (0.85 if lum else 0.9) * H),
                "lam": (vt.z_lo - 0.25 * vt.h_lo, vt.zb + 0.8 * H),
                "sap": (vt.zb + 0.55 * H, vt.zt + vt.h_hi + 0.1 * H),
                "iap": (vt.zb - vt.h_lo - 0.15 * H, vt.zb + 0.3 * H),
                "pars": (vt.zb + 0.2 * H, vt.zb + 0.7 * H),
            }
            for key, (a, b) in iv.items():
                w[key] += _span(z0, z1, a, b) / T
            if lum and vt.name in ("S1", "S"):
                w["ala"] += _span(z0, z1, vt.zb + 0.15 * H, vt.zt) / T
            if lum and vt.name in ("T12", "T"):
                w["rib"] += _span(z0, z1, vt.zb + 0.4 * H, vt.zb + 0.95 * H) / T
            if not lum:
                w["unc"] += _span(z0, z1, vt.zt - 1.0, vt.zt + 0.6 * vt.h_hi) / T
        for k in w:
            w[k] = min(w[k], 1.0)
        if lum:
            # the sacrum has no transverse or spinous processes of its own
            below_l5s1 = z < self.named[0].z - 0.5 * self.named[0].h
            if below_l5s1:
                w["tp"] = 0.0
        return SimpleNamespace(**w)

    def _nearest_disc(self, z: float) -> _Disc:
        return self.discs[int(np.argmin(np.abs(self.zd - z)))]

    def _state(self, z: float, sigma: float | None = None, disc: _Disc | None = None) -> SimpleNamespace:
        """Everything about the canal on the slice at z, as scalars."""
        d = disc if disc is not None else self._nearest_disc(z)
        a = self._anat(z)
        T = self.thickness
        dz = z - d.z
        sig = d.sigma if sigma is None else sigma
        g = math.exp(-0.5 * (dz / (0.6 * d.h)) ** 2)  # severity peaks at the disc, fades over ~1 disc height
        near = math.exp(-0.5 * (dz / d.h) ** 2)
        f_disc = 0.0 if d.fused else _span(dz - T / 2, dz + T / 2, -d.h / 2, d.h / 2) / T
        lum = self.lumbar
        sev = sig * g
        cw = a.cw * (1.0 - 0.08 * sev)
        ca = a.ca * (1.0 - 0.06 * sev)
        bulge_max, lf_max, fac_max = (9.0, 6.5, 6.0) if lum else (6.0, 4.0, 2.0)
        bulge = ((0.8 if lum else 0.5) + sig * d.w_d * bulge_max) * f_disc
        lf_t = a.lf0 * (0.55 + 0.45 * near) + sig * d.w_l * lf_max * g
        fh = sig * d.w_f * fac_max * g
        sw = a.sw_f * a.cw if lum else a.cw - (1.0 - a.sw_f) * 10.0
        sa = a.sa_f * a.ca if lum else a.ca - (1.0 - a.sa_f) * 6.0
        big = d.big_sac * g
        sw *= 1.0 + 0.6 * big
        sa *= 1.0 + 0.6 * big
        # away from the disc the epidural fat comes back, even at grade D
        m_post = d.m_post * g + (3.0 if lum else 1.0) * (1.0 - g) if d.name else d.m_post
        vw = self._vert_weights(z)
        return SimpleNamespace(
            a=a, disc=d, dz=dz, g=g, near=near, f_disc=f_disc, cw=cw, ca=ca, tri=a.tri, p=a.p,
            bw=a.bw, bd=a.bd, bulge=bulge, prot=bulge * d.prot_f, prot_u=d.prot_u, lf_t=lf_t, fh=fh,
            sw=sw, sa=sa, sv=-0.1 * ca, m_post=m_post, m_lat=d.m_lat, m_ant=d.m_ant,
            crowd=d.crowd * g, hyper=d.hyper and g > 0.35, vw=vw, tan_t=self._tan_tilt(z),
            vb=-ca - a.bd + (2.0 if lum else 1.0),
        )

    # ------------------------------------------------------------------ canal geometry

    def _sd_body(self, u, v, st, disc: bool):
        """Vertebral body or disc outline: a kidney-shaped ellipse; a disc may bulge."""
        bw, bd = st.bw, st.bd
        if disc:
            bw, bd = bw + 1.0, bd + 0.5
        d = _sd_ellipse(u, v, 0.0, st.vb, bw, bd)
        notch = _sd_ellipse(u, v, 0.0, -st.ca + 4.0, 0.55 * st.bw, 4.0)
        d = np.maximum(d, -notch)
        if disc and st.bulge > 0.05:
            d = np.minimum(d, _sd_ellipse(u, v, 0.0, -st.ca, 0.8 * st.bw, max(st.bulge - st.prot, 0.3)))
            if st.prot > 0.3:
                d = np.minimum(d, _sd_ellipse(u, v, st.prot_u, -st.ca, 6.0, st.bulge))
        return d

    def _sd_posterior_joints(self, u, v, st, side: float):
        """Superior and inferior articular processes (lumbar) or lateral masses (cervical)."""
        cw, ca, a = st.cw, st.ca, st.a
        if self.lumbar:
            # The joint runs from anteromedial to posterolateral; the superior
            # process (of the vertebra below) lies in front of and lateral to
            # it and bounds the lateral recess, the inferior process (of the
            # vertebra above) behind and medial, continuous with the lamina.
            fa = a.fa
            ex, ey = side * math.sin(fa), math.cos(fa)  # along the joint
            nx, ny = side * math.cos(fa), -math.sin(fa)  # across, towards the SAP
            jx, jy = side * (cw + 3.2), 0.3 * ca + 1.0
            t_s = a.sap_a + 0.5 * st.fh
            sap = _sd_ellipse(u, v, jx + nx * (0.5 * t_s + 0.3) - ex * 2.0 - side * 0.6 * st.fh,
                              jy + ny * (0.5 * t_s + 0.3) - ey * 2.0, t_s, a.sap_b + 0.3 * st.fh, -side * fa)
            iap = _sd_ellipse(u, v, jx - nx * 2.2 + ex * 1.5, jy - ny * 2.2 + ey * 1.5, 3.4, 7.0, -side * fa)
            pars = _sd_ellipse(u, v, jx + ex * 0.5, jy + ey * 0.5, 5.0, 7.5, -side * fa)
        else:
            sap = _sd_ellipse(u, v, side * (cw + a.sap_a - 1.5 - 0.6 * st.fh), 0.0, a.sap_a, a.sap_b, side * 0.3)
            iap = _sd_ellipse(u, v, side * (cw + a.sap_a - 0.5), 0.35 * ca + 1.0, a.sap_a, a.sap_b, side * 0.3)
            pars = _sd_ellipse(u, v, side * (cw + a.sap_a - 1.0), 0.2 * ca, a.sap_a, a.sap_b)
        return sap, iap, pars

    def _sd_pedicle(self, u, v, st, side):
        r = st.a.ped_r
        cu = side * (st.cw + r - 0.5)
        return _sd_capsule(u, v, cu, -st.ca - 1.0, cu + side * 0.5, 0.35 * st.ca, r)

    def _canal_alphas(self, st, u, v, inv_ps):
        """Coverage of the canal contents and of the dural sac.

        The canal is the bony outline minus whatever occupies it (disc or
        body, flavum, articular processes, pedicles); the sac is its nominal
        ellipse minus the same occupiers grown by the epidural margins. Both
        use one product of coverages, so the sac is always inside the canal.
        """
        vw = st.vw
        d_c = _sd_canal(u, v, st.cw, st.ca, st.tri, st.p)
        # In front: the disc where the slab is in it, the body elsewhere; a
        # linear mix of the two distances moves the wall continuously.
        fd = st.f_disc
        if fd >= 1.0:
            d_ant = self._sd_body(u, v, st, disc=True)
        elif fd <= 0.0:
            d_ant = self._sd_body(u, v, st, disc=False)
        else:
            d_ant = fd * self._sd_body(u, v, st, disc=True) + (1.0 - fd) * self._sd_body(u, v, st, disc=False)
        # ligamentum flavum: a band inside the posterior canal wall, thinner in the midline cleft
        pw = np.clip((v * (1.0 / st.ca) + 0.15) * 2.0, 0.0, 1.0)
        mid = np.clip(np.abs(u) * 0.5, 0.65, 1.0)
        t_lf = st.lf_t * pw * mid
        d_lf = np.maximum(d_c, -d_c - t_lf)
        canal = _ramp(d_c, inv_ps) * (1.0 - _ramp(d_ant, inv_ps)) * (1.0 - _ramp(d_lf, inv_ps))
        # epidural margin: lateral all round, the posterior fat pad behind the canal centre
        behind = np.clip((v * (1.0 / st.ca) + 0.4) * 2.5, 0.0, 1.0)
        m_field = st.m_lat + (st.m_post - st.m_lat) * behind * np.clip(1.0 - np.abs(u) / (0.9 * st.sw), 0.0, 1.0)
        sac = _ramp(_sd_ellipse(u, v, 0.0, st.sv, st.sw, st.sa), inv_ps)
        sac *= _ramp(d_c, inv_ps)  # the flavum band below keeps margins inside the canal only
        sac *= 1.0 - _ramp(d_ant - st.m_ant, inv_ps)
        sac *= 1.0 - _ramp(d_lf - m_field, inv_ps)
        occ = []
        if vw.sap > 0 or vw.iap > 0 or vw.pars > 0:
            for side in (-1.0, 1.0):
                sap, iap, pars = self._sd_posterior_joints(u, v, st, side)
                occ += [(sap, vw.sap), (iap, vw.iap), (pars, vw.pars)]
        if vw.ped > 0:
            for side in (-1.0, 1.0):
                occ.append((self._sd_pedicle(u, v, st, side), vw.ped))
        for d, w in occ:
            if w <= 0.0:
                continue
            canal *= 1.0 - w * _ramp(d, inv_ps)
            sac *= 1.0 - w * _ramp(d - st.m_lat, inv_ps)
        return canal, sac, d_c, d_lf, d_ant

    def _sac_area(self, st, h: float = 0.4) -> float:
        """Sac area (mm2) for the state, on a fine grid around the canal."""
        W = st.cw * (1.0 + st.tri) + 4.0
        uu = np.arange(-W, W, h, dtype=np.float32)
        vv = np.arange(-st.ca - 4.0, st.ca + 4.0, h, dtype=np.float32)
        U, Vv = np.meshgrid(uu, vv)
        _, sac, *_ = self._canal_alphas(st, U, Vv, 1.0 / h)
        return float((sac >= 0.5).sum()) * h * h

    def _sac_line(self, st) -> tuple[float, float]:
        """Midline AP extent of the sac (mm) and its centre v, at 0.1 mm."""
        line = np.arange(-st.ca - 4.0, st.ca + 4.0, 0.1, dtype=np.float32)
        _, sl, *_ = self._canal_alphas(st, np.zeros_like(line), line, 10.0)
        inside = np.flatnonzero(sl >= 0.5)
        if inside.size == 0:
            return 0.0, 0.0
        return (inside[-1] - inside[0] + 1) * 0.1, float(line[inside].mean())

    def _solve_severity(self, disc: _Disc):
        """Bisect the severity so the sac at the disc centre matches the grade.

        The grade decides the target (sac area for Schizas, sac AP against the
        cord for Kang); the rendering then follows from the severity, so the
        picture and the label cannot disagree.
        """
        def measure(s):
            st = self._state(disc.z, sigma=s, disc=disc)
            return self._sac_area(st) if self.lumbar else self._sac_line(st)[0]

        if self.lumbar:
            target = disc.target
        else:
            cord_ap = 2.0 * self.cord.a
            k = self.scale.index(disc.grade)
            target = cord_ap + disc.target if k < 2 else cord_ap * disc.target
        f0 = measure(0.0)
        if f0 <= target:
            disc.sigma = 0.0
            return
        lo, hi = 0.0, 1.0
        while measure(hi) > target and hi < 2.5:
            lo, hi = hi, hi + 0.5
        for _ in range(9):
            mid = 0.5 * (lo + hi)
            if measure(mid) > target:
                lo = mid
            else:
                hi = mid
        disc.sigma = 0.5 * (lo + hi)

    # ------------------------------------------------------------------ rendering

    def _tex(self, tex: np.ndarray, w: _Window, off) -> np.ndarray:
        return tex[off[0] + w.rows.start: off[0] + w.rows.stop, off[1] + w.cols.start: off[1] + w.cols.stop]

    def _slice_draws(self) -> list[SimpleNamespace]:
        """Every slice's random shifts, drawn up front in slice order."""
        srng = self.slice_rng
        pad = self.pad
        draws = []
        for _ in range(self.n):
            d = SimpleNamespace(off_f=tuple(srng.integers(0, pad, 2)), off_m=tuple(srng.integers(0, pad, 2)),
                                b=int(srng.integers(len(self.noise))), o1=srng.integers(0, pad, 2),
                                flip=bool(srng.random() < 0.5), b2=0, o2=(0, 0))
            if self.noise2 is not None:
                d.b2, d.o2 = int(srng.integers(len(self.noise2))), srng.integers(0, pad, 2)
            draws.append(d)
        return draws

    def _render_slice(self, z: float, draw: SimpleNamespace):
        m = self.M
        canal_m = np.zeros((m, m), dtype=np.uint8)
        sac_m = np.zeros((m, m), dtype=np.uint8)
        img = self._soft_base(z)
        self._off_f, self._off_m = draw.off_f, draw.off_m
        fr = self._frame(z)
        st = self._state(z)
        if self.lumbar:
            self._paint_abdomen_near(img, fr, z, st)
        else:
            self._paint_neck_near(img, fr, z, st)
        self._paint_spine(img, fr, z, st, canal_m, sac_m)
        return img, canal_m, sac_m

    # soft tissue ---------------------------------------------------------

    def _soft_base(self, z: float) -> np.ndarray:
        """Everything away from the spine: body outline, fat, muscle wall,
        bowel, organs, vessels, pelvis; in the neck the airway and viscera.

        These change slowly along z, so a stack renders them at anchors every
        few millimetres and blends the two anchors around each slice; they
        would otherwise be most of the cost of a slice.
        """
        if self.n == 1:
            return self._soft_anchor_render(z, 0)
        q, t = self._anchor_of(z)
        a0, a1 = self._anchors[q], self._anchors[q + 1]
        img = a1 - a0
        img *= np.float32(t)
        img += a0
        return img

    @property
    def _anchor_step(self) -> float:
        # well under the scale on which outlines and organs change (and under
        # a vertebra, so structures tied to one move little between anchors)
        return 15.0 if self.lumbar else 8.0

    def _anchor_of(self, z: float) -> tuple[int, float]:
        x = (z - self.z0) / self._anchor_step
        q = int(math.floor(x))
        return q, x - q

    def _soft_anchor_render(self, z: float, q: int) -> np.ndarray:
        """One anchor, drawn on a grid twice as coarse and upsampled: it holds
        only smooth, slowly varying tissue, and a quarter of the pixels is
        most of the saving."""
        full = (self.xs, self.ys, self.ps, self.M, self.inv, self.pad, self.tex_fine, self.tex_med, self.tex_coarse)
        try:
            nodes = 2.0 * self.ps * np.arange(self.M // 2 + 1)
            self.xs, self.ys = self.xs[0] + nodes, self.ys[0] + nodes
            self.ps, self.M, self.inv, self.pad = 2.0 * self.ps, self.M // 2 + 1, 0.5 * self.inv, self.pad // 2
            self.tex_fine, self.tex_med = self.tex_fine[::2, ::2], self.tex_med[::2, ::2]
            if self.tex_coarse is not None:
                self.tex_coarse = self.tex_coarse[:, ::2, ::2]
            coarse = self._soft_anchor_draw(z, q)
        finally:
            (self.xs, self.ys, self.ps, self.M, self.inv, self.pad, self.tex_fine, self.tex_med,
             self.tex_coarse) = full
        return _upsample2(coarse, self.M)

    def _soft_anchor_draw(self, z: float, q: int) -> np.ndarray:
        arng = np.random.default_rng([self.seed, 2, q + 1000])
        off_f = tuple(arng.integers(0, self.pad, 2))
        off_m = tuple(arng.integers(0, self.pad, 2))
        self._off_f, self._off_m = off_f, off_m
        b, V, Tx = self.body, self.V, self.T
        inv = self.inv
        m = self.M
        img = np.full((m, m), V["air"], dtype=np.float32)
        fw = _Window(slice(0, m), slice(0, m), None, None)
        X = (self.xs - self.bx).astype(np.float32)
        Y = (self.ys - self.by).astype(np.float32)
        A = self._body_half_width(z)
        d_out = _sd_row_convex(X, Y, A, b.B, b.B, b.p_ant, b.p_post)
        a = _ramp(d_out, inv)
        fat = V["fat"] + Tx["fat"] * self._tex(self.tex_med, fw, off_m)
        img += a * (fat - img)
        skin = a * (1.0 - _ramp(d_out + 1.8, inv))
        img += skin * (V["skin"] - img)
        d_in = _sd_row_convex(X, Y, A - b.tf_lat, b.B - b.tf_ant, b.B - b.tf_post, b.p_ant, b.p_post)
        a = _ramp(d_in, inv)
        mus = V["muscle"] + Tx["muscle"] * self._tex(self.tex_fine, fw, off_f)
        # fatty streaks in muscle (more with age), from the tail of a smooth field
        streak = self._tex(self.tex_med, fw, off_f)
        streak = (streak - (2.5 - 0.8 * self.body.fatty)) * 1.2
        np.clip(streak, 0.0, 0.45, out=streak)
        mus += streak * (V["fat"] - mus)
        img += a * (mus - img)
        fr = self._frame(z)
        st = self._state(z)
        if not self.lumbar:
            self._paint_neck_far(img, fr, z, st)
            return img
        # Abdominal cavity: retroperitoneal fat near the spine, bowel further forward.
        st_a = st.a
        y_front = (fr.yc - self.by) - st_a.ca - 2.0 * st_a.bd  # body-frame y of the vertebral body front
        # the retroperitoneum reaches back to the transverse processes beside
        # the spine and curves forward in the flanks
        b_ant = b.B - b.tf_ant - b.wall
        b_post = max(y_front + 2.0 * st_a.bd + st_a.ca + 12.0, 10.0)
        d_cav = _sd_row_convex(X, Y, A - b.tf_lat - b.wall, b_ant, b_post, b.p_ant, 1.5)
        a_cav = _ramp(d_cav, inv)
        oc = int(abs(z) * 0.6 / self.ps) % (self.tex_coarse.shape[1] - self.M)
        off_c = (oc, int(oc * 0.3) % (self.tex_coarse.shape[2] - self.M))
        tc = self._tex(self.tex_coarse[0], fw, off_c)
        tc2 = self._tex(self.tex_coarse[1], fw, off_c)
        w_bowel = np.clip((y_front - 10.0 - Y[:, None]) * (1.0 / 25.0), 0.0, 1.0) * np.clip(
            (A - b.tf_lat - 15.0 - np.abs(X[None, :])) * 0.1, 0.0, 1.0)
        bowel = V["bowel"] + Tx["bowel"] * (0.6 * self._tex(self.tex_med, fw, off_f) + 0.8 * tc2)
        w_fat = np.clip((-tc - 0.3) * 2.0, 0.0, 1.0)
        w_air = np.clip((tc2 - 1.2) * 3.0, 0.0, 1.0) * (0.4 if self.modality == "MR" else 1.0)
        content = bowel + w_fat * (V["fat"] - bowel)
        content += w_air * (V["air"] - content)
        content = V["fat"] + w_bowel * (content - V["fat"])
        img += a_cav * (content - img)
        self._paint_abdomen_far(img, fr, z, st, d_cav)
        return img

    def _body_half_width(self, z: float) -> float:
        if not self.lumbar:
            return self.body.A
        # the pelvis widens the body below L5
        return self.body.A * (1.0 + 0.08 * float(np.clip((self.named[0].z + 10.0 - z) / 40.0, 0.0, 1.0)))

    def _paint_fat_plane(self, img, fr, p0, p1, width, alpha):
        """A thin fat plane between muscles (a capsule), painted over the muscle."""
        inv = self.inv
        w = fr.window(min(p0[0], p1[0]) - 3, max(p0[0], p1[0]) + 3, min(p0[1], p1[1]) - 3, max(p0[1], p1[1]) + 3)
        if w is not None:
            d = _sd_capsule(w.u, w.v, p0[0], p0[1], p1[0], p1[1], 0.5 * width)
            _paint(img, w, alpha * _ramp(d, inv), self.V["fat"])

    def _paint_abdomen_far(self, img, fr: _Frame, z: float, st, d_cav):
        b, V, Tx = self.body, self.V, self.T
        inv = self.inv
        a = st.a
        A = self._body_half_width(z)
        # liver (right, upper levels)
        z_l1l2 = self.named[-2].z
        lv = float(np.clip((z - z_l1l2 + 5.0) / 40.0, 0.0, 1.0)) * b.liver
        if lv > 0.05:
            cx_b, cy_b = self.bx - fr.xc, self.by - fr.yc  # body centre in the spine frame
            lu, lvv, la, lb = cx_b - 0.5 * A, cy_b - 0.05 * b.B, 0.38 * A * lv, 0.55 * b.B * lv
            r = max(la, lb) + 2.0
            w = fr.window(lu - r, lu + r, lvv - r, lvv + r)
            if w is not None:
                d = _sd_ellipse(w.u, w.v, lu, lvv, la, lb, 0.3)
                if d_cav is not None:
                    d = np.maximum(d, d_cav[w.rows, w.cols])
                _paint(img, w, _ramp(d, inv), V["liver"] + Tx["liver"] * self._tex(self.tex_fine, w, self._off_f))
        # kidneys in their fat
        for side, dzk in ((-1.0, 0.0), (1.0, 8.0)):
            t = (z - (b.kid_z + dzk)) / b.kid_h
            if abs(t) < 1.0:
                s = math.sqrt(1.0 - t * t)
                cu, cv = side * b.kid_u, -st.ca - 0.5 * a.bd
                w = fr.window(cu - 40, cu + 40, cv - 45, cv + 45)
                if w is not None:
                    d = _sd_ellipse(w.u, w.v, cu, cv, 30.0 * s + 4, 36.0 * s + 4, side * 0.5)
                    _paint(img, w, _ramp(d, inv), V["fat"])
                    d = _sd_ellipse(w.u, w.v, cu, cv, 22.0 * s, 28.0 * s, side * 0.5)
                    _paint(img, w, _ramp(d, inv), V["kidney"] + Tx["kidney"] * self._tex(self.tex_fine, w, self._off_f))
                    d = _sd_ellipse(w.u, w.v, cu - side * 12.0 * s, cv, 8.0 * s, 10.0 * s, side * 0.5)
                    _paint(img, w, 0.8 * _ramp(d, inv), V["fat"])
        # aorta and IVC (iliac vessels below the bifurcation)
        cv = st.vb - a.bd - b.ao_r - 4.0
        if z > b.bif_z:
            vessels = [(b.ao_u, cv, b.ao_r, b.ao_r), (-b.ivc_u, cv + 2.0, 12.0, 8.0)]
        else:
            sp = 8.0 + 0.35 * (b.bif_z - z)
            vessels = [(sp, cv - 2.0, 6.5, 6.5), (-sp, cv - 2.0, 6.5, 6.5),
                       (sp - 8.0, cv + 6.0, 7.5, 6.0), (-sp - 2.0, cv + 6.0, 7.5, 6.0)]
        for cu, cvv, ra, rb in vessels:
            w = fr.window(cu - ra - 2, cu + ra + 2, cvv - rb - 2, cvv + rb + 2)
            if w is not None:
                _paint(img, w, _ramp(_sd_ellipse(w.u, w.v, cu, cvv, ra, rb), inv), V["blood"])
        # iliac wings below the iliac crest: bone arcs with iliacus inside and gluteal muscle outside
        if z < b.il_top:
            s = float(np.clip((b.il_top - z) / 15.0, 0.0, 1.0))
            for side in (-1.0, 1.0):
                w = fr.window(-150.0 if side < 0 else 30.0, -30.0 if side < 0 else 150.0, -90, 30)
                if w is None:
                    continue
                cu, cv, R = side * 20.0, -110.0, 120.0 - 6.0 * s
                dist = _sd_circle(w.u, w.v, cu, cv, 0.0)
                sector = np.maximum(-20.0 - w.v - 70.0 * (1 - s), 62.0 - 12.0 * s - np.abs(w.u))
                d_bone = np.maximum(np.abs(dist - R) - b.il_t * (0.5 + 0.5 * s), sector)
                d_in = np.maximum(np.abs(dist - R + b.il_t + 7.0) - 7.0, sector)
                d_out = np.maximum(np.abs(dist - R - b.il_t - 10.0) - 10.0, sector)
                _paint(img, w, _ramp(d_in, inv) * s, V["muscle"])
                _paint(img, w, _ramp(d_out, inv) * s, V["muscle"])
                self._paint_bone(img, w, d_bone, s)

    def _paint_abdomen_near(self, img, fr: _Frame, z: float, st):
        """Muscles that touch the spine; they must follow it slice by slice."""
        b, V, Tx = self.body, self.V, self.T
        inv = self.inv
        a = st.a
        # psoas (absent at T12, largest low down), quadratus lumborum
        zt, z45 = self.named[-1].z, self.named[1].z
        ps_s = float(np.clip((zt + 10.0 - z) / (zt + 10.0 - z45), 0.15, 1.0))
        low = float(np.clip((self.named[0].z + 15.0 - z) / 30.0, 0.0, 1.0))
        es_depth = b.d_back - b.tf_post - st.ca - 2.0  # back muscles end at the subcutaneous fat
        for side in (-1.0, 1.0):
            pa, pb = b.ps_a * ps_s, b.ps_b * ps_s
            cu = side * (a.bw + 0.75 * pa + 12.0 * low)
            cv = st.vb + 2.0 - 12.0 * low
            w = fr.window(cu - pa - 3, cu + pa + 3, cv - pb - 3, cv + pb + 3)
            if w is not None:
                d = _sd_ellipse(w.u, w.v, cu, cv, pa, pb, -side * 0.25)
                _paint(img, w, _ramp(d - 1.2, inv), V["fat"])
                _paint(img, w, _ramp(d, inv), V["muscle"] + Tx["muscle"] * self._tex(self.tex_fine, w, self._off_f))
            if z > z45 - 5.0:
                qa = b.ql_a * float(np.clip((z - z45 + 5.0) / 30.0, 0.2, 1.0))
                cu = side * (st.cw + a.ped_r + 0.8 * a.tp_len + 12.0)
                w = fr.window(cu - qa - 4, cu + qa + 4, -22, 18)
                if w is not None:
                    d = _sd_ellipse(w.u, w.v, cu, 0.0, qa, 9.0, -side * 0.35)
                    _paint(img, w, 0.7 * _ramp(np.abs(d) - 0.6, inv), V["fat"])
                    _paint(img, w, _ramp(d, inv), V["muscle"])
            # paraspinal muscle mass (multifidus + erector spinae) filling the
            # gutter beside the spinous process, from the transverse processes back
            es_b = 0.5 * (es_depth + 6.0)
            cu, cv = side * (0.4 * st.cw + 0.8 * b.es_a), st.ca - 6.0 + es_b
            w = fr.window(cu - b.es_a - 2, cu + b.es_a + 2, cv - es_b - 2, cv + es_b + 2)
            if w is not None:
                d = _sd_ellipse(w.u, w.v, cu, cv, b.es_a, es_b)
                mus = V["muscle"] + Tx["muscle"] * self._tex(self.tex_fine, w, self._off_f)
                _paint(img, w, _ramp(d, inv), mus)
            # fat planes of the back: midline septum, multifidus | erector spinae
            if side > 0:
                self._paint_fat_plane(img, fr, (0.0, st.ca + a.sp_len), (0.0, st.ca + es_depth + 2.0), 2.5, 0.7)
            self._paint_fat_plane(img, fr, (side * (st.cw + 10.0), st.ca + 6.0),
                                  (side * (st.cw + 16.0), st.ca + 0.7 * es_depth), 1.0, 0.4)

    def _paint_neck_far(self, img, fr: _Frame, z: float, st):
        b, V, Tx = self.body, self.V, self.T
        inv = self.inv
        a = st.a
        A = b.A
        front = st.vb - a.bd  # anterior surface of the vertebral bodies
        back = b.d_back - b.tf_post - 2.0
        # fat planes between the layers of posterior neck muscles: arcs around
        # the spinous processes, and the nuchal ligament in the midline
        for ra, rb, alpha in ((st.cw + 12.0, 0.55 * back, 0.5), (st.cw + 26.0, 0.85 * back, 0.4)):
            w = fr.window(-ra - 1.0, ra + 1.0, st.ca + 6.0, st.ca + rb + 1.0)
            if w is not None:
                d = np.abs(_sd_ellipse(w.u, w.v, 0.0, st.ca, ra, rb)) - 0.5
                _paint(img, w, alpha * _ramp(d, inv), V["fat"])
        self._paint_fat_plane(img, fr, (0.0, st.ca + a.sp_len), (0.0, back), 1.2, 0.5)
        # visceral compartment: fat, airway, oesophagus, thyroid, vessels
        air_v = front - b.air_gap - b.air_r
        hv = 0.5 * (front - air_v) + 10.0
        w = fr.window(-27.0, 27.0, air_v + 4.0 - hv - 1.0, air_v + 4.0 + hv + 1.0)
        if w is not None:
            d = _sd_ellipse(w.u, w.v, 0.0, air_v + 4.0, 26.0, hv)
            _paint(img, w, 0.8 * _ramp(d, inv), V["fat"])
        w = fr.window(-10.0, 12.0, front - 13.0, front - 5.0)
        if w is not None:
            d = _sd_ellipse(w.u, w.v, 2.0, front - 9.0, 8.0, 3.5)
            _paint(img, w, _ramp(d, inv), V["esoph"])
        if z < b.thy_z:
            for side in (-1.0, 1.0):
                cu = side * (b.air_r + 7.0)
                w = fr.window(cu - 12.0, cu + 12.0, air_v - 12.0, air_v + 14.0)
                if w is not None:
                    d = _sd_ellipse(w.u, w.v, cu, air_v + 1.0, 7.0, 11.0, side * 0.3)
                    _paint(img, w, _ramp(d, inv), V["thyroid"])
        larynx = z > b.lar_z
        ar = b.air_r * (1.25 if larynx else 1.0)
        w = fr.window(-ar - 4.0, ar + 4.0, air_v - ar - 4.0, air_v + ar + 4.0)
        if w is not None:
            d_air = _sd_ellipse(w.u, w.v, 0.0, air_v, ar, b.air_r * (0.8 if larynx else 0.9))
            d_wall = d_air - (2.5 if larynx else 1.6)
            cart = np.maximum(d_wall, -(w.v - air_v + 0.3 * b.air_r))  # anterior cartilage arc
            a_air = _ramp(d_air, inv)
            _paint(img, w, _ramp(d_wall, inv), V["muscle"])
            _paint(img, w, _ramp(cart, inv) * (1.0 - a_air), V["cartilage"])
            _paint(img, w, a_air, V["air"])
        for side in (-1.0, 1.0):
            cu = side * b.car_u
            w = fr.window(min(cu, cu + side * 8.0) - 6.5, max(cu, cu + side * 8.0) + 6.5, air_v, air_v + 13.0)
            if w is not None:
                _paint(img, w, _ramp(_sd_circle(w.u, w.v, cu, air_v + 8.0, 3.6), inv), V["blood"])
                _paint(img, w, _ramp(_sd_ellipse(w.u, w.v, cu + side * 8.0, air_v + 6.0, 5.5, 3.8), inv), V["blood"])
        for side in (-1.0, 1.0):  # sternocleidomastoid, kept inside the neck
            cu, cv = side * 0.6 * A, front - 10.0
            w = fr.window(cu - 16, cu + 16, cv - 12, cv + 12)
            if w is not None:
                d = _sd_ellipse(w.u, w.v, cu, cv, 0.2 * A, 5.0, side * 0.5)
                _paint(img, w, _ramp(d, inv), V["muscle"] + Tx["muscle"] * self._tex(self.tex_fine, w, self._off_f))

    def _paint_neck_near(self, img, fr: _Frame, z: float, st):
        """Longus colli lie on the vertebral bodies and must follow them."""
        inv = self.inv
        front = st.vb - st.a.bd
        for side in (-1.0, 1.0):
            w = fr.window(side * 6.0 - 6.0, side * 6.0 + 6.0, front - 8.0, front + 1.0)
            if w is not None:
                _paint(img, w, _ramp(_sd_ellipse(w.u, w.v, side * 6.0, front - 3.5, 5.0, 3.5), inv), self.V["muscle"])

    # spine -----------------------------------------------------------------

    def _paint_bone(self, img, w, d, weight=1.0, cortex=None):
        V, Tx = self.V, self.T
        inv = self.inv
        t = cortex if cortex is not None else (0.9 if self.lumbar else 0.7)
        a = _ramp(d, inv)
        if weight != 1.0:
            a *= weight
        core = _ramp(d + t, inv)
        canc = V["cancellous"] + Tx["cancellous"] * self._tex(self.tex_fine, w, self._off_f)
        val = V["cortical"] + core * (canc - V["cortical"])
        _paint(img, w, a, val)

    def _paint_spine(self, img, fr: _Frame, z: float, st, canal_m, sac_m):
        V, Tx = self.V, self.T
        inv = self.inv
        a, vw, lum = st.a, st.vw, self.lumbar
        cw, ca = st.cw, st.ca
        d_cur = st.disc
        # foraminal fat with the exiting root, where the pedicle is absent
        if vw.ped < 1.0:
            for side in (-1.0, 1.0):
                cu, cv = side * (cw + (5.0 if lum else 4.0)), -0.3 * ca
                w = fr.window(cu - 7, cu + 7, cv - 7, cv + 7)
                if w is not None:
                    d = _sd_ellipse(w.u, w.v, cu, cv, 5.5 if lum else 4.0, 6.0 if lum else 4.5)
                    _paint(img, w, (1.0 - vw.ped) * _ramp(d, inv), V["fat"])
                    d = _sd_circle(w.u, w.v, cu + side * 1.0, cv - 1.0, 2.3 if lum else 1.5)
                    _paint(img, w, (1.0 - vw.ped) * _ramp(d, inv), V["ganglion"])
        if not lum:
            # vertebral arteries run through the transverse foramina at every level
            for side in (-1.0, 1.0):
                cu, cv = side * (st.bw + 6.0), st.vb + 1.0
                w = fr.window(cu - 4, cu + 4, cv - 4, cv + 4)
                if w is not None:
                    _paint(img, w, _ramp(_sd_circle(w.u, w.v, cu, cv, 2.2), inv), V["blood"])
        # anterior column: body, endplates and disc, mixed by how much of the
        # slab each covers at every pixel (the disc planes tilt with the lordosis)
        bw_m = st.bw + 2.0 + st.bulge
        w = fr.window(-bw_m, bw_m, st.vb - st.bd - 3.0, -ca + st.bulge + 2.0)
        if w is not None:
            T = self.thickness
            h = d_cur.h
            zl = st.dz + st.tan_t * w.v
            z0, z1 = zl - 0.5 * T, zl + 0.5 * T
            ep = 1.0 if lum else 0.7
            if d_cur.fused:
                fd = np.zeros_like(zl)
                fe = fd
            else:
                fd = _overlap(z0, z1, -0.5 * h, 0.5 * h) / T
                fe = (_overlap(z0, z1, 0.5 * h, 0.5 * h + ep) + _overlap(z0, z1, -0.5 * h - ep, -0.5 * h)) / T
            fb = 1.0 - fd - fe
            d_b = self._sd_body(w.u, w.v, st, disc=False)
            a_b = _ramp(d_b, inv)
            core = _ramp(d_b + (0.9 if lum else 0.7), inv)
            canc = V["cancellous"] * (1.0 + a.marrow) + Tx["cancellous"] * self._tex(self.tex_fine, w, self._off_f)
            v_body = V["cortical"] + core * (canc - V["cortical"])
            alpha = a_b * (fb + fe)
            num = a_b * (fb * v_body + fe * V["endplate"])
            if fd.max() > 0:
                d_d = self._sd_body(w.u, w.v, st, disc=True)
                a_d = _ramp(d_d, inv)
                nuc = _ramp(_sd_ellipse(w.u, w.v, 0.0, st.vb + 1.0, 0.5 * st.bw, 0.45 * st.bd), inv)
                v_nuc = V["nucleus_d"] + d_cur.nucleus * (V["nucleus_h"] - V["nucleus_d"])
                v_disc = V["annulus"] + Tx["annulus"] * self._tex(self.tex_med, w, self._off_m)
                v_disc = v_disc + nuc * (v_nuc - v_disc)
                alpha = alpha + a_d * fd
                num = num + a_d * fd * v_disc
            sub = img[w.rows, w.cols]
            sub *= 1.0 - alpha
            sub += num
        # canal window: flavum first, bones over it, canal contents last
        W = cw * (1.0 + st.tri) + 3.0
        wc = fr.window(-W, W, -ca - 2.0, ca + 2.0)
        canal = sac = None
        if wc is not None:
            canal, sac, d_c, d_lf, _ = self._canal_alphas(st, wc.u, wc.v, inv)
            _paint(img, wc, _ramp(d_lf, inv), V["lig"])
        # posterior arch: pedicles, articular processes, lamina, spinous process as one union
        ext = cw + 14.0
        wp = fr.window(-ext, ext, -ca - 3.0, ca + a.sp_len + 6.0)
        if wp is not None:
            u, v = wp.u, wp.v
            parts = []
            d_c = _sd_canal(u, v, cw, ca, st.tri, st.p)
            if vw.lam > 0:
                d_lam = np.maximum(np.maximum(-d_c, d_c - a.lam_t), 0.15 * ca - v)
                tip = (1.0 if lum else 0.8) * a.sp_r
                d_sp = _sd_capsule(u, v, 0.0, ca, 0.0, ca + a.sp_len, a.sp_r * 0.8, tip * 1.3)
                if not lum and self._is_bifid(z):
                    for side in (-1.0, 1.0):
                        d_sp = np.minimum(d_sp, _sd_capsule(u, v, 0.0, ca + 0.6 * a.sp_len, side * 3.5,
                                                            ca + a.sp_len + 1.0, 1.8, 2.2))
                parts.append((np.minimum(d_lam, d_sp), vw.lam))
            for side in (-1.0, 1.0):
                sap, iap, pars = self._sd_posterior_joints(u, v, st, side)
                parts += [(sap, vw.sap), (iap, vw.iap), (pars, vw.pars)]
                if vw.ped > 0:
                    parts.append((self._sd_pedicle(u, v, st, side), vw.ped))
            alpha = np.zeros(wp.shape, np.float32)
            core = np.zeros(wp.shape, np.float32)
            t = 1.6 if lum else 0.9  # laminae and processes are mostly compact bone
            for d, wt in parts:
                if wt <= 0:
                    continue
                np.maximum(alpha, wt * _ramp(d, inv), out=alpha)
                np.maximum(core, wt * _ramp(d + t, inv), out=core)
            canc = V["cancellous"] * (1.0 + a.marrow) + Tx["cancellous"] * self._tex(self.tex_fine, wp, self._off_f)
            frac = core / np.maximum(alpha, 1e-3)
            _paint(img, wp, alpha, V["cortical"] + frac * (canc - V["cortical"]))
            # the facet joint space at the disc level (fluid on T2)
            wj = min(vw.sap, vw.iap)
            if wj > 0.3:
                for side in (-1.0, 1.0):
                    if lum:
                        jx, jy = side * (cw + 3.2), 0.3 * ca + 1.0
                        ex, ey = side * math.sin(a.fa), math.cos(a.fa)
                        p0 = (jx - 7.0 * ex, jy - 7.0 * ey)
                        p1 = (jx + 6.0 * ex, jy + 6.0 * ey)
                    else:
                        p0 = (side * (cw + 1.5), 0.5 * ca)
                        p1 = (side * (cw + 2.0 * a.sap_a - 1.0), -0.1 * ca)
                    d = _sd_capsule(u, v, p0[0], p0[1], p1[0], p1[1], 0.35)
                    _paint(img, wp, (wj * 0.45) * _ramp(d, inv) * alpha, V["joint"])
        # transverse processes (ribs at T12, sacral ala at S1, transverse foramina in the neck)
        if vw.tp > 0 or vw.ala > 0 or vw.rib > 0 or vw.unc > 0:
            for side in (-1.0, 1.0):
                self._paint_lateral(img, fr, st, side)
        # canal contents
        if wc is not None:
            self._paint_canal(img, fr, wc, st, canal, sac, z)
            canal_m[wc.rows, wc.cols] |= (canal >= 0.5).astype(np.uint8)
            sac_m[wc.rows, wc.cols] |= (sac >= 0.5).astype(np.uint8)

    def _is_bifid(self, z: float) -> bool:
        vt = min(self.vertebrae, key=lambda v: abs(0.5 * (v.zb + v.zt) - z))
        return vt.name in ("C3", "C4", "C5", "C6", "C2")

    def _paint_lateral(self, img, fr, st, side):
        a, vw, lum = st.a, st.vw, self.lumbar
        cw, ca = st.cw, st.ca
        if lum:
            if vw.tp > 0 and a.tp_len > 3:
                u0 = side * (cw + a.ped_r)
                u1 = side * (cw + a.ped_r + a.tp_len)
                w = fr.window(min(u0, u1) - 6, max(u0, u1) + 6, -ca - 6, ca + 0.25 * a.tp_len + 6)
                if w is not None:
                    d = _sd_capsule(w.u, w.v, u0, -0.1 * ca, u1, -0.1 * ca + 0.25 * a.tp_len, a.tp_r, 0.75 * a.tp_r)
                    self._paint_bone(img, w, d, vw.tp)
            if vw.ala > 0:
                w = fr.window(side * 0.5 * st.bw - side * 20, side * (st.bw + 45), st.vb - 15, ca + 10)
                if w is not None:
                    d = _sd_capsule(w.u, w.v, side * 0.5 * st.bw, st.vb + 4.0, side * (st.bw + 28.0), 2.0, 14.0, 11.0)
                    self._paint_bone(img, w, d, vw.ala)
            if vw.rib > 0:
                w = fr.window(side * (cw + 3) - side * 10, side * (cw + 85), -45, ca + 20)
                if w is not None:
                    d = _sd_capsule(w.u, w.v, side * (cw + 10.0), -0.2 * ca, side * (cw + 45.0), 0.2 * ca + 5.0, 4.0)
                    d = np.minimum(d, _sd_capsule(w.u, w.v, side * (cw + 45.0), 0.2 * ca + 5.0,
                                                  side * (cw + 78.0), -30.0, 4.0, 3.5))
                    self._paint_bone(img, w, d, vw.rib)
        else:
            if vw.tp > 0:
                cu, cv = side * (st.bw + 6.0), st.vb + 1.0
                w = fr.window(cu - 12, cu + 12, cv - 8, cv + 8)
                if w is not None:
                    ring = np.abs(_sd_circle(w.u, w.v, cu, cv, 3.9)) - 1.5
                    bar = _sd_capsule(w.u, w.v, side * (st.bw - 2.0), st.vb - 2.0, side * (st.bw + a.tp_len), cv - 2.0,
                                      a.tp_r * 0.8, a.tp_r)
                    bar = np.maximum(bar, -_sd_circle(w.u, w.v, cu, cv, 2.4))
                    self._paint_bone(img, w, np.minimum(ring, bar), vw.tp)
            if vw.unc > 0:
                # uncinate processes: the raised posterolateral rims of the body below
                cu, cv = side * (st.bw - 0.5), st.vb + 0.45 * st.bd
                w = fr.window(cu - 4, cu + 4, cv - 5, cv + 5)
                if w is not None:
                    self._paint_bone(img, w, _sd_ellipse(w.u, w.v, cu, cv, 1.6, 3.2, -side * 0.3), vw.unc, cortex=3.0)

    def _paint_canal(self, img, fr, wc, st, canal, sac, z):
        V = self.V
        inv = self.inv
        u, v = wc.u, wc.v
        # epidural space: fat behind, venous plexus in front
        post = np.clip(0.5 + v * (1.0 / st.ca), 0.0, 1.0)
        epi = V["epi_ant"] + post * (V["fat"] - V["epi_ant"])
        _paint(img, wc, canal, epi)
        csf = V["csf"] + 0.02 * V["csf"] * self._tex(self.tex_fine, wc, self._off_f)
        _paint(img, wc, sac, csf)
        ys, xs = np.nonzero(sac >= 0.5)
        if ys.size < 3:
            return
        su, sv = u[ys, xs], v[ys, xs]
        cu, cv = 0.5 * (su.min() + su.max()), 0.5 * (sv.min() + sv.max())
        hu, hv = max(0.5 * (su.max() - su.min()), 1.0), max(0.5 * (sv.max() - sv.min()), 1.0)
        if self.lumbar:
            cord_s = 0.0
            if self.conus_z is not None and z > self.conus_z:
                cord_s = math.sqrt(min((z - self.conus_z) / 15.0, 1.0))
            if cord_s > 0:
                d = _sd_ellipse(u, v, cv * 0 + cu, cv - 0.1 * hv, 4.5 * cord_s + 0.3, 3.6 * cord_s + 0.3)
                _paint(img, wc, _ramp(d, inv) * sac, V["cord"])
            self._paint_rootlets(img, wc, st, sac, z, cu, cv, hu, hv)
        else:
            # the cord fills the sac in AP when the sac is narrower than it: it flattens
            ap, v_mid = self._sac_line(st)
            cw_, ca_ = self.cord.w, self.cord.a
            if ap > 0 and ap - 0.4 < 2.0 * ca_:
                ca_new = max(0.5 * ap - 0.2, 1.2)
                cw_ = cw_ * (ca_ / ca_new) ** 0.35
                ca_ = ca_new
            d = _sd_ellipse(u, v, cu, v_mid, cw_, ca_)
            a_c = _ramp(d, inv) * np.clip(sac * 1.5, 0.0, 1.0)
            _paint(img, wc, a_c, V["cord"])
            # grey matter is a little brighter on T2: a faint central H
            d_g = _sd_ellipse(u, v, cu, v_mid, 0.45 * cw_, 0.55 * ca_)
            _paint(img, wc, 0.25 * _ramp(d_g, inv) * a_c, V["cord"] * 1.15 if self.modality == "MR" else V["cord"])
            if st.hyper:
                d_h = _sd_ellipse(u, v, cu, v_mid, 0.5 * cw_, 0.6 * ca_)
                _paint(img, wc, min(1.0, 1.6 * st.g) * _ramp(d_h, inv) * a_c, V["hyper"])

    def _paint_rootlets(self, img, wc, st, sac, z, cu, cv, hu, hv):
        """Cauda equina: dorsal dots in CSF (A), spread through the sac (B), one grey mass (C, D)."""
        V, R = self.V, self.roots
        inv = self.inv
        crowd = st.crowd
        present = R.exit_z < z
        if present.any():
            spread = min(2.0 * crowd, 1.0)
            nu = R.du + spread * (R.fu - R.du)
            nv = R.dv + spread * (R.fv - R.dv)
            # just above its exit a root runs in the lateral recess (traversing root)
            t = np.clip(1.0 - (z - R.exit_z) / 15.0, 0.0, 1.0) * (1.0 - spread)
            side = np.where(nu >= 0, 1.0, -1.0)
            nu = nu + t * (0.85 * side - nu)
            nv = nv + t * (-0.45 - nv)
            wob = 0.04 * np.sin(z / 25.0 + R.ph)
            pu = cu + (nu + wob)[present] * hu
            pv = cv + (nv - wob)[present] * hv
            rr = R.r[present]
            du = wc.u[None] - pu[:, None, None]
            dv = wc.v[None] - pv[:, None, None]
            d = np.sqrt(du * du + dv * dv) - rr[:, None, None]
            a_r = _ramp(d.min(axis=0), inv) * sac
            _paint(img, wc, a_r, V["root"])
        hmix = float(np.clip((crowd - 0.6) / 0.25, 0.0, 1.0))
        if hmix > 0:
            homog = V["root"] + 0.18 * (V["csf"] - V["root"])
            _paint(img, wc, hmix * sac, homog + 0.03 * V["csf"] * self._tex(self.tex_med, wc, self._off_m))

    # ------------------------------------------------------------------ the study

    def _finish_slice(self, img: np.ndarray, z: float, draw: SimpleNamespace, out: np.ndarray) -> None:
        """Bias field and noise into ``out``: MR gets a smooth gain and Rician
        noise, CT Gaussian noise."""
        m = self.M
        oj, oi = draw.o1
        n1 = self.noise[draw.b][oj:oj + m, oi:oi + m]
        if draw.flip:
            n1 = n1[::-1]
        if self.modality == "CT":
            np.multiply(n1, np.float32(self.noise_sigma), out=out)
            out += img
            np.clip(out, -1024.0, 3071.0, out=out)
            return
        # smooth receive-coil gain: a fixed in-plane pattern (posterior coil,
        # brighter at the back) times a slow drift along z
        if self._bias2d is None:
            c = self.bias
            half = 0.5 * m * self.ps
            xn = ((self.xs - self.bx) / half).astype(np.float32)
            yn = ((self.ys - self.by) / half).astype(np.float32)
            self._bias2d = np.outer(np.exp(c[1] * yn + c[3] * yn * yn), np.exp(c[0] * xn + c[2] * xn * xn))
        zn = (z - self.path.z_mid) / 150.0
        re = img * self._bias2d
        re *= np.float32(math.exp(self.bias[5] * zn + self.bias[6] * zn * zn))
        re += np.float32(self.noise_sigma) * n1
        re *= re
        oj2, oi2 = draw.o2
        re += self.noise2[draw.b2][oj2:oj2 + m, oi2:oi2 + m]
        np.sqrt(re, out=out)

    def render(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The image, canal mask and sac mask arrays, [k, j, i]."""
        n, m = self.n, self.M
        image = np.empty((n, m, m), dtype=np.float32)
        canal = np.empty((n, m, m), dtype=np.uint8)
        sac = np.empty((n, m, m), dtype=np.uint8)
        draws = self._slice_draws()
        zs = [float(z) for z in self.z_slices]
        try:
            if n > 1:
                # soft-tissue anchors are shared by neighbouring slices
                step = self._anchor_step
                for q in sorted({q + e for q in (self._anchor_of(z)[0] for z in zs) for e in (0, 1)}):
                    self._anchors[q] = self._soft_anchor_render(self.z0 + q * step, q)
            for k, z in enumerate(zs):
                img, canal[k], sac[k] = self._render_slice(z, draws[k])
                self._finish_slice(img, z, draws[k], image[k])
        finally:
            self._anchors.clear()
        return image, canal, sac

    def study(self) -> PhantomStudy:
        image, canal, sac = self.render()
        spacing = (self.ps, self.ps, self.spacing)
        origin = (float(self.ox), float(self.oy), float(self.z0))

        def to_image(arr):
            im = sitk.GetImageFromArray(arr)
            im.SetSpacing(spacing)
            im.SetOrigin(origin)
            im.SetDirection((1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0))
            return im

        T = self.thickness
        zs = self.z_slices
        dw = np.zeros(self.n)
        for d in self.discs:
            if not d.fused:
                dw += _overlap(zs - T / 2, zs + T / 2, d.z - d.h / 2, d.z + d.h / 2) / T
        dw = np.clip(dw, 0.0, 1.0)
        levels = []
        z_lo, z_hi = zs[0] - 0.5 * self.spacing, zs[-1] + 0.5 * self.spacing
        pix = self.ps * self.ps
        for d in self.named:
            if not (z_lo <= d.z <= z_hi):
                continue
            k = int(np.clip(round((d.z - self.z0) / self.spacing), 0, self.n - 1))
            levels.append(PhantomLevel(
                name=d.name, z_mm=float(d.z), slice_index=k, grade=d.grade,
                dural_sac_area_mm2=float(sac[k].sum()) * pix, posterior_fat=bool(d.posterior_fat),
            ))
        boxes = {}
        for k in range(self.n):
            box = _box_of(canal[k])
            if box is not None:
                boxes[k] = box
        return PhantomStudy(
            image=to_image(image), canal_mask=to_image(canal), sac_mask=to_image(sac), levels=levels,
            canal_boxes=boxes, disc_weight=dw.astype(np.float64), modality=self.modality, region=self.region,
            seed=self.seed,
        )
