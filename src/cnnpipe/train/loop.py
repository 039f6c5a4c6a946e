"""The training loop: uint8 arrays in, the best-on-validation weights out.

One loop serves one process and many (see cnnpipe.train.distributed): the metrics are summed over
all processes, so every process picks the same best epoch.
"""

from __future__ import annotations

import copy
import math
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from cnnpipe.core.dataset import Split
from cnnpipe.core.errors import CnnpipeError
from cnnpipe.core.params import TrainParams
from cnnpipe.model.inference import Placement, predict
from cnnpipe.train.augment import augment
from cnnpipe.train.batches import batches, resident, shuffled_order
from cnnpipe.train.distributed import ONE_PROCESS, ProcessRank, per_process_batch, reduce_sums


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


def check_finite(m: EpochMetrics, params: TrainParams) -> None:
    """Stop at the first non-finite loss: a diverged model never recovers, and no model whose
    loss was not finite may be written (and then evaluated and packaged)."""
    for name, value in (("training loss", m.train_loss), ("validation loss", m.val_loss)):
        if not math.isfinite(value):
            raise CnnpipeError(
                f"train: the {name} became {value} in epoch {m.epoch}: training diverged and "
                f"stopped, no model written; lower train.learning_rate "
                f"({params.learning_rate:g} now)"
            )


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


def fit(
    model: nn.Module,
    train: Split,
    val: Split,
    mean: list[float],
    std: list[float],
    params: TrainParams,
    device: torch.device,
    on_epoch: Callable[[EpochMetrics], None] = lambda m: None,
    rank: ProcessRank = ONE_PROCESS,
) -> tuple[nn.Module, FitResult]:
    """Train for params.epochs; return the model with the weights of its best validation epoch.

    In a distributed run every process calls this with its `rank`; `on_epoch` is called on
    rank 0.
    """
    batch_size = per_process_batch(params.batch_size, rank.world_size)
    placement = Placement(device, mean, std, params.channels_last, params.mixed_precision == "bf16")
    model.to(device=device, memory_format=placement.memory_format)
    trained = model
    if rank.distributed:
        trained = DistributedDataParallel(model, device_ids=[device] if placement.cuda else None)
    optimizer = make_optimizer(model, params)
    scheduler = make_scheduler(optimizer, params)
    loss_fn = nn.CrossEntropyLoss()
    augmenting = torch.Generator().manual_seed(params.seed + rank.rank)
    train_x, train_y = resident(train.images, device), torch.from_numpy(train.labels)
    # each process scores every world_size-th validation image; the sums are then combined
    val_x = resident(val.images[rank.rank :: rank.world_size], device)
    val_y = torch.from_numpy(val.labels[rank.rank :: rank.world_size])
    if isinstance(train_x, torch.Tensor):
        train_y, val_y = train_y.to(train_x.device), val_y.to(train_x.device)

    result = FitResult(best_epoch=0, best_val_accuracy=-1.0)
    best_state = None
    for epoch in range(1, params.epochs + 1):
        trained.train()
        started = time.perf_counter()
        order = shuffled_order(len(train_y), params.seed, epoch, rank)
        seen, correct, loss_sum = 0, 0, torch.zeros((), device=device)
        for x, y in batches(train_x, train_y, batch_size, order):
            x, y = placement.inputs(x, y)
            if params.augment:
                x = augment(x, augmenting, params)
            with placement.precision():
                logits = trained(x)
                loss = loss_fn(logits.float(), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss_sum += loss.detach() * len(y)
            correct += (logits.detach().argmax(1) == y).sum()
            seen += len(y)
        seen, correct, loss_sum = reduce_sums([seen, correct, loss_sum], rank, device)
        seconds = time.perf_counter() - started
        learning_rate = optimizer.param_groups[0]["lr"]
        if scheduler is not None:
            scheduler.step()
        val_loss, val_accuracy, _ = predict(model, val_x, val_y, placement, batch_size)
        n_val, val_loss, val_correct = reduce_sums(
            [len(val_y), val_loss * len(val_y), val_accuracy * len(val_y)], rank, device
        )
        metrics = EpochMetrics(
            epoch=epoch,
            train_loss=loss_sum / seen,
            train_accuracy=correct / seen,
            val_loss=val_loss / max(1, n_val),
            val_accuracy=val_correct / max(1, n_val),
            learning_rate=learning_rate,
            seconds=seconds,
            images_per_second=seen / seconds,
        )
        check_finite(metrics, params)
        result.history.append(metrics)
        result.train_seconds += seconds
        if metrics.val_accuracy > result.best_val_accuracy:
            result.best_epoch, result.best_val_accuracy = epoch, metrics.val_accuracy
            best_state = copy.deepcopy(model.state_dict())
        if rank.is_main:
            on_epoch(metrics)
    model.load_state_dict(best_state)
    return model.cpu().to(memory_format=torch.contiguous_format), result
