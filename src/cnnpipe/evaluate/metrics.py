"""Scores on the test split: accuracy, macro precision/recall/F1, and the same per class."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from sklearn.metrics import accuracy_score, precision_recall_fscore_support

from cnnpipe.core.dataset import InputSpec, Split
from cnnpipe.model.inference import Placement, as_tensor, predict


@dataclass
class Evaluation:
    y_true: np.ndarray
    y_pred: np.ndarray
    metrics: dict[str, float]
    per_class: list[dict]  # one record per class: precision, recall, f1, support


def evaluate(
    model: torch.nn.Module, split: Split, spec: InputSpec, device: torch.device, batch_size: int
) -> Evaluation:
    """Predict every image of the split and score the predictions."""
    model.to(device)
    labels = torch.from_numpy(split.labels)
    placement = Placement(device, spec.mean, spec.std)
    _, _, predicted = predict(model, as_tensor(split.images), labels, placement, batch_size)
    y_true, y_pred = split.labels, predicted.numpy()
    every = list(range(len(spec.classes)))
    precision, recall, f1, _ = precision_recall_fscore_support(
        y_true, y_pred, labels=every, average="macro", zero_division=0
    )
    metrics = {
        "test_accuracy": float(accuracy_score(y_true, y_pred)),
        "test_precision_macro": float(precision),
        "test_recall_macro": float(recall),
        "test_f1_macro": float(f1),
    }
    scores = precision_recall_fscore_support(y_true, y_pred, labels=every, zero_division=0)
    per_class = [
        {
            "class": name,
            "precision": round(float(p), 6),
            "recall": round(float(r), 6),
            "f1": round(float(f), 6),
            "support": int(s),
        }
        for name, p, r, f, s in zip(spec.classes, *scores, strict=True)
    ]
    return Evaluation(y_true, y_pred, metrics, per_class)
