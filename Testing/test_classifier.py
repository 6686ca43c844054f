"""The classifier's output mapping, with hand-built logits whose grades are worked out by hand.

A softmax over the Schizas logits (A, B, C, D, in the scale's order) gives each
grade's probability; the grade is the most probable one, and it is flagged
uncertain when its probability is below the manifest's ``uncertain_below`` (0.6).
The expected values below are computed by hand from those rules (the arithmetic
is in the comments), never by the code under test, so that reversing the class
order, picking the least probable class or inverting the uncertain threshold
fails a test.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from SpineStenosisGraderLib.inference.classifier import DEFAULT_CLASSIFIER_CONFIG, GradeClassifier, OnnxGradeClassifier
from SpineStenosisGraderLib.scales import SCHIZAS


class _Input:
    name = "patches"


class FakeSession:
    """An ONNX Runtime session stand-in: the logits of patch n are ``logits[n]``, checked to be fed in order."""

    def __init__(self, logits) -> None:
        self.logits = np.asarray(logits, dtype=np.float32)

    def get_inputs(self):
        return [_Input()]

    def run(self, outputs, feed):
        batch = feed["patches"]
        assert batch.shape[1] == 1 and batch.dtype == np.float32  # [n, 1, H, W], as the exported graph takes it
        # each patch is filled with its own number: the logits follow the patches, whatever their order
        return [self.logits[np.round(batch[:, 0, 0, 0]).astype(int)]]


def _grade(logits, order=None):
    classifier = OnnxGradeClassifier(FakeSession(logits), SCHIZAS, dict(DEFAULT_CLASSIFIER_CONFIG))
    order = list(range(len(logits))) if order is None else order
    patches = np.array([np.full((8, 8), n, np.float32) for n in order]).reshape(-1, 8, 8)
    return classifier.grade(patches)


class FixedProbabilities(GradeClassifier):
    """A classifier whose probabilities are given: the mapping from probabilities to grades, on its own."""

    def __init__(self, rows, config=None) -> None:
        super().__init__(SCHIZAS, dict(DEFAULT_CLASSIFIER_CONFIG, **(config or {})))
        self.rows = np.asarray(rows, dtype=float)

    def predict_proba(self, patches):
        return self.rows[: len(patches)]


def test_the_scale_and_the_threshold_the_hand_computations_assume():
    assert SCHIZAS.names == ["A", "B", "C", "D"]
    assert DEFAULT_CLASSIFIER_CONFIG["uncertain_below"] == 0.6


def test_a_clear_logit_gives_its_grade_with_the_softmax_probabilities():
    # logits (0, 0, 3, 0): e^3 = 20.0855; the sum is 20.0855 + 3 = 23.0855
    # p(C) = 20.0855 / 23.0855 = 0.87005; p(A) = p(B) = p(D) = 1 / 23.0855 = 0.04332
    (prediction,) = _grade([[0.0, 0.0, 3.0, 0.0]])
    assert prediction.grade == "C"
    assert prediction.probability == pytest.approx(0.87005, abs=1e-4)
    assert prediction.probabilities == pytest.approx({"A": 0.04332, "B": 0.04332, "C": 0.87005, "D": 0.04332},
                                                     abs=1e-4)
    assert prediction.uncertain is False  # 0.870 is not below 0.6
    assert prediction.scale == "schizas" and prediction.task == "lumbar_central_canal"


def test_a_close_call_is_flagged_uncertain():
    # logits (1, 0.5, 0, 0): e^1 = 2.71828, e^0.5 = 1.64872; the sum is 2.71828 + 1.64872 + 2 = 6.36700
    # p(A) = 0.42693, p(B) = 0.25895, p(C) = p(D) = 0.15706: A, and 0.427 is below 0.6
    (prediction,) = _grade([[1.0, 0.5, 0.0, 0.0]])
    assert prediction.grade == "A"
    assert prediction.probabilities == pytest.approx({"A": 0.42693, "B": 0.25895, "C": 0.15706, "D": 0.15706},
                                                     abs=1e-4)
    assert prediction.uncertain is True


def test_the_most_severe_grade_is_the_last_class():
    # logits (-2, -1, 0, 2.5): e^2.5 = 12.18249, e^0 = 1, e^-1 = 0.36788, e^-2 = 0.13534; sum 13.68571
    # p(D) = 12.18249 / 13.68571 = 0.89016: D, certain
    (prediction,) = _grade([[-2.0, -1.0, 0.0, 2.5]])
    assert (prediction.grade, prediction.uncertain) == ("D", False)
    assert prediction.probability == pytest.approx(0.89016, abs=1e-4)


@pytest.mark.parametrize("p_top, uncertain", [(0.60, False), (0.5999, True), (0.61, False), (0.40, True)])
def test_uncertain_means_a_top_probability_below_the_threshold(p_top, uncertain):
    # probabilities given as they are (a softmax in float32 could land a hair either side of 0.6)
    rest = (1.0 - p_top) / 3.0
    (prediction,) = FixedProbabilities([[rest, p_top, rest, rest]]).grade(np.zeros((1, 8, 8), np.float32))
    assert prediction.grade == "B" and prediction.probability == p_top
    assert prediction.uncertain is uncertain


def test_huge_logits_do_not_overflow():
    # a trained network can give logits of hundreds; e^1000 overflows unless the largest is subtracted first
    (prediction,) = _grade([[1000.0, 990.0, 0.0, -1000.0]])
    # p(A) = 1 / (1 + e^-10) = 0.9999546
    assert prediction.grade == "A" and prediction.probability == pytest.approx(0.9999546, abs=1e-6)
    assert all(math.isfinite(p) for p in prediction.probabilities.values())


def test_each_patch_gets_its_own_grade_in_order():
    logits = [[3.0, 0.0, 0.0, 0.0], [0.0, 3.0, 0.0, 0.0], [0.0, 0.0, 3.0, 0.0], [0.0, 0.0, 0.0, 3.0]]
    assert [p.grade for p in _grade(logits)] == ["A", "B", "C", "D"]
    assert [p.grade for p in _grade(logits, order=[3, 0, 2, 1])] == ["D", "A", "C", "B"]
    assert _grade(np.zeros((0, 4))) == []


def test_the_threshold_is_the_manifests():
    rows = [[0.1, 0.7, 0.1, 0.1]]
    patches = np.zeros((1, 8, 8), np.float32)
    assert FixedProbabilities(rows).grade(patches)[0].uncertain is False  # 0.7 >= 0.6
    assert FixedProbabilities(rows, {"uncertain_below": 0.75}).grade(patches)[0].uncertain is True  # 0.7 < 0.75


def test_the_torch_backend_maps_logits_the_same_way():
    torch = pytest.importorskip("torch", reason="the optional torch backend")
    from SpineStenosisGraderLib.inference.classifier import TorchGradeClassifier

    logits = torch.tensor([[0.0, 0.0, 3.0, 0.0], [1.0, 0.5, 0.0, 0.0]])

    class Fixed(torch.nn.Module):
        def forward(self, batch):
            assert tuple(batch.shape[:2]) == (2, 1)
            return logits

    first, second = TorchGradeClassifier(Fixed(), SCHIZAS, dict(DEFAULT_CLASSIFIER_CONFIG)).grade(
        np.zeros((2, 8, 8), np.float32))
    # as worked out above: C at 0.87005, certain; A at 0.42693, uncertain
    assert (first.grade, first.uncertain) == ("C", False) and first.probability == pytest.approx(0.87005, abs=1e-4)
    assert (second.grade, second.uncertain) == ("A", True) and second.probability == pytest.approx(0.42693, abs=1e-4)
