"""Augmentation on tensors on the device, per batch, from a seeded generator: no decoding."""

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


def erase(
    x: torch.Tensor,
    generator: torch.Generator,
    probability: float,
    area: tuple[float, float] = (0.02, 0.25),
    aspect: tuple[float, float] = (0.3, 3.3),
) -> torch.Tensor:
    """Random erasing (Zhong et al., as torchvision's RandomErasing) on a normalised batch: with
    `probability`, one rectangle per image (`area` of the image, `aspect` ratio) set to 0, the
    channel mean; every image its own rectangle, drawn from `generator`, in one pass."""
    n, _, height, width = x.shape
    u = torch.rand(n, 5, generator=generator)
    size = (area[0] + u[:, 0] * (area[1] - area[0])) * height * width
    low, high = math.log(aspect[0]), math.log(aspect[1])
    ratio = torch.exp(low + u[:, 1] * (high - low))
    h = torch.sqrt(size * ratio).clamp(1, height)
    w = torch.sqrt(size / ratio).clamp(1, width)
    top, left = u[:, 2] * (height - h), u[:, 3] * (width - w)
    rows = torch.arange(height).view(1, height, 1)
    cols = torch.arange(width).view(1, 1, width)
    inside = (
        (rows >= top.view(-1, 1, 1))
        & (rows < (top + h).view(-1, 1, 1))
        & (cols >= left.view(-1, 1, 1))
        & (cols < (left + w).view(-1, 1, 1))
        & (u[:, 4] < probability).view(-1, 1, 1)
    )
    return x.masked_fill(inside.unsqueeze(1).to(x.device), 0.0)
