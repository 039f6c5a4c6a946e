"""How fast a training stops when its launcher is killed with SIGKILL (what the OOM killer does).

Builds a tiny project in a temporary folder with the real stage scripts (check, generate, process),
starts the train stage with `train.nproc: 2` and an endless number of epochs, kills the launcher
with SIGKILL once both DDP workers train, and prints how long the workers outlived it, whether
any file under data/, models/ or metrics/ changed, and how the MLflow run ended.

    python bench/stop.py --rounds 3
"""

from __future__ import annotations

import argparse
import hashlib
import os
import signal
import sqlite3
import subprocess
import tempfile
import time
from pathlib import Path

import yaml
from scale import stage_command

from cnnpipe.core import params

REPO = Path(__file__).resolve().parents[1]


def stage(root: Path, name: str, wait: bool = True) -> subprocess.Popen:
    """The stage's script run in root, with the paths dvc.yaml gives it."""
    command = stage_command(name)
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO / "src"),
        "MLFLOW_TRACKING_URI": f"sqlite:///{root / 'mlflow.db'}",
    }
    process = subprocess.Popen(
        command, cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
    )
    if wait:
        assert process.wait() == 0, f"{name} failed"
    return process


def contents(root: Path) -> dict[str, str]:
    return {
        str(path.relative_to(root)): hashlib.md5(path.read_bytes()).hexdigest()
        for folder in ("data", "models", "metrics")
        for path in sorted((root / folder).rglob("*"))
        if path.is_file()
    }


def running(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def children(pid: int) -> set[int]:
    found: set[int] = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        found |= {int(c) for c in (task / "children").read_text().split()}
    return found


def one_round(root: Path) -> tuple[float, bool, str]:
    before = contents(root)
    launcher = stage(root, "train", wait=False)
    for line in launcher.stdout:
        if "train: epoch 2/" in line:
            break
    workers = children(launcher.pid)
    os.kill(launcher.pid, signal.SIGKILL)
    killed = time.monotonic()
    launcher.wait()
    while any(running(pid) for pid in workers):
        time.sleep(0.01)
    seconds = time.monotonic() - killed
    with sqlite3.connect(root / "mlflow.db") as db:
        status = db.execute("select status from runs order by start_time desc").fetchone()[0]
    return seconds, contents(root) == before, status


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        settings = {
            "generate": {"classes": ["circle", "square", "triangle"], "images_per_class": 40},
            "train": {"nproc": 2, "epochs": 100_000, "batch_size": 8, "num_threads": 1},
        }

        def write(values: dict) -> None:
            (root / "params.yaml").write_text(yaml.safe_dump(params.parse(values).model_dump()))

        write({**settings, "train": {**settings["train"], "nproc": 1, "epochs": 1}})
        (root / "checkpoints").mkdir()  # the default train.init_from: from scratch
        for name in ("check", "generate", "process"):
            stage(root, name)
        stage(root, "train")  # a model and metrics that must survive every round
        write(settings)
        for n in range(1, args.rounds + 1):
            seconds, unchanged, status = one_round(root)
            print(
                f"round {n}: both workers gone {seconds:.2f} s after kill -9 of the launcher; "
                f"outputs unchanged: {'yes' if unchanged else 'NO'}; MLflow run {status}",
                flush=True,
            )


if __name__ == "__main__":
    main()
