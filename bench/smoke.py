"""Every benchmark once with its smallest arguments, so that no documented benchmark command rots:
CI runs this after `dvc repro` (some benchmarks use the workspace's model and data). Each
command runs under a time limit in its own process group (a benchmark's servers and stages go
with it); one that fails or runs out of time fails the whole, after the others have run. It
prints each command's seconds, and the end of the output of each one that failed.

The commands run `--jobs` at a time (default: one per core), the longest first: most of their
time is single-threaded (starting Python, importing torch, DVC), so one per core ends sooner than
one after the other.

    python bench/smoke.py                  # every command
    python bench/smoke.py serve pages      # those of these scripts only
    python bench/smoke.py --list           # the commands, and nothing run

The figures these runs print mean nothing (a few images, one epoch, one round): they prove
that the code paths run, not how fast they are.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench"
# bench/ files that are not commands of their own: plain_server is the baseline server that
# bench/serve.py starts
HELPERS = {"plain_server", "smoke"}
# small params of the scratch projects that run the pipeline
SMALL = ["train.epochs=1", "generate.images_per_class=20"]

# (script, arguments, seconds allowed), the longest first; {dir}: a scratch folder the commands
# share, {url}: a `bentoml serve` of the workspace's model, started for the command that names it
COMMANDS: list[tuple[str, list[str], int]] = [
    ("finetune", ["--seeds", "0", "--set", *SMALL], 300),
    ("package", ["--models", "lenet5", "--set", *SMALL], 300),
    ("calibration", ["--cases", "shapes:lenet5", "--set", *SMALL], 240),
    ("quality", ["--sources", "shapes", "--models", "lenet5", "--set", *SMALL], 180),
    ("train", ["--models", "lenet5", "--rounds", "1", "--images-per-class", "20", "--epochs", "1"],
     180),
    ("stop", ["--rounds", "1"], 120),
    ("resume", ["--model", "lenet5", "--nproc", "1", "--kill-at", "1", "--set", "train.epochs=5",
                "generate.images_per_class=20"], 180),
    ("bodies", ["--mib", "1"], 120),
    ("scale", ["--images", "200", "--processes", "1,2", "--train-seconds", "1"], 120),
    ("predict", ["--images", "200", "--rounds", "1", "--served", "20"], 180),
    ("serve", ["--case", "models/model.pt", "--requests", "40", "--concurrency", "4",
               "--images", "16"], 180),
    ("train", ["--pieces", "--models", "lenet5", "--rounds", "1", "--images-per-class", "20"], 120),
    ("train", ["--resume", "--models", "lenet5", "--rounds", "1", "--images-per-class", "20"], 120),
    ("pages", ["{url}"], 120),
    ("objects", ["{dir}/objects", "--objects", "2", "--test-objects", "1", "--pictures", "2",
                 "--near-duplicates", "1"], 60),
    ("folder", ["{dir}/objects"], 120),
    ("ready", ["--runs", "1"], 120),
]  # fmt: skip
# a command that reads what another writes starts when that one has ended
AFTER = {"folder": "objects"}


def unlisted() -> list[str]:
    """The bench/ scripts that no command runs."""
    scripts = {path.stem for path in BENCH.glob("*.py")} - HELPERS
    return sorted(scripts - {script for script, _, _ in COMMANDS})


def run(command: list[str], limit: int, log: Path) -> tuple[int | None, float]:
    """The exit status of `command` (None: it ran out of time) and its seconds; its output goes
    to `log`. Whatever it started is killed when it ends, as its process group."""
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    began = time.perf_counter()
    with open(log, "w") as out:
        process = subprocess.Popen(
            command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            code: int | None = process.wait(timeout=limit)
        except subprocess.TimeoutExpired:
            code = None
        finally:
            try:
                os.killpg(process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            process.wait()
    return code, time.perf_counter() - began


@contextmanager
def server() -> Iterator[str]:
    """The URL of `bentoml serve` in the project root (the workspace's model), while it runs."""
    from serve import free_port, start

    port = free_port()
    command = [sys.executable, "-m", "bentoml", "serve", "--host", "127.0.0.1"]
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "BENTOML_DO_NOT_TRACK": "True"}
    process, _ = start([*command, "--port", str(port)], env, port)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(timeout=60)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("scripts", nargs="*", help="run the commands of these scripts only")
    parser.add_argument("--list", action="store_true", help="print the commands, run nothing")
    parser.add_argument("--jobs", type=int, default=len(os.sched_getaffinity(0)))
    args = parser.parse_args()
    if missing := unlisted():
        sys.exit(f"bench/smoke.py runs no command of {', '.join(missing)}: add one to COMMANDS")
    unknown = sorted(set(args.scripts) - {script for script, _, _ in COMMANDS})
    if unknown:
        sys.exit(f"no command of {', '.join(unknown)}: the scripts are those of bench/")
    chosen = [c for c in COMMANDS if not args.scripts or c[0] in args.scripts]
    if args.list:
        for script, arguments, limit in chosen:
            print(f"python bench/{script}.py {' '.join(arguments)}  # at most {limit} s")
        return
    total = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="cnnpipe-smoke-") as scratch:
        ended: dict[str, threading.Event] = {script: threading.Event() for script, _, _ in chosen}
        printing = threading.Lock()

        def one(n: int, script: str, arguments: list[str], limit: int) -> str | None:
            """Run one command; the command line if it failed."""
            if script in AFTER and AFTER[script] in ended:
                ended[AFTER[script]].wait()
            log = Path(scratch) / f"{n:02d}-{script}.log"
            filled = arguments
            try:
                with server() if any("{url}" in a for a in arguments) else _no_server() as url:
                    filled = [a.format(dir=scratch, url=url) for a in arguments]
                    command = [sys.executable, str(BENCH / f"{script}.py"), *filled]
                    code, seconds = run(command, limit, log)
            except SystemExit as exc:  # the server it needs did not start
                log.write_text(f"{exc}\n")
                code, seconds = 1, 0.0
            finally:
                ended[script].set()
            shown = f"bench/{script}.py {' '.join(filled)}"
            verdict = "ok" if code == 0 else "OUT OF TIME" if code is None else f"exit {code}"
            with printing:
                print(f"{seconds:6.1f} s  {verdict:11}  {shown}", flush=True)
                if code != 0:
                    tail = log.read_text(errors="replace").splitlines()[-40:]
                    print("\n".join(f"    | {line}" for line in tail), flush=True)
            return None if code == 0 else shown

        with ThreadPoolExecutor(max(1, args.jobs)) as pool:
            done = [pool.submit(one, n, *command) for n, command in enumerate(chosen)]
            failed = [shown for future in done if (shown := future.result())]
    seconds = time.perf_counter() - total
    print(f"{seconds:6.1f} s  in all, {len(chosen)} commands, {args.jobs} at a time")
    if failed:
        sys.exit(f"{len(failed)} benchmark command(s) failed: " + "; ".join(failed))


@contextmanager
def _no_server() -> Iterator[str]:
    yield ""


if __name__ == "__main__":
    main()
