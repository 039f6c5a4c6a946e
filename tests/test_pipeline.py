"""End to end: real `dvc repro`, `dvc exp run` and `bentoml serve` on a tiny copy of the project."""

from __future__ import annotations

import json
import shutil

import httpx
import numpy as np
import pytest
import torch
from conftest import STAGES, Project, stages_run

from cnnpipe.core import dataset
from cnnpipe.model import checkpoint
from cnnpipe.model.inference import probabilities

pytestmark = pytest.mark.e2e


def test_repro_runs_every_stage_and_writes_every_output(reproduced: Project):
    assert stages_run(reproduced.repro_output) == STAGES
    assert reproduced.repro_output.index("Running stage 'check'") == reproduced.repro_output.index(
        "Running stage"
    )  # the check runs first
    root = reproduced.root
    assert json.loads((root / "data/source.json").read_text()) == {"source": "shapes"}
    assert (root / "data/raw/labels.csv").exists()
    for split in dataset.SPLITS:
        assert (root / f"data/processed/{split}_images.npy").exists()
    model = torch.load(root / "models/model.pt", weights_only=True)
    assert model["architecture"] == "lenet5"
    assert model["classes"] == ["circle", "square", "triangle"]
    scores = json.loads((root / "metrics/evaluate/metrics.json").read_text())
    assert set(scores) == {
        "test_accuracy",
        "test_precision_macro",
        "test_recall_macro",
        "test_f1_macro",
    }
    assert scores["test_accuracy"] > 1 / 3  # better than chance on three classes
    per_class = json.loads((root / "metrics/evaluate/plots/per_class.json").read_text())
    assert [c["class"] for c in per_class] == model["classes"]
    for image in ("confusion_matrix.png", "misclassified.png"):
        assert (root / "metrics/evaluate/plots/images" / image).stat().st_size > 1000
    tags = json.loads((root / "models/bento/tags.json").read_text())
    assert tags == {
        "model": f"cnnpipe:{checkpoint.file_hash(root / 'models/model.pt')[:16]}",
        "bento": None,
    }  # package.build is false in the tiny params
    assert json.loads((root / "metrics/train/metrics.json").read_text())["best_epoch"] >= 1
    assert (root / "mlflow.db").exists()


def test_second_repro_runs_nothing(reproduced: Project):
    output = reproduced.dvc("repro").stdout
    assert "Running stage" not in output and "Data and pipelines are up to date" in output
    assert json.loads(reproduced.dvc("status", "--json").stdout) == {}
    assert reproduced.run("git", "status", "--porcelain").stdout == ""


def test_metrics_and_plots_are_shown_by_dvc(reproduced: Project, tmp_path):
    shown = json.loads(reproduced.dvc("metrics", "show", "--json").stdout)
    files = next(iter(shown.values()))["data"]
    assert "test_accuracy" in files["metrics/evaluate/metrics.json"]["data"]
    assert "val_accuracy" in files["metrics/train/metrics.json"]["data"]
    assert files["metrics/generate/report.json"]["data"]["images"] == 120
    reproduced.dvc("plots", "show", "-o", str(tmp_path / "plots"))
    page = (tmp_path / "plots" / "index.html").read_text()
    for name in ("Loss", "Accuracy", "Confusion matrix", "F1 per class", "misclassified.png"):
        assert name in page


def test_bentoml_serve_in_the_project_root_serves_the_workspace_model(reproduced: Project):
    """After dvc repro, `bentoml serve` in the project root serves the packaged model (the tag
    the package stage recorded)."""
    model, card, _ = checkpoint.load(reproduced.root / "models/model.pt")
    test = dataset.read_split(reproduced.root / "data/processed", "test")
    predicted = probabilities(model, card, np.array(test.images)).argmax(1)
    correct = np.flatnonzero(predicted == test.labels)
    assert len(correct), "the tiny model got no test image right"
    image = reproduced.root / "data/raw" / test.files[correct[0]]

    assert "CNNPIPE_MODEL" not in reproduced.env
    with reproduced.serving() as url:
        with open(image, "rb") as f:
            reply = httpx.post(f"{url}/predict", files={"file": f}, timeout=30)
        metadata = httpx.get(f"{url}/metadata").json()
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert body["label"] == card.classes[test.labels[correct[0]]]
    assert sum(body["probabilities"].values()) == pytest.approx(1.0, abs=1e-4)
    tags = json.loads((reproduced.root / "models/bento/tags.json").read_text())
    assert metadata["model"] == tags["model"]
    assert metadata["sha256"] == checkpoint.file_hash(reproduced.root / "models/model.pt")


def test_every_stage_is_restored_from_the_run_cache(workspace: Project):
    for path in ("data", "models", "metrics"):
        shutil.rmtree(workspace.root / path)
    output = workspace.dvc("repro").stdout
    assert stages_run(output) == []
    for name in STAGES:
        assert f"Stage '{name}' is cached - skipping run" in output
    assert workspace.run("git", "status", "--porcelain").stdout == ""  # metrics/ as committed
