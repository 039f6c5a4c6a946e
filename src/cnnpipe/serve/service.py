"""The BentoML service: the packaged model behind `POST /predict`, `POST /predict_batch` and
`GET /metadata`, started with `bentoml serve` (bentofile.yaml names `Classifier`).

Every uploaded image is decoded by the pipeline's own preprocessing (`preprocess.load`, then
`preprocess.normalize` in `probabilities`) while the request is parsed, before it reaches the
model: a bad upload gets a 400 naming the problem and the fix, and never joins an adaptive batch,
so it cannot fail the requests it would have been grouped with. Both endpoints are batchable
BentoML APIs: concurrent requests are grouped into one forward pass.

Settings. Worker count, torch threads, batching bounds and request limits are deployment choices,
not properties of the model or of the pipeline, so they are not DVC params (changing the worker
count must not re-run the package stage, and a bento has no params.yaml). They are read from
`CNNPIPE_*` environment variables when this module is imported, because BentoML fixes the
batching bounds and the worker count when the service class is defined; the defaults are in
`Settings`. Set them per run (`CNNPIPE_WORKERS=2 bentoml serve`), in bentofile.yaml `envs:` to
pin them in a bento, or with `docker run -e`.
"""

from __future__ import annotations

import json
import os
import typing as t
from pathlib import Path

import anyio
import bentoml
import numpy as np
import torch
from _bentoml_sdk.io_models import IODescriptor, IOMixin
from bentoml.exceptions import NotFound
from pydantic import BaseModel, ConfigDict, Field, ValidationError, WithJsonSchema
from pydantic_core import InitErrorDetails, PydanticCustomError
from starlette.applications import Starlette
from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from cnnpipe.core import preprocess
from cnnpipe.core.errors import CnnpipeError
from cnnpipe.model import checkpoint
from cnnpipe.model.checkpoint import ModelCard
from cnnpipe.model.inference import probabilities
from cnnpipe.serve.packaging import MODEL_FILE, NAME, TAGS_FILE

if t.TYPE_CHECKING:
    from starlette.types import ASGIApp, Message, Receive, Scope, Send

ENV_PREFIX = "CNNPIPE_"


class Settings(BaseModel):
    """Serving settings; each one is read from CNNPIPE_<NAME> (e.g. CNNPIPE_MAX_BATCH_SIZE)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # the model store tag to serve; in the project root, the workspace's packaged model
    model: str = f"{NAME}:latest"
    workers: int = Field(default=1, ge=1)  # server processes, each with its own model copy
    threads: int = Field(default=0, ge=0)  # torch threads per worker; 0: cores / workers
    max_batch_size: int = Field(default=32, ge=2)  # images per forward pass
    # a request whose estimated wait for the model exceeds this is answered 503 at once
    max_latency_ms: int = Field(default=2000, ge=1)
    timeout_s: int = Field(default=60, ge=1)  # a request running longer gets 504
    max_upload_bytes: int = Field(default=20 * 2**20, ge=1)  # larger bodies get 413
    max_pixels: int = Field(default=25_000_000, ge=1)  # width * height; larger images get 400
    max_images: int = Field(default=64, ge=1)  # images in one /predict_batch request

    @property
    def torch_threads(self) -> int:
        return self.threads or max(1, len(os.sched_getaffinity(0)) // self.workers)


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


SETTINGS = settings_from_env()


class StoredModel(bentoml.models.BentoModel):
    """The model from the local store only, with a missing model reported as one line saying
    how to get it (BentoML would otherwise try BentoCloud and print its error)."""

    def _missing(self) -> NotFound:
        return NotFound(
            f"model {self.tag} is not in the BentoML store "
            f"({os.environ.get('BENTOML_HOME', '~/bentoml')}); run `dvc repro` in the project "
            f"root, or `bentoml import models/bento/{NAME}.bento`"
        )

    def to_info(self, alias: str | None = None) -> t.Any:
        if self.stored is None:
            raise self._missing()
        return super().to_info(alias)

    def resolve(self, base_path: t.Any = None) -> t.Any:
        if self.stored is None:
            raise self._missing()
        return super().resolve(base_path)


class Prediction(BaseModel):
    label: str = Field(description="the most probable class", examples=["circle"])
    confidence: float = Field(description="its probability", examples=[0.97])
    probabilities: dict[str, float] = Field(
        description="class name -> probability, most probable first (the top_k only if given)",
        examples=[{"circle": 0.97, "square": 0.02, "triangle": 0.01}],
    )


class ServedModel(ModelCard):
    """/metadata: the model card of the served model, and its tag in the store."""

    model: str
    version: str


class Image(t.NamedTuple):
    """One decoded upload: what the batched model call receives."""

    pixels: np.ndarray  # uint8 (channels, size, size), as preprocess.load made it
    top_k: int | None


def _error(loc: tuple[str | int, ...], kind: str, message: str) -> InitErrorDetails:
    # the message goes in as context so braces in it are not read as a template
    return InitErrorDetails(
        type=PydanticCustomError(kind, "{message}", {"message": message}), loc=loc, input=None
    )


def _bad_request(route: str, errors: list[InitErrorDetails]) -> ValidationError:
    """BentoML answers a ValidationError with 400 and {"error": ..., "detail": [{loc, msg}]}."""
    return ValidationError.from_exception_data(route, errors)


BinaryFile = t.Annotated[bytes, WithJsonSchema({"type": "string", "format": "binary"})]
TopK = t.Annotated[
    int | None,
    Field(ge=1, description="return only the k most probable classes", examples=[3]),
]


class PredictForm(BaseModel):
    """The /predict request as clients send it (multipart/form-data)."""

    file: BinaryFile = Field(description="the image: PNG, JPEG, GIF, BMP, WebP or TIFF")
    top_k: TopK = None


class PredictBatchForm(BaseModel):
    """The /predict_batch request as clients send it (multipart/form-data)."""

    files: list[BinaryFile] = Field(description="the images, one result each, in order")
    top_k: TopK = None


class _Upload(IODescriptor):
    """A multipart upload, parsed here rather than by BentoML: BentoML fetches a text value given
    for a file field as a URL and answers some malformed bodies with 500. Every image is decoded
    in a worker thread (off the event loop), and any problem becomes a 400."""

    model_config = ConfigDict(arbitrary_types_allowed=True)
    images: list[t.Any]

    form: t.ClassVar[type[BaseModel]]
    route: t.ClassVar[str]
    file_field: t.ClassVar[str]
    many: t.ClassVar[bool]

    @classmethod
    def __pydantic_init_subclass__(cls, **kwargs: t.Any) -> None:
        super().__pydantic_init_subclass__(**kwargs)
        cls.multipart_fields = [cls.file_field] if hasattr(cls, "file_field") else []

    @classmethod
    def model_json_schema(cls, *args: t.Any, **kwargs: t.Any) -> dict[str, t.Any]:
        return cls.form.model_json_schema(*args, **kwargs)

    @classmethod
    async def from_http_request(cls, request: Request, serde: t.Any) -> _Upload:
        content_type = request.headers.get("content-type", "")
        if not content_type.startswith("multipart/form-data"):
            raise _bad_request(
                cls.route,
                [
                    _error(
                        ("body",),
                        "content_type",
                        f"the body is {content_type or 'untyped'}, not multipart/form-data; "
                        f"upload the image as a form field: curl -F {cls.file_field}=@image.png",
                    )
                ],
            )
        try:
            form = await request.form(max_files=SETTINGS.max_images, max_fields=8)
        except Exception as exc:  # starlette raises HTTPException or MultiPartException
            reason = getattr(exc, "detail", None) or getattr(exc, "message", None) or exc
            raise _bad_request(
                cls.route,
                [
                    _error(
                        ("body",),
                        "multipart",
                        f"the multipart body cannot be read ({reason}); "
                        f"send at most {SETTINGS.max_images} files in a well-formed form",
                    )
                ],
            ) from None
        return await anyio.to_thread.run_sync(cls._validate, form)

    @classmethod
    def _validate(cls, form: t.Any) -> _Upload:
        errors: list[InitErrorDetails] = []
        allowed = set(cls.form.model_fields)
        for name in sorted(set(form.keys()) - allowed):
            errors.append(
                _error((name,), "extra_field", f"unknown field; send only {', '.join(allowed)}")
            )
        top_k = None
        if "top_k" in form:
            value = form["top_k"]
            try:
                top_k = int(value) if isinstance(value, str) else -1
            except ValueError:
                top_k = -1
            if top_k < 1:
                errors.append(
                    _error(("top_k",), "top_k", "must be a whole number of at least 1, e.g. 3")
                )
        parts = form.getlist(cls.file_field)
        if not parts:
            errors.append(
                _error(
                    (cls.file_field,),
                    "missing",
                    f"no image; send it as a file in the field {cls.file_field!r}: "
                    f"curl -F {cls.file_field}=@image.png",
                )
            )
        elif not cls.many and len(parts) > 1:
            errors.append(
                _error(
                    (cls.file_field,),
                    "too_many",
                    f"{len(parts)} files; send one image to /predict, several to /predict_batch",
                )
            )
        images = []
        for i, part in enumerate(parts):
            loc = (cls.file_field, i) if cls.many else (cls.file_field,)
            try:
                images.append(Image(_decode(part), top_k))
            except CnnpipeError as exc:
                errors.append(_error(loc, "invalid_image", str(exc)))
        if errors:
            raise _bad_request(cls.route, errors)
        return cls.model_construct(images=images)


def _decode(part: str | UploadFile) -> np.ndarray:
    """The model input (uint8) of one uploaded form part, or a CnnpipeError saying what is wrong."""
    if isinstance(part, str):
        raise CnnpipeError("a text value, not a file; upload the image file (curl -F file=@x.png)")
    declared = (part.content_type or "").split(";")[0].strip().lower()
    if not declared:
        raise CnnpipeError(
            "the file part has no Content-Type; send it as image/* (curl -F file=@x.png does)"
        )
    if not (declared.startswith("image/") or declared == "application/octet-stream"):
        raise CnnpipeError(
            f"the file part is typed {declared}, not an image; send it as image/* "
            "or application/octet-stream"
        )
    part.file.seek(0)
    spec = bentoml.get_current_service().metadata
    return preprocess.load(part.file.read(), spec.image_size, spec.channels, SETTINGS.max_pixels)


class PredictInput(_Upload):
    form = PredictForm
    route = "/predict"
    file_field = "file"
    many = False


class PredictBatchInput(_Upload):
    form = PredictBatchForm
    route = "/predict_batch"
    file_field = "files"
    many = True


class OnePrediction(IOMixin, Prediction):
    """The /predict response: the one result of the request's one-image batch."""

    @classmethod
    async def to_http_response(cls, obj: t.Any, serde: t.Any) -> t.Any:
        (result,) = obj
        return await super().to_http_response(result, serde)


class BodyLimit:
    """ASGI middleware: a request body over max_bytes gets 413, whether it announces its
    length (Content-Length) or streams it (counted as it arrives)."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def _too_large(self, send: Send) -> None:
        response = JSONResponse(
            {
                "error": f"the request body is over the limit of {self.max_bytes} bytes; "
                "send a smaller image or fewer images per request"
            },
            status_code=413,
        )
        await response({"type": "http"}, _no_receive, send)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope["headers"]).get(b"content-length", b"0")
        if not length.isdigit() or int(length) > self.max_bytes:
            return await self._too_large(send)
        received = 0
        over = False

        async def counted() -> Message:
            nonlocal received, over
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    over = True
                    return {"type": "http.disconnect"}
            return message

        async def unless_over(message: Message) -> None:
            if not over:  # the 413 below replaces what the app answers to the cut-off body
                await send(message)

        try:
            await self.app(scope, counted, unless_over)
        except Exception:
            if not over:
                raise
        if over:
            await self._too_large(send)


async def _no_receive() -> Message:
    return {"type": "http.disconnect"}


async def _metadata(_: Request) -> JSONResponse:
    service = bentoml.get_current_service()
    return JSONResponse(service.metadata.model_dump())


metadata_app = Starlette(routes=[Route("/metadata", _metadata, methods=["GET"])])


@bentoml.asgi_app(metadata_app, path="/")
@bentoml.service(
    name=NAME,
    workers=SETTINGS.workers,
    threads=1,  # one model call at a time per worker; torch threads do the parallel work
    traffic={"timeout": SETTINGS.timeout_s},
)
class Classifier:
    """The packaged cnnpipe model: one typed method per endpoint."""

    bento_model = StoredModel(SETTINGS.model)

    def __init__(self) -> None:
        torch.set_num_threads(SETTINGS.torch_threads)
        self.model, _, _ = checkpoint.load(Path(self.bento_model.path_of(MODEL_FILE)))
        stored = self.bento_model.info
        self.metadata = ServedModel(
            **stored.metadata, model=str(stored.tag), version=str(stored.tag.version)
        )

    def _classify(self, images: list[Image]) -> list[Prediction]:
        probs = probabilities(self.model, self.metadata, np.stack([im.pixels for im in images]))
        results = []
        for p, image in zip(probs, images, strict=True):
            ranked = np.argsort(-p, kind="stable")[: image.top_k]
            results.append(
                Prediction(
                    label=self.metadata.classes[ranked[0]],
                    confidence=float(p[ranked[0]]),
                    probabilities={self.metadata.classes[i]: float(p[i]) for i in ranked},
                )
            )
        return results

    @bentoml.api(
        batchable=True,
        max_batch_size=SETTINGS.max_batch_size,
        max_latency_ms=SETTINGS.max_latency_ms,
        input_spec=PredictInput,
        output_spec=OnePrediction,
    )
    def predict(self, images: list[Image]) -> list[Prediction]:
        """Classify one uploaded image (multipart field `file`; optional `top_k`).

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
        """Classify several uploaded images (repeated multipart field `files`): one result each,
        in order. One bad image fails this request only.

        Example: `curl -F files=@a.png -F files=@b.png http://localhost:3000/predict_batch`
        """
        return self._classify(images)


Classifier.add_asgi_middleware(BodyLimit, max_bytes=SETTINGS.max_upload_bytes)
