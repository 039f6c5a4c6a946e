"""The data passed between stages, and the record of what a model takes.

Raw data (generate): `labels.csv`, one row per image (RawImage): its file, class and given split
(a folder with train/, val/, test/; empty otherwise), and what the process stage decides the
splits and the `auto` params with (md5, size, colour, perceptual hashes). Generated images are
PNGs under `images/`, and a row's file is relative to the raw folder; a folder source is read in
place (`folder.json` names it), and a row's file is relative to that folder (see image_folder).
Processed data (process): per split a CSV (file, label), `<split>_images.npy` (uint8,
N x C x H x W) and `<split>_labels.npy` (int64), and `meta.json`: the InputSpec of every model
trained on it, with the images per class in each split. No stage after process decodes an image.
This module imports no torch.
"""

from __future__ import annotations

import csv
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict

from cnnpipe.core.errors import CnnpipeError

LABELS_FILE = "labels.csv"
IMAGES_DIR = "images"
FOLDER_FILE = "folder.json"  # in the raw folder when its images are read in place
SPLITS = ("train", "val", "test")
META_FILE = "meta.json"
# Every class needs one image in each split.
MIN_IMAGES_PER_CLASS = len(SPLITS)
IN_MEMORY_LIMIT = 1 << 30  # image arrays up to 1 GiB are trained on from RAM, larger ones mapped


class InputSpec(BaseModel):
    """What a model takes and predicts: written by the process stage, kept in the checkpoint, the
    model store and the service's /metadata."""

    model_config = ConfigDict(frozen=True)

    classes: list[str]
    image_size: int
    channels: int
    mean: list[float]  # per channel, of the train split's pixels scaled to [0, 1]
    std: list[float]


@dataclass(frozen=True)
class RawImage:
    """One row of the raw labels.csv."""

    file: str  # relative to the raw folder
    label: str
    split: str = ""  # train, val or test when the folder came split; "" otherwise
    md5: str = ""
    width: int = 0  # upright, before resizing
    height: int = 0
    colour: bool = False
    phash: str = ""  # 64-bit hashes in hex (cnnpipe.data.fingerprint); "" when unknown
    dhash: str = ""


RAW_COLUMNS = list(RawImage.__dataclass_fields__)


@dataclass(frozen=True)
class Split:
    images: np.ndarray  # uint8 (N, C, H, W), in RAM or memory-mapped
    labels: np.ndarray  # int64 (N,)
    files: list[str]


def write_labels(path: Path, rows: list[tuple[str, str]]) -> None:
    """A labels CSV: one (file, label) row per image."""
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["file", "label"])
        writer.writerows(rows)


def write_raw_table(path: Path, images: list[RawImage]) -> None:
    """The raw labels.csv: one row per image, every RawImage field."""
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(RAW_COLUMNS)
        for image in images:
            writer.writerow([int(v) if isinstance(v, bool) else v for v in vars(image).values()])


def read_raw_table(path: Path) -> list[RawImage]:
    """The rows of a raw labels.csv; columns it lacks (one written by hand with only file and
    label) take their defaults: no given split, nothing known of the image."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    known = set(RAW_COLUMNS)
    images = []
    for row in rows:
        values: dict = {k: v for k, v in row.items() if k in known and v not in (None, "")}
        for name in ("width", "height"):
            values[name] = int(values.get(name, 0))
        values["colour"] = values.get("colour", "0") == "1"
        images.append(RawImage(**values))
    return images


def write_folder(raw: Path, folder: str) -> None:
    """Record that the images of raw's labels.csv are read in place from `folder` (a path as
    generate.folder gives it: absolute, or relative to the project root)."""
    (raw / FOLDER_FILE).write_text(json.dumps({"folder": folder}) + "\n")


def image_folder(raw: Path) -> Path:
    """Where the files of raw's labels.csv are: the image folder they were read in place from,
    or raw itself (generated images). A folder that is not here (a clone that has only what DVC
    pulled) stops with one line naming it and the fix."""
    record = raw / FOLDER_FILE
    if not record.exists():
        return raw
    folder = json.loads(record.read_text())["folder"]
    if not Path(folder).is_dir():
        raise CnnpipeError(
            f"the images of {raw / LABELS_FILE} are read from the folder {folder!r}, which is "
            "not here; get it (`dvc pull` it if the project tracks it with DVC), or set "
            "generate.folder to your copy of it, then run dvc repro"
        )
    return Path(folder)


def read_labels(path: Path) -> tuple[list[str], list[str]]:
    """The (file, label) columns of a labels CSV."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    return [r["file"] for r in rows], [r["label"] for r in rows]


def write_meta(folder: Path, spec: InputSpec, counts: dict[str, dict[str, int]]) -> None:
    meta = {**spec.model_dump(), "counts": counts}
    (folder / META_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")


def read_spec(folder: Path) -> InputSpec:
    """The InputSpec of processed data."""
    path = folder / META_FILE
    if not path.exists():
        raise CnnpipeError(f"{path}: not found; run the process stage first (dvc repro process)")
    meta = json.loads(path.read_text())
    return InputSpec(**{name: meta[name] for name in InputSpec.model_fields})


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
    files, _ = read_labels(folder / f"{name}.csv")
    return Split(images, labels, files)


def dvc_hash(folder: Path) -> str:
    """The hash DVC gives a directory output (its md5 in dvc.lock), computed the same way: the md5
    of the JSON list of {"md5", "relpath"} of its files, sorted by path, then ".dir". The model
    card and the MLflow run name the data a model was trained on with it."""
    entries = []
    for path in sorted(p for p in Path(folder).rglob("*") if p.is_file()):
        digest = hashlib.md5()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
        entries.append({"md5": digest.hexdigest(), "relpath": path.relative_to(folder).as_posix()})
    entries.sort(key=lambda entry: entry["relpath"])
    listing = json.dumps(entries, sort_keys=True).encode()
    return hashlib.md5(listing).hexdigest() + ".dir"
