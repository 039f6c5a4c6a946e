"""Outputs are replaced whole or not at all; their temporary copies stay out of git-tracked
folders, and copies left by killed writers are swept."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from cnnpipe.core import outputs


@pytest.fixture
def project(tmp_path):
    (tmp_path / ".dvc").mkdir()
    return tmp_path


def dead_pid() -> int:
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    return gone.pid


def test_a_temporary_copy_lives_in_dvc_tmp_not_in_the_tracked_folder(project):
    target = project / "metrics" / "train"
    with outputs.atomic_path(target) as tmp:
        assert tmp.parent == project / ".dvc" / "tmp" / "cnnpipe"
        tmp.mkdir()
        (tmp / "metrics.json").write_text("{}")
        assert os.listdir(project / "metrics") == []  # nothing for `git add -A` to pick up
    assert (target / "metrics.json").read_text() == "{}"
    assert os.listdir(project / ".dvc" / "tmp" / "cnnpipe") == []


def test_without_a_dvc_project_the_copy_is_a_hidden_sibling(tmp_path):
    with outputs.atomic_path(tmp_path / "out.json") as tmp:
        assert tmp.parent == tmp_path and tmp.name.startswith(".out.json.")
        tmp.write_text("1")
    assert (tmp_path / "out.json").read_text() == "1"


def test_a_failure_leaves_the_old_output(project):
    target = project / "models" / "model.pt"
    target.parent.mkdir()
    target.write_bytes(b"good")
    with pytest.raises(KeyboardInterrupt), outputs.atomic_path(target) as tmp:
        tmp.write_bytes(b"half")
        raise KeyboardInterrupt
    assert target.read_bytes() == b"good"
    assert os.listdir(project / ".dvc" / "tmp" / "cnnpipe") == []


def test_copies_left_by_dead_writers_are_swept_by_the_next(project):
    scratch = project / ".dvc" / "tmp" / "cnnpipe"
    scratch.mkdir(parents=True)
    (project / "metrics").mkdir()
    dead, live = dead_pid(), os.getpid()
    left = [
        scratch / f".train.tmp-0badc0de-{dead}",
        project / "metrics" / f".train.tmp-{dead}",  # where earlier versions wrote them
    ]
    for path in left:
        path.mkdir()
        (path / "metrics.json").write_text("{}")
    running = scratch / f".model.pt.tmp-12345678-{live}"
    running.write_bytes(b"being written")
    mine = project / "metrics" / "notes.tmp-1"  # not a temporary output's name
    mine.write_text("kept")
    outputs.write_json(project / "metrics" / "train.json", {"a": 1})
    assert not any(path.exists() for path in left)
    assert running.exists() and mine.exists()


def test_a_checkpoint_written_twice_has_the_same_bytes(tmp_path):
    """torch.save names the archive inside the file after the file's name: the temporary name's
    unique part must not reach it."""
    import torch

    saved = []
    for _ in range(2):
        with outputs.atomic_path(tmp_path / "model.pt") as tmp:
            torch.save({"w": torch.arange(3.0)}, tmp)
        saved.append((tmp_path / "model.pt").read_bytes())
    assert saved[0] == saved[1]
