"""A packaged model's files: placed as hard links where the file system allows, copies otherwise;
their hashes."""

from __future__ import annotations

import errno
import hashlib
import os

import pytest

from cnnpipe.model import files


def test_a_file_is_placed_as_another_name_of_the_same_bytes(tmp_path):
    source = tmp_path / "model.pt"
    source.write_bytes(b"weights")
    target = tmp_path / "entry" / "model.pt"
    target.parent.mkdir()
    target.write_bytes(b"an older model")  # replaced, not written into
    files.place(source, target)
    assert target.stat().st_ino == source.stat().st_ino and target.read_bytes() == b"weights"

    linked = tmp_path / "linked.pt"  # a symbolic link (DVC's cache.type symlink) is followed
    linked.symlink_to(source)
    files.place(linked, tmp_path / "entry" / "again.pt")
    assert (tmp_path / "entry" / "again.pt").stat().st_ino == source.stat().st_ino


def test_a_file_is_copied_where_it_cannot_be_linked(tmp_path, monkeypatch):
    def no_links(source, target):
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    monkeypatch.setattr(os, "link", no_links)
    source = tmp_path / "model.pt"
    source.write_bytes(b"weights")
    files.place(source, tmp_path / "copy.pt")
    assert (tmp_path / "copy.pt").read_bytes() == b"weights"
    assert (tmp_path / "copy.pt").stat().st_ino != source.stat().st_ino


def test_hashes_name_every_file_or_the_named_ones(tmp_path):
    (tmp_path / "a").write_bytes(b"a")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b").write_bytes(b"b")
    digest = {k: hashlib.sha256(k.encode()).hexdigest() for k in "ab"}
    assert files.hashes(tmp_path) == {"a": digest["a"], "sub/b": digest["b"]}
    assert files.hashes(tmp_path, ["a"]) == {"a": digest["a"]}
    with pytest.raises(FileNotFoundError):
        files.hashes(tmp_path, ["missing"])
