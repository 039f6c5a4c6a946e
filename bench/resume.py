"""A training killed with SIGKILL and reproduced again ends with the bytes of one that never
stopped. For each process count, in two scratch copies of this checkout with the same params:
`dvc repro train` in one, without a stop; in the other, `dvc repro train` whose train stage
(every process of it: the launcher and its DDP workers with `train.nproc` 2) gets SIGKILL, as
from the OOM killer, once it has printed epoch `--kill-at`, then `dvc repro train` again. Prints
the epoch the second run resumed from, the md5 of models/model.pt of the uninterrupted and of
the resumed run, whether they agree, and each run's seconds.

    python bench/resume.py                                      # resnet18, 1 and 2 processes
    python bench/resume.py --model lenet5 --nproc 1 --kill-at 2 --set train.epochs=3
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
from quality import _env, add_set_argument, overrides, scratch_copy, set_params

STAGE = "stages/train.py"


def stage_processes(pid: int) -> list[psutil.Process]:
    """The processes below `pid` that run the train stage: the shell DVC starts it in, its
    python and, with DDP, the workers."""
    found = []
    for child in psutil.Process(pid).children(recursive=True):
        with contextlib.suppress(psutil.NoSuchProcess):
            if any(STAGE in arg for arg in child.cmdline()):
                found.append(child)
    return found


def dvc(root: Path, *args: str, kill_after: str | None = None) -> tuple[str, float]:
    """The output and seconds of `dvc args`; with kill_after, its train stage's processes get
    SIGKILL once that text is printed (stopped first, so that none reacts to another's death)."""
    started = time.perf_counter()
    command = [sys.executable, "-m", "dvc", *args]
    process = subprocess.Popen(
        command,
        cwd=root,
        env=_env(root),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines = []
    assert process.stdout is not None
    for line in process.stdout:
        lines.append(line)
        if kill_after is not None and kill_after in line:
            stage = stage_processes(process.pid)
            for signum in (signal.SIGSTOP, signal.SIGKILL):
                for child in stage:
                    with contextlib.suppress(psutil.NoSuchProcess):
                        child.send_signal(signum)
            kill_after = None
    process.wait()
    return "".join(lines), time.perf_counter() - started


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def project(root: Path, params: dict[str, str]) -> Path:
    """A scratch copy with these params and its data processed."""
    scratch_copy(root)
    set_params(root, params)
    output, _ = dvc(root, "repro", "process")
    if "ERROR" in output:
        raise SystemExit(f"dvc repro process failed:\n{output}")
    return root


def measure(tmp: Path, params: dict[str, str], kill_at: int) -> None:
    whole = project(tmp / "uninterrupted", params)
    output, whole_seconds = dvc(whole, "repro", "train")
    if "Running stage 'train'" not in output or not (whole / "models/model.pt").exists():
        raise SystemExit(f"the uninterrupted training failed:\n{output}")
    epochs = re.findall(r"train: epoch (\d+)/(\d+)", output)
    if kill_at >= int(epochs[-1][1]):
        raise SystemExit(f"--kill-at {kill_at}: the training has {epochs[-1][1]} epochs")
    stopped = project(tmp / "stopped", params)
    killed, until_kill = dvc(stopped, "repro", "train", kill_after=f"train: epoch {kill_at}/")
    if "Running stage 'train'" not in killed or "ERROR" not in killed:
        raise SystemExit(f"the training was not stopped:\n{killed}")
    output, resumed_seconds = dvc(stopped, "repro", "train")
    found = re.search(r"train: resuming from epoch (\d+)/(\d+)", output)
    if found is None:
        raise SystemExit(f"the training did not resume:\n{output}")
    expected, got = md5(whole / "models/model.pt"), md5(stopped / "models/model.pt")
    print(
        f"train.nproc {params['train.nproc']}: killed after epoch {kill_at}, resumed from epoch "
        f"{found[1]}/{found[2]}; models/model.pt {expected} uninterrupted, {got} resumed: "
        f"{'identical' if got == expected else 'DIFFERENT'}; seconds: uninterrupted "
        f"{whole_seconds:.0f}, until the kill {until_kill:.0f}, resumed {resumed_seconds:.0f}",
        flush=True,
    )
    if got != expected:
        raise SystemExit(1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--nproc", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--kill-at", type=int, default=5, help="the epoch after which to kill")
    add_set_argument(parser)
    args = parser.parse_args()
    for nproc in args.nproc:
        params = {"train.model": args.model, "train.nproc": str(nproc), **overrides(args.set)}
        with tempfile.TemporaryDirectory(prefix="cnnpipe-resume-") as tmp:
            measure(Path(tmp), params, args.kill_at)


if __name__ == "__main__":
    main()
