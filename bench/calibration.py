"""Calibration and the "unknown" answer with default params: the real pipeline (`dvc repro`) in a
scratch copy of this checkout per data source, then each model's test figures and how many
pictures of the other source it refuses.

For each case SOURCE:MODEL it reproduces evaluate with only `generate.source` and `train.model`
set, and prints from metrics/evaluate the test ECE (15 bins) and NLL without and with the
temperature, the thresholds, and the coverage and selective accuracy under both "unknown"
rules with the share of test images each refused. Then it runs `cnnpipe predict --model
models/model.pt` on the other source's test images (digits for a shapes model, shapes for a
digits model) and counts the answers "unknown", and of those "unfamiliar" (the distance rule)
and "unsure" (the confidence rule alone). For comparison it also prints the share refused by
single scores at the whole coverage of validation images: the largest logit, the energy score,
and Mahalanobis distances of the model's features (see other_scores; the product's distance is
the second of these, with Ledoit-Wolf shrinkage, sharing the refusals with the confidence).

    python bench/calibration.py                                   # shapes:lenet5 digits:resnet18
    python bench/calibration.py --cases digits:lenet5 --keep /tmp/calibration
    python bench/calibration.py --cases shapes:lenet5 --set train.epochs=1   # other params
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "bench"))

from quality import add_set_argument, overrides, repro, scratch_copy, set_params  # noqa: E402

from cnnpipe.core import preprocess  # noqa: E402
from cnnpipe.core.dataset import read_split  # noqa: E402
from cnnpipe.model import calibration, checkpoint, registry  # noqa: E402
from cnnpipe.model.inference import Placement, logits  # noqa: E402


def test_files(root: Path) -> list[Path]:
    with open(root / "data/processed/test.csv", newline="") as f:
        return [root / "data/raw" / row["file"] for row in csv.DictReader(f)]


def refused_by_cnnpipe_predict(root: Path, files: list[Path]) -> tuple[float, float, float]:
    """The share of `files` that `cnnpipe predict` answers "unknown" with root's model.pt, and
    the shares refused as "unfamiliar" (far from every class) and as "unsure"."""
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    command = [sys.executable, "-c", "from cnnpipe.cli import main; main()", "predict"]
    out = root / "ood.json"
    result = subprocess.run(
        [*command, *map(str, files), "--model", str(root / "models/model.pt"), "--out", str(out)],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        raise SystemExit(f"cnnpipe predict failed: {result.stderr[-2000:]}")
    rows = json.loads(out.read_text())
    kinds = [row.get("refusal") for row in rows]
    return (
        sum(row["label"] is None for row in rows) / len(rows),
        kinds.count("unfamiliar") / len(rows),
        kinds.count("unsure") / len(rows),
    )


def mahalanobis_score(train: np.ndarray, labels: np.ndarray, classes: int):
    """A score from the Mahalanobis distance to the nearest class mean of the train features
    (one covariance shared by the classes, shrunk a little towards its mean variance)."""
    means = np.stack([train[labels == c].mean(0) for c in range(classes)])
    centred = train - means[labels]
    covariance = centred.T @ centred / len(centred)
    shrink = 1e-3 * np.trace(covariance) / len(covariance)
    precision = np.linalg.inv(covariance + shrink * np.eye(len(covariance)))

    def score(f: np.ndarray) -> np.ndarray:
        return -np.min([np.einsum("ij,jk,ik->i", f - m, precision, f - m) for m in means], axis=0)

    return score


def other_scores(root: Path, files: list[Path]) -> dict[str, tuple[float, float]]:
    """For other scores of how in-distribution an image is, (test coverage, share of `files`
    refused) at the threshold that keeps the model's target coverage of validation images: the
    largest logit; the energy score (logsumexp of the logits); the Mahalanobis distance to the
    nearest class of the train split (Lee et al., 2018) of the classifier head's input; and the
    same of the feature statistics of the early stages: the mean and standard deviation of each
    channel of every stage whose output map is larger than 1x1."""
    model, card, _ = checkpoint.load(root / "models/model.pt")
    placement = Placement(torch.device("cpu"), card.mean, card.std)
    head, stages = [], []
    model.get_submodule(registry.head_name(model)).register_forward_hook(
        lambda _m, inputs, _out: head.append(inputs[0].detach())
    )
    extractor = getattr(model, "features", model)
    for stage in extractor.children():
        if isinstance(stage, torch.nn.Conv2d) or any(stage.children()):
            stage.register_forward_hook(lambda _m, _i, out: stages.append(out.detach()))

    def run(images: np.ndarray) -> tuple[torch.Tensor, np.ndarray, np.ndarray]:
        head.clear()
        stages.clear()
        z = logits(model, torch.from_numpy(np.array(images)), placement, 100_000)  # one batch
        maps = [m for m in stages if m.dim() == 4 and min(m.shape[-2:]) > 1]
        statistics = torch.cat([s for m in maps for s in (m.mean((2, 3)), m.std((2, 3)))], 1)
        return z, torch.cat(head).double().numpy(), statistics.double().numpy()

    processed = root / "data/processed"
    train = read_split(processed, "train")
    _, train_head, train_statistics = run(train.images)
    classes = len(card.classes)
    head_score = mahalanobis_score(train_head, train.labels, classes)
    statistics_score = mahalanobis_score(train_statistics, train.labels, classes)
    splits = {
        "val": run(read_split(processed, "val").images),
        "test": run(read_split(processed, "test").images),
        "other": run(np.stack([preprocess.load(f, card.image_size, card.channels) for f in files])),
    }
    scores = {
        "max logit": lambda z, h, s: z.max(1).values.numpy(),
        "energy": lambda z, h, s: torch.logsumexp(z, 1).numpy(),
        "Mahalanobis, head input": lambda z, h, s: head_score(h),
        "Mahalanobis, early-stage statistics": lambda z, h, s: statistics_score(s),
    }
    figures = {}
    for name, score in scores.items():
        val, test, other = (score(*splits[s]) for s in ("val", "test", "other"))
        threshold = calibration.threshold_for_coverage(val, card.target_coverage or 1.0)
        figures[name] = (float((test >= threshold).mean()), float((other < threshold).mean()))
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", nargs="+", default=["shapes:lenet5", "digits:resnet18"])
    parser.add_argument("--keep", type=Path, help="keep the scratch projects under this folder")
    add_set_argument(parser)
    args = parser.parse_args()
    extra = overrides(args.set)
    cases = [case.split(":") for case in args.cases]
    base = Path(args.keep or tempfile.mkdtemp(prefix="cnnpipe-calibration-"))
    roots = {}
    for source in dict.fromkeys(["shapes", "digits"]):  # both: each is the other's stranger
        root = roots[source] = base / source
        if root.exists():
            shutil.rmtree(root)
        root.mkdir(parents=True)
        scratch_copy(root)
        set_params(root, {"generate.source": source, **extra})
        repro(root, "process")
    rows = []
    for source, model in cases:
        root = roots[source]
        set_params(root, {"train.model": model})
        repro(root, "evaluate")
        m = json.loads((root / "metrics/evaluate/metrics.json").read_text())
        card = checkpoint.card_of(checkpoint.read(root / "models/model.pt"))
        other = "digits" if source == "shapes" else "shapes"
        strangers = test_files(roots[other])
        refused = refused_by_cnnpipe_predict(root, strangers)
        rows.append((source, model, m, card, other, refused, other_scores(root, strangers)))
        print(f"calibration: {source} {model}: {m} refused {refused}", flush=True)
    print(
        "\n| data | model | T | test ECE before / after | test NLL before / after | threshold "
        "| distance threshold | test coverage | test refused unsure / unfamiliar "
        "| selective accuracy | accuracy | refused of the other source (unfamiliar / unsure) |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for source, model, m, card, other, (refused, far, unsure), _ in rows:
        limit = f"{card.distance_threshold:.2f}" if card.distance_threshold is not None else "-"
        print(
            f"| {source} | {model} | {card.temperature:.3f} | {m['test_ece_uncalibrated']:.4f} / "
            f"{m['test_ece']:.4f} | {m['test_nll_uncalibrated']:.4f} / {m['test_nll']:.4f} | "
            f"{card.threshold:.3f} | {limit} | {m['test_coverage']:.4f} | "
            f"{m.get('test_refused_unsure', float('nan')):.4f} / "
            f"{m.get('test_refused_unfamiliar', float('nan')):.4f} | "
            f"{m['test_selective_accuracy']:.4f} | {m['test_accuracy']:.4f} | {other}: "
            f"{refused:.3f} ({far:.3f} / {unsure:.3f}) |"
        )
    names = list(rows[0][6]) if rows else []
    print("\nOther scores at the same coverage of validation images: test coverage / refused")
    print(f"| data | model | {' | '.join(names)} |")
    print("|---|---|" + "---|" * len(names))
    for source, model, *_, others in rows:
        cells = " | ".join(f"{others[n][0]:.3f} / {others[n][1]:.3f}" for n in names)
        print(f"| {source} | {model} | {cells} |")
    print(f"projects in {base if args.keep else '(removed)'}")
    if not args.keep:
        shutil.rmtree(base)


if __name__ == "__main__":
    main()
