"""Time, peak memory and bytes on disk of the generate and process stages at scale, with 1 and
with 2 (or more) processes on the same data, and whether they wrote the same bytes.

Runs the real stage scripts in a scratch project: generate draws `--images` shapes at `--size`
px (images_per_class = images / 5) and fingerprints each, process converts every one into the
split arrays, once per process count given (`--processes 1,2`, set through
CNNPIPE_DATA_PROCESSES). Per stage and count it prints the wall time, the peak RSS of the stage
process (getrusage via wait4: the largest of the stage and its workers, shared pages counted in
each), the peak PSS of the stage and its workers together (sampled from /proc every 0.2 s: what
they hold between them, shared pages split), the bytes its output takes on disk, and the md5 of
its outputs (the same for every count, or the run fails). `--train-seconds S` also runs the
train stage (resnet18, one epoch) for S seconds of training (0: to the end of the epoch).

`--unique K` is a shortcut for a quick measure of process alone: generate draws K shapes and
labels.csv lists them again and again up to `--images` rows, with no md5 or hashes for the
repeats (so they are not taken for duplicates); process still decodes and converts every listed
file, but generate's figures are then those of K images.

    python bench/scale.py [--images 100000] [--size 32] [--channels 3] [--processes 1,2]
                          [--unique K] [--train-seconds S] [--dir DIR]
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))  # this checkout's code, as the stage scripts get it

from cnnpipe.core import params  # noqa: E402
from cnnpipe.core.dataset import LABELS_FILE  # noqa: E402
from cnnpipe.data.parallel import PROCESSES_ENV  # noqa: E402

OUTPUT = {"generate": "data/raw", "process": "data/processed", "train": "models"}


def stage_command(name: str) -> list[str]:
    """A stage's command from dvc.yaml, its ${vars} filled in, the script taken from this
    checkout."""
    spec = yaml.safe_load((REPO / "dvc.yaml").read_text())
    values = spec["vars"][0]
    cmd = re.sub(r"\$\{(\w+)\}", lambda m: str(values[m.group(1)]), spec["stages"][name]["cmd"])
    _, script, *paths = cmd.split()
    return [sys.executable, str(REPO / script), *paths]


def _tree(pid: int) -> list[int]:
    """pid and its descendants."""
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        try:
            children = Path(f"/proc/{current}/task/{current}/children").read_text().split()
        except OSError:
            continue
        todo.extend(int(c) for c in children)
    return found


def _pss_kb(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


class PeakPss(threading.Thread):
    """The largest PSS the process tree of `pid` held at once, sampled every 0.2 s."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid, self.peak_kb, self.done = pid, 0, threading.Event()

    def run(self) -> None:
        while not self.done.wait(0.2):
            self.peak_kb = max(self.peak_kb, sum(_pss_kb(p) for p in _tree(self.pid)))


def run_stage(root: Path, name: str, processes: int | None, stop_after: float | None = None):
    """(seconds, peak RSS MB, peak PSS MB) of one stage script run in `root`; with
    `stop_after`, it is interrupted that many seconds after it starts training."""
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    env["MLFLOW_TRACKING_URI"] = f"sqlite:///{root / 'mlflow.db'}"
    env.pop(PROCESSES_ENV, None)
    if processes:
        env[PROCESSES_ENV] = str(processes)
    started = time.perf_counter()
    proc = subprocess.Popen(
        stage_command(name), cwd=root, env=env, stdout=subprocess.PIPE, text=True
    )
    pss = PeakPss(proc.pid)
    pss.start()
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
    pss.done.set()
    pss.join()
    code = os.waitstatus_to_exitcode(status)
    if code not in (0, 130):
        raise SystemExit(f"{name} failed with exit status {code}")
    return seconds, usage.ru_maxrss / 1024, pss.peak_kb / 1024


def on_disk(path: Path) -> int:
    """Bytes the files under path take on disk (as du counts them); 0 when there is none (a
    training interrupted before it ended writes no model)."""
    if not path.exists():
        return 0
    return sum(f.lstat().st_blocks * 512 for f in [path, *path.rglob("*")])


def digest(path: Path) -> str:
    """One md5 of every file's path and bytes under path."""
    total = hashlib.md5()
    for f in sorted(p for p in path.rglob("*") if p.is_file()):
        total.update(f.relative_to(path).as_posix().encode())
        total.update(hashlib.md5(f.read_bytes()).digest())
    return total.hexdigest()


def repeat_rows(raw: Path, total: int) -> None:
    """List the rows of labels.csv again and again up to `total`; the repeats stand for other
    images: no md5 or hashes, so they are neither checked nor grouped as duplicates."""
    with open(raw / LABELS_FILE, newline="") as f:
        rows = list(csv.DictReader(f))
    unknown = {"md5": "", "phash": "", "dhash": ""}
    with open(raw / LABELS_FILE, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
        writer.writerows({**rows[i % len(rows)], **unknown} for i in range(len(rows), total))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=100_000)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--channels", type=int, default=3, choices=(1, 3))
    parser.add_argument("--processes", default="1,2", help="process counts to compare")
    parser.add_argument("--unique", type=int, default=0, help="draw only this many shapes")
    parser.add_argument("--train-seconds", type=float, default=None)
    parser.add_argument("--dir", type=Path, help="where the scratch project goes (removed after)")
    args = parser.parse_args()
    counts = [int(n) for n in args.processes.split(",")]
    drawn = args.unique or args.images
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        root = Path(tmp)
        settings = {
            "generate": {"images_per_class": max(3, drawn // 5), "image_size": args.size},
            "process": {"image_size": args.size, "channels": args.channels},
            "train": {"model": "resnet18", "epochs": 1, "batch_size": 64},
        }
        (root / "params.yaml").write_text(yaml.safe_dump(params.parse(settings).model_dump()))
        (root / "data").mkdir()
        (root / "checkpoints").mkdir()  # the default train.init_from: from scratch
        (root / "data" / "source.json").write_text('{"source": "shapes"}\n')
        arrays = args.images * args.channels * args.size**2 / 2**20
        print(
            f"{args.images} images at {args.size} px, {args.channels} channel(s): {arrays:.0f} MB "
            f"of arrays; {drawn} drawn; {len(os.sched_getaffinity(0))} cores here",
            flush=True,
        )
        rows = []
        for name in ("generate", "process"):
            seen = set()
            for n in counts:
                shutil.rmtree(root / OUTPUT[name], ignore_errors=True)
                seconds, rss, pss = run_stage(root, name, n)
                if name == "generate" and args.unique:
                    repeat_rows(root / OUTPUT[name], args.images)
                seen.add(digest(root / OUTPUT[name]))
                rows.append((name, n, seconds, rss, pss, on_disk(root / OUTPUT[name])))
            if len(seen) != 1:
                raise SystemExit(f"{name}: the outputs differ between {counts} processes")
            rows[-1] = (*rows[-1], "same bytes" if len(counts) > 1 else "")
        if args.train_seconds is not None:
            seconds, rss, pss = run_stage(root, "train", None, args.train_seconds)
            rows.append(("train", "-", seconds, rss, pss, on_disk(root / OUTPUT["train"])))
        print("| stage | processes | seconds | peak RSS MB | peak PSS MB (all) | on disk MB | |")
        print("|---|---|---|---|---|---|---|")
        first: dict[str, float] = {}
        for name, n, seconds, rss, pss, size, *same in rows:
            first.setdefault(name, seconds)
            ratio = f"{first[name] / seconds:.2f}x" if first[name] != seconds else ""
            note = ", ".join(filter(None, [ratio and f"{ratio} faster", *same]))
            print(
                f"| {name} | {n} | {seconds:.1f} | {rss:.0f} | {pss:.0f} | {size / 2**20:.0f} "
                f"| {note} |"
            )


if __name__ == "__main__":
    main()
