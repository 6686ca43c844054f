"""The extension's catalogue metadata points at files the repository holds.

The Extensions Manager shows the icon and screenshots from the raw.githubusercontent URLs in the
top-level CMakeLists.txt; a URL to a file that is not in the repository shows as a broken image.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest
from PIL import Image

from conftest import DATA, ROOT, load_script

CMAKE = ROOT / "CMakeLists.txt"
CATALOGUE_ENTRY = ROOT / "SpineStenosisGrader.json"
SCREENSHOT_SCRIPT = ROOT / "Resources" / "Screenshots" / "catalogue_screenshot.py"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def extension_variables() -> dict[str, list[str]]:
    """Each ``set(EXTENSION_... "..." ...)`` of the top-level CMakeLists.txt: name -> its quoted strings."""
    found = {}
    cmake = CMAKE.read_text(encoding="utf-8")
    for match in re.finditer(r'^\s*set\(\s*(EXTENSION_\w+)\s+(.*?)\)\s*(?:#.*)?$', cmake, re.M):
        found[match.group(1)] = re.findall(r'"([^"]*)"', match.group(2))
    return found


def image_urls() -> list[str]:
    """The icon URL and every screenshot URL (a list, or one space-separated string, as Slicer reads it)."""
    variables = extension_variables()
    return [url for name in ("EXTENSION_ICONURL", "EXTENSION_SCREENSHOTURLS")
            for value in variables[name] for url in value.split()]


def raw_prefix() -> str:
    """``https://raw.githubusercontent.com/<owner>/<repo>/<branch>/``: the homepage's repository at the
    revision the catalogue entry builds."""
    homepage = extension_variables()["EXTENSION_HOMEPAGE"][0]
    repository = re.fullmatch(r"https://github\.com/([\w.-]+/[\w.-]+)", homepage)
    assert repository, f"EXTENSION_HOMEPAGE is not a GitHub repository: {homepage}"
    revision = json.loads(CATALOGUE_ENTRY.read_text(encoding="utf-8"))["scm_revision"]
    return f"https://raw.githubusercontent.com/{repository.group(1)}/{revision}/"


def test_icon_and_screenshots_are_pngs_the_repository_holds():
    urls = image_urls()
    assert len(urls) >= 2, f"an icon and at least one screenshot, found {urls}"
    prefix = raw_prefix()
    tracked = None
    if (ROOT / ".git").exists():
        listed = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=False)
        if listed.returncode == 0:
            tracked = set(listed.stdout.decode("utf-8").split("\0"))
    for url in urls:
        assert url.startswith(prefix), f"{url} is not a file of {prefix}"
        relative = url[len(prefix):]
        path = ROOT / relative
        assert path.is_file(), f"{url} points at {relative}, which is not in the repository"
        assert tracked is None or relative in tracked, f"{relative} is not in git: the URL would not resolve"
        assert path.read_bytes()[:8] == PNG_SIGNATURE, f"{relative} is not a PNG"
        with Image.open(path) as image:
            image.verify()  # reads every chunk and checks its CRC
        with Image.open(path) as image:
            assert image.format == "PNG" and min(image.size) >= 64, f"{relative}: {image.format} {image.size}"


def test_catalogue_screenshot_is_made_from_the_report_of_a_grading(tmp_path: Path):
    from SpineStenosisGraderLib.cli import main
    from SpineStenosisGraderLib.result import StudyResult

    result_dir = tmp_path / "out"
    assert main(["grade", str(DATA / "totalsegmentator_ct" / "example_ct.nii.gz"), "-o", str(result_dir), "-q"]) == 0
    script = load_script(SCREENSHOT_SCRIPT, "ssg_catalogue_screenshot")
    result = StudyResult.from_json((result_dir / "result.json").read_text(encoding="utf-8"))
    pictures = script.report_pictures((result_dir / "report.html").read_text(encoding="utf-8"), result)
    assert [level.name for level, _ in pictures] == [level.name for level in result.levels]
    assert all(png[:8] == PNG_SIGNATURE for _, png in pictures)

    out = tmp_path / "screenshot.png"
    assert script.main([str(result_dir), "-o", str(out)]) == 0
    with Image.open(out) as image:
        assert image.format == "PNG" and image.width == script.WIDTH_PX

    # a report from another run is refused, not mislabelled
    with pytest.raises(SystemExit, match="same run"):
        script.report_pictures((result_dir / "report.html").read_text(encoding="utf-8"),
                               StudyResult.from_json((result_dir / "result.json").read_text(encoding="utf-8")
                                                     .replace('"name": "L5-S1"', '"name": "L4-L5x"')))
