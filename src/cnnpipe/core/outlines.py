"""The synthetic shapes, by name: each one's outline on the unit disc.

These names are what `generate.classes` accepts (cnnpipe.core.params) and what the generate stage
draws (cnnpipe.data.shapes, which scales, rotates and moves each outline per image). Their order
seeds the images: append new shapes, never reorder.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np


def _regular(n: int, radius: float = 1.0, phase: float = -math.pi / 2) -> np.ndarray:
    angles = phase + np.arange(n) * 2 * math.pi / n
    return radius * np.stack([np.cos(angles), np.sin(angles)], axis=1)


def _star() -> np.ndarray:
    outer, inner = _regular(5), _regular(5, 0.42, -math.pi / 2 + math.pi / 5)
    return np.stack([outer, inner], axis=1).reshape(-1, 2)


def _cross(arm: float = 0.33) -> np.ndarray:
    a, b = arm, 1.0
    return np.array(
        [(-a, -b), (a, -b), (a, -a), (b, -a), (b, a), (a, a)]
        + [(a, b), (-a, b), (-a, a), (-b, a), (-b, -a), (-a, -a)]
    )


def _ellipse(rng: np.random.Generator) -> np.ndarray:
    return _regular(48) * np.array([1.0, rng.uniform(0.45, 0.7)])


OUTLINES: dict[str, Callable[[np.random.Generator], np.ndarray]] = {
    "circle": lambda rng: _regular(48),
    "ellipse": _ellipse,
    "square": lambda rng: _regular(4, phase=math.pi / 4),
    "triangle": lambda rng: _regular(3),
    "pentagon": lambda rng: _regular(5),
    "hexagon": lambda rng: _regular(6),
    "star": lambda rng: _star(),
    "cross": lambda rng: _cross(),
}
