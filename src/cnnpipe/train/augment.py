"""Augmentation on tensors on the device: one resampling per batch, no decoding."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from cnnpipe.core.params import TrainParams


def augment(x: torch.Tensor, generator: torch.Generator, params: TrainParams) -> torch.Tensor:
    """Move, rotate and zoom each image of a (normalised) batch at random within the params'
    bounds, edges repeated, and with `flip` mirror a random half."""
    n, _, height, width = x.shape
    u = torch.rand(n, 4, generator=generator) * 2 - 1
    angle = u[:, 0] * math.radians(params.max_rotation)
    scale = 1 + u[:, 1] * params.max_zoom
    shift_x = u[:, 2] * (2 * params.max_shift / width)
    shift_y = u[:, 3] * (2 * params.max_shift / height)
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack(
        [torch.stack([cos, -sin, shift_x], 1), torch.stack([sin, cos, shift_y], 1)], 1
    ).to(x)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    if params.flip:
        mask = torch.rand(n, generator=generator) < 0.5
        x = torch.where(mask.to(x.device).view(-1, 1, 1, 1), x.flip(-1), x)
    return x
