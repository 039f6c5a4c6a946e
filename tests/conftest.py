"""Shared fixtures: tiny params, throwaway git+DVC copies of this repository, one reproduced
project for the whole session, clones of it that share its DVC cache, and a real server."""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import typing as t
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
import yaml
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent
shared_temp = Path(tempfile.gettempdir())  # the run's folder for every process: isolated_stores

# Small enough that the whole pipeline runs in seconds, clean enough that a few epochs learn it.
TINY = {
    "generate": {
        "classes": ["circle", "square", "triangle"],
        "images_per_class": 40,
        "image_size": 32,
        "noise": 0.0,
        "clutter": 0,
        "random_colors": False,
        "max_rotation": 15,
    },
    "process": {"image_size": 32, "channels": 1, "val_ratio": 0.25, "test_ratio": 0.25},
    "train": {"epochs": 8, "batch_size": 8, "learning_rate": 0.003, "num_threads": 1},
    "evaluate": {"batch_size": 64, "max_misclassified": 12, "gradcam_images": 6},
    "package": {"build": False},  # the packaging tests build bentos; nothing else needs one
}
STAGES = ["generate", "process", "train", "evaluate", "package"]
DETERMINISTIC_STAGES = ("generate", "process", "train", "evaluate")  # package: a build time


def other_machine_environment() -> dict[str, str]:
    """What other machines look like to torch: another instruction set (AVX-512 where this CPU
    has it, else plain scalar code), another thread count."""
    from cnnpipe.core import kernels

    return {
        "ATEN_CPU_CAPABILITY": "avx512" if "avx512f" in (kernels.cpu_flags() or ()) else "default",
        "ONEDNN_MAX_CPU_ISA": "SSE41",
        "MKL_ENABLE_INSTRUCTIONS": "SSE4_2",
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
    }


def tiny_params(**overrides: dict) -> dict:
    """TINY with some sections' keys replaced, every key written out (as `dvc exp run -S` needs)."""
    from cnnpipe.core import params as schema

    params = {section: dict(values) for section, values in TINY.items()}
    for section, values in overrides.items():
        params[section].update(values)
    return schema.parse(params).model_dump()


def stages_run(output: str) -> list[str]:
    """The stages a `dvc repro` or `dvc exp run` output says it ran, but the check stage, which
    runs whenever a param changes."""
    return [name for name in re.findall(r"Running stage '(\w+)'", output) if name != "check"]


def out_hashes(project: Project) -> dict[str, str]:
    """{out path: md5} in dvc.lock of every output of the stages that must be byte-identical
    (metrics and plots outs included)."""
    lock = yaml.safe_load((project.root / "dvc.lock").read_text())
    return {
        out["path"]: out["md5"]
        for name in DETERMINISTIC_STAGES
        for out in lock["stages"][name]["outs"]
    }


def tracked_runs(project: Project) -> dict[str, t.Any]:
    """{run name: MLflow run} of the cnnpipe experiment in a project's own store."""
    import mlflow

    from cnnpipe.tracking import EXPERIMENT

    client = mlflow.MlflowClient(f"sqlite:///{project.root / 'mlflow.db'}")
    experiment = client.get_experiment_by_name(EXPERIMENT)
    return {r.info.run_name: r for r in client.search_runs([experiment.experiment_id])}


def assert_tracked_experiment(run: t.Any, name: str) -> None:
    """A `dvc exp run -n name` landed in the store: train's and evaluate's metrics, the model's
    hash, the git commit and the experiment's name."""
    from cnnpipe.tracking import MODEL_HASH_TAG

    metrics = {"val_accuracy", "train_loss", "test_accuracy", "test_f1_macro"}
    assert metrics <= set(run.data.metrics), name
    assert run.data.tags[MODEL_HASH_TAG] and run.data.tags["git_commit"] != "unknown"
    assert run.data.tags["dvc_exp_name"] == name


def shown_experiments(project: Project) -> dict[str, dict]:
    """{experiment name: its data} as `dvc exp show --json` gives them."""
    shown = json.loads(project.dvc("exp", "show", "--json").stdout)
    return {
        exp["name"]: exp["revs"][0]["data"]
        for rev in shown
        for exp in (rev.get("experiments") or [])
    }


def encode(image: Image.Image, fmt: str = "PNG", **options) -> bytes:
    """An image file's bytes."""
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server(t.NamedTuple):
    url: str
    process: subprocess.Popen
    log: Path  # its stdout and stderr


@contextmanager
def server_process(cwd: Path, env: dict, *args: str, timeout: float = 90) -> Iterator[Server]:
    """`bentoml serve [args]` on a free loopback port, until it answers /readyz. Its output goes
    to a file (a pipe nobody reads would fill up and stall the server)."""
    port = free_port()
    command = [sys.executable, "-m", "bentoml", "serve", *args, "--port", str(port)]
    with tempfile.NamedTemporaryFile("w+", prefix="bentoml-serve-", suffix=".log") as log:
        server = subprocess.Popen(
            [*command, "--host", "127.0.0.1"],
            cwd=cwd,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            text=True,
        )
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + timeout
            while True:
                assert server.poll() is None, Path(log.name).read_text()
                assert time.monotonic() < deadline, f"{command} was not ready in {timeout} s"
                try:
                    if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                time.sleep(0.1)
            yield Server(url, server, Path(log.name))
        finally:
            server.terminate()
            server.wait(timeout=30)


@contextmanager
def serving(cwd: Path, env: dict, *args: str, timeout: float = 90) -> Iterator[str]:
    """`bentoml serve [args]` on a free loopback port, until it answers /readyz; yields its URL.
    One worker unless `env` says otherwise: these servers answer a request or two (the workers'
    defaults are test_server.py's)."""
    env = {"CNNPIPE_WORKERS": "1", **env}
    with server_process(cwd, env, *args, timeout=timeout) as server:
        yield server.url


class Project:
    """A git+DVC copy of the repository, with its own BentoML and MLflow stores."""

    def __init__(self, root: Path, home: Path) -> None:
        self.root = root
        self.env = {
            **os.environ,
            "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}",
            "PYTHONPATH": str(root / "src"),
            "BENTOML_HOME": str(home / "bentoml"),
            "BENTOML_DO_NOT_TRACK": "True",
            "DVC_NO_ANALYTICS": "1",
            "GIT_AUTHOR_NAME": "cnnpipe tests",
            "GIT_AUTHOR_EMAIL": "tests@cnnpipe.invalid",
            "GIT_COMMITTER_NAME": "cnnpipe tests",
            "GIT_COMMITTER_EMAIL": "tests@cnnpipe.invalid",
        }
        for name in os.environ:
            if name.startswith(("CNNPIPE_", "MLFLOW_", "DVC_")):
                self.env.pop(name, None)
        self.env["DVC_NO_ANALYTICS"] = "1"

    def run(
        self, *args: str, check: bool = True, timeout: float = 600
    ) -> subprocess.CompletedProcess:
        """Run a command in the copy; on failure the assertion shows its output."""
        result = subprocess.run(
            args, cwd=self.root, env=self.env, capture_output=True, text=True, timeout=timeout
        )
        if check:
            assert result.returncode == 0, f"{args} failed:\n{result.stdout}\n{result.stderr}"
        return result

    def dvc(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        """`dvc args` in the copy. The queue's commands run as a process of their own (DVC's
        queue starts workers that outlive them); the others by DVC's entry point in this
        process, as DVC's own tests run them: a second of start-up less each."""
        if "queue" in args or "--queue" in args:
            return self.run(sys.executable, "-m", "dvc", *args, check=check)
        result = dvc_in_process(list(args), self.root, self.env)
        if check:
            assert result.returncode == 0, f"dvc {args} failed:\n{result.stdout}\n{result.stderr}"
        return result

    def stage(self, name: str, check: bool = False) -> subprocess.CompletedProcess:
        """Run a stage's command as dvc.yaml gives it, without DVC."""
        stages = yaml.safe_load((self.root / "dvc.lock").read_text())["stages"]
        return self.run("bash", "-c", stages[name]["cmd"], check=check)

    def params(self) -> dict:
        return yaml.safe_load((self.root / "params.yaml").read_text())

    def write_params(self, params: dict) -> None:
        (self.root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))

    def commit(self, message: str) -> None:
        self.run("git", "add", "-A")
        self.run("git", "commit", "-q", "--allow-empty", "-m", message)

    def serving(self, *args: str) -> Iterator[str]:
        return serving(self.root, self.env, *args)


@contextmanager
def _standard_streams_to(out: t.IO[bytes], err: t.IO[bytes]) -> Iterator[None]:
    """File descriptors 1 and 2 (which child processes inherit) into `out` and `err`, and
    sys.stdout, sys.stderr and the stream handlers of DVC's loggers (bound to the streams
    there were when DVC was imported) with them."""
    import logging

    handlers = [
        handler
        for name in ("dvc", "dvc_objects", "dvc_data")
        for handler in logging.getLogger(name).handlers
        if isinstance(handler, logging.StreamHandler)
    ]
    streams = sys.stdout, sys.stderr, [handler.stream for handler in handlers]
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    os.dup2(out.fileno(), 1)
    os.dup2(err.fileno(), 2)
    sys.stdout = open(1, "w", buffering=1, closefd=False)  # noqa: SIM115
    sys.stderr = open(2, "w", buffering=1, closefd=False)  # noqa: SIM115
    for handler in handlers:  # DVC logs warnings and errors to stderr, the rest to stdout
        handler.setStream(sys.stderr if handler.level >= logging.WARNING else sys.stdout)
    try:
        yield
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        for handler, stream in zip(handlers, streams[2], strict=True):
            handler.setStream(stream)
        sys.stdout, sys.stderr = streams[:2]
        for fd, copy in zip((1, 2), saved, strict=True):
            os.dup2(copy, fd)
            os.close(copy)


def dvc_in_process(args: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    """`dvc args` through dvc.cli.main in this process, in `cwd` with the environment `env`
    (which the stages it runs get), its output and its children's collected."""
    from dvc.cli import main
    from dvc.ui import ui

    environment, directory = dict(os.environ), os.getcwd()
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        with _standard_streams_to(out, err):
            os.environ.clear()
            os.environ.update(env)
            # as DVC's own tests run it: JSON printed to sys.stdout as it is now (else DVC
            # swaps colorama's wrapper of the stream at its import back in to print it)
            os.environ["DVC_TEST"] = "true"
            os.chdir(cwd)
            try:
                code = main(args)
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else 1
            finally:
                os.chdir(directory)
                os.environ.clear()
                os.environ.update(environment)
                ui._enabled = False  # as a new process starts: quiet until a command enables it
        out.seek(0)
        err.seek(0)
        stdout, stderr = (f.read().decode(errors="replace") for f in (out, err))
    return subprocess.CompletedProcess(["dvc", *args], code, stdout, stderr)


def copy_project(dest: Path, home: Path, params: dict | None = None) -> Project:
    """Copy the tracked files (as in the working tree) to dest, without the committed results;
    git init and commit."""
    files = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split("\0")
    for name in filter(None, files):
        source = REPO / name
        if source.is_file() and not name.startswith(("dvc.lock", "metrics/")):
            target = dest / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
    project = Project(dest, home)
    if params is not None:
        project.write_params(params)
    project.run("git", "init", "-q", "-b", "main")
    project.commit("copy of cnnpipe")
    return project


def empty_mlflow_store(folder: Path) -> Path:
    """An MLflow store as MLflow creates it on first use (every migration applied, nothing in
    it), made once for the whole run under a file lock: a clone starts from a copy of it rather
    than migrating its own (two seconds of CPU in the first stage that tracks)."""
    from filelock import FileLock

    store = folder / "empty-mlflow.db"
    with FileLock(str(folder / "empty-mlflow.lock")):
        if not store.exists():
            import mlflow

            scratch = folder / f"empty-mlflow-{os.getpid()}.db"
            scratch.unlink(missing_ok=True)
            mlflow.MlflowClient(f"sqlite:///{scratch}").search_experiments()
            scratch.rename(store)
    return store


def clone(source: Project, dest: Path) -> Project:
    """A git clone of a project that shares its DVC cache (run-cache included), with its outputs
    checked out and stores of its own (its MLflow store migrated, empty: the project's first
    run, a fresh copy's, migrates its own)."""
    subprocess.run(["git", "clone", "-q", str(source.root), str(dest)], check=True)
    project = Project(dest, dest.parent / f"{dest.name}-home")
    shutil.copy(empty_mlflow_store(shared_temp), dest / "mlflow.db")
    # what `dvc cache dir --local` writes, without a DVC process to start
    cache = source.root / ".dvc" / "cache"
    (dest / ".dvc" / "config.local").write_text(f"[cache]\n    dir = {cache}\n")
    project.dvc("checkout", "-q")
    return project


def run_stage(name: str, params: dict, cwd: Path, *paths: str) -> subprocess.CompletedProcess:
    """Run a stage script in `cwd` with these params (written to params.yaml there)."""
    (cwd / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    return subprocess.run(
        [sys.executable, str(REPO / "stages" / f"{name}.py"), *paths],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


# the longest modules (the experiment, the DDP runs): each starts first in its group, so as not
# to end last
LONGEST = ("test_experiments.py", "test_distributed.py")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Modules with end-to-end tests first, so that spread over pytest-xdist's workers (a module
    at a time, in this order) the long ones start at once and the quick ones fill in the end:
    the longest first; next those that do not need the shared `reproduced` project, which the
    first process builds meanwhile; then the other end-to-end ones, the longest first."""
    e2e = {item.path for item in items if item.get_closest_marker("e2e")}
    needs = {item.path for item in items if "reproduced" in getattr(item, "fixturenames", ())}

    def rank(item: pytest.Item) -> tuple[int, int]:
        name = item.path.name
        if item.path not in e2e:
            return (3, 0)
        if name == LONGEST[0]:
            return (0, 0)
        if item.path not in needs:
            return (1, 0)
        return (2, LONGEST.index(name) if name in LONGEST else len(LONGEST))

    items.sort(key=rank)


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config: pytest.Config) -> None:
    """A pytest-xdist process ends here, its results sent and its fixtures torn down: the
    interpreter's teardown of everything the tests imported (seconds of CPU, at the end of the
    run) would do nothing."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)


@pytest.fixture(scope="session", autouse=True)
def isolated_stores(tmp_path_factory, worker_id: str) -> Iterator[None]:
    """Keep this process's BentoML store and MLflow runs out of the user's home and project;
    note the folder that every pytest-xdist process of the run shares."""
    global shared_temp
    temp = tmp_path_factory.getbasetemp()
    shared_temp = temp if worker_id == "master" else temp.parent
    home = tmp_path_factory.mktemp("stores")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("BENTOML_HOME", str(home / "bentoml"))
        patch.setenv("BENTOML_DO_NOT_TRACK", "True")
        patch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{home / 'mlflow.db'}")
        yield


@pytest.fixture(autouse=True)
def mlflow_uri_restored() -> Iterator[None]:
    """`mlflow.set_tracking_uri`, which in-process tracking calls, sets a process-wide URI that
    outranks MLFLOW_TRACKING_URI (and sets that variable too): each test leaves neither set."""
    before = os.environ.get("MLFLOW_TRACKING_URI")
    yield
    if (mlflow := sys.modules.get("mlflow")) is not None:
        mlflow.set_tracking_uri(None)  # back to reading MLFLOW_TRACKING_URI
    if before is not None:
        os.environ["MLFLOW_TRACKING_URI"] = before


@pytest.fixture(scope="session")
def reproduced() -> Project:
    """The project with tiny params after `dvc repro` (committed, dvc.lock included). Read it
    only: tests that change things work in a `workspace`. One for the whole run: the first
    pytest-xdist process to need it builds it, under a file lock, and the others wait for it
    (building one per process cost each ~40 s of CPU that the other processes needed)."""
    from filelock import FileLock

    base, output = shared_temp / "reproduced", shared_temp / "reproduced-output.txt"
    with FileLock(str(shared_temp / "reproduced.lock")):
        if not output.exists():
            shutil.rmtree(base, ignore_errors=True)  # a build a killed process left
            project = copy_project(base / "repo", base, tiny_params())
            stdout = project.dvc("repro").stdout
            project.commit("reproduced")
            output.write_text(stdout)
    project = Project(base / "repo", base)
    project.repro_output = output.read_text()
    return project


@pytest.fixture
def workspace(reproduced: Project, tmp_path: Path) -> Project:
    """A clone of the reproduced project: same outputs, same DVC cache, stores of its own."""
    return clone(reproduced, tmp_path / "repo")
