"""Training in several processes: torchrun's environment, the batch split, and two gloo processes
through the params switch (killed with SIGKILL and resumed) and through torchrun, on tiny
params."""

from __future__ import annotations

import hashlib
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import Project, clone, run_stage, tiny_params

from cnnpipe.core import params
from cnnpipe.core.dataset import read_split
from cnnpipe.core.errors import CnnpipeError
from cnnpipe.core.params import ParamsError
from cnnpipe.evaluate import metrics
from cnnpipe.model import checkpoint
from cnnpipe.train import distributed
from cnnpipe.train.distributed import ProcessRank

EPOCHS = 4  # killed during epoch 2: two epochs left to resume


def test_global_batch_must_split_evenly_over_processes():
    assert distributed.per_process_batch(64, 4) == 16
    with pytest.raises(CnnpipeError, match="multiple of the process count"):
        distributed.per_process_batch(10, 4)  # torchrun's process count, which params lack
    with pytest.raises(ParamsError, match="train: batch_size 10 does not split evenly over nproc"):
        params.parse({"train": {"nproc": 4, "batch_size": 10}})
    assert params.parse({"train": {"nproc": 4, "batch_size": 12}}).train.nproc == 4


def test_the_rank_comes_from_torchrun_environment(monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    assert ProcessRank.from_env() == ProcessRank(0, 1, 0) == distributed.ONE_PROCESS
    assert not distributed.launched_by_torchrun()
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_RANK", "1")
    rank = ProcessRank.from_env()
    assert (rank.rank, rank.world_size, rank.local_rank) == (3, 4, 1)
    assert rank.distributed and not rank.is_main
    assert distributed.launched_by_torchrun()


def mlflow_runs(project: Project) -> int:
    with sqlite3.connect(project.root / "mlflow.db") as db:
        return db.execute("select count(*) from runs").fetchone()[0]


def children(pid: int) -> set[int]:
    found = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        found |= {int(c) for c in (task / "children").read_text().split()}
    return found


def running(pid: int) -> bool:
    """Alive and not a zombie (an orphan's zombie may wait a while for its reaper)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def contents(root: Path, *folders: str) -> dict[str, str]:
    return {
        str(path.relative_to(root)): hashlib.md5(path.read_bytes()).hexdigest()
        for folder in folders
        for path in sorted((root / folder).rglob("*"))
        if path.is_file()
    }


def kill_9_during_epoch_2(project: Project) -> None:
    """What the OOM killer does to `train.nproc: 2`: the launcher dies with SIGKILL while its
    two DDP workers train. Both stop within 10 s (rank 0 cleanly: its MLflow run is closed as
    KILLED, its temporary outputs removed) and no output changes; the state of their last
    complete epoch stays, with both processes' generators."""
    before = contents(project.root, "data", "models", "metrics")
    git_status = project.run("git", "status", "--porcelain").stdout
    launcher = subprocess.Popen(
        [sys.executable, "stages/train.py", "data/processed", "models/model.pt", "metrics/train"],
        cwd=project.root,
        env=project.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        for line in launcher.stdout:
            if "train: epoch 2/" in line:  # both workers are past their first epoch
                break
        workers = children(launcher.pid)
        assert len(workers) == 2
    finally:
        launcher.kill()
        launcher.wait()
    started = time.monotonic()
    while any(running(pid) for pid in workers):
        assert time.monotonic() - started < 10, "a training process outlived the launcher by 10 s"
        time.sleep(0.1)
    assert contents(project.root, "data", "models", "metrics") == before
    assert project.run("git", "status", "--porcelain").stdout == git_status
    assert not list((project.root / ".dvc/tmp/cnnpipe").glob(".*.tmp-*"))
    (state,) = (project.root / ".dvc/tmp/cnnpipe/resume").iterdir()  # what a re-run goes on from
    saved = torch.load(state, weights_only=True)
    assert 2 <= saved["epoch"] < EPOCHS
    # rank 0 keeps every process's generators: each samples its own augmentations
    rngs = saved["rng"]
    assert len(rngs) == 2 and not torch.equal(rngs[0]["loop"], rngs[1]["loop"])
    with sqlite3.connect(project.root / "mlflow.db") as db:
        latest = db.execute("select status from runs order by start_time desc").fetchone()
    assert latest == ("KILLED",)


@pytest.mark.e2e
@pytest.mark.skipif(sys.platform != "linux", reason="parent-death signal and /proc are Linux's")
def test_two_processes_by_params_killed_resumed_and_by_torchrun_train_the_same_bits(
    reproduced: Project, tmp_path
):
    """Two gloo processes started by the params switch, killed with SIGKILL during epoch 2 and
    resumed by `dvc repro`, end with the weights of two processes that torchrun started and
    nothing stopped: the same process count gives the same weights, however started and however
    often stopped."""
    project = clone(reproduced, tmp_path / "repo")
    # augmentations and EMA on: the state to resume holds their generators and averages
    project.write_params(tiny_params(train={"nproc": 2, "epochs": EPOCHS, "ema_decay": 0.9}))
    kill_9_during_epoch_2(project)
    output = project.dvc("repro", "train").stdout
    assert "starting 2 processes" in output and "on 2 processes on cpu" in output
    assert "train: resuming from epoch " in output
    assert output.count(f"train: epoch {EPOCHS}/") == 1  # only rank 0 reports
    data = torch.load(project.root / "models/model.pt", weights_only=True)
    assert data["architecture"] == "lenet5" and data["params"]["nproc"] == 2
    assert not any(key.startswith("module.") for key in data["state_dict"])
    rows = (project.root / "metrics/train/plots/metrics/val_accuracy.tsv").read_text()
    assert len(rows.splitlines()) == 1 + EPOCHS  # one dvclive writer: no doubled rows
    assert mlflow_runs(project) == 1  # the killed run, reopened and finished
    by_params = data["state_dict"]

    # Started by torchrun directly, with the stage's own command line: a normal model.
    project.write_params(tiny_params(train={"epochs": EPOCHS, "ema_decay": 0.9}))
    model_file = project.root / "models/model.pt"
    model_file.unlink()
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    args = ["data/processed", "models/model.pt", "metrics/train"]
    result = project.run(*torchrun, "--nproc_per_node", "2", "stages/train.py", *args)
    assert "on 2 processes on cpu" in result.stdout
    model, card, data = checkpoint.load(model_file)
    assert data["params"]["nproc"] == 1  # torchrun, not the params switch, started the processes
    assert all(torch.equal(by_params[k], v) for k, v in data["state_dict"].items())
    assert card.best_epoch in range(1, EPOCHS + 1)
    test = read_split(project.root / "data/processed", "test")
    scored = metrics.evaluate(model, test, card, torch.device("cpu"), 64)
    assert len(scored.y_pred) == len(test.labels)
    assert mlflow_runs(project) == 2


def test_a_batch_that_does_not_split_over_the_processes_stops_with_one_line(tmp_path):
    params = tiny_params(train={"nproc": 2})
    params["train"]["batch_size"] = 15  # as a user writes it: tiny_params would refuse it
    result = run_stage("train", params, tmp_path, "processed", "model.pt", "live")
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0, result.stderr
    assert "train: batch_size 15 does not split evenly over nproc 2" in result.stderr
    assert "multiple of the process count" in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["params.yaml"]
