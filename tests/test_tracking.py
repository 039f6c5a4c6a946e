"""MLflow tracking against a real sqlite store in a temporary directory."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlparse

import mlflow
import pytest

from cnnpipe import tracking
from cnnpipe.core import processes
from cnnpipe.model import files
from cnnpipe.tracking import Run


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Iterator[str]:
    """One store for the module: creating its tables takes seconds. Its experiment keeps its
    artifacts beside it (MLflow's default would be the current folder)."""
    home = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{home / 'mlflow.db'}"
    mlflow.MlflowClient(uri).create_experiment(
        tracking.EXPERIMENT, artifact_location=(home / "mlruns").as_uri()
    )
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", uri)
        yield uri


def test_flatten_joins_nested_keys_and_lists():
    flat = tracking.flatten({"train": {"epochs": 3, "opt": {"lr": 0.1}}, "g": {"c": ["a", "b"]}})
    assert flat == {"train.epochs": 3, "train.opt.lr": 0.1, "g.c": "a,b"}


def test_store_defaults_to_the_dvc_root(monkeypatch, tmp_path):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))
    assert tracking.tracking_uri() == f"sqlite:///{tmp_path / 'mlflow.db'}"
    # its artifacts too, not in the current folder (a temporary experiment's copy)
    assert tracking.artifact_location() == (tmp_path / "mlruns" / tracking.EXPERIMENT).as_uri()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow.invalid")
    assert tracking.artifact_location() is None  # the server's own


def test_a_run_is_found_again_by_its_model_hash(store):
    run = Run.start("exp-1", {"train.epochs": 3}, {"dvc_exp_name": "exp-1"})
    run.log_metrics({"val_accuracy": 0.5}, step=1)
    run.log_metrics({"val_accuracy": 0.75}, step=2)
    run.set_tags({tracking.MODEL_HASH_TAG: "abc123"})
    run.end()
    Run.start("other", {}, {}).set_tags({tracking.MODEL_HASH_TAG: "def456"})

    found = Run.find("abc123")
    assert found.run_id == run.run_id
    found.log_metrics({"test_accuracy": 0.8})

    client = mlflow.MlflowClient(store)
    stored = client.get_run(run.run_id)
    assert stored.info.run_name == "exp-1"
    assert stored.data.params == {"train.epochs": "3"}
    assert stored.data.metrics == {"val_accuracy": 0.75, "test_accuracy": 0.8}
    history = client.get_metric_history(run.run_id, "val_accuracy")
    assert [(m.step, m.value) for m in history] == [(1, 0.5), (2, 0.75)]


def test_an_unreachable_store_warns_once_and_never_raises(monkeypatch, capsys):
    # nothing listens on port 9; the warnings name the store, not its credentials
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://ci:s3cret-token@127.0.0.1:9")
    run = Run.start("x", {"a": 1}, {})
    run.log_metrics({"m": 1.0}, step=1)
    run.set_tags({"t": "v"})
    run.end()
    assert Run.find("abc").run_id is None
    err = capsys.readouterr().err
    assert err.count("warning: MLflow tracking") == 2  # once per run object, then quiet
    assert "http://***@127.0.0.1:9" in err and "s3cret" not in err


def test_a_run_left_running_by_a_dead_process_is_closed_by_the_next(store):
    """A process killed with SIGKILL cannot end its run; the next run started on this host
    marks it KILLED. A run whose owner still lives (a parallel queued experiment) is left
    alone, and so is one from another host."""
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    client = mlflow.MlflowClient(store)
    existing = client.get_experiment_by_name(tracking.EXPERIMENT)
    experiment = (
        existing.experiment_id if existing else client.create_experiment(tracking.EXPERIMENT)
    )
    owners = {
        "killed": processes.process_id(gone.pid),
        "alive": processes.process_id(),
        "elsewhere": "other-host 0 1 1",
    }
    ids = {
        name: client.create_run(experiment, tags={tracking.PROCESS_TAG: owner}).info.run_id
        for name, owner in owners.items()
    }
    run = Run.start("next", {}, {})
    status = {name: client.get_run(run_id).info.status for name, run_id in ids.items()}
    assert status == {"killed": "KILLED", "alive": "RUNNING", "elsewhere": "RUNNING"}
    assert client.get_run(run.run_id).data.tags[tracking.PROCESS_TAG] == owners["alive"]


def test_a_stopped_run_is_reopened_by_the_training_that_resumes_it(store):
    """Closed as KILLED (by its own stop, or by the next run once its owner died), it runs
    again under this process, its metrics going on at the next steps, and ends FINISHED."""
    stopped = Run.start("resumed", {"train.epochs": 3}, {})
    stopped.log_metrics({"val_loss": 0.9}, step=1)
    stopped.end("KILLED")

    run = Run.reopen(stopped.run_id)
    client = mlflow.MlflowClient(store)
    reopened = client.get_run(stopped.run_id)
    assert run.run_id == stopped.run_id and reopened.info.status == "RUNNING"
    assert reopened.data.tags[tracking.PROCESS_TAG] == processes.process_id()
    assert run.logged_steps("val_loss") == {1}
    run.log_metrics({"val_loss": 0.5}, step=2)
    run.end()
    history = client.get_metric_history(run.run_id, "val_loss")
    assert [(m.step, m.value) for m in history] == [(1, 0.9), (2, 0.5)]
    assert client.get_run(run.run_id).info.status == "FINISHED"

    client.delete_run(run.run_id)
    gone = Run.reopen(run.run_id)  # the training then starts a new run
    assert gone.run_id is None and not gone.failed
    assert Run.reopen("0" * 32).run_id is None


@pytest.fixture(scope="module")
def packaged(tmp_path_factory) -> Path:
    """A packaged model's folder: a tiny checkpoint and its ONNX graph."""
    import torch

    from cnnpipe.core.dataset import InputSpec
    from cnnpipe.model import checkpoint, export, registry

    folder = tmp_path_factory.mktemp("packaged")
    torch.manual_seed(0)
    model = registry.build("lenet5", 1, 3, 32).eval()
    spec = InputSpec(classes=list("abc"), channels=1, image_size=32, mean=[0.5], std=[0.25])
    checkpoint.save(folder / files.MODEL_FILE, model, "lenet5", spec, {})
    graph = export.export_onnx(model, spec, folder / files.MODEL_FILE)
    (folder / files.ONNX_FILE).write_bytes(graph)
    return folder


@pytest.mark.parametrize("artifacts", ["local", "uploaded"])
def test_the_model_is_registered_as_onnx_once_per_run(store, packaged, artifacts, monkeypatch):
    """Into a local artifact folder the checkpoint is hard-linked; into any other store it is
    uploaded (here: a local folder taken for a remote store). Either way the registered files
    are what the registration reports, and registering again gives the same version."""
    if artifacts == "uploaded":
        monkeypatch.setattr(tracking, "local_artifact_dir", lambda uri: None)
    run = Run.start(artifacts, {}, {})
    run.set_tags({tracking.MODEL_HASH_TAG: artifacts})
    registered = run.register_model(packaged, artifacts, name=f"cnnpipe-{artifacts}")
    assert registered is not None and registered["run_id"] == run.run_id
    assert run.register_model(packaged, artifacts, name=f"cnnpipe-{artifacts}") == registered

    client = mlflow.MlflowClient(store)
    version = client.get_model_version(f"cnnpipe-{artifacts}", registered["version"])
    folder = Path(urlparse(version.source).path)
    assert files.hashes(folder) == registered["sha256"]
    assert {files.MODEL_FILE, files.ONNX_FILE, "MLmodel"} <= set(registered["sha256"])
    inode = (folder / files.MODEL_FILE).stat().st_ino
    assert (inode == (packaged / files.MODEL_FILE).stat().st_ino) == (artifacts == "local")
