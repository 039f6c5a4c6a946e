"""MLflow tracking: one run per trained model, shared by the train and evaluate stages.

The store defaults to `sqlite:///<project root>/mlflow.db`, the project root being DVC's own also
inside a temporary experiment copy, so every run lands where `mlflow ui` in the root reads.
`MLFLOW_TRACKING_URI` overrides it. Tracking never breaks a stage: the first failure prints one
warning and the run goes quiet. Each run is tagged with the process that owns it; a run left
RUNNING by a process that is gone (killed with SIGKILL, a crash, a reboot) is marked KILLED by the
next run started on that host, and reopened by the training that resumes it.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from cnnpipe.core import params
from cnnpipe.core.errors import CnnpipeError
from cnnpipe.core.params import read_yaml
from cnnpipe.core.processes import process_id, still_running, uninterrupted
from cnnpipe.core.project import git_revision, project_root
from cnnpipe.core.redact import without_credentials

EXPERIMENT = "cnnpipe"
MODEL_HASH_TAG = "cnnpipe.model_sha256"
REGISTERED_MODEL = "cnnpipe"  # in MLflow's model registry: models:/cnnpipe/<version>
CHAMPION = "champion"  # the alias a passing gate on main sets: models:/cnnpipe@champion
PROCESS_TAG = "cnnpipe.process"  # the owner, as cnnpipe.core.processes.process_id() names it


def tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{project_root() / 'mlflow.db'}"


def shown_uri() -> str:
    """The tracking URI as messages print it: without the credentials it may hold."""
    return without_credentials(tracking_uri())


def flatten(sections: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"train": {"epochs": 3}} -> {"train.epochs": 3}; lists become comma-separated strings."""
    flat: dict[str, Any] = {}
    for key, value in sections.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{name}."))
        elif isinstance(value, list | tuple):
            flat[name] = ",".join(map(str, value))
        else:
            flat[name] = value
    return flat


def pipeline_params(path: Path = Path("params.yaml")) -> dict[str, Any]:
    """Every section of params.yaml, flattened, for the run's record.

    Read as plain YAML: logging the other stages' params does not make them inputs of this one
    (DVC re-runs a stage only for its own section, so that is all a stage may compute from).
    """
    raw = read_yaml(path)  # a mapping once the stage has validated it; None when empty
    return flatten(raw if isinstance(raw, Mapping) else {})


def data_params(path: Path = Path("params.yaml")) -> dict[str, Any]:
    """Where the data came from and how it was made: the generate and process sections of
    params.yaml, for the record (as pipeline_params: not inputs of the stage that logs them)."""
    p = params.load(path)
    return {"source": p.generate.source, **p.model_dump(include={"generate", "process"})}


def dvc_tags() -> dict[str, str]:
    """The git commit and DVC experiment a stage runs under."""
    tags = {"git_commit": git_revision() or "unknown"}
    if name := os.environ.get("DVC_EXP_NAME"):
        tags["dvc_exp_name"] = name
    if baseline := os.environ.get("DVC_EXP_BASELINE_REV"):
        tags["dvc_exp_baseline_rev"] = baseline
    return tags


class Run:
    """An MLflow run that warns once and goes quiet instead of raising."""

    def __init__(self) -> None:
        self.run_id: str | None = None
        self.failed = False
        self._mlflow_client: Any = None

    def _guard(self, what: str, action: Callable[[], Any]) -> Any:
        if self.failed:
            return None
        try:
            # Not broken into by SIGTERM: an interrupted write keeps the store's lock until the
            # stage has ended, and the stage's own cleanup (ending the run) would wait for it.
            with uninterrupted():
                return action()
        except Exception as exc:  # tracking is best-effort by design
            self.failed = True
            print(
                f"warning: MLflow tracking at {shown_uri()} failed while {what} "
                f"({without_credentials(str(exc))}); training goes on without tracking",
                file=sys.stderr,
            )
            return None

    def _client(self):
        """The run's MLflow client, made on first use (importing mlflow takes a second)."""
        if self._mlflow_client is None:
            os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
            os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
            import mlflow

            mlflow.set_tracking_uri(tracking_uri())
            self._mlflow_client = mlflow.MlflowClient()
        return self._mlflow_client

    @classmethod
    def start(cls, run_name: str, params: Mapping[str, Any], tags: Mapping[str, str]) -> Run:
        """A new run in the cnnpipe experiment, with flat params and tags."""
        run = cls()

        def begin() -> None:
            client = run._client()
            experiment = client.get_experiment_by_name(EXPERIMENT)
            experiment_id = (
                experiment.experiment_id if experiment else client.create_experiment(EXPERIMENT)
            )
            close_abandoned(client, experiment_id)
            owned = {**tags, PROCESS_TAG: process_id()}
            created = client.create_run(experiment_id, run_name=run_name, tags=owned)
            run.run_id = created.info.run_id
            from mlflow.entities import Param

            items = [Param(k, str(v)) for k, v in params.items()]
            for i in range(0, len(items), 100):
                client.log_batch(run.run_id, params=items[i : i + 100])

        run._guard("starting a run", begin)
        return run

    @classmethod
    def reopen(cls, run_id: str) -> Run:
        """A run of a training that stopped before it ended (marked KILLED or FAILED, or left
        RUNNING by a process that is gone), RUNNING again and owned by this process, so that the
        resumed training logs on into it. A run that is gone or deleted leaves run_id None."""
        run = cls()

        def reopen() -> None:
            from mlflow.exceptions import MlflowException

            client = run._client()
            try:
                found = client.get_run(run_id)
            except MlflowException:  # another store, or the run was removed from this one
                return
            if found.info.lifecycle_stage != "active":
                return
            # the owner first: a run RUNNING under a dead owner is closed by any new run
            client.set_tag(run_id, PROCESS_TAG, process_id())
            client.update_run(run_id, status="RUNNING")  # as mlflow.start_run(run_id=...) does
            run.run_id = run_id

        run._guard("reopening the run", reopen)
        return run

    @classmethod
    def find(cls, model_hash: str) -> Run:
        """The latest run whose model has this hash (the training that produced it)."""
        run = cls()

        def search() -> None:
            client = run._client()
            experiment = client.get_experiment_by_name(EXPERIMENT)
            found = client.search_runs(
                [experiment.experiment_id] if experiment else [],
                filter_string=f"tags.`{MODEL_HASH_TAG}` = '{model_hash}'",
                order_by=["attributes.start_time DESC"],
                max_results=1,
            )
            if not found:
                raise LookupError(f"no run is tagged with model hash {model_hash[:12]}")
            run.run_id = found[0].info.run_id

        run._guard("finding the training run", search)
        return run

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        def log() -> None:
            from mlflow.entities import Metric

            now = int(time.time() * 1000)
            batch = [Metric(k, float(v), now, step or 0) for k, v in metrics.items()]
            self._client().log_batch(self.run_id, metrics=batch)

        self._active("logging metrics", log)

    def logged_steps(self, key: str) -> set[int] | None:
        """The steps at which the run has a value of metric `key` (None: no run, or no store)."""

        def steps() -> set[int]:
            return {m.step for m in self._client().get_metric_history(self.run_id, key)}

        return self._active(f"reading {key}", steps)

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        self._active(
            f"logging {path}",
            lambda: self._client().log_artifact(self.run_id, str(path), artifact_path),
        )

    def log_dict(self, data: dict, name: str) -> None:
        self._active(f"logging {name}", lambda: self._client().log_dict(self.run_id, data, name))

    def set_tags(self, tags: Mapping[str, str]) -> None:
        def tag() -> None:
            client = self._client()
            for key, value in tags.items():
                client.set_tag(self.run_id, key, value)

        self._active("tagging the run", tag)

    def log_dataset(self, name: str, digest: str, path: Path, profile: Mapping[str, Any]) -> None:
        """The run's training data as an MLflow dataset input (context `training`): its name,
        its digest (DVC's hash of the folder), where it is, and `profile`: what it was made
        from."""

        def log() -> None:
            import json

            from mlflow.entities import Dataset, DatasetInput, InputTag
            from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

            dataset = Dataset(
                name=name,
                digest=digest,
                source_type="local",
                source=json.dumps({"uri": str(path)}),
                profile=json.dumps(profile, sort_keys=True),
            )
            entity = DatasetInput(dataset, tags=[InputTag(MLFLOW_DATASET_CONTEXT, "training")])
            self._client().log_inputs(self.run_id, datasets=[entity])

        self._active("logging the dataset", log)

    def log_model(self, model, input_example) -> None:
        """The model with its signature inferred from an input example."""

        def log() -> None:
            import mlflow

            self._client()
            with mlflow.start_run(run_id=self.run_id):
                mlflow.pytorch.log_model(
                    model,
                    name="model",
                    input_example=input_example,
                    pip_requirements=_requirements(),
                )

        self._active("logging the model", log)

    def register_model(self, model_hash: str, name: str = REGISTERED_MODEL) -> str | None:
        """Register the model this run logged as a version of `name` in the model registry,
        tagged with its hash (once: an existing version for the hash is returned); the version."""

        def register() -> str:
            client = self._client()
            existing = registered_version(client, model_hash, name)
            if existing is not None:
                return existing
            outputs = client.get_run(self.run_id).outputs.model_outputs
            if not outputs:
                raise LookupError(f"run {self.run_id} logged no model")
            import mlflow

            version = mlflow.register_model(
                f"models:/{outputs[-1].model_id}", name, tags={MODEL_HASH_TAG: model_hash}
            )
            return str(version.version)

        return self._active("registering the model", register)

    def end(self, status: str = "FINISHED") -> None:
        self._active("ending the run", lambda: self._client().set_terminated(self.run_id, status))

    def _active(self, what: str, action: Callable[[], Any]) -> Any:
        return self._guard(what, action) if self.run_id is not None else None


def registered_version(client, model_hash: str, name: str = REGISTERED_MODEL) -> str | None:
    """The registry's version of `name` whose model has this hash, if any."""
    found = client.search_model_versions(
        f"name = '{name}' and tags.`{MODEL_HASH_TAG}` = '{model_hash}'"
    )
    return str(max(int(v.version) for v in found)) if found else None


def promote(model_hash: str, alias: str = CHAMPION, name: str = REGISTERED_MODEL) -> str:
    """Point `alias` at the registered version of the model with this hash; returns the version.
    Unlike tracking, this is not best-effort: a model that is not registered stops it."""
    import mlflow

    client = mlflow.MlflowClient(tracking_uri())
    version = registered_version(client, model_hash, name)
    if version is None:
        raise CnnpipeError(
            f"no version of {name!r} in the model registry at {shown_uri()} has model "
            f"{model_hash[:12]}; run the package stage (dvc repro) against this store first"
        )
    client.set_registered_model_alias(name, alias, version)
    return version


def close_abandoned(client, experiment_id: str) -> list[str]:
    """Mark KILLED the runs of the experiment left RUNNING by a process that is gone; return
    their ids. Runs owned by another host, or by no known process, are left alone."""
    closed = []
    for run in client.search_runs(
        [experiment_id], filter_string="attributes.status = 'RUNNING'", max_results=1000
    ):
        owner = run.data.tags.get(PROCESS_TAG)
        if owner and still_running(owner) is False:
            client.set_terminated(run.info.run_id, "KILLED")
            closed.append(run.info.run_id)
            print(
                f"tracking: MLflow run {run.info.run_name} ({run.info.run_id[:8]}) was left "
                "RUNNING by a process that is gone; marked KILLED",
                flush=True,
            )
    return closed


def _requirements() -> list[str]:
    """The pinned torch pair the logged model needs (local version labels such as +cpu dropped)."""
    from importlib.metadata import version

    return [f"{name}=={version(name).split('+')[0]}" for name in ("torch", "torchvision")]
