"""Model quality with default params: the real pipeline (`dvc repro`) for each architecture on
each data source, in a scratch copy of this checkout, and one table of what came out.

For every source it generates and processes the data; for every model it sets only
`train.model` (and `generate.source`, `generate.folder`) and reproduces train and evaluate. It
prints the input the `auto` process params chose (channels x px), test accuracy, macro F1, the
epochs run (early stopping may end a run sooner), the best epoch, the training seconds and
images/s (from the MLflow run) and the train stage's wall time. The test split is a random,
stratified part of the data, or, for a folder with train/ and test/, the folder's own test/:
pictures the model never saw (the table's `test` column says which).

    python bench/quality.py                                  # 4 models x shapes, digits
    python bench/quality.py --sources digits --models lenet5
    python bench/quality.py --folder /path/to/photos --set process.channels=3
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
MODELS = ("lenet5", "resnet18", "efficientnet_b0", "densenet121")


def scratch_copy(dest: Path, source: Path = REPO) -> None:
    """A checkout's tracked files (this one's by default), without its results, as a fresh git
    repository."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=source,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split("\0")
    for name in filter(None, listed):
        if (source / name).is_file() and not name.startswith(("dvc.lock", "metrics/")):
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source / name, dest / name)
    env = {"GIT_AUTHOR_NAME": "bench", "GIT_AUTHOR_EMAIL": "bench@cnnpipe.invalid"}
    env |= {"GIT_COMMITTER_NAME": "bench", "GIT_COMMITTER_EMAIL": "bench@cnnpipe.invalid"}
    for command in (["git", "init", "-q"], ["git", "add", "-A"], ["git", "commit", "-qm", "x"]):
        subprocess.run(command, cwd=dest, check=True, env={**_env(dest), **env})


def _env(root: Path) -> dict:
    return {**os.environ, "PYTHONPATH": str(root / "src"), "DVC_NO_ANALYTICS": "1"}


def set_params(root: Path, overrides: dict[str, str]) -> None:
    """params.yaml with `section.key: value` overrides (values parsed as YAML)."""
    params = yaml.safe_load((root / "params.yaml").read_text())
    for dotted, value in overrides.items():
        section, key = dotted.split(".", 1)
        params[section][key] = yaml.safe_load(value)
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def repro(root: Path, target: str) -> float:
    """Seconds `dvc repro target` took; its output goes to the terminal."""
    started = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-m", "dvc", "repro", target], cwd=root, env=_env(root), text=True
    )
    if result.returncode != 0:
        raise SystemExit(f"dvc repro {target} failed in {root}")
    return time.perf_counter() - started


def add_set_argument(parser: argparse.ArgumentParser) -> None:
    """`--set KEY=VALUE ...`: other params of every scratch project, on top of the defaults (a
    quick run: `--set train.epochs=1 generate.images_per_class=20`)."""
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="other params")


def overrides(items: list[str]) -> dict[str, str]:
    """The `--set` items as set_params takes them."""
    bad = [item for item in items if "=" not in item]
    if bad:
        raise SystemExit(f"--set {bad[0]}: give KEY=VALUE, e.g. train.epochs=1")
    return dict(item.split("=", 1) for item in items)


def training_record(root: Path) -> dict[str, float]:
    """The latest MLflow run's training figures."""
    with sqlite3.connect(root / "mlflow.db") as db:
        (run,) = db.execute("select run_uuid from runs order by start_time desc limit 1").fetchone()
        rows = db.execute(
            "select key, value from latest_metrics where run_uuid = ?", (run,)
        ).fetchall()
    return dict(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sources", nargs="*", default=["shapes", "digits"])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    parser.add_argument("--folder", type=Path, help="also an image folder (source: folder)")
    add_set_argument(parser)
    parser.add_argument("--keep", type=Path, help="keep the scratch projects under this folder")
    args = parser.parse_args()
    extra = overrides(args.set)
    sources = [(s, None) for s in args.sources]
    if args.folder:
        sources.append(("folder", args.folder.resolve()))

    base = Path(args.keep or tempfile.mkdtemp(prefix="cnnpipe-quality-"))
    rows = []
    for source, folder in sources:
        root = base / source
        if root.exists():
            shutil.rmtree(root)
        root.mkdir(parents=True)
        scratch_copy(root)
        data = {"generate.source": source}
        if folder:
            data["generate.folder"] = str(folder)
        set_params(root, {**data, **extra})
        repro(root, "process")
        for model in args.models:
            set_params(root, {"train.model": model})
            seconds = repro(root, "train")
            repro(root, "evaluate")
            scores = json.loads((root / "metrics/evaluate/metrics.json").read_text())
            summary = json.loads((root / "metrics/train/metrics.json").read_text())
            record = training_record(root)
            split = json.loads((root / "metrics/process/split.json").read_text())
            images = sum(split["train"].values()) * summary["epochs_run"]
            used = yaml.safe_load((root / "metrics/process/params.yaml").read_text())
            report = json.loads((root / "metrics/generate/report.json").read_text())
            rows.append(
                (
                    source,
                    model,
                    f"{used['channels']}x{used['image_size']}",
                    "given" if report["images_per_given_split"].get("test") else "random",
                    scores["test_accuracy"],
                    scores["test_f1_macro"],
                    summary["epochs_run"],
                    summary["best_epoch"],
                    record["train_seconds"],
                    images / record["train_seconds"],
                    seconds,
                )
            )
            print(f"quality: {rows[-1]}", flush=True)
    print(f"\nextra params: {extra or 'none'}; projects in {base if args.keep else '(removed)'}")
    print(
        "| data | model | input | test | test accuracy | macro F1 | epochs run | best epoch "
        "| training s | images/s | train stage s |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for source, model, shape, test, acc, f1, run, best, train_s, rate, stage_s in rows:
        print(
            f"| {source} | {model} | {shape} | {test} | {acc:.4f} | {f1:.4f} | {run} | {best} "
            f"| {train_s:.0f} | {rate:.0f} | {stage_s:.0f} |"
        )
    if not args.keep:
        shutil.rmtree(base)


if __name__ == "__main__":
    main()
