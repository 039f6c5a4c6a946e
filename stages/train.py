"""Stage 3: train the model in params `train` on data/processed; keep the best validation epoch.

Writes models/model.pt, per-epoch metrics under metrics/train (dvclive), and an MLflow run.
With `train.nproc` > 1 it starts itself in that many processes through torchrun; started by
torchrun (`torchrun --nproc_per_node N stages/train.py`, one node or many) it trains with
DistributedDataParallel and only rank 0 logs and writes.
"""

from pathlib import Path

import numpy as np
import torch
from dvclive import Live

from cnnpipe import checkpoint, datasets, models, params, preprocess, stage, training
from cnnpipe.outputs import atomic_path
from cnnpipe.tracking import MODEL_HASH_TAG, Run, dvc_tags, pipeline_params

PROCESSED, MODEL, LIVE_DIR = Path("data/processed"), Path("models/model.pt"), Path("metrics/train")


def fit_and_log(model, train, val, meta, p: params.TrainParams, device, run: Run, workers):
    """Train, logging every epoch to dvclive (written complete or not at all) and MLflow."""
    with atomic_path(LIVE_DIR) as live_dir:
        with Live(str(live_dir), dvcyaml=False, save_dvc_exp=False, report=None) as live:

            def on_epoch(m: training.EpochMetrics) -> None:
                values = {
                    "train_loss": m.train_loss,
                    "train_accuracy": m.train_accuracy,
                    "val_loss": m.val_loss,
                    "val_accuracy": m.val_accuracy,
                }
                for name, value in values.items():
                    live.log_metric(name, round(value, 6))
                live.next_step()
                extra = {"learning_rate": m.learning_rate, "epoch_seconds": m.seconds}
                run.log_metrics({**values, **extra}, step=m.epoch)
                stage.progress(
                    f"train: epoch {m.epoch}/{p.epochs} loss {m.train_loss:.4f} "
                    f"acc {m.train_accuracy:.3f} | val loss {m.val_loss:.4f} "
                    f"acc {m.val_accuracy:.3f} | {m.images_per_second:.0f} img/s"
                )

            model, result = training.fit(
                model, train, val, meta.mean, meta.std, p, device, on_epoch, workers
            )
            live.summary["best_epoch"] = result.best_epoch
            live.summary["parameters"] = models.count_parameters(model)
    return model, result


def main() -> None:
    p = params.load().train
    if p.nproc > 1 and not training.launched_by_torchrun():
        training.per_process_batch(p.batch_size, p.nproc)  # a bad value stops it before it starts
        stage.progress(f"train: starting {p.nproc} processes (torchrun --standalone)")
        training.launch(p.nproc, __file__)
        return
    with training.distributed(p.device) as (workers, device):
        train_model(p, workers, device)


def train_model(p: params.TrainParams, workers: training.Workers, device) -> None:
    meta = datasets.Meta.read(PROCESSED)
    train, val = (datasets.read_split(PROCESSED, s, mmap=None) for s in ("train", "val"))
    training.make_deterministic(p.seed, p.num_threads)
    model = models.build(p.model, meta.channels, len(meta.classes), meta.image_size, p.pretrained)
    if not workers.is_main:  # rank 0 logs and writes for every process
        training.fit(model, train, val, meta.mean, meta.std, p, device, workers=workers)
        return
    where = f"{workers.world_size} processes on {device.type}" if workers.distributed else device
    stage.progress(
        f"train: {p.model} ({models.count_parameters(model):,} parameters) on {where}, "
        f"{len(train.labels)} train / {len(val.labels)} val images, {p.epochs} epochs"
    )

    tags = dvc_tags()
    run = Run.start(tags.get("dvc_exp_name", p.model), pipeline_params(), tags)
    try:
        model, result = fit_and_log(model, train, val, meta, p, device, run, workers)
        info = checkpoint.ModelInfo(
            p.model, meta.classes, meta.image_size, meta.channels, meta.mean, meta.std
        )
        extra = {
            "params": p.model_dump(),
            "best_epoch": result.best_epoch,
            "best_val_accuracy": result.best_val_accuracy,
        }
        checkpoint.save(MODEL, model, info, extra)
    except BaseException:
        run.end("FAILED")
        raise

    model_hash = checkpoint.file_hash(MODEL)
    run.set_tags({MODEL_HASH_TAG: model_hash})
    run.log_metrics(
        {
            "best_val_accuracy": result.best_val_accuracy,
            "best_epoch": result.best_epoch,
            "train_seconds": result.train_seconds,
            "parameters": models.count_parameters(model),
            "model_bytes": MODEL.stat().st_size,
        }
    )
    example = preprocess.normalize(torch.from_numpy(np.array(val.images[:1])), meta.mean, meta.std)
    run.log_model(model, example.numpy())
    run.end()
    stage.progress(
        f"train: best val accuracy {result.best_val_accuracy:.4f} at epoch {result.best_epoch} "
        f"-> {MODEL} (sha256 {model_hash[:12]}), {result.train_seconds:.1f}s training"
    )


if __name__ == "__main__":
    stage.run(main)
