"""Train params set to `auto` take the values of the architecture's recipe for the input size
(cnnpipe.core.architectures), or of the data (`flip`: for colour pictures); the values a run
actually used are what it records."""

from __future__ import annotations

from typing import TypeVar

from cnnpipe.core.architectures import ARCHITECTURES
from cnnpipe.core.params import AUTO, Auto, TrainParams

RECIPE_KEYS = ("learning_rate", "weight_decay", "epochs", "crop_scale")
N = TypeVar("N", int, float)


def resolve(
    params: TrainParams, channels: int, image_size: int
) -> tuple[TrainParams, dict[str, float | int]]:
    """The params with every `auto` value replaced by the recipe's for image_size px inputs (or,
    for what depends on the data, by what suits images of `channels` channels), and those
    values by name."""
    recipe = ARCHITECTURES[params.model].recipe_for(image_size)
    chosen = {k: getattr(recipe, k) for k in RECIPE_KEYS if getattr(params, k) == AUTO}
    if params.flip == AUTO:  # a photograph mirrored shows the same thing; a digit does not
        chosen["flip"] = channels == 3
    return params.model_copy(update=chosen), chosen


def resolved(value: N | Auto) -> N:
    """A recipe key's value in params that went through `resolve`, where it is never `auto`."""
    if isinstance(value, str):
        raise ValueError("train params used before cnnpipe.train.recipe.resolve")
    return value
