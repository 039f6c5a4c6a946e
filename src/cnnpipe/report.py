"""The pull-request report: what changed against a git revision (params, metrics and the gate's
verdict) and the pictures of both revisions (loss and accuracy curves, confusion matrix,
misclassified test images), as one markdown file with its images beside it.

    cnnpipe-report --rev main --out report      # report/report.md, report/plots/*.png

DVC computes every diff (`dvc params diff`, `dvc metrics diff`, `dvc plots diff`); this module
only lays them out and draws dvc.yaml's line plots, which DVC renders as Vega specs, to PNG
(markdown shows images, not Vega).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

from cnnpipe import gate

CURVES = ("Loss", "Accuracy")  # dvc.yaml's top-level plots, drawn for both revisions
IMAGES = {
    "Confusion matrix": "metrics/evaluate/plots/images/confusion_matrix.png",
    "Misclassified test images": "metrics/evaluate/plots/images/misclassified.png",
}
WORKSPACE = "workspace"  # DVC's name for the working tree's revision


def dvc(*args: str) -> str:
    """Run a dvc command in the current project; its stdout."""
    done = subprocess.run(
        [sys.executable, "-m", "dvc", *args], capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise SystemExit(f"error: dvc {' '.join(args)} failed: {done.stderr.strip()}")
    return done.stdout


def params_section(rev: str) -> str:
    table = dvc("params", "diff", rev, "--md").strip()
    return table or f"No params changed against `{rev}`."


def metrics_section(rev: str, metric: str, max_drop: float) -> tuple[str, str]:
    """(the gate's verdict line, the metrics tables) against `rev`: the metrics that changed,
    then every metric in a folded block."""
    diff = gate.metrics_diff(rev)
    passed, reason = gate.check(diff, metric, max_drop)
    verdict = f"**Gate {'passed' if passed else 'FAILED'}**: {reason}."
    changed = {
        path: {name: v for name, v in metrics.items() if v.get("old") != v.get("new")}
        for path, metrics in diff.items()
    }
    changed = {path: metrics for path, metrics in changed.items() if metrics}
    shown = gate.table(changed) if changed else f"No metric changed against `{rev}`."
    folded = f"<details><summary>All metrics</summary>\n\n{gate.table(diff)}\n\n</details>"
    return verdict, f"{shown}\n\n{folded}"


def plots_diff(rev: str, out: Path) -> dict[str, list[dict]]:
    """`dvc plots diff rev --json --split`: data points of every plot, images copied to out."""
    return json.loads(dvc("plots", "diff", rev, "--json", "--split", "-o", str(out)))["data"]


def draw_curves(title: str, plot: dict, path: Path) -> None:
    """One line per revision and series of a DVC line plot (its data points and colours)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    anchors = plot.get("anchor_definitions", {})
    rows = anchors.get("<DVC_METRIC_DATA>", [])
    colours = anchors.get("<DVC_METRIC_COLOR>", {}).get("scale", {})
    colour = dict(zip(colours.get("domain", []), colours.get("range", []), strict=False))
    series: dict[tuple[str, str], list[tuple[float, float]]] = {}
    for row in rows:
        key = (row["rev"], row["filename::field"].split("::")[-1])
        series.setdefault(key, []).append((float(row["step"]), float(row["dvc_inferred_y_value"])))
    # revision and series names are drawn as written, never parsed as math text
    with plt.rc_context({"text.parse_math": False}):
        fields = sorted({field for _, field in series})
        figure, axes = plt.subplots(figsize=(5.5, 3.5), dpi=100)
        for (rev, field), points in sorted(series.items()):
            steps, values = zip(*sorted(points), strict=True)
            style = "-" if fields.index(field) == 0 else "--"
            axes.plot(steps, values, style, color=colour.get(rev), label=f"{rev}: {field}")
        axes.set(title=title, xlabel="epoch (step)")
        axes.legend(fontsize="small")
        figure.tight_layout()
        figure.savefig(path, format="png", metadata={"Software": None})
        plt.close(figure)


def _image(path: str, out: Path) -> str:
    return f"![]({Path(os.path.relpath(path, out)).as_posix()})"


def write_report(
    rev: str, out: Path, metric: str = "test_accuracy", max_drop: float = 0.02
) -> Path:
    """Write out/report.md (and its images under out/plots); returns the markdown's path."""
    plots_dir = out / "plots"
    plots_dir.mkdir(parents=True, exist_ok=True)
    verdict, metrics = metrics_section(rev, metric, max_drop)
    plots = plots_diff(rev, plots_dir)
    lines = [f"## cnnpipe: {WORKSPACE} against `{rev}`", "", verdict, "", "### Metrics", ""]
    lines += [metrics, "", "### Params", "", params_section(rev), "", "### Training curves", ""]
    drawn = []
    for title in CURVES:
        for plot in plots.get(title, []):
            name = plots_dir / f"{title.lower()}.png"
            draw_curves(title, plot, name)
            drawn.append(_image(str(name), out))
    lines += [" ".join(drawn) or "No training curves in either revision.", ""]
    for title, source in IMAGES.items():
        found = {p["revisions"][0]: p["url"] for p in plots.get(source, []) if p.get("url")}
        revs = [r for r in (rev, WORKSPACE) if r in found]
        lines += [f"### {title}", ""]
        if not revs:
            lines += [f"No {title.lower()} in either revision.", ""]
            continue
        lines += ["| " + " | ".join(f"`{r}`" for r in revs) + " |"]
        lines += ["|" + "---|" * len(revs)]
        lines += ["| " + " | ".join(_image(found[r], out) for r in revs) + " |", ""]
    report = out / "report.md"
    report.write_text("\n".join(lines))
    return report


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rev", default="main", help="baseline git revision (default main)")
    parser.add_argument("--out", type=Path, default=Path("report"), help="folder to write")
    parser.add_argument("--metric", default="test_accuracy", help="metric the gate guards")
    parser.add_argument("--max-drop", type=float, default=0.02, help="largest allowed drop")
    args = parser.parse_args(argv)
    print(f"report: {write_report(args.rev, args.out, args.metric, args.max_drop)}")


if __name__ == "__main__":
    main()
