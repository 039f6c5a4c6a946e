"""Image folders for the tests of the folder source: good images of many formats and modes,
bad files, and entries no tool can hash."""

from __future__ import annotations

import os
import socket
import stat
import struct
import zlib
from pathlib import Path

import numpy as np
from conftest import encode
from PIL import Image

from cnnpipe.core import params


def picture(colour: tuple[int, int, int], size: tuple[int, int], seed: int) -> Image.Image:
    """A coloured canvas with some noise, so every file differs."""
    rng = np.random.default_rng(seed)
    pixels = np.clip(np.array(colour) + rng.normal(0, 20, (size[1], size[0], 3)), 0, 255)
    return Image.fromarray(pixels.astype(np.uint8))


def sixteen_bit(size: tuple[int, int], level: int) -> Image.Image:
    return Image.fromarray(np.full((size[1], size[0]), level, dtype=np.uint16))


def rotated_jpeg(colour: tuple[int, int, int]) -> bytes:
    image = picture(colour, (48, 24), 9)
    exif = image.getexif()
    exif[0x0112] = 6
    return encode(image, "JPEG", exif=exif.tobytes())


GOOD = {
    "cat": {  # reddish
        "a.png": lambda: encode(picture((220, 40, 40), (40, 30), 1), "PNG"),
        "b.jpg": lambda: encode(picture((220, 40, 40), (64, 64), 2).convert("L"), "JPEG"),
        "c.bmp": lambda: encode(picture((220, 40, 40), (33, 17), 3), "BMP"),
        "d.gif": lambda: encode(picture((220, 40, 40), (20, 20), 4).convert("P"), "GIF"),
        "nested/e.jpeg": rotated_jpeg((220, 40, 40)),
    },
    "dog": {  # greenish
        "a.webp": lambda: encode(picture((40, 200, 40), (50, 40), 5).convert("RGBA"), "WEBP"),
        "b.tif": lambda: encode(sixteen_bit((30, 30), 30000), "TIFF"),
        "c.jpg": lambda: encode(picture((40, 200, 40), (25, 60), 6).convert("CMYK"), "JPEG"),
        "d.png": lambda: encode(
            picture((40, 200, 40), (16, 16), 7).convert("P"), "PNG", transparency=0
        ),
    },
    "fish": {  # bluish
        "a.tiff": lambda: encode(picture((40, 40, 220), (32, 32), 8).convert("CMYK"), "TIFF"),
        "b.png": lambda: encode(sixteen_bit((24, 24), 50000), "PNG"),
        "c.png": lambda: encode(picture((40, 40, 220), (30, 20), 10).convert("LA"), "PNG"),
        "d.BMP": lambda: encode(picture((40, 40, 220), (10, 40), 11), "BMP"),
    },
}
BAD = {
    "cat/empty.png": lambda: b"",
    "dog/notes.txt": lambda: b"these are not pixels\n",
    "fish/truncated.png": lambda: encode(picture((40, 40, 220), (64, 64), 12), "PNG")[:3000],
    "fish/netpbm.ppm": lambda: encode(picture((40, 40, 220), (32, 32), 13), "PPM"),  # unlisted
    "README.txt": lambda: b"class folders below\n",
}


def make_folder(root: Path) -> Path:
    """Three classes of images in six formats and many modes, plus bad and hidden files."""
    for label, files in GOOD.items():
        for name, data in files.items():
            path = root / label / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data() if callable(data) else data)
    for name, data in BAD.items():
        (root / name).write_bytes(data())
    (root / "cat" / ".DS_Store").write_bytes(b"\0\1")
    (root / ".hidden").mkdir()
    (root / ".hidden" / "x.png").write_bytes(GOOD["cat"]["a.png"]())
    return root


def add_hostile(root: Path, outside: Path) -> dict[str, str]:
    """Entries DVC cannot hash (it hangs on a FIFO, fails on a socket, a device or a dangling or
    looping link, and a linked folder may lead anywhere) and a link to a file outside the folder,
    which it can; returns each one's expected reason."""
    os.mkfifo(root / "cat" / "pipe.png")
    with socket.socket(socket.AF_UNIX) as listening:
        listening.bind(str(root / "dog" / "socket.png"))
    (root / "fish" / "dangling.png").symlink_to("missing.png")
    (root / "fish" / "loop.png").symlink_to("loop.png")
    (root / "everything").symlink_to("/")  # a class folder linked outside the tree
    outside.write_bytes(GOOD["cat"]["a.png"]())
    (root / "cat" / "outside.png").symlink_to(outside)
    (root / "dog" / "cats").symlink_to("../cat")
    reasons = {
        "cat/pipe.png": "a named pipe (FIFO)",
        "dog/socket.png": "a socket",
        "fish/dangling.png": "a link to missing.png, which does not exist",
        "fish/loop.png": "a link that loops",
        "everything": "a link to a folder outside the folder (/)",
        "cat/outside.png": f"a link to {outside}, outside the folder",
        "dog/cats": "a link to a folder",
    }
    try:
        os.mknod(root / "fish" / "null.png", stat.S_IFCHR | 0o600, os.makedev(1, 3))
        reasons["fish/null.png"] = "a character device"
    except PermissionError:  # no CAP_MKNOD here
        pass
    return reasons


def png_header(width: int, height: int) -> bytes:
    """A PNG that declares its size and holds (almost) no pixels."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = struct.pack(">I", zlib.crc32(kind + data))
        return struct.pack(">I", len(data)) + kind + data + crc

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b"")


def folder_params(root: Path) -> params.GenerateParams:
    return params.parse({"generate": {"source": "folder", "folder": str(root)}}).generate


def make_split_folder(root: Path, splits: dict[str, int], classes=("cat", "dog")) -> Path:
    """A downloaded data set's layout: `<split>/<class>/` with `n` pictures per class in each
    split, every picture its own."""
    colours = {"cat": (220, 40, 40), "dog": (40, 200, 40), "fish": (40, 40, 220)}
    seed = 100
    for split, n in splits.items():
        for label in classes:
            (root / split / label).mkdir(parents=True, exist_ok=True)
            for k in range(n):
                seed += 1
                image = picture(colours[label], (24 + seed % 9, 20 + seed % 7), seed)
                (root / split / label / f"{k}.png").write_bytes(encode(image, "PNG"))
    return root
