"""A MATLAB array placed in patient space by the catalogue's geometry, and the lumbar MR scans read that way."""

import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from hypothesis import given, settings, strategies as st
from scipy.io import savemat

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "SpineStenosisGrader"))

from SpineStenosisGraderLib.training.annotations import load_scans  # noqa: E402
from SpineStenosisGraderLib.training.matlab_volume import read_matlab_volume  # noqa: E402

DATA = Path(__file__).resolve().parent / "Data"

#: a unit step along each named direction, in LPS
STEP = {"left": (1, 0, 0), "right": (-1, 0, 0), "posterior": (0, 1, 0), "anterior": (0, -1, 0),
        "superior": (0, 0, 1), "inferior": (0, 0, -1)}
AXIS_SETS = [("inferior", "posterior", "left"), ("superior", "anterior", "right"), ("left", "inferior", "anterior"),
             ("posterior", "right", "superior")]


@settings(max_examples=20, deadline=None)
@given(axes=st.sampled_from(AXIS_SETS), spacing=st.tuples(*[st.sampled_from([0.5, 1.0, 2.5])] * 3),
       voxel=st.tuples(st.integers(0, 5), st.integers(0, 6), st.integers(0, 7)))
def test_each_array_axis_runs_where_the_geometry_says(tmp_path_factory, axes, spacing, voxel):
    array = np.zeros((6, 7, 8), dtype=np.uint16)
    array[voxel] = 1
    path = tmp_path_factory.mktemp("mat") / "volume.mat"
    savemat(str(path), {"I": array})
    image = read_matlab_volume(path, "I", {"array_axes": list(axes), "spacing_mm": list(spacing)})
    # the marked voxel's position, from the image's own geometry
    zyx = np.argwhere(sitk.GetArrayFromImage(image) == 1)[0]
    found = np.array(image.TransformIndexToPhysicalPoint(tuple(int(v) for v in zyx[::-1])))
    # and as the geometry describes it: each array index steps its spacing towards its direction
    expected = sum(voxel[a] * spacing[a] * np.array(STEP[axes[a]], dtype=float) for a in range(3))
    assert np.allclose(found, expected, atol=1e-9)


def test_a_bad_variable_or_geometry_is_refused_with_what_is_wrong(tmp_path):
    path = tmp_path / "volume.mat"
    savemat(str(path), {"I": np.zeros((3, 3, 3), dtype=np.uint8)})
    with pytest.raises(ValueError, match="no variable 'GT'"):
        read_matlab_volume(path, "GT", {"array_axes": ["inferior", "posterior", "left"], "spacing_mm": [1, 1, 1]})
    with pytest.raises(ValueError, match="three different directions"):
        read_matlab_volume(path, "I", {"array_axes": ["inferior", "superior", "left"], "spacing_mm": [1, 1, 1]})
    with pytest.raises(FileNotFoundError):
        read_matlab_volume(tmp_path / "absent.mat", "I", {"array_axes": ["inferior", "posterior", "left"],
                                                          "spacing_mm": [1, 1, 1]})


def test_the_lumbar_mr_discs_run_from_l5_s1_up_a_vertebra_apart():
    scans = [s for s in load_scans(DATA / "scans.json") if s.name.startswith("fastcleverseg_ivd_")]
    assert len(scans) == 5
    order = ["L5-S1", "L4-L5", "L3-L4", "L2-L3", "L1-L2"]
    for scan in scans:
        # axial slices from the feet up, 1 mm apart; the canal is not labelled
        assert scan.stack.spacing == pytest.approx((1.0, 1.0, 1.0))
        assert not scan.canal.any() and not scan.boxes
        heights = [scan.discs[name] for name in order]
        gaps = np.diff(heights)
        # a lumbar vertebra with its disc is 30-45 mm tall: the heads-to-feet sense and the order of the labels
        assert np.all((gaps > 30) & (gaps < 45)), (scan.name, gaps)
