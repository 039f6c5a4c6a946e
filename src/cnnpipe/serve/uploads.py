"""Upload parsing: a /predict, /predict_batch or /explain request into decoded model inputs, or a
400.

An image is accepted however common clients send it: a multipart file part typed image/*,
application/octet-stream, something else or not typed at all (python-requests sends none), or a
raw body typed image/* or application/octet-stream (/predict only). It is judged by decoding its
bytes (cnnpipe.serve.decoding), never by its declared type, before the request can join an
adaptive batch: a bad upload gets a 400 naming the problem and the fix, logged as one line, and
never fails the requests it would have been batched with.
"""

from __future__ import annotations

import logging
import typing as t
from dataclasses import dataclass

import anyio
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse

from cnnpipe.core.dataset import InputSpec
from cnnpipe.core.errors import CnnpipeError
from cnnpipe.core.redact import printable
from cnnpipe.serve.contract import MAX_TOP_K, TOP_K_PATTERN
from cnnpipe.serve.decoding import Decoder, Image, sources, until_disconnect
from cnnpipe.serve.settings import Settings

if t.TYPE_CHECKING:
    from starlette.types import ASGIApp, Receive, Scope, Send

logger = logging.getLogger("cnnpipe.serve")
CLIENT_GONE = 499  # as nginx logs a request whose client left before the answer
STATE_KEY = "cnnpipe.images"  # where the decoded images wait in the ASGI scope's state
RAW_TYPES = ("application/octet-stream",)  # besides image/*: a raw body of these is an image


@dataclass(frozen=True)
class Endpoint:
    route: str
    field: str  # the multipart field of the image(s)
    many: bool  # several images (repeated field), else exactly one
    top_k: bool = True  # takes top_k (form field or query parameter)


PREDICT = Endpoint("/predict", "file", many=False)
PREDICT_BATCH = Endpoint("/predict_batch", "files", many=True)
EXPLAIN = Endpoint("/explain", "file", many=False, top_k=False)


class BadRequest(Exception):
    """What is wrong with a request: (loc, message) pairs, answered as a 400."""

    def __init__(self, problems: list[tuple[tuple[str | int, ...], str]]) -> None:
        super().__init__("; ".join(f"{'.'.join(map(str, loc))}: {msg}" for loc, msg in problems))
        self.problems = problems

    def body(self) -> dict:
        n = len(self.problems)
        return {
            "error": f"{n} problem{'s' if n > 1 else ''} with the request",
            "detail": [{"loc": list(loc), "msg": msg} for loc, msg in self.problems],
        }


def top_k(values: list[str], problems: list) -> int | None:
    """The top_k of a request from the values its form or query gave (None: every class). Only
    what TOP_K_PATTERN matches is a top_k: ASCII digits, no leading zero, at most 4 (`²`, `٣`,
    ` 3`, `1e3`, `-1` and a 5,000-digit number are not); blank is not given."""
    if not values:
        return None
    if len(values) > 1:
        problems.append((("top_k",), "given more than once; send it once"))
        return None
    value = values[0]
    if TOP_K_PATTERN.fullmatch(value) is None:
        shown = repr(value[:20]) + ("..." if len(value) > 20 else "")
        problems.append(
            (
                ("top_k",),
                f"{shown} is not a whole number from 1 to {MAX_TOP_K}; send it in ASCII digits, "
                "e.g. top_k=3, or leave it blank for every class",
            )
        )
        return None
    return int(value) if value else None


async def _form_parts(request: Request, endpoint: Endpoint, max_images: int, problems: list):
    """The image parts and the top_k value of a multipart body."""
    try:
        # parts sent without a filename are fields: as many as images, and top_k
        form = await request.form(max_files=max_images, max_fields=max_images + 1)
    except ClientDisconnect:
        raise
    except Exception as exc:  # starlette raises HTTPException or MultiPartException
        reason = getattr(exc, "detail", None) or getattr(exc, "message", None) or exc
        raise BadRequest(
            [
                (
                    ("body",),
                    f"the multipart body cannot be read ({reason}); send at most {max_images} "
                    "files in a well-formed form",
                )
            ]
        ) from None
    allowed = {endpoint.field, "top_k"} if endpoint.top_k else {endpoint.field}
    only = f"{endpoint.field} and top_k" if endpoint.top_k else endpoint.field
    for name in sorted(set(form.keys()) - allowed):
        problems.append(((name,), f"unknown field; send only {only}"))
    # a part sent with a filename is a file, not a value: a top_k file is no top_k
    values = [v if isinstance(v, str) else "(a file)" for v in form.getlist("top_k")]
    return form.getlist(endpoint.field), values if endpoint.top_k else []


async def read_parts(
    request: Request, endpoint: Endpoint, max_images: int
) -> tuple[list, int | None]:
    """The image parts of a request and its top_k, or BadRequest."""
    problems: list[tuple[tuple[str | int, ...], str]] = []
    media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    given = endpoint.top_k and request.scope.get("query_string")
    query = request.query_params.getlist("top_k") if given else []
    if media_type == "multipart/form-data":
        parts, form_values = await _form_parts(request, endpoint, max_images, problems)
        # each must be valid; the form field, if given, wins
        form_k, query_k = top_k(form_values, problems), top_k(query, problems)
        k = form_k if form_k is not None else query_k
    elif not endpoint.many and (media_type.startswith("image/") or media_type in RAW_TYPES):
        parts, k = [await request.body()], top_k(query, problems)
    else:
        raw = "" if endpoint.many else " or as the whole body, typed image/*"
        raise BadRequest(
            [
                (
                    ("body",),
                    f"the body is {media_type or 'untyped'}; send the image as a multipart file "
                    f"field {endpoint.field!r} (curl -F {endpoint.field}=@image.png){raw}",
                )
            ]
        )
    if not parts:
        problems.append(
            (
                (endpoint.field,),
                f"no image; send it as a file in the field {endpoint.field!r}: "
                f"curl -F {endpoint.field}=@image.png",
            )
        )
    elif not endpoint.many and len(parts) > 1:
        problems.append(
            (
                (endpoint.field,),
                f"{len(parts)} files; send one image to /predict, several to /predict_batch",
            )
        )
    if problems:
        raise BadRequest(problems)
    return parts, k


async def decode_parts(
    candidates: list[list], top_k: int | None, endpoint: Endpoint, decoder: Decoder, inline: bool
) -> list[Image]:
    """The decoded images (one per part, from the first of its candidate sources that decodes,
    with the request's top_k), or BadRequest."""
    problems: list[tuple[tuple[str | int, ...], str]] = []
    images = []
    for i, part_sources in enumerate(candidates):
        loc = (endpoint.field, i) if endpoint.many else (endpoint.field,)
        error: CnnpipeError | None = None
        for source in part_sources:
            try:
                images.append(Image(await decoder.decode(source, inline), top_k))
                break
            except CnnpipeError as exc:
                error = error or exc
        else:
            problems.append((loc, str(error)))
    if problems:
        raise BadRequest(problems)
    return images


class Uploads:
    """ASGI middleware: decodes the images of every /predict, /predict_batch and /explain
    request and leaves them in the request's state for the service (cnnpipe.serve.bentoml_io),
    or answers 400 and logs the request as one line."""

    def __init__(self, app: ASGIApp, spec: t.Callable[[], InputSpec], settings: Settings) -> None:
        self.app = app
        self.spec = spec  # called at the first request: the model is loaded after the app is built
        self.settings = settings
        self.endpoints = {e.route: e for e in (PREDICT, PREDICT_BATCH, EXPLAIN)}
        self.decoder: Decoder | None = None

    def _decoder(self) -> Decoder:
        if self.decoder is None:
            spec = self.spec()
            self.decoder = Decoder(
                spec.image_size,
                spec.channels,
                self.settings.max_pixels,
                self.settings.max_image_bytes,
                anyio.CapacityLimiter(self.settings.decodes),
            )
        return self.decoder

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        endpoint = self.endpoints.get(scope.get("path", "")) if scope["type"] == "http" else None
        if endpoint is None or scope["method"] != "POST":
            return await self.app(scope, receive, send)
        request = Request(scope, receive)
        images: list[Image] | None
        try:
            parts, top_k = await read_parts(request, endpoint, self.settings.max_images)
            candidates = [sources(part) for part in parts]
            decoder = self._decoder()
            inline = all(decoder.small(c) for part_sources in candidates for c in part_sources)
            decoding = decode_parts(candidates, top_k, endpoint, decoder, inline)
            if inline:
                images = await decoding  # small: decoded before the client could leave
            else:  # the body is read: from now on a message from the client means it is gone
                images = await until_disconnect(decoding, receive)
        except BadRequest as exc:
            client = scope["client"][0] if scope.get("client") else "?"
            # the problems quote what the client sent (field names, values): kept to one line
            logger.warning("400 POST %s from %s: %s", endpoint.route, client, printable(str(exc)))
            return await JSONResponse(exc.body(), status_code=400)(scope, receive, send)
        except ClientDisconnect:
            images = None
        finally:
            await request.close()  # the spooled upload files
        if images is None:  # the client is gone: nothing more to decode
            logger.info(
                "POST %s: the connection ended before its images were decoded (the client left, "
                "or its body was refused)",
                endpoint.route,
            )
            # answered all the same (nobody reads it): a request without an answer would be
            # held by BentoML's timeout until CNNPIPE_TIMEOUT_S, and so would a shutdown
            gone = {"error": "the client closed the connection"}
            return await JSONResponse(gone, status_code=CLIENT_GONE)(scope, receive, send)
        scope.setdefault("state", {})[STATE_KEY] = images
        await self.app(scope, receive, send)
