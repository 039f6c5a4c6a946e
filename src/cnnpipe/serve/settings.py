"""Serving settings: deployment choices read from CNNPIPE_* environment variables.

Worker count, threads, batching bounds, runtime and request limits are properties of the machine
a model is served on, not of the model or the pipeline, so they are not DVC params (changing the
worker count must not re-run the package stage, and a bento has no params.yaml). The service
module reads them once, when it is imported, because BentoML fixes the worker count and the
batching bounds when the service class is defined. The defaults were chosen by measurement on a
2-core machine (docs/serving.md, Serving figures).
"""

from __future__ import annotations

import os
import typing as t
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, model_validator

from cnnpipe.core.errors import CnnpipeError
from cnnpipe.serve import record
from cnnpipe.serve.packaging import NAME

ENV_PREFIX = "CNNPIPE_"
MiB = 2**20


def cores() -> int:
    """The cores this process may run on (a container's CPU set, not the host's)."""
    return len(os.sched_getaffinity(0))


class Settings(BaseModel):
    """Serving settings; each one is read from CNNPIPE_<NAME> (e.g. CNNPIPE_MAX_BATCH_SIZE)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # the model store tag to serve; in the project root, the workspace's packaged model
    model: str = f"{NAME}:latest"
    # onnx: onnxruntime on the package stage's ONNX export; torch: the checkpoint; auto: onnx
    # when the stored model has the export, else torch
    runtime: t.Literal["auto", "onnx", "torch"] = "auto"
    workers: int = Field(default=0, ge=0)  # server processes; 0: one per core
    threads: int = Field(default=0, ge=0)  # model threads per worker; 0: cores / workers
    max_batch_size: int = Field(default=32, ge=2)  # images per forward pass
    # a request whose estimated wait for the model exceeds this is answered 503 at once
    max_latency_ms: int = Field(default=2000, ge=1)
    timeout_s: int = Field(default=60, ge=1)  # a request running longer gets 504
    max_upload_bytes: int = Field(default=20 * MiB, ge=1)  # larger bodies get 413
    # request bodies in flight per worker; a request that would exceed this gets 429
    max_uploads_bytes: int = Field(default=128 * MiB, ge=1)
    # answers on a kept-alive connection before it is closed, so connections spread over the
    # workers (0: never closed)
    keepalive_requests: int = Field(default=16, ge=0)
    header_timeout_s: float = Field(default=10.0, gt=0)  # a request's headers must arrive in this
    # and its body in this, from the end of its headers (20 MiB at 1 MB/s takes 21 s)
    body_timeout_s: float = Field(default=30.0, gt=0)
    max_pixels: int = Field(default=25_000_000, ge=1)  # width * height; larger images get 400
    # decoded size (width * height * bytes per pixel); larger images get 400
    max_image_bytes: int = Field(default=100 * MiB, ge=1)
    decodes: int = Field(default=1, ge=1)  # images decoded at once per worker
    max_images: int = Field(default=64, ge=1)  # images in one /predict_batch request
    # one INFO line per request (BentoML's access log): off, it costs about 15% of the requests/s
    # of a small model; 4xx answers are logged as one WARNING line either way
    access_log: bool = False
    # when set, every endpoint but the health checks (and the pages and the OpenAPI document)
    # requires `Authorization: Bearer <key>`; _FILE: the key is the file's content (a mounted
    # secret), which keeps it out of the process's environment
    api_key: SecretStr | None = Field(default=None, min_length=1)
    api_key_file: Path | None = None
    metrics_public: bool = False  # with a key: /metrics open too (a scraper without the key)

    @model_validator(mode="after")
    def _one_key(self) -> Settings:
        if self.api_key is not None and self.api_key_file is not None:
            raise ValueError("CNNPIPE_API_KEY and CNNPIPE_API_KEY_FILE are both set; set one")
        return self

    @property
    def worker_count(self) -> int:
        return self.workers or cores()

    @property
    def model_threads(self) -> int:
        return self.threads or max(1, cores() // self.worker_count)


def workspace_model(path: Path = record.RECORD) -> str | None:
    """The model tag the package stage recorded, when serving from the project root: after
    `dvc exp apply` or `git checkout`, `bentoml serve` then serves the workspace's model, not
    whichever model was stored last."""
    try:
        return record.read(path).model
    except CnnpipeError:
        return None


def settings_from_env(environ: t.Mapping[str, str] = os.environ) -> Settings:
    """Settings from CNNPIPE_* variables; a bad value raises one CnnpipeError naming it."""
    values = {
        name: environ[ENV_PREFIX + name.upper()]
        for name in Settings.model_fields
        if ENV_PREFIX + name.upper() in environ
    }
    if "model" not in values and (tag := workspace_model()):
        values["model"] = tag
    try:
        return Settings.model_validate(values)
    except ValidationError as exc:
        problems = "; ".join(_problem(e) for e in exc.errors())
        raise CnnpipeError(f"serving settings: {problems}; fix or unset the variable") from None


def _problem(error: t.Any) -> str:
    if not error["loc"]:  # a check of several settings: its message names them
        return error["msg"].removeprefix("Value error, ")
    name = str(error["loc"][0])
    shown = "(hidden)" if name == "api_key" else repr(error.get("input"))
    return f"{ENV_PREFIX}{name.upper()}={shown}: {error['msg'].lower()}"


def api_key(settings: Settings) -> bytes | None:
    """The key requests must bear, if one is set: CNNPIPE_API_KEY, or the content of
    CNNPIPE_API_KEY_FILE without its trailing newline."""
    if settings.api_key is not None:
        return settings.api_key.get_secret_value().encode()
    if settings.api_key_file is None:
        return None
    try:
        key = settings.api_key_file.read_bytes().rstrip(b"\r\n")
    except OSError as exc:
        raise CnnpipeError(
            f"CNNPIPE_API_KEY_FILE={str(settings.api_key_file)!r} cannot be read "
            f"({exc.strerror}); point it at the file holding the key"
        ) from None
    if not key.strip():
        raise CnnpipeError(
            f"CNNPIPE_API_KEY_FILE={str(settings.api_key_file)!r} is empty; write the key into it"
        )
    return key
