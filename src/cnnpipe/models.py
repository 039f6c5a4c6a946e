"""The model registry: LeNet-5 and three torchvision architectures behind one `build` call."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from torchvision import models as tv

from cnnpipe.errors import CnnpipeError


class LeNet5(nn.Module):
    """LeNet-5 in its common modern form: 32x32 input, C1 6@5x5, S2 avg-pool, C3 16@5x5 (full
    connection to S2), S4 avg-pool, C5 120, F6 84, then a linear layer over the classes."""

    input_size = 32

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


def _adapt_first_conv(conv: nn.Conv2d, in_channels: int) -> nn.Conv2d:
    """The same convolution over `in_channels` inputs; pretrained RGB filters are averaged."""
    if conv.in_channels == in_channels:
        return conv
    new = nn.Conv2d(
        in_channels,
        conv.out_channels,
        kernel_size=conv.kernel_size,
        stride=conv.stride,
        padding=conv.padding,
        bias=conv.bias is not None,
    )
    with torch.no_grad():
        new.weight.copy_(conv.weight.sum(dim=1, keepdim=True).expand_as(new.weight) / in_channels)
        if conv.bias is not None:
            new.bias.copy_(conv.bias)
    return new


def _torchvision(name: str, in_channels: int, num_classes: int, pretrained: bool) -> nn.Module:
    builder = getattr(tv, name)
    if not pretrained:
        model = builder(weights=None, num_classes=num_classes)
    else:
        try:
            model = builder(weights="DEFAULT")
        except Exception as exc:  # any download or cache failure
            raise CnnpipeError(
                f"pretrained weights for {name} could not be loaded ({exc}); "
                "set train.pretrained: false or put the weights in the torch hub cache"
            ) from None
        _replace_head(model, num_classes)
    if name == "resnet18":
        model.conv1 = _adapt_first_conv(model.conv1, in_channels)
    elif name == "efficientnet_b0":
        model.features[0][0] = _adapt_first_conv(model.features[0][0], in_channels)
    elif name == "densenet121":
        model.features.conv0 = _adapt_first_conv(model.features.conv0, in_channels)
    return model


def _replace_head(model: nn.Module, num_classes: int) -> None:
    if isinstance(getattr(model, "fc", None), nn.Linear):
        model.fc = nn.Linear(model.fc.in_features, num_classes)
    elif isinstance(getattr(model, "classifier", None), nn.Linear):
        model.classifier = nn.Linear(model.classifier.in_features, num_classes)
    else:
        last = model.classifier[-1]
        model.classifier[-1] = nn.Linear(last.in_features, num_classes)


def _lenet5(in_channels: int, num_classes: int, pretrained: bool) -> nn.Module:
    if pretrained:
        raise CnnpipeError("lenet5 has no pretrained weights; set train.pretrained: false")
    return LeNet5(in_channels, num_classes)


Builder = Callable[[int, int, bool], nn.Module]
REGISTRY: dict[str, Builder] = {
    "lenet5": _lenet5,
    "resnet18": lambda c, n, p: _torchvision("resnet18", c, n, p),
    "efficientnet_b0": lambda c, n, p: _torchvision("efficientnet_b0", c, n, p),
    "densenet121": lambda c, n, p: _torchvision("densenet121", c, n, p),
}
# Smallest input each architecture accepts (its downsampling would leave nothing below this).
MIN_SIZE = {"lenet5": 32, "resnet18": 32, "efficientnet_b0": 32, "densenet121": 32}


def build(
    name: str, in_channels: int, num_classes: int, image_size: int, pretrained: bool = False
) -> nn.Module:
    """A fresh model from the registry, checked against the input it will get."""
    if name not in REGISTRY:
        raise CnnpipeError(f"train.model: {name!r} is unknown; choose one of {', '.join(REGISTRY)}")
    if name == "lenet5" and image_size != LeNet5.input_size:
        raise CnnpipeError(
            f"lenet5 takes 32x32 input but process.image_size is {image_size}; "
            "set process.image_size: 32 or choose another model"
        )
    if image_size < MIN_SIZE[name]:
        raise CnnpipeError(
            f"{name} needs images of at least {MIN_SIZE[name]} px, got {image_size}; "
            f"raise process.image_size"
        )
    return REGISTRY[name](in_channels, num_classes, pretrained)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
