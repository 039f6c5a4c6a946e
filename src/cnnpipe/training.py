"""The training loop: uint8 arrays in, the best-on-validation weights out.

Batches are sliced from in-memory (or memory-mapped) uint8 arrays and normalised on the device, so
each step does the host work a bare torch loop would do and no more.
"""

from __future__ import annotations

import copy
import os
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from cnnpipe.datasets import Split
from cnnpipe.errors import CnnpipeError
from cnnpipe.params import TrainParams
from cnnpipe.preprocess import normalize

IN_MEMORY_LIMIT = 1 << 30  # arrays up to 1 GiB are read into RAM; larger ones stay memory-mapped


@dataclass
class EpochMetrics:
    epoch: int
    train_loss: float
    train_accuracy: float
    val_loss: float
    val_accuracy: float
    learning_rate: float
    seconds: float
    images_per_second: float


@dataclass
class FitResult:
    best_epoch: int
    best_val_accuracy: float
    history: list[EpochMetrics] = field(default_factory=list)
    train_seconds: float = 0.0


def select_device(choice: str) -> torch.device:
    if choice == "cuda" and not torch.cuda.is_available():
        raise CnnpipeError("train.device is cuda but no CUDA device is available; set device: auto")
    if choice == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(choice)


def make_deterministic(seed: int, num_threads: int) -> None:
    """Seed every generator and ask torch for deterministic kernels."""
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.benchmark = False
    if num_threads > 0:
        torch.set_num_threads(num_threads)


def as_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 images as a tensor: read into RAM when small, else kept memory-mapped."""
    if images.nbytes <= IN_MEMORY_LIMIT:
        return torch.from_numpy(np.array(images))
    return images  # gathered batch by batch


def batches(
    images: torch.Tensor | np.ndarray,
    labels: torch.Tensor,
    batch_size: int,
    generator: torch.Generator | None = None,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(uint8 images, labels) batches: in order, or shuffled by `generator` when one is given."""
    n = len(labels)
    mapped = not isinstance(images, torch.Tensor)
    order = torch.randperm(n, generator=generator) if generator is not None else None
    for start in range(0, n, batch_size):
        if order is None:
            x, y = images[start : start + batch_size], labels[start : start + batch_size]
        elif mapped:  # sorted indices read the memory map front to back
            idx = order[start : start + batch_size].sort().values
            x, y = images[idx.numpy()], labels[idx]
        else:
            idx = order[start : start + batch_size]
            x, y = images[idx], labels[idx]
        yield (torch.from_numpy(np.ascontiguousarray(x)) if mapped else x), y


class Stepper:
    """Moves batches to the device and normalises them there, in the model's memory format."""

    def __init__(
        self,
        device: torch.device,
        mean: list[float],
        std: list[float],
        channels_last: bool = False,
        bf16: bool = False,
    ) -> None:
        self.device = device
        self.mean, self.std = mean, std
        self.cuda = device.type == "cuda"
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.autocast = bf16

    def inputs(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.cuda:
            x, y = x.pin_memory(), y.pin_memory()
        x = x.to(self.device, non_blocking=True)
        y = y.to(self.device, non_blocking=True)
        return normalize(x, self.mean, self.std).contiguous(memory_format=self.memory_format), y

    def precision(self):
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.autocast)


def make_optimizer(model: nn.Module, params: TrainParams) -> torch.optim.Optimizer:
    if params.optimizer == "sgd":
        return torch.optim.SGD(
            model.parameters(),
            lr=params.learning_rate,
            momentum=params.momentum,
            weight_decay=params.weight_decay,
        )
    return torch.optim.Adam(
        model.parameters(), lr=params.learning_rate, weight_decay=params.weight_decay
    )


def make_scheduler(optimizer: torch.optim.Optimizer, params: TrainParams):
    if params.lr_schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=params.epochs)
    if params.lr_schedule == "step":
        return torch.optim.lr_scheduler.StepLR(optimizer, params.step_size, params.gamma)
    return None


def flip(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Mirror a random half of the batch left-right: augmentation on tensors, no decoding."""
    mask = torch.rand(len(x), generator=generator) < 0.5
    return torch.where(mask.to(x.device).view(-1, 1, 1, 1), x.flip(-1), x)


@torch.no_grad()
def evaluate_split(
    model: nn.Module, images, labels: torch.Tensor, stepper: Stepper, batch_size: int
) -> tuple[float, float, torch.Tensor]:
    """(mean loss, accuracy, predicted class per image) of a model on one split."""
    model.eval()
    loss_fn = nn.CrossEntropyLoss(reduction="sum")
    total_loss, predictions = 0.0, []
    for x, y in batches(images, labels, batch_size):
        x, y = stepper.inputs(x, y)
        with stepper.precision():
            logits = model(x)
        total_loss += float(loss_fn(logits.float(), y))
        predictions.append(logits.argmax(1).cpu())
    predicted = torch.cat(predictions) if predictions else torch.empty(0, dtype=torch.long)
    accuracy = float((predicted == labels).float().mean()) if len(labels) else 0.0
    return total_loss / max(1, len(labels)), accuracy, predicted


def fit(
    model: nn.Module,
    train: Split,
    val: Split,
    mean: list[float],
    std: list[float],
    params: TrainParams,
    device: torch.device,
    on_epoch: Callable[[EpochMetrics], None] = lambda m: None,
) -> tuple[nn.Module, FitResult]:
    """Train for params.epochs; return the model with the weights of its best validation epoch."""
    stepper = Stepper(device, mean, std, params.channels_last, params.mixed_precision == "bf16")
    model.to(device=device, memory_format=stepper.memory_format)
    optimizer = make_optimizer(model, params)
    scheduler = make_scheduler(optimizer, params)
    loss_fn = nn.CrossEntropyLoss()
    generator = torch.Generator().manual_seed(params.seed)
    train_x, train_y = as_tensor(train.images), torch.from_numpy(train.labels)
    val_x, val_y = as_tensor(val.images), torch.from_numpy(val.labels)

    result = FitResult(best_epoch=0, best_val_accuracy=-1.0)
    best_state = None
    for epoch in range(1, params.epochs + 1):
        model.train()
        started = time.perf_counter()
        seen, correct, loss_sum = 0, 0, torch.zeros((), device=device)
        for x, y in batches(train_x, train_y, params.batch_size, generator):
            x, y = stepper.inputs(x, y)
            if params.augment:
                x = flip(x, generator)
            with stepper.precision():
                logits = model(x)
                loss = loss_fn(logits.float(), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss_sum += loss.detach() * len(y)
            correct += (logits.detach().argmax(1) == y).sum()
            seen += len(y)
        seconds = time.perf_counter() - started
        learning_rate = optimizer.param_groups[0]["lr"]
        if scheduler is not None:
            scheduler.step()
        val_loss, val_accuracy, _ = evaluate_split(model, val_x, val_y, stepper, params.batch_size)
        metrics = EpochMetrics(
            epoch=epoch,
            train_loss=float(loss_sum) / seen,
            train_accuracy=float(correct) / seen,
            val_loss=val_loss,
            val_accuracy=val_accuracy,
            learning_rate=learning_rate,
            seconds=seconds,
            images_per_second=seen / seconds,
        )
        result.history.append(metrics)
        result.train_seconds += seconds
        if val_accuracy > result.best_val_accuracy:
            result.best_epoch, result.best_val_accuracy = epoch, val_accuracy
            best_state = copy.deepcopy(model.state_dict())
        on_epoch(metrics)
    model.load_state_dict(best_state)
    return model.cpu().to(memory_format=torch.contiguous_format), result
