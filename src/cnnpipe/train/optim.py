"""The optimizer and the learning-rate schedule, stepped once per batch."""

from __future__ import annotations

import torch
from torch import nn

from cnnpipe.core.params import TrainParams
from cnnpipe.train.recipe import resolved


def parameter_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Weights decay; biases and normalisation scales (the 1-d parameters) do not."""
    decay: list[nn.Parameter] = []
    keep: list[nn.Parameter] = []
    for p in model.parameters():
        (decay if p.ndim > 1 else keep).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": keep, "weight_decay": 0.0},
    ]


def make_optimizer(model: nn.Module, params: TrainParams) -> torch.optim.Optimizer:
    """AdamW (decoupled weight decay), Adam (weight decay as L2 in the gradient) or SGD with
    Nesterov momentum. Every parameter is in it, frozen ones too: they get no gradient, so no
    step and no decay, until they are unfrozen."""
    groups = parameter_groups(model, resolved(params.weight_decay))
    lr = resolved(params.learning_rate)
    if params.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=params.momentum, nesterov=True)
    if params.optimizer == "adam":
        return torch.optim.Adam(groups, lr=lr)
    return torch.optim.AdamW(groups, lr=lr)


def make_scheduler(
    optimizer: torch.optim.Optimizer, params: TrainParams, steps_per_epoch: int
) -> torch.optim.lr_scheduler.LRScheduler:
    """Linear warmup from 1% of the rate over `warmup_epochs`, then `lr_schedule` (cosine to 0
    at the last epoch, steps of `gamma` every `step_size` epochs, or constant). Stepped per
    batch."""
    schedulers = torch.optim.lr_scheduler
    total = resolved(params.epochs) * steps_per_epoch
    warmup = min(total - 1, round(params.warmup_epochs * steps_per_epoch))
    main: torch.optim.lr_scheduler.LRScheduler
    if params.lr_schedule == "cosine":
        main = schedulers.CosineAnnealingLR(optimizer, T_max=max(1, total - warmup))
    elif params.lr_schedule == "step":
        main = schedulers.StepLR(optimizer, params.step_size * steps_per_epoch, params.gamma)
    else:
        main = schedulers.ConstantLR(optimizer, factor=1.0, total_iters=0)
    if warmup <= 0:
        return main
    ramp = schedulers.LinearLR(optimizer, start_factor=0.01, end_factor=1.0, total_iters=warmup)
    return schedulers.SequentialLR(optimizer, [ramp, main], milestones=[warmup])
