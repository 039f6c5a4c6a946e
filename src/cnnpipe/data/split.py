"""The process stage's work: a stratified train/val/test split of the raw images, each converted
once into uint8 arrays (see cnnpipe.core.dataset for the layout). Imports no torch."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cnnpipe.core import preprocess
from cnnpipe.core.dataset import (
    LABELS_FILE,
    MIN_IMAGES_PER_CLASS,
    SPLITS,
    InputSpec,
    read_labels,
    write_labels,
    write_meta,
)
from cnnpipe.core.errors import CnnpipeError
from cnnpipe.core.params import ProcessParams
from cnnpipe.core.stage import progress


def split_indices(labels: list[str], params: ProcessParams) -> dict[str, np.ndarray]:
    """Stratified, seeded train/val/test indices, each sorted.

    Each class is shuffled on its own and cut by the ratios (at least one image per split), so
    every split holds each class in the same proportion. Done in numpy: importing scikit-learn
    for this would more than double the stage's start-up.
    """
    y = np.asarray(labels)
    classes, counts = np.unique(y, return_counts=True)
    if len(classes) < 2:
        raise CnnpipeError(
            f"the data has {len(classes)} class(es); at least 2 are needed to train a classifier"
        )
    if counts.min() < MIN_IMAGES_PER_CLASS:
        name = str(classes[int(counts.argmin())])
        raise CnnpipeError(
            f"class {name!r} has {int(counts.min())} image(s); each class needs at least "
            f"{MIN_IMAGES_PER_CLASS} (one each for train, val and test); add images to it"
        )
    rng = np.random.default_rng(params.seed)
    parts: dict[str, list[np.ndarray]] = {name: [] for name in SPLITS}
    for name in classes:
        members = rng.permutation(np.flatnonzero(y == name))
        n = len(members)
        n_test = min(max(1, round(n * params.test_ratio)), n - 2)
        n_val = min(max(1, round(n * params.val_ratio)), n - n_test - 1)
        parts["test"].append(members[:n_test])
        parts["val"].append(members[n_test : n_test + n_val])
        parts["train"].append(members[n_test + n_val :])
    return {name: np.sort(np.concatenate(chunks)) for name, chunks in parts.items()}


def write_processed(
    raw: Path, out: Path, params: ProcessParams
) -> tuple[InputSpec, dict[str, dict[str, int]]]:
    """Split the raw dataset and write each split's CSV and uint8 arrays under `out`; returns
    the InputSpec and the images per class in each split."""
    if not (raw / LABELS_FILE).exists():
        raise CnnpipeError(
            f"{raw / LABELS_FILE}: not found; run the generate stage first (dvc repro generate)"
        )
    files, labels = read_labels(raw / LABELS_FILE)
    classes = sorted(set(labels))
    index_of = {name: i for i, name in enumerate(classes)}
    splits = split_indices(labels, params)
    out.mkdir(parents=True, exist_ok=True)
    shape = (params.channels, params.image_size, params.image_size)
    counts: dict[str, dict[str, int]] = {}
    for name, indices in splits.items():
        images = np.lib.format.open_memmap(
            out / f"{name}_images.npy", mode="w+", dtype=np.uint8, shape=(len(indices), *shape)
        )
        for n, i in enumerate(indices):
            images[n] = preprocess.load(raw / files[i], params.image_size, params.channels)
            if (n + 1) % 5000 == 0:
                progress(f"process: {name}: {n + 1}/{len(indices)} images")
        images.flush()
        del images
        split_labels = np.array([index_of[labels[i]] for i in indices], dtype=np.int64)
        np.save(out / f"{name}_labels.npy", split_labels)
        write_labels(out / f"{name}.csv", [(files[i], labels[i]) for i in indices])
        counts[name] = {c: int((split_labels == k).sum()) for k, c in enumerate(classes)}
        progress(f"process: {name}: {len(indices)} images")
    mean, std = channel_stats(np.load(out / "train_images.npy", mmap_mode="r"))
    spec = InputSpec(
        classes=classes,
        image_size=params.image_size,
        channels=params.channels,
        mean=mean,
        std=std,
    )
    write_meta(out, spec, counts)
    return spec, counts


def channel_stats(images: np.ndarray, chunk: int = 256) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of uint8 images scaled to [0, 1], read in chunks (small ones: each
    holds two float64 copies of its images)."""
    total = np.zeros(images.shape[1])
    squares = np.zeros(images.shape[1])
    for start in range(0, len(images), chunk):
        block = images[start : start + chunk].astype(np.float64) / 255.0
        total += block.sum(axis=(0, 2, 3))
        squares += np.square(block).sum(axis=(0, 2, 3))
    n = len(images) * images.shape[2] * images.shape[3]
    mean = total / n
    std = np.sqrt(np.maximum(squares / n - mean**2, 1e-12))
    return [round(float(v), 6) for v in mean], [round(float(v), 6) for v in std]
