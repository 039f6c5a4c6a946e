"""Scores on the test split: accuracy, macro precision/recall/F1 and the same per class, and how
far the probabilities can be trusted: calibration error and NLL before and after temperature
scaling, and the coverage and accuracy under the model's "unknown" rules (the threshold on the
top probability, and the one on the feature distance where the model has one), with how many
images each rule refused."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from cnnpipe.core.dataset import Split
from cnnpipe.model import calibration, familiarity
from cnnpipe.model.card import ModelCard
from cnnpipe.model.familiarity import FeatureStatistics
from cnnpipe.model.inference import Placement, as_tensor, logits_and_features


@dataclass
class Evaluation:
    y_true: np.ndarray
    y_pred: np.ndarray
    metrics: dict[str, float]
    per_class: list[dict]  # one record per class: precision, recall, f1, support
    probabilities: np.ndarray  # calibrated, softmax(logits / the card's temperature)
    uncalibrated: np.ndarray  # softmax(logits)
    distance: np.ndarray | None = None  # to the nearest class, with feature statistics


def confusion(y_true: np.ndarray, y_pred: np.ndarray, classes: int) -> np.ndarray:
    """counts[true class, predicted class], every class a row and a column."""
    cells = np.bincount(y_true * classes + y_pred, minlength=classes * classes)
    return cells.reshape(classes, classes)


def class_scores(counts: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Precision, recall, F1 and support of each class from the confusion counts, 0 where a
    ratio has nothing to divide by: the figures scikit-learn's precision_recall_fscore_support
    gives with zero_division=0, to the bit (tests/test_figures.py checks it). Computed here
    because importing scikit-learn would add 1.5-2.5 s to every evaluate stage's start."""
    hits = np.diag(counts).astype(np.float64)
    predicted, support = counts.sum(0), counts.sum(1)

    def ratio(part: np.ndarray, whole: np.ndarray) -> np.ndarray:
        return np.divide(part, whole, out=np.zeros_like(part), where=whole > 0)

    f1 = ratio(2 * hits, predicted + support)
    return ratio(hits, predicted), ratio(hits, support), f1, support


def evaluate(
    model: torch.nn.Module,
    split: Split,
    card: ModelCard,
    device: torch.device,
    batch_size: int,
    statistics: FeatureStatistics | None = None,
) -> Evaluation:
    """Predict every image of the split and score the predictions and their probabilities."""
    model.to(device)
    layers = statistics.layers if statistics is not None else None
    placement = Placement(device, card.mean, card.std)
    logits, features = logits_and_features(
        model, as_tensor(split.images), placement, batch_size, layers
    )
    distance = (
        familiarity.distance(features, statistics.means, statistics.whitening).numpy()
        if statistics is not None
        else None
    )
    y_true, y_pred = split.labels, logits.argmax(1).numpy()
    counts = confusion(y_true, y_pred, len(card.classes))
    precision, recall, f1, support = class_scores(counts)
    metrics = {
        "test_accuracy": float(np.mean(y_true == y_pred)),
        "test_precision_macro": float(np.mean(precision)),
        "test_recall_macro": float(np.mean(recall)),
        "test_f1_macro": float(np.mean(f1)),
    }
    probabilities = calibration.softmax(logits, card.temperature)
    uncalibrated = calibration.softmax(logits)
    metrics.update(confidence_scores(probabilities, uncalibrated, y_true))
    metrics.update(refusals(probabilities, y_true, card, distance))
    per_class = [
        {
            "class": name,
            "precision": round(float(p), 6),
            "recall": round(float(r), 6),
            "f1": round(float(f), 6),
            "support": int(n),
        }
        for name, p, r, f, n in zip(card.classes, precision, recall, f1, support, strict=True)
    ]
    return Evaluation(y_true, y_pred, metrics, per_class, probabilities, uncalibrated, distance)


def confidence_scores(
    probabilities: np.ndarray, uncalibrated: np.ndarray, labels: np.ndarray
) -> dict[str, float]:
    """ECE (15 bins) and NLL with and without the temperature."""
    return {
        "test_ece": calibration.expected_calibration_error(probabilities, labels),
        "test_ece_uncalibrated": calibration.expected_calibration_error(uncalibrated, labels),
        "test_nll": calibration.negative_log_likelihood(probabilities, labels),
        "test_nll_uncalibrated": calibration.negative_log_likelihood(uncalibrated, labels),
    }


def refusals(
    probabilities: np.ndarray, labels: np.ndarray, card: ModelCard, distance: np.ndarray | None
) -> dict[str, float]:
    """Under both of the card's rules: the share of images labelled (coverage) and the accuracy
    on those; the share each rule refuses on its own ("unsure": the top probability under the
    threshold; "unfamiliar": the features farther than the distance threshold from every class;
    an image can be both). A model without the distance rule refuses none as unfamiliar."""
    limit = card.distance_threshold if distance is not None else None
    coverage, selective = calibration.selective_scores(
        probabilities, labels, card.threshold, distance, limit
    )
    unsure = probabilities.max(1) < card.threshold
    far = distance > limit if distance is not None and limit is not None else np.zeros_like(unsure)
    return {
        "test_coverage": coverage,
        "test_selective_accuracy": selective,
        "test_refused_unsure": float(unsure.mean()) if len(labels) else 0.0,
        "test_refused_unfamiliar": float(far.mean()) if len(labels) else 0.0,
    }
