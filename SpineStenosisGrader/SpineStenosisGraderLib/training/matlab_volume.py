"""A volume stored in a MATLAB .mat file, placed in patient space by the catalogue.

Some public spine datasets share their scans and labels as MATLAB arrays,
which carry no spacing and no orientation. The catalogue states them (see
``Testing/Data/scans.json``): the patient direction each array axis runs
towards, and the voxel spacing. The file is read with SciPy's MATLAB reader,
which parses the format's arrays and runs no code.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np
import SimpleITK as sitk

#: the LPS direction of each anatomical direction an array axis may run towards
DIRECTIONS_LPS = {
    "left": (1.0, 0.0, 0.0), "right": (-1.0, 0.0, 0.0),
    "posterior": (0.0, 1.0, 0.0), "anterior": (0.0, -1.0, 0.0),
    "superior": (0.0, 0.0, 1.0), "inferior": (0.0, 0.0, -1.0),
}


def is_matlab_file(path: Path) -> bool:
    return path.suffix.lower() == ".mat"


def read_matlab_volume(path: Path, variable: str, geometry: dict[str, Any]) -> sitk.Image:
    """The 3D array ``variable`` of a .mat file as an image whose axes run as ``geometry`` says.

    ``geometry["array_axes"]`` names, for the array's axes in their stored
    order, the direction each runs towards ("inferior", "posterior", "left",
    ...); ``geometry["spacing_mm"]`` gives their spacing in the same order.
    The origin is put at 0, as the file gives none: only positions within the
    volume are compared.
    """
    from scipy.io import loadmat

    if not path.is_file():
        raise FileNotFoundError(f"No MATLAB file at {path}.")
    contents = loadmat(str(path), variable_names=[variable])
    if variable not in contents:
        raise ValueError(f"{path.name} holds no variable {variable!r}.")
    array = np.asarray(contents[variable])
    axes: Sequence[str] = geometry["array_axes"]
    spacing = [float(s) for s in geometry["spacing_mm"]]
    if array.ndim != 3 or len(axes) != 3 or len(spacing) != 3:
        raise ValueError(f"{path.name}:{variable} must be a 3D array described by 3 axes and 3 spacings.")
    directions = np.array([DIRECTIONS_LPS[a] for a in axes])
    if abs(abs(np.linalg.det(directions)) - 1.0) > 1e-6:
        raise ValueError(f"The array axes {list(axes)} of {path.name} do not run in three different directions.")
    # SimpleITK reads a NumPy array as [z, y, x]: the array's last axis becomes the image's first
    image = sitk.GetImageFromArray(np.ascontiguousarray(array))
    image.SetSpacing(tuple(reversed(spacing)))
    # column a of the direction matrix is where image axis a runs (image axis a = array axis 2 - a)
    image.SetDirection(tuple(float(v) for v in directions[::-1].T.reshape(-1)))
    return image
