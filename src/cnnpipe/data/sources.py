"""Raw labelled images from a source: synthetic shapes, scikit-learn's digits or a folder.

Every source writes the same layout: `images/<class>/<file>` and `labels.csv` (file, label).
Generated images (shapes, digits) are PNGs. Folder images are copied byte for byte after
`preprocess` has decoded them once to prove they are readable, so the process stage converts the
very file the user has (and would send to the service) through the one conversion path, once.
"""

from __future__ import annotations

import shutil
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from cnnpipe.core import preprocess
from cnnpipe.core.dataset import IMAGES_DIR, LABELS_FILE, MIN_IMAGES_PER_CLASS, write_labels
from cnnpipe.core.errors import CnnpipeError
from cnnpipe.core.params import GenerateParams
from cnnpipe.core.stage import progress
from cnnpipe.data import shapes

Item = tuple[str, str, Image.Image]  # (file name within its class folder, class, image)


@dataclass(frozen=True)
class Skipped:
    """A file of a folder source that is not used, and why."""

    path: str
    reason: str


@dataclass
class RawData:
    """What write_raw wrote: files per class (relative to its folder) and what it saw."""

    files: dict[str, list[str]] = field(default_factory=dict)
    skipped: list[Skipped] = field(default_factory=list)
    sizes: Counter[tuple[int, int]] = field(default_factory=Counter)  # (width, height) upright
    modes: Counter[str] = field(default_factory=Counter)

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


def _hidden(path: Path) -> bool:
    return path.name.startswith(".")


def _hidden_in(relative: Path) -> bool:
    return any(part.startswith(".") for part in relative.parts)


def scan_folder(root: Path) -> tuple[dict[str, list[Path]], list[Skipped]]:
    """The candidate files of each class folder under root (sorted), and the loose files.

    Checks the layout before any image is decoded: the folder exists, it holds at least two
    class folders, and each holds at least MIN_IMAGES_PER_CLASS files. Hidden files and folders
    (.DS_Store, .git) are ignored; files outside a class folder are skipped.
    """
    layout = f"one subfolder per class, e.g. {root}/cat/1.jpg, {root}/dog/2.png"
    if not root.exists():
        raise CnnpipeError(
            f"generate.folder: {str(root)!r} does not exist; create it with {layout}, "
            "or set generate.folder to your image folder"
        )
    if not root.is_dir():
        raise CnnpipeError(f"generate.folder: {str(root)!r} is not a folder; point it at {layout}")
    classes: dict[str, list[Path]] = {}
    loose: list[Skipped] = []
    for entry in sorted(root.iterdir()):
        if _hidden(entry):
            continue
        if entry.is_dir():
            classes[entry.name] = sorted(
                path
                for path in entry.rglob("*")
                if path.is_file() and not _hidden_in(path.relative_to(entry))
            )
        else:
            loose.append(Skipped(str(entry), "not inside a class folder; move it into one"))
    if not any(classes.values()):
        raise CnnpipeError(f"generate.folder: {str(root)!r} holds no images; put in it {layout}")
    if len(classes) < 2:
        names = ", ".join(classes)
        raise CnnpipeError(
            f"generate.folder: {str(root)!r} has {len(classes)} class folder ({names}); a "
            f"classifier needs at least 2: add a subfolder of images per class ({layout})"
        )
    for label, files in classes.items():
        if len(files) < MIN_IMAGES_PER_CLASS:
            raise CnnpipeError(_too_few(root, label, len(files), "file(s)"))
    return classes, loose


def _too_few(root: Path, label: str, count: int, what: str) -> str:
    return (
        f"generate.folder: class {label!r} ({root / label}) has {count} {what}; each class needs "
        f"at least {MIN_IMAGES_PER_CLASS} images (one each for train, val and test): add images "
        "to it or remove the folder"
    )


def check_image(path: Path) -> Image.Image:
    """Decode a file as the process stage will; raise ImageError if it cannot be used."""
    image = preprocess.open_image(path)
    # Mode conversion fails the same on one pixel as on all of them, and costs nothing.
    preprocess.to_array(image.crop((0, 0, 1, 1)), 1, 3)
    return image


def _write_items(items: Iterator[Item], out: Path, raw: RawData) -> None:
    for name, label, image in items:
        folder = out / IMAGES_DIR / label
        if label not in raw.files:
            folder.mkdir(parents=True, exist_ok=True)
            raw.files[label] = []
        image.save(folder / name, format="PNG")
        raw.files[label].append(f"{IMAGES_DIR}/{label}/{name}")
        raw.sizes[image.size] += 1
        raw.modes[image.mode] += 1
        _count(raw)


def _copy_folder(root: Path, out: Path, raw: RawData) -> None:
    classes, raw.skipped = scan_folder(root)
    for label, paths in classes.items():
        raw.files[label] = []
        for path in paths:
            try:
                image = check_image(path)
            except preprocess.ImageError as exc:
                raw.skipped.append(Skipped(str(path), str(exc)))
                continue
            name = f"{IMAGES_DIR}/{label}/{path.relative_to(root / label).as_posix()}"
            (out / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, out / name)
            raw.files[label].append(name)
            raw.sizes[image.size] += 1
            raw.modes[image.mode] += 1
            _count(raw)
        kept = len(raw.files[label])
        if kept < MIN_IMAGES_PER_CLASS:
            bad = len(paths) - kept
            raise CnnpipeError(_too_few(root, label, kept, f"readable images ({bad} skipped)"))


def _count(raw: RawData) -> None:
    total = sum(raw.modes.values())
    if total % 1000 == 0:
        progress(f"generate: {total} images written")


def write_raw(params: GenerateParams, out: Path) -> RawData:
    """Write every image of the source under `out`, and labels.csv; return what was written."""
    raw = RawData()
    out.mkdir(parents=True, exist_ok=True)
    if params.source == "folder":
        _copy_folder(Path(params.folder), out, raw)
    else:
        items = shape_items(params) if params.source == "shapes" else digit_items(params)
        _write_items(items, out, raw)
    rows = [(name, label) for label, names in raw.files.items() for name in names]
    write_labels(out / LABELS_FILE, rows)
    return raw
