"""Resumable training: the whole state of a training at the end of each epoch, kept until the run
completes, so that a re-run after a stop (Ctrl-C, SIGTERM, `kill -9`, a lost machine) goes on from
the last complete epoch and ends with the bytes an uninterrupted run writes.

DVC removes a stage's outputs before it runs the stage, so the state lives outside them, in
`.dvc/tmp/cnnpipe/resume/` of the project (git ignores it), in one file named by a key of all that
decides the run's bytes: the train params (but `resume`), the processed data, the `init_from`
file, the code (the stage script and the cnnpipe package), torch's version and the process count.
A state with another key is stale: it is removed and training starts at epoch 1. The file is
written atomically (cnnpipe.core.outputs), so a kill while saving leaves the previous epoch's.

What a state holds is the loop's business (cnnpipe.train.loop.fit); this module keys it, stores
it, and in a DDP run gathers every process's random generators into rank 0's file and hands each
process its own back.
"""

from __future__ import annotations

import hashlib
import json
import random
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

import cnnpipe
from cnnpipe.core.outputs import atomic_path, scratch_dir
from cnnpipe.core.params import TrainParams
from cnnpipe.train.distributed import ONE_PROCESS, ProcessRank

FOLDER = "resume"  # in the project's .dvc/tmp/cnnpipe/
NOT_IN_KEY = {"resume"}  # params that change no bit of the run


def folder_for(model_file: Path) -> Path:
    """Where the states of the training that writes `model_file` live: `.dvc/tmp/cnnpipe/resume`
    of its DVC project, or a hidden folder next to it outside one."""
    scratch = scratch_dir(model_file.parent)
    return (scratch if scratch is not None else model_file.parent / ".cnnpipe") / FOLDER


def run_key(params: TrainParams, processed: Path, world_size: int) -> str:
    """sha256 of all that decides a training's bytes: the params (resolved), the processed data,
    the init_from file, the code, torch's version and the process count."""
    record = {
        "params": params.model_dump(exclude=NOT_IN_KEY),
        "processes": world_size,
        "torch": torch.__version__,
    }
    digest = hashlib.sha256(json.dumps(record, sort_keys=True).encode())
    init_from = Path(params.init_from)
    named = [
        *_files("data", processed),
        *(_files("init_from", init_from) if init_from.is_file() else ()),
        *_code_files(),
    ]
    for name, path in named:
        with open(path, "rb") as f:
            digest.update(f"{name} {hashlib.file_digest(f, 'sha256').hexdigest()}\n".encode())
    return digest.hexdigest()


def _files(label: str, root: Path) -> Iterator[tuple[str, Path]]:
    """(label/relative path, path) of a file, or of every file under a folder, in a fixed order."""
    if root.is_file():
        yield label, root
        return
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        yield f"{label}/{path.relative_to(root).as_posix()}", path


def _code_files() -> Iterator[tuple[str, Path]]:
    """The running script (stages/train.py) and every module of the cnnpipe package."""
    script = getattr(sys.modules.get("__main__"), "__file__", None)
    if script and Path(script).is_file():
        yield f"script/{Path(script).name}", Path(script)
    package = Path(cnnpipe.__file__).parent
    for path in sorted(package.rglob("*.py")):
        yield f"cnnpipe/{path.relative_to(package).as_posix()}", path


def discard(model_file: Path, keep: Path | None = None) -> list[Path]:
    """Remove the saved states of the training that writes `model_file` (but `keep`)."""
    removed = []
    for path in sorted(folder_for(model_file).glob(f"{model_file.stem}-*.pt")):
        if path != keep:
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed


def global_rng() -> dict:
    """The state of every global random generator a training may draw from: Python's, numpy's,
    torch's on the CPU (torchvision's transforms draw from it) and on every CUDA device."""
    numpy_state = np.random.get_state(legacy=False)
    key = numpy_state["state"]["key"]
    state = {
        "python": random.getstate(),
        "numpy": {**numpy_state, "state": {**numpy_state["state"], "key": key.tolist()}},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_global_rng(state: dict) -> None:
    """Set the generators to what global_rng() returned."""
    random.setstate(state["python"])
    numpy_state = state["numpy"]
    key = np.array(numpy_state["state"]["key"], dtype=np.uint32)
    np.random.set_state({**numpy_state, "state": {**numpy_state["state"], "key": key}})
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class EpochStates:
    """The state file of one training, shared by its processes: rank 0 reads and writes it, the
    others send and receive their part through the process group. Every process calls `load`
    and `save` at the same points."""

    def __init__(self, path: Path | None, rank: ProcessRank = ONE_PROCESS) -> None:
        self.path = path  # rank 0's; None on the other ranks
        self.rank = rank
        self.stale: list[Path] = []  # states of other runs, removed

    @classmethod
    def for_run(
        cls, params: TrainParams, processed: Path, model_file: Path, rank: ProcessRank
    ) -> EpochStates:
        """This run's states; on rank 0 the key is computed and stale states are removed."""
        if not rank.is_main:
            return cls(None, rank)
        key = run_key(params, processed, rank.world_size)
        states = cls(folder_for(model_file) / f"{model_file.stem}-{key[:16]}.pt", rank)
        states.stale = discard(model_file, keep=states.path)
        return states

    def load(self) -> dict | None:
        """The last saved state, with this process's generators under "rng"; None when there is
        none (or it cannot be read: it is then removed)."""
        state = self._read() if self.rank.is_main else None
        if self.rank.distributed:
            box = [state]
            dist.broadcast_object_list(box, src=0)
            state = box[0]
        if state is None:
            return None
        return {**state, "rng": state["rng"][self.rank.rank]}

    def save(self, state: dict) -> None:
        """Keep `state`, whose "rng" holds this process's generators (rank 0 writes the file,
        with every process's)."""
        rngs: list | None = [state["rng"]]
        if self.rank.distributed:
            rngs = [None] * self.rank.world_size if self.rank.is_main else None
            dist.gather_object(state["rng"], rngs, dst=0)
        if self.path is None:
            return
        with atomic_path(self.path) as tmp:
            torch.save({**state, "rng": rngs}, tmp)

    def remove(self) -> None:
        """Drop the state: the run it belongs to has completed."""
        if self.path is not None:
            self.path.unlink(missing_ok=True)

    def _read(self) -> dict | None:
        if self.path is None or not self.path.exists():
            return None
        try:
            state = torch.load(self.path, map_location="cpu", weights_only=True)
        except Exception as exc:  # cut short by a full disk, or written by another torch
            print(
                f"warning: the saved training state {self.path} cannot be read "
                f"({str(exc).splitlines()[0][:200]}); removed, training starts at epoch 1",
                file=sys.stderr,
            )
            self.path.unlink(missing_ok=True)
            return None
        if len(state.get("rng", ())) != self.rank.world_size:
            self.path.unlink(missing_ok=True)
            return None
        return state
