"""Raw labelled images from a source: synthetic shapes or scikit-learn's digits.

Every source writes the same layout: `images/<class>/<name>.png` and `labels.csv` (file, label).
"""

from __future__ import annotations

import csv
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image

from cnnpipe import shapes
from cnnpipe.errors import CnnpipeError
from cnnpipe.params import GenerateParams
from cnnpipe.stage import progress

LABELS_FILE = "labels.csv"
IMAGES_DIR = "images"

Item = tuple[str, str, Image.Image]  # (file name within its class folder, class, image)


def shape_items(params: GenerateParams) -> Iterator[Item]:
    for shape in params.classes:
        for index in range(params.images_per_class):
            rng = shapes.image_rng(params.seed, shape, index)
            yield f"{shape}_{index:05d}.png", shape, shapes.draw_shape(shape, params, rng)


def digit_items(params: GenerateParams) -> Iterator[Item]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    for index, (pixels, target) in enumerate(zip(digits.images, digits.target, strict=True)):
        grey = np.round(pixels * (255.0 / 16.0)).astype(np.uint8)
        yield f"digit_{index:05d}.png", str(target), Image.fromarray(grey, mode="L")


def items(params: GenerateParams) -> Iterator[Item]:
    if params.source == "shapes":
        return shape_items(params)
    if params.source == "digits":
        return digit_items(params)
    raise CnnpipeError(f"generate.source: {params.source!r} is not implemented in this build")


def write_raw(params: GenerateParams, out: Path) -> dict[str, int]:
    """Write every image of the source under `out`; return the image count per class."""
    counts: dict[str, int] = {}
    rows = []
    for name, label, image in items(params):
        folder = out / IMAGES_DIR / label
        if label not in counts:
            folder.mkdir(parents=True, exist_ok=True)
            counts[label] = 0
        image.save(folder / name, format="PNG")
        rows.append((f"{IMAGES_DIR}/{label}/{name}", label))
        counts[label] += 1
        if len(rows) % 1000 == 0:
            progress(f"generate: {len(rows)} images written")
    with open(out / LABELS_FILE, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["file", "label"])
        writer.writerows(rows)
    return counts
