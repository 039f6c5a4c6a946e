"""DistributedDataParallel on the CPU: two gloo processes through torchrun, on tiny params."""

from __future__ import annotations

import json
import sqlite3
import sys

import pytest
import torch
from conftest import Project, copy_project, tiny_params

from cnnpipe import checkpoint, datasets, evaluation

EPOCHS = 3


@pytest.fixture(scope="module")
def distributed_project(tmp_path_factory) -> Project:
    base = tmp_path_factory.mktemp("distributed")
    return copy_project(base / "repo", base, tiny_params(train={"nproc": 2, "epochs": EPOCHS}))


def mlflow_runs(project: Project) -> int:
    with sqlite3.connect(project.root / "mlflow.db") as db:
        return db.execute("select count(*) from runs").fetchone()[0]


def test_the_params_switch_trains_in_two_processes_and_rank_0_writes_once(distributed_project):
    project = distributed_project
    output = project.dvc("repro", "evaluate").stdout
    assert "starting 2 processes" in output and "on 2 processes on cpu" in output
    assert output.count("train: epoch 1/") == 1  # only rank 0 reports
    data = torch.load(project.root / "models/model.pt", weights_only=True)
    assert data["architecture"] == "lenet5" and data["params"]["nproc"] == 2
    assert not any(key.startswith("module.") for key in data["state_dict"])
    rows = (project.root / "metrics/train/plots/metrics/val_accuracy.tsv").read_text()
    assert len(rows.splitlines()) == 1 + EPOCHS  # one dvclive writer: no doubled rows
    assert mlflow_runs(project) == 1
    metrics = json.loads((project.root / "metrics/evaluate/metrics.json").read_text())
    assert 0.0 <= metrics["test_accuracy"] <= 1.0


def test_torchrun_trains_a_normal_model_that_loads_and_evaluates(distributed_project):
    project = distributed_project
    project.write_params(tiny_params(train={"epochs": EPOCHS}))
    model_file = project.root / "models/model.pt"
    model_file.unlink()
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    result = project.run(*torchrun, "--nproc_per_node", "2", "stages/train.py")
    assert "on 2 processes on cpu" in result.stdout
    model, info, data = checkpoint.load(model_file)
    assert data["params"]["nproc"] == 1  # torchrun, not the params switch, started the processes
    assert data["best_epoch"] in range(1, EPOCHS + 1)
    test = datasets.read_split(project.root / "data/processed", "test")
    scored = evaluation.evaluate(model, test, info, torch.device("cpu"), 64)
    assert len(scored.y_pred) == len(test.labels)
    assert 0.0 <= scored.metrics["test_accuracy"] <= 1.0
    assert mlflow_runs(project) == 2


def test_a_batch_that_does_not_split_over_the_processes_stops_with_one_line(distributed_project):
    project = distributed_project
    project.write_params(tiny_params(train={"nproc": 2, "batch_size": 15}))
    result = project.run(sys.executable, "stages/train.py", check=False)
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0, result.stderr
    assert (
        "train.batch_size 15" in result.stderr and "multiple of the process count" in result.stderr
    )
