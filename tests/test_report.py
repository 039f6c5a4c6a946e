"""The pull-request report on a real DVC project with two revisions: the committed baseline and a
workspace trained with other params."""

from __future__ import annotations

import json
import re
import sys

import pytest
from conftest import Project, tiny_params
from PIL import Image

from cnnpipe import gate, report

pytestmark = pytest.mark.e2e


@pytest.fixture
def changed(workspace: Project) -> Project:
    """The workspace after `dvc repro` with fewer epochs than the committed baseline (HEAD)."""
    workspace.write_params(tiny_params(train={"epochs": 3}))
    workspace.dvc("repro", "evaluate")
    return workspace


def test_the_report_holds_the_diff_tables_the_verdict_and_both_revisions_images(
    changed: Project, monkeypatch
):
    done = changed.run(sys.executable, "-m", "cnnpipe.report", "--rev", "HEAD", "--out", "rep")
    assert "report: rep/report.md" in done.stdout
    text = (changed.root / "rep/report.md").read_text()

    assert re.search(r"\| params.yaml \| train.epochs \| 8 +\| 3 +\|", text), text
    old = json.loads(changed.run("git", "show", "HEAD:metrics/evaluate/metrics.json").stdout)
    new = json.loads((changed.root / "metrics/evaluate/metrics.json").read_text())
    row = (
        f"| metrics/evaluate/metrics.json | test_accuracy | {old['test_accuracy']:.4f} | "
        f"{new['test_accuracy']:.4f} |"
    )
    assert row in text
    passed = old["test_accuracy"] - new["test_accuracy"] <= 0.02
    assert f"**Gate {'passed' if passed else 'FAILED'}**" in text
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
        with Image.open(changed.root / "rep" / image) as picture:
            assert picture.format == "PNG" and picture.width > 100

    # The curves are drawn from both revisions' data points, as `dvc plots diff` gives them.
    monkeypatch.chdir(changed.root)
    loss = report.plots_diff("HEAD", changed.root / "check")["Loss"][0]
    rows = loss["anchor_definitions"]["<DVC_METRIC_DATA>"]
    assert {(r["rev"], r["filename::field"].split("::")[1]) for r in rows} == {
        (rev, field) for rev in ("HEAD", "workspace") for field in ("train_loss", "val_loss")
    }
    assert len([r for r in rows if r["rev"] == "workspace"]) == 2 * 3  # two series, 3 epochs
    assert gate.check(gate.metrics_diff("HEAD"), "test_accuracy", 0.02)[0] == passed
