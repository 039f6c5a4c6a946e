"""Evaluation on the test split: metrics, a per-class report and the figures a reviewer looks at."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from sklearn.metrics import (  # noqa: E402
    ConfusionMatrixDisplay,
    accuracy_score,
    classification_report,
    precision_recall_fscore_support,
)

from cnnpipe.checkpoint import ModelInfo  # noqa: E402
from cnnpipe.datasets import Split  # noqa: E402
from cnnpipe.training import Stepper, as_tensor, evaluate_split  # noqa: E402

PNG_METADATA = {"Software": None}  # no version string in the PNGs: same results, same bytes


@dataclass
class Evaluation:
    y_true: np.ndarray
    y_pred: np.ndarray
    metrics: dict[str, float]
    report: dict


def evaluate(
    model: torch.nn.Module, split: Split, info: ModelInfo, device: torch.device, batch_size: int
) -> Evaluation:
    """Predict every image of the split and score the predictions."""
    stepper = Stepper(device, info.mean, info.std)
    model.to(device)
    labels = torch.from_numpy(split.labels)
    _, _, predicted = evaluate_split(model, as_tensor(split.images), labels, stepper, batch_size)
    y_true, y_pred = split.labels, predicted.numpy()
    every = list(range(len(info.classes)))
    precision, recall, f1, _ = precision_recall_fscore_support(
        y_true, y_pred, labels=every, average="macro", zero_division=0
    )
    metrics = {
        "test_accuracy": float(accuracy_score(y_true, y_pred)),
        "test_precision_macro": float(precision),
        "test_recall_macro": float(recall),
        "test_f1_macro": float(f1),
    }
    report = classification_report(
        y_true, y_pred, labels=every, target_names=info.classes, output_dict=True, zero_division=0
    )
    return Evaluation(y_true, y_pred, metrics, report)


def confusion_figure(result: Evaluation, classes: list[str], path: Path) -> None:
    """The confusion matrix as a PNG heat map with class names."""
    size = max(5.0, 0.6 * len(classes) + 2)
    fig, ax = plt.subplots(figsize=(size, size))
    ConfusionMatrixDisplay.from_predictions(
        result.y_true,
        result.y_pred,
        labels=list(range(len(classes))),
        display_labels=classes,
        cmap="Blues",
        colorbar=False,
        ax=ax,
        xticks_rotation=45,
    )
    ax.set_title(f"Test confusion matrix (accuracy {result.metrics['test_accuracy']:.3f})")
    fig.tight_layout()
    fig.savefig(path, dpi=100, metadata=PNG_METADATA)
    plt.close(fig)


def misclassified_figure(
    result: Evaluation, split: Split, classes: list[str], path: Path, limit: int
) -> int:
    """A grid of up to `limit` misclassified test images titled true -> predicted; returns how
    many images were wrong in all."""
    wrong = np.flatnonzero(result.y_true != result.y_pred)
    shown = wrong[:limit]
    columns = max(1, min(6, len(shown)))
    rows = max(1, int(np.ceil(len(shown) / columns)))
    fig, axes = plt.subplots(rows, columns, figsize=(1.8 * columns, 2.0 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, i in zip(axes.flat, shown, strict=False):
        image = split.images[i]
        ax.imshow(image[0] if image.shape[0] == 1 else image.transpose(1, 2, 0), cmap="gray")
        ax.set_title(f"{classes[result.y_true[i]]}\n-> {classes[result.y_pred[i]]}", fontsize=8)
    if not len(shown):
        axes.flat[0].text(0.5, 0.5, "no misclassified images", ha="center", va="center")
    fig.suptitle(f"Misclassified: {len(wrong)} of {len(result.y_true)} (true -> predicted)")
    fig.tight_layout()
    fig.savefig(path, dpi=100, metadata=PNG_METADATA)
    plt.close(fig)
    return len(wrong)
