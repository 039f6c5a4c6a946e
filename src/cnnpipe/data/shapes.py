"""Synthetic geometric-shape images: deterministic for a seed, with knobs for how hard they are."""

from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageDraw

from cnnpipe.core.outlines import OUTLINES
from cnnpipe.core.params import GenerateParams

SUPERSAMPLE = 2  # shapes are drawn at twice the size, then downsampled, for smooth edges


def _colours(rng: np.random.Generator, random_colors: bool) -> tuple[tuple, tuple]:
    if not random_colors:
        return (255, 255, 255), (0, 0, 0)
    while True:
        background, fill = rng.integers(0, 256, size=(2, 3))
        luma = np.array([0.299, 0.587, 0.114])
        if abs(float(luma @ background) - float(luma @ fill)) >= 60:
            return tuple(int(v) for v in background), tuple(int(v) for v in fill)


def draw_shape(shape: str, params: GenerateParams, rng: np.random.Generator) -> Image.Image:
    """One RGB image of `shape`, its size, position, rotation, colours and noise drawn from rng."""
    size = params.image_size * SUPERSAMPLE
    background, fill = _colours(rng, params.random_colors)
    image = Image.new("RGB", (size, size), background)
    draw = ImageDraw.Draw(image)

    for _ in range(rng.integers(0, params.clutter + 1)):
        x0, y0, x1, y1 = rng.uniform(0, size, 4)
        shade = tuple(int(c) for c in rng.integers(0, 256, 3))
        draw.line([(x0, y0), (x1, y1)], fill=shade, width=int(rng.integers(1, 2 * SUPERSAMPLE + 1)))

    radius = 0.5 * size * rng.uniform(params.min_scale, params.max_scale)
    theta = math.radians(rng.uniform(-params.max_rotation, params.max_rotation))
    rotation = np.array([[math.cos(theta), -math.sin(theta)], [math.sin(theta), math.cos(theta)]])
    room = max(0.0, 0.5 * size - radius)
    centre = 0.5 * size + rng.uniform(-1, 1, 2) * min(room, params.max_offset * size)
    points = OUTLINES[shape](rng) @ rotation.T * radius + centre
    draw.polygon([tuple(p) for p in points], fill=fill)

    image = image.resize((params.image_size, params.image_size), Image.Resampling.LANCZOS)
    if params.noise > 0:
        pixels = np.asarray(image, dtype=np.float32)
        pixels += rng.normal(0.0, params.noise * 128.0, pixels.shape).astype(np.float32)
        image = Image.fromarray(np.clip(pixels, 0, 255).round().astype(np.uint8))
    return image


def image_rng(seed: int, shape: str, index: int) -> np.random.Generator:
    """The random stream of one image: independent of every other image and of the class order."""
    return np.random.default_rng([seed, list(OUTLINES).index(shape), index])
