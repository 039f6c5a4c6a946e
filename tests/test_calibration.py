"""Temperature scaling, calibration error and the "unknown" threshold, on logits whose true
calibration is known: labels drawn from softmax(logits / T0)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cnnpipe.model import calibration
from cnnpipe.model.card import ModelCard

T0 = 2.0  # the temperature the labels were drawn with


def drawn(n: int = 4000, classes: int = 5, seed: int = 0) -> tuple[torch.Tensor, np.ndarray]:
    """Logits and labels drawn from softmax(logits / T0): softmax(logits) is overconfident."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 4, (n, classes))
    p = np.exp(logits / T0)
    p /= p.sum(1, keepdims=True)
    labels = np.array([rng.choice(classes, p=row) for row in p])
    return torch.from_numpy(logits).float(), labels


def test_the_fitted_temperature_is_the_one_the_labels_were_drawn_with():
    logits, labels = drawn()
    assert calibration.fit_temperature(logits, torch.from_numpy(labels)) == pytest.approx(
        T0, rel=0.1
    )


def test_temperature_scaling_lowers_calibration_error_and_nll_and_keeps_every_prediction():
    logits, labels = drawn()
    fitted = calibration.fit_temperature(logits, torch.from_numpy(labels))
    raw, scaled = calibration.softmax(logits), calibration.softmax(logits, fitted)
    assert (raw.argmax(1) == scaled.argmax(1)).all()
    before = calibration.expected_calibration_error(raw, labels)
    after = calibration.expected_calibration_error(scaled, labels)
    assert before > 0.05 and after < 0.03 and after < before / 3
    nll = calibration.negative_log_likelihood
    assert nll(scaled, labels) < nll(raw, labels)


def test_a_validation_split_without_errors_gets_laplaces_accuracy_as_its_confidence():
    """No image wrong: the NLL falls without end as T goes to 0; the mean top probability is
    set to (n + 1) / (n + 2) instead."""
    logits = torch.tensor([[5.0, 0.0], [0.0, 3.0]] * 9)
    labels = torch.tensor([0, 1] * 9)
    fitted = calibration.fit_temperature(logits, labels)
    confidence = calibration.softmax(logits, fitted).max(1).mean()
    assert confidence == pytest.approx(19 / 20, abs=1e-6)
    assert calibration.MIN_TEMPERATURE < fitted < calibration.MAX_TEMPERATURE


def test_reliability_bins_hold_every_image_and_ece_is_the_weighted_gap():
    p = np.array([[1.0, 0.0], [0.55, 0.45], [0.05, 0.95], [0.5, 0.5]])
    labels = np.array([0, 1, 1, 0])
    r = calibration.reliability(p, labels, bins=10)
    assert r.count.sum() == 4 and r.count[-1] == 2 and r.count[4] == 1 and r.count[5] == 1
    assert r.accuracy[-1] == 1.0 and r.confidence[-1] == pytest.approx(0.975)
    # bins: (0.4, 0.5] one right at 0.5; (0.5, 0.6] one wrong at 0.55; (0.9, 1] two right
    expected = (abs(1 - 0.5) + abs(0 - 0.55) + 2 * abs(1 - 0.975)) / 4
    assert calibration.expected_calibration_error(p, labels, bins=10) == pytest.approx(expected)


@pytest.mark.parametrize("coverage", [0.5, 0.9, 0.97, 1.0])
def test_the_threshold_keeps_at_least_the_target_coverage_and_no_more_than_needed(coverage):
    confidence = np.random.default_rng(1).uniform(0.3, 1.0, 1000)
    threshold = calibration.threshold_for_coverage(confidence, coverage)
    kept = (confidence >= threshold).mean()
    assert kept >= coverage and kept - coverage < 0.002
    if coverage == 1.0:
        assert threshold == 0.0


def test_selective_scores_count_the_covered_images():
    p = np.array([[0.9, 0.1], [0.6, 0.4], [0.3, 0.7], [0.45, 0.55]])
    coverage, accuracy = calibration.selective_scores(p, np.array([0, 1, 1, 0]), 0.65)
    assert coverage == 0.5 and accuracy == 1.0


def test_the_card_says_why_an_image_gets_no_label():
    card = ModelCard(
        classes=["a", "b"],
        image_size=32,
        channels=1,
        mean=[0.5],
        std=[0.25],
        architecture="lenet5",
        threshold=0.8,
        target_coverage=0.97,
    )
    assert card.refusal(0.8) is None and card.refusal(0.95) is None
    refused = card.refusal(0.61)
    assert refused is not None and refused.kind == "unsure"
    assert "0.610" in refused.reason and "0.800" in refused.reason and "97%" in refused.reason
    assert ModelCard(**{**card.model_dump(), "threshold": 0.0}).refusal(0.01) is None
