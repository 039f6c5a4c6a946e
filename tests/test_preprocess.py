import io
from pathlib import Path

import numpy as np
import pytest
from conftest import encode
from PIL import Image

from cnnpipe.core import preprocess

COLOUR = (200, 30, 60)
GREY = round(0.299 * 200 + 0.587 * 30 + 0.114 * 60)  # PIL's L conversion of COLOUR


def solid(mode: str, size: tuple[int, int] = (20, 12)) -> Image.Image:
    return Image.new("RGB", size, COLOUR).convert(mode)


def noise(size: tuple[int, int]) -> Image.Image:
    pixels = np.random.default_rng(0).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    return Image.fromarray(pixels)


@pytest.mark.parametrize(
    "mode, fmt",
    [
        ("RGB", "PNG"),
        ("RGB", "JPEG"),
        ("RGB", "BMP"),
        ("RGB", "WEBP"),
        ("RGB", "TIFF"),
        ("P", "GIF"),
        ("P", "PNG"),
        ("RGBA", "PNG"),
        ("RGBA", "WEBP"),
        ("CMYK", "JPEG"),
        ("CMYK", "TIFF"),
        ("LA", "PNG"),
    ],
)
def test_every_format_and_mode_gives_the_same_colour_and_grey(mode, fmt):
    data = encode(solid(mode), fmt, **({"quality": 100} if fmt in ("JPEG", "WEBP") else {}))
    rgb = preprocess.load(data, 8, 3)
    grey = preprocess.load(data, 8, 1)
    assert rgb.shape == (3, 8, 8) and grey.shape == (1, 8, 8)
    assert rgb.dtype == np.uint8 and grey.dtype == np.uint8
    if mode in ("LA",):
        expected = np.array([GREY] * 3)
    else:
        expected = np.array(COLOUR)
    assert np.abs(rgb[:, 4, 4].astype(int) - expected).max() <= 6
    assert abs(int(grey[0, 4, 4]) - GREY) <= 6


@pytest.mark.parametrize("fmt", ["PNG", "TIFF"])
def test_16_bit_greyscale_is_scaled_to_8_bits(fmt):
    pixels = np.full((10, 10), 40000, dtype=np.uint16)
    image = preprocess.open_image(encode(Image.fromarray(pixels), fmt))
    assert image.mode.startswith("I")
    assert preprocess.to_array(image, 4, 1)[0, 0, 0] == round(40000 / 257)


def test_one_bit_images_become_black_and_white():
    image = Image.new("1", (8, 8), 0)
    image.putpixel((0, 0), 1)
    grey = preprocess.load(encode(image, "BMP"), 8, 1)
    assert grey[0, 0, 0] == 255 and grey[0, 4, 4] == 0


@pytest.mark.parametrize(
    "mode, key", [("L", 0), ("RGB", (0, 0, 0)), ("P", 0)], ids=["L", "RGB", "P"]
)
def test_transparent_pixels_of_a_transparency_key_become_white(mode, key):
    image = Image.new("RGB", (8, 8), (0, 0, 0)).convert(mode)
    image.paste(Image.new(mode, (4, 8), 255 if mode != "RGB" else (255, 255, 255)), (4, 0))
    data = encode(image, "PNG", transparency=key)
    grey = preprocess.load(data, 8, 1)
    assert grey[0, 0, 0] == 255  # transparent black composited onto white


def test_alpha_is_composited_onto_white():
    image = Image.new("RGBA", (8, 8), (0, 0, 0, 0))
    assert preprocess.load(encode(image, "PNG"), 8, 3).min() == 255


def test_exif_orientation_is_applied():
    image = Image.new("RGB", (40, 20), COLOUR)
    image.paste((0, 0, 255), (0, 0, 20, 20))  # left half blue
    exif = image.getexif()
    exif[0x0112] = 6  # stored rotated: display rotated 90 degrees clockwise
    upright = preprocess.open_image(encode(image, "JPEG", exif=exif.tobytes(), quality=100))
    assert upright.size == (20, 40)
    top = np.asarray(upright)[5, 10]
    assert top[2] > 200 and top[0] < 50  # the blue half is now on top


def test_the_first_frame_of_an_animation_is_used():
    frames = [Image.new("RGB", (8, 8), c).convert("P") for c in [(255, 0, 0), (0, 0, 255)]]
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:])
    assert preprocess.load(data, 8, 3)[:, 0, 0].tolist() == [255, 0, 0]


def test_images_of_any_size_are_resized():
    for size in [(3, 500), (1000, 7), (32, 32)]:
        assert preprocess.load(encode(solid("RGB", size), "PNG"), 32, 1).shape == (1, 32, 32)


@pytest.mark.parametrize(
    "data, words",
    [
        (b"", "empty"),
        (b"just some text, not an image\n", "not a readable image"),
        (encode(noise((64, 64)), "PNG")[:2000], "truncated"),
    ],
    ids=["empty", "text", "truncated"],
)
def test_unusable_files_raise_an_image_error(data, words, tmp_path):
    with pytest.raises(preprocess.ImageError, match=words):
        preprocess.open_image(data)
    path = tmp_path / "file.png"
    path.write_bytes(data)
    with pytest.raises(preprocess.ImageError):
        preprocess.open_image(path)


@pytest.mark.parametrize("fmt", ["PPM", "TGA", "PCX", "ICO", "SGI"])
def test_formats_the_contract_does_not_list_are_refused_naming_those_it_does(fmt, tmp_path):
    data = encode(solid("RGB", (16, 16)), fmt)
    assert Image.open(io.BytesIO(data)).format == fmt  # Pillow itself would decode it
    for source in (data, tmp_path / f"x.{fmt.lower()}"):
        if isinstance(source, Path):
            source.write_bytes(data)
        with pytest.raises(preprocess.ImageError, match=preprocess.FORMAT_NAMES):
            preprocess.load(source, 8, 1)
    assert preprocess.header(data) is None


def test_the_listed_formats_are_the_ones_decoded():
    for fmt in preprocess.FORMATS:
        data = encode(solid("RGB", (16, 16)), fmt)
        assert preprocess.header(data)[1] == (16, 16), fmt
        assert preprocess.load(data, 8, 1).shape == (1, 8, 8), fmt


def test_an_oversized_image_is_refused_before_decoding():
    with pytest.raises(preprocess.ImageError, match="over the limit"):
        preprocess.open_image(encode(solid("RGB", (100, 100)), "PNG"), max_pixels=5000)


def test_a_mode_that_cannot_be_converted_is_an_image_error():
    with pytest.raises(preprocess.ImageError, match="mode La"):
        preprocess.to_array(solid("RGBA").convert("La"), 8, 1)
