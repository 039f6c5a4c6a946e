"""The training loop: uint8 arrays in, the best-on-validation weights out.

Batches are sliced from in-memory (or memory-mapped) uint8 arrays and normalised on the device, so
each step does the host work a bare torch loop would do and no more. On CUDA an array that fits
in RAM is moved to the device once and batches are gathered there.

One loop serves one process and many: under torchrun every process trains a DistributedDataParallel
copy on its shard of a DistributedSampler order (gloo on CPU, NCCL on CUDA), and `Workers` says
which process this is, so that only rank 0 reports and writes.
"""

from __future__ import annotations

import copy
import math
import os
import random
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DistributedSampler

from cnnpipe.datasets import IN_MEMORY_LIMIT, Split
from cnnpipe.errors import CnnpipeError
from cnnpipe.params import TrainParams
from cnnpipe.preprocess import normalize


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


@dataclass(frozen=True)
class Workers:
    """This process's place among the training processes; one process is rank 0 of 1."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """The one process that logs and writes outputs."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @classmethod
    def from_env(cls) -> Workers:
        """The place torchrun gave this process (RANK, WORLD_SIZE, LOCAL_RANK), else rank 0 of 1."""
        env = os.environ
        return cls(
            int(env.get("RANK", 0)), int(env.get("WORLD_SIZE", 1)), int(env.get("LOCAL_RANK", 0))
        )


def select_device(choice: str, local_rank: int = 0) -> torch.device:
    """cpu, or the CUDA device of this process (one per local rank) when asked or when `auto`
    finds one."""
    if choice == "cuda" and not torch.cuda.is_available():
        raise CnnpipeError("train.device is cuda but no CUDA device is available; set device: auto")
    if choice == "cpu" or not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda", local_rank % torch.cuda.device_count())


def launched_by_torchrun() -> bool:
    return "LOCAL_RANK" in os.environ and "WORLD_SIZE" in os.environ


@contextmanager
def distributed(device_choice: str) -> Iterator[tuple[Workers, torch.device]]:
    """Join the process group torchrun set up, if any (NCCL on CUDA, gloo on CPU), and pick this
    process's device; leave the group on exit."""
    workers = Workers.from_env()
    device = select_device(device_choice, workers.local_rank)
    if not workers.distributed:
        yield workers, device
        return
    if device.type == "cuda":
        torch.cuda.set_device(device)
        dist.init_process_group("nccl", device_id=device)
    else:
        dist.init_process_group("gloo")
    try:
        yield workers, device
    finally:
        dist.destroy_process_group()


def launch(nproc: int, script: str) -> None:
    """Run `script` as `torchrun --standalone --nproc_per_node nproc script` from this process."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import main as torchrun

    try:
        torchrun(["--standalone", f"--nproc_per_node={nproc}", script])
    except ChildFailedError as exc:
        raise CnnpipeError(
            f"{len(exc.failures)} of {nproc} training processes failed (their errors are above); "
            "fix the cause, or set train.nproc: 1 to train in one process"
        ) from None


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


def as_tensor(images: np.ndarray) -> torch.Tensor | np.ndarray:
    """uint8 images as a tensor (an array in RAM as it is, a memory map copied into RAM when it
    is small), else the memory map itself, gathered batch by batch."""
    if not isinstance(images, np.memmap):
        return torch.from_numpy(images)
    if images.nbytes <= IN_MEMORY_LIMIT:
        return torch.from_numpy(np.array(images))
    return images


def resident(images: np.ndarray, device: torch.device) -> torch.Tensor | np.ndarray:
    """`as_tensor`, moved to the device once when it is a CUDA device and the array is in RAM:
    batches are then gathered on the device and no image crosses the bus twice."""
    images = as_tensor(images)
    if device.type == "cuda" and isinstance(images, torch.Tensor):
        return images.to(device)
    return images


def shuffled_order(n: int, seed: int, epoch: int, workers: Workers) -> torch.Tensor:
    """This process's share of a seeded permutation of range(n), the same for every run.

    torch's DistributedSampler (seed + epoch, padded to a multiple of the world size) in one
    process and in many, so the order depends on the params alone.
    """
    sampler = DistributedSampler(
        range(n), num_replicas=workers.world_size, rank=workers.rank, shuffle=True, seed=seed
    )
    sampler.set_epoch(epoch)
    return torch.tensor(list(sampler), dtype=torch.long)


def batches(
    images: torch.Tensor | np.ndarray,
    labels: torch.Tensor,
    batch_size: int,
    order: torch.Tensor | None = None,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(uint8 images, labels) batches: in stored order, or in `order` (indices) when given."""
    mapped = not isinstance(images, torch.Tensor)
    n = len(labels) if order is None else len(order)
    if order is not None and not mapped:
        order = order.to(images.device)
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
        if self.cuda and x.device.type == "cpu":  # pinned pages let the copy run asynchronously
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


def augment(x: torch.Tensor, generator: torch.Generator, params: TrainParams) -> torch.Tensor:
    """Move, rotate and zoom each image of a (normalised) batch at random within the params'
    bounds, edges repeated, and with `flip` mirror a random half: augmentation on tensors on the
    device, one resampling per batch, no decoding."""
    n, _, height, width = x.shape
    u = torch.rand(n, 4, generator=generator) * 2 - 1
    angle = u[:, 0] * math.radians(params.max_rotation)
    scale = 1 + u[:, 1] * params.max_zoom
    shift_x = u[:, 2] * (2 * params.max_shift / width)
    shift_y = u[:, 3] * (2 * params.max_shift / height)
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack(
        [torch.stack([cos, -sin, shift_x], 1), torch.stack([sin, cos, shift_y], 1)], 1
    ).to(x)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    if params.flip:
        mask = torch.rand(n, generator=generator) < 0.5
        x = torch.where(mask.to(x.device).view(-1, 1, 1, 1), x.flip(-1), x)
    return x


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
    accuracy = float((predicted == labels.cpu()).float().mean()) if len(labels) else 0.0
    return total_loss / max(1, len(labels)), accuracy, predicted


def reduce_sums(
    values: list[torch.Tensor | float], workers: Workers, device: torch.device
) -> list[float]:
    """Sums over every process (the values themselves in one process)."""
    values = [float(v) for v in values]
    if not workers.distributed:
        return values
    total = torch.tensor(values, dtype=torch.float64, device=device)  # NCCL wants it on the GPU
    dist.all_reduce(total)
    return total.tolist()


def per_process_batch(batch_size: int, world_size: int) -> int:
    """train.batch_size is the global batch; each process takes an equal part of it."""
    if batch_size % world_size:
        raise CnnpipeError(
            f"train.batch_size {batch_size} does not split evenly over {world_size} "
            "processes; set a batch size that is a multiple of the process count"
        )
    return batch_size // world_size


def fit(
    model: nn.Module,
    train: Split,
    val: Split,
    mean: list[float],
    std: list[float],
    params: TrainParams,
    device: torch.device,
    on_epoch: Callable[[EpochMetrics], None] = lambda m: None,
    workers: Workers = Workers(),
) -> tuple[nn.Module, FitResult]:
    """Train for params.epochs; return the model with the weights of its best validation epoch.

    In a distributed run every process calls this with its `workers`; the metrics are summed over
    all of them, so every process picks the same best epoch, and `on_epoch` is called on rank 0.
    """
    batch_size = per_process_batch(params.batch_size, workers.world_size)
    stepper = Stepper(device, mean, std, params.channels_last, params.mixed_precision == "bf16")
    model.to(device=device, memory_format=stepper.memory_format)
    trained = model
    if workers.distributed:
        trained = DistributedDataParallel(model, device_ids=[device] if stepper.cuda else None)
    optimizer = make_optimizer(model, params)
    scheduler = make_scheduler(optimizer, params)
    loss_fn = nn.CrossEntropyLoss()
    augmenting = torch.Generator().manual_seed(params.seed + workers.rank)
    train_x, train_y = resident(train.images, device), torch.from_numpy(train.labels)
    # each process scores every world_size-th validation image; the sums are then combined
    val_x = resident(val.images[workers.rank :: workers.world_size], device)
    val_y = torch.from_numpy(val.labels[workers.rank :: workers.world_size])
    if isinstance(train_x, torch.Tensor):
        train_y, val_y = train_y.to(train_x.device), val_y.to(train_x.device)

    result = FitResult(best_epoch=0, best_val_accuracy=-1.0)
    best_state = None
    for epoch in range(1, params.epochs + 1):
        trained.train()
        started = time.perf_counter()
        order = shuffled_order(len(train_y), params.seed, epoch, workers)
        seen, correct, loss_sum = 0, 0, torch.zeros((), device=device)
        for x, y in batches(train_x, train_y, batch_size, order):
            x, y = stepper.inputs(x, y)
            if params.augment:
                x = augment(x, augmenting, params)
            with stepper.precision():
                logits = trained(x)
                loss = loss_fn(logits.float(), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss_sum += loss.detach() * len(y)
            correct += (logits.detach().argmax(1) == y).sum()
            seen += len(y)
        seen, correct, loss_sum = reduce_sums([seen, correct, loss_sum], workers, device)
        seconds = time.perf_counter() - started
        learning_rate = optimizer.param_groups[0]["lr"]
        if scheduler is not None:
            scheduler.step()
        val_loss, val_accuracy, _ = evaluate_split(model, val_x, val_y, stepper, batch_size)
        n_val, val_loss, val_correct = reduce_sums(
            [len(val_y), val_loss * len(val_y), val_accuracy * len(val_y)], workers, device
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
        result.history.append(metrics)
        result.train_seconds += seconds
        if metrics.val_accuracy > result.best_val_accuracy:
            result.best_epoch, result.best_val_accuracy = epoch, metrics.val_accuracy
            best_state = copy.deepcopy(model.state_dict())
        if workers.is_main:
            on_epoch(metrics)
    model.load_state_dict(best_state)
    return model.cpu().to(memory_format=torch.contiguous_format), result
