"""The training loop: uint8 arrays in, the best-on-validation weights out.

Each epoch trains on the seeded order, then scores the model (and its exponential moving average,
when on) on the validation split; the better of the two is kept when it beats the best so far,
and training stops early after `patience` epochs without a better one. One loop serves one
process and many (see cnnpipe.train.distributed): the metrics are summed over all processes, so
every process makes the same choices. At the end of each epoch the loop can hand out its whole
state, and it can go on from such a state as if it had never stopped (cnnpipe.train.resume).
"""

from __future__ import annotations

import copy
import dataclasses
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
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from cnnpipe.core.dataset import Split
from cnnpipe.core.errors import CnnpipeError
from cnnpipe.core.params import TrainParams
from cnnpipe.model.inference import Placement, predict
from cnnpipe.model.registry import head_name
from cnnpipe.train.augment import PictureAugment, augment, erase
from cnnpipe.train.batches import batches, resident, shuffled_order
from cnnpipe.train.distributed import ONE_PROCESS, ProcessRank, per_process_batch, reduce_sums
from cnnpipe.train.optim import make_optimizer, make_scheduler
from cnnpipe.train.recipe import resolved
from cnnpipe.train.resume import global_rng, restore_global_rng


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
    ema_val_accuracy: float | None = None  # of the weights' moving average, when it is on


@dataclass
class FitResult:
    best_epoch: int = 0
    best_val_accuracy: float = -1.0
    best_weights: str = "model"  # "model", or "ema": the moving average scored better
    epochs_run: int = 0
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


def class_weights(labels: np.ndarray, classes: int, choice: str) -> torch.Tensor | None:
    """Loss weights per class: none, or `balanced` (n / (classes * count), as scikit-learn's
    compute_class_weight), which makes every class count as much as the others."""
    if choice == "none":
        return None
    from sklearn.utils.class_weight import compute_class_weight

    present = np.unique(labels)
    weights = np.ones(classes)
    weights[present] = compute_class_weight("balanced", classes=present, y=labels)
    return torch.tensor(weights, dtype=torch.float32)


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


def freeze_all_but_head(model: nn.Module, frozen: bool) -> None:
    """Train only the classifier head (frozen) or every parameter."""
    head = head_name(model) + "."
    for name, parameter in model.named_parameters():
        parameter.requires_grad = not frozen or name.startswith(head)


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
    freeze_epochs: int = 0,
    save_state: Callable[[dict], None] | None = None,
    resume_from: dict | None = None,
) -> tuple[nn.Module, FitResult]:
    """Train for up to params.epochs; return the model with the best validation weights.

    With `freeze_epochs`, only the head trains for that many epochs (a model started from a
    checkpoint). In a distributed run every process calls this with its `rank`; `on_epoch` is
    called on rank 0. `save_state` gets the whole state at the end of each epoch, before
    `on_epoch`; given such a state as `resume_from`, the fit goes on after that state's epoch and
    ends as it would have without the stop, bit for bit.
    """
    batch_size = per_process_batch(params.batch_size, rank.world_size)
    placement = Placement(device, mean, std, params.channels_last, params.mixed_precision == "bf16")
    # Module.to takes a device and a memory format at once; its stubs list them apart
    model.to(device=device, memory_format=placement.memory_format)  # type: ignore[call-overload]
    first = 1 if resume_from is None else resume_from["epoch"] + 1
    frozen = first <= freeze_epochs
    freeze_all_but_head(model, frozen)
    trained = _wrapped(model, rank, placement)
    train_x, train_y = resident(train.images, device), torch.from_numpy(train.labels)
    # each process scores every world_size-th validation image; the sums are then combined
    val_x = resident(val.images[rank.rank :: rank.world_size], device)
    val_y = torch.from_numpy(val.labels[rank.rank :: rank.world_size])
    if isinstance(train_x, torch.Tensor):
        train_y, val_y = train_y.to(train_x.device), val_y.to(train_x.device)
    steps = -(-len(shuffled_order(len(train_y), 0, 1, rank)) // batch_size)
    optimizer = make_optimizer(model, params)
    scheduler = make_scheduler(optimizer, params, steps)
    weights = class_weights(train.labels, int(train.labels.max()) + 1, params.class_weight)
    loss_fn = nn.CrossEntropyLoss(
        weight=None if weights is None else weights.to(device),
        label_smoothing=params.label_smoothing,
    )
    ema = None
    if params.ema_decay > 0:
        average = get_ema_multi_avg_fn(params.ema_decay)
        ema = AveragedModel(model, multi_avg_fn=average, use_buffers=True)
    generator = torch.Generator().manual_seed(params.seed + rank.rank)
    head = model.get_submodule(head_name(model))
    assert isinstance(head, nn.Linear)  # head_name finds the last Linear layer
    pictures = PictureAugment(
        params, train.images.shape[-1], train.images.shape[1], head.out_features
    )
    trainers = (model, optimizer, scheduler, ema, generator)

    result, best_state, since_best = FitResult(), None, 0
    if resume_from is not None:
        result, best_state, since_best = _restore(resume_from, *trainers)
    for epoch in range(first, resolved(params.epochs) + 1):
        if params.patience and since_best >= params.patience:
            break
        if frozen and epoch > freeze_epochs:
            frozen = False
            freeze_all_but_head(model, False)
            trained = _wrapped(model, rank, placement)
        trained.train()
        started = time.perf_counter()
        order = shuffled_order(len(train_y), params.seed, epoch, rank)
        seen, correct, loss_sum = 0, 0, torch.zeros((), device=device)
        for x, y in batches(train_x, train_y, batch_size, order):
            x, y = placement.inputs(pictures.images(x), y)
            if params.augment:
                x = augment(x, generator, params)
            if params.erase > 0:
                x = erase(x, generator, params.erase)
            x, target = pictures.mixed(x, y)
            with placement.precision():
                logits = trained(x)
                loss = loss_fn(logits.float(), target)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            if ema is not None:
                ema.update_parameters(model)
            loss_sum += loss.detach() * len(y)
            correct += (logits.detach().argmax(1) == y).sum()
            seen += len(y)
        total_seen, total_correct, total_loss = reduce_sums([seen, correct, loss_sum], rank, device)
        seconds = time.perf_counter() - started
        scores = {"model": _score(model, val_x, val_y, placement, batch_size, rank, device)}
        if ema is not None:
            scores["ema"] = _score(ema.module, val_x, val_y, placement, batch_size, rank, device)
        metrics = EpochMetrics(
            epoch=epoch,
            train_loss=total_loss / total_seen,
            train_accuracy=total_correct / total_seen,
            val_loss=scores["model"][0],
            val_accuracy=scores["model"][1],
            learning_rate=optimizer.param_groups[0]["lr"],
            seconds=seconds,
            images_per_second=total_seen / seconds,
            ema_val_accuracy=scores["ema"][1] if ema is not None else None,
        )
        check_finite(metrics, params)
        result.history.append(metrics)
        result.train_seconds += seconds
        result.epochs_run = epoch
        source = max(scores, key=lambda name: scores[name][1])  # the model on a tie
        if scores[source][1] > result.best_val_accuracy:
            result.best_epoch, result.best_val_accuracy = epoch, scores[source][1]
            result.best_weights = source
            best = model if source == "model" or ema is None else ema.module
            best_state = copy.deepcopy(best.state_dict())
            since_best = 0
        else:
            since_best += 1
        if save_state is not None:
            save_state(_state(epoch, *trainers, result, best_state, since_best))
        if rank.is_main:
            on_epoch(metrics)
    assert best_state is not None  # the first epoch beats best_val_accuracy's -1
    model.load_state_dict(best_state)
    freeze_all_but_head(model, False)
    return model.cpu().to(memory_format=torch.contiguous_format), result


def _state(
    epoch: int,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    ema: AveragedModel | None,
    generator: torch.Generator,
    result: FitResult,
    best_state: dict | None,
    since_best: int,
) -> dict:
    """All that the epochs after `epoch` depend on, as tensors and plain values (so that
    `torch.load(weights_only=True)` reads it back); "rng" is this process's."""
    return {
        "epoch": epoch,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "ema": None if ema is None else ema.state_dict(),
        "best_state": best_state,
        "since_best": since_best,
        "result": dataclasses.asdict(result),
        "rng": {"loop": generator.get_state(), **global_rng()},
    }


def _restore(
    state: dict,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    ema: AveragedModel | None,
    generator: torch.Generator,
) -> tuple[FitResult, dict | None, int]:
    """Put a `_state` back; returns the result so far, the best weights and the epochs since."""
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    if ema is not None:
        ema.load_state_dict(state["ema"])
    generator.set_state(state["rng"]["loop"])
    restore_global_rng(state["rng"])  # last: building the model and the rest drew from it
    done = state["result"]
    history = [EpochMetrics(**m) for m in done["history"]]
    return FitResult(**{**done, "history": history}), state["best_state"], state["since_best"]


def _wrapped(model: nn.Module, rank: ProcessRank, placement: Placement) -> nn.Module:
    """The model as it trains: in DistributedDataParallel across processes (made again when
    the trainable parameters change: it syncs those it saw when made)."""
    if not rank.distributed:
        return model
    return DistributedDataParallel(model, device_ids=[placement.device] if placement.cuda else None)


def _score(
    model: nn.Module,
    images,
    labels: torch.Tensor,
    placement: Placement,
    batch_size: int,
    rank: ProcessRank,
    device: torch.device,
) -> tuple[float, float]:
    """(mean loss, accuracy) on the validation split, summed over every process's share."""
    loss, accuracy, _ = predict(model, images, labels, placement, batch_size)
    n, loss_sum, correct = reduce_sums(
        [len(labels), loss * len(labels), accuracy * len(labels)], rank, device
    )
    return loss_sum / max(1, n), correct / max(1, n)
