"""A team shares results through a DVC remote: push, a fresh clone pulls, nothing re-runs, and the
pulled model is served after one `bentoml models import`."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from conftest import Project, stages_run

from cnnpipe.serve import packaging

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

    # Serving the pulled model: its BentoML store is empty until the archive is imported.
    tag = json.loads((dest / packaging.TAGS_FILE).read_text())["model"]
    bentoml = (sys.executable, "-m", "bentoml")
    assert teammate.run(*bentoml, "models", "get", tag, check=False).returncode != 0
    archive = dest / packaging.TAGS_FILE.parent / packaging.MODEL_ARCHIVE
    teammate.run(*bentoml, "models", "import", str(archive))  # an absolute path: BentoML's way
    shown = teammate.run(*bentoml, "models", "get", tag, "-o", "json")
    assert json.loads(shown.stdout)["metadata"]["sha256"].startswith(tag.split(":")[1])
