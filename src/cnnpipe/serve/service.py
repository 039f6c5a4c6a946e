"""The BentoML service: the packaged model behind `POST /predict`, `POST /predict_batch`,
`POST /explain` and `GET /metadata`, with a page for people at `/` and Swagger UI at `/docs`,
started with `bentoml serve` (bentofile.yaml names `Classifier`).

Each module of cnnpipe.serve does one job: settings (CNNPIPE_* variables), uploads (requests to
decoded images, or a 400), limits (413, 429, 408 on the bytes a body delivers), access (the
optional API key), runtime (onnxruntime or torch), contract (the response models, the answer
with its "unknown", and the OpenAPI document), page (the static pages, the headers of every
answer), header_timeout (slow clients), bentoml_io (what is used of BentoML's private API). This
module puts them together. /predict and /predict_batch are batchable BentoML APIs: concurrent
requests are grouped into one forward pass. /explain needs gradients, which the ONNX runtime has
not: a worker loads the torch model on its first /explain.

The settings are read when this module is imported: BentoML fixes the worker count and the
batching bounds when the service class is defined.
"""

from __future__ import annotations

import gc
import logging
import os
import typing as t
from pathlib import Path

import bentoml
import numpy as np
from bentoml.exceptions import NotFound
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from cnnpipe.core.errors import CnnpipeError
from cnnpipe.serve import decoding, header_timeout, packaging, runtime
from cnnpipe.serve.access import BearerKey
from cnnpipe.serve.bentoml_io import (
    ExplainInput,
    HeatMap,
    OnePrediction,
    PredictBatchInput,
    PredictInput,
)
from cnnpipe.serve.contract import Docs, Prediction, ServedModel, answer
from cnnpipe.serve.decoding import Image
from cnnpipe.serve.limits import Rebalance, RequestLimits
from cnnpipe.serve.packaging import NAME
from cnnpipe.serve.page import Pages, SecurityHeaders
from cnnpipe.serve.settings import api_key, settings_from_env
from cnnpipe.serve.uploads import Uploads

SETTINGS = settings_from_env()
API_KEY = api_key(SETTINGS)
GC_THRESHOLD = 50_000  # allocations between young-generation collections (Python's: 700)


class StoredModel(bentoml.models.BentoModel):
    """The model from the local store only. Where the store lacks it and the workspace's package
    record names it (after `dvc pull`), it is stored from the workspace first; otherwise a missing
    model is one line saying how to get it (BentoML would try BentoCloud and print its error)."""

    @property
    def stored(self) -> t.Any:
        found = super().stored
        if found is None:
            try:
                if packaging.store_workspace_model(str(self.tag)):
                    found = super().stored
            except CnnpipeError as exc:
                raise NotFound(str(exc)) from None
        return found

    def _missing(self) -> NotFound:
        return NotFound(
            f"model {self.tag} is not in the BentoML store "
            f"({os.environ.get('BENTOML_HOME', '~/bentoml')}) and the workspace has no package "
            "record of it; run `dvc pull` or `dvc repro` in the project root, or `bentoml "
            "import` the exported bento"
        )

    def to_info(self, alias: str | None = None) -> t.Any:
        if self.stored is None:
            raise self._missing()
        return super().to_info(alias)

    def resolve(self, base_path: t.Any = None) -> t.Any:
        if self.stored is None:
            raise self._missing()
        return super().resolve(base_path)


def _collect_less_garbage() -> None:
    """Every request allocates thousands of objects (BentoML's spans, pydantic models), so
    Python's cyclic garbage collector ran ~12% of a worker's time under load, mostly scanning
    what start-up created. Those objects are moved out of its reach, and it runs less often."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_THRESHOLD, *gc.get_threshold()[1:])


async def _metadata(_: Request) -> JSONResponse:
    service = bentoml.get_current_service()
    return JSONResponse(service.metadata.model_dump())


def _served() -> ServedModel:
    """The served model's card (known once the worker has loaded it)."""
    return bentoml.get_current_service().metadata


metadata_app = Starlette(routes=[Route("/metadata", _metadata, methods=["GET"])])


@bentoml.asgi_app(metadata_app, path="/")
@bentoml.service(
    name=NAME,
    workers=SETTINGS.worker_count,
    threads=1,  # one model call at a time per worker; the runtime's threads do the parallel work
    traffic={"timeout": SETTINGS.timeout_s},
    logging={"access": {"enabled": SETTINGS.access_log}},
)
class Classifier:
    """The packaged cnnpipe model: one typed method per endpoint."""

    bento_model = StoredModel(SETTINGS.model)

    def __init__(self) -> None:
        header_timeout.install(SETTINGS.header_timeout_s)
        decoding.return_freed_images_to_the_system()
        logging.getLogger("cnnpipe").setLevel(logging.INFO)  # BentoML's handlers show INFO
        _collect_less_garbage()
        stored = self.bento_model  # the model in the store, once the service is instantiated
        self.runtime = runtime.load(Path(stored.path), SETTINGS.runtime, SETTINGS.model_threads)
        # for /explain: the torch runtime, loaded on the first unless it runs the predictions
        self.torch = self.runtime if isinstance(self.runtime, runtime.TorchRuntime) else None
        self.metadata = ServedModel(
            **stored.info.metadata,
            model=str(stored.tag),
            version=str(stored.tag.version),
            runtime=self.runtime.name,
        )

    def _classify(self, images: list[Image]) -> list[Prediction]:
        probs, distances = self.runtime.scores(np.stack([im.pixels for im in images]))
        far = [None] * len(images) if distances is None else distances
        return [
            answer(p, self.metadata, image.top_k, d)
            for p, d, image in zip(probs, far, images, strict=True)
        ]

    @bentoml.api(
        batchable=True,
        max_batch_size=SETTINGS.max_batch_size,
        max_latency_ms=SETTINGS.max_latency_ms,
        input_spec=PredictInput,
        output_spec=OnePrediction,
    )
    def predict(self, images: list[Image]) -> list[Prediction]:
        """Classify one image: a multipart field `file` or the whole body (typed image/* or
        application/octet-stream); optional `top_k` (form field or query parameter).

        Example: `curl -F file=@star.png -F top_k=3 http://localhost:3000/predict`
        """
        return self._classify(images)

    @bentoml.api(
        batchable=True,
        max_batch_size=SETTINGS.max_batch_size,
        max_latency_ms=SETTINGS.max_latency_ms,
        input_spec=PredictBatchInput,
    )
    def predict_batch(self, images: list[Image]) -> list[Prediction]:
        """Classify several images (repeated multipart field `files`): one result each, in
        order. One bad image fails this request only.

        Example: `curl -F files=@a.png -F files=@b.png http://localhost:3000/predict_batch`
        """
        return self._classify(images)

    @bentoml.api(input_spec=ExplainInput, output_spec=HeatMap)
    def explain(self, images: list[Image]) -> HeatMap:
        """Where the model looked: the image as the model sees it, with the Grad-CAM heat map of
        its most probable class over it, as a PNG (that class in the X-Explained-Class header).
        The image as for /predict: a multipart field `file` or the whole body.

        Example: `curl -F file=@star.png -o star-gradcam.png http://localhost:3000/explain`
        """
        if self.torch is None:
            loaded = runtime.load(Path(self.bento_model.path), "torch", SETTINGS.model_threads)
            self.torch = t.cast(runtime.TorchRuntime, loaded)
        (image,) = images
        png, target = self.torch.explain(image.pixels)
        return HeatMap(png=png, label=self.metadata.classes[target])


# The decorators made Classifier a bentoml.Service; mypy keeps a class decorator's input type.
_service = t.cast("bentoml.Service[Classifier]", Classifier)
# Outermost first: the key and the limits before anything reads the body; uploads decoded before
# BentoML.
_service.add_asgi_middleware(SecurityHeaders)
if SETTINGS.worker_count > 1:
    _service.add_asgi_middleware(Rebalance, every=SETTINGS.keepalive_requests)
if API_KEY is not None:
    _service.add_asgi_middleware(BearerKey, key=API_KEY, metrics_public=SETTINGS.metrics_public)
_service.add_asgi_middleware(
    RequestLimits,
    max_bytes=SETTINGS.max_upload_bytes,
    max_in_flight=SETTINGS.max_uploads_bytes,
    timeout_s=SETTINGS.body_timeout_s,
)
_service.add_asgi_middleware(Docs, settings=SETTINGS, served=_served)
_service.add_asgi_middleware(Pages)
_service.add_asgi_middleware(Uploads, spec=_served, settings=SETTINGS)
