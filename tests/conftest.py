"""Shared fixtures: tiny params, and throwaway git+DVC copies of this repository."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent

# Small enough that the whole pipeline runs in seconds, clean enough that two epochs learn it.
TINY = {
    "generate": {
        "classes": ["circle", "square", "triangle"],
        "images_per_class": 40,
        "image_size": 32,
        "noise": 0.0,
        "clutter": 0,
        "random_colors": False,
        "max_rotation": 30,
    },
    "process": {"image_size": 32, "channels": 1, "val_ratio": 0.25, "test_ratio": 0.25},
    "train": {"epochs": 8, "batch_size": 8, "learning_rate": 0.003, "num_threads": 1},
    "evaluate": {"batch_size": 64},
    "package": {"build": True},
}


def tiny_params(**overrides: dict) -> dict:
    """TINY with some sections' keys replaced, every key written out (as `dvc exp run -S` needs)."""
    from cnnpipe import params as schema

    params = {section: dict(values) for section, values in TINY.items()}
    for section, values in overrides.items():
        params[section].update(values)
    return schema.parse(params).model_dump()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Project:
    """A git+DVC copy of the repository's tracked files, with its own stores."""

    def __init__(self, root: Path, home: Path) -> None:
        self.root = root
        self.env = {
            **os.environ,
            "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}",
            "PYTHONPATH": str(root / "src"),
            "BENTOML_HOME": str(home / "bentoml"),
            "BENTOML_DO_NOT_TRACK": "True",
            "DVC_NO_ANALYTICS": "1",
            "GIT_AUTHOR_NAME": "cnnpipe tests",
            "GIT_AUTHOR_EMAIL": "tests@cnnpipe.invalid",
            "GIT_COMMITTER_NAME": "cnnpipe tests",
            "GIT_COMMITTER_EMAIL": "tests@cnnpipe.invalid",
        }
        for name in ("MLFLOW_TRACKING_URI", "DVC_ROOT", "DVC_STAGE", "DVC_EXP_NAME"):
            self.env.pop(name, None)

    def run(
        self, *args: str, check: bool = True, timeout: float = 600
    ) -> subprocess.CompletedProcess:
        """Run a command in the copy; on failure the assertion shows its output."""
        result = subprocess.run(
            args, cwd=self.root, env=self.env, capture_output=True, text=True, timeout=timeout
        )
        if check:
            assert result.returncode == 0, f"{args} failed:\n{result.stdout}\n{result.stderr}"
        return result

    def popen(self, *args: str) -> subprocess.Popen:
        """Start a long-running command (a server) in the copy."""
        return subprocess.Popen(
            args,
            cwd=self.root,
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )

    def dvc(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return self.run(sys.executable, "-m", "dvc", *args, check=check)

    def write_params(self, params: dict) -> None:
        (self.root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))

    def commit(self, message: str) -> None:
        self.run("git", "add", "-A")
        self.run("git", "commit", "-q", "-m", message)


def copy_project(dest: Path, home: Path, params: dict | None = None) -> Project:
    """Copy the tracked files (as in the working tree) to dest, git init, commit."""
    files = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split("\0")
    for name in filter(None, files):
        source = REPO / name
        if source.is_file():
            target = dest / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
    project = Project(dest, home)
    for generated in ("dvc.lock", "metrics/train", "metrics/evaluate"):
        path = dest / generated
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()
    if params is not None:
        project.write_params(params)
    project.run("git", "init", "-q", "-b", "main")
    project.commit("copy of cnnpipe")
    return project


@pytest.fixture
def project(tmp_path: Path) -> Project:
    """A fresh copy with tiny params."""
    return copy_project(tmp_path / "repo", tmp_path, tiny_params())
