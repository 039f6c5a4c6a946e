"""The image sources: scikit-learn's digits, and a folder of labelled images of every kind."""

from __future__ import annotations

import csv
import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import Project, encode, stages_run, tiny_params
from image_folders import (
    BAD,
    GOOD,
    add_hostile,
    folder_params,
    make_folder,
    make_split_folder,
    picture,
    png_header,
)
from PIL import Image

from cnnpipe.core import dataset, params, preprocess
from cnnpipe.core.dataset import LABELS_FILE, read_spec, read_split
from cnnpipe.data import parallel, sources
from cnnpipe.data import report as datareport


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
    assert preprocess.FORMAT_NAMES in skipped["fish/netpbm.ppm"]  # Pillow reads it; we do not
    assert "class folder" in skipped["README.txt"]
    # Read in place: the raw folder holds the record, no image; the files are the folder's.
    assert sorted(p.name for p in out.iterdir()) == [dataset.FOLDER_FILE, LABELS_FILE]
    assert dataset.image_folder(out) == root
    rows = dataset.read_raw_table(out / LABELS_FILE)
    assert len(rows) == 13
    for row in rows:
        assert row.file.startswith(f"{row.label}/")
        data = (root / row.file).read_bytes()
        assert row.md5 == hashlib.md5(data).hexdigest()
        assert preprocess.load(root / row.file, 32, 3).shape == (3, 32, 32)
    assert (24, 48) in raw.sizes  # the EXIF-rotated JPEG, counted upright
    assert {"CMYK", "I;16", "P", "LA", "L"} <= set(raw.modes)
    # The same rows, and the same bytes, on two processes, a few images a chunk.
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(parallel, "CHUNK", 2)
        again = sources.write_raw(folder_params(root), tmp_path / "again", processes=2)
    assert (tmp_path / "again" / LABELS_FILE).read_bytes() == (out / LABELS_FILE).read_bytes()
    assert again.skipped == raw.skipped


def test_folder_images_become_their_class_colour(tmp_path):
    root = make_folder(tmp_path / "photos")
    raw = sources.write_raw(folder_params(root), tmp_path / "raw")
    for label, channel in [("cat", 0), ("fish", 2)]:
        for name in raw.files[label]:
            pixels = preprocess.load(root / name, 8, 3).astype(int)
            if pixels.std(axis=0).mean() > 5:  # colour images: their colour dominates
                assert pixels[channel].mean() > pixels.mean() + 20, name


def test_the_data_report_counts_skips_and_sizes(tmp_path):
    root = make_folder(tmp_path / "photos")
    p = folder_params(root)
    raw = sources.write_raw(p, tmp_path / "raw")
    report = datareport.summary(raw, p)
    assert report["images"] == 13 and report["classes"] == 3 and report["skipped"] == len(BAD)
    assert report["images_per_class"] == {"cat": 5, "dog": 4, "fish": 4}
    assert {s["path"] for s in report["skipped_files"]} == {str(root / n) for n in BAD}
    assert report["sizes"]["width"] == {"min": 10, "median": 30.0, "max": 64}
    assert sum(s["images"] for s in report["sizes"]["most_common"]) <= 13
    json.dumps(report)
    grid = datareport.sample_grid(dataset.image_folder(tmp_path / "raw"), raw, 4, cell=32)
    assert grid.height == 3 * 36 + 4 and grid.width > 4 * 36
    cells = np.asarray(grid)[4:36, -36:-4]
    assert cells.std() > 0  # an image was drawn in the last column


def test_the_same_image_in_two_classes_is_reported(tmp_path):
    root = make_folder(tmp_path / "photos")
    (root / "dog" / "copy-of-cat.png").write_bytes((root / "cat" / "a.png").read_bytes())
    (root / "cat" / "copy.png").write_bytes((root / "cat" / "a.png").read_bytes())
    p = folder_params(root)
    report = datareport.summary(sources.write_raw(p, tmp_path / "raw"), p)
    assert report["duplicates_across_classes"] == [
        {
            "classes": ["cat", "dog"],
            "files": ["cat/a.png", "cat/copy.png", "dog/copy-of-cat.png"],
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


@pytest.mark.e2e
def test_a_folder_runs_through_dvc_repro_end_to_end(workspace: Project, tmp_path):
    """Real `dvc repro` on the mixed folder. With entries DVC itself cannot hash (it hangs on a
    FIFO, fails on a socket or a dangling or looping link) the check stage stops it with one line
    within 2 minutes, before DVC reads the folder; without them every bad file is skipped with its
    reason. The folder is generate's DVC dependency: a changed file re-runs it, an unchanged
    folder re-runs nothing and `dvc status` says so."""
    root = make_folder(tmp_path / "photos")
    hostile = add_hostile(root, tmp_path / "elsewhere.png")
    project = workspace
    project.write_params(
        tiny_params(generate={"source": "folder", "folder": str(root)}, train={"epochs": 2})
    )
    # a process of its own, to time out if DVC itself hangs on the FIFO
    refused = project.run(sys.executable, "-m", "dvc", "repro", "process", timeout=120, check=False)
    ours = [line for line in refused.stderr.splitlines() if line.startswith("error:")]
    assert refused.returncode != 0 and len(ours) == 1, refused.stderr
    assert "DVC cannot hash" in ours[0] and str(root / "cat" / "pipe.png") in ours[0]
    assert stages_run(refused.stdout) == []

    for name in hostile:
        if name != "cat/outside.png":  # a link to a file: DVC hashes it, generate skips it
            (root / name).unlink()
    result = project.dvc("repro", "process")
    assert stages_run(result.stdout) == ["generate", "process"]
    for name in [*BAD, "cat/outside.png"]:
        assert f"skipped {root / name}" in result.stdout

    report = json.loads((project.root / "metrics/generate/report.json").read_text())
    skipped = {s["path"] for s in report["skipped_files"]}
    assert skipped == {str(root / n) for n in [*BAD, "cat/outside.png"]}
    assert (project.root / "metrics/generate/samples.png").stat().st_size > 1000
    split = json.loads((project.root / "metrics/process/split.json").read_text())
    assert {c: sum(split[s][c] for s in split) for c in GOOD} == report["images_per_class"]
    spec = read_spec(project.root / "data/processed")
    assert spec.classes == ["cat", "dog", "fish"] and spec.channels == 1

    html = project.root / "plots"
    project.dvc("plots", "show", "-o", str(html))
    assert "samples.png" in (html / "index.html").read_text()

    status = json.loads(project.dvc("status", "--json").stdout)
    assert not {"check", "generate", "process"} & set(status)
    assert stages_run(project.dvc("repro", "process").stdout) == []  # nothing touched, nothing run
    (root / "dog" / "e.png").write_bytes(encode(picture((40, 200, 40), (20, 20), 13), "PNG"))
    assert stages_run(project.dvc("repro", "generate").stdout) == ["generate"]
    with open(project.root / "data/raw" / LABELS_FILE) as f:
        assert sum(1 for _ in f) == 1 + 14
    assert "process" in json.loads(project.dvc("status", "--json").stdout)

    # The layout data sets are downloaded in: train/ and test/, each with the class folders,
    # one test picture also (re-encoded) in train/.
    for label in GOOD:
        (root / "train").mkdir(exist_ok=True)
        (root / label).rename(root / "train" / label)
    make_split_folder(root, {"test": 2}, classes=tuple(GOOD))
    leaked = Image.open(root / "test" / "fish" / "0.png")
    (root / "train" / "fish" / "leaked.png").write_bytes(encode(leaked, "PNG", optimize=True))
    result = project.dvc("repro", "process")
    assert stages_run(result.stdout) == ["generate", "process"]
    (warning,) = [line for line in result.stdout.splitlines() if "warning" in line]
    assert "1 picture(s) are in more than one of the folder's splits" in warning
    report = json.loads((project.root / "metrics/generate/report.json").read_text())
    assert report["layout"] == "train/ + test/ (splits as given)"
    test = read_split(project.root / "data/processed", "test")
    assert sorted(test.files) == sorted(f"test/{label}/{k}.png" for label in GOOD for k in range(2))
    found = json.loads((project.root / "metrics/process/duplicates.json").read_text())
    assert found["groups_across_given_splits"] == 1
    assert found["examples"][0]["files"] == ["train/fish/leaked.png", "test/fish/0.png"]
    raw = project.root / "data/raw"
    assert sorted(p.name for p in raw.iterdir()) == [dataset.FOLDER_FILE, LABELS_FILE]

    # A teammate's clone without the folder: nothing whose only change is the missing folder
    # runs; a stage that must decode it says which folder and what to do, in one line.
    root.rename(tmp_path / "elsewhere")
    assert stages_run(project.dvc("repro", "--allow-missing", "process").stdout) == []
    edited = project.params()
    edited["process"]["seed"] = 1
    project.write_params(edited)
    result = project.dvc("repro", "--allow-missing", "process", check=False)
    assert "Running stage 'check'" in result.stdout and stages_run(result.stdout) == ["process"]
    ours = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(ours) == 1 and f"read from the folder {str(root)!r}, which is not here" in ours[0]
    assert "`dvc pull` it" in ours[0] and "set generate.folder to your copy" in ours[0]


def test_the_generate_stage_imports_neither_torch_nor_mlflow():
    code = (
        "import sys; "
        "import cnnpipe.data.report, cnnpipe.data.sources, cnnpipe.data.split; "
        "print(sorted({'torch', 'mlflow', 'matplotlib', 'sklearn'} & set(sys.modules)))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.stdout.strip() == "[]", result.stderr
