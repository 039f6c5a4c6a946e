"""MLflow's model registry: the package stage registers the model, linked to its training run; a
passing gate with --promote points the champion alias at it, and models:/cnnpipe@champion loads."""

from __future__ import annotations

import json
import shutil
import sys

import mlflow
import numpy as np
import pytest
import torch
from conftest import Project

from cnnpipe.core.dataset import read_split
from cnnpipe.core.preprocess import normalize
from cnnpipe.model import checkpoint
from cnnpipe.tracking import CHAMPION, MODEL_HASH_TAG, REGISTERED_MODEL, Run

pytestmark = pytest.mark.e2e

GATE = ("-m", "cnnpipe.gate", "--rev", "HEAD", "--promote", CHAMPION)


def test_the_package_stage_registers_the_model_of_the_training_run(
    reproduced: Project, monkeypatch
):
    uri = f"sqlite:///{reproduced.root / 'mlflow.db'}"
    client = mlflow.MlflowClient(uri)
    model_hash = checkpoint.file_hash(reproduced.root / "models/model.pt")
    versions = client.search_model_versions(f"name = '{REGISTERED_MODEL}'")
    assert [(str(v.version), v.tags[MODEL_HASH_TAG]) for v in versions] == [("1", model_hash)]
    training = client.get_run(versions[0].run_id)
    assert training.data.tags[MODEL_HASH_TAG] == model_hash
    assert "val_accuracy" in training.data.metrics and "test_accuracy" in training.data.metrics

    # The package stage run again for the same model (the run-cache, a forced repro) adds none.
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    assert Run.find(model_hash).register_model(model_hash) == "1"
    assert len(client.search_model_versions(f"name = '{REGISTERED_MODEL}'")) == 1


def test_a_passing_gate_promotes_the_model_and_champion_loads(
    reproduced: Project, workspace: Project
):
    shutil.copy(reproduced.root / "mlflow.db", workspace.root / "mlflow.db")
    uri = f"sqlite:///{workspace.root / 'mlflow.db'}"
    client = mlflow.MlflowClient(uri)
    scores = workspace.root / "metrics/evaluate/metrics.json"
    measured = json.loads(scores.read_text())

    scores.write_text(json.dumps({**measured, "test_accuracy": 0.0}))  # as a worse model would
    failed = workspace.run(sys.executable, *GATE, check=False)
    assert failed.returncode == 1 and "gate FAILED" in failed.stdout
    assert client.get_registered_model(REGISTERED_MODEL).aliases == {}

    workspace.run("git", "checkout", "--", "metrics")
    passed = workspace.run(sys.executable, *GATE)
    assert f"promoted: models:/{REGISTERED_MODEL}@{CHAMPION} is {REGISTERED_MODEL} version 1" in (
        passed.stdout
    )
    assert client.get_registered_model(REGISTERED_MODEL).aliases == {CHAMPION: 1}

    mlflow.set_tracking_uri(uri)  # as a user would, before loading from the registry
    champion = mlflow.pytorch.load_model(f"models:/{REGISTERED_MODEL}@{CHAMPION}")
    card = checkpoint.card_of(checkpoint.read(workspace.root / "models/model.pt"))
    test = read_split(workspace.root / "data/processed", "test")
    with torch.no_grad():
        x = normalize(torch.from_numpy(np.array(test.images)), card.mean, card.std)
        predicted = champion(x).argmax(1).numpy()  # the whole split in one batch
    assert float((predicted == test.labels).mean()) == pytest.approx(measured["test_accuracy"])
