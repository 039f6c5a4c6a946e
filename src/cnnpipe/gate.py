"""The regression gate: compare the workspace's metrics with a git revision through DVC, print the
table, and fail when the chosen metric dropped by more than the allowed amount. With --promote, a
pass points that alias of MLflow's registered model at the workspace's model: the version the
package stage recorded it registered (models/package.json), once its run and files check out.

    cnnpipe-gate --rev main --metric test_accuracy --max-drop 0.02 [--promote champion]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from cnnpipe import tracking
from cnnpipe.core.errors import CnnpipeError
from cnnpipe.model.files import MODEL_FILE, file_hash
from cnnpipe.serve import record


def metrics_diff(rev: str) -> dict:
    """The workspace's metrics against `rev`, unchanged ones included, as `dvc metrics diff REV
    --json --all` prints them: {file: {metric: {"old", "new", "diff"}}}. Through DVC's Python
    API, in this process: a second less than starting `dvc`."""
    from dvc.exceptions import DvcException
    from dvc.repo import Repo

    try:
        with Repo() as repo:
            return repo.metrics.diff(a_rev=rev, all=True).get("diff", {})
    except DvcException as exc:
        raise SystemExit(f"error: dvc metrics diff {rev} failed: {exc}") from None


def table(diff: dict) -> str:
    rows = ["| file | metric | baseline | workspace | change |", "|---|---|---|---|---|"]
    for path, metrics in sorted(diff.items()):
        for name, values in sorted(metrics.items()):
            old, new, change = values.get("old"), values.get("new"), values.get("diff")
            rows.append(f"| {path} | {name} | {_fmt(old)} | {_fmt(new)} | {_fmt(change)} |")
    return "\n".join(rows)


def _fmt(value) -> str:
    return f"{value:.4f}" if isinstance(value, float) else ("-" if value is None else str(value))


def check(diff: dict, metric: str, max_drop: float) -> tuple[bool, str]:
    """(passed, reason) for `metric` in any metrics file of the diff."""
    found = [(path, m[metric]) for path, m in diff.items() if metric in m]
    if not found:
        return False, f"metric {metric!r} is in no metrics file; choose one of the table's metrics"
    for path, values in found:
        old, new = values.get("old"), values.get("new")
        if new is None:
            return False, f"{path}:{metric} is missing from the workspace; run dvc repro"
        if old is not None and old - new > max_drop:
            return False, (
                f"{path}:{metric} dropped from {old:.4f} to {new:.4f} "
                f"(by {old - new:.4f}, more than {max_drop:.4f})"
            )
    return True, f"{metric} is within {max_drop:.4f} of the baseline"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rev", default="HEAD", help="baseline git revision (default HEAD)")
    parser.add_argument("--metric", default="test_accuracy", help="metric to guard")
    parser.add_argument("--max-drop", type=float, default=0.02, help="largest allowed drop")
    parser.add_argument(
        "--promote",
        metavar="ALIAS",
        help=f"on a pass, point this alias (e.g. {tracking.CHAMPION}) at the model's version",
    )
    parser.add_argument("--model", type=Path, default=Path("models/model.pt"))
    args = parser.parse_args(argv)
    diff = metrics_diff(args.rev)
    print(table(diff))
    passed, reason = check(diff, args.metric, args.max_drop)
    print(("gate passed: " if passed else "gate FAILED: ") + reason)
    if passed and args.promote:
        try:
            registered = promote(args.model, args.promote)
        except (CnnpipeError, OSError) as exc:
            raise SystemExit(f"error: {exc}") from None
        print(
            f"promoted: models:/{registered.name}@{args.promote} is {registered.name} "
            f"version {registered.version}"
        )
    raise SystemExit(0 if passed else 1)


def promote(model: Path, alias: str) -> record.Registered:
    """Point `alias` at the registry version the package stage registered for `model`."""
    path = model.with_name(record.RECORD.name)
    packaged = record.read(path)
    model_hash = file_hash(model)
    if packaged.sha256.get(MODEL_FILE) != model_hash:
        raise CnnpipeError(f"{path} is the record of another model than {model}; run dvc repro")
    if packaged.registered is None:
        raise CnnpipeError(
            f"{path} records no registry version (tracking was off or failed when the package "
            "stage ran); run dvc repro -f package with the registry reachable"
        )
    registered = packaged.registered
    tracking.promote(
        model_hash, registered.version, registered.run_id, registered.sha256, alias, registered.name
    )
    return registered


if __name__ == "__main__":
    main()
