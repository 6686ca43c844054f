"""Level grouping and naming, lumbar and cervical, with re-anchoring."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from SpineStenosisGraderLib.errors import InputError
from SpineStenosisGraderLib.inference.levels import (
    SPINE_DISCS,
    SliceCanal,
    find_discs,
    infer_region,
    name_levels,
    numbering_note,
)


def synthetic_canals(n_slices, disc_slices, half_width=1, score=0.9):
    canals = []
    for k in range(n_slices):
        near = any(abs(k - d) <= half_width for d in disc_slices)
        canals.append(SliceCanal(k, (10.0 + k * 0.1, 20.0, 30.0, 38.0), score, 0.9 if near else 0.05))
    return canals


def test_lumbar_discs_found_and_named_from_the_sacrum():
    discs = [8, 20, 32, 44, 56]
    levels = find_discs(synthetic_canals(64, discs), 64, 3.0)
    assert [lv.slice_index for lv in levels] == discs
    assert infer_region(levels, 3.0) == "lumbar"
    assert name_levels(len(levels), "lumbar") == ["L5-S1", "L4-L5", "L3-L4", "L2-L3", "L1-L2"]


def test_cervical_discs_named_from_c2():
    discs = [3, 11, 19, 27]
    levels = find_discs(synthetic_canals(32, discs, half_width=0), 32, 2.0)
    assert infer_region(levels, 2.0) == "cervical"
    assert name_levels(len(levels), "cervical") == ["C5-C6", "C4-C5", "C3-C4", "C2-C3"]


def test_low_scores_and_isolated_noise_are_ignored():
    canals = synthetic_canals(40, [10, 30])
    canals[20] = SliceCanal(20, (0, 0, 5, 5), 0.1, 1.0)  # confident disc, unsure canal
    canals[5] = None
    levels = find_discs(canals, 40, 3.0)
    assert [lv.slice_index for lv in levels] == [10, 30]


def test_one_disc_split_by_a_doubtful_slice_stays_one():
    canals = synthetic_canals(30, [10, 12], half_width=0)
    levels = find_discs(canals, 30, 3.0)
    assert len(levels) == 1


@pytest.mark.parametrize("position,name", [(0, "L4-L5"), (2, "L3-L4"), (-1, "T12-L1")])
def test_reanchoring_shifts_every_name(position, name):
    names = name_levels(4, "lumbar", anchor=(position, name))
    assert names[position] == name
    indices = [SPINE_DISCS.index(n) for n in names]
    assert indices == sorted(indices, reverse=True)
    assert np.all(np.diff(indices) == -1)


def test_names_past_the_sacrum_are_explicit():
    names = name_levels(3, "lumbar", anchor=(1, "L5-S1"))
    assert names == ["below L5-S1 (1)", "L5-S1", "L4-L5"]


def test_bad_anchor_is_a_clear_error():
    with pytest.raises(InputError, match="not a disc level"):
        name_levels(3, "lumbar", anchor=(0, "L6-L7"))
    with pytest.raises(InputError, match="outside"):
        name_levels(3, "lumbar", anchor=(5, "L4-L5"))


@given(n=st.integers(1, 12), region=st.sampled_from(["lumbar", "cervical"]))
def test_names_are_unique_and_contiguous(n, region):
    names = name_levels(n, region)
    assert len(set(names)) == n


def test_numbering_note_says_how_levels_were_counted():
    assert "L5-S1" in numbering_note("lumbar", None, ["L5-S1"])
    assert "C2-C3" in numbering_note("cervical", None, ["C2-C3"])
    assert "highest" in numbering_note("lumbar", (-1, "L1-L2"), ["L2-L3", "L1-L2"])
