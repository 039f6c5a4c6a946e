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
    crop_scale: float = 1.0  # random resized crop: the least share of the picture kept; 1: none


@dataclass(frozen=True)
class Architecture:
    name: str
    torchvision: bool  # built by torchvision.models.<name>, else by cnnpipe.model.registry
    min_size: int  # the smallest input (px) its downsampling leaves something of
    recipe: Recipe
    fixed_size: int | None = None  # the one input size it takes, if it takes only one
    # the recipe above min_size, if another: a folder's pictures train at up to 64 px
    # (process.image_size: auto), the bundled sources at min_size, where `recipe` was measured
    pictures: Recipe | None = None

    def recipe_for(self, image_size: int) -> Recipe:
        """The recipe for inputs of image_size px: `pictures` above min_size, where there is one."""
        if self.pictures is not None and image_size > self.min_size:
            return self.pictures
        return self.recipe


ARCHITECTURES = {
    a.name: a
    for a in (
        Architecture(
            "lenet5", torchvision=False, min_size=32, fixed_size=32, recipe=Recipe(0.005, 0.05, 60)
        ),
        # a folder's pictures at 64 px: with a random resized crop and more epochs it did better
        # on objects it never saw (40 epochs fit 15 minutes of 1,000 pictures on 2 cores;
        # docs/training.md, Colour pictures)
        Architecture(
            "resnet18",
            torchvision=True,
            min_size=32,
            recipe=Recipe(0.003, 0.05, 30),
            pictures=Recipe(0.003, 0.05, 40, crop_scale=0.5),
        ),
        Architecture(
            "efficientnet_b0", torchvision=True, min_size=32, recipe=Recipe(0.003, 0.05, 20)
        ),
        Architecture("densenet121", torchvision=True, min_size=32, recipe=Recipe(0.003, 0.05, 30)),
    )
}
