"""Peak memory of the process and train stages on 100,000 images at 64 px.

Draws `--unique` shapes with the generate stage's code and writes a labels.csv listing
`--images` images that cycle through them (drawing 100,000 PNGs would take many CPU-minutes
and proves nothing more: the process stage decodes every listed file either way). Then runs the
real stage scripts in a scratch project: `stages/process.py` to the end, and `stages/train.py`
(resnet18, one epoch) until it has trained for `--train-seconds` (0: to the end). The peak
resident set size of each stage process (getrusage via wait4, memory-mapped pages included)
is printed.

    python bench/scale.py [--images 100000] [--size 64] [--channels 3] [--train-seconds 60]
"""

from __future__ import annotations

import argparse
import csv
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from cnnpipe.core import params
from cnnpipe.core.dataset import LABELS_FILE
from cnnpipe.data import sources

REPO = Path(__file__).resolve().parents[1]


def raw_images(raw: Path, total: int, unique: int, size: int) -> None:
    """`unique` generated shapes, listed in labels.csv until there are `total` rows."""
    p = params.parse({"generate": {"images_per_class": max(3, unique // 5), "image_size": size}})
    sources.write_raw(p.generate, raw)
    with open(raw / LABELS_FILE, newline="") as f:
        rows = list(csv.DictReader(f))
    with open(raw / LABELS_FILE, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        # the same files listed again and again stand for other images: no duplicates to group
        unknown = {"md5": "", "phash": "", "dhash": ""}
        writer.writerows({**rows[i % len(rows)], **unknown} for i in range(total))


def stage_command(name: str) -> list[str]:
    """A stage's command from dvc.yaml, its ${vars} filled in, the script taken from this
    checkout."""
    spec = yaml.safe_load((REPO / "dvc.yaml").read_text())
    values = spec["vars"][0]
    cmd = re.sub(r"\$\{(\w+)\}", lambda m: str(values[m.group(1)]), spec["stages"][name]["cmd"])
    _, script, *paths = cmd.split()
    return [sys.executable, str(REPO / script), *paths]


def run_stage(root: Path, name: str, stop_after: float = 0.0) -> tuple[float, float]:
    """(seconds, peak RSS in MB) of one stage script run in `root`; with `stop_after`, it is
    interrupted that many seconds after it starts training."""
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    env["MLFLOW_TRACKING_URI"] = f"sqlite:///{root / 'mlflow.db'}"
    started = time.perf_counter()
    proc = subprocess.Popen(
        stage_command(name),
        cwd=root,
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )
    training_since = None
    for line in proc.stdout:
        print(f"  | {line.rstrip()}", flush=True)
        if stop_after and line.startswith("train: ") and " on " in line:
            training_since = time.perf_counter()
            break
    if training_since is not None:
        time.sleep(max(0.0, stop_after - (time.perf_counter() - training_since)))
        proc.send_signal(signal.SIGINT)
        proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - started
    code = os.waitstatus_to_exitcode(status)
    if code not in (0, 130):
        raise SystemExit(f"{name} failed with exit status {code}")
    return seconds, usage.ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=100_000)
    parser.add_argument("--unique", type=int, default=500)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--channels", type=int, default=3, choices=(1, 3))
    parser.add_argument("--train-seconds", type=float, default=60.0, help="0: train to the end")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        settings = {
            "process": {"image_size": args.size, "channels": args.channels},
            "train": {"model": "resnet18", "epochs": 1, "batch_size": 64},
        }
        (root / "params.yaml").write_text(yaml.safe_dump(params.parse(settings).model_dump()))
        raw_images(root / "data" / "raw", args.images, args.unique, args.size)
        arrays = args.images * args.channels * args.size * args.size / 2**20
        print(
            f"{args.images} images at {args.size} px, {args.channels} channel(s): {arrays:.0f} MB"
        )
        for name, stop_after in (("process", 0.0), ("train", args.train_seconds)):
            seconds, peak = run_stage(root, name, stop_after)
            cut = f", stopped after {stop_after:.0f} s of training" if stop_after else ""
            print(f"{name}: peak RSS {peak:.0f} MB, {seconds:.0f} s{cut}", flush=True)


if __name__ == "__main__":
    main()
