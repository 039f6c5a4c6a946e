"""An image folder as the pipeline reads it (`generate.source: folder`): one subfolder per class.

The folder is a DVC dependency of generate, and DVC cannot hash every folder: a FIFO blocks it
forever; a socket, a device, a dangling or looping link or one that cannot be read fails every
command; a linked folder may lead anywhere (`/`). The check stage, which DVC runs before it
hashes generate's dependencies, lists the folder (`list_folder`) and stops with one line on such
entries (`refuse_unhashable`).

The walk opens nothing but regular files and never leaves the folder: what it cannot take is
skipped with a reason (the data report lists it); hidden files and folders (.DS_Store, .git) are
ignored; files outside a class folder and links to files outside the folder are skipped.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

from cnnpipe.core.dataset import MIN_IMAGES_PER_CLASS
from cnnpipe.core.errors import CnnpipeError
from cnnpipe.core.outputs import atomic_path, scratch_dir
from cnnpipe.core.params import GenerateParams
from cnnpipe.core.stage import progress

_CHUNK = 1 << 20


@dataclass(frozen=True)
class Skipped:
    """A folder entry that is not used, and why (what it is; what to do)."""

    path: str
    reason: str
    hashable: bool = True  # False: DVC hangs or fails on it (the check stage refuses it)


@dataclass
class Listing:
    """The images of a folder: per class, each file (relative to its class folder) and its md5."""

    folder: str
    classes: dict[str, dict[str, str]] = field(default_factory=dict)
    skipped: list[Skipped] = field(default_factory=list)


class NotRegular(OSError):
    """A path that is no longer a regular file."""


def _open_regular(path: Path) -> int:
    """A descriptor of the regular file at path; never blocks on a FIFO that took its place."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise NotRegular(errno.EINVAL, "not a regular file")
    return fd


def read_file(path: Path) -> bytes:
    """A regular file's bytes."""
    with os.fdopen(_open_regular(path), "rb") as f:
        return f.read()


def _md5(path: Path) -> str:
    digest = hashlib.md5()
    with os.fdopen(_open_regular(path), "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _special(mode: int) -> str | None:
    """What a non-file, non-folder entry is, with the fix."""
    for test, what in (
        (stat.S_ISFIFO, "a named pipe (FIFO)"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
    ):
        if test(mode):
            return f"{what}, not an image file; remove it from the folder"
    return None


def _classify(path: Path, root: Path) -> tuple[str, os.stat_result | Skipped]:
    """("file" | "folder", stat) for what the walk takes, else ("skip", why)."""

    def skip(reason: str, hashable: bool = False) -> tuple[str, Skipped]:
        return "skip", Skipped(str(path), reason, hashable)

    try:
        info = path.lstat()
    except OSError as exc:
        return skip(f"cannot be read ({exc.strerror}); check its permissions")
    if stat.S_ISLNK(info.st_mode):
        try:
            target = path.resolve(strict=True)
        except FileNotFoundError:
            return skip(f"a link to {os.readlink(path)}, which does not exist; remove the link")
        except (OSError, RuntimeError):
            return skip("a link that loops back on itself; remove the link")
        info = target.stat()
        if stat.S_ISDIR(info.st_mode):
            where = "" if target.is_relative_to(root) else f" outside the folder ({target})"
            return skip(f"a link to a folder{where}; not followed: copy the images in")
        if not target.is_relative_to(root):
            return skip(
                f"a link to {target}, outside the folder (links are followed only within it); "
                "copy the file in",
                hashable=True,
            )
    if stat.S_ISDIR(info.st_mode):
        return "folder", info
    if stat.S_ISREG(info.st_mode):
        if not os.access(path, os.R_OK):
            return skip("cannot be read (Permission denied); check its permissions")
        return "file", info
    return skip(_special(info.st_mode) or "not a regular file; remove it")


def _walk(folder: Path, root: Path, skipped: list[Skipped]) -> list[tuple[Path, os.stat_result]]:
    """The regular files under folder, in sorted order; what is not taken goes to skipped."""
    try:
        names = sorted(os.listdir(folder))
    except OSError as exc:
        skipped.append(Skipped(str(folder), f"cannot be listed ({exc.strerror})", hashable=False))
        return []
    files = []
    for name in names:
        if name.startswith("."):
            continue
        path = folder / name
        kind, info = _classify(path, root)
        if isinstance(info, Skipped):
            skipped.append(info)
        elif kind == "folder":
            files.extend(_walk(path, root, skipped))
        else:
            files.append((path, info))
    return files


def _layout() -> str:
    return "one subfolder per class, e.g. cat/1.jpg, dog/2.png"


def list_folder(folder: str, hash_cache: Path | None = None) -> Listing:
    """List an image folder: every regular file of each class folder with its md5. Stops with
    one line when the layout cannot give a classifier (no folder, fewer than two classes, a class
    with fewer than MIN_IMAGES_PER_CLASS files). `hash_cache` keeps md5s between runs, keyed by
    file identity, size and modification time, as DVC's own state does."""
    root = Path(folder)
    if not root.exists():
        raise CnnpipeError(
            f"generate.folder: {folder!r} does not exist; create it with {_layout()}, "
            "or set generate.folder to your image folder"
        )
    if not root.is_dir():
        raise CnnpipeError(f"generate.folder: {folder!r} is not a folder; point it at {_layout()}")
    try:
        names = sorted(os.listdir(root))
    except OSError as exc:
        raise CnnpipeError(
            f"generate.folder: {folder!r} cannot be listed ({exc.strerror}); check its permissions"
        ) from None
    real = root.resolve()
    listing = Listing(folder)
    found: dict[str, list[tuple[Path, os.stat_result]]] = {}
    for name in names:
        if name.startswith("."):
            continue
        kind, info = _classify(root / name, real)
        if isinstance(info, Skipped):
            listing.skipped.append(info)
        elif kind == "folder":
            found[name] = _walk(root / name, real, listing.skipped)
        else:
            listing.skipped.append(Skipped(str(root / name), "not inside a class folder; move it"))
    check_layout(folder, {label: len(files) for label, files in found.items()}, "file(s)")
    cache = _read_cache(hash_cache)
    kept: dict[str, list] = {}
    for label, files in found.items():
        listing.classes[label] = {}
        for path, info in files:
            stamp = [info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns]
            key = str(path.resolve())
            try:
                md5 = cache[key][1] if cache.get(key, [None])[0] == stamp else _md5(path)
            except OSError as exc:
                reason = f"cannot be read ({exc.strerror})"
                listing.skipped.append(Skipped(str(path), reason, hashable=False))
                continue
            kept[key] = [stamp, md5]
            listing.classes[label][path.relative_to(root / label).as_posix()] = md5
            if len(kept) % 5000 == 0:
                progress(f"check: {len(kept)} files of {folder} listed")
    _write_cache(hash_cache, kept)
    return listing


def describe_source(params: GenerateParams) -> dict:
    """What the check stage writes, and generate depends on: the source the pipeline reads."""
    if params.source != "folder":
        return {"source": params.source}
    return {"source": "folder", "folder": params.folder}


def refuse_unhashable(listing: Listing, shown: int = 3) -> None:
    """Stop with one line when the folder holds entries DVC hangs or fails on when it hashes
    generate's dependencies."""
    bad = [s for s in listing.skipped if not s.hashable]
    if not bad:
        return
    named = "; ".join(f"{s.path}: {s.reason.split(';')[0]}" for s in bad[:shown])
    more = f" and {len(bad) - shown} more" if len(bad) > shown else ""
    entries = "1 entry" if len(bad) == 1 else f"{len(bad)} entries"
    raise CnnpipeError(
        f"generate.folder: {listing.folder!r} holds {entries} DVC cannot hash (it hangs on a "
        f"named pipe, fails on the others): {named}{more}; "
        "remove them, or point generate.folder at a folder without them"
    )


def hash_cache(root: Path) -> Path | None:
    """Where the md5s of folder files are kept between runs (outside git-tracked trees)."""
    scratch = scratch_dir(root)
    return scratch / "folder-md5.json" if scratch else None


def check_layout(folder: str, counts: dict[str, int], what: str) -> None:
    """Two classes or more, each with MIN_IMAGES_PER_CLASS images (one per split) or more."""
    if not any(counts.values()):
        raise CnnpipeError(f"generate.folder: {folder!r} holds no images; put in it {_layout()}")
    if len(counts) < 2:
        names = ", ".join(counts)
        raise CnnpipeError(
            f"generate.folder: {folder!r} has {len(counts)} class folder ({names}); a "
            f"classifier needs at least 2: add a subfolder of images per class ({_layout()})"
        )
    for label, count in counts.items():
        check_class_size(folder, label, count, what)


def check_class_size(folder: str, label: str, count: int, what: str) -> None:
    """At least MIN_IMAGES_PER_CLASS images in the class: one each for train, val and test."""
    if count < MIN_IMAGES_PER_CLASS:
        raise CnnpipeError(
            f"generate.folder: class {label!r} ({Path(folder) / label}) has {count} {what}; "
            f"each class needs at least {MIN_IMAGES_PER_CLASS} images (one each for train, "
            "val and test): add images to it or remove the folder"
        )


def _read_cache(path: Path | None) -> dict:
    try:
        return json.loads(path.read_text()) if path else {}
    except (OSError, ValueError):
        return {}


def _write_cache(path: Path | None, entries: dict) -> None:
    if path is None:
        return
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(entries))
