"""MLflow tracking: one run per trained model, shared by the train, evaluate and package stages;
the package stage registers the model from it, and the regression gate promotes that version.

The store defaults to `sqlite:///<project root>/mlflow.db`, the project root being DVC's own also
inside a temporary experiment copy, so every run lands where `mlflow ui` in the root reads, and
its artifacts go to `<project root>/mlruns`. `MLFLOW_TRACKING_URI` overrides it. Tracking never
breaks a stage: the first failure prints one warning and the run goes quiet. Each run is tagged
with the process that owns it; a run left RUNNING by a process that is gone (killed with SIGKILL,
a crash, a reboot) is marked KILLED by the next run started on that host, and reopened by the
training that resumes it.
"""

from __future__ import annotations

import hashlib
import os
import sys
import tempfile
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
from cnnpipe.model import files

EXPERIMENT = "cnnpipe"
MODEL_HASH_TAG = "cnnpipe.model_sha256"
REGISTERED_MODEL = "cnnpipe"  # in MLflow's model registry: models:/cnnpipe/<version>
CHAMPION = "champion"  # the alias a passing gate on main sets: models:/cnnpipe@champion
PROCESS_TAG = "cnnpipe.process"  # the owner, as cnnpipe.core.processes.process_id() names it


def default_tracking_uri() -> str:
    return f"sqlite:///{project_root() / 'mlflow.db'}"


def tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or default_tracking_uri()


def artifact_location() -> str | None:
    """Where a new experiment keeps its runs' artifacts: with the default store, mlruns/ in the
    project root. MLflow would pick mlruns/ in the current directory, which under a queued or
    temporary DVC experiment is a copy deleted when the experiment ends."""
    if tracking_uri() != default_tracking_uri():
        return None
    return (project_root() / "mlruns" / EXPERIMENT).as_uri()


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
                experiment.experiment_id
                if experiment
                else client.create_experiment(EXPERIMENT, artifact_location=artifact_location())
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

    def register_model(
        self, folder: Path, model_hash: str, name: str = REGISTERED_MODEL
    ) -> dict[str, Any] | None:
        """Register the packaged model in `folder` (cnnpipe.model.files) as a version of `name`
        from this run; the version, its run and the sha256 of each of its files. Registering the
        same files from the same run again gives the same version."""

        def register() -> dict[str, Any]:
            assert self.run_id is not None  # _active calls it only for a started run
            client = self._client()
            artifact_uri = client.get_run(self.run_id).info.artifact_uri
            digest = "".join(files.hashes(folder, files.FILES).values()).encode()
            artifact_path = f"model-{hashlib.sha256(digest).hexdigest()[:12]}"
            registered = self._log_onnx_model(client, folder, artifact_uri, artifact_path)
            source = f"{artifact_uri.rstrip('/')}/{artifact_path}"
            version = _version_of(client, name, self.run_id, source, model_hash)
            return {"name": name, "version": version, "run_id": self.run_id, "sha256": registered}

        return self._active("registering the model", register)

    def _log_onnx_model(self, client, folder: Path, artifact_uri: str, artifact_path: str) -> dict:
        """The packaged model as an MLflow ONNX model (its MLmodel, the graph, the checkpoint it
        reads its weights from) under `artifact_path` of the run's artifacts; the sha256 of each
        file. Loading it runs onnxruntime on the graph: no pickle, so no code of whoever wrote it.
        Into an artifact store that is a local folder, the model is written in place, its
        checkpoint hard-linked (one copy on disk); to any other store it is uploaded."""
        import mlflow.onnx
        import onnx

        home = local_artifact_dir(artifact_uri)
        if home is not None and (logged := home / artifact_path).is_dir():
            return _logged_hashes(logged, folder)  # by an earlier run of the stage
        if home is None and client.list_artifacts(self.run_id, artifact_path):
            # uploaded by an earlier run of the stage: uploading again would change its MLmodel
            # (a new uuid and time) under the version registered from it
            with tempfile.TemporaryDirectory(prefix="cnnpipe-logged-") as tmp:
                return _logged_hashes(
                    Path(client.download_artifacts(self.run_id, artifact_path, tmp)), folder
                )
        if home is not None:
            home.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix=".cnnpipe-model-", dir=home) as tmp:
            staged = Path(tmp) / artifact_path
            graph = onnx.load(folder / files.ONNX_FILE, load_external_data=False)
            mlflow.onnx.save_model(
                graph,
                str(staged),
                save_as_external_data=False,  # the weights stay where they are, in model.pt
                pip_requirements=mlflow.onnx.get_default_pip_requirements(),
            )
            files.place(folder / files.MODEL_FILE, staged / files.MODEL_FILE)
            registered = files.hashes(staged)
            if home is not None:
                os.replace(staged, home / artifact_path)
            else:
                client.log_artifacts(self.run_id, str(staged), artifact_path)
        return registered

    def end(self, status: str = "FINISHED") -> None:
        self._active("ending the run", lambda: self._client().set_terminated(self.run_id, status))

    def _active(self, what: str, action: Callable[[], Any]) -> Any:
        return self._guard(what, action) if self.run_id is not None else None


def _logged_hashes(logged: Path, folder: Path) -> dict[str, str]:
    """The sha256 of every file of a model logged earlier, which must hold `folder`'s files."""
    found = files.hashes(logged)
    if {name: found.get(name) for name in files.FILES} != files.hashes(folder, files.FILES):
        raise LookupError(f"{logged} does not hold the files it was logged with")
    return found


def local_artifact_dir(artifact_uri: str) -> Path | None:
    """The folder of a run's artifacts when the artifact store is a local folder, else None."""
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository
    from mlflow.store.artifact.local_artifact_repo import LocalArtifactRepository

    repository = get_artifact_repository(artifact_uri)
    return (
        Path(repository.artifact_dir) if isinstance(repository, LocalArtifactRepository) else None
    )


def _version_of(client, name: str, run_id: str, source: str, model_hash: str) -> str:
    """The version of `name` registered from this run and source, registered now if none is."""
    from mlflow.exceptions import MlflowException

    for version in client.search_model_versions(f"name = '{name}' and run_id = '{run_id}'"):
        if version.source == source:
            return str(version.version)
    try:
        client.create_registered_model(name)
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
    created = client.create_model_version(
        name, source, run_id=run_id, tags={MODEL_HASH_TAG: model_hash}
    )
    return str(created.version)


def promote(
    model_hash: str,
    version: str,
    run_id: str,
    sha256: Mapping[str, str],
    alias: str = CHAMPION,
    name: str = REGISTERED_MODEL,
) -> None:
    """Point `alias` at `version` of `name`, once it is shown to be the model that was packaged:
    registered by `run_id`, the run that trained the model with this hash, and holding exactly
    the files the package stage registered (`sha256`, by path). Tags are not trusted: anyone who
    may write to the registry can set one. Unlike tracking, this is not best-effort: any
    mismatch stops it with the reason."""
    import mlflow
    from mlflow.exceptions import MlflowException

    client = mlflow.MlflowClient(tracking_uri())
    where = f"{name} version {version}"
    try:
        registered = client.get_model_version(name, version)
        trained = client.get_run(run_id).data.tags.get(MODEL_HASH_TAG)
    except MlflowException:
        raise CnnpipeError(
            f"{where} or its run {run_id} is not in the model registry at {shown_uri()}; run "
            "the package stage against this store (dvc repro -f package) first"
        ) from None
    if registered.run_id != run_id or trained != model_hash:
        raise CnnpipeError(
            f"{where} was not registered by run {run_id}, the training of model "
            f"{model_hash[:12]}; it is not this model: run dvc repro -f package to register it"
        )
    with tempfile.TemporaryDirectory(prefix="cnnpipe-promote-") as tmp:
        uri = client.get_model_version_download_uri(name, version)
        found = files.hashes(Path(mlflow.artifacts.download_artifacts(uri, dst_path=tmp)))
    if found != dict(sha256):
        changed = sorted(k for k in {*found, *sha256} if found.get(k) != sha256.get(k))
        raise CnnpipeError(
            f"the files of {where} are not the ones the package stage registered (differ: "
            f"{', '.join(changed)}); it was changed since: run dvc repro -f package to register "
            "the model again"
        )
    client.set_registered_model_alias(name, alias, version)


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
