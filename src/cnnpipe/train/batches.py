"""Training batches: sliced from in-memory (or memory-mapped) uint8 arrays in a seeded order, so
each step does the host work a bare torch loop would do and no more. On CUDA an array that fits
in RAM is moved to the device once and batches are gathered there."""

from __future__ import annotations

import typing as t
from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import Dataset, DistributedSampler

from cnnpipe.model.inference import as_tensor
from cnnpipe.train.distributed import ProcessRank


def resident(images: np.ndarray, device: torch.device) -> torch.Tensor | np.ndarray:
    """`as_tensor`, moved to the device once when it is a CUDA device and the array is in RAM:
    batches are then gathered on the device and no image crosses the bus twice."""
    data = as_tensor(images)
    if device.type == "cuda" and isinstance(data, torch.Tensor):
        return data.to(device)
    return data


def shuffled_order(n: int, seed: int, epoch: int, rank: ProcessRank) -> torch.Tensor:
    """This process's share of a seeded permutation of range(n), the same for every run.

    torch's DistributedSampler (seed + epoch, padded to a multiple of the world size) in one
    process and in many, so the order depends on the params alone.
    """
    # the sampler only takes len() of its dataset; torch types it as a Dataset
    indices = t.cast("Dataset[int]", range(n))
    sampler: DistributedSampler[int] = DistributedSampler(
        indices, num_replicas=rank.world_size, rank=rank.rank, shuffle=True, seed=seed
    )
    sampler.set_epoch(epoch)
    return torch.tensor(list(sampler), dtype=torch.long)


def batches(
    images: torch.Tensor | np.ndarray,
    labels: torch.Tensor,
    batch_size: int,
    order: torch.Tensor,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(uint8 images, labels) batches of the images at the indices in `order`."""
    mapped = not isinstance(images, torch.Tensor)
    if not mapped:
        order = order.to(images.device)
    for start in range(0, len(order), batch_size):
        if mapped:  # sorted indices read the memory map front to back
            idx = order[start : start + batch_size].sort().values
            yield torch.from_numpy(np.ascontiguousarray(images[idx.numpy()])), labels[idx]
        else:
            idx = order[start : start + batch_size]
            yield images[idx], labels[idx]
