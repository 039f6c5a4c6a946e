"""A folder of colour pictures to measure what users meet: pictures of objects never trained on.

Four classes of drawn objects (fish, flower, house, tree). Each class has its own distinct objects
(every object its own proportions, colours and details); each object is shown in several pictures,
on other backgrounds (gradients, blotches, clutter), at other sizes, positions and angles, in other
light, some mirrored; pictures are 48-160 px, not always square, saved as JPEG or PNG. The objects
of `test/` never appear in `train/`, so the test figure is what a model does on new objects.

    python bench/objects.py DIR                  # DIR/train/<class>/ (20 objects x 15 pictures)
                                                 # DIR/test/<class>/ (10 other objects x 10)
    python bench/objects.py DIR --flat           # DIR/<class>/: the training pictures only
    python bench/objects.py DIR --leak 8         # 8 test pictures also copied into train/

A few training pictures also appear a second time, re-encoded and resized (near-duplicates, as
downloaded data sets have them); `--leak N` copies N test pictures into train/ too, the leak the
process stage reports.
"""

from __future__ import annotations

import argparse
import io
import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageEnhance, ImageFilter

CLASSES = ("fish", "flower", "house", "tree")
CANVAS = 256  # objects are drawn on this canvas, then the picture is cut and resized from it
Colour = tuple[int, int, int]


def _jitter(rng: np.random.Generator, colour: Colour, amount: int = 30) -> Colour:
    return tuple(int(np.clip(c + rng.integers(-amount, amount + 1), 0, 255)) for c in colour)


def _pick(rng: np.random.Generator, palette: list[Colour], amount: int = 30) -> Colour:
    return _jitter(rng, palette[int(rng.integers(len(palette)))], amount)


# Class colours overlap on purpose (green fish, green trees; red flowers, red houses): colour
# helps, but shape has to decide.
FISH = [
    (240, 130, 30),
    (40, 110, 200),
    (230, 210, 40),
    (120, 180, 90),
    (200, 60, 60),
    (150, 150, 160),
]
PETALS = [
    (220, 40, 60),
    (240, 150, 190),
    (150, 70, 200),
    (250, 220, 50),
    (245, 245, 240),
    (240, 120, 30),
]
WALLS = [(190, 70, 50), (225, 205, 170), (240, 240, 235), (150, 170, 190), (200, 180, 90)]
ROOFS = [(90, 40, 30), (60, 60, 70), (150, 60, 40), (40, 80, 60)]
LEAVES = [(40, 130, 40), (90, 160, 50), (30, 90, 50), (200, 140, 30), (180, 60, 30)]


def new_object(label: str, rng: np.random.Generator) -> dict:
    """The fixed traits of one object: what stays the same in all of its pictures."""
    if label == "fish":
        return {
            "body": _pick(rng, FISH),
            "fin": _pick(rng, FISH),
            "length": rng.uniform(0.45, 0.8),
            "height": rng.uniform(0.18, 0.5),
            "tail": rng.uniform(0.18, 0.32),
            "stripes": int(rng.integers(0, 4)),
            "fins": bool(rng.random() < 0.6),
        }
    if label == "flower":
        return {
            "petal": _pick(rng, PETALS),
            "centre": _pick(rng, [(250, 200, 40), (90, 60, 30), (240, 240, 200)]),
            "petals": int(rng.integers(4, 13)),
            "radius": rng.uniform(0.12, 0.32),
            "petal_length": rng.uniform(0.4, 1.4),
            "petal_width": rng.uniform(0.25, 0.9),
            "stem": bool(rng.random() < 0.7),
        }
    if label == "house":
        return {
            "wall": _pick(rng, WALLS),
            "roof": _pick(rng, ROOFS),
            "width": rng.uniform(0.35, 0.75),
            "height": rng.uniform(0.25, 0.6),
            "roof_height": rng.uniform(0.05, 0.35),
            "windows": int(rng.integers(0, 5)),
            "door": bool(rng.random() < 0.85),
            "chimney": bool(rng.random() < 0.4),
        }
    return {
        "leaves": _pick(rng, LEAVES),
        "trunk": _pick(rng, [(110, 70, 40), (80, 55, 35), (140, 110, 80)]),
        "conifer": bool(rng.random() < 0.4),
        "crown": rng.uniform(0.22, 0.42),
        "trunk_height": rng.uniform(0.1, 0.4),
        "blobs": int(rng.integers(3, 7)),
        "layout": rng.uniform(-1, 1, size=(7, 3)),
    }


def _ellipse(draw: ImageDraw.ImageDraw, cx: float, cy: float, rx: float, ry: float, fill) -> None:
    draw.ellipse([cx - rx, cy - ry, cx + rx, cy + ry], fill=fill)


def draw_object(label: str, traits: dict, rng: np.random.Generator) -> Image.Image:
    """The object in the middle of a transparent canvas (RGBA), small variations per picture."""
    image = Image.new("RGBA", (CANVAS, CANVAS), (0, 0, 0, 0))
    draw = ImageDraw.Draw(image)
    s, c = CANVAS, CANVAS / 2
    if label == "fish":
        length, height = traits["length"] * s / 2, traits["height"] * s / 2
        tail = traits["tail"] * s
        bend = rng.uniform(-0.15, 0.15) * height
        draw.polygon(
            [
                (c + length * 0.8, c),
                (c + length + tail, c - tail * 0.7 + bend),
                (c + length + tail, c + tail * 0.7 + bend),
            ],
            fill=traits["fin"],
        )
        if traits["fins"]:
            draw.polygon(
                [
                    (c - length * 0.1, c - height * 0.8),
                    (c + length * 0.3, c - height * 1.5),
                    (c + length * 0.4, c - height * 0.7),
                ],
                fill=traits["fin"],
            )
        _ellipse(draw, c, c, length, height, traits["body"])
        for k in range(traits["stripes"]):
            x = c - length * 0.3 + k * length * 0.3
            draw.line([(x, c - height * 0.8), (x, c + height * 0.8)], fill=traits["fin"], width=5)
        _ellipse(draw, c - length * 0.65, c - height * 0.2, 5, 5, (250, 250, 250))
        _ellipse(draw, c - length * 0.65, c - height * 0.2, 2.5, 2.5, (10, 10, 10))
    elif label == "flower":
        radius = traits["radius"] * s / 2
        if traits["stem"]:
            draw.line([(c, c), (c + rng.uniform(-10, 10), s * 0.95)], fill=(50, 120, 40), width=6)
            _ellipse(draw, c + 14, s * 0.75, 14, 6, (60, 140, 50))
        turn = rng.uniform(0, 2 * math.pi)
        for k in range(traits["petals"]):
            angle = turn + 2 * math.pi * k / traits["petals"]
            out = radius * (1 + traits["petal_length"])
            width = radius * traits["petal_width"] * 1.6
            px, py = c + math.cos(angle) * out * 0.6, c + math.sin(angle) * out * 0.6
            petal = Image.new("RGBA", (int(2 * out), int(2 * out)), (0, 0, 0, 0))
            ImageDraw.Draw(petal).ellipse(
                [out - out * 0.55, out - width / 2, out + out * 0.55, out + width / 2],
                fill=_jitter(rng, traits["petal"], 12),
            )
            petal = petal.rotate(-math.degrees(angle), resample=Image.Resampling.BILINEAR)
            image.alpha_composite(petal, (int(px - out), int(py - out)))
        _ellipse(draw, c, c, radius * 0.55, radius * 0.55, traits["centre"])
    elif label == "house":
        width, height = traits["width"] * s / 2, traits["height"] * s / 2
        top, bottom = c - height * 0.6, c + height * 1.1
        roof = traits["roof_height"] * s
        if traits["chimney"]:
            draw.rectangle(
                [c + width * 0.4, top - roof * 0.9, c + width * 0.6, top], fill=(120, 60, 50)
            )
        draw.rectangle([c - width, top, c + width, bottom], fill=traits["wall"])
        draw.polygon(
            [(c - width * 1.15, top), (c + width * 1.15, top), (c, top - roof)], fill=traits["roof"]
        )
        if traits["door"]:
            draw.rectangle(
                [c - width * 0.15, bottom - height * 0.9, c + width * 0.15, bottom],
                fill=(90, 50, 30),
            )
        for k in range(traits["windows"]):
            x = c - width * 0.7 + (k % 2) * width * 1.05
            y = top + height * 0.25 + (k // 2) * height * 0.7
            draw.rectangle([x, y, x + width * 0.35, y + height * 0.4], fill=(170, 210, 240))
            draw.rectangle(
                [x, y, x + width * 0.35, y + height * 0.4], outline=(60, 60, 60), width=2
            )
    else:
        crown, trunk = traits["crown"] * s / 2, traits["trunk_height"] * s
        base = c + crown + trunk * 0.6
        draw.rectangle(
            [c - crown * 0.15, base - trunk - crown * 0.3, c + crown * 0.15, base],
            fill=traits["trunk"],
        )
        if traits["conifer"]:
            for k in range(3):
                y = base - trunk * 0.6 - k * crown * 0.7
                half = crown * (1.2 - 0.3 * k)
                draw.polygon(
                    [(c - half, y), (c + half, y), (c, y - crown * 1.1)],
                    fill=_jitter(rng, traits["leaves"], 10),
                )
        else:
            centre_y = base - trunk - crown * 0.5
            for dx, dy, dr in traits["layout"][: traits["blobs"]]:
                r = crown * (0.55 + 0.2 * dr)
                _ellipse(
                    draw,
                    c + dx * crown * 0.6,
                    centre_y + dy * crown * 0.5,
                    r,
                    r * 0.9,
                    _jitter(rng, traits["leaves"], 12),
                )
    return image


def background(rng: np.random.Generator, size: int) -> Image.Image:
    """A scene to put an object in: a gradient between two colours, soft blotches, some
    clutter (lines, and circles and rectangles that are parts of no object)."""
    top, bottom = rng.integers(0, 256, size=(2, 3))
    ramp = np.linspace(0, 1, size)[:, None, None]
    pixels = top * (1 - ramp) + bottom * ramp + np.zeros((size, size, 3))
    image = Image.fromarray(pixels.astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(image)
    for _ in range(int(rng.integers(2, 7))):
        x, y = rng.uniform(0, size, 2)
        r = rng.uniform(size * 0.05, size * 0.25)
        _ellipse(
            draw, x, y, r, r * rng.uniform(0.5, 1.5), tuple(int(v) for v in rng.integers(0, 256, 3))
        )
    image = image.filter(ImageFilter.GaussianBlur(rng.uniform(4, 14)))
    draw = ImageDraw.Draw(image)
    for _ in range(int(rng.integers(0, 6))):
        x0, y0, x1, y1 = rng.uniform(0, size, 4)
        shade = tuple(int(v) for v in rng.integers(0, 256, 3))
        kind = rng.integers(5)
        if kind == 0:
            draw.line([(x0, y0), (x1, y1)], fill=shade, width=int(rng.integers(1, 6)))
        elif kind == 1:
            r = rng.uniform(3, size * 0.08)
            _ellipse(draw, x0, y0, r, r, shade)
        elif kind == 2:
            draw.rectangle(
                [
                    min(x0, x1),
                    min(y0, y1),
                    min(x0, x1) + rng.uniform(4, size * 0.12),
                    min(y0, y1) + rng.uniform(4, size * 0.12),
                ],
                fill=shade,
            )
        elif kind == 3:  # a lone triangle, a roof or a tail of nothing
            r = rng.uniform(size * 0.05, size * 0.15)
            draw.polygon(
                [(x0 - r, y0 + r), (x0 + r, y0 + r), (x0 + rng.uniform(-r, r), y0 - r)], fill=shade
            )
        else:  # an elongated blot, a body or a petal of nothing
            r = rng.uniform(size * 0.04, size * 0.12)
            _ellipse(draw, x0, y0, r * rng.uniform(1.5, 3), r, shade)
    return image


def picture(label: str, traits: dict, rng: np.random.Generator) -> Image.Image:
    """One picture of an object: placed at a random size, angle and position on a background,
    perhaps mirrored, in other light, at 48-160 px."""
    obj = draw_object(label, traits, rng)
    if rng.random() < 0.5:
        obj = obj.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    obj = obj.rotate(rng.uniform(-25, 25), resample=Image.Resampling.BICUBIC)
    scene = background(rng, CANVAS)
    scale = rng.uniform(0.5, 1.0)
    side = int(CANVAS * scale)
    obj = obj.resize((side, side), Image.Resampling.LANCZOS)
    room = CANVAS - side
    offset = (int(rng.uniform(0, room + 1)), int(rng.uniform(0, room + 1)))
    scene.paste(obj, offset, obj)
    if rng.random() < 0.2:  # something in front of part of the object
        draw = ImageDraw.Draw(scene)
        x, y = offset[0] + rng.uniform(0, side), offset[1] + rng.uniform(0, side)
        r = rng.uniform(0.1, 0.25) * side
        _ellipse(
            draw, x, y, r, r * rng.uniform(0.5, 1.5), tuple(int(v) for v in rng.integers(0, 256, 3))
        )
    scene = ImageEnhance.Brightness(scene).enhance(rng.uniform(0.7, 1.3))
    scene = ImageEnhance.Contrast(scene).enhance(rng.uniform(0.7, 1.3))
    scene = ImageEnhance.Color(scene).enhance(rng.uniform(0.7, 1.3))
    width = int(rng.integers(48, 161))
    height = int(np.clip(width * rng.choice([1.0, 1.0, 0.75, 1.33]), 48, 160))
    return scene.resize((width, height), Image.Resampling.LANCZOS)


def encoded(image: Image.Image, rng: np.random.Generator) -> tuple[bytes, str]:
    """The picture as a JPEG (most) or a PNG file."""
    out = io.BytesIO()
    if rng.random() < 0.7:
        image.save(out, "JPEG", quality=int(rng.integers(70, 96)))
        return out.getvalue(), "jpg"
    image.save(out, "PNG")
    return out.getvalue(), "png"


def write(
    folder: Path, objects: int, pictures: int, seed: int, first: int, near_duplicates: int
) -> list[Path]:
    """`objects` objects per class, `pictures` pictures each, into folder/<class>/; returns the
    files written. Objects are numbered from `first`, so other numbers are other objects."""
    written = []
    for k, label in enumerate(CLASSES):
        (folder / label).mkdir(parents=True, exist_ok=True)
        mine = []
        for number in range(first, first + objects):
            traits = new_object(label, np.random.default_rng([seed, k, number, 0]))
            for view in range(pictures):
                rng = np.random.default_rng([seed, k, number, 1 + view])
                data, ext = encoded(picture(label, traits, rng), rng)
                path = folder / label / f"{label}_{number:03d}_{view:02d}.{ext}"
                path.write_bytes(data)
                mine.append(path)
        written += mine
        rng = np.random.default_rng([seed, k, 10_000])
        for n, index in enumerate(rng.choice(len(mine), near_duplicates, replace=False)):
            original = mine[index]
            copy = Image.open(original).convert("RGB")
            copy = copy.resize((int(copy.width * 0.9), int(copy.height * 0.9)))
            data, ext = encoded(copy, rng)
            (folder / label / f"{original.stem}_copy{n}.{ext}").write_bytes(data)
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("--objects", type=int, default=20, help="training objects per class")
    parser.add_argument("--test-objects", type=int, default=10, help="test objects per class")
    parser.add_argument("--pictures", type=int, default=15, help="pictures of each object")
    parser.add_argument(
        "--near-duplicates", type=int, default=6, help="re-encoded copies per class"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--flat", action="store_true", help="class folders of training pictures")
    parser.add_argument("--leak", type=int, default=0, help="test pictures copied into train/")
    args = parser.parse_args()
    if args.near_duplicates > args.objects * args.pictures:
        parser.error(
            f"--near-duplicates {args.near_duplicates}: a class has only "
            f"{args.objects * args.pictures} training pictures to copy; give at most that many"
        )
    train = args.folder if args.flat else args.folder / "train"
    write(train, args.objects, args.pictures, args.seed, 0, args.near_duplicates)
    if args.flat:
        return
    test = write(args.folder / "test", args.test_objects, 10, args.seed, 1000, 0)
    for path in np.random.default_rng(args.seed).choice(test, args.leak, replace=False):
        (train / path.parent.name / f"leaked_{path.name}").write_bytes(path.read_bytes())
    print(f"{args.folder}: {sum(1 for _ in args.folder.rglob('*.*'))} pictures")


if __name__ == "__main__":
    main()
