"""The figures a reviewer looks at: the confusion matrix, a grid of misclassified images, the
reliability diagram before and after temperature scaling, and Grad-CAM heat maps."""

from __future__ import annotations

import functools
import typing as t
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from cnnpipe.core.dataset import Split  # noqa: E402
from cnnpipe.evaluate.metrics import Evaluation, confusion  # noqa: E402
from cnnpipe.model import calibration, explain  # noqa: E402
from cnnpipe.model.card import ModelCard  # noqa: E402

PNG_METADATA = {"Software": None}  # no version string in the PNGs: same results, same bytes
# An axes title at a fixed height, the top of its axes: where matplotlib's automatic placement
# puts it when nothing is drawn above the axes, but without measuring every axis of the figure
# at each draw (which took half of the image grids' drawing time).
TOP = 1.0
P = t.ParamSpec("P")
R = t.TypeVar("R")


def plain_text(draw: t.Callable[P, R]) -> t.Callable[P, R]:
    """Class names are folder names: drawn as written, never parsed as math text (a class named
    `$\\foo$` would otherwise stop the stage with a parse error, `$x^2$` be typeset)."""

    @functools.wraps(draw)
    def drawn(*args: P.args, **kwargs: P.kwargs) -> R:
        with plt.rc_context({"text.parse_math": False}):
            return draw(*args, **kwargs)

    return drawn


@plain_text
def confusion_figure(result: Evaluation, classes: list[str], path: Path) -> None:
    """The confusion matrix as a PNG heat map with class names and counts, drawn as
    scikit-learn's ConfusionMatrixDisplay draws it (without importing scikit-learn, which would
    add seconds to the stage's start)."""
    size = max(5.0, 0.6 * len(classes) + 2)
    fig, ax = plt.subplots(figsize=(size, size))
    counts = confusion(result.y_true, result.y_pred, len(classes))
    image = ax.imshow(counts, interpolation="nearest", cmap="Blues")
    dark, light = image.cmap(1.0), image.cmap(0.0)
    middle = (counts.max() + counts.min()) / 2
    for (row, column), count in np.ndenumerate(counts):
        color = light if count >= middle else dark
        ax.text(column, row, str(count), ha="center", va="center", color=color)
    ticks = np.arange(len(classes))
    ax.set(xticks=ticks, yticks=ticks, xlabel="Predicted label", ylabel="True label")
    ax.set_xticklabels(classes, rotation=45)
    ax.set_yticklabels(classes)
    ax.set_ylim(len(classes) - 0.5, -0.5)
    ax.set_title(f"Test confusion matrix (accuracy {result.metrics['test_accuracy']:.3f})")
    fig.tight_layout()
    fig.savefig(path, dpi=100, metadata=PNG_METADATA)
    plt.close(fig)


@plain_text
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
        ax.set_title(
            f"{classes[result.y_true[i]]}\n-> {classes[result.y_pred[i]]}", fontsize=8, y=TOP
        )
    if not len(shown):
        axes.flat[0].text(0.5, 0.5, "no misclassified images", ha="center", va="center")
    fig.suptitle(f"Misclassified: {len(wrong)} of {len(result.y_true)} (true -> predicted)")
    fig.tight_layout()
    fig.savefig(path, dpi=100, metadata=PNG_METADATA)
    plt.close(fig)
    return len(wrong)


def reliability_figure(result: Evaluation, card: ModelCard, path: Path) -> None:
    """The reliability diagram of the test split, without and with the temperature: per bin of
    the top probability, the accuracy of its images (bars) and the gap to their mean top
    probability (red; the diagonal is perfect calibration); under it, the images per bin."""
    panels = [
        (result.uncalibrated, "uncalibrated", "test_ece_uncalibrated"),
        (result.probabilities, f"temperature {card.temperature:.3g}", "test_ece"),
    ]
    fig, axes = plt.subplots(
        2, 2, figsize=(10, 6.4), sharex=True, gridspec_kw={"height_ratios": [3, 1]}
    )
    for column, (probabilities, title, ece) in enumerate(panels):
        top, bottom = axes[0, column], axes[1, column]
        r = calibration.reliability(probabilities, result.y_true)
        left, width = r.edges[:-1], np.diff(r.edges)
        filled = r.count > 0
        edges = {"align": "edge", "edgecolor": "black", "linewidth": 0.6}
        top.bar(
            left[filled],
            r.accuracy[filled],
            width[filled],
            color="tab:blue",
            label="accuracy",
            **edges,
        )
        top.bar(
            left[filled],
            (r.confidence - r.accuracy)[filled],
            width[filled],
            bottom=r.accuracy[filled],
            color="tab:red",
            alpha=0.35,
            label="gap to the mean top probability",
            **edges,
        )
        top.plot([0, 1], [0, 1], "k--", linewidth=1, label="calibrated")
        top.set(xlim=(0, 1), ylim=(0, 1), ylabel="accuracy" if column == 0 else None)
        top.set_title(f"{title}: ECE {result.metrics[ece]:.4f}", y=TOP)
        bottom.bar(left, r.count, width, color="grey", **edges)
        bottom.set(xlabel="top probability", ylabel="images" if column == 0 else None)
    axes[0, 0].legend(loc="upper left", fontsize=8)
    fig.suptitle(f"Reliability on the test split ({len(result.y_true)} images, 15 bins)")
    fig.tight_layout()
    fig.savefig(path, dpi=100, metadata=PNG_METADATA)
    plt.close(fig)


def explained_indices(result: Evaluation, count: int) -> np.ndarray:
    """Up to `count` test images: the misclassified first (up to half of them), then correct
    ones, taken in turn from each true class."""
    wrong = np.flatnonzero(result.y_true != result.y_pred)[: count // 2]
    right = np.flatnonzero(result.y_true == result.y_pred)
    by_class = [right[result.y_true[right] == c] for c in np.unique(result.y_true[right])]
    turns: list[int] = []
    for rank in range(max((len(group) for group in by_class), default=0)):
        turns.extend(group[rank] for group in by_class if rank < len(group))
    return np.concatenate([wrong, turns[: count - len(wrong)]]).astype(int)


@plain_text
def gradcam_figure(
    model: torch.nn.Module,
    card: ModelCard,
    split: Split,
    result: Evaluation,
    path: Path,
    count: int,
) -> int:
    """A grid of Grad-CAM overlays for the predicted class of up to `count` test images (see
    explained_indices), titled true -> predicted and the calibrated probability; returns how
    many are shown."""
    shown = explained_indices(result, count)
    columns = max(1, min(6, len(shown)))
    rows = max(1, int(np.ceil(len(shown) / columns)))
    fig, axes = plt.subplots(rows, columns, figsize=(2.0 * columns, 2.3 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    overlays = []
    if len(shown):
        images = np.array(split.images[shown])
        maps, _ = explain.heatmaps(model, card, images, result.y_pred[shown].tolist())
        overlays = [explain.overlay(x, m, size=128) for x, m in zip(images, maps, strict=True)]
    for ax, i, image in zip(axes.flat, shown, overlays, strict=False):
        ax.imshow(image)
        p = result.probabilities[i, result.y_pred[i]]
        mark = "" if result.y_true[i] == result.y_pred[i] else " (wrong)"
        ax.set_title(
            f"{card.classes[result.y_true[i]]} -> {card.classes[result.y_pred[i]]}\n"
            f"p {p:.2f}{mark}",
            fontsize=8,
            y=TOP,
        )
    if not len(shown):
        axes.flat[0].text(0.5, 0.5, "no test images", ha="center", va="center")
    fig.suptitle("Grad-CAM: where the evidence for the predicted class lies (red: most)")
    fig.tight_layout()
    fig.savefig(path, dpi=100, metadata=PNG_METADATA)
    plt.close(fig)
    return len(shown)
