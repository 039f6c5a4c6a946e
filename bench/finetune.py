"""Fine-tuning against training from scratch on a small folder, with the real pipeline.

Trains `--model` with default params on `--pretrain` (a source: shapes, digits), keeps its
models/model.pt as the checkpoint, writes a small image folder of `--per-class` images per class
drawn from `--small` (another source, as its generate stage writes it), then trains the same
model on that folder twice per seed, from scratch (`train.init_from: checkpoints`) and from the
checkpoint (`train.init_from: <its path>`), with the same default params and epochs. It prints
each run's test accuracy and the mean over seeds.

    python bench/finetune.py                                   # lenet5: shapes -> 20 digits/class
    python bench/finetune.py --model resnet18 --seeds 0 1 2
    python bench/finetune.py --small shapes --small-classes ellipse pentagon cross --per-class 60
    python bench/finetune.py --seeds 0 --set train.epochs=1       # other params in every run
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from pathlib import Path
from statistics import mean

from quality import (
    MODELS,
    add_set_argument,
    overrides,
    repro,
    scratch_copy,
    set_params,
    training_record,
)

from cnnpipe.core.dataset import IMAGES_DIR


def small_folder(
    root: Path, source: str, per_class: int, dest: Path, classes: list[str] | None = None
) -> None:
    """The first `per_class` images of each class that `source`'s generate stage writes (for
    shapes, of `classes` if given)."""
    set_params(root, {"generate.source": source})
    if classes:
        set_params(root, {"generate.classes": "[" + ", ".join(classes) + "]"})
    repro(root, "generate")
    for label_dir in sorted((root / "data/raw" / IMAGES_DIR).iterdir()):
        (dest / label_dir.name).mkdir(parents=True)
        for image in sorted(label_dir.iterdir())[:per_class]:
            shutil.copy2(image, dest / label_dir.name / image.name)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="lenet5", choices=MODELS)
    parser.add_argument("--pretrain", default="shapes", help="the checkpoint's source")
    parser.add_argument("--small", default="digits", help="the source of the small folder")
    parser.add_argument("--per-class", type=int, default=20)
    parser.add_argument("--small-classes", nargs="+", help="shapes of the small folder")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    add_set_argument(parser)
    args = parser.parse_args()
    extra = overrides(args.set)

    base = Path(tempfile.mkdtemp(prefix="cnnpipe-finetune-"))
    root = base / "project"
    root.mkdir()
    scratch_copy(root)
    set_params(root, {"generate.source": args.pretrain, "train.model": args.model, **extra})
    repro(root, "evaluate")
    before = json.loads((root / "metrics/evaluate/metrics.json").read_text())["test_accuracy"]
    checkpoint = base / "checkpoint.pt"
    shutil.copy2(root / "models/model.pt", checkpoint)
    folder = base / "small"
    small_folder(root, args.small, args.per_class, folder, args.small_classes)
    set_params(root, {"generate.source": "folder", "generate.folder": str(folder)})

    rows: dict[str, list[float]] = {"scratch": [], "checkpoint": []}
    epochs = {}
    for seed in args.seeds:
        for start, init in (("scratch", "checkpoints"), ("checkpoint", str(checkpoint))):
            set_params(root, {"train.init_from": init, "train.seed": str(seed)})
            repro(root, "evaluate")
            scores = json.loads((root / "metrics/evaluate/metrics.json").read_text())
            rows[start].append(scores["test_accuracy"])
            epochs[start] = json.loads((root / "metrics/train/metrics.json").read_text())
            seconds = training_record(root)["train_seconds"]
            print(f"finetune: {start} seed {seed}: {scores['test_accuracy']:.4f} ({seconds:.0f} s)")
    split = json.loads((root / "metrics/process/split.json").read_text())
    sizes = {part: sum(counts.values()) for part, counts in split.items()}
    print(
        f"\n{args.model}: checkpoint trained on {args.pretrain} (test accuracy {before:.4f}); "
        f"small folder: {args.per_class} {args.small} images per class "
        f"({', '.join(args.small_classes or ['its classes'])}), split {sizes}; "
        f"{epochs['scratch']['epochs_run']} epochs each, default params"
    )
    print("| start | " + " | ".join(f"seed {s}" for s in args.seeds) + " | mean |")
    print("|---|" + "---|" * (len(args.seeds) + 1))
    for start, scores in rows.items():
        cells = " | ".join(f"{a:.4f}" for a in scores)
        print(f"| {start} | {cells} | {mean(scores):.4f} |")
    shutil.rmtree(base)


if __name__ == "__main__":
    main()
