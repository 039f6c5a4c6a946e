"""Serving settings: deployment choices read from CNNPIPE_* environment variables.

Worker count, threads, batching bounds, runtime and request limits are properties of the machine
a model is served on, not of the model or the pipeline, so they are not DVC params (changing the
worker count must not re-run the package stage, and a bento has no params.yaml). The service
module reads them once, when it is imported, because BentoML fixes the worker count and the
batching bounds when the service class is defined. The defaults were chosen by measurement on a
2-core machine (docs/serving.md, Serving figures).
"""

from __future__ import annotations

import json
import os
import typing as t
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from cnnpipe.core.errors import CnnpipeError
from cnnpipe.serve.packaging import NAME, TAGS_FILE

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
    max_pixels: int = Field(default=25_000_000, ge=1)  # width * height; larger images get 400
    # decoded size (width * height * bytes per pixel); larger images get 400
    max_image_bytes: int = Field(default=100 * MiB, ge=1)
    decodes: int = Field(default=1, ge=1)  # images decoded at once per worker
    max_images: int = Field(default=64, ge=1)  # images in one /predict_batch request
    # one INFO line per request (BentoML's access log): off, it costs about 15% of the requests/s
    # of a small model; 4xx answers are logged as one WARNING line either way
    access_log: bool = False

    @property
    def worker_count(self) -> int:
        return self.workers or cores()

    @property
    def model_threads(self) -> int:
        return self.threads or max(1, cores() // self.worker_count)


def workspace_model(tags: Path = TAGS_FILE) -> str | None:
    """The model tag the package stage recorded, when serving from the project root: after
    `dvc exp apply` or `git checkout`, `bentoml serve` then serves the workspace's model, not
    whichever model was stored last."""
    try:
        return json.loads(tags.read_text())["model"]
    except (OSError, ValueError, KeyError, TypeError):
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
        problems = "; ".join(
            f"{ENV_PREFIX}{str(e['loc'][0]).upper()}={e.get('input')!r}: {e['msg'].lower()}"
            for e in exc.errors()
        )
        raise CnnpipeError(f"serving settings: {problems}; fix or unset the variable") from None
