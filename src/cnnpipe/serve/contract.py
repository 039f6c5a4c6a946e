"""The HTTP contract: what /predict, /predict_batch, /explain and /metadata take and answer, as
pydantic models, how class probabilities and the feature distance become an answer (the label,
or "unknown" under the model's threshold or beyond its distance threshold), and the OpenAPI
document (/docs.json, the Swagger UI at /docs) that states it.

BentoML documents every API with generic error schemas (a 400 whose `detail` is a string, 404,
500) and a request body of one media type, and describes itself with badges from other sites.
The document served here is BentoML's with those operations replaced by what the service really
does: every response it sends (200, 400, 401 with a key, 408, 413, 429, 503, 504) with its body,
bounds on every field, both ways to send an image, and the bearer key when one is required.
"""

from __future__ import annotations

import json
import re
import typing as t
from urllib.parse import quote

import numpy as np
from pydantic import BaseModel, Field
from starlette.responses import JSONResponse

from cnnpipe.core.preprocess import FORMAT_NAMES
from cnnpipe.model.card import ModelCard, RefusalKind
from cnnpipe.serve.access import open_paths
from cnnpipe.serve.settings import Settings

if t.TYPE_CHECKING:
    from starlette.types import ASGIApp, Message, Receive, Scope, Send

IMAGE_DOC = f"the image: {FORMAT_NAMES}, typed or not"
DESCRIPTION = (
    "An image classifier trained and packaged by cnnpipe. `POST /predict` classifies one image "
    "(multipart field `file`, or the image as the whole body), `POST /predict_batch` several "
    "(repeated field `files`), `POST /explain` draws where the model looked (Grad-CAM); "
    "`GET /metadata` describes the model. A page to try it: `/`."
)
BEARER = "bearer"  # the security scheme's name in the document


class Prediction(BaseModel):
    label: str | None = Field(
        description="the most probable class; null when the model does not know: its "
        "probability is under the model's threshold, or the image's features are farther than "
        "the distance threshold from every class (/metadata); `refusal` and `reason` say which",
        examples=["circle"],
    )
    confidence: float = Field(
        description="the most probable class's calibrated probability", examples=[0.97]
    )
    probabilities: dict[str, float] = Field(
        description="class name -> calibrated probability, most probable first (the top_k "
        "only if given); given with a null label too",
        examples=[{"circle": 0.97, "square": 0.02, "triangle": 0.01}],
    )
    distance: float | None = Field(
        description="the Mahalanobis distance of the image's features to the nearest class; "
        "null for a model without feature statistics",
        examples=[4.2],
    )
    refusal: RefusalKind | None = Field(
        description="why the label is null: `unsure` (top probability under the threshold) or "
        "`unfamiliar` (features far from every class: likely none of its classes); null when "
        "there is a label",
        examples=[None],
    )
    reason: str | None = Field(
        description="why the label is null, in words; null when there is a label",
        examples=[None],
    )


def answer(
    probabilities: np.ndarray, card: ModelCard, top_k: int | None, distance: float | None = None
) -> Prediction:
    """The answer for one image's class probabilities (and distance): its top classes, and its
    label unless the card's rules refuse it (ModelCard.refusal). The service and `cnnpipe
    predict` both answer with this."""
    ranked = np.argsort(-probabilities, kind="stable")[:top_k]
    confidence = float(probabilities[ranked[0]])
    distance = None if distance is None else float(distance)
    refused = card.refusal(confidence, distance)
    return Prediction(
        label=None if refused else card.classes[ranked[0]],
        confidence=confidence,
        probabilities={card.classes[i]: float(probabilities[i]) for i in ranked},
        distance=distance,
        refusal=refused.kind if refused else None,
        reason=refused.reason if refused else None,
    )


EXPLAINED_HEADER = "X-Explained-Class"  # the class /explain drew, percent-encoded UTF-8


def explained_header(label: str) -> dict[str, str]:
    return {EXPLAINED_HEADER: quote(label, safe="")}


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
MAX_TOP_K = 9999
# top_k as it travels, in a form part or a query string: text, there once or not at all. The
# document states exactly that, as the parser (cnnpipe.serve.uploads.top_k) reads it: the
# pattern it matches, not an integer (on the wire the integer 3 and the string "3" are the same
# bytes), given as one value or a list of at most one (a list of one is the same one part or
# parameter; an empty list, none). Blank (a browser's empty field): every class.
TOP_K_PATTERN = re.compile(r"(?:[1-9][0-9]{0,3})?", re.ASCII)
_TOP_K_VALUE = {"type": "string", "pattern": f"^{TOP_K_PATTERN.pattern}$", "maxLength": 4}
TOP_K = {
    "anyOf": [_TOP_K_VALUE, {"type": "array", "items": _TOP_K_VALUE, "maxItems": 1}],
    "description": f"return only the k most probable classes: 1 to {MAX_TOP_K} in ASCII digits "
    "(more than the model has: all of them); blank: every class",
}
BINARY = {"type": "string", "format": "binary"}


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


def _form(many: bool, max_images: int, top_k: bool = True) -> dict:
    """The multipart form: the image field(s), and top_k unless the endpoint takes none."""
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
    properties = {field: images, "top_k": TOP_K} if top_k else {field: images}
    return {
        "type": "object",
        "properties": properties,
        "required": [field],
        "additionalProperties": False,
    }


def _image_body(settings: Settings, many: bool, top_k: bool = True) -> dict:
    """The request body of an image endpoint: a multipart form, or (one image) the image."""
    field = "files" if many else "file"
    content = {
        "multipart/form-data": {
            "schema": _form(many, settings.max_images, top_k),
            # what the part must hold; its declared type is not checked (python-requests sends
            # none): the bytes are decoded
            "encoding": {field: {"contentType": "image/*"}},
        }
    }
    if not many:  # one image may also be the whole body (application/octet-stream too)
        content["image/*"] = {"schema": BINARY}
    return {"required": True, "content": content}


KEPT = ("tags", "x-bentoml-name", "operationId", "description")  # of BentoML's operation


def _operation(settings: Settings, many: bool, original: dict, components: dict) -> dict:
    prediction = _schema(Prediction, components)
    error = _schema(ErrorBody, components)
    return {
        **{k: v for k, v in original.items() if k in KEPT},
        "parameters": [
            {
                "name": "top_k",
                "in": "query",
                "required": False,
                "description": "as the form field top_k (which wins if both are given)",
                "schema": TOP_K,
            }
        ],
        "requestBody": _image_body(settings, many),
        "responses": {
            "200": _json(
                {"type": "array", "items": prediction} if many else prediction,
                "one result per image, in order" if many else "the result",
            ),
            "400": _json(_schema(BadRequestBody, components), "each problem, with its fix"),
            "408": _json(error, f"the body not received within {settings.body_timeout_s:g} s"),
            "413": _json(error, f"a body over {settings.max_upload_bytes} bytes"),
            "429": _json(error, "too many requests or uploads in flight; retry"),
            "503": _json(error, "the model's queue is over CNNPIPE_MAX_LATENCY_MS; retry"),
            "504": _json(error, f"not answered within {settings.timeout_s} s"),
        },
    }


def _explain_operation(settings: Settings, original: dict, components: dict) -> dict:
    error = _schema(ErrorBody, components)
    png = {"image/png": {"schema": BINARY}}
    header = {
        "description": "the class the heat map is drawn for (the most probable), "
        "percent-encoded UTF-8",
        "schema": {"type": "string"},
    }
    return {
        **{k: v for k, v in original.items() if k in KEPT},
        "requestBody": _image_body(settings, many=False, top_k=False),
        "responses": {
            "200": {
                "description": "the model input with its Grad-CAM heat map for the most "
                "probable class over it",
                "headers": {EXPLAINED_HEADER: header},
                "content": png,
            },
            "400": _json(_schema(BadRequestBody, components), "each problem, with its fix"),
            "408": _json(error, f"the body not received within {settings.body_timeout_s:g} s"),
            "413": _json(error, f"a body over {settings.max_upload_bytes} bytes"),
            "429": _json(error, "too many requests or uploads in flight; retry"),
            "504": _json(error, f"not answered within {settings.timeout_s} s"),
        },
    }


def document(base: dict, settings: Settings, version: str) -> dict:
    """BentoML's OpenAPI document with the service's own description (of the model `version`)
    and operations, and the bearer key on the operations that need one (if one is set)."""
    base["info"] = {
        "title": "cnnpipe image classifier",
        "version": version,
        "description": DESCRIPTION,
    }
    paths = base.setdefault("paths", {})
    components = base.setdefault("components", {}).setdefault("schemas", {})
    for route, many in (("/predict", False), ("/predict_batch", True)):
        original = paths.get(route, {}).get("post", {})
        paths[route] = {"post": _operation(settings, many, original, components)}
    original = paths.get("/explain", {}).get("post", {})
    paths["/explain"] = {"post": _explain_operation(settings, original, components)}
    paths["/metadata"] = {
        "get": {
            "tags": ["Service APIs"],
            "description": "the served model's card: classes, input, metrics, runtime",
            "operationId": "cnnpipe__metadata",
            "responses": {"200": _json(_schema(ServedModel, components), "the model card")},
        }
    }
    if settings.api_key is not None or settings.api_key_file is not None:
        _require_the_key(base, open_paths(settings.metrics_public), _schema(ErrorBody, components))
    return base


def _require_the_key(base: dict, open: frozenset[str], error: dict) -> None:
    base["components"]["securitySchemes"] = {
        BEARER: {
            "type": "http",
            "scheme": "bearer",
            "description": "the API key (CNNPIPE_API_KEY), as Authorization: Bearer <key>",
        }
    }
    unauthorized = _json(error, "no API key, or not this service's")
    for path, operations in base["paths"].items():
        for operation in operations.values():
            if path in open:
                operation["security"] = []
            else:
                operation["security"] = [{BEARER: []}]
                operation.setdefault("responses", {})["401"] = unauthorized


class Docs:
    """ASGI middleware: serves /docs.json as `document` makes it from BentoML's."""

    def __init__(
        self, app: ASGIApp, settings: Settings, served: t.Callable[[], ServedModel]
    ) -> None:
        self.app = app
        self.settings = settings
        self.served = served  # called at the first request: the model is loaded after the app
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
            spec = document(json.loads(body), self.settings, str(self.served().model))
            self.cached = json.dumps(spec).encode()
        await JSONResponse(json.loads(self.cached))(scope, receive, send)
