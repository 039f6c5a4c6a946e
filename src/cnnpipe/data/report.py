"""The data report of the raw images: counts per class, skipped files, the same image in more
than one class, sizes, and a sample grid.

Drawn with PIL alone: matplotlib would add half a second to the generate stage's start-up.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from cnnpipe.core import preprocess
from cnnpipe.core.params import GenerateParams
from cnnpipe.data.sources import RawData

MOST_COMMON_SIZES = 10


def summary(raw: RawData, params: GenerateParams) -> dict:
    """The JSON report: where the images came from, how many per class, which files were
    skipped and why, which identical files are in different classes, and the distribution of
    image sizes (upright, before resizing)."""
    widths = np.repeat([w for w, _ in raw.sizes], list(raw.sizes.values()))
    heights = np.repeat([h for _, h in raw.sizes], list(raw.sizes.values()))
    given: dict[str, dict[str, int]] = {}
    for image in raw.images:
        if image.split:
            per_class = given.setdefault(image.split, {})
            per_class[image.label] = per_class.get(image.label, 0) + 1
    return {
        "source": params.source,
        "folder": params.folder if params.source == "folder" else None,
        "layout": raw.layout,
        "images": sum(raw.counts.values()),
        "classes": len(raw.counts),
        "images_per_class": raw.counts,
        "images_per_given_split": given,
        "colour_images": sum(image.colour for image in raw.images),
        "skipped": len(raw.skipped),
        "skipped_files": [{"path": s.path, "reason": s.reason} for s in raw.skipped],
        "duplicates_across_classes": duplicates_across_classes(raw),
        "sizes": {
            "width": _stats(widths),
            "height": _stats(heights),
            "most_common": [
                {"width": w, "height": h, "images": n}
                for (w, h), n in raw.sizes.most_common(MOST_COMMON_SIZES)
            ],
            "distinct": len(raw.sizes),
        },
        "modes": dict(sorted(raw.modes.items())),
    }


def duplicates_across_classes(raw: RawData) -> list[dict]:
    """Groups of files with the same bytes in more than one class (a labelling conflict: the
    model is taught two answers for one image), each with its classes and files."""
    label_of = {name: label for label, names in raw.files.items() for name in names}
    groups: dict[str, list[str]] = {}
    for name, md5 in raw.md5.items():
        groups.setdefault(md5, []).append(name)
    found = []
    for names in groups.values():
        classes = sorted({label_of[name] for name in names})
        if len(classes) > 1:
            found.append({"classes": classes, "files": sorted(names)})
    return sorted(found, key=lambda group: group["files"])


def _stats(values: np.ndarray) -> dict[str, float]:
    if not len(values):
        return {}
    return {
        "min": int(values.min()),
        "median": float(np.median(values)),
        "max": int(values.max()),
    }


def sample_grid(root: Path, raw: RawData, per_class: int = 8, cell: int = 64) -> Image.Image:
    """One row per class: its name, then up to per_class images spread over the class, each
    converted by preprocess as the model sees it (squared), in colour."""
    font = ImageFont.load_default(size=14)
    label_width = 12 + max(int(font.getlength(label)) for label in raw.files)
    pad = 4
    grid = Image.new(
        "RGB",
        (label_width + per_class * (cell + pad) + pad, len(raw.files) * (cell + pad) + pad),
        "white",
    )
    draw = ImageDraw.Draw(grid)
    for row, (label, files) in enumerate(raw.files.items()):
        top = pad + row * (cell + pad)
        draw.text((6, top + cell // 2), label, fill="black", font=font, anchor="lm")
        picks = np.linspace(0, len(files) - 1, min(per_class, len(files))).round().astype(int)
        for column, index in enumerate(picks):
            pixels = preprocess.load(root / files[index], cell, 3)
            left = label_width + pad + column * (cell + pad)
            grid.paste(Image.fromarray(pixels.transpose(1, 2, 0)), (left, top))
    return grid
