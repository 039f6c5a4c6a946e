"""The process stage's work: a stratified train/val/test split of the raw images, each converted
once into uint8 arrays (see cnnpipe.core.dataset for the layout). Imports no torch."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cnnpipe.core import preprocess
from cnnpipe.core.architectures import ARCHITECTURES
from cnnpipe.core.dataset import (
    LABELS_FILE,
    SPLITS,
    InputSpec,
    RawImage,
    read_raw_table,
    write_labels,
    write_meta,
)
from cnnpipe.core.errors import CnnpipeError
from cnnpipe.core.params import AUTO, ProcessParams
from cnnpipe.core.stage import progress
from cnnpipe.data import duplicates

# process.channels: auto is colour when at least this share of the images carries colour
COLOUR_SHARE = 0.05
# process.image_size: auto, for a model that takes any size: the images' typical short side, in
# steps of SIZE_STEP px, between the model's smallest input and AUTO_MAX_SIZE (what trains in
# minutes on a CPU; larger images are shrunk to it)
SIZE_STEP = 16
AUTO_MAX_SIZE = 64


@dataclass(frozen=True)
class Processed:
    """What the process stage made: the model input, the images per class in each split, the
    duplicate groups, and the values the `auto` params took."""

    spec: InputSpec
    counts: dict[str, dict[str, int]]
    duplicates: dict
    resolved: dict[str, int]


def input_shape(
    params: ProcessParams, images: list[RawImage], model: str, bundled: bool = False
) -> tuple[int, int]:
    """(channels, image size): the params' values, `auto` resolved from the images and the
    model. Colour when the images carry colour (cnnpipe.data.fingerprint), grey otherwise; the
    size a fixed-size model takes, else, for a folder, the images' median short side within the
    model's smallest input and AUTO_MAX_SIZE; the `bundled` sources (shapes, digits) take the
    model's smallest input, the size their results are measured at, at a quarter of the cost
    of 64 px."""
    channels = params.channels
    if channels == AUTO:
        coloured = sum(image.colour for image in images) / max(1, len(images))
        channels = 3 if coloured >= COLOUR_SHARE else 1
    size = params.image_size
    if size == AUTO:
        arch = ARCHITECTURES[model]
        sides = [min(i.width, i.height) for i in images if i.width and i.height]
        typical = int(np.median(sides)) if sides and not bundled else arch.min_size
        size = arch.fixed_size or min(
            AUTO_MAX_SIZE, max(arch.min_size, typical // SIZE_STEP * SIZE_STEP)
        )
    return int(channels), int(size)


def split_indices(
    labels: list[str],
    params: ProcessParams,
    groups: list[list[int]] = (),  # type: ignore[assignment]
    given: list[str] | None = None,
) -> dict[str, np.ndarray]:
    """Stratified, seeded train/val/test indices, each sorted.

    Images of a split folder (`given`: train, val, test or "" per image) stay in it; a split the
    folder lacks is carved from its train images. Each class is shuffled on its own and cut by
    the ratios (at least one image per split), so every split holds each class in the same
    proportion; an image's duplicates (`groups`) go wherever it goes. Done in numpy: importing
    scikit-learn for this would more than double the stage's start-up.
    """
    y = np.asarray(labels)
    given = given or [""] * len(labels)
    classes, counts = np.unique(y, return_counts=True)
    if len(classes) < 2:
        raise CnnpipeError(
            f"the data has {len(classes)} class(es); at least 2 are needed to train a classifier"
        )
    present = {split for split in given if split}
    carved = [split for split in ("test", "val") if split not in present]
    pool = np.array([i for i, split in enumerate(given) if split in ("", "train")], dtype=int)
    need = len(carved) + 1
    pool_counts = dict(zip(*np.unique(y[pool], return_counts=True), strict=True))
    uses = ["train", *(split for split in ("val", "test") if split in carved)]
    for name in classes:
        if pool_counts.get(name, 0) < need:
            where = " in train/" if present else ""
            each = ", ".join(uses[:-1]) + f" and {uses[-1]}" if len(uses) > 1 else uses[0]
            raise CnnpipeError(
                f"class {str(name)!r} has {int(pool_counts.get(name, 0))} image(s){where}; each "
                f"class needs at least {need} (one each for {each}); add images to it"
            )
    assigned = np.array(
        [split if split in ("val", "test") else "" for split in given], dtype=object
    )
    in_pool = np.zeros(len(labels), dtype=bool)
    in_pool[pool] = True
    group_of: dict[int, list[int]] = {}
    for group in groups:
        pooled = [i for i in group if in_pool[i]]
        for i in pooled:
            group_of[i] = pooled
    placed: dict[tuple[str, str], int] = {}
    rng = np.random.default_rng(params.seed)
    ratios = {"test": params.test_ratio, "val": params.val_ratio}
    for name in classes:
        members = rng.permutation(pool[y[pool] == name])
        n, taken, quotas = len(members), 0, {}
        for k, split in enumerate(carved):
            quotas[split] = min(max(1, round(n * ratios[split])), n - taken - (len(carved) - k))
            taken += quotas[split]
        for i in members:
            if assigned[i]:
                continue
            target = next((s for s in carved if placed.get((str(name), s), 0) < quotas[s]), "train")
            for j in group_of.get(int(i), [int(i)]):
                if not assigned[j]:
                    assigned[j] = target
                    placed[(str(y[j]), target)] = placed.get((str(y[j]), target), 0) + 1
    parts = {split: np.flatnonzero(assigned == split) for split in SPLITS}
    for name in classes:
        for split, indices in parts.items():
            if not (y[indices] == name).any():
                raise CnnpipeError(
                    f"class {str(name)!r} has no image left for the {split} split: its images "
                    "are copies or near-duplicates of each other (see metrics/process/"
                    f"duplicates.json); add other pictures of {name}"
                )
    return parts


def duplicates_report(
    images: list[RawImage], groups: list[list[int]], splits: dict[str, np.ndarray], shown: int = 50
) -> dict:
    """The duplicate groups as metrics/process/duplicates.json reports them: how many, and
    which files, with their classes and splits; groups across given splits first."""
    split_of = {int(i): name for name, indices in splits.items() for i in indices}
    described = []
    for group in groups:
        given = sorted({images[i].split for i in group if images[i].split})
        described.append(
            {
                "files": [images[i].file for i in group],
                "classes": sorted({images[i].label for i in group}),
                "splits": sorted({split_of[i] for i in group}),
                "across_given_splits": given if len(given) > 1 else [],
            }
        )
    described.sort(key=lambda g: (not g["across_given_splits"], g["files"]))
    return {
        "method": (
            "identical files, or perceptual hashes (phash and dhash) within "
            f"{duplicates.MAX_BITS} bits, confirmed by the pixels: standardised "
            f"{duplicates.CONFIRM_SIZE} px grey copies differing by under "
            f"{duplicates.MAX_DIFFERENCE:g} on average"
        ),
        "groups": len(groups),
        "images_in_groups": sum(len(g) for g in groups),
        "groups_across_given_splits": sum(bool(g["across_given_splits"]) for g in described),
        "groups_across_classes": sum(len(g["classes"]) > 1 for g in described),
        "examples": described[:shown],
    }


def write_processed(
    raw: Path, out: Path, params: ProcessParams, model: str, bundled: bool = False
) -> Processed:
    """Split the raw dataset and write each split's CSV and uint8 arrays under `out`, `auto`
    params resolved for `model` (and for a `bundled` source: see input_shape)."""
    if not (raw / LABELS_FILE).exists():
        raise CnnpipeError(
            f"{raw / LABELS_FILE}: not found; run the generate stage first (dvc repro generate)"
        )
    images = read_raw_table(raw / LABELS_FILE)
    files, labels = [i.file for i in images], [i.label for i in images]
    channels, size = input_shape(params, images, model, bundled)
    classes = sorted(set(labels))
    index_of = {name: i for i, name in enumerate(classes)}
    groups = duplicates.groups(images, raw)
    splits = split_indices(labels, params, groups, [i.split for i in images])
    out.mkdir(parents=True, exist_ok=True)
    shape = (channels, size, size)
    counts: dict[str, dict[str, int]] = {}
    for name, indices in splits.items():
        array = np.lib.format.open_memmap(
            out / f"{name}_images.npy", mode="w+", dtype=np.uint8, shape=(len(indices), *shape)
        )
        for n, i in enumerate(indices):
            array[n] = preprocess.load(raw / files[i], size, channels)
            if (n + 1) % 5000 == 0:
                progress(f"process: {name}: {n + 1}/{len(indices)} images")
        array.flush()
        del array
        split_labels = np.array([index_of[labels[i]] for i in indices], dtype=np.int64)
        np.save(out / f"{name}_labels.npy", split_labels)
        write_labels(out / f"{name}.csv", [(files[i], labels[i]) for i in indices])
        counts[name] = {c: int((split_labels == k).sum()) for k, c in enumerate(classes)}
        progress(f"process: {name}: {len(indices)} images")
    mean, std = channel_stats(np.load(out / "train_images.npy", mmap_mode="r"))
    spec = InputSpec(classes=classes, image_size=size, channels=channels, mean=mean, std=std)
    write_meta(out, spec, counts)
    report = duplicates_report(images, groups, splits)
    return Processed(spec, counts, report, {"channels": channels, "image_size": size})


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
