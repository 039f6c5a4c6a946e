"""An experiment end to end, as most are run: `dvc exp run --queue` with worse params (a DVC
worker runs it in a temporary copy, as `dvc exp run --temp` does), trained, evaluated, packaged
and registered into the project's own MLflow store, not the copy's; `dvc exp apply` into the
workspace, the gate and the pull-request report on it against the committed baseline; then
`dvc repro` back at the baseline's params answered from the run-cache."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
import typing as t
from pathlib import Path

import mlflow
import numpy as np
import pytest
from conftest import (
    Project,
    assert_tracked_experiment,
    clone,
    out_hashes,
    shown_experiments,
    stages_run,
    tracked_runs,
)
from PIL import Image

from cnnpipe import report

pytestmark = pytest.mark.e2e


GATE = ("-m", "cnnpipe.gate", "--rev", "HEAD", "--metric", "test_accuracy", "--max-drop", "0.02")


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


class Experiments(t.NamedTuple):
    project: Project
    gates: dict[str, subprocess.CompletedProcess]  # "worse", "unchanged": the gate's run
    report: Path  # the report's folder, written on the worse workspace against HEAD
    worse: dict  # the worse workspace's test metrics
    curves: list[dict]  # `dvc plots diff HEAD`'s loss data points there
    restored: str  # `dvc repro`'s output back at HEAD's params
    git_status: str  # `git status --porcelain` then


@pytest.fixture(scope="module")
def experiments(reproduced: Project, tmp_path_factory) -> Experiments:
    """From the reproduced baseline: a deliberately worse experiment through the queue, applied
    to the workspace (gated and reported); then params.yaml back as committed and `dvc repro`
    (gated)."""
    root = tmp_path_factory.mktemp("experiments")
    project = clone(reproduced, root / "repo")
    changes = ("-S", "train.learning_rate=1e-6", "-S", "train.epochs=1")
    project.dvc("exp", "run", "--queue", "-n", "worse", *changes)
    # The worker it starts outlives it by the queue's run and an idle timeout, holding its
    # stdout and stderr: captured through pipes, `dvc queue start` would seem to take that long.
    with open(root / "queue-start.log", "w") as log:
        command = [sys.executable, "-m", "dvc", "queue", "start"]
        subprocess.run(
            command, cwd=project.root, env=project.env, stdout=log, stderr=log, check=True
        )
    status = wait_for_queue(project, "worse")
    assert "Failed" not in status, project.dvc("queue", "logs", "worse", check=False).stdout
    project.dvc("exp", "apply", "worse")
    gates = {"worse": project.run(sys.executable, *GATE, check=False)}
    written = project.run(
        sys.executable, "-m", "cnnpipe.report", "--rev", "HEAD", "--out", str(root / "report")
    )
    assert f"report: {root / 'report' / 'report.md'}" in written.stdout
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(project.root)
        curves = report.plots_diff("HEAD", root / "plots-diff")["Loss"]
    worse = json.loads((project.root / "metrics/evaluate/metrics.json").read_text())
    project.run("git", "checkout", "--", "params.yaml")
    restored = project.dvc("repro")
    git_status = project.run("git", "status", "--porcelain").stdout
    gates["unchanged"] = project.run(sys.executable, *GATE, check=False)
    output = restored.stdout + restored.stderr
    return Experiments(project, gates, root / "report", worse, curves, output, git_status)


def test_the_experiment_lands_in_the_project_store_and_restoring_adds_no_run(experiments):
    runs = tracked_runs(experiments.project)
    assert set(runs) == {"worse"}
    assert runs["worse"].data.params["train.epochs"] == "1"
    assert runs["worse"].data.params["train.learning_rate"] == "1e-06"
    assert runs["worse"].data.params["generate.classes"] == "circle,square,triangle"
    assert_tracked_experiment(runs["worse"], "worse")


def test_the_run_carries_the_evaluation_and_the_registered_model(experiments):
    uri = f"sqlite:///{experiments.project.root / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)  # as a user would, before loading a run's model
    run = tracked_runs(experiments.project)["worse"]
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


def test_the_mlflow_numbers_match_the_dvc_metrics(experiments):
    shown = shown_experiments(experiments.project)["worse"]
    tracked = tracked_runs(experiments.project)["worse"].data.metrics
    dvc_metrics = shown["metrics"]["metrics/evaluate/metrics.json"]["data"]
    assert dvc_metrics["test_accuracy"] == pytest.approx(tracked["test_accuracy"], abs=1e-6)
    assert dvc_metrics == experiments.worse  # as `dvc exp apply` put them in the workspace


def test_the_gate_passes_unchanged_and_fails_a_worse_model(experiments):
    gates = experiments.gates
    unchanged, worse = gates["unchanged"], gates["worse"]
    assert unchanged.returncode == 0, unchanged.stdout + unchanged.stderr
    assert "gate passed" in unchanged.stdout
    assert "| metrics/evaluate/metrics.json | test_accuracy |" in unchanged.stdout
    assert worse.returncode == 1, worse.stdout + worse.stderr
    assert "gate FAILED" in worse.stdout and "test_accuracy dropped" in worse.stdout


def test_back_at_the_baseline_params_the_run_cache_restores_instead_of_training(
    experiments, reproduced
):
    output = experiments.restored
    assert stages_run(output) == [], output
    # the applied experiment's outputs, the package's included, give way to the baseline's
    for name in ("train", "evaluate", "package"):
        assert re.search(rf"Stage '{name}' is cached - skipping run", output), output
    assert out_hashes(experiments.project) == out_hashes(reproduced)
    assert experiments.git_status == ""  # dvc.lock and the reports as committed


def test_the_report_holds_the_diff_tables_the_verdict_and_both_revisions_images(
    experiments, reproduced
):
    """The pull-request report on the worse workspace against the committed baseline (HEAD)."""
    text = (experiments.report / "report.md").read_text()
    assert re.search(r"\| params.yaml \| train.epochs +\| 8 +\| 1 +\|", text), text
    old = json.loads((reproduced.root / "metrics/evaluate/metrics.json").read_text())
    new = experiments.worse
    row = (
        f"| metrics/evaluate/metrics.json | test_accuracy | {old['test_accuracy']:.4f} | "
        f"{new['test_accuracy']:.4f} |"
    )
    assert row in text
    passed = old["test_accuracy"] - new["test_accuracy"] <= 0.02
    assert f"**Gate {'passed' if passed else 'FAILED'}**" in text
    assert (experiments.gates["worse"].returncode == 0) == passed  # as the gate itself says
    assert "| metrics/train/metrics.json | best_epoch |" in text

    images = re.findall(r"!\[\]\(([^)]+)\)", text)
    assert images[:2] == ["plots/loss.png", "plots/accuracy.png"]
    for kind in ("confusion_matrix", "misclassified"):
        assert {
            rev
            for rev in ("HEAD", "workspace")
            if f"plots/{rev}_metrics_evaluate_plots_images_{kind}.png" in images
        } == {"HEAD", "workspace"}
    for image in images:
        with Image.open(experiments.report / image) as picture:
            assert picture.format == "PNG" and picture.width > 100

    # The curves are drawn from both revisions' data points, as `dvc plots diff` gives them.
    rows = experiments.curves[0]["anchor_definitions"]["<DVC_METRIC_DATA>"]
    assert {(r["rev"], r["filename::field"].split("::")[1]) for r in rows} == {
        (rev, field) for rev in ("HEAD", "workspace") for field in ("train_loss", "val_loss")
    }
    assert len([r for r in rows if r["rev"] == "workspace"]) == 2 * 1  # two series, 1 epoch
