"""The image sources: scikit-learn's digits, and a folder of labelled images of every kind."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import Project, encode, stages_run, tiny_params
from PIL import Image

from cnnpipe.core import params, preprocess
from cnnpipe.core.dataset import LABELS_FILE, read_spec
from cnnpipe.core.errors import CnnpipeError
from cnnpipe.data import report as datareport
from cnnpipe.data import sources


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
    """Real `dvc repro` on the mixed folder; the folder is a DVC dependency."""
    root = make_folder(tmp_path / "photos")
    project = workspace
    project.write_params(
        tiny_params(generate={"source": "folder", "folder": str(root)}, train={"epochs": 2})
    )
    result = project.dvc("repro", "process")
    assert stages_run(result.stdout) == ["generate", "process"]
    for name in BAD:
        assert f"skipped {root / name}" in result.stdout

    report = json.loads((project.root / "metrics/generate/report.json").read_text())
    assert {s["path"] for s in report["skipped_files"]} == {str(root / n) for n in BAD}
    assert (project.root / "metrics/generate/samples.png").stat().st_size > 1000
    split = json.loads((project.root / "metrics/process/split.json").read_text())
    assert {c: sum(split[s][c] for s in split) for c in GOOD} == report["images_per_class"]
    spec = read_spec(project.root / "data/processed")
    assert spec.classes == ["cat", "dog", "fish"] and spec.channels == 1

    html = project.root / "plots"
    project.dvc("plots", "show", "-o", str(html))
    assert "samples.png" in (html / "index.html").read_text()

    assert stages_run(project.dvc("repro", "process").stdout) == []  # nothing touched, nothing run
    (root / "dog" / "e.png").write_bytes(encode(picture((40, 200, 40), (20, 20), 13), "PNG"))
    status = json.loads(project.dvc("status", "--json").stdout)
    assert {"changed deps": {str(root): "modified"}} in status["generate"]
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
