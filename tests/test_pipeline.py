"""End to end: real `dvc repro`, `dvc exp run` and `bentoml serve` on a tiny copy of the project."""

from __future__ import annotations

import csv
import json
import shutil

import httpx
import numpy as np
import pytest
import torch
import yaml
from conftest import STAGES, Project, stages_run, tracked_runs

from cnnpipe.core import dataset
from cnnpipe.model import checkpoint, files
from cnnpipe.model.inference import probabilities
from cnnpipe.serve import record

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
        "test_ece",
        "test_ece_uncalibrated",
        "test_nll",
        "test_nll_uncalibrated",
        "test_coverage",
        "test_selective_accuracy",
        "test_refused_unsure",
        "test_refused_unfamiliar",
    }
    assert scores["test_accuracy"] > 1 / 3  # better than chance on three classes
    assert 0 < scores["test_coverage"] <= 1 and 0 <= scores["test_ece"] <= 1
    per_class = json.loads((root / "metrics/evaluate/plots/per_class.json").read_text())
    assert [c["class"] for c in per_class] == model["classes"]
    for image in ("confusion_matrix.png", "misclassified.png", "reliability.png", "gradcam.png"):
        assert (root / "metrics/evaluate/plots/images" / image).stat().st_size > 1000
    # calibrated on val (the model card's temperature and threshold), and the data's lineage:
    # DVC's hash of data/processed in the card and in the MLflow run's dataset input
    assert model["temperature"] > 0 and 0 <= model["threshold"] < 1
    assert model["target_coverage"] == 0.97
    # the distance rule: fitted on the train split, its threshold and layers in the card
    assert model["distance_threshold"] > 0
    assert model["feature_layers"] == ["features.0", "features.3"]
    lock = yaml.safe_load((root / "dvc.lock").read_text())
    (processed,) = [o for o in lock["stages"]["process"]["outs"] if o["path"] == "data/processed"]
    assert model["data_hash"] == processed["md5"]
    (run,) = tracked_runs(reproduced).values()
    (logged,) = run.inputs.dataset_inputs
    assert logged.dataset.digest == processed["md5"] and logged.dataset.name == "data/processed"
    assert json.loads(logged.dataset.profile)["generate"]["classes"] == model["classes"]
    assert [(t.key, t.value) for t in logged.tags] == [("mlflow.data.context", "training")]
    packaged = record.read(root / record.RECORD)
    model_hash = files.file_hash(root / "models/model.pt")
    assert (packaged.model, packaged.bento) == (f"cnnpipe:{model_hash[:16]}", None)  # build: false
    assert packaged.sha256 == files.hashes(root / "models", files.FILES)
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
    for image in ("reliability.png", "gradcam.png"):  # the reliability diagram, Grad-CAM maps
        assert image in page


def test_bentoml_serve_in_the_project_root_serves_the_workspace_model(reproduced: Project):
    """After dvc repro, `bentoml serve` in the project root serves the packaged model (the tag
    the package stage recorded) with its calibration, and `cnnpipe predict` there answers as
    it does."""
    model, card, _ = checkpoint.load(reproduced.root / "models/model.pt")
    test = dataset.read_split(reproduced.root / "data/processed", "test")
    p = probabilities(model, card, np.array(test.images), card.temperature)
    sure = np.flatnonzero((p.argmax(1) == test.labels) & (p.max(1) >= card.threshold))
    assert len(sure), "the tiny model got no test image right over its threshold"
    image = reproduced.root / "data/raw" / test.files[sure[0]]

    assert "CNNPIPE_MODEL" not in reproduced.env
    with reproduced.serving() as url:
        with open(image, "rb") as f:
            reply = httpx.post(f"{url}/predict", files={"file": f}, timeout=30)
        metadata = httpx.get(f"{url}/metadata").json()
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert body["label"] == card.classes[test.labels[sure[0]]]
    assert sum(body["probabilities"].values()) == pytest.approx(1.0, abs=1e-4)
    assert metadata["model"] == record.read(reproduced.root / record.RECORD).model
    assert metadata["sha256"] == files.file_hash(reproduced.root / "models/model.pt")
    assert (metadata["temperature"], metadata["threshold"]) == (card.temperature, card.threshold)
    assert metadata["data_hash"] == card.data_hash
    cli = "from cnnpipe.cli import main; main()"
    rows = reproduced.run("python", "-c", cli, "predict", str(image), "--top-k", "1").stdout
    (row,) = csv.DictReader(rows.splitlines())
    assert row["label"] == body["label"] and row["class_1"] == body["label"]
    assert float(row["confidence"]) == pytest.approx(body["confidence"], abs=1e-6)


def test_every_stage_is_restored_from_the_run_cache(workspace: Project):
    for path in ("data", "models", "metrics"):
        shutil.rmtree(workspace.root / path)
    output = workspace.dvc("repro").stdout
    assert stages_run(output) == []
    for name in STAGES:
        assert f"Stage '{name}' is cached - skipping run" in output
    assert workspace.run("git", "status", "--porcelain").stdout == ""  # metrics/ as committed
