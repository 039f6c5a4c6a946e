"""Image preprocessing: the one path from an image file or upload to model input.

The process stage, evaluation and the service all call these functions, so the service feeds the
model exactly the tensor evaluation measured. This module imports no torch.
"""

from __future__ import annotations

import io
import itertools
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, TYPE_CHECKING

import numpy as np
from PIL import Image, ImageMode, ImageOps, UnidentifiedImageError

from cnnpipe.core.errors import CnnpipeError

if TYPE_CHECKING:
    import torch

DEFAULT_MAX_PIXELS = 50_000_000
# The formats an image may be in, as Pillow names its decoders. Pillow knows about 40, some of
# them rarely exercised (and EPS runs Ghostscript): only these are ever tried, for a folder
# source and an upload alike.
FORMATS = ("PNG", "JPEG", "GIF", "BMP", "WEBP", "TIFF")
FORMAT_NAMES = "PNG, JPEG, GIF, BMP, WebP or TIFF"  # FORMATS as a message names them
BACKGROUND = (255, 255, 255)  # transparent pixels are composited onto white
STRIP_PIXELS = 1 << 20  # pixels converted at a time: bounds the temporaries of large images


class ImageError(CnnpipeError):
    """An image that cannot be decoded or is too large."""


def decoded_bytes(mode: str, size: tuple[int, int]) -> int:
    """The bytes PIL holds for an image of this mode and size once decoded: width x height x
    bytes per sample x samples (PIL keeps multi-band 8-bit pixels in 4 bytes)."""
    try:
        info = ImageMode.getmode(mode)
    except KeyError:
        raise ImageError(
            f"images of mode {mode} cannot be converted; save it as RGB or greyscale"
        ) from None
    sample = np.dtype(info.typestr).itemsize
    per_pixel = sample if len(info.bands) == 1 else max(4, sample * len(info.bands))
    return size[0] * size[1] * per_pixel


@contextmanager
def _decoded(
    source: bytes | Path | str | IO[bytes], max_pixels: int, max_bytes: int | None
) -> Iterator[Image.Image]:
    """The fully decoded first frame, upright per its EXIF orientation, while the file is open.

    The size checks run on the header, before any pixel is decoded."""
    if isinstance(source, bytes):
        if not source:
            raise ImageError(f"the file is empty; send a {FORMAT_NAMES} image")
        source = io.BytesIO(source)
    try:
        with Image.open(source, formats=FORMATS) as image:
            width, height = image.size
            if width * height > max_pixels:
                raise ImageError(
                    f"the image is {width}x{height} = {width * height} pixels, over the limit of "
                    f"{max_pixels}; send a smaller image"
                )
            size = decoded_bytes(image.mode, image.size)
            if max_bytes is not None and size > max_bytes:
                raise ImageError(
                    f"the image is {width}x{height} in mode {image.mode}, {size} bytes decoded, "
                    f"over the limit of {max_bytes}; send a smaller image or fewer bits per pixel"
                )
            image.seek(0)
            image.load()
            ImageOps.exif_transpose(image, in_place=True)
            yield image
    except ImageError:
        raise
    except UnidentifiedImageError:
        raise ImageError(
            f"not a readable image in an accepted format; send a {FORMAT_NAMES} image (convert "
            "other formats to one of these)"
        ) from None
    except Image.DecompressionBombError as exc:  # PIL's own limit, met before the size is known
        pixels = re.search(r"\d+", str(exc))
        found = f"{pixels.group()} pixels" if pixels else "larger than PIL decodes"
        raise ImageError(
            f"the image is {found}, over the limit of {max_pixels}; send a smaller image"
        ) from None
    except (FileNotFoundError, PermissionError) as exc:
        raise ImageError(f"the file cannot be read ({exc.strerror})") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageError(f"the image cannot be decoded ({exc}); it may be truncated") from None


def header(source: bytes | IO[bytes]) -> tuple[str, tuple[int, int]] | None:
    """An image's mode and size from its header (no pixel decoded), None if unreadable."""
    stream = io.BytesIO(source) if isinstance(source, bytes) else source
    try:
        with Image.open(stream, formats=FORMATS) as image:
            return image.mode, image.size
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError):
        return None
    finally:
        if not isinstance(source, bytes):
            source.seek(0)


def open_image(
    source: bytes | Path | str | IO[bytes],
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_bytes: int | None = None,
) -> Image.Image:
    """Decode an image fully (first frame of an animation), upright per its EXIF orientation.

    Raises ImageError for empty, truncated, unreadable or oversized images: over max_pixels, or
    over max_bytes once decoded (see decoded_bytes).
    """
    with _decoded(source, max_pixels, max_bytes) as image:
        return image.copy()


def _float_scale(image: Image.Image) -> float:
    """Float greyscale is read as [0, 1] if all of it fits there, else as [0, 255]."""
    if image.mode != "F":
        return 1.0
    maxima = [np.asarray(strip, dtype=np.float64).max(initial=0.0) for strip in _strips(image)]
    return 255.0 if np.max(maxima, initial=0.0) <= 1.0 else 1.0


def _strips(image: Image.Image) -> Iterator[Image.Image]:
    """The image in horizontal strips of about STRIP_PIXELS (the image itself if it is small)."""
    width, height = image.size
    rows = max(1, STRIP_PIXELS // max(1, width))
    if height <= rows:
        yield image
        return
    for top in range(0, height, rows):
        yield image.crop((0, top, width, min(height, top + rows)))


def _to_8bit(image: Image.Image, float_scale: float) -> Image.Image:
    """Bring any PIL mode to L, RGB or RGBA with 8 bits per channel."""
    if image.mode.startswith("I"):  # 16- or 32-bit integer greyscale, 16-bit range
        pixels = np.asarray(image, dtype=np.float64) / 257.0
        return Image.fromarray(np.clip(pixels, 0, 255).round().astype(np.uint8))
    if image.mode == "F":
        pixels = np.asarray(image, dtype=np.float64) * float_scale
        return Image.fromarray(np.clip(pixels, 0, 255).round().astype(np.uint8))
    # A transparency key (PNG tRNS) also marks transparent pixels in L, RGB and P images.
    has_alpha = image.mode in ("LA", "PA", "La", "RGBa") or "transparency" in image.info
    if image.mode == "RGBA" or (image.mode in ("1", "L", "RGB") and not has_alpha):
        return image
    try:
        return image.convert("RGBA" if has_alpha else "RGB")
    except ValueError:
        raise ImageError(
            f"images of mode {image.mode} cannot be converted; save it as RGB or greyscale"
        ) from None


def _to_mode(image: Image.Image, mode: str, float_scale: float) -> Image.Image:
    """Any decoded image (or strip of one) as L or RGB, transparent pixels made white."""
    image = _to_8bit(image, float_scale)
    if image.mode == "RGBA":
        canvas = Image.new("RGBA", image.size, BACKGROUND + (255,))
        image = Image.alpha_composite(canvas, image)
    return image.convert(mode)


def to_array(image: Image.Image, size: int, channels: int) -> np.ndarray:
    """A decoded image as a uint8 array (channels, size, size): greyscale or RGB, resized.

    Every step before the resize works pixel by pixel, so it runs strip by strip: a large
    16-bit, float or transparent image never exists as a full-size float64 or RGBA copy."""
    mode = "L" if channels == 1 else "RGB"
    scale = _float_scale(image)
    strips = _strips(image)
    first = next(strips)
    if first is image:
        converted = _to_mode(image, mode, scale)
    else:
        converted = Image.new(mode, image.size)
        top = 0
        for strip in itertools.chain([first], strips):
            converted.paste(_to_mode(strip, mode, scale), (0, top))
            top += strip.size[1]
    if converted.size != (size, size):
        converted = converted.resize((size, size), Image.Resampling.BILINEAR)
    pixels = np.array(converted, dtype=np.uint8)  # a writable copy: torch warns on read-only
    return pixels[None] if channels == 1 else pixels.transpose(2, 0, 1).copy()


def load(
    source: bytes | Path | str | IO[bytes],
    size: int,
    channels: int,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_bytes: int | None = None,
) -> np.ndarray:
    """Decode and convert in one call: what the process stage and the service both use."""
    with _decoded(source, max_pixels, max_bytes) as image:
        return to_array(image, size, channels)


def normalize(batch: torch.Tensor, mean: list[float], std: list[float]) -> torch.Tensor:
    """uint8 (N, C, H, W) -> float32 scaled to [0, 1] and standardised per channel."""
    x = batch.float().div_(255.0)
    return x.sub_(x.new_tensor(mean).view(1, -1, 1, 1)).div_(x.new_tensor(std).view(1, -1, 1, 1))
