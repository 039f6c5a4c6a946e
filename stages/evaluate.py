"""Stage 4: score the trained model on the test split: metrics (calibration error and the
coverage at the "unknown" threshold included), per-class scores, the confusion matrix, a grid of
misclassified images, the reliability diagram and Grad-CAM heat maps, also added to the
training's MLflow run."""

import os

from cnnpipe.core import kernels

# Before anything imports torch: the bits of a prediction depend on its CPU kernels and threads.
os.environ.update(kernels.inference_environment())

from pathlib import Path

from dvclive import Live

from cnnpipe.core import params, stage
from cnnpipe.core.dataset import read_split
from cnnpipe.core.outputs import atomic_path, write_json
from cnnpipe.evaluate import figures, metrics
from cnnpipe.model import checkpoint, familiarity, files
from cnnpipe.model.inference import select_device
from cnnpipe.tracking import Run

FIGURES = ("confusion_matrix", "misclassified", "reliability", "gradcam")


def main(processed: Path, model_file: Path, out: Path) -> None:
    p = params.load().evaluate
    model, card, data = checkpoint.load(model_file)
    test = read_split(processed, "test")
    statistics = familiarity.from_checkpoint(data)
    result = metrics.evaluate(model, test, card, select_device("auto"), p.batch_size, statistics)
    names = card.classes

    with atomic_path(out) as tmp:
        with Live(str(tmp), dvcyaml=False, save_dvc_exp=False, report=None) as live:
            live.summary.update({k: round(v, 6) for k, v in result.metrics.items()})
            live.log_sklearn_plot(
                "confusion_matrix",
                [names[i] for i in result.y_true],
                [names[i] for i in result.y_pred],
                name="confusion_matrix.json",
            )
        plots = tmp / "plots"
        (plots / "images").mkdir(parents=True, exist_ok=True)
        figures.confusion_figure(result, names, plots / "images" / "confusion_matrix.png")
        wrong = figures.misclassified_figure(
            result, test, names, plots / "images" / "misclassified.png", p.max_misclassified
        )
        figures.reliability_figure(result, card, plots / "images" / "reliability.png")
        figures.gradcam_figure(
            model, card, test, result, plots / "images" / "gradcam.png", p.gradcam_images
        )
        write_json(plots / "per_class.json", result.per_class)

    run = Run.find(files.file_hash(model_file))
    run.log_metrics(result.metrics)
    for name in (*(f"images/{image}.png" for image in FIGURES), "per_class.json"):
        run.log_artifact(out / "plots" / name, "evaluation")
    summary = ", ".join(f"{k} {v:.4f}" for k, v in result.metrics.items())
    far = f", distance {card.distance_threshold:.2f}" if statistics is not None else ""
    summary += f" (at the threshold {card.threshold:.3f}{far}, temperature {card.temperature:.3f})"
    stage.progress(f"evaluate: {summary}; {wrong} of {len(test.labels)} misclassified -> {out}")


if __name__ == "__main__":
    stage.run(main)
