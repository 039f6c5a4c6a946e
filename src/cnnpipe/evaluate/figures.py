"""The figures a reviewer looks at: the confusion matrix and a grid of misclassified images."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from sklearn.metrics import ConfusionMatrixDisplay  # noqa: E402

from cnnpipe.core.dataset import Split  # noqa: E402
from cnnpipe.evaluate.metrics import Evaluation  # noqa: E402

PNG_METADATA = {"Software": None}  # no version string in the PNGs: same results, same bytes


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
