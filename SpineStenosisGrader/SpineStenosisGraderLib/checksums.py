"""SHA256 of a file: the check a model package's weights pass before use, and how an interrupted write
knows the files it moved. Here, at the ground of the package, so both can use it."""

from __future__ import annotations

import hashlib
from pathlib import Path


def sha256_file(path: Path) -> str:
    """The file's SHA256 as hex, read in 1 MiB blocks so a large weights file is not read whole."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
