"""Processed datasets: the stratified split of the raw images and its compact tensor form.

`data/processed` holds, per split, a CSV (file, label), `<split>_images.npy` (uint8, N x C x H x W)
and `<split>_labels.npy` (int64), plus `meta.json` with the class list, image size, channels and
the train split's per-channel mean and std. Training memory-maps the arrays: no PNG is decoded
after this stage. This module imports no torch.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cnnpipe import preprocess
from cnnpipe.errors import CnnpipeError
from cnnpipe.params import ProcessParams
from cnnpipe.sources import LABELS_FILE
from cnnpipe.stage import progress

SPLITS = ("train", "val", "test")
META_FILE = "meta.json"
IN_MEMORY_LIMIT = 1 << 30  # image arrays up to 1 GiB are trained on from RAM, larger ones mapped


@dataclass(frozen=True)
class Meta:
    classes: list[str]
    image_size: int
    channels: int
    mean: list[float]
    std: list[float]
    counts: dict[str, dict[str, int]]

    @classmethod
    def read(cls, folder: Path) -> Meta:
        return cls(**json.loads((folder / META_FILE).read_text()))


@dataclass(frozen=True)
class Split:
    images: np.ndarray  # uint8 (N, C, H, W), usually memory-mapped
    labels: np.ndarray  # int64 (N,)
    files: list[str]


def read_labels(raw: Path) -> tuple[list[str], list[str]]:
    """The (file, label) columns of a raw dataset's labels.csv."""
    path = raw / LABELS_FILE
    if not path.exists():
        raise CnnpipeError(f"{path}: not found; run the generate stage first (dvc repro generate)")
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    return [r["file"] for r in rows], [r["label"] for r in rows]


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
    need = 3
    if counts.min() < need:
        name = str(classes[int(counts.argmin())])
        raise CnnpipeError(
            f"class {name!r} has {int(counts.min())} image(s); each class needs at least {need} "
            "(one each for train, val and test); add images to it"
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


def write_processed(raw: Path, out: Path, params: ProcessParams) -> Meta:
    """Split the raw dataset and write each split's CSV and uint8 arrays under `out`."""
    files, labels = read_labels(raw)
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
        with open(out / f"{name}.csv", "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["file", "label"])
            writer.writerows((files[i], labels[i]) for i in indices)
        counts[name] = {c: int((split_labels == k).sum()) for k, c in enumerate(classes)}
        progress(f"process: {name}: {len(indices)} images")
    mean, std = channel_stats(np.load(out / "train_images.npy", mmap_mode="r"))
    meta = Meta(classes, params.image_size, params.channels, mean, std, counts)
    (out / META_FILE).write_text(json.dumps(meta.__dict__, indent=2, sort_keys=True) + "\n")
    return meta


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


def read_split(folder: Path, name: str, mmap: bool | None = True) -> Split:
    """One split's arrays and file list. The images are memory-mapped (mmap=True), read into RAM
    (False), or memory-mapped only when larger than IN_MEMORY_LIMIT (None: what training wants;
    reading instead of mapping keeps a copy out of the page tables)."""
    path = folder / f"{name}_images.npy"
    if not path.exists():
        raise CnnpipeError(f"{path}: not found; run the process stage first (dvc repro process)")
    if mmap is None:
        mmap = path.stat().st_size > IN_MEMORY_LIMIT
    images = np.load(path, mmap_mode="r" if mmap else None)
    labels = np.load(folder / f"{name}_labels.npy")
    with open(folder / f"{name}.csv", newline="") as f:
        files = [row["file"] for row in csv.DictReader(f)]
    return Split(images, labels, files)
