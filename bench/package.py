"""What packaging costs per model: the package stage's seconds and peak RSS, and the bytes one
`dvc exp run` adds to each store, as ratios to the model's bytes, in a scratch copy of a checkout.

For each model it reproduces the pipeline with `train.epochs=1` (bytes and packaging time do not
depend on the epochs) and commits, measures the stores, runs one `dvc exp run -S train.seed=1`
(a new model: train, evaluate and package run), measures them again, then times `dvc repro -s -f
package`. The stores: DVC's cache (.dvc/cache), the workspace (the project's other files: models/,
data/, metrics/, ...), the BentoML store ($BENTOML_HOME) and MLflow (mlflow.db, mlruns/). Bytes
are disk usage as `du` counts it (blocks; a file with several hard links once): per store, a file
counts in each store that names it; in the total, once.

    python bench/package.py                                  # resnet18 and lenet5, this checkout
    python bench/package.py --repo /path/to/other/checkout   # another revision, as the baseline
    python bench/package.py --models lenet5 --rounds 3 --keep /tmp/package-bench
    python bench/package.py --models lenet5 --set generate.images_per_class=20   # other params
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from quality import REPO, add_set_argument, overrides, scratch_copy, set_params

STORES = ("DVC cache", "workspace", "BentoML", "MLflow")
NOT_WORKSPACE = (".git", ".dvc", "mlruns", "mlflow.db")


def store_paths(root: Path, bentoml_home: Path) -> dict[str, list[Path]]:
    workspace = [p for p in root.iterdir() if p.name not in NOT_WORKSPACE]
    return {
        "DVC cache": [root / ".dvc" / "cache"],
        "workspace": workspace,
        "BentoML": [bentoml_home],
        "MLflow": [root / "mlruns", root / "mlflow.db"],
    }


def disk_usage(paths: list[Path], seen: set[tuple[int, int]] | None = None) -> int:
    """Bytes on disk of the files under `paths` (each inode once, as du counts)."""
    seen = set() if seen is None else seen
    total = 0
    for top in paths:
        if not top.exists():
            continue
        for path in [top, *top.rglob("*")] if top.is_dir() else [top]:
            info = path.lstat()
            if (info.st_dev, info.st_ino) not in seen:
                seen.add((info.st_dev, info.st_ino))
                total += info.st_blocks * 512
    return total


def measure(root: Path, bentoml_home: Path) -> dict[str, int]:
    paths = store_paths(root, bentoml_home)
    sizes = {name: disk_usage(paths[name]) for name in STORES}
    seen: set[tuple[int, int]] = set()
    sizes["all"] = sum(disk_usage(paths[name], seen) for name in STORES)
    return sizes


def run(root: Path, env: dict, *command: str) -> tuple[float, int]:
    """Seconds and peak RSS (bytes, its largest process) of a command, which must succeed."""
    started = time.perf_counter()
    process = subprocess.Popen(command, cwd=root, env=env, stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - started
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{' '.join(command)} failed in {root}")
    return seconds, usage.ru_maxrss * 1024


def bench_model(model: str, repo: Path, base: Path, rounds: int, extra: dict[str, str]) -> dict:
    root, bentoml_home = base / model, base / f"{model}-bentoml"
    for path in (root, bentoml_home):
        shutil.rmtree(path, ignore_errors=True)
    root.mkdir(parents=True)
    scratch_copy(root, repo)
    env = {**os.environ, "PYTHONPATH": str(root / "src"), "DVC_NO_ANALYTICS": "1"}
    env |= {"BENTOML_HOME": str(bentoml_home), "BENTOML_DO_NOT_TRACK": "True"}
    env |= {"GIT_AUTHOR_NAME": "bench", "GIT_AUTHOR_EMAIL": "bench@cnnpipe.invalid"}
    env |= {"GIT_COMMITTER_NAME": "bench", "GIT_COMMITTER_EMAIL": "bench@cnnpipe.invalid"}
    env.pop("MLFLOW_TRACKING_URI", None)
    dvc = (sys.executable, "-m", "dvc")
    set_params(root, {"train.model": model, "train.epochs": "1", **extra})
    run(root, env, *dvc, "repro")
    run(root, env, "git", "add", "-A")
    run(root, env, "git", "commit", "-qm", "baseline")
    before = measure(root, bentoml_home)
    run(root, env, *dvc, "exp", "run", "-S", "train.seed=1")
    after = measure(root, bentoml_home)
    model_bytes = (root / "models" / "model.pt").stat().st_size
    timings = [run(root, env, *dvc, "repro", "-s", "-f", "package") for _ in range(rounds)]
    return {
        "model": model,
        "model_bytes": model_bytes,
        "seconds": statistics.median(t for t, _ in timings),
        "rss": max(r for _, r in timings),
        "gained": {name: after[name] - before[name] for name in (*STORES, "all")},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["resnet18", "lenet5"])
    parser.add_argument("--repo", type=Path, default=REPO, help="the checkout to copy")
    parser.add_argument("--rounds", type=int, default=1, help="timed package runs (median)")
    parser.add_argument("--keep", type=Path, help="keep the scratch projects under this folder")
    add_set_argument(parser)
    args = parser.parse_args()
    extra = overrides(args.set)
    base = Path(args.keep or tempfile.mkdtemp(prefix="cnnpipe-package-"))
    rows = [bench_model(m, args.repo.resolve(), base, args.rounds, extra) for m in args.models]
    print(f"\n{args.repo.resolve()} (commit {_commit(args.repo)}), {args.rounds} timed run(s)")
    print(
        "| model | model MB | package s | peak RSS MB | DVC cache | workspace | BentoML | MLflow "
        "| all stores |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        ratios = " | ".join(
            f"{row['gained'][name] / row['model_bytes']:.2f}x" for name in (*STORES, "all")
        )
        print(
            f"| {row['model']} | {row['model_bytes'] / 1e6:.1f} | {row['seconds']:.1f} "
            f"| {row['rss'] / 1e6:.0f} | {ratios} |"
        )
    if not args.keep:
        shutil.rmtree(base, ignore_errors=True)


def _commit(repo: Path) -> str:
    out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=repo, capture_output=True)
    dirty = subprocess.run(["git", "status", "--porcelain"], cwd=repo, capture_output=True)
    return out.stdout.decode().strip() + ("+changes" if dirty.stdout.strip() else "")


if __name__ == "__main__":
    main()
