"""Training in several processes: torchrun's environment, the process group, and sums over it.

Under torchrun every process trains a DistributedDataParallel copy on its shard of the data
(gloo on CPU, NCCL on CUDA); `ProcessRank` says which process this is, so that only rank 0
reports and writes.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.distributed as dist

from cnnpipe.core.errors import CnnpipeError
from cnnpipe.core.processes import OWNER_ENV, Terminated
from cnnpipe.model.inference import select_device


@dataclass(frozen=True)
class ProcessRank:
    """This process's rank among the training processes; one process is rank 0 of 1."""

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
    def from_env(cls) -> ProcessRank:
        """The rank torchrun gave this process (RANK, WORLD_SIZE, LOCAL_RANK), else 0 of 1."""
        env = os.environ
        return cls(
            int(env.get("RANK", 0)), int(env.get("WORLD_SIZE", 1)), int(env.get("LOCAL_RANK", 0))
        )


ONE_PROCESS = ProcessRank()


def launched_by_torchrun() -> bool:
    return "LOCAL_RANK" in os.environ and "WORLD_SIZE" in os.environ


@contextmanager
def joined(device_choice: str) -> Iterator[tuple[ProcessRank, torch.device]]:
    """Join the process group torchrun set up, if any (NCCL on CUDA, gloo on CPU), and pick this
    process's device; leave the group on exit."""
    rank = ProcessRank.from_env()
    device = select_device(device_choice, rank.local_rank)
    if not rank.distributed:
        yield rank, device
        return
    if device.type == "cuda":
        torch.cuda.set_device(device)
        dist.init_process_group("nccl", device_id=device)
    else:
        dist.init_process_group("gloo")
    try:
        yield rank, device
        dist.barrier()  # every process leaves together, once rank 0 has written its outputs
    finally:
        dist.destroy_process_group()


def launch(nproc: int, script: str, args: list[str]) -> None:
    """Run `torchrun --standalone --nproc_per_node nproc script args` from this process. The
    workers die with it (cnnpipe.core.processes): SIGKILL of this process leaves none behind."""
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import main as torchrun

    os.environ[OWNER_ENV] = str(os.getpid())
    try:
        torchrun(["--standalone", f"--nproc_per_node={nproc}", script, *args])
    except SignalException as exc:  # torchrun stopped the workers first
        raise Terminated(f"stopped by {exc.sigval.name}") from None
    except ChildFailedError as exc:
        raise CnnpipeError(
            f"{len(exc.failures)} of {nproc} training processes failed (their errors are above); "
            "fix the cause, or set train.nproc: 1 to train in one process"
        ) from None
    finally:
        os.environ.pop(OWNER_ENV, None)


def per_process_batch(batch_size: int, world_size: int) -> int:
    """train.batch_size is the global batch; each process takes an equal part of it."""
    if batch_size % world_size:
        raise CnnpipeError(
            f"train.batch_size {batch_size} does not split evenly over {world_size} "
            "processes; set a batch size that is a multiple of the process count"
        )
    return batch_size // world_size


def reduce_sums(
    values: list[torch.Tensor | float], rank: ProcessRank, device: torch.device
) -> list[float]:
    """Sums over every process (the values themselves in one process)."""
    sums = [float(v) for v in values]
    if not rank.distributed:
        return sums
    total = torch.tensor(sums, dtype=torch.float64, device=device)  # NCCL wants it on the GPU
    dist.all_reduce(total)
    return total.tolist()
