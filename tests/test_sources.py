"""The image sources: scikit-learn's digits, and a folder of labelled images of every kind."""

from __future__ import annotations

import csv
import hashlib
import json
import os
import socket
import stat
import struct
import subprocess
import sys
import threading
import zlib
from pathlib import Path

import numpy as np
import pytest
from conftest import Project, encode, stages_run, tiny_params
from PIL import Image

from cnnpipe.core import params, preprocess
from cnnpipe.core.dataset import LABELS_FILE, read_spec
from cnnpipe.core.errors import CnnpipeError
from cnnpipe.data import folder, sources
from cnnpipe.data import report as datareport


def picture(colour: tuple[int, int, int], size: tuple[int, int], seed: int) -> Image.Image:
    """A coloured canvas with some noise, so every file differs."""
    rng = np.random.default_rng(seed)
    pixels = np.clip(np.array(colour) + rng.normal(0, 20, (size[1], size[0], 3)), 0, 255)
    return Image.fromarray(pixels.astype(np.uint8))


def sixteen_bit(size: tuple[int, int], level: int) -> Image.Image:
    return Image.fromarray(np.full((size[1], size[0]), level, dtype=np.uint16))


def rotated_jpeg(colour: tuple[int, int, int]) -> bytes:
    image = picture(colour, (48, 24), 9)
    exif = image.getexif()
    exif[0x0112] = 6
    return encode(image, "JPEG", exif=exif.tobytes())


GOOD = {
    "cat": {  # reddish
        "a.png": lambda: encode(picture((220, 40, 40), (40, 30), 1), "PNG"),
        "b.jpg": lambda: encode(picture((220, 40, 40), (64, 64), 2).convert("L"), "JPEG"),
        "c.bmp": lambda: encode(picture((220, 40, 40), (33, 17), 3), "BMP"),
        "d.gif": lambda: encode(picture((220, 40, 40), (20, 20), 4).convert("P"), "GIF"),
        "nested/e.jpeg": rotated_jpeg((220, 40, 40)),
    },
    "dog": {  # greenish
        "a.webp": lambda: encode(picture((40, 200, 40), (50, 40), 5).convert("RGBA"), "WEBP"),
        "b.tif": lambda: encode(sixteen_bit((30, 30), 30000), "TIFF"),
        "c.jpg": lambda: encode(picture((40, 200, 40), (25, 60), 6).convert("CMYK"), "JPEG"),
        "d.png": lambda: encode(
            picture((40, 200, 40), (16, 16), 7).convert("P"), "PNG", transparency=0
        ),
    },
    "fish": {  # bluish
        "a.tiff": lambda: encode(picture((40, 40, 220), (32, 32), 8).convert("CMYK"), "TIFF"),
        "b.png": lambda: encode(sixteen_bit((24, 24), 50000), "PNG"),
        "c.png": lambda: encode(picture((40, 40, 220), (30, 20), 10).convert("LA"), "PNG"),
        "d.BMP": lambda: encode(picture((40, 40, 220), (10, 40), 11), "BMP"),
    },
}
BAD = {
    "cat/empty.png": lambda: b"",
    "dog/notes.txt": lambda: b"these are not pixels\n",
    "fish/truncated.png": lambda: encode(picture((40, 40, 220), (64, 64), 12), "PNG")[:3000],
    "README.txt": lambda: b"class folders below\n",
}


def make_folder(root: Path) -> Path:
    """Three classes of images in six formats and many modes, plus bad and hidden files."""
    for label, files in GOOD.items():
        for name, data in files.items():
            path = root / label / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data() if callable(data) else data)
    for name, data in BAD.items():
        (root / name).write_bytes(data())
    (root / "cat" / ".DS_Store").write_bytes(b"\0\1")
    (root / ".hidden").mkdir()
    (root / ".hidden" / "x.png").write_bytes(GOOD["cat"]["a.png"]())
    return root


def add_hostile(root: Path, outside: Path) -> dict[str, str]:
    """Entries DVC cannot hash (it hangs on a FIFO, fails on a socket or a dangling or looping
    link) or that lead out of the folder; returns each one's expected reason."""
    os.mkfifo(root / "cat" / "pipe.png")
    with socket.socket(socket.AF_UNIX) as listening:
        listening.bind(str(root / "dog" / "socket.png"))
    (root / "fish" / "dangling.png").symlink_to("missing.png")
    (root / "fish" / "loop.png").symlink_to("loop.png")
    (root / "everything").symlink_to("/")  # a class folder linked outside the tree
    outside.write_bytes(GOOD["cat"]["a.png"]())
    (root / "cat" / "outside.png").symlink_to(outside)
    (root / "dog" / "cats").symlink_to("../cat")
    reasons = {
        "cat/pipe.png": "a named pipe (FIFO)",
        "dog/socket.png": "a socket",
        "fish/dangling.png": "a link to missing.png, which does not exist",
        "fish/loop.png": "a link that loops",
        "everything": "a link to /, outside the folder",
        "cat/outside.png": f"a link to {outside}, outside the folder",
        "dog/cats": "a link to a folder",
    }
    try:
        os.mknod(root / "fish" / "null.png", stat.S_IFCHR | 0o600, os.makedev(1, 3))
        reasons["fish/null.png"] = "a character device"
    except PermissionError:  # no CAP_MKNOD here
        pass
    return reasons


def png_header(width: int, height: int) -> bytes:
    """A PNG that declares its size and holds (almost) no pixels."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = struct.pack(">I", zlib.crc32(kind + data))
        return struct.pack(">I", len(data)) + kind + data + crc

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b"")


def listed_within(root: Path, seconds: float) -> folder.Listing:
    """list_folder, failing the test (not hanging it) if the walk blocks."""
    result: list = []
    walker = threading.Thread(target=lambda: result.append(folder.list_folder(str(root))))
    walker.daemon = True
    walker.start()
    walker.join(seconds)
    assert result, f"listing {root} took over {seconds} s"
    return result[0]


def folder_params(root: Path) -> params.GenerateParams:
    return params.parse({"generate": {"source": "folder", "folder": str(root)}}).generate


def test_digits_are_scikit_learns_1797_images_with_their_labels(tmp_path):
    from sklearn.datasets import load_digits

    raw = sources.write_raw(params.parse({"generate": {"source": "digits"}}).generate, tmp_path)
    digits = load_digits()
    with open(tmp_path / LABELS_FILE, newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 1797 == sum(raw.counts.values())
    assert sorted(raw.counts) == [str(d) for d in range(10)]
    by_name = {Path(r["file"]).name: r for r in rows}
    for index in range(len(digits.images)):
        row = by_name[f"digit_{index:05d}.png"]
        assert row["label"] == str(digits.target[index])
        pixels = np.asarray(Image.open(tmp_path / row["file"]))
        assert np.array_equal(pixels, np.round(digits.images[index] * 255 / 16))
    assert raw.sizes == {(8, 8): 1797}


def test_a_folder_keeps_every_readable_image_and_skips_the_rest(tmp_path):
    root = make_folder(tmp_path / "photos")
    out = tmp_path / "raw"
    raw = sources.write_raw(folder_params(root), out)
    assert raw.counts == {"cat": 5, "dog": 4, "fish": 4}
    skipped = {Path(s.path).relative_to(root).as_posix(): s.reason for s in raw.skipped}
    assert set(skipped) == set(BAD)
    assert "empty" in skipped["cat/empty.png"] or "not a readable" in skipped["cat/empty.png"]
    assert "not a readable image" in skipped["dog/notes.txt"]
    assert "truncated" in skipped["fish/truncated.png"]
    assert "class folder" in skipped["README.txt"]
    with open(out / LABELS_FILE, newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 13
    for row in rows:
        name = Path(row["file"]).relative_to(f"images/{row['label']}").as_posix()
        original = root / row["label"] / name
        assert (out / row["file"]).read_bytes() == original.read_bytes()  # copied as is
        assert preprocess.load(out / row["file"], 32, 3).shape == (3, 32, 32)
    assert (24, 48) in raw.sizes  # the EXIF-rotated JPEG, counted upright
    assert {"CMYK", "I;16", "P", "LA", "L"} <= set(raw.modes)


def test_folder_images_become_their_class_colour(tmp_path):
    root = make_folder(tmp_path / "photos")
    out = tmp_path / "raw"
    raw = sources.write_raw(folder_params(root), out)
    for label, channel in [("cat", 0), ("fish", 2)]:
        for name in raw.files[label]:
            pixels = preprocess.load(out / name, 8, 3).astype(int)
            if pixels.std(axis=0).mean() > 5:  # colour images: their colour dominates
                assert pixels[channel].mean() > pixels.mean() + 20, name


def test_the_data_report_counts_skips_and_sizes(tmp_path):
    root = make_folder(tmp_path / "photos")
    p = folder_params(root)
    raw = sources.write_raw(p, tmp_path / "raw")
    report = datareport.summary(raw, p)
    assert report["images"] == 13 and report["classes"] == 3 and report["skipped"] == 4
    assert report["images_per_class"] == {"cat": 5, "dog": 4, "fish": 4}
    assert {s["path"] for s in report["skipped_files"]} == {str(root / n) for n in BAD}
    assert report["sizes"]["width"] == {"min": 10, "median": 30.0, "max": 64}
    assert sum(s["images"] for s in report["sizes"]["most_common"]) <= 13
    json.dumps(report)
    grid = datareport.sample_grid(tmp_path / "raw", raw, per_class=4, cell=32)
    assert grid.height == 3 * 36 + 4 and grid.width > 4 * 36
    cells = np.asarray(grid)[4:36, -36:-4]
    assert cells.std() > 0  # an image was drawn in the last column


def test_what_dvc_cannot_hash_is_skipped_with_a_reason_and_nothing_hangs(tmp_path):
    root = make_folder(tmp_path / "photos")
    reasons = add_hostile(root, tmp_path / "elsewhere.png")
    (root / "cat" / "again.png").symlink_to("a.png")  # a link within the folder is followed
    listing = listed_within(root, 10)
    skipped = {Path(s.path).relative_to(root).as_posix(): s.reason for s in listing.skipped}
    for name, reason in reasons.items():
        assert reason in skipped.pop(name), (name, skipped)
    assert set(skipped) == {"README.txt"}  # the loose file; bad images are met when decoded
    assert listing.classes["cat"]["again.png"] == listing.classes["cat"]["a.png"]
    assert set(listing.classes) == set(GOOD)
    raw = sources.write_raw(folder_params(root), tmp_path / "raw", listing)
    assert raw.counts == {"cat": 6, "dog": 4, "fish": 4}
    assert {s.path for s in raw.skipped} == {str(root / n) for n in [*reasons, *BAD]}


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


def test_the_same_image_in_two_classes_is_reported(tmp_path):
    root = make_folder(tmp_path / "photos")
    (root / "dog" / "copy-of-cat.png").write_bytes((root / "cat" / "a.png").read_bytes())
    (root / "cat" / "copy.png").write_bytes((root / "cat" / "a.png").read_bytes())
    p = folder_params(root)
    report = datareport.summary(sources.write_raw(p, tmp_path / "raw"), p)
    assert report["duplicates_across_classes"] == [
        {
            "classes": ["cat", "dog"],
            "files": ["images/cat/a.png", "images/cat/copy.png", "images/dog/copy-of-cat.png"],
        }
    ]


def test_an_oversized_image_is_skipped_as_too_large_not_as_truncated(tmp_path):
    root = make_folder(tmp_path / "photos")
    (root / "cat" / "huge.png").write_bytes(png_header(30000, 30000))
    (root / "cat" / "big.png").write_bytes(png_header(9000, 9000))
    raw = sources.write_raw(folder_params(root), tmp_path / "raw")
    reasons = {Path(s.path).name: s.reason for s in raw.skipped}
    assert reasons["huge.png"].startswith("the image is 900000000 pixels, over the limit of")
    assert reasons["big.png"].startswith("the image is 9000x9000 = 81000000 pixels, over")
    assert "truncated" not in reasons["huge.png"] + reasons["big.png"]


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


@pytest.mark.e2e
def test_a_folder_runs_through_dvc_repro_end_to_end(workspace: Project, tmp_path):
    """Real `dvc repro` on the mixed folder, with entries DVC itself cannot hash (it hangs on a
    FIFO, fails on a socket or a dangling or looping link): within 2 minutes, every bad entry
    skipped with its reason. generate depends on the check stage's listing of the folder, so a
    changed file re-runs it and an unchanged folder re-runs nothing."""
    root = make_folder(tmp_path / "photos")
    hostile = add_hostile(root, tmp_path / "elsewhere.png")
    project = workspace
    project.write_params(
        tiny_params(generate={"source": "folder", "folder": str(root)}, train={"epochs": 2})
    )
    dvc = (sys.executable, "-m", "dvc")
    result = project.run(*dvc, "repro", "process", timeout=120)
    assert stages_run(result.stdout) == ["generate", "process"]
    for name in [*BAD, *hostile]:
        assert f"skipped {root / name}" in result.stdout

    report = json.loads((project.root / "metrics/generate/report.json").read_text())
    skipped = {s["path"] for s in report["skipped_files"]}
    assert skipped == {str(root / n) for n in [*BAD, *hostile]}
    assert (project.root / "metrics/generate/samples.png").stat().st_size > 1000
    split = json.loads((project.root / "metrics/process/split.json").read_text())
    assert {c: sum(split[s][c] for s in split) for c in GOOD} == report["images_per_class"]
    spec = read_spec(project.root / "data/processed")
    assert spec.classes == ["cat", "dog", "fish"] and spec.channels == 1

    html = project.root / "plots"
    project.dvc("plots", "show", "-o", str(html))
    assert "samples.png" in (html / "index.html").read_text()

    status = project.run(*dvc, "status", "--json", timeout=60)  # DVC never reads the folder
    status = json.loads(status.stdout)
    assert status["check"] == ["always changed"] and not {"generate", "process"} & set(status)
    assert stages_run(project.dvc("repro", "process").stdout) == []  # nothing touched, nothing run
    (root / "dog" / "e.png").write_bytes(encode(picture((40, 200, 40), (20, 20), 13), "PNG"))
    assert stages_run(project.dvc("repro", "generate").stdout) == ["generate"]
    with open(project.root / "data/raw" / LABELS_FILE) as f:
        assert sum(1 for _ in f) == 1 + 14
    assert "process" in json.loads(project.dvc("status", "--json").stdout)


def test_the_generate_stage_imports_neither_torch_nor_mlflow():
    code = (
        "import sys; "
        "import cnnpipe.data.report, cnnpipe.data.sources, cnnpipe.data.split; "
        "print(sorted({'torch', 'mlflow', 'matplotlib', 'sklearn'} & set(sys.modules)))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.stdout.strip() == "[]", result.stderr
