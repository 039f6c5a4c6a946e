"""Experiments end to end: `dvc repro`, `dvc exp run` (workspace, --temp, --queue) and the gate,
all tracked into the project's own MLflow store."""

from __future__ import annotations

import json
import sys
import time

import mlflow
import pytest
import torch
from conftest import Project, clone

from cnnpipe.tracking import EXPERIMENT, MODEL_HASH_TAG

pytestmark = pytest.mark.e2e


def wait_for_queue(project: Project, timeout: float = 600) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = project.dvc("queue", "status").stdout
        if "Queued" not in status and "Running" not in status:
            return status
        time.sleep(2)
    raise AssertionError(f"the queue did not finish:\n{status}")


GATE = ("-m", "cnnpipe.gate", "--rev", "HEAD", "--metric", "test_accuracy", "--max-drop", "0.02")


@pytest.fixture(scope="module")
def experiments(reproduced: Project, tmp_path_factory) -> tuple[Project, dict]:
    """From the reproduced baseline: a deliberately worse workspace experiment (gated); back to
    the baseline (gated); then one experiment in a temporary copy and one through the queue."""
    project = clone(reproduced, tmp_path_factory.mktemp("experiments") / "repo")
    gates = {}
    project.dvc(
        "exp", "run", "-n", "worse", "-S", "train.learning_rate=1e-6", "-S", "train.epochs=1"
    )
    gates["worse"] = project.run(sys.executable, *GATE, check=False)
    project.run("git", "checkout", "--", ".")
    project.dvc("checkout", "--force")
    gates["unchanged"] = project.run(sys.executable, *GATE, check=False)
    project.dvc("exp", "run", "--temp", "-n", "in-temp", "-S", "train.batch_size=4")
    project.dvc("exp", "run", "--queue", "-n", "queued-sgd", "-S", "train.optimizer=sgd")
    project.dvc("queue", "start")
    status = wait_for_queue(project)
    assert "Failed" not in status, project.dvc("queue", "logs", "queued-sgd", check=False).stdout
    return project, gates


def mlflow_runs(project: Project) -> dict[str, mlflow.entities.Run]:
    client = mlflow.MlflowClient(f"sqlite:///{project.root / 'mlflow.db'}")
    experiment = client.get_experiment_by_name(EXPERIMENT)
    return {r.info.run_name: r for r in client.search_runs([experiment.experiment_id])}


def test_every_launch_lands_in_the_project_store(experiments):
    runs = mlflow_runs(experiments[0])
    assert set(runs) == {"worse", "in-temp", "queued-sgd"}
    assert runs["worse"].data.params["train.epochs"] == "1"
    assert runs["in-temp"].data.params["train.batch_size"] == "4"
    assert runs["queued-sgd"].data.params["train.optimizer"] == "sgd"
    assert runs["worse"].data.params["generate.classes"] == "circle,square,triangle"
    for name, run in runs.items():
        assert {"val_accuracy", "train_loss", "test_accuracy", "test_f1_macro"} <= set(
            run.data.metrics
        ), name
        assert run.data.tags[MODEL_HASH_TAG] and run.data.tags["git_commit"] != "unknown"
        assert run.data.tags["dvc_exp_name"] == name


def test_runs_carry_the_evaluation_and_the_model(experiments, monkeypatch):
    uri = f"sqlite:///{experiments[0].root / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    run = mlflow_runs(experiments[0])["queued-sgd"]
    client = mlflow.MlflowClient(uri)
    files = {a.path for a in client.list_artifacts(run.info.run_id, "evaluation")}
    assert files == {
        "evaluation/confusion_matrix.png",
        "evaluation/misclassified.png",
        "evaluation/per_class.json",
    }
    model = mlflow.pytorch.load_model(f"runs:/{run.info.run_id}/model")
    assert model(torch.zeros(1, 1, 32, 32)).shape == (1, 3)


def test_the_mlflow_numbers_match_the_dvc_metrics(experiments):
    project = experiments[0]
    shown = json.loads(project.dvc("exp", "show", "--json").stdout)
    by_name = {
        exp["name"]: exp["revs"][0]["data"]
        for rev in shown
        for exp in (rev.get("experiments") or [])
    }
    assert {"worse", "queued-sgd", "in-temp"} <= set(by_name)
    runs = mlflow_runs(project)
    for name in ("worse", "queued-sgd", "in-temp"):
        dvc_metrics = by_name[name]["metrics"]["metrics/evaluate/metrics.json"]["data"]
        assert dvc_metrics["test_accuracy"] == pytest.approx(
            runs[name].data.metrics["test_accuracy"], abs=1e-6
        )


def test_the_gate_passes_unchanged_and_fails_a_worse_model(experiments):
    gates = experiments[1]
    unchanged, worse = gates["unchanged"], gates["worse"]
    assert unchanged.returncode == 0, unchanged.stdout + unchanged.stderr
    assert "gate passed" in unchanged.stdout
    assert "| metrics/evaluate/metrics.json | test_accuracy |" in unchanged.stdout
    assert worse.returncode == 1, worse.stdout + worse.stderr
    assert "gate FAILED" in worse.stdout and "test_accuracy dropped" in worse.stdout
