"""The images `cnnpipe predict` reads, decoded in parallel, and the folders it sorts them into.

Decoding is the pipeline's own (cnnpipe.core.preprocess.load, as the process stage and the
service decode), in a pool of one process per core started before the model is loaded (forked
while the process is still small and has no runtime threads), a window of files at a time so
that memory stays bounded when the model is slower than the decoding; the results come back in
the order of the files.
"""

from __future__ import annotations

import filecmp
import functools
import glob
import multiprocessing
import os
import shutil
import signal
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from multiprocessing.pool import Pool
from pathlib import Path

import numpy as np
from PIL import Image

from cnnpipe.core import preprocess
from cnnpipe.core.errors import CnnpipeError

CHUNK = 16  # files per task of a decoding process
WINDOW = 4096  # files decoded ahead of the model at most


def image_suffixes() -> set[str]:
    """The file name suffixes PIL reads (.png, .jpg, .jpeg, .webp, .tif, ...)."""
    return {suffix.lower() for suffix in Image.registered_extensions()}


def find_images(patterns: Sequence[str]) -> list[Path]:
    """The files named by each pattern, in order and once each: a file as it is, a folder's
    image files (by suffix, recursively, sorted, hidden ones left out), a glob's matches
    (`**` spans folders) likewise. A pattern that names nothing raises CnnpipeError."""
    suffixes = image_suffixes()
    found: dict[Path, None] = {}
    for pattern in patterns:
        path = Path(pattern)
        matches = (
            [path]
            if path.exists()
            else [Path(m) for m in sorted(glob.glob(pattern, recursive=True))]
        )
        if not matches:
            raise CnnpipeError(f"{pattern}: no such file or folder, and no file matches it")
        for match in matches:
            if match.is_dir():
                found.update(dict.fromkeys(_images_under(match, suffixes)))
            elif match.is_file() and (match == path or match.suffix.lower() in suffixes):
                found[match] = None
    return list(found)


def _images_under(folder: Path, suffixes: set[str]) -> list[Path]:
    images = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        images += [
            Path(root) / name
            for name in sorted(files)
            if not name.startswith(".") and Path(name).suffix.lower() in suffixes
        ]
    return images


def decode(path: Path, size: int, channels: int) -> np.ndarray | str:
    """The model input of one file, or why it cannot be read."""
    try:
        return preprocess.load(path, size, channels)
    except CnnpipeError as exc:
        return str(exc)
    except OSError as exc:  # a folder vanished, a device error: that file only
        return f"the file cannot be read ({exc})"


@contextmanager
def decoders(processes: int) -> Iterator[Pool | None]:
    """A pool of decoding processes (None for one: decoded in this process)."""
    if processes <= 1:
        yield None
        return
    pool = multiprocessing.get_context("fork").Pool(processes, _worker_signals)
    try:
        yield pool
    finally:
        pool.terminate()
        pool.join()


def _worker_signals() -> None:
    """A decoding process leaves Ctrl-C (sent to the whole process group) to the main process,
    which stops the pool, and dies at once on the SIGTERM that stops it: the handler it
    inherited (cnnpipe.core.processes) would unwind it and could leave it waiting on the
    pool's queue, and the main process waiting on it."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def decoded(
    paths: Sequence[Path], size: int, channels: int, pool: Pool | None
) -> Iterator[np.ndarray | str]:
    """decode() of every path, in order."""
    work = functools.partial(decode, size=size, channels=channels)
    for start in range(0, len(paths), WINDOW):
        window = paths[start : start + WINDOW]
        yield from (pool.imap(work, window, CHUNK) if pool is not None else map(work, window))


def sort_into(path: Path, folder: Path, link: bool) -> Path:
    """Put a copy of `path` (a hard link if `link` and the file system allows) into `folder`,
    under its own name, or its name with -1, -2 ... when another file has that name; the same
    file sorted again is left as it is. Returns where it went."""
    folder.mkdir(parents=True, exist_ok=True)
    target, n = folder / path.name, 0
    while target.exists():
        if filecmp.cmp(path, target, shallow=False):
            return target
        n += 1
        target = folder / f"{path.stem}-{n}{path.suffix}"
    temporary = folder / f".{target.name}.tmp-{os.getpid()}"
    try:
        if link:
            try:
                os.link(path, temporary)
            except OSError:  # another file system, or one without hard links
                shutil.copy2(path, temporary)
        else:
            shutil.copy2(path, temporary)
        os.replace(temporary, target)
    finally:
        temporary.unlink(missing_ok=True)
    return target
