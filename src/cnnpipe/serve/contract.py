"""The HTTP contract: what /predict, /predict_batch and /metadata take and answer, as pydantic
models, and the OpenAPI document (/docs.json, the Swagger UI at /) that states it.

BentoML documents every API with generic error schemas (a 400 whose `detail` is a string, 404,
500) and a request body of one media type. The document served here is BentoML's with those
operations replaced by what the service really does: every response it sends (200, 400, 413,
429, 503, 504) with its body, bounds on every field, and both ways to send an image.
"""

from __future__ import annotations

import json
import typing as t

from pydantic import BaseModel, Field
from starlette.responses import JSONResponse

from cnnpipe.model.card import ModelCard
from cnnpipe.serve.settings import Settings

if t.TYPE_CHECKING:
    from starlette.types import ASGIApp, Message, Receive, Scope, Send

IMAGE_DOC = "the image: PNG, JPEG, GIF, BMP, WebP or TIFF, typed or not"


class Prediction(BaseModel):
    label: str = Field(description="the most probable class", examples=["circle"])
    confidence: float = Field(description="its probability", examples=[0.97])
    probabilities: dict[str, float] = Field(
        description="class name -> probability, most probable first (the top_k only if given)",
        examples=[{"circle": 0.97, "square": 0.02, "triangle": 0.01}],
    )


class ServedModel(ModelCard):
    """/metadata: the model card of the served model, its tag in the store and its runtime."""

    model: str
    version: str
    runtime: t.Literal["onnx", "torch"]
    onnx_max_difference: float | None = None  # the export against torch, at package time


class Problem(BaseModel):
    loc: list[str | int] = Field(description="where: the field (and the file's index)")
    msg: str = Field(description="what is wrong, and how to fix it")


class BadRequestBody(BaseModel):
    error: str = Field(examples=["1 problem with the request"])
    detail: list[Problem]


class ErrorBody(BaseModel):
    error: str = Field(description="what happened, and what to do")


REF = "#/components/schemas/{model}"
TOP_K = {"type": "integer", "minimum": 1, "description": "return only the k most probable classes"}
BINARY = {"type": "string", "format": "binary"}
# a browser sends a blank field as an empty string: all classes
FORM_TOP_K = {"anyOf": [TOP_K, {"type": "string", "maxLength": 0}]}


def _openapi30(schema: t.Any) -> t.Any:
    """A JSON schema as OpenAPI 3.0 (BentoML's version) has it: `nullable` for pydantic's
    `anyOf [..., {type: null}]`."""
    if isinstance(schema, list):
        return [_openapi30(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    schema = {k: _openapi30(v) for k, v in schema.items()}
    options = schema.get("anyOf", [])
    if {"type": "null"} in options:
        rest = [o for o in options if o != {"type": "null"}]
        schema.pop("anyOf")
        schema.update(rest[0] if len(rest) == 1 else {"anyOf": rest})
        schema["nullable"] = True
    return schema


def _schema(model: type[BaseModel], components: dict) -> dict:
    """A reference to the model's schema, which goes into components with those it uses."""
    schema = model.model_json_schema(ref_template=REF)
    for name, definition in schema.pop("$defs", {}).items():
        components[name] = _openapi30(definition)
    components[model.__name__] = _openapi30(schema)
    return {"$ref": REF.format(model=model.__name__)}


def _json(schema: dict, description: str) -> dict:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _form(many: bool, max_images: int) -> dict:
    """The multipart form: the image field(s) and top_k."""
    if many:
        field = "files"
        images = {
            "type": "array",
            "items": BINARY,
            "minItems": 1,
            "maxItems": max_images,
            "description": "the images, one result each, in order",
        }
    else:
        field, images = "file", {**BINARY, "description": IMAGE_DOC}
    return {
        "type": "object",
        "properties": {field: images, "top_k": FORM_TOP_K},
        "required": [field],
        "additionalProperties": False,
    }


def _operation(settings: Settings, many: bool, original: dict, components: dict) -> dict:
    field = "files" if many else "file"
    content = {
        "multipart/form-data": {
            "schema": _form(many, settings.max_images),
            # what the part must hold; its declared type is not checked (python-requests sends
            # none): the bytes are decoded
            "encoding": {field: {"contentType": "image/*"}},
        }
    }
    if not many:  # one image may also be the whole body (application/octet-stream too)
        content["image/*"] = {"schema": BINARY}
    prediction = _schema(Prediction, components)
    error = _schema(ErrorBody, components)
    kept = ("tags", "x-bentoml-name", "operationId", "description")
    return {
        **{k: v for k, v in original.items() if k in kept},
        "parameters": [
            {
                "name": "top_k",
                "in": "query",
                "required": False,
                "description": "as the form field top_k (which wins if both are given)",
                "schema": TOP_K,
            }
        ],
        "requestBody": {"required": True, "content": content},
        "responses": {
            "200": _json(
                {"type": "array", "items": prediction} if many else prediction,
                "one result per image, in order" if many else "the result",
            ),
            "400": _json(_schema(BadRequestBody, components), "each problem, with its fix"),
            "413": _json(error, f"a body over {settings.max_upload_bytes} bytes"),
            "429": _json(error, "too many requests or uploads in flight; retry"),
            "503": _json(error, "the model's queue is over CNNPIPE_MAX_LATENCY_MS; retry"),
            "504": _json(error, f"not answered within {settings.timeout_s} s"),
        },
    }


def document(base: dict, settings: Settings) -> dict:
    """BentoML's OpenAPI document with the service's own operations."""
    paths = base.setdefault("paths", {})
    components = base.setdefault("components", {}).setdefault("schemas", {})
    for route, many in (("/predict", False), ("/predict_batch", True)):
        original = paths.get(route, {}).get("post", {})
        paths[route] = {"post": _operation(settings, many, original, components)}
    paths["/metadata"] = {
        "get": {
            "tags": ["Service APIs"],
            "description": "the served model's card: classes, input, metrics, runtime",
            "operationId": "cnnpipe__metadata",
            "responses": {"200": _json(_schema(ServedModel, components), "the model card")},
        }
    }
    return base


class Docs:
    """ASGI middleware: serves /docs.json as `document` makes it from BentoML's."""

    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app = app
        self.settings = settings
        self.cached: bytes | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != "/docs.json":
            return await self.app(scope, receive, send)
        if self.cached is None:
            messages: list[Message] = []

            async def keep(message: Message) -> None:
                messages.append(message)

            await self.app(scope, receive, keep)
            start = next(m for m in messages if m["type"] == "http.response.start")
            if start["status"] != 200:  # let BentoML's own error through
                for message in messages:
                    await send(message)
                return
            body = b"".join(m.get("body", b"") for m in messages if m["type"] != start["type"])
            self.cached = json.dumps(document(json.loads(body), self.settings)).encode()
        await JSONResponse(json.loads(self.cached))(scope, receive, send)
