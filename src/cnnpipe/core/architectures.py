"""The architectures `train.model` accepts, and what the pipeline knows of each without importing
torch (the process stage checks image sizes with it; cnnpipe.model.registry builds the models)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Architecture:
    name: str
    torchvision: bool  # built by torchvision.models.<name>, else by cnnpipe.model.registry
    min_size: int  # the smallest input (px) its downsampling leaves something of
    fixed_size: int | None = None  # the one input size it takes, if it takes only one


ARCHITECTURES = {
    a.name: a
    for a in (
        Architecture("lenet5", torchvision=False, min_size=32, fixed_size=32),
        Architecture("resnet18", torchvision=True, min_size=32),
        Architecture("efficientnet_b0", torchvision=True, min_size=32),
        Architecture("densenet121", torchvision=True, min_size=32),
    )
}
