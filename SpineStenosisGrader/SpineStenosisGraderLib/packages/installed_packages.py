"""The model packages a user can choose from: the embedded default and those imported into a user folder.

Imported packages live one per folder under a packages root (in Slicer, beside
the user's settings), where ``package.import_package`` puts them after checking
their SHA256. Listing them never fails because of one bad package: a package
that no longer passes its checks is listed with the reason, so that a panel can
say why it cannot be chosen instead of hiding it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ModelPackageError
from .package import DEFAULT_PACKAGE_DIR, ModelPackage, load_package
from ..scales import get_scale

NOT_FOR_CLINICAL_USE = "Not for clinical use"


@dataclass
class InstalledPackage:
    """A package folder and, if it passed its checks, the loaded package; else why not."""

    path: Path
    package: ModelPackage | None
    error: str = ""
    is_default: bool = False

    @property
    def usable(self) -> bool:
        return self.package is not None

    @property
    def label(self) -> str:
        """Name and version for a list; the folder name for a package that cannot be read."""
        if self.package is None:
            return self.path.name
        return f"{self.package.name} {self.package.version}"


def _installed(path: Path, is_default: bool = False) -> InstalledPackage:
    try:
        return InstalledPackage(path, load_package(path), is_default=is_default)
    except ModelPackageError as exc:
        return InstalledPackage(path, None, str(exc), is_default)


def installed_packages(packages_root: str | Path | None = None,
                       default_dir: str | Path = DEFAULT_PACKAGE_DIR) -> list[InstalledPackage]:
    """The default package first, then every package folder under ``packages_root``, by name and version.

    Each is verified (manifest and SHA256) as it is listed. A missing or empty
    ``packages_root`` just means nothing was imported yet.
    """
    packages = [_installed(Path(default_dir), is_default=True)]
    root = Path(packages_root) if packages_root is not None else None
    if root is None or not root.is_dir():
        return packages
    # hidden folders are imports still being checked (``package.import_package`` stages them there)
    imported = [_installed(folder) for folder in sorted(root.iterdir())
                if folder.is_dir() and not folder.name.startswith(".") and (folder / "manifest.json").is_file()]
    imported.sort(key=lambda p: (not p.usable, p.label.lower()))
    return packages + imported


def package_tasks(package: ModelPackage) -> list[tuple[str, str]]:
    """What the package grades, as (task key, title of its grading scale): one entry per classifier."""
    config = package.classifier_config
    key = str(config.get("task") or package.manifest["task"])
    try:
        title = get_scale(config["scale"]).title
    except KeyError:
        title = str(config.get("scale", key))
    return [(key, title)]


def _words(values: Any) -> str:
    if isinstance(values, (list, tuple)):
        return ", ".join(str(v) for v in values) if values else "unknown"
    return str(values) if values not in (None, "") else "unknown"


def _grade_scope_words(scope: Any) -> str:
    """Where a package shows its grade (its manifest's ``grade_scope``), in words."""
    if scope is None:
        return "every study it locates"
    if not isinstance(scope, dict):
        return _words(scope)
    pixel = scope.get("max_pixel_mm")
    limit = f", pixels up to {pixel:g} mm" if isinstance(pixel, (int, float)) and not isinstance(pixel, bool) else ""
    return f"{_words(scope.get('modalities'))} studies{limit}"


def manifest_facts(manifest: dict[str, Any]) -> dict[str, str]:
    """What a user needs to know before trusting a package, from its manifest, every value a string.

    Keys: name, version, task, scale, modalities, regions, grade_shown_on, training_data,
    licence, intended_use. A value the manifest does not give is "unknown"; the intended use
    defaults to "Not for clinical use", never to nothing.
    """
    classifier = manifest.get("classifier") if isinstance(manifest.get("classifier"), dict) else {}
    training = manifest.get("training_data")
    if isinstance(training, dict):
        training = training.get("summary")
    try:
        scale = get_scale(classifier.get("scale", "")).title
    except (KeyError, TypeError):  # TypeError: a list or an object where the scale's name belongs
        scale = _words(classifier.get("scale"))
    return {
        "name": _words(manifest.get("name")),
        "version": _words(manifest.get("version")),
        "task": _words(manifest.get("task")),
        "scale": scale,
        "modalities": _words(manifest.get("modalities")),
        "regions": _words(manifest.get("regions")),
        "grade_shown_on": _grade_scope_words(manifest.get("grade_scope")),
        "training_data": _words(training),
        "licence": _words(manifest.get("licence")),
        "intended_use": str(manifest.get("intended_use") or NOT_FOR_CLINICAL_USE),
    }

