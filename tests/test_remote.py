"""A team shares results through a DVC remote: push, a fresh clone pulls, nothing re-runs, and
`bentoml serve` serves the pulled model, storing it from the workspace first."""

from __future__ import annotations

import subprocess
from pathlib import Path

import httpx
import pytest
from conftest import Project, stages_run

from cnnpipe.model import files
from cnnpipe.serve import record

pytestmark = pytest.mark.e2e


def test_push_then_a_fresh_clone_pulls_and_reproduces_nothing(workspace: Project, tmp_path):
    remote = tmp_path / "remote"
    workspace.dvc("remote", "add", "--default", "team", str(remote))
    workspace.commit("DVC remote for the team")  # .dvc/config, as a team commits it
    pushed = workspace.dvc("push", "--run-cache")
    assert "pushed" in pushed.stdout and any(remote.rglob("*"))

    dest = tmp_path / "teammate"
    subprocess.run(["git", "clone", "-q", str(workspace.root), str(dest)], check=True)
    teammate = Project(dest, tmp_path / "teammate-home")  # its own DVC cache and stores
    assert not (dest / "models").exists()
    teammate.dvc("pull")
    assert "Data and pipelines are up to date" in teammate.dvc("status").stdout
    assert stages_run(teammate.dvc("repro").stdout) == []
    assert teammate.run("git", "status", "--porcelain").stdout == ""

    # Serving the pulled model: the teammate's BentoML store is empty, and the service stores the
    # model from the workspace, the checkpoint hard-linked (the bytes stay on disk once).
    store = Path(teammate.env["BENTOML_HOME"])
    assert not store.exists()
    packaged = record.read(dest / record.RECORD)
    image = next((dest / "data/raw/images/square").iterdir())
    with teammate.serving() as url:
        metadata = httpx.get(f"{url}/metadata").json()
        with open(image, "rb") as f:
            reply = httpx.post(f"{url}/predict", files={"file": f}, timeout=30)
    assert metadata["model"] == packaged.model and metadata["runtime"] == "onnx"
    assert metadata["sha256"] == packaged.sha256[files.MODEL_FILE]
    assert reply.status_code == 200, reply.text
    entry = store / "models" / packaged.model.replace(":", "/")
    assert files.hashes(entry, files.FILES) == packaged.sha256
    assert (entry / files.MODEL_FILE).stat().st_ino == (dest / "models/model.pt").stat().st_ino
