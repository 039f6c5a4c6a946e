"""`cnnpipe predict`: files, folders and globs; the service's answers (labels, "unknown",
probabilities) from the packaged model or a checkpoint; unreadable files listed, never fatal;
CSV, JSON and Parquet; sorting into folders; the exit status. tests/test_server.py compares its
answers with a real `bentoml serve`."""

from __future__ import annotations

import csv
import functools
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from conftest import REPO, encode
from service_fixtures import stored_model, stranger, truncated

from cnnpipe import cli
from cnnpipe.core import preprocess, processes
from cnnpipe.core.errors import CnnpipeError
from cnnpipe.predict import files
from cnnpipe.serve import record as package_record
from cnnpipe.serve import runtime
from cnnpipe.serve.contract import answer


@pytest.fixture(scope="module")
def stored(tmp_path_factory) -> dict:
    return stored_model(tmp_path_factory.mktemp("predict"))


@pytest.fixture(scope="module")
def pictures(stored, tmp_path_factory) -> Path:
    """The test images in their class folders, a checkerboard, a truncated PNG and a text file."""
    folder = tmp_path_factory.mktemp("pictures")
    for name in stored["test"].files:
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(stored["raw"] / name, folder / name)
    (folder / "checkerboard.png").write_bytes(encode(stranger()))
    (folder / "broken.png").write_bytes(truncated("PNG"))
    (folder / "notes.txt").write_text("not an image")
    return folder


@functools.cache
def onnx_runtime(model_dir: Path) -> runtime.Runtime:
    return runtime.load(model_dir, "onnx", threads=1)


def expected(stored: dict, path: Path, top_k: int | None = None) -> dict:
    """What the service answers for a file: its runtime on the pipeline's preprocessing."""
    onnx = onnx_runtime(stored["dir"])
    card = stored["card"]
    pixels = preprocess.load(path, card.image_size, card.channels)
    probabilities, distance = onnx.scores(pixels[None])
    assert distance is not None  # the stored model has the distance rule
    return answer(probabilities[0], card, top_k, distance[0]).model_dump()


def cnnpipe(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """The `cnnpipe` command as installed (pyproject's console script), from this checkout."""
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    code = "from cnnpipe.cli import main; main()"
    return subprocess.run(
        [sys.executable, "-c", code, *args], cwd=cwd, env=env, capture_output=True, text=True
    )


def test_a_folder_gets_the_services_answers_and_unreadable_files_are_listed(
    stored, pictures, tmp_path
):
    out, sorted_into = tmp_path / "out.csv", tmp_path / "sorted"
    result = cnnpipe(
        "predict", str(pictures), "--model", stored["tag"], "--out", str(out),
        "--sort-into", str(sorted_into), cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 1, result.stderr  # the truncated PNG
    rows = list(csv.DictReader(out.open()))
    images = sorted(p.relative_to(pictures) for p in pictures.rglob("*.png"))
    assert sorted(Path(r["path"]).relative_to(pictures) for r in rows) == images
    classes = stored["card"].classes
    for row in rows:
        path = Path(row["path"])
        if path.name == "broken.png":
            assert row["label"] == "" and "truncated" in row["error"]
            continue
        want = expected(stored, path)
        assert row["label"] == (want["label"] or "") and row["error"] == "", path
        assert float(row["confidence"]) == pytest.approx(want["confidence"], abs=1e-6)
        ranked = [row[f"class_{i}"] for i in range(1, len(classes) + 1)]
        assert ranked == list(want["probabilities"]), path
    board = next(r for r in rows if r["path"].endswith("checkerboard.png"))
    assert board["label"] == "" and "threshold" in board["reason"]
    assert f"unreadable: {pictures / 'broken.png'}: " in result.stderr
    labelled = len(stored["test"].files)
    assert f"{labelled} labelled, 1 unknown, 1 unreadable -> {out}" in result.stderr
    for row in rows:
        if not row["error"]:
            assert (sorted_into / (row["label"] or "unknown") / Path(row["path"]).name).is_file()
    assert sum(1 for _ in sorted_into.rglob("*.png")) == labelled + 1


def test_json_and_parquet_and_a_checkpoint_in_torch(stored, pictures, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    first = sorted(pictures.rglob("circle_*.png"))[0]
    args = ["predict", f"{pictures}/images/*/*.png", str(first), "--top-k", "2", "--jobs", "1"]
    for out in ("rows.json", "rows.parquet"):
        with pytest.raises(SystemExit) as stop:
            cli.main([*args, "--model", stored["tag"], "--out", out])
        assert stop.value.code == 0
    records = json.loads(Path("rows.json").read_text())
    table = pq.read_table("rows.parquet").to_pylist()
    assert len(records) == len(table) == len(stored["test"].files)  # the file named twice: once
    for record, flat in zip(records, table, strict=True):
        assert record == {
            **expected(stored, Path(record["path"]), 2),
            "path": record["path"],
            "error": None,
        }
        assert [flat["label"], flat["class_1"], flat["class_2"]] == [
            record["label"],
            *record["probabilities"],
        ]
        assert "class_3" not in flat
    with pytest.raises(SystemExit):  # the checkpoint in the store entry, run by torch
        cli.main([*args, "--model", str(stored["dir"] / "model.pt"), "--out", "torch.json"])
    torch_records = json.loads(Path("torch.json").read_text())
    assert [r["label"] for r in torch_records] == [r["label"] for r in records]
    assert np.allclose(
        [r["confidence"] for r in torch_records], [r["confidence"] for r in records], atol=1e-5
    )


def test_the_default_model_is_the_workspaces_packaged_one(
    stored, pictures, tmp_path, capsys, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as stop:  # no workspace model, no models/model.pt
        cli.main(["predict", str(pictures / "checkerboard.png")])
    assert stop.value.code == 2 and "no model to predict with" in capsys.readouterr().err
    (tmp_path / "models").mkdir()
    packaged = package_record.Record(
        model=stored["tag"], bento=None, sha256={}, labels={}, metadata={}, registered=None
    )
    package_record.write(packaged, tmp_path / package_record.RECORD)  # the stage's record
    with pytest.raises(SystemExit) as stop:
        cli.main(["predict", str(pictures / "checkerboard.png"), "--jobs", "1"])
    captured = capsys.readouterr()
    assert stop.value.code == 0 and f"model {stored['tag']} (lenet5, onnx)" in captured.err
    (row,) = csv.DictReader(captured.out.splitlines())
    assert row["label"] == "" and row["path"] == str(pictures / "checkerboard.png")


@pytest.mark.parametrize(
    "args, message",
    [
        (["missing.png"], "missing.png: no such file or folder, and no file matches it"),
        (["empty"], "no image files in empty"),
        (["x.png", "--out", "rows.xlsx"], "unknown format .xlsx"),
        (["x.png", "--link"], "--link goes with --sort-into"),
        (["x.png", "--model", "cnnpipe:nosuchversion"], "not in the BentoML model store"),
        (["x.png", "--top-k", "0"], "not a whole number of at least 1"),
    ],
)
def test_bad_usage_exits_2_with_one_line(args, message, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "x.png").write_bytes(encode(stranger()))
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit) as stop:
        cli.main(["predict", *args])
    err = capsys.readouterr().err
    assert stop.value.code == 2 and message in err, err
    assert not (tmp_path / "rows.xlsx").exists()


def test_files_folders_and_globs_are_found_once_each_in_order(tmp_path):
    for name in ("b/2.png", "b/1.JPG", "a.png", "b/.hidden.png", ".cache/x.png", "b/n.txt"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"x")
    found = files.find_images(
        [str(tmp_path / "b"), str(tmp_path / "*.png"), str(tmp_path / "b/2.png")]
    )
    assert found == [tmp_path / "b/1.JPG", tmp_path / "b/2.png", tmp_path / "a.png"]
    assert files.find_images([str(tmp_path / "**/*.png")]) == [
        tmp_path / "a.png",
        tmp_path / "b/2.png",
    ]
    assert files.find_images([str(tmp_path / "b/n.txt")]) == [tmp_path / "b/n.txt"]  # named: tried
    with pytest.raises(CnnpipeError, match="no such file"):
        files.find_images([str(tmp_path / "c*")])


def test_sorting_keeps_both_files_of_one_name_and_a_file_once(tmp_path):
    one, other = tmp_path / "a/x.png", tmp_path / "b/x.png"
    for path, data in ((one, b"1"), (other, b"2")):
        path.parent.mkdir()
        path.write_bytes(data)
    into = tmp_path / "sorted/circle"
    assert files.sort_into(one, into, link=False) == into / "x.png"
    assert files.sort_into(other, into, link=True) == into / "x-1.png"
    assert files.sort_into(one, into, link=False) == into / "x.png"  # sorted again: as it was
    assert sorted(p.name for p in into.iterdir()) == ["x-1.png", "x.png"]
    assert (into / "x-1.png").stat().st_ino == other.stat().st_ino  # a hard link


def _handlers() -> tuple:
    return signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)


def test_decoding_processes_die_at_once_on_sigterm_and_leave_ctrl_c_to_the_main_one():
    """The pool's workers do not inherit the main process's SIGTERM handler, which would
    unwind a worker stopped by the pool while it waits on the pool's queue and hang the main
    process in its join."""
    previous, hook = signal.getsignal(signal.SIGTERM), sys.unraisablehook
    processes.stop_on_sigterm()  # as `cnnpipe predict` does before it starts the pool
    try:
        with files.decoders(2) as pool:
            assert pool is not None
            handlers = pool.apply(_handlers)
    finally:
        signal.signal(signal.SIGTERM, previous)
        sys.unraisablehook = hook
    assert handlers == (signal.SIG_DFL, signal.SIG_IGN)
