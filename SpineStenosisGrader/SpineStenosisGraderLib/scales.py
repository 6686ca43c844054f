"""Grading scales: ordered classes, their clinical definitions and binary collapses.

One registry, so that the classifier, the report, the CSV and the Slicer
tooltips all speak the same words. Definitions follow the cited papers.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class GradeClass:
    name: str
    label: str
    definition: str
    #: display colour (RGB 0-1), from green (normal) to red (severe)
    color: tuple[float, float, float]


@dataclass(frozen=True)
class GradingScale:
    key: str
    title: str
    reference: str
    classes: tuple[GradeClass, ...]
    #: name of the binary collapse -> names of the classes counted as positive
    binary: dict[str, tuple[str, ...]] = field(default_factory=dict)

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.classes]

    def index(self, name: str) -> int:
        try:
            return self.names.index(name)
        except ValueError:
            raise KeyError(f"{name!r} is not a grade of {self.key} ({', '.join(self.names)})") from None

    def grade_class(self, name: str) -> GradeClass:
        return self.classes[self.index(name)]


_GREEN = (0.20, 0.70, 0.30)
_YELLOW = (0.95, 0.80, 0.15)
_ORANGE = (0.95, 0.50, 0.10)
_RED = (0.85, 0.10, 0.10)

SCHIZAS = GradingScale(
    key="schizas",
    title="Lumbar central canal stenosis (Schizas)",
    reference="Schizas C et al. Spine 2010;35:1919-1924",
    classes=(
        GradeClass("A", "A: no or minor stenosis",
                   "CSF clearly visible inside the dural sac, its distribution heterogeneous; "
                   "rootlets can be told apart.", _GREEN),
        GradeClass("B", "B: moderate stenosis",
                   "Rootlets occupy the whole dural sac but can still be told apart; "
                   "some CSF gives a grainy appearance.", _YELLOW),
        GradeClass("C", "C: severe stenosis",
                   "No rootlets can be told apart; the sac is homogeneous grey with no CSF signal; "
                   "posterior epidural fat is still present.", _ORANGE),
        GradeClass("D", "D: extreme stenosis",
                   "As C, and no posterior epidural fat is visible.", _RED),
    ),
    binary={"stenosis (B-D)": ("B", "C", "D"), "severe (C-D)": ("C", "D")},
)

LEE = GradingScale(
    key="lee",
    title="Lumbar central canal stenosis (Lee)",
    reference="Lee GY et al. Skeletal Radiol 2011;40:1033-1039",
    classes=(
        GradeClass("0", "0: none", "The anterior CSF space is not obliterated.", _GREEN),
        GradeClass("1", "1: mild", "Anterior CSF space mildly obliterated; all cauda equina roots can be told apart.", _YELLOW),
        GradeClass("2", "2: moderate", "Anterior CSF space moderately obliterated; some roots are aggregated.", _ORANGE),
        GradeClass("3", "3: severe", "Sac markedly compressed; the roots form one bundle.", _RED),
    ),
    binary={"stenosis (1-3)": ("1", "2", "3")},
)

KANG = GradingScale(
    key="kang",
    title="Cervical canal stenosis (Kang)",
    reference="Kang Y et al. AJR 2011;197:W134-W140",
    classes=(
        GradeClass("0", "0: none", "No narrowing of the canal.", _GREEN),
        GradeClass("1", "1: mild", "More than 50% of the subarachnoid space obliterated; the cord is not deformed.", _YELLOW),
        GradeClass("2", "2: moderate", "The cord is deformed, with no signal change.", _ORANGE),
        GradeClass("3", "3: severe", "High T2 signal in the cord at the compressed level.", _RED),
    ),
    binary={"stenosis (1-3)": ("1", "2", "3")},
)

SURGICAL = GradingScale(
    key="surgical",
    title="Surgical recommendation (decision aid, not a radiological grade)",
    reference="Seed 003: departmental decisions, cervical MRI",
    classes=(
        GradeClass("0", "0: surgery not recommended for now", "Surgery not recommended for now.", _GREEN),
        GradeClass("1", "1: conservative first", "Conservative treatment first; surgery if it fails or the patient wishes.", _ORANGE),
        GradeClass("2", "2: operate soon", "High risk of neurological deficit; operate soon.", _RED),
    ),
    binary={"surgery indicated (1-2)": ("1", "2")},
)

SCALES: dict[str, GradingScale] = {s.key: s for s in (SCHIZAS, LEE, KANG, SURGICAL)}


def get_scale(key: str) -> GradingScale:
    try:
        return SCALES[key]
    except KeyError:
        raise KeyError(f"unknown grading scale {key!r}; known: {', '.join(SCALES)}") from None
