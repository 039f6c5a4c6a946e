"""Stage 4: score models/model.pt on the test split; write metrics/evaluate and log to MLflow."""

from pathlib import Path

from dvclive import Live

from cnnpipe import checkpoint, datasets, evaluation, params, stage, training
from cnnpipe.outputs import atomic_path, write_json
from cnnpipe.tracking import Run

PROCESSED, MODEL, OUT = Path("data/processed"), Path("models/model.pt"), Path("metrics/evaluate")


def main() -> None:
    p = params.load().evaluate
    model, info, _ = checkpoint.load(MODEL)
    test = datasets.read_split(PROCESSED, "test")
    result = evaluation.evaluate(model, test, info, training.select_device("auto"), p.batch_size)
    names = info.classes

    with atomic_path(OUT) as tmp:
        with Live(str(tmp), dvcyaml=False, save_dvc_exp=False, report=None) as live:
            live.summary.update({k: round(v, 6) for k, v in result.metrics.items()})
            live.log_sklearn_plot(
                "confusion_matrix",
                [names[i] for i in result.y_true],
                [names[i] for i in result.y_pred],
                name="confusion_matrix.json",
            )
        images = tmp / "plots" / "images"
        images.mkdir(parents=True, exist_ok=True)
        evaluation.confusion_figure(result, names, images / "confusion_matrix.png")
        wrong = evaluation.misclassified_figure(
            result, test, names, images / "misclassified.png", p.max_misclassified
        )
        write_json(tmp / "report.json", result.report)

    run = Run.find(checkpoint.file_hash(MODEL))
    run.log_metrics(result.metrics)
    for name in ("confusion_matrix.png", "misclassified.png"):
        run.log_artifact(OUT / "plots" / "images" / name, "evaluation")
    run.log_artifact(OUT / "report.json", "evaluation")
    summary = ", ".join(f"{k} {v:.4f}" for k, v in result.metrics.items())
    stage.progress(f"evaluate: {summary}; {wrong} of {len(test.labels)} misclassified -> {OUT}")


if __name__ == "__main__":
    stage.run(main)
