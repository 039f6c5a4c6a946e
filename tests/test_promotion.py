"""MLflow's model registry: the package stage registers the model as ONNX (no pickle), linked to
its training run, the checkpoint hard-linked rather than copied; a passing gate with --promote
points the champion alias at exactly that version, whatever tags other versions carry, and
models:/cnnpipe@champion loads."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlparse

import mlflow
import numpy as np
import pytest
import yaml
from conftest import Project

from cnnpipe import gate
from cnnpipe.core.dataset import read_split
from cnnpipe.core.errors import CnnpipeError
from cnnpipe.model import files
from cnnpipe.serve import record
from cnnpipe.tracking import CHAMPION, MODEL_HASH_TAG, REGISTERED_MODEL, Run

pytestmark = pytest.mark.e2e

GATE = ("-m", "cnnpipe.gate", "--rev", "HEAD", "--promote", CHAMPION)


def test_the_package_stage_registers_the_model_of_the_training_run(
    reproduced: Project, monkeypatch
):
    uri = f"sqlite:///{reproduced.root / 'mlflow.db'}"
    client = mlflow.MlflowClient(uri)
    model_file = reproduced.root / "models/model.pt"
    model_hash = files.file_hash(model_file)
    versions = client.search_model_versions(f"name = '{REGISTERED_MODEL}'")
    assert [(str(v.version), v.tags[MODEL_HASH_TAG]) for v in versions] == [("1", model_hash)]
    training = client.get_run(versions[0].run_id)
    assert training.data.tags[MODEL_HASH_TAG] == model_hash
    assert "val_accuracy" in training.data.metrics and "test_accuracy" in training.data.metrics
    registered = record.read(reproduced.root / record.RECORD).registered
    assert registered is not None
    assert (registered.version, registered.run_id) == ("1", training.info.run_id)

    # An MLflow ONNX model: loading it runs onnxruntime, no pickle. Its checkpoint is another
    # name of the workspace's (and DVC's cache's) file, in the project's mlruns/.
    folder = Path(urlparse(versions[0].source).path)
    assert reproduced.root / "mlruns" in folder.parents
    assert set(registered.sha256) == set(files.hashes(folder))
    flavors = yaml.safe_load((folder / "MLmodel").read_text())["flavors"]
    assert set(flavors) == {"onnx", "python_function"}
    assert flavors["python_function"]["loader_module"] == "mlflow.onnx"
    assert not [p for p in folder.rglob("*") if p.suffix in (".pkl", ".pickle")]
    assert (folder / files.MODEL_FILE).stat().st_ino == model_file.stat().st_ino

    # The package stage run again for the same model (the run-cache, a forced repro) adds none.
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    again = Run.find(model_hash).register_model(reproduced.root / "models", model_hash)
    assert again == registered.model_dump()
    assert len(client.search_model_versions(f"name = '{REGISTERED_MODEL}'")) == 1


def test_a_passing_gate_promotes_the_packaged_version_and_champion_loads(
    reproduced: Project, workspace: Project, tmp_path, monkeypatch
):
    shutil.copy(reproduced.root / "mlflow.db", workspace.root / "mlflow.db")
    uri = f"sqlite:///{workspace.root / 'mlflow.db'}"
    client = mlflow.MlflowClient(uri)
    model_hash = files.file_hash(workspace.root / "models/model.pt")
    packaged = record.read(workspace.root / record.RECORD)
    assert packaged.registered is not None
    # Someone with write access registers other files as a newer version of the same run and
    # tags it with the model's hash: the gate must not take the highest tagged version.
    forged = tmp_path / "mlruns" / "forged"
    shutil.copytree(workspace.root / "models", forged)
    (forged / "MLmodel").write_text("flavors: {}\n")
    mv = client.create_model_version(
        REGISTERED_MODEL,
        str(forged),
        run_id=packaged.registered.run_id,
        tags={MODEL_HASH_TAG: model_hash},
    )
    assert str(mv.version) == "2"

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

    # A record that names the forged version: its files are not the ones that were registered.
    path = workspace.root / record.RECORD
    data = json.loads(path.read_text())
    data["registered"]["version"] = "2"
    path.unlink()  # a DVC output is a link to the cache: replaced, never written in place
    path.write_text(json.dumps(data))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    with pytest.raises(CnnpipeError, match="not the ones the package stage registered"):
        gate.promote(workspace.root / "models/model.pt", CHAMPION)
    assert client.get_registered_model(REGISTERED_MODEL).aliases == {CHAMPION: 1}

    mlflow.set_tracking_uri(uri)  # as a user would, before loading from the registry
    champion = mlflow.pyfunc.load_model(f"models:/{REGISTERED_MODEL}@{CHAMPION}")
    test = read_split(workspace.root / "data/processed", "test")
    probabilities = champion.predict({"images": np.array(test.images)})["probabilities"]
    predicted = probabilities.argmax(1)  # the whole split in one batch
    assert float((predicted == test.labels).mean()) == pytest.approx(measured["test_accuracy"])


def test_the_gate_and_the_report_load_neither_torch_nor_mlflow_to_start():
    """A CI step: seconds of torch's import each, for a table of numbers (MLflow is imported
    only to promote)."""
    code = (
        "import sys; import cnnpipe.gate, cnnpipe.report; "
        "print(sorted({'torch', 'mlflow', 'matplotlib'} & set(sys.modules)))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.stdout.strip() == "[]", result.stderr
