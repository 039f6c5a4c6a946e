"""Same params and code give the same bytes: in a fresh copy, and there whatever instruction set
and thread count the environment asks torch for, as on other machines."""

from __future__ import annotations

import pytest
import torch
from conftest import (
    DETERMINISTIC_STAGES,
    Project,
    copy_project,
    other_machine_environment,
    out_hashes,
    stages_run,
    tiny_params,
)

pytestmark = pytest.mark.e2e


def test_a_fresh_copy_in_another_machines_environment_gives_identical_outputs(
    reproduced: Project, tmp_path
):
    """The kernels and threads are pinned before torch loads, so what the environment says
    changes no bit; in machine mode the same environment does change the weights."""
    fresh = copy_project(tmp_path / "repo", tmp_path, tiny_params())
    fresh.env.update(other_machine_environment())
    assert stages_run(fresh.dvc("repro", "evaluate").stdout) == list(DETERMINISTIC_STAGES)
    hashes = out_hashes(fresh)
    assert set(hashes) == {
        "data/raw",
        "metrics/generate/report.json",
        "metrics/generate/samples.png",
        "data/processed",
        "metrics/process/split.json",
        "metrics/process/duplicates.json",
        "metrics/process/params.yaml",
        "models/model.pt",
        "metrics/train/metrics.json",
        "metrics/train/params.yaml",
        "metrics/train/plots",
        "metrics/evaluate/metrics.json",
        "metrics/evaluate/plots",
    }
    assert hashes == out_hashes(reproduced)

    # The control: the same environment in machine mode gives other weights.
    model_file = fresh.root / "models/model.pt"
    pinned = torch.load(model_file, weights_only=True)["state_dict"]
    fresh.write_params(tiny_params(train={"determinism": "machine"}))
    fresh.stage("train", check=True)
    unpinned = torch.load(model_file, weights_only=True)
    assert unpinned["params"]["determinism"] == "machine"
    assert any(not torch.equal(pinned[k], unpinned["state_dict"][k]) for k in pinned)
