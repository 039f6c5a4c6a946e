"""The folder walk and listing: what is taken, what is skipped and why, the md5 cache, and the
layout checks, before any image is decoded."""

from __future__ import annotations

import hashlib
import json
import threading
from pathlib import Path

import pytest
from conftest import encode
from image_folders import BAD, GOOD, add_hostile, folder_params, make_folder, picture

from cnnpipe.core.dataset import LABELS_FILE
from cnnpipe.core.errors import CnnpipeError
from cnnpipe.data import folder, sources


def listed_within(root: Path, seconds: float) -> folder.Listing:
    """list_folder, failing the test (not hanging it) if the walk blocks."""
    result: list = []
    walker = threading.Thread(target=lambda: result.append(folder.list_folder(str(root))))
    walker.daemon = True
    walker.start()
    walker.join(seconds)
    assert result, f"listing {root} took over {seconds} s"
    return result[0]


def test_what_dvc_cannot_hash_is_skipped_with_a_reason_and_nothing_hangs(tmp_path):
    root = make_folder(tmp_path / "photos")
    reasons = add_hostile(root, tmp_path / "elsewhere.png")
    (root / "cat" / "again.png").symlink_to("a.png")  # a link within the folder is followed
    listing = listed_within(root, 10)
    skipped = {Path(s.path).relative_to(root).as_posix(): s for s in listing.skipped}
    unhashable = {name for name, s in skipped.items() if not s.hashable}
    assert unhashable == set(reasons) - {"cat/outside.png"}  # DVC hashes a linked file
    for name, reason in reasons.items():
        assert reason in skipped.pop(name).reason, (name, skipped)
    assert set(skipped) == {"README.txt"}  # the loose file; bad images are met when decoded
    assert listing.classes["cat"]["again.png"] == listing.classes["cat"]["a.png"]
    assert set(listing.classes) == set(GOOD)
    raw = sources.write_raw(folder_params(root), tmp_path / "raw", listing)
    assert raw.counts == {"cat": 6, "dog": 4, "fish": 4}
    assert {s.path for s in raw.skipped} == {str(root / n) for n in [*reasons, *BAD]}


def test_the_check_names_what_dvc_cannot_hash_and_the_fix_in_one_line(tmp_path):
    root = make_folder(tmp_path / "photos")
    assert folder.refuse_unhashable(folder.list_folder(str(root))) is None  # bad images: fine
    reasons = add_hostile(root, tmp_path / "elsewhere.png")
    with pytest.raises(CnnpipeError) as caught:
        folder.refuse_unhashable(listed_within(root, 10))
    message = str(caught.value)
    assert "\n" not in message and f"holds {len(reasons) - 1} entries DVC cannot hash" in message
    assert str(root / "cat" / "pipe.png") in message and "a named pipe (FIFO)" in message
    assert message.endswith("remove them, or point generate.folder at a folder without them")


def test_md5s_come_from_the_cache_until_a_file_changes(tmp_path):
    root = make_folder(tmp_path / "photos")
    cache = tmp_path / "md5.json"
    first = folder.list_folder(str(root), cache)
    stored = json.loads(cache.read_text())
    assert len(stored) == sum(len(files) for files in first.classes.values())
    marked = {key: [stamp, "0" * 32] for key, (stamp, _) in stored.items()}
    cache.write_text(json.dumps(marked))  # what a cache hit returns
    assert set(folder.list_folder(str(root), cache).classes["cat"].values()) == {"0" * 32}
    (root / "cat" / "a.png").write_bytes(b"changed")
    again = folder.list_folder(str(root), cache).classes["cat"]
    assert again["a.png"] == hashlib.md5(b"changed").hexdigest()  # re-read: size and time moved
    assert again["b.jpg"] == "0" * 32


def layout_error(root: Path) -> str:
    with pytest.raises(CnnpipeError) as caught:
        sources.write_raw(folder_params(root), root.parent / "raw")
    assert not (root.parent / "raw" / LABELS_FILE).exists()
    return str(caught.value)


def test_a_missing_folder_is_named_with_the_fix(tmp_path):
    message = layout_error(tmp_path / "nowhere")
    assert "nowhere" in message and "does not exist" in message and "generate.folder" in message


def test_a_folder_without_images_is_refused(tmp_path):
    (tmp_path / "photos" / "cat").mkdir(parents=True)
    (tmp_path / "photos" / "dog").mkdir()
    assert "holds no images" in layout_error(tmp_path / "photos")


def test_a_folder_with_one_class_is_refused(tmp_path):
    root = tmp_path / "photos"
    for n in range(5):
        (root / "cat").mkdir(parents=True, exist_ok=True)
        (root / "cat" / f"{n}.png").write_bytes(encode(picture((0, 0, 0), (8, 8), n), "PNG"))
    message = layout_error(root)
    assert "1 class folder (cat)" in message and "at least 2" in message


def test_a_class_with_too_few_files_is_refused_before_decoding(tmp_path):
    root = make_folder(tmp_path / "photos")
    (root / "bird").mkdir()
    (root / "bird" / "only.png").write_bytes(b"not even read")
    message = layout_error(root)
    assert "'bird'" in message and "1 file(s)" in message and "at least 3" in message


def test_a_class_left_with_too_few_readable_images_is_refused(tmp_path):
    root = make_folder(tmp_path / "photos")
    (root / "bird").mkdir()
    (root / "bird" / "1.png").write_bytes(GOOD["cat"]["a.png"]())
    (root / "bird" / "2.png").write_bytes(b"")
    (root / "bird" / "3.png").write_bytes(b"text")
    message = layout_error(root)
    assert "'bird'" in message and "1 readable images (2 skipped)" in message


def test_a_folder_with_train_and_test_folders_keeps_its_splits(tmp_path):
    from image_folders import make_split_folder

    from cnnpipe.core.dataset import read_raw_table
    from cnnpipe.data import report as datareport

    root = make_split_folder(tmp_path / "photos", {"train": 4, "Test": 2})
    listing = folder.list_folder(str(root))
    assert listing.split_of == {"train": "train", "Test": "test"}
    assert set(listing.parts["train"]) == set(listing.parts["Test"]) == {"cat", "dog"}
    assert "train/ + Test/" in listing.layout
    raw = sources.write_raw(folder_params(root), tmp_path / "raw", listing)
    rows = read_raw_table(tmp_path / "raw" / LABELS_FILE)
    assert {(r.label, r.split) for r in rows if r.file.startswith("Test/")} == {
        ("cat", "test"),
        ("dog", "test"),
    }
    assert sum(r.split == "train" for r in rows) == 8 and all(r.phash and r.colour for r in rows)
    summary = datareport.summary(raw, folder_params(root))
    assert summary["layout"] == listing.layout
    assert summary["images_per_given_split"] == {
        "train": {"cat": 4, "dog": 4},
        "test": {"cat": 2, "dog": 2},
    }


@pytest.mark.parametrize(
    ("splits", "expected"),
    [
        ({"train": 3, "cat": 3}, "mixes split folders (train) with class folders (cat)"),
        ({"val": 3, "test": 3}, "has test/, val/ but no train/"),
        ({"train": 3, "val": 1, "validation": 1}, "has both val/ and validation/"),
        ({"train": 1, "test": 1}, "it needs at least 2 in train/ (one to train on, and one for"),
    ],
)
def test_a_split_layout_that_cannot_be_used_stops_with_one_line(tmp_path, splits, expected):
    from image_folders import make_split_folder

    root = tmp_path / "photos"
    for name, n in splits.items():
        if name == "cat":  # a class folder beside the split folders
            make_split_folder(tmp_path / "other", {"x": n}, classes=("cat",))
            (tmp_path / "other" / "x" / "cat").rename(root / "cat")
        else:
            make_split_folder(root, {name: n})
    message = layout_error(root)
    assert expected in message and "\n" not in message and "generate.folder" in message


def test_a_class_missing_from_a_split_is_named(tmp_path):
    from image_folders import make_split_folder

    root = make_split_folder(tmp_path / "photos", {"train": 3, "test": 1}, ("cat", "dog", "fish"))
    for image in (root / "test" / "fish").iterdir():
        image.unlink()
    message = layout_error(root)
    assert "class fish has no images in test/" in message and "add test/fish/ images" in message
