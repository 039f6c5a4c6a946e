"""Same params and code give the same bytes: in a fresh copy, and there whatever instruction set
and thread count the environment asks torch for, as on other machines, and however often the
training is killed on the way."""

from __future__ import annotations

import contextlib
import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import (
    DETERMINISTIC_STAGES,
    TINY,
    Project,
    copy_project,
    other_machine_environment,
    out_hashes,
    stages_run,
    tiny_params,
)

pytestmark = pytest.mark.e2e


def descendants(pid: int) -> list[int]:
    """The processes below `pid`, parents before children; those that end meanwhile left out."""
    found = []
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            for child in map(int, (task / "children").read_text().split()):
                found += [child, *descendants(child)]
    except (FileNotFoundError, ProcessLookupError):
        pass
    return found


def cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except (FileNotFoundError, ProcessLookupError):
        return b""


def killed_after(project: Project, line: str, *dvc_args: str) -> str:
    """The output of `dvc dvc_args` whose train stage got SIGKILL once it printed `line`."""
    dvc = subprocess.Popen(
        [sys.executable, "-m", "dvc", *dvc_args],
        cwd=project.root,
        env=project.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines = []
    try:
        for printed in dvc.stdout:
            lines.append(printed)
            if line in printed:
                # The stage may be a shell and its python, and python may have children:
                # stop them all first, so that none reacts to another's death, then kill.
                stage = [pid for pid in descendants(dvc.pid) if b"stages/train.py" in cmdline(pid)]
                assert stage, "".join(lines)
                for signum in (signal.SIGSTOP, signal.SIGKILL):
                    for pid in stage:
                        with contextlib.suppress(ProcessLookupError):
                            os.kill(pid, signum)
                break
    finally:
        output = "".join(lines) + dvc.communicate()[0]
    assert dvc.returncode != 0, output
    return output


@pytest.mark.skipif(sys.platform != "linux", reason="the stage process is found through /proc")
def test_a_fresh_copy_in_another_machines_environment_gives_identical_outputs(
    reproduced: Project, tmp_path
):
    """The kernels and threads are pinned before torch loads, so what the environment says
    changes no bit; in machine mode the same environment does change the weights. Nor does a
    SIGKILL of the train stage (no cleanup at all) once it has saved epoch 2: `dvc repro` again
    goes on after the last saved epoch, into the killed run's MLflow run."""
    fresh = copy_project(tmp_path / "repo", tmp_path, tiny_params())
    fresh.env.update(other_machine_environment())
    killed = killed_after(fresh, "train: epoch 2/", "repro", "evaluate")  # printed once saved
    (state,) = (fresh.root / ".dvc/tmp/cnnpipe/resume").iterdir()
    saved = torch.load(state, weights_only=True)["epoch"]
    epochs = TINY["train"]["epochs"]
    assert 2 <= saved <= epochs, saved
    output = fresh.dvc("repro", "evaluate").stdout
    assert stages_run(killed + output) == list(DETERMINISTIC_STAGES[:3]) + ["train", "evaluate"]
    start = f"from epoch {saved + 1}/{epochs}" if saved < epochs else "with every epoch trained"
    assert f"train: resuming {start} (the state of epoch {saved} in " in output
    assert f"train: epoch {saved}/" not in output
    assert not state.exists()  # removed once the run completed
    with sqlite3.connect(fresh.root / "mlflow.db") as db:
        runs = db.execute("select run_uuid, status from runs").fetchall()
        steps = db.execute("select step from metrics where key = 'val_accuracy'").fetchall()
    assert [status for _, status in runs] == ["FINISHED"]
    assert sorted(step for (step,) in steps) == list(range(1, epochs + 1))
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
