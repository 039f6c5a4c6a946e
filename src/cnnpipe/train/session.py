"""One training run as the train stage does it: the data, the model (from scratch or from a
checkpoint), the loop, and what it records: the checkpoint, dvclive's metrics, plots and the
recipe values it used, and an MLflow run. A run that was stopped goes on from its last complete
epoch (cnnpipe.train.resume): its earlier epochs are logged again into the fresh dvclive folder
and its MLflow run is reopened, so both read as those of an uninterrupted run."""

from __future__ import annotations

import functools
from pathlib import Path

import torch
from dvclive import Live

from cnnpipe.core import kernels, stage
from cnnpipe.core.dataset import InputSpec, dvc_hash, read_spec, read_split
from cnnpipe.core.errors import CnnpipeError
from cnnpipe.core.outputs import atomic_path
from cnnpipe.core.params import TrainParams
from cnnpipe.model import checkpoint, files, registry
from cnnpipe.model.calibration import Calibration, calibrate
from cnnpipe.tracking import MODEL_HASH_TAG, Run, data_params, dvc_tags, flatten, pipeline_params
from cnnpipe.train import recipe, resume, warm_start
from cnnpipe.train.distributed import ProcessRank
from cnnpipe.train.loop import EpochMetrics, FitResult, fit, make_deterministic


def starts_from_checkpoint(p: TrainParams) -> bool:
    """init_from names a file (the default, a folder, means from scratch)."""
    if Path(p.init_from).is_dir():
        if p.freeze_epochs:
            raise CnnpipeError(
                f"train.freeze_epochs is {p.freeze_epochs} but train.init_from is a folder "
                f"({p.init_from}), so there is no trained body to freeze; set train.init_from "
                "to a checkpoint file or train.freeze_epochs: 0"
            )
        return False
    return True


def model_input(p: TrainParams, spec: InputSpec) -> InputSpec:
    """What the model takes: the processed data's, normalised as torchvision's weights were
    trained when it starts from them (the train split's own statistics otherwise)."""
    if not p.pretrained:
        return spec
    mean, std = registry.pretrained_statistics(p.model, spec.channels)
    return spec.model_copy(update={"mean": mean, "std": std})


def check(p: TrainParams) -> None:
    """What can be checked before any process starts or any output is written, beyond what
    params.yaml's schema checks (train.batch_size over train.nproc among it)."""
    if starts_from_checkpoint(p):
        warm_start.read_weights(Path(p.init_from), p.model)


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
    p, chosen = recipe.resolve(p, spec.channels, spec.image_size)
    train_split, val = (read_split(processed, s, mmap=None) for s in ("train", "val"))
    make_deterministic(p.seed, kernels.process_threads(p.num_threads))
    model = registry.build(p.model, spec.channels, len(spec.classes), spec.image_size, p.pretrained)
    spec = model_input(p, spec)
    started = "from torchvision's ImageNet weights" if p.pretrained else "from scratch"
    if starts_from_checkpoint(p):
        started = warm_start.load_initial_weights(model, Path(p.init_from), p.model, spec.classes)
    freeze = p.freeze_epochs if starts_from_checkpoint(p) else 0
    states = _epoch_states(p, processed, model_file, rank)
    saved = states.load() if states else None
    train_model = functools.partial(
        fit,
        model,
        train_split,
        val,
        spec.mean,
        spec.std,
        p,
        device,
        rank=rank,
        freeze_epochs=freeze,
        resume_from=saved,
    )
    if not rank.is_main:  # rank 0 logs and writes for every process
        train_model(save_state=states.save if states else None)
        return
    parameters = registry.count_parameters(model)
    where = f"{rank.world_size} processes on {device.type}" if rank.distributed else device
    stage.progress(
        f"train: {p.model} ({parameters:,} parameters) on {where}, "
        f"{len(train_split.labels)} train / {len(val.labels)} val images, up to {p.epochs} "
        f"epochs, {started}"
    )
    if chosen:
        values = ", ".join(f"{k} {v}" for k, v in chosen.items())
        stage.progress(f"train: {p.model}'s recipe for the auto params: {values}")
    if states:
        _report_states(p, states, saved)
    done = [] if saved is None else [EpochMetrics(**m) for m in saved["result"]["history"]]

    run = _tracked_run(p, spec, saved)
    for m in _unlogged(run, done):  # a stop between saving an epoch and logging it
        run.log_metrics(_epoch_values(m), step=m.epoch)

    def save_state(state: dict) -> None:
        if states:
            states.save({**state, "mlflow_run_id": run.run_id})

    data_hash = dvc_hash(processed)
    run.log_dataset(processed.as_posix(), data_hash, processed.resolve(), data_params())
    try:
        with atomic_path(live_dir) as tmp:
            with Live(str(tmp), dvcyaml=False, save_dvc_exp=False, report=None) as live:
                live.log_params({"recipe": p.model, **chosen})
                for m in done:
                    _log_live(m, live)
                model, result = train_model(
                    on_epoch=lambda m: _log_epoch(m, p, live, run),
                    save_state=save_state if states else None,
                )
                live.summary.update(
                    best_epoch=result.best_epoch,
                    epochs_run=result.epochs_run,
                    parameters=parameters,
                )
        calibration = calibrate(
            model,
            train_split,
            val,
            spec,
            device,
            p.batch_size,
            p.calibrate,
            p.target_coverage,
            p.unfamiliar_share,
        )
        model.cpu()
        _log_calibration(calibration, run)
        extra = {
            # but `resume`: the model's bytes are the same whether or not the run could resume
            "params": p.model_dump(exclude=resume.NOT_IN_KEY),
            "best_epoch": result.best_epoch,
            "best_val_accuracy": result.best_val_accuracy,
            **calibration.checkpoint_entries(),
            "data_hash": data_hash,
        }
        checkpoint.save(model_file, model, p.model, spec, extra)
    except KeyboardInterrupt:  # Ctrl-C, SIGTERM, or the launcher died
        run.end("KILLED")
        raise
    except BaseException:
        run.end("FAILED")
        raise
    _log_result(run, result, model_file, parameters)
    if states:
        states.remove()  # last: a stop before this resumes with nothing left to train


def _epoch_states(
    p: TrainParams, processed: Path, model_file: Path, rank: ProcessRank
) -> resume.EpochStates | None:
    """This run's saved states; None with `train.resume: false`, which removes any."""
    if p.resume:
        return resume.EpochStates.for_run(p, processed, model_file, rank)
    if rank.is_main:
        resume.discard(model_file)
    return None


def _report_states(p: TrainParams, states: resume.EpochStates, saved: dict | None) -> None:
    if states.stale:
        stage.progress("train: removed the saved state of a run with other params, data or code")
    if saved is None:
        return
    last = saved["epoch"]
    trained = last == p.epochs or 0 < p.patience <= saved["since_best"]
    start = "with every epoch trained" if trained else f"from epoch {last + 1}/{p.epochs}"
    stage.progress(f"train: resuming {start} (the state of epoch {last} in {states.path})")


def _tracked_run(p: TrainParams, spec: InputSpec, saved: dict | None) -> Run:
    """The MLflow run of a resumed training, reopened; else (or if it is gone) a new one."""
    if saved is not None and saved.get("mlflow_run_id"):
        run = Run.reopen(saved["mlflow_run_id"])
        if run.run_id is not None or run.failed:
            return run
    tags = dvc_tags()
    # auto params as they were resolved: train's by the recipe, process's by the data
    used = {
        "train": p.model_dump(),
        "process": {"channels": spec.channels, "image_size": spec.image_size},
    }
    logged = {**pipeline_params(), **flatten(used)}
    return Run.start(tags.get("dvc_exp_name", p.model), logged, tags)


def _unlogged(run: Run, done: list[EpochMetrics]) -> list[EpochMetrics]:
    """The epochs of a resumed training that its MLflow run lacks."""
    if not done:
        return []
    logged = run.logged_steps("val_loss")
    return [] if logged is None else [m for m in done if m.epoch not in logged]


def _metrics(m: EpochMetrics) -> dict[str, float]:
    """What dvclive records of an epoch."""
    values = {
        "train_loss": m.train_loss,
        "train_accuracy": m.train_accuracy,
        "val_loss": m.val_loss,
        "val_accuracy": m.val_accuracy,
    }
    if m.ema_val_accuracy is not None:
        values["ema_val_accuracy"] = m.ema_val_accuracy
    return values


def _epoch_values(m: EpochMetrics) -> dict[str, float]:
    """What MLflow records of an epoch."""
    return {**_metrics(m), "learning_rate": m.learning_rate, "epoch_seconds": m.seconds}


def _log_live(m: EpochMetrics, live: Live) -> None:
    for name, value in _metrics(m).items():
        live.log_metric(name, round(value, 6))
    live.next_step()


def _log_epoch(m: EpochMetrics, p: TrainParams, live: Live, run: Run) -> None:
    _log_live(m, live)
    run.log_metrics(_epoch_values(m), step=m.epoch)
    ema = f" ema {m.ema_val_accuracy:.3f}" if m.ema_val_accuracy is not None else ""
    stage.progress(
        f"train: epoch {m.epoch}/{p.epochs} loss {m.train_loss:.4f} "
        f"acc {m.train_accuracy:.3f} | val loss {m.val_loss:.4f} "
        f"acc {m.val_accuracy:.3f}{ema} | {m.images_per_second:.0f} img/s"
    )


def _log_calibration(c: Calibration, run: Run) -> None:
    logged = {"temperature": c.temperature, "threshold": c.threshold, "val_nll": c.val_nll}
    if c.distance_threshold is not None:
        logged["distance_threshold"] = c.distance_threshold
    run.log_metrics(logged)
    far = (
        f" or features farther than {c.distance_threshold:.2f} from every class "
        f"({', '.join(c.statistics.layers)})"
        if c.statistics is not None and c.distance_threshold is not None
        else ""
    )
    stage.progress(
        f"train: calibrated on val: temperature {c.temperature:.3f} (NLL "
        f"{c.val_nll_uncalibrated:.4f} -> {c.val_nll:.4f}); top probability under "
        f"{c.threshold:.3f}{far} is unknown, which leaves {c.target_coverage:.0%} of val labelled"
    )


def _log_result(run: Run, result: FitResult, model_file: Path, parameters: int) -> None:
    """The run's summary and the model's hash, the tag that links the package stage's
    registration and the evaluation to this run (the model itself is registered by the package
    stage, as ONNX)."""
    model_hash = files.file_hash(model_file)
    run.set_tags({MODEL_HASH_TAG: model_hash, "cnnpipe.best_weights": result.best_weights})
    run.log_metrics(
        {
            "best_val_accuracy": result.best_val_accuracy,
            "best_epoch": result.best_epoch,
            "epochs_run": result.epochs_run,
            "train_seconds": result.train_seconds,
            "parameters": parameters,
            "model_bytes": model_file.stat().st_size,
        }
    )
    run.end()
    weights = " (moving average)" if result.best_weights == "ema" else ""
    stage.progress(
        f"train: best val accuracy {result.best_val_accuracy:.4f} at epoch {result.best_epoch}"
        f"{weights} of {result.epochs_run} -> {model_file} (sha256 {model_hash[:12]}), "
        f"{result.train_seconds:.1f}s training"
    )
