"""End to end: real `dvc repro`, `dvc exp run` and `bentoml serve` on a tiny copy of the project."""

from __future__ import annotations

import json
import re
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import Project, copy_project, free_port, tiny_params

from cnnpipe import checkpoint, datasets

STAGES = ["generate", "process", "train", "evaluate", "package"]


def stages_run(output: str) -> list[str]:
    return re.findall(r"Running stage '(\w+)'", output)


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory) -> tuple[Project, str]:
    """One copy, reproduced once; the tests below build on it in order."""
    base = tmp_path_factory.mktemp("pipeline")
    project = copy_project(base / "repo", base, tiny_params())
    result = project.dvc("repro")
    return project, result.stdout


def test_repro_runs_every_stage_and_writes_every_output(pipeline):
    project, output = pipeline
    assert stages_run(output) == STAGES
    root = project.root
    assert (root / "data/raw/labels.csv").exists()
    for split in datasets.SPLITS:
        assert (root / f"data/processed/{split}_images.npy").exists()
    model = torch.load(root / "models/model.pt", weights_only=True)
    assert model["architecture"] == "lenet5"
    assert model["classes"] == ["circle", "square", "triangle"]
    metrics = json.loads((root / "metrics/evaluate/metrics.json").read_text())
    assert 0.0 <= metrics["test_accuracy"] <= 1.0
    assert set(metrics) >= {"test_accuracy", "test_f1_macro"}
    for image in ("confusion_matrix.png", "misclassified.png"):
        assert (root / "metrics/evaluate/plots/images" / image).stat().st_size > 1000
    assert (root / "models/bento/cnnpipe.bento").stat().st_size > 10_000
    assert len(json.loads((root / "metrics/train/metrics.json").read_text())) > 0
    assert (root / "mlflow.db").exists()


def test_second_repro_runs_nothing(pipeline):
    project, _ = pipeline
    assert stages_run(project.dvc("repro").stdout) == []
    assert "up to date" in project.dvc("status").stdout


def test_metrics_and_plots_are_shown_by_dvc(pipeline):
    project, _ = pipeline
    shown = json.loads(project.dvc("metrics", "show", "--json").stdout)
    files = next(iter(shown.values()))["data"]
    assert "test_accuracy" in files["metrics/evaluate/metrics.json"]["data"]
    assert "val_accuracy" in files["metrics/train/metrics.json"]["data"]
    out = project.root / "plots-html"
    project.dvc("plots", "show", "-o", str(out))
    page = (out / "index.html").read_text()
    for name in ("Loss", "Accuracy", "Confusion matrix", "misclassified.png"):
        assert name in page


def test_bentoml_serve_predicts_a_generated_image(pipeline):
    """After dvc repro, `bentoml serve` in the project root serves the packaged model."""
    project, _ = pipeline
    model, info, _ = checkpoint.load(project.root / "models/model.pt")
    test = datasets.read_split(project.root / "data/processed", "test")
    from cnnpipe.service import probabilities

    predicted = probabilities(model, info, np.asarray(test.images)).argmax(1)
    correct = np.flatnonzero(predicted == test.labels)
    assert len(correct), "the tiny model got no test image right"
    image = project.root / "data/raw" / test.files[correct[0]]
    expected = info.classes[test.labels[correct[0]]]

    port = free_port()
    server = project.popen("bentoml", "serve", "--host", "127.0.0.1", "--port", str(port))
    try:
        import httpx

        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert server.poll() is None, server.communicate()[0]
            time.sleep(0.3)
        with open(image, "rb") as f:
            reply = httpx.post(f"http://127.0.0.1:{port}/predict", files={"file": f}, timeout=30)
        assert reply.status_code == 200, reply.text
        body = reply.json()
        assert body["label"] == expected
        assert set(body["probabilities"]) == set(info.classes)
        assert sum(body["probabilities"].values()) == pytest.approx(1.0, abs=1e-4)
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_changing_a_train_param_reruns_train_evaluate_package_only(pipeline):
    project, _ = pipeline
    project.write_params(tiny_params(train={"epochs": 2}))
    assert stages_run(project.dvc("repro").stdout) == ["train", "evaluate", "package"]
    project.commit("two epochs")


def test_exp_run_with_set_param_is_listed_by_exp_show(pipeline):
    project, _ = pipeline
    project.dvc("exp", "run", "-S", "train.model=resnet18", "-S", "train.epochs=1")
    shown = json.loads(project.dvc("exp", "show", "--json").stdout)
    experiments = [
        exp
        for rev in shown
        for exp in (rev.get("experiments") or [])
        if exp["revs"][0]["data"]["params"]["params.yaml"]["data"]["train"]["model"] == "resnet18"
    ]
    assert experiments, json.dumps(shown)[:2000]
    metrics = experiments[0]["revs"][0]["data"]["metrics"]
    assert "test_accuracy" in metrics["metrics/evaluate/metrics.json"]["data"]


def test_bad_params_stop_the_stage_with_one_line(project: Project):
    params = yaml.safe_load((project.root / "params.yaml").read_text())
    params["train"]["model"] = "vgg16"
    project.write_params(params)
    result = project.run(sys.executable, "stages/train.py", check=False)
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0, result.stderr
    assert "train.model" in result.stderr and "'vgg16'" in result.stderr
    assert "lenet5" in result.stderr
    assert not (project.root / "models").exists()


def test_package_bundles_the_workspace_model_not_the_latest_stored(pipeline):
    """Back on the committed params after the resnet18 experiment stored a newer model: train comes
    from the run-cache, its model is already in the store, and the bento must bundle that one."""
    project, _ = pipeline
    project.write_params(tiny_params(train={"epochs": 2}))
    project.dvc("repro")
    model_tag = json.loads((project.root / "models/bento/tags.json").read_text())["model"]
    assert model_tag.split(":")[1] == checkpoint.file_hash(project.root / "models/model.pt")[:16]
    with tarfile.open(project.root / "models/bento/cnnpipe.bento") as bento:
        bundled = {
            Path(m.name).parts[-2] for m in bento.getmembers() if m.name.endswith("model.pt")
        }
    assert bundled == {model_tag.split(":")[1]}
