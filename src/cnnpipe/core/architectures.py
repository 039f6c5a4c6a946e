"""The architectures `train.model` accepts, and what the pipeline knows of each without importing
torch: the input it takes (the process stage checks image sizes with it) and the recipe it trains
well with (the values `auto` train params take). cnnpipe.model.registry builds the models."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Recipe:
    """What an architecture trains well with, measured with bench/quality.py on the shapes and
    digits data (docs/training.md, Results); the `auto` train params take these values."""

    learning_rate: float
    weight_decay: float
    epochs: int


@dataclass(frozen=True)
class Architecture:
    name: str
    torchvision: bool  # built by torchvision.models.<name>, else by cnnpipe.model.registry
    min_size: int  # the smallest input (px) its downsampling leaves something of
    recipe: Recipe
    fixed_size: int | None = None  # the one input size it takes, if it takes only one


ARCHITECTURES = {
    a.name: a
    for a in (
        Architecture(
            "lenet5", torchvision=False, min_size=32, fixed_size=32, recipe=Recipe(0.005, 0.05, 60)
        ),
        Architecture("resnet18", torchvision=True, min_size=32, recipe=Recipe(0.003, 0.05, 30)),
        Architecture(
            "efficientnet_b0", torchvision=True, min_size=32, recipe=Recipe(0.003, 0.05, 20)
        ),
        Architecture("densenet121", torchvision=True, min_size=32, recipe=Recipe(0.003, 0.05, 30)),
    )
}
