"""Train params set to `auto` take the values of the architecture's recipe
(cnnpipe.core.architectures); the values a run actually used are what it records."""

from __future__ import annotations

from typing import TypeVar

from cnnpipe.core.architectures import ARCHITECTURES
from cnnpipe.core.params import AUTO, Auto, TrainParams

RECIPE_KEYS = ("learning_rate", "weight_decay", "epochs")
N = TypeVar("N", int, float)


def resolve(params: TrainParams) -> tuple[TrainParams, dict[str, float | int]]:
    """The params with every `auto` value replaced by the recipe's, and those values by name."""
    recipe = ARCHITECTURES[params.model].recipe
    chosen = {k: getattr(recipe, k) for k in RECIPE_KEYS if getattr(params, k) == AUTO}
    return params.model_copy(update=chosen), chosen


def resolved(value: N | Auto) -> N:
    """A recipe key's value in params that went through `resolve`, where it is never `auto`."""
    if isinstance(value, str):
        raise ValueError("train params used before cnnpipe.train.recipe.resolve")
    return value
