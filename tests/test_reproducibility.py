"""Same params and code on the same machine give the same bytes, and the run-cache then works."""

from __future__ import annotations

import re

import pytest
import yaml
from conftest import TINY, Project, copy_project, stages_run, tiny_params

pytestmark = pytest.mark.e2e

DETERMINISTIC_STAGES = ("generate", "process", "train", "evaluate")


def out_hashes(project: Project) -> dict[str, str]:
    """{out path: md5} of every output of the stages that must be byte-identical."""
    lock = yaml.safe_load((project.root / "dvc.lock").read_text())
    return {
        out["path"]: out["md5"]
        for name in DETERMINISTIC_STAGES
        for out in lock["stages"][name]["outs"]  # metrics and plots outs included
    }


def test_a_fresh_copy_gives_identical_outputs(reproduced: Project, tmp_path):
    fresh = copy_project(tmp_path / "repo", tmp_path, tiny_params())
    assert stages_run(fresh.dvc("repro", "evaluate").stdout) == list(DETERMINISTIC_STAGES)
    hashes = out_hashes(fresh)
    assert set(hashes) == {
        "data/raw",
        "metrics/generate/report.json",
        "metrics/generate/samples.png",
        "data/processed",
        "metrics/process/split.json",
        "models/model.pt",
        "metrics/train/metrics.json",
        "metrics/train/params.yaml",
        "metrics/train/plots",
        "metrics/evaluate/metrics.json",
        "metrics/evaluate/plots",
    }
    assert hashes == out_hashes(reproduced)


def test_back_to_earlier_params_the_run_cache_restores_instead_of_training(workspace: Project):
    hashes = out_hashes(workspace)
    workspace.write_params(tiny_params(train={"epochs": 2}))
    assert stages_run(workspace.dvc("repro").stdout) == ["train", "evaluate", "package"]
    workspace.commit("two epochs")
    result = workspace.dvc("exp", "run", "-S", f"train.epochs={TINY['train']['epochs']}")
    output = result.stdout + result.stderr
    assert stages_run(output) == []
    for name in ("train", "evaluate", "package"):
        assert re.search(rf"Stage '{name}' is cached - skipping run", output), output
    assert out_hashes(workspace) == hashes
