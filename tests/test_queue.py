"""An experiment outside the workspace: `dvc exp run --queue` (a DVC worker runs it in a
temporary copy, as `dvc exp run --temp` does), tracked into the project's own MLflow store, not
the copy's."""

from __future__ import annotations

import subprocess
import sys
import time

import mlflow
import numpy as np
import pytest
from conftest import (
    Project,
    assert_tracked_experiment,
    clone,
    shown_experiments,
    tracked_runs,
)

pytestmark = pytest.mark.e2e


def wait_for_queue(project: Project, name: str, timeout: float = 600) -> str:
    """`dvc queue status` once experiment `name` has left the queue. Until its ref appears (DVC
    writes it when the run is collected), a git command every 2 s asks, and `dvc queue status`
    (seconds of CPU the experiment needs) only every 30 s, for a run that failed."""
    deadline = time.monotonic() + timeout
    asked = time.monotonic()
    while time.monotonic() < deadline:
        refs = project.run("git", "for-each-ref", "--format=%(refname)", "refs/exps").stdout
        done = any(ref.endswith(f"/{name}") for ref in refs.split())
        if done or time.monotonic() - asked > 30:
            status = project.dvc("queue", "status").stdout
            if "Queued" not in status and "Running" not in status:
                return status
            asked = time.monotonic()
        time.sleep(2)
    raise AssertionError(f"the queue did not finish:\n{project.dvc('queue', 'status').stdout}")


@pytest.fixture(scope="module")
def copies(reproduced: Project, tmp_path_factory) -> Project:
    """From the reproduced baseline: one experiment through the queue, trained, evaluated,
    packaged and registered."""
    project = clone(reproduced, tmp_path_factory.mktemp("copies") / "repo")
    changes = ("-S", "train.optimizer=sgd", "-S", "train.batch_size=16")
    project.dvc("exp", "run", "--queue", "-n", "queued-sgd", *changes)
    # The worker it starts outlives it by the queue's run and an idle timeout, holding its
    # stdout and stderr: captured through pipes, `dvc queue start` would seem to take that long.
    with open(project.root.parent / "queue-start.log", "w") as log:
        command = [sys.executable, "-m", "dvc", "queue", "start"]
        subprocess.run(
            command, cwd=project.root, env=project.env, stdout=log, stderr=log, check=True
        )
    status = wait_for_queue(project, "queued-sgd")
    assert "Failed" not in status, project.dvc("queue", "logs", "queued-sgd", check=False).stdout
    return project


def test_the_queued_experiment_lands_in_the_project_store(copies):
    runs = tracked_runs(copies)
    assert set(runs) == {"queued-sgd"}
    assert runs["queued-sgd"].data.params["train.optimizer"] == "sgd"
    assert runs["queued-sgd"].data.params["train.batch_size"] == "16"
    assert_tracked_experiment(runs["queued-sgd"], "queued-sgd")


def test_runs_carry_the_evaluation_and_the_model(copies):
    uri = f"sqlite:///{copies.root / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)  # as a user would, before loading a run's model
    run = tracked_runs(copies)["queued-sgd"]
    client = mlflow.MlflowClient(uri)
    files = {a.path for a in client.list_artifacts(run.info.run_id, "evaluation")}
    assert files == {
        "evaluation/confusion_matrix.png",
        "evaluation/misclassified.png",
        "evaluation/per_class.json",
        "evaluation/reliability.png",
        "evaluation/gradcam.png",
    }
    # the package stage registered the experiment's model from its run, in the project's store
    (version,) = client.search_model_versions(f"run_id = '{run.info.run_id}'")
    model = mlflow.pyfunc.load_model(f"models:/{version.name}/{version.version}")
    images = np.zeros((1, 1, 32, 32), np.uint8)
    assert model.predict({"images": images})["probabilities"].shape == (1, 3)


def test_the_mlflow_numbers_match_the_dvc_metrics(copies):
    shown = shown_experiments(copies)
    runs = tracked_runs(copies)
    dvc_metrics = shown["queued-sgd"]["metrics"]["metrics/evaluate/metrics.json"]["data"]
    tracked = runs["queued-sgd"].data.metrics["test_accuracy"]
    assert dvc_metrics["test_accuracy"] == pytest.approx(tracked, abs=1e-6)
