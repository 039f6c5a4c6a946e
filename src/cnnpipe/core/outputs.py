"""Outputs appear complete or not at all: written under a temporary name, renamed when done.

The temporary copy lives in `.dvc/tmp/cnnpipe/` of the DVC project holding the output: git ignores
it (a temporary copy of a report under git-tracked metrics/ would otherwise be picked up by
`git add -A`, or staged by dvclive inside `dvc exp run`), and it is on the same file system, so the
final rename is atomic. Where it is not (an output folder on another disk, or no DVC project), the
copy goes next to the output under a hidden name. Each name ends in the writer's pid; copies left
by a killed process are removed by the next writer.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from cnnpipe.core.processes import pid_alive, uninterrupted

SCRATCH = Path(".dvc/tmp/cnnpipe")
_TEMPORARY = re.compile(r"^\..+\.tmp-(?:[0-9a-f]+-)?(\d+)$")  # hidden, ends in the writer's pid


def scratch_dir(near: Path) -> Path | None:
    """`.dvc/tmp/cnnpipe` of the DVC project holding `near` (an existing folder), or None."""
    here = near.resolve()
    for folder in (here, *here.parents):
        if (folder / ".dvc").is_dir():
            return folder / SCRATCH
    return None


def _temporary_home(path: Path) -> Path:
    scratch = scratch_dir(path.parent)
    if scratch is not None:
        scratch.mkdir(parents=True, exist_ok=True)
        if scratch.stat().st_dev == path.parent.stat().st_dev:
            return scratch
    return path.parent


@contextmanager
def atomic_path(path: Path | str) -> Iterator[Path]:
    """Yield a temporary path to write `path` into (a file or a directory); on success it replaces
    `path`, on failure (an exception, SIGTERM) it is removed and `path` is left as it was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    home = _temporary_home(path)
    sweep(home)
    if home != path.parent:
        sweep(path.parent)
    # Unique within the folder, and all after the last dot: torch.save names the archive inside
    # a checkpoint after its file's name up to the last dot, so the bytes do not depend on it.
    tmp = home / f".{path.name}.tmp-{secrets.token_hex(4)}-{os.getpid()}"
    try:
        yield tmp
        with uninterrupted():  # never the old output removed and the new one not in place
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            os.replace(tmp, path)
    finally:
        _remove(tmp)


def sweep(folder: Path) -> list[Path]:
    """Remove the temporary outputs in `folder` whose writer is gone; return them."""
    removed = []
    for entry in folder.iterdir() if folder.is_dir() else ():
        match = _TEMPORARY.match(entry.name)
        if match and not pid_alive(int(match.group(1))):
            _remove(entry)
            removed.append(entry)
    return removed


def write_json(path: Path | str, data: object) -> None:
    """Write JSON atomically, keys sorted so equal data gives equal bytes."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists() or path.is_symlink():
        path.unlink(missing_ok=True)
