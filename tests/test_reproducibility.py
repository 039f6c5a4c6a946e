"""Same params and code on the same machine give the same bytes, and the run-cache then works."""

from __future__ import annotations

import re

import yaml
from conftest import TINY, copy_project, tiny_params

DETERMINISTIC_STAGES = ("generate", "process", "train", "evaluate")


def out_hashes(lock_text: str) -> dict[str, str]:
    """{out path: md5} of every output of the stages that must be byte-identical."""
    lock = yaml.safe_load(lock_text)
    return {
        out["path"]: out["md5"]
        for name in DETERMINISTIC_STAGES
        for out in lock["stages"][name]["outs"]  # metrics and plots outs included
    }


def test_two_fresh_copies_give_identical_outputs_and_the_run_cache_restores_them(tmp_path):
    first = copy_project(tmp_path / "a", tmp_path / "a-home", tiny_params())
    second = copy_project(tmp_path / "b", tmp_path / "b-home", tiny_params())
    first.dvc("repro")
    second.dvc("repro")
    hashes = out_hashes((first.root / "dvc.lock").read_text())
    assert set(hashes) == {
        "data/raw",
        "metrics/generate",
        "data/processed",
        "metrics/process",
        "models/model.pt",
        "metrics/train/metrics.json",
        "metrics/train/plots",
        "metrics/evaluate",
    }
    assert hashes == out_hashes((second.root / "dvc.lock").read_text())

    # Another run with other params, then an experiment with the first params again: DVC finds
    # the earlier runs in its run-cache and checks their outputs out instead of training.
    first.commit("first run")
    first.write_params(tiny_params(train={"epochs": 2}))
    assert "Running stage 'train'" in first.dvc("repro").stdout
    first.commit("two epochs")
    result = first.dvc("exp", "run", "-S", f"train.epochs={TINY['train']['epochs']}")
    output = result.stdout + result.stderr
    assert "Running stage 'train'" not in output
    assert re.search(r"Stage 'train' is cached - skipping run", output), output
    assert out_hashes((first.root / "dvc.lock").read_text()) == hashes
