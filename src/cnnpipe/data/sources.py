"""Raw labelled images from a source: synthetic shapes, scikit-learn's digits or a folder.

Every source writes `labels.csv`: one RawImage row per image, its file, class, given split, md5
and fingerprint (colour, perceptual hashes) for the process stage. Generated images (shapes,
digits) are PNGs written under `images/<class>/`. A folder is read in place: each file the check
stage listed (see cnnpipe.data.folder) is decoded once by `preprocess`, as the process stage
will, to prove it readable, and recorded with its path relative to the folder, which
`folder.json` names; nothing is copied, so the user's images are stored once, where they are.
The md5 column is what makes data/raw's hash change when an image does, so DVC re-runs the
process stage, and what the process stage checks the bytes it decodes against.

The images are drawn, checked and fingerprinted in chunks over all cores (cnnpipe.data.parallel),
the rows kept in order: the bytes do not depend on the number of processes.
"""

from __future__ import annotations

import functools
import hashlib
import io
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from cnnpipe.core import preprocess
from cnnpipe.core.dataset import IMAGES_DIR, LABELS_FILE, RawImage, write_folder, write_raw_table
from cnnpipe.core.errors import CnnpipeError
from cnnpipe.core.params import GenerateParams
from cnnpipe.data import shapes
from cnnpipe.data.fingerprint import fingerprint
from cnnpipe.data.folder import Listing, Skipped, check_class_size, list_folder, read_file
from cnnpipe.data.parallel import Pool

Item = tuple[str, str, Image.Image]  # (file name within its class folder, class, image)


@dataclass
class RawData:
    """What write_raw wrote: files per class (relative to the folder the images are in, see
    cnnpipe.core.dataset.image_folder) and what it saw."""

    files: dict[str, list[str]] = field(default_factory=dict)
    skipped: list[Skipped] = field(default_factory=list)
    sizes: Counter[tuple[int, int]] = field(default_factory=Counter)  # (width, height) upright
    modes: Counter[str] = field(default_factory=Counter)
    md5: dict[str, str] = field(default_factory=dict)  # file (as in files) -> md5 of its bytes
    images: list[RawImage] = field(default_factory=list)  # the rows of labels.csv, in order
    layout: str = "generated"  # how a folder was organised (see folder.Listing.layout)

    @property
    def counts(self) -> dict[str, int]:
        return {label: len(files) for label, files in self.files.items()}


def shape_items(params: GenerateParams) -> Iterator[Item]:
    for shape in params.classes:
        for index in range(params.images_per_class):
            yield _shape(params, shape, index)


def _shape(params: GenerateParams, shape: str, index: int) -> Item:
    rng = shapes.image_rng(params.seed, shape, index)
    return f"{shape}_{index:05d}.png", shape, shapes.draw_shape(shape, params, rng)


def _digits() -> list[tuple[int, np.ndarray, str]]:
    """scikit-learn's 1,797 8x8 digits, their 0..16 grey levels scaled to 0..255."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    grey = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)
    return [(index, grey[index], str(target)) for index, target in enumerate(digits.target)]


def check_image(source: Path | bytes) -> Image.Image:
    """Decode a file as the process stage will; raise ImageError if it cannot be used."""
    image = preprocess.open_image(source)
    # Mode conversion fails the same on one pixel as on all of them, and costs nothing.
    preprocess.to_array(image.crop((0, 0, 1, 1)), 1, 3)
    return image


@dataclass(frozen=True)
class _Found:
    """One image a worker has written or checked: its row of labels.csv, and its PIL mode."""

    row: RawImage
    mode: str


def _found(name: str, label: str, data: bytes, image: Image.Image, split: str = "") -> _Found:
    md5 = hashlib.md5(data).hexdigest()
    mark = fingerprint(image)
    row = RawImage(name, label, split, md5, *image.size, mark.colour, mark.phash, mark.dhash)
    return _Found(row, image.mode)


def _save(out: Path, item: Item) -> _Found:
    """Write a generated image as a PNG under out/images/<class>/."""
    name, label, image = item
    encoded = io.BytesIO()
    image.save(encoded, format="PNG")
    relative = f"{IMAGES_DIR}/{label}/{name}"
    (out / relative).write_bytes(encoded.getvalue())
    return _found(relative, label, encoded.getvalue(), image)


def _draw_chunk(params: GenerateParams, out: Path, chunk: Sequence[tuple[str, int]]) -> list:
    return [_save(out, _shape(params, shape, index)) for shape, index in chunk]


def _digit_chunk(out: Path, chunk: Sequence[tuple[int, np.ndarray, str]]) -> list:
    return [
        _save(out, (f"digit_{index:05d}.png", label, Image.fromarray(grey, mode="L")))
        for index, grey, label in chunk
    ]


# (file relative to the folder, class, given split, md5 the listing found)
FolderFile = tuple[str, str, str, str]


def _check_chunk(root: Path, chunk: Sequence[FolderFile]) -> list[_Found | Skipped]:
    """Read, check and fingerprint folder files where they are."""
    found: list[_Found | Skipped] = []
    for name, label, split, md5 in chunk:
        path = root / name
        try:
            data = read_file(path)
        except OSError as exc:
            found.append(Skipped(str(path), f"cannot be read ({exc.strerror})"))
            continue
        if hashlib.md5(data).hexdigest() != md5:
            raise CnnpipeError(f"{path} changed while it was being read; run dvc repro again")
        try:
            image = check_image(data)
        except preprocess.ImageError as exc:
            found.append(Skipped(str(path), str(exc)))
            continue
        found.append(_found(name, label, data, image, split))
    return found


def _keep(raw: RawData, found: _Found) -> None:
    row = found.row
    raw.files.setdefault(row.label, []).append(row.file)
    raw.md5[row.file] = row.md5
    raw.sizes[(row.width, row.height)] += 1
    raw.modes[found.mode] += 1
    raw.images.append(row)


def _read_folder(listing: Listing, pool: Pool, raw: RawData) -> None:
    raw.skipped = list(listing.skipped)
    raw.layout = listing.layout
    files: list[FolderFile] = []
    for part, classes in listing.parts.items():
        split = listing.split_of.get(part, "")
        for label, found in classes.items():
            raw.files.setdefault(label, [])
            prefix = f"{part}/{label}" if part else label
            files.extend((f"{prefix}/{name}", label, split, md5) for name, md5 in found.items())
    kept: Counter[tuple[str, str]] = Counter()
    check = functools.partial(_check_chunk, Path(listing.folder))
    for chunk in pool.map(check, files, "generate: images of the folder checked"):
        for result in chunk:
            if isinstance(result, Skipped):
                raw.skipped.append(result)
                continue
            _keep(raw, result)
            kept[(result.row.split, result.row.label)] += 1
    for part, classes in listing.parts.items():
        split = listing.split_of.get(part, "")
        for label, names in classes.items():
            count = kept[(split, label)]
            skipped = f"readable images ({len(names) - count} skipped)"
            check_class_size(listing.folder, label, count, skipped, part, listing.split_of)


def write_raw(
    params: GenerateParams,
    out: Path,
    listing: Listing | None = None,
    processes: int | None = None,
) -> RawData:
    """Write labels.csv for the images of the source under `out` (and generated images), on
    `processes` processes (default: cnnpipe.data.parallel.available()); return what was
    written. A folder source reads the files of `listing` (listed now if None) in place."""
    raw = RawData()
    out.mkdir(parents=True, exist_ok=True)
    with Pool(processes) as pool:
        if params.source == "folder":
            _read_folder(listing or list_folder(params.folder), pool, raw)
            write_folder(out, params.folder)
        else:
            if params.source == "shapes":
                labels: Sequence[str] = params.classes
                items: Sequence = [(s, i) for s in labels for i in range(params.images_per_class)]
                work = functools.partial(_draw_chunk, params, out)
            else:
                items = _digits()
                labels = sorted({label for _, _, label in items}, key=int)
                work = functools.partial(_digit_chunk, out)
            for label in labels:
                (out / IMAGES_DIR / label).mkdir(parents=True, exist_ok=True)
            for chunk in pool.map(work, items, "generate: images written"):
                for found in chunk:
                    _keep(raw, found)
    write_raw_table(out / LABELS_FILE, raw.images)
    return raw
