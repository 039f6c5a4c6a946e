"""The trained-model file: weights plus everything needed to rebuild and use the model.

A plain dict of tensors, strings and numbers, so `torch.load(path, weights_only=True)` reads it.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from cnnpipe.core.dataset import InputSpec
from cnnpipe.core.errors import CnnpipeError
from cnnpipe.core.outputs import atomic_path
from cnnpipe.model import registry
from cnnpipe.model.card import ModelCard

FORMAT = 1


def save(path: Path, model: nn.Module, architecture: str, spec: InputSpec, extra: dict) -> None:
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    data = {"format": FORMAT, "architecture": architecture, **spec.model_dump()}
    with atomic_path(path) as tmp:
        torch.save({**data, "state_dict": state, **extra}, tmp)


def read(path: Path) -> dict:
    if not Path(path).exists():
        raise CnnpipeError(f"{path}: not found; run the train stage first (dvc repro train)")
    return torch.load(path, map_location="cpu", weights_only=True)


def card_of(data: dict) -> ModelCard:
    """The model card of a checkpoint dict (the part training knows)."""
    fields = set(ModelCard.model_fields) - {"sha256", "test_metrics", "git_revision"}
    return ModelCard.model_validate({k: data[k] for k in fields if data.get(k) is not None})


def load(path: Path) -> tuple[nn.Module, ModelCard, dict]:
    """The model in eval mode on the CPU, its card and the whole checkpoint dict."""
    data = read(path)
    card = card_of(data)
    model = registry.build(card.architecture, card.channels, len(card.classes), card.image_size)
    model.load_state_dict(data["state_dict"])
    return model.eval(), card, data
