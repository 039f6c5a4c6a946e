"""The process stage's work: a stratified train/val/test split of the raw images, each converted
once into uint8 arrays (see cnnpipe.core.dataset for the layout), in chunks over all cores
(cnnpipe.data.parallel) and written in order, so the bytes do not depend on the number of
processes. Imports no torch."""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Iterator, Sequence
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
    image_folder,
    read_raw_table,
    write_labels,
    write_meta,
)
from cnnpipe.core.errors import CnnpipeError
from cnnpipe.core.params import AUTO, ProcessParams
from cnnpipe.core.stage import progress
from cnnpipe.data import duplicates
from cnnpipe.data.folder import read_file
from cnnpipe.data.parallel import Pool

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


def _convert_chunk(
    root: Path, size: int, channels: int, chunk: Sequence[tuple[str, str]]
) -> np.ndarray:
    """The images of (file, md5) pairs under root as one uint8 array (N, C, size, size), each
    file checked against the md5 generate recorded: a folder read in place may have changed
    since."""
    out = np.empty((len(chunk), channels, size, size), dtype=np.uint8)
    for n, (file, md5) in enumerate(chunk):
        path = root / file
        try:
            data = read_file(path)
        except OSError as exc:
            raise CnnpipeError(
                f"{path} cannot be read ({exc.strerror}); it is listed in the raw labels.csv: "
                "run dvc repro (the generate stage lists the images again)"
            ) from None
        if md5 and hashlib.md5(data).hexdigest() != md5:
            raise CnnpipeError(
                f"{path} changed after the generate stage read it; run dvc repro again"
            )
        try:
            out[n] = preprocess.load(data, size, channels)
        except preprocess.ImageError as exc:
            raise CnnpipeError(f"{path}: {exc}") from None
    return out


def _write_images(path: Path, shape: tuple[int, ...], chunks: Iterator[np.ndarray]) -> None:
    """A .npy file of uint8 images written chunk by chunk as they come (the header that
    np.save would write, then the rows): neither the whole array nor a map of it is held."""
    with open(path, "wb") as f:
        header = {"descr": "|u1", "fortran_order": False, "shape": shape}
        np.lib.format.write_array_header_1_0(f, header)
        for chunk in chunks:
            f.write(chunk.tobytes())


def write_processed(
    raw: Path,
    out: Path,
    params: ProcessParams,
    model: str,
    bundled: bool = False,
    processes: int | None = None,
) -> Processed:
    """Split the raw dataset and write each split's CSV and uint8 arrays under `out`, `auto`
    params resolved for `model` (and for a `bundled` source: see input_shape), on `processes`
    processes (default: every core, see cnnpipe.data.parallel)."""
    if not (raw / LABELS_FILE).exists():
        raise CnnpipeError(
            f"{raw / LABELS_FILE}: not found; run the generate stage first (dvc repro generate)"
        )
    images = read_raw_table(raw / LABELS_FILE)
    root = image_folder(raw)
    files, labels = [i.file for i in images], [i.label for i in images]
    channels, size = input_shape(params, images, model, bundled)
    classes = sorted(set(labels))
    index_of = {name: i for i, name in enumerate(classes)}
    out.mkdir(parents=True, exist_ok=True)
    counts: dict[str, dict[str, int]] = {}
    stats = ChannelStats(channels)
    with Pool(processes) as pool:
        groups = duplicates.groups(images, root, pool)
        splits = split_indices(labels, params, groups, [i.split for i in images])
        convert = functools.partial(_convert_chunk, root, size, channels)
        for name, indices in splits.items():
            todo = [(files[i], images[i].md5) for i in indices]
            chunks = pool.map(convert, todo, f"process: {name} images converted")
            if name == "train":
                chunks = stats.counted(chunks)
            _write_images(out / f"{name}_images.npy", (len(indices), channels, size, size), chunks)
            split_labels = np.array([index_of[labels[i]] for i in indices], dtype=np.int64)
            np.save(out / f"{name}_labels.npy", split_labels)
            write_labels(out / f"{name}.csv", [(files[i], labels[i]) for i in indices])
            counts[name] = {c: int((split_labels == k).sum()) for k, c in enumerate(classes)}
            progress(f"process: {name}: {len(indices)} images")
    mean, std = stats.result()
    spec = InputSpec(classes=classes, image_size=size, channels=channels, mean=mean, std=std)
    write_meta(out, spec, counts)
    report = duplicates_report(images, groups, splits)
    return Processed(spec, counts, report, {"channels": channels, "image_size": size})


class ChannelStats:
    """Per-channel mean and std of uint8 images scaled to [0, 1], summed in blocks of BLOCK
    images in order, however the images arrive, so the figures (meta.json) are the same bytes
    for any chunking. Small blocks: each is held as two float64 copies."""

    BLOCK = 256

    def __init__(self, channels: int) -> None:
        self.total = np.zeros(channels)
        self.squares = np.zeros(channels)
        self.pixels = 0
        self._carry: np.ndarray | None = None

    def add(self, images: np.ndarray) -> None:
        if self._carry is not None and len(self._carry):
            images = np.concatenate([self._carry, images])
        whole = len(images) // self.BLOCK * self.BLOCK
        for start in range(0, whole, self.BLOCK):
            self._sum(images[start : start + self.BLOCK])
        self._carry = images[whole:].copy()

    def counted(self, chunks: Iterator[np.ndarray]) -> Iterator[np.ndarray]:
        """The chunks, each added on its way through."""
        for chunk in chunks:
            self.add(chunk)
            yield chunk

    def _sum(self, block: np.ndarray) -> None:
        scaled = block.astype(np.float64) / 255.0
        self.total += scaled.sum(axis=(0, 2, 3))
        self.squares += np.square(scaled).sum(axis=(0, 2, 3))
        self.pixels += len(block) * block.shape[2] * block.shape[3]

    def result(self) -> tuple[list[float], list[float]]:
        if self._carry is not None and len(self._carry):
            self._sum(self._carry)
            self._carry = None
        mean = self.total / self.pixels
        std = np.sqrt(np.maximum(self.squares / self.pixels - mean**2, 1e-12))
        return [round(float(v), 6) for v in mean], [round(float(v), 6) for v in std]
