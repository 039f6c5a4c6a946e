"""The state a stopped training goes on from: its key, its file (stale and unreadable ones
removed), the global generators. The loop's side is in test_loop.py, two processes in
test_distributed.py, and a `dvc repro` whose train stage is killed in test_reproducibility.py."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch

from cnnpipe.core import params
from cnnpipe.train import resume
from cnnpipe.train.distributed import ONE_PROCESS


@pytest.fixture
def processed(tmp_path: Path) -> Path:
    folder = tmp_path / "processed"
    folder.mkdir()
    (folder / "meta.json").write_text("{}")
    np.save(folder / "train_images.npy", np.zeros((4, 1, 8, 8), np.uint8))
    return folder


def test_the_key_names_everything_that_decides_the_bytes(processed: Path, tmp_path: Path):
    p = params.TrainParams(epochs=3)
    key = resume.run_key(p, processed, 1)
    assert resume.run_key(p, processed, 1) == key
    assert resume.run_key(p.model_copy(update={"resume": False}), processed, 1) == key
    assert resume.run_key(p.model_copy(update={"seed": 1}), processed, 1) != key
    assert resume.run_key(p, processed, 2) != key  # the process count
    np.save(processed / "train_images.npy", np.ones((4, 1, 8, 8), np.uint8))
    assert resume.run_key(p, processed, 1) != key  # one pixel of the data
    weights = tmp_path / "start.pt"
    weights.write_bytes(b"weights")
    started = p.model_copy(update={"init_from": str(weights)})
    before = resume.run_key(started, processed, 1)
    weights.write_bytes(b"other weights")
    assert resume.run_key(started, processed, 1) != before


def test_a_run_keeps_its_own_state_and_removes_any_other(processed: Path, tmp_path: Path):
    model_file = tmp_path / "models" / "model.pt"
    p = params.TrainParams(epochs=3)
    states = resume.EpochStates.for_run(p, processed, model_file, ONE_PROCESS)
    assert states.load() is None and states.stale == []
    states.save({"epoch": 2, "weights": torch.arange(3), "rng": {"torch": torch.get_rng_state()}})
    assert states.path.parent == resume.folder_for(model_file)
    again = resume.EpochStates.for_run(p, processed, model_file, ONE_PROCESS)
    loaded = again.load()
    assert loaded["epoch"] == 2 and torch.equal(loaded["weights"], torch.arange(3))
    assert torch.equal(loaded["rng"]["torch"], torch.get_rng_state())  # this process's own

    other = resume.EpochStates.for_run(
        p.model_copy(update={"seed": 1}), processed, model_file, ONE_PROCESS
    )
    assert other.stale == [states.path] and not states.path.exists()
    assert other.load() is None
    other.save({"epoch": 1, "rng": {}})
    other.remove()
    assert list(resume.folder_for(model_file).iterdir()) == []


def test_an_unreadable_state_is_removed_and_training_starts_over(processed, tmp_path, capsys):
    states = resume.EpochStates.for_run(
        params.TrainParams(epochs=3), processed, tmp_path / "model.pt", ONE_PROCESS
    )
    states.path.parent.mkdir(parents=True)
    states.path.write_bytes(b"cut short")
    assert states.load() is None
    assert not states.path.exists()
    assert "cannot be read" in capsys.readouterr().err


def test_the_global_generators_come_back_as_they_were():
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    saved = resume.global_rng()
    drawn = (random.random(), np.random.rand(), torch.rand(3))
    random.seed(7), np.random.seed(7), torch.manual_seed(7)
    resume.restore_global_rng(saved)
    assert (random.random(), np.random.rand()) == drawn[:2]
    assert torch.equal(torch.rand(3), drawn[2])
