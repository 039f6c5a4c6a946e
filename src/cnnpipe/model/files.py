"""A packaged model is one folder of two files: the checkpoint (model.pt) and its ONNX graph
(model.onnx), which holds no weights of its own but reads them from the checkpoint beside it.

The workspace's models/, the model's BentoML store entry and its MLflow registry copy are each
such a folder, with the same checkpoint bytes: `place` hard-links the checkpoint where the file
system allows, so the bytes are on disk once however many of them name it, and stay there until
the last name is removed. A hard-linked file must never be rewritten in place; none of its owners
does (DVC replaces a file by renaming a new one over it, and protects linked outputs read-only).

This module imports no torch: the service's supervising process uses it.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from collections.abc import Iterable
from pathlib import Path

MODEL_FILE = "model.pt"
ONNX_FILE = "model.onnx"
FILES = (MODEL_FILE, ONNX_FILE)


def place(source: Path, target: Path) -> None:
    """Make `target` a name of the file `source` names (a symbolic link followed): a hard link,
    or a copy where there can be none (another file system, a file system without them)."""
    source = source.resolve()
    target.unlink(missing_ok=True)
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)


def file_hash(path: Path) -> str:
    """sha256 of a file's bytes: the model's identity in MLflow and BentoML."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def hashes(folder: Path, names: Iterable[str] | None = None) -> dict[str, str]:
    """{name: sha256} of the named files in `folder`; without names, of every file under it
    (by its POSIX path relative to the folder)."""
    if names is None:
        names = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
    return {name: file_hash(folder / name) for name in names}
