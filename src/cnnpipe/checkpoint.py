"""The trained-model file: weights plus everything needed to rebuild and use the model.

A plain dict of tensors, strings and numbers, so `torch.load(path, weights_only=True)` reads it.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from cnnpipe import models
from cnnpipe.errors import CnnpipeError
from cnnpipe.outputs import atomic_path

FORMAT = 1


@dataclass(frozen=True)
class ModelInfo:
    """What a model expects and produces."""

    architecture: str
    classes: list[str]
    image_size: int
    channels: int
    mean: list[float]
    std: list[float]


def save(path: Path, model: nn.Module, info: ModelInfo, extra: dict) -> None:
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    with atomic_path(path) as tmp:
        torch.save({"format": FORMAT, **asdict(info), "state_dict": state, **extra}, tmp)


def read(path: Path) -> dict:
    if not Path(path).exists():
        raise CnnpipeError(f"{path}: not found; run the train stage first (dvc repro train)")
    return torch.load(path, map_location="cpu", weights_only=True)


def info_of(data: dict) -> ModelInfo:
    return ModelInfo(**{k: data[k] for k in ModelInfo.__dataclass_fields__})


def load(path: Path) -> tuple[nn.Module, ModelInfo, dict]:
    """The model in eval mode on the CPU, its info and the whole checkpoint dict."""
    data = read(path)
    info = info_of(data)
    model = models.build(info.architecture, info.channels, len(info.classes), info.image_size)
    model.load_state_dict(data["state_dict"])
    return model.eval(), info, data


def file_hash(path: Path) -> str:
    """sha256 of a file's bytes: the model's identity in MLflow and BentoML."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
