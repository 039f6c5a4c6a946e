"""Raw labelled images from a source: synthetic shapes, scikit-learn's digits or a folder.

Every source writes the same layout: the images under `images/` (`images/<class>/<file>`, or
`images/<split>/<class>/<file>` for a folder that came split) and `labels.csv` (one RawImage row
per image: its class, given split and fingerprint). Generated images (shapes, digits) are PNGs.
Folder images (the files the check stage listed, see cnnpipe.data.folder) are copied byte for byte
after `preprocess` has decoded them once to prove they are readable, so the process stage converts
the very file the user has (and would send to the service) through the one conversion path, once.
Every image's md5 is kept for the report (the same image in two classes), and its fingerprint
(colour, perceptual hashes) for the process stage.
"""

from __future__ import annotations

import hashlib
import io
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from cnnpipe.core import preprocess
from cnnpipe.core.dataset import IMAGES_DIR, LABELS_FILE, RawImage, write_raw_table
from cnnpipe.core.errors import CnnpipeError
from cnnpipe.core.params import GenerateParams
from cnnpipe.core.stage import progress
from cnnpipe.data import shapes
from cnnpipe.data.fingerprint import fingerprint
from cnnpipe.data.folder import Listing, Skipped, check_class_size, list_folder, read_file

Item = tuple[str, str, Image.Image]  # (file name within its class folder, class, image)


@dataclass
class RawData:
    """What write_raw wrote: files per class (relative to its folder) and what it saw."""

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
            rng = shapes.image_rng(params.seed, shape, index)
            yield f"{shape}_{index:05d}.png", shape, shapes.draw_shape(shape, params, rng)


def digit_items(params: GenerateParams) -> Iterator[Item]:
    """scikit-learn's 1,797 8x8 digits, their 0..16 grey levels scaled to 0..255."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    for index, (pixels, target) in enumerate(zip(digits.images, digits.target, strict=True)):
        grey = np.round(pixels * (255.0 / 16.0)).astype(np.uint8)
        yield f"digit_{index:05d}.png", str(target), Image.fromarray(grey, mode="L")


def check_image(source: Path | bytes) -> Image.Image:
    """Decode a file as the process stage will; raise ImageError if it cannot be used."""
    image = preprocess.open_image(source)
    # Mode conversion fails the same on one pixel as on all of them, and costs nothing.
    preprocess.to_array(image.crop((0, 0, 1, 1)), 1, 3)
    return image


def _keep(
    raw: RawData, label: str, name: str, data: bytes, image: Image.Image, split: str = ""
) -> None:
    raw.files[label].append(name)
    md5 = raw.md5[name] = hashlib.md5(data).hexdigest()
    raw.sizes[image.size] += 1
    raw.modes[image.mode] += 1
    found = fingerprint(image)
    raw.images.append(
        RawImage(name, label, split, md5, *image.size, found.colour, found.phash, found.dhash)
    )
    _count(raw)


def _write_items(items: Iterator[Item], out: Path, raw: RawData) -> None:
    for name, label, image in items:
        folder = out / IMAGES_DIR / label
        if label not in raw.files:
            folder.mkdir(parents=True, exist_ok=True)
            raw.files[label] = []
        encoded = io.BytesIO()
        image.save(encoded, format="PNG")
        (folder / name).write_bytes(encoded.getvalue())
        _keep(raw, label, f"{IMAGES_DIR}/{label}/{name}", encoded.getvalue(), image)


def _copy_folder(listing: Listing, out: Path, raw: RawData) -> None:
    root = Path(listing.folder)
    raw.skipped = list(listing.skipped)
    raw.layout = listing.layout
    for part, classes in listing.parts.items():
        split = listing.split_of.get(part, "")
        for label, files in classes.items():
            raw.files.setdefault(label, [])
            kept = 0
            for relative, md5 in files.items():
                path = root / part / label / relative
                try:
                    data = read_file(path)
                except OSError as exc:
                    raw.skipped.append(Skipped(str(path), f"cannot be read ({exc.strerror})"))
                    continue
                if hashlib.md5(data).hexdigest() != md5:
                    raise CnnpipeError(
                        f"{path} changed while it was being copied; run dvc repro again"
                    )
                try:
                    image = check_image(data)
                except preprocess.ImageError as exc:
                    raw.skipped.append(Skipped(str(path), str(exc)))
                    continue
                name = (Path(IMAGES_DIR) / part / label / relative).as_posix()
                (out / name).parent.mkdir(parents=True, exist_ok=True)
                (out / name).write_bytes(data)
                _keep(raw, label, name, data, image, split)
                kept += 1
            skipped = f"readable images ({len(files) - kept} skipped)"
            check_class_size(listing.folder, label, kept, skipped, part, listing.split_of)


def _count(raw: RawData) -> None:
    total = sum(raw.modes.values())
    if total % 1000 == 0:
        progress(f"generate: {total} images written")


def write_raw(params: GenerateParams, out: Path, listing: Listing | None = None) -> RawData:
    """Write every image of the source under `out`, and labels.csv; return what was written.
    A folder source copies the files of `listing` (listed now if None)."""
    raw = RawData()
    out.mkdir(parents=True, exist_ok=True)
    if params.source == "folder":
        _copy_folder(listing or list_folder(params.folder), out, raw)
    else:
        items = shape_items(params) if params.source == "shapes" else digit_items(params)
        _write_items(items, out, raw)
    write_raw_table(out / LABELS_FILE, raw.images)
    return raw
