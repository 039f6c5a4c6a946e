"""The CI lock check: `dvc repro`'s lock against the committed one, stage by stage."""

from __future__ import annotations

import sys

import pytest
import yaml
from conftest import Project

from cnnpipe import lockcheck


def lock(**outs: dict[str, str]) -> dict:
    return {
        "schema": "2.0",
        "stages": {
            stage: {
                "cmd": f"python stages/{stage}.py",
                "outs": [{"path": path, "hash": "md5", "md5": md5} for path, md5 in paths.items()],
            }
            for stage, paths in outs.items()
        },
    }


def test_equal_hashes_pass_and_each_difference_is_one_line():
    committed = lock(
        train={"models/model.pt": "aaa", "metrics/train/metrics.json": "bbb"},
        package={"models/bento": "ccc"},
    )
    same = lock(
        train={"models/model.pt": "aaa", "metrics/train/metrics.json": "bbb"},
        package={"models/bento": "ddd"},
    )  # package: left out, its bento has a build time
    assert lockcheck.differences(committed, same, ("train",)) == []
    other = lock(train={"models/model.pt": "eee", "metrics/train/metrics.json": "bbb"})
    assert lockcheck.differences(committed, other, ("train", "evaluate")) == [
        "train: models/model.pt committed aaa, reproduced eee",
        "evaluate: not in the committed dvc.lock",
    ]


@pytest.mark.e2e
def test_the_command_fails_on_a_lock_that_was_not_reproduced(workspace: Project):
    check = (sys.executable, "-m", "cnnpipe.lockcheck", "--rev", "HEAD")
    passed = workspace.run(*check)
    assert "lock check passed: 13 outputs of generate, process, train, evaluate" in passed.stdout

    # A lock committed from a machine whose model bytes differ (as before portable mode).
    reproduced = (workspace.root / "dvc.lock").read_text()
    committed = yaml.safe_load(reproduced)
    model = next(o for o in committed["stages"]["train"]["outs"] if o["path"] == "models/model.pt")
    model["md5"] = "1fae23c3" + model["md5"][8:]
    (workspace.root / "dvc.lock").write_text(yaml.safe_dump(committed, sort_keys=False))
    workspace.commit("a lock from another machine")
    (workspace.root / "dvc.lock").write_text(reproduced)
    failed = workspace.run(*check, check=False)
    assert failed.returncode == 1
    assert f"train: models/model.pt committed 1fae23c3{model['md5'][8:]}" in failed.stdout
    assert "lock check FAILED: 1 output(s)" in failed.stdout
