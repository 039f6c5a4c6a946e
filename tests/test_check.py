"""The check stage: a bad param stops `dvc repro` and `dvc exp run` before DVC removes any
stage's outputs (it removes them before running a stage's command)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from conftest import Project, run_stage, tiny_params

pytestmark = pytest.mark.e2e


def contents(root: Path) -> dict[str, str]:
    return {
        str(path.relative_to(root)): hashlib.md5(path.read_bytes()).hexdigest()
        for folder in ("data", "models", "metrics")
        for path in sorted((root / folder).rglob("*"))
        if path.is_file()
    }


def state(project: Project) -> tuple:
    return contents(project.root), project.run("git", "status", "--porcelain").stdout


def dvc_status(project: Project) -> dict:
    return json.loads(project.dvc("status", "--json").stdout)


def test_a_bad_value_stops_the_pipeline_before_any_output_is_removed(workspace: Project):
    project = workspace
    before, status = state(project), dvc_status(project)
    committed = (project.root / "params.yaml").read_bytes()
    cases = [  # how the bad value comes in, and what the one line must name
        (["exp", "run", "-S", "train.epochs=0"], "train.epochs: 0 is invalid"),
        (["exp", "run", "-S", "train.seed=1e20"], "train.seed: 1e+20 is invalid"),  # a float
        (["repro"], "process.image_size: 16 does not fit train.model lenet5"),
    ]
    for command, expected in cases:
        if command == ["repro"]:  # the user edits params.yaml
            edited = tiny_params()
            edited["process"]["image_size"] = 16
            project.write_params(edited)
        result = project.dvc(*command, check=False)
        assert result.returncode != 0, command
        ours = [line for line in result.stderr.splitlines() if line.startswith("error:")]
        assert len(ours) == 1 and expected in ours[0], result.stderr
        assert "Traceback" not in result.stdout + result.stderr
        assert "Running stage 'check'" in result.stdout
        assert not any(f"Running stage '{s}'" in result.stdout for s in ("generate", "train"))
        # Put back what `dvc exp run -S` (or the user) wrote. (`git checkout params.yaml` may not:
        # after a failed run DVC leaves git's index believing the edited file unchanged.)
        (project.root / "params.yaml").write_bytes(committed)
        assert state(project) == before, command
    assert dvc_status(project) == status  # as after every case: no case can undo another's


def test_the_process_stage_refuses_a_size_the_model_cannot_take_before_writing(tmp_path):
    params = tiny_params()
    params["process"]["image_size"] = 24
    params["train"]["model"] = "resnet18"
    result = run_stage(
        "process", params, tmp_path, "raw", "processed", "split.json", "dups.json", "used.yaml"
    )
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0, result.stderr
    assert "process.image_size: 24 is below 32 px" in result.stderr
    assert "resnet18" in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["params.yaml"]
