"""Image preprocessing: the one path from an image file or upload to model input.

The process stage, evaluation and the service all call these functions, so the service feeds the
model exactly the tensor evaluation measured. This module imports no torch.
"""

from __future__ import annotations

import io
import re
from pathlib import Path
from typing import IO, TYPE_CHECKING

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from cnnpipe.core.errors import CnnpipeError

if TYPE_CHECKING:
    import torch

DEFAULT_MAX_PIXELS = 50_000_000
BACKGROUND = (255, 255, 255)  # transparent pixels are composited onto white


class ImageError(CnnpipeError):
    """An image that cannot be decoded or is too large."""


def open_image(
    source: bytes | Path | str | IO[bytes], max_pixels: int = DEFAULT_MAX_PIXELS
) -> Image.Image:
    """Decode an image fully (first frame of an animation), upright per its EXIF orientation.

    Raises ImageError for empty, truncated, unreadable or oversized (over max_pixels) images.
    """
    if isinstance(source, bytes):
        if not source:
            raise ImageError("the file is empty; send a PNG, JPEG, GIF, BMP, WebP or TIFF image")
        source = io.BytesIO(source)
    try:
        with Image.open(source) as image:
            width, height = image.size
            if width * height > max_pixels:
                raise ImageError(
                    f"the image is {width}x{height} = {width * height} pixels, over the limit of "
                    f"{max_pixels}; send a smaller image"
                )
            image.seek(0)
            image.load()
            upright = ImageOps.exif_transpose(image)
            return upright if upright is not image else image.copy()
    except ImageError:
        raise
    except UnidentifiedImageError:
        raise ImageError(
            "not a readable image; send a PNG, JPEG, GIF, BMP, WebP or TIFF image"
        ) from None
    except Image.DecompressionBombError as exc:  # PIL's own limit, met before the size is known
        pixels = re.search(r"\d+", str(exc))
        size = f"{pixels.group()} pixels" if pixels else "larger than PIL decodes"
        raise ImageError(
            f"the image is {size}, over the limit of {max_pixels}; send a smaller image"
        ) from None
    except (FileNotFoundError, PermissionError) as exc:
        raise ImageError(f"the file cannot be read ({exc.strerror})") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageError(f"the image cannot be decoded ({exc}); it may be truncated") from None


def _to_8bit(image: Image.Image) -> Image.Image:
    """Bring any PIL mode to L, RGB or RGBA with 8 bits per channel."""
    if image.mode.startswith("I"):  # 16- or 32-bit integer greyscale, 16-bit range
        pixels = np.asarray(image, dtype=np.float64) / 257.0
        return Image.fromarray(np.clip(pixels, 0, 255).round().astype(np.uint8))
    if image.mode == "F":  # float greyscale: [0, 1] if it fits there, else [0, 255]
        pixels = np.asarray(image, dtype=np.float64)
        pixels = pixels * 255.0 if pixels.max(initial=0.0) <= 1.0 else pixels
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


def to_array(image: Image.Image, size: int, channels: int) -> np.ndarray:
    """A decoded image as a uint8 array (channels, size, size): greyscale or RGB, resized."""
    image = _to_8bit(image)
    if image.mode == "RGBA":
        canvas = Image.new("RGBA", image.size, BACKGROUND + (255,))
        image = Image.alpha_composite(canvas, image)
    image = image.convert("L" if channels == 1 else "RGB")
    if image.size != (size, size):
        image = image.resize((size, size), Image.Resampling.BILINEAR)
    pixels = np.array(image, dtype=np.uint8)  # a writable copy: torch warns on read-only
    return pixels[None] if channels == 1 else pixels.transpose(2, 0, 1).copy()


def load(
    source: bytes | Path | str | IO[bytes],
    size: int,
    channels: int,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> np.ndarray:
    """Decode and convert in one call: what the process stage and the service both use."""
    return to_array(open_image(source, max_pixels), size, channels)


def normalize(batch: torch.Tensor, mean: list[float], std: list[float]) -> torch.Tensor:
    """uint8 (N, C, H, W) -> float32 scaled to [0, 1] and standardised per channel."""
    x = batch.float().div_(255.0)
    return x.sub_(x.new_tensor(mean).view(1, -1, 1, 1)).div_(x.new_tensor(std).view(1, -1, 1, 1))
