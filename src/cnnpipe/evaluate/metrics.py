"""Scores on the test split: accuracy, macro precision/recall/F1 and the same per class, and how
far the probabilities can be trusted: calibration error and NLL before and after temperature
scaling, and the coverage and accuracy at the model's "unknown" threshold."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from sklearn.metrics import accuracy_score, precision_recall_fscore_support

from cnnpipe.core.dataset import Split
from cnnpipe.model import calibration
from cnnpipe.model.card import ModelCard


@dataclass
class Evaluation:
    y_true: np.ndarray
    y_pred: np.ndarray
    metrics: dict[str, float]
    per_class: list[dict]  # one record per class: precision, recall, f1, support
    probabilities: np.ndarray  # calibrated, softmax(logits / the card's temperature)
    uncalibrated: np.ndarray  # softmax(logits)


def evaluate(
    model: torch.nn.Module, split: Split, card: ModelCard, device: torch.device, batch_size: int
) -> Evaluation:
    """Predict every image of the split and score the predictions and their probabilities."""
    logits = calibration.split_logits(model, split, card, device, batch_size)
    y_true, y_pred = split.labels, logits.argmax(1).numpy()
    every = list(range(len(card.classes)))
    precision, recall, f1, _ = precision_recall_fscore_support(
        y_true, y_pred, labels=every, average="macro", zero_division=0
    )
    metrics = {
        "test_accuracy": float(accuracy_score(y_true, y_pred)),
        "test_precision_macro": float(precision),
        "test_recall_macro": float(recall),
        "test_f1_macro": float(f1),
    }
    probabilities = calibration.softmax(logits, card.temperature)
    uncalibrated = calibration.softmax(logits)
    metrics.update(confidence_scores(probabilities, uncalibrated, y_true, card.threshold))
    scores = precision_recall_fscore_support(y_true, y_pred, labels=every, zero_division=0)
    per_class = [
        {
            "class": name,
            "precision": round(float(p), 6),
            "recall": round(float(r), 6),
            "f1": round(float(f), 6),
            "support": int(s),
        }
        for name, p, r, f, s in zip(card.classes, *scores, strict=True)
    ]
    return Evaluation(y_true, y_pred, metrics, per_class, probabilities, uncalibrated)


def confidence_scores(
    probabilities: np.ndarray, uncalibrated: np.ndarray, labels: np.ndarray, threshold: float
) -> dict[str, float]:
    """ECE (15 bins) and NLL with and without the temperature; the share of images labelled at
    the threshold (coverage) and the accuracy on those (selective accuracy)."""
    coverage, selective = calibration.selective_scores(probabilities, labels, threshold)
    return {
        "test_ece": calibration.expected_calibration_error(probabilities, labels),
        "test_ece_uncalibrated": calibration.expected_calibration_error(uncalibrated, labels),
        "test_nll": calibration.negative_log_likelihood(probabilities, labels),
        "test_nll_uncalibrated": calibration.negative_log_likelihood(uncalibrated, labels),
        "test_coverage": coverage,
        "test_selective_accuracy": selective,
    }
