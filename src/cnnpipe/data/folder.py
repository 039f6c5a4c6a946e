"""An image folder as the pipeline reads it (`generate.source: folder`): one subfolder per class,
or the layout data sets are downloaded in, `train/` (and `val/`, `test/`) each holding the class
folders, whose splits the process stage then keeps as given.

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


# The split folders a data set may come with (ImageFolder sets, Keras, YOLO classification), by
# the split each one is; a name is matched whatever its case.
SPLIT_FOLDERS = {
    "train": "train",
    "val": "val",
    "valid": "val",
    "validation": "val",
    "test": "test",
}
NO_SPLIT = ""  # the part of a folder of class folders


@dataclass
class Listing:
    """The images of a folder: per part (a split folder such as `train`, or NO_SPLIT for a
    folder of class folders), per class, each file (relative to its class folder) and its md5."""

    folder: str
    parts: dict[str, dict[str, dict[str, str]]] = field(default_factory=dict)
    skipped: list[Skipped] = field(default_factory=list)
    split_of: dict[str, str] = field(default_factory=dict)  # part folder -> train, val or test

    @property
    def classes(self) -> dict[str, dict[str, str]]:
        """Per class, its files in every part (prefixed by the part's folder when split)."""
        merged: dict[str, dict[str, str]] = {}
        for part, classes in self.parts.items():
            for label, files in classes.items():
                prefix = f"{part}/" if part else ""
                merged.setdefault(label, {}).update({prefix + f: m for f, m in files.items()})
        return merged

    @property
    def layout(self) -> str:
        """How the folder is organised, in the words of the data report."""
        if NO_SPLIT in self.parts:
            return "class folders"
        return " + ".join(f"{part}/" for part in self.parts) + " (splits as given)"


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
    return "one subfolder per class, e.g. cat/1.jpg, dog/2.png (or train/cat/1.jpg, test/cat/2.jpg)"


def _top_folders(root: Path, folder: str, listing: Listing) -> dict[str, Path]:
    """The folders at the top of the image folder; loose files and what cannot be taken go to
    the listing's skipped."""
    try:
        names = sorted(os.listdir(root))
    except OSError as exc:
        raise CnnpipeError(
            f"generate.folder: {folder!r} cannot be listed ({exc.strerror}); check its permissions"
        ) from None
    real = root.resolve()
    found = {}
    for name in names:
        if name.startswith("."):
            continue
        kind, info = _classify(root / name, real)
        if isinstance(info, Skipped):
            listing.skipped.append(info)
        elif kind == "folder":
            found[name] = root / name
        else:
            where = "a class folder" if not _splits(found) else "a split's class folder"
            listing.skipped.append(Skipped(str(root / name), f"not inside {where}; move it"))
    return found


def _splits(names: dict[str, Path]) -> dict[str, str]:
    """{folder name: split} of the names that are split folders."""
    return {name: SPLIT_FOLDERS[name.lower()] for name in names if name.lower() in SPLIT_FOLDERS}


def _split_parts(folder: str, top: dict[str, Path]) -> dict[str, str]:
    """The split folders of a top level that has any, checked: only split folders, each split
    once, a train/ among them; one line naming the fix otherwise."""
    splits = _splits(top)
    others = sorted(set(top) - set(splits))
    if others:
        raise CnnpipeError(
            f"generate.folder: {folder!r} mixes split folders ({', '.join(sorted(splits))}) with "
            f"class folders ({', '.join(others[:5])}) at its top level; move every class folder "
            "into train/ (and test/, val/), or rename the split folders if they are classes"
        )
    seen: dict[str, str] = {}
    for name, split in sorted(splits.items()):
        if split in seen:
            raise CnnpipeError(
                f"generate.folder: {folder!r} has both {seen[split]}/ and {name}/, two folders "
                f"of the {split} split; merge them into one"
            )
        seen[split] = name
    if "train" not in seen:
        raise CnnpipeError(
            f"generate.folder: {folder!r} has {', '.join(f'{n}/' for n in sorted(splits))} but "
            "no train/; put the training images in train/<class>/"
        )
    return dict(sorted(splits.items(), key=lambda item: list(SPLIT_FOLDERS).index(item[1])))


def _check_split_classes(folder: str, found: dict[str, dict[str, list]]) -> None:
    """Every split holds the same classes, each with an image: a class missing from a split
    would make its scores meaningless (no test image) or untrainable (no training image)."""
    every = sorted(set().union(*(classes for classes in found.values())))
    for part, classes in found.items():
        missing = [label for label in every if not classes.get(label)]
        if missing:
            named = ", ".join(missing[:5]) + (
                f" and {len(missing) - 5} more" if len(missing) > 5 else ""
            )
            raise CnnpipeError(
                f"generate.folder: {folder!r}: class {named} has no images in {part}/ "
                f"(every split needs every class); add {part}/{missing[0]}/ images, or remove "
                f"the class from every split"
            )


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
    real = root.resolve()
    listing = Listing(folder)
    top = _top_folders(root, folder, listing)
    if _splits(top):
        listing.split_of = _split_parts(folder, top)
        part_folders = {part: root / part for part in listing.split_of}
    else:
        part_folders = {NO_SPLIT: root}
    found: dict[str, dict[str, list[tuple[Path, os.stat_result]]]] = {}
    for part, part_root in part_folders.items():
        class_folders = top if part == NO_SPLIT else _top_folders(part_root, folder, listing)
        found[part] = {
            label: _walk(path, real, listing.skipped) for label, path in class_folders.items()
        }
    counts = {
        part: {label: len(f) for label, f in classes.items()} for part, classes in found.items()
    }
    if listing.split_of:
        _check_split_classes(folder, found)
    check_layout(folder, counts, "file(s)", listing.split_of)
    cache = _read_cache(hash_cache)
    kept: dict[str, list] = {}
    for part, classes in found.items():
        listing.parts[part] = {}
        for label, files in classes.items():
            listing.parts[part][label] = {}
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
                relative = path.relative_to(part_folders[part] / label).as_posix()
                listing.parts[part][label][relative] = md5
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


def check_layout(
    folder: str, counts: dict[str, dict[str, int]], what: str, split_of: dict[str, str]
) -> None:
    """Two classes or more, each with enough images in every part (see needed_images).
    `counts` is {part: {class: images}}."""
    labels = {label for part in counts.values() for label in part}
    if not any(n for part in counts.values() for n in part.values()):
        raise CnnpipeError(f"generate.folder: {folder!r} holds no images; put in it {_layout()}")
    if len(labels) < 2:
        names = ", ".join(sorted(labels))
        raise CnnpipeError(
            f"generate.folder: {folder!r} has {len(labels)} class folder ({names}); a "
            f"classifier needs at least 2: add a subfolder of images per class ({_layout()})"
        )
    for part, classes in counts.items():
        for label, count in classes.items():
            check_class_size(folder, label, count, what, part, split_of)


def needed_images(part: str, split_of: dict[str, str]) -> int:
    """The images a class needs in a part: one for each split made from it. A folder of class
    folders gives all three; a split folder its own, and train/ those the folder lacks."""
    if part == NO_SPLIT:
        return MIN_IMAGES_PER_CLASS
    if split_of[part] != "train":
        return 1
    given = set(split_of.values())
    return 1 + sum(split not in given for split in ("val", "test"))


def check_class_size(
    folder: str, label: str, count: int, what: str, part: str = NO_SPLIT, split_of=None
) -> None:
    """At least needed_images(part) images of the class in the part."""
    needed = needed_images(part, split_of or {})
    if count >= needed:
        return
    if part == NO_SPLIT:
        raise CnnpipeError(
            f"generate.folder: class {label!r} ({Path(folder) / label}) has {count} {what}; "
            f"each class needs at least {MIN_IMAGES_PER_CLASS} images (one each for train, "
            "val and test): add images to it or remove the folder"
        )
    missing = [s for s in ("val", "test") if s not in set((split_of or {}).values())]
    carved = f", and one for each split made from it ({', '.join(missing)})" if missing else ""
    raise CnnpipeError(
        f"generate.folder: class {label!r} ({Path(folder) / part / label}) has {count} {what}; "
        f"it needs at least {needed} in {part}/ (one to train on{carved}): add images to it"
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
