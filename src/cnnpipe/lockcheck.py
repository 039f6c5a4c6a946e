"""Did `dvc repro` reproduce the committed lock? Compare the output hashes of the workspace's
dvc.lock with a git revision's, stage by stage, and fail on any difference.

    dvc repro && cnnpipe-check-lock --rev HEAD generate process train evaluate

The package stage is left out by default: its bento records its build time.
"""

from __future__ import annotations

import argparse
import subprocess
from pathlib import Path

import yaml

DETERMINISTIC = ("generate", "process", "train", "evaluate")


def out_hashes(lock: dict, stages: tuple[str, ...]) -> dict[str, dict[str, str]]:
    """{stage: {out path: md5}} of a parsed dvc.lock (metrics and plots outs included)."""
    found = lock.get("stages", {})
    return {
        name: {out["path"]: out.get("md5", "") for out in found.get(name, {}).get("outs", [])}
        for name in stages
    }


def committed_lock(rev: str, root: Path = Path(".")) -> dict:
    """dvc.lock as committed at `rev`."""
    shown = subprocess.run(
        ["git", "show", f"{rev}:dvc.lock"], cwd=root, capture_output=True, text=True
    )
    if shown.returncode != 0:
        raise SystemExit(f"error: no dvc.lock at {rev}: {shown.stderr.strip()}")
    return yaml.safe_load(shown.stdout) or {}


def differences(committed: dict, reproduced: dict, stages: tuple[str, ...]) -> list[str]:
    """One line per output whose hash was not reproduced (or that is missing on one side)."""
    old, new = out_hashes(committed, stages), out_hashes(reproduced, stages)
    lines = []
    for stage in stages:
        if not old[stage]:
            lines.append(f"{stage}: not in the committed dvc.lock")
        for path in sorted(old[stage].keys() | new[stage].keys()):
            before, after = old[stage].get(path), new[stage].get(path)
            if before != after:
                lines.append(
                    f"{stage}: {path} committed {before or '-'}, reproduced {after or '-'}"
                )
    return lines


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("stages", nargs="*", default=list(DETERMINISTIC))
    parser.add_argument("--rev", default="HEAD", help="revision with the committed dvc.lock")
    args = parser.parse_args(argv)
    stages = tuple(args.stages)
    reproduced = yaml.safe_load(Path("dvc.lock").read_text()) or {}
    lines = differences(committed_lock(args.rev), reproduced, stages)
    for line in lines:
        print(line)
    if lines:
        print(
            f"lock check FAILED: {len(lines)} output(s) of {', '.join(stages)} differ from "
            f"{args.rev}'s dvc.lock; commit the dvc.lock that `dvc repro` writes, or find what "
            "makes the bits differ (train.determinism, the environment)"
        )
        raise SystemExit(1)
    count = sum(len(v) for v in out_hashes(reproduced, stages).values())
    print(f"lock check passed: {count} outputs of {', '.join(stages)} as in {args.rev}'s dvc.lock")


if __name__ == "__main__":
    main()
