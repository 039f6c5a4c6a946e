"""Request limits, as ASGI middleware, on the bytes a body really delivers: 413 as soon as a body
passes the upload limit, 429 as soon as the bodies in flight in a worker would pass their budget,
408 when a body has not arrived within its deadline, 400 for a request framed two ways. A flood
of large or slow uploads is turned away before it parks gigabytes in temporary files or holds
the worker's connections, and other requests go on being served.

Nothing here trusts Content-Length: h11, which frames requests for uvicorn here, reads a request
that has both Content-Length and Transfer-Encoding: chunked by its chunks, and uvicorn hands the
app both headers. Such a request is refused before any of its body is read (RFC 9112 6.3: a
message framed both ways may be an attempt at request smuggling). Every refusal closes the
connection (`Connection: close`): the rest of the body is never read.
"""

from __future__ import annotations

import asyncio
import logging
import typing as t

from starlette.responses import JSONResponse

from cnnpipe.core.redact import printable

if t.TYPE_CHECKING:
    from starlette.types import ASGIApp, Message, Receive, Scope, Send

logger = logging.getLogger("cnnpipe.serve")
BODILESS = ("GET", "HEAD", "OPTIONS")  # their bodies, if any, are never read


async def _no_receive() -> Message:
    return {"type": "http.disconnect"}


async def answer(send: Send, status: int, body: dict, headers: dict | None = None) -> None:
    """A JSON answer, the connection closed after it."""
    response = JSONResponse(
        body, status_code=status, headers={**(headers or {}), "Connection": "close"}
    )
    await response({"type": "http"}, _no_receive, send)


class Refusal(t.NamedTuple):
    status: int
    body: dict
    headers: dict | None = None


def _problem(message: str) -> dict:
    """A 400 body as the contract's BadRequestBody has it."""
    return {"error": "1 problem with the request", "detail": [{"loc": ["headers"], "msg": message}]}


FRAMED_TWICE = Refusal(
    400,
    _problem(
        "the request has both Content-Length and Transfer-Encoding; send one of them (a client "
        "library does this for you)"
    ),
)


class RequestLimits:
    """413 for a body over max_bytes, counted as it arrives whatever its headers announce (and at
    once for a Content-Length over it); 429 for a body whose bytes, as they arrive, would take
    the bodies in flight in this worker over max_in_flight bytes; 408 for a body not received
    within timeout_s of the request's start; 400 for a request with both Content-Length and
    Transfer-Encoding."""

    def __init__(self, app: ASGIApp, max_bytes: int, max_in_flight: int, timeout_s: float) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.max_in_flight = max_in_flight
        self.timeout_s = timeout_s
        self.in_flight = 0

    def _too_large(self) -> Refusal:
        return Refusal(
            413,
            {
                "error": f"the request body is over the limit of {self.max_bytes} bytes; send a "
                "smaller image or fewer images per request"
            },
        )

    def _busy(self) -> Refusal:
        return Refusal(
            429,
            {"error": "the server is receiving too many uploads at once; retry in a second"},
            {"Retry-After": "1"},
        )

    def _slow(self) -> Refusal:
        return Refusal(
            408,
            {
                "error": f"the request body did not arrive within {self.timeout_s:g} s; send it "
                "faster, or a smaller one"
            },
        )

    async def _refuse(self, scope: Scope, send: Send, refusal: Refusal, why: str) -> None:
        logger.warning(
            "%d %s %s from %s: %s",
            refusal.status,
            scope["method"],
            printable(scope["path"]),
            scope["client"][0] if scope.get("client") else "?",
            why,
        )
        await answer(send, *refusal)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = None
        chunked = False
        for name, value in scope["headers"]:
            if name == b"content-length":
                length = value
            elif name == b"transfer-encoding":
                chunked = True
        if chunked and length is not None:
            return await self._refuse(
                scope, send, FRAMED_TWICE, "Content-Length and Transfer-Encoding"
            )
        if scope["method"] in BODILESS:
            return await self.app(scope, receive, send)
        if length is not None and (not length.isdigit() or int(length) > self.max_bytes):
            return await self._refuse(
                scope,
                send,
                self._too_large(),
                f"Content-Length {printable(length.decode('latin-1'))}",
            )
        await _Body(self, scope, receive, send).run()


class _Body:
    """One request's body as it arrives: counted, charged to the budget, timed."""

    def __init__(self, limits: RequestLimits, scope: Scope, receive: Receive, send: Send) -> None:
        self.limits = limits
        self.scope = scope
        self.receive = receive
        self.send = send
        self.received = 0  # bytes of the body so far, all charged to limits.in_flight
        self.done = False  # the whole body is in
        self.refused = False  # answered here: the app's own answer is dropped
        self.answering = False  # the app has started its answer: it cannot be replaced
        self.deadline = asyncio.get_running_loop().time() + limits.timeout_s

    async def run(self) -> None:
        try:
            await self.limits.app(self.scope, self.counted, self.unless_refused)
        except Exception:
            if not self.refused:  # the app failed on the body cut off below: answered already
                raise
        finally:
            self.limits.in_flight -= self.received

    async def unless_refused(self, message: Message) -> None:
        if not self.refused:
            self.answering = True
            await self.send(message)

    async def counted(self) -> Message:
        if self.refused:
            return {"type": "http.disconnect"}
        if self.done:  # after the body: only a disconnect comes, whenever the client leaves
            return await self.receive()
        try:
            async with asyncio.timeout_at(self.deadline):
                message = await self.receive()
        except TimeoutError:
            return await self.refuse(
                self.limits._slow(), f"body incomplete after {self.received} bytes"
            )
        if message["type"] != "http.request":
            return message
        size = len(message.get("body", b""))
        self.done = not message.get("more_body", False)
        limits = self.limits
        if self.received + size > limits.max_bytes:
            return await self.refuse(limits._too_large(), f"body over {limits.max_bytes} bytes")
        if size and limits.in_flight + size > limits.max_in_flight:
            return await self.refuse(
                limits._busy(), f"{limits.in_flight} bytes of uploads in flight"
            )
        self.received += size
        limits.in_flight += size
        return message

    async def refuse(self, refusal: Refusal, why: str) -> Message:
        """Answer now, and tell the app its client is gone (it stops reading the body)."""
        if not self.answering:
            self.refused = True
            await self.limits._refuse(self.scope, self.send, refusal, why)
        return {"type": "http.disconnect"}


class Rebalance:
    """Every `every`-th answer on a connection closes it (`Connection: close`, as nginx's
    keepalive_requests does), so kept-alive connections spread over the workers. The workers
    share one listening socket and a worker accepts every connection waiting when it wakes: a
    client that opens its connections at once can get all of them served by one worker while
    the other idles. A client reconnects on its next request, to whichever worker accepts first:
    usually the less busy one."""

    def __init__(self, app: ASGIApp, every: int) -> None:
        self.app = app
        self.every = every
        self.answered: dict[tuple, int] = {}  # per connection (client address and port)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        client = scope.get("client")
        if scope["type"] != "http" or not client or not self.every:
            return await self.app(scope, receive, send)
        key = tuple(client)
        count = self.answered.get(key, 0) + 1
        if count >= self.every or len(self.answered) > 10_000:  # closed connections leave keys
            self.answered.pop(key, None)
            if len(self.answered) > 10_000:
                self.answered.clear()

            async def closing(message: Message) -> None:
                if message["type"] == "http.response.start":
                    headers = [*message.get("headers", []), (b"connection", b"close")]
                    message = {**message, "headers": headers}
                await send(message)

            return await self.app(scope, receive, closing)
        self.answered[key] = count
        await self.app(scope, receive, send)
