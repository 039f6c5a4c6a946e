"""One training run as the train stage does it: the data, the model, the loop, and what it
records (the checkpoint, dvclive's metrics and plots, an MLflow run)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from dvclive import Live

from cnnpipe.core import kernels, stage
from cnnpipe.core.dataset import read_spec, read_split
from cnnpipe.core.outputs import atomic_path
from cnnpipe.core.params import TrainParams
from cnnpipe.core.preprocess import normalize
from cnnpipe.model import checkpoint, registry
from cnnpipe.tracking import MODEL_HASH_TAG, Run, dvc_tags, pipeline_params
from cnnpipe.train.distributed import ProcessRank
from cnnpipe.train.loop import EpochMetrics, FitResult, fit, make_deterministic


def train(
    p: TrainParams,
    processed: Path,
    model_file: Path,
    live_dir: Path,
    rank: ProcessRank,
    device: torch.device,
) -> None:
    """Train on the processed data; rank 0 writes model_file, live_dir and the MLflow run."""
    spec = read_spec(processed)
    train_split, val = (read_split(processed, s, mmap=None) for s in ("train", "val"))
    make_deterministic(p.seed, kernels.process_threads(p.num_threads))
    model = registry.build(p.model, spec.channels, len(spec.classes), spec.image_size, p.pretrained)
    if not rank.is_main:  # rank 0 logs and writes for every process
        fit(model, train_split, val, spec.mean, spec.std, p, device, rank=rank)
        return
    parameters = registry.count_parameters(model)
    where = f"{rank.world_size} processes on {device.type}" if rank.distributed else device
    stage.progress(
        f"train: {p.model} ({parameters:,} parameters) on {where}, "
        f"{len(train_split.labels)} train / {len(val.labels)} val images, {p.epochs} epochs"
    )

    tags = dvc_tags()
    run = Run.start(tags.get("dvc_exp_name", p.model), pipeline_params(), tags)
    try:
        with atomic_path(live_dir) as tmp:
            with Live(str(tmp), dvcyaml=False, save_dvc_exp=False, report=None) as live:
                model, result = fit(
                    model,
                    train_split,
                    val,
                    spec.mean,
                    spec.std,
                    p,
                    device,
                    lambda m: _log_epoch(m, p, live, run),
                    rank,
                )
                live.summary["best_epoch"] = result.best_epoch
                live.summary["parameters"] = parameters
        extra = {
            "params": p.model_dump(),
            "best_epoch": result.best_epoch,
            "best_val_accuracy": result.best_val_accuracy,
        }
        checkpoint.save(model_file, model, p.model, spec, extra)
    except KeyboardInterrupt:  # Ctrl-C, SIGTERM, or the launcher died
        run.end("KILLED")
        raise
    except BaseException:
        run.end("FAILED")
        raise
    _log_result(run, model, result, model_file, parameters, val.images[:2], spec)


def _log_epoch(m: EpochMetrics, p: TrainParams, live: Live, run: Run) -> None:
    values = {
        "train_loss": m.train_loss,
        "train_accuracy": m.train_accuracy,
        "val_loss": m.val_loss,
        "val_accuracy": m.val_accuracy,
    }
    for name, value in values.items():
        live.log_metric(name, round(value, 6))
    live.next_step()
    run.log_metrics(
        {**values, "learning_rate": m.learning_rate, "epoch_seconds": m.seconds}, m.epoch
    )
    stage.progress(
        f"train: epoch {m.epoch}/{p.epochs} loss {m.train_loss:.4f} "
        f"acc {m.train_accuracy:.3f} | val loss {m.val_loss:.4f} "
        f"acc {m.val_accuracy:.3f} | {m.images_per_second:.0f} img/s"
    )


def _log_result(
    run: Run,
    model: torch.nn.Module,
    result: FitResult,
    model_file: Path,
    parameters: int,
    example: np.ndarray,
    spec,
) -> None:
    model_hash = checkpoint.file_hash(model_file)
    run.set_tags({MODEL_HASH_TAG: model_hash})
    run.log_metrics(
        {
            "best_val_accuracy": result.best_val_accuracy,
            "best_epoch": result.best_epoch,
            "train_seconds": result.train_seconds,
            "parameters": parameters,
            "model_bytes": model_file.stat().st_size,
        }
    )
    # two images, not one: MLflow exports the model with torch.export, which fixes a batch size
    # of 1 for good but keeps a larger one dynamic
    normalized = normalize(torch.from_numpy(np.array(example)), spec.mean, spec.std)
    run.log_model(model, normalized.numpy())
    run.end()
    stage.progress(
        f"train: best val accuracy {result.best_val_accuracy:.4f} at epoch {result.best_epoch} "
        f"-> {model_file} (sha256 {model_hash[:12]}), {result.train_seconds:.1f}s training"
    )
