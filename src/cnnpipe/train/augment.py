"""Augmentation on tensors on the device, per batch, from a seeded generator: no decoding."""

from __future__ import annotations

import math
import typing as t

import torch
import torch.nn.functional as F

from cnnpipe.core.params import TrainParams
from cnnpipe.train.recipe import resolved

if t.TYPE_CHECKING:
    from torchvision.transforms import v2


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
    if params.flip is True:  # `auto` is resolved before training (cnnpipe.train.recipe)
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


class PictureAugment:
    """The recipe for pictures, from torchvision.transforms.v2: a random resized crop, colour
    jitter and TrivialAugment or RandAugment on each uint8 image of a batch (each image its own
    draw: v2 transforms draw once per call, so a whole-batch call would move every image alike),
    then MixUp or CutMix on the normalised batch. Every piece is a train param and off at 0 /
    none; v2 draws from torch's global generator, which the training seeds."""

    def __init__(self, params: TrainParams, image_size: int, channels: int, classes: int) -> None:
        crop_scale = resolved(params.crop_scale)
        jitter = params.color_jitter if channels == 3 else 0.0
        self.per_image: v2.Compose | None = None
        self.mix: v2.RandomChoice | None = None
        mixing = params.mixup > 0 or params.cutmix > 0
        if crop_scale >= 1.0 and jitter == 0 and params.auto_augment == "none" and not mixing:
            return  # none on: torchvision, which takes the stage time to import, stays out
        from torchvision.transforms import v2

        pieces: list = []
        if crop_scale < 1.0:
            pieces.append(v2.RandomResizedCrop(image_size, scale=(crop_scale, 1.0), antialias=True))
        if jitter > 0:
            pieces.append(v2.ColorJitter(jitter, jitter, jitter, hue=min(0.5, jitter / 4)))
        if params.auto_augment == "trivial":
            pieces.append(v2.TrivialAugmentWide())
        elif params.auto_augment == "rand":
            pieces.append(v2.RandAugment())
        self.per_image = v2.Compose(pieces) if pieces else None
        mixes = [v2.MixUp(alpha=params.mixup, num_classes=classes)] if params.mixup > 0 else []
        if params.cutmix > 0:
            mixes.append(v2.CutMix(alpha=params.cutmix, num_classes=classes))
        self.mix = v2.RandomChoice(mixes) if mixes else None

    @property
    def active(self) -> bool:
        return self.per_image is not None or self.mix is not None

    def images(self, x: torch.Tensor) -> torch.Tensor:
        """Each uint8 image (C, H, W) of the batch through the per-image pieces."""
        if self.per_image is None:
            return x
        return torch.stack([self.per_image(image) for image in x])

    def mixed(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """MixUp or CutMix of a normalised batch: the images and their class probabilities
        (targets for the loss); the labels as they are without mixing."""
        if self.mix is None:
            return x, y
        return self.mix(x, y)
