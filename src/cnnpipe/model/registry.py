"""The model registry: LeNet-5 and three torchvision architectures behind one `build` call.

Which architectures exist, and what each needs of its input, is cnnpipe.core.architectures."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from cnnpipe.core.architectures import ARCHITECTURES
from cnnpipe.core.errors import CnnpipeError


class LeNet5(nn.Module):
    """LeNet-5 in its common modern form: 32x32 input, C1 6@5x5, S2 avg-pool, C3 16@5x5 (full
    connection to S2), S4 avg-pool, C5 120, F6 84, then a linear layer over the classes."""

    def __init__(self, in_channels: int = 1, num_classes: int = 10) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 6, kernel_size=5),  # C1: 32 -> 28
            nn.ReLU(),
            nn.AvgPool2d(2),  # S2: 28 -> 14
            nn.Conv2d(6, 16, kernel_size=5),  # C3: 14 -> 10
            nn.ReLU(),
            nn.AvgPool2d(2),  # S4: 10 -> 5
            nn.Conv2d(16, 120, kernel_size=5),  # C5: 5 -> 1
            nn.ReLU(),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(120, 84), nn.ReLU(), nn.Linear(84, num_classes)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def first_conv_name(model: nn.Module) -> str:
    """The name of the model's first convolution, the one that reads the image."""
    return next(n for n, m in model.named_modules() if isinstance(m, nn.Conv2d))


def head_name(model: nn.Module) -> str:
    """The name of the classifier head: the model's last Linear layer."""
    return [n for n, m in model.named_modules() if isinstance(m, nn.Linear)][-1]


def adapt_filters(weight: torch.Tensor, in_channels: int) -> torch.Tensor:
    """First-convolution filters for `in_channels` inputs that answer a grey image as the given
    ones answer the same image in their channels: RGB filters summed for greyscale, grey ones
    spread over RGB."""
    summed = weight.sum(dim=1, keepdim=True)
    return (summed / in_channels).expand(-1, in_channels, -1, -1).clone()


def _set_module(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, attribute = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, attribute, module)


def _adapt_first_conv(model: nn.Module, in_channels: int) -> None:
    """Make the model's first convolution read `in_channels` inputs."""
    name = first_conv_name(model)
    conv = model.get_submodule(name)
    assert isinstance(conv, nn.Conv2d)  # first_conv_name found it by this type
    if conv.in_channels == in_channels:
        return
    new = nn.Conv2d(
        in_channels,
        conv.out_channels,
        kernel_size=conv.kernel_size,  # type: ignore[arg-type]  # a 2-tuple in a Conv2d
        stride=conv.stride,  # type: ignore[arg-type]  # a 2-tuple in a Conv2d
        padding=conv.padding,  # type: ignore[arg-type]  # a 2-tuple or a name in a Conv2d
        bias=conv.bias is not None,
    )
    with torch.no_grad():
        new.weight.copy_(adapt_filters(conv.weight, in_channels))
        if conv.bias is not None and new.bias is not None:
            new.bias.copy_(conv.bias)
    _set_module(model, name, new)


def _replace_head(model: nn.Module, num_classes: int) -> None:
    head = head_name(model)
    linear = model.get_submodule(head)
    assert isinstance(linear, nn.Linear)  # head_name found it by this type
    _set_module(model, head, nn.Linear(linear.in_features, num_classes))


def _small_head(model: nn.Module) -> None:
    """The head drawn from N(0, 0.01), bias 0: logits near zero at the start. (EfficientNet's own
    U(+-1/sqrt(classes)) starts 5 classes at a loss of about 5.7.)"""
    head = model.get_submodule(head_name(model))
    assert isinstance(head, nn.Linear)  # head_name found it by this type
    nn.init.normal_(head.weight, 0.0, 0.01)
    nn.init.zeros_(head.bias)


def _zero_init_mbconv(model: nn.Module) -> None:
    """Each residual MBConv block starts as the identity (its last BatchNorm scaled by 0), as
    torchvision's zero_init_residual does for ResNet."""
    from torchvision.models.efficientnet import MBConv

    for block in model.modules():
        if isinstance(block, MBConv) and block.use_res_connect:
            nn.init.zeros_(block.block[-1][1].weight)


def _fit_small_input(model: nn.Module, name: str, image_size: int) -> None:
    """EfficientNet-B0 halves its input five times: below 64 px its stem convolution keeps
    stride 1, so that 32 px ends in 2x2 features rather than one pixel."""
    if name == "efficientnet_b0" and image_size < 64:
        stem = model.get_submodule("features.0.0")
        assert isinstance(stem, nn.Conv2d)  # torchvision's EfficientNet starts with its stem conv
        stem.stride = (1, 1)


# what each torchvision architecture is built with from scratch (its recipe in models' own terms)
_SCRATCH: dict[str, dict[str, Any]] = {
    "resnet18": {"zero_init_residual": True},
    "efficientnet_b0": {"stochastic_depth_prob": 0.0},
    "densenet121": {},
}


def _torchvision(name: str, num_classes: int, pretrained: bool) -> nn.Module:
    from torchvision import models  # imported when needed: it doubles torch's import time

    builder = getattr(models, name)
    if not pretrained:
        model = builder(weights=None, num_classes=num_classes, **_SCRATCH[name])
        if name == "efficientnet_b0":
            _zero_init_mbconv(model)
            _small_head(model)
        return model
    weights = models.get_model_weights(name).DEFAULT
    try:
        model = builder(weights=weights)
    except Exception as exc:  # any download or cache failure
        import torch.hub

        where = Path(torch.hub.get_dir()) / "checkpoints" / weights.url.rsplit("/", 1)[-1]
        reason = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
        raise CnnpipeError(
            f"train.pretrained: torchvision's {weights} weights for {name} could not be loaded "
            f"({reason}); download {weights.url} to {where} (TORCH_HOME sets the folder), or "
            "set train.pretrained: false"
        ) from None
    _replace_head(model, num_classes)
    return model


def pretrained_statistics(name: str, channels: int) -> tuple[list[float], list[float]]:
    """The per-channel mean and std torchvision's weights for `name` were trained with (the
    input must be normalised with them); for one channel, their average, as the adapted first
    convolution sums the RGB filters."""
    from torchvision import models

    preset = models.get_model_weights(name).DEFAULT.transforms()
    mean, std = list(preset.mean), list(preset.std)
    if channels == 1:
        return [round(sum(mean) / 3, 6)], [round(sum(std) / 3, 6)]
    return mean, std


def build(
    name: str, in_channels: int, num_classes: int, image_size: int, pretrained: bool = False
) -> nn.Module:
    """A fresh model from the registry, checked against the input it will get."""
    if name not in ARCHITECTURES:
        choices = ", ".join(ARCHITECTURES)
        raise CnnpipeError(f"train.model: {name!r} is unknown; choose one of {choices}")
    arch = ARCHITECTURES[name]
    if arch.fixed_size is not None and image_size != arch.fixed_size:
        raise CnnpipeError(
            f"{name} takes {arch.fixed_size}x{arch.fixed_size} input but process.image_size is "
            f"{image_size}; set process.image_size: {arch.fixed_size} or choose another model"
        )
    if image_size < arch.min_size:
        raise CnnpipeError(
            f"{name} needs images of at least {arch.min_size} px, got {image_size}; "
            f"raise process.image_size"
        )
    if not arch.torchvision:
        if pretrained:
            raise CnnpipeError(f"{name} has no pretrained weights; set train.pretrained: false")
        return LeNet5(in_channels, num_classes)
    model = _torchvision(name, num_classes, pretrained)
    _adapt_first_conv(model, in_channels)
    _fit_small_input(model, name, image_size)
    return model


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
