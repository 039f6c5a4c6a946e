"""Request limits, as ASGI middleware: a body over the upload limit gets 413, and uploads in flight
are capped per worker by their bytes, so a flood of large uploads gets 429 at once instead of
parking gigabytes in temporary files and slowing every other request."""

from __future__ import annotations

import logging
import typing as t

from starlette.responses import JSONResponse

if t.TYPE_CHECKING:
    from starlette.types import ASGIApp, Message, Receive, Scope, Send

logger = logging.getLogger("cnnpipe.serve")


async def _no_receive() -> Message:
    return {"type": "http.disconnect"}


async def _answer(send: Send, status: int, error: str, headers: dict | None = None) -> None:
    response = JSONResponse({"error": error}, status_code=status, headers=headers)
    await response({"type": "http"}, _no_receive, send)


class RequestLimits:
    """413 for a body over max_bytes, whether it announces its length (Content-Length) or
    streams it (counted as it arrives); 429 for a body that would take the bodies in flight in
    this worker over max_in_flight bytes (a body of unknown length counts as max_bytes)."""

    def __init__(self, app: ASGIApp, max_bytes: int, max_in_flight: int) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.max_in_flight = max_in_flight
        self.in_flight = 0

    async def _too_large(self, send: Send) -> None:
        await _answer(
            send,
            413,
            f"the request body is over the limit of {self.max_bytes} bytes; send a smaller "
            "image or fewer images per request",
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            return await self.app(scope, receive, send)
        headers = dict(scope["headers"])
        length = headers.get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_bytes):
            return await self._too_large(send)
        reserved = int(length) if length is not None else self.max_bytes
        if reserved and self.in_flight + reserved > self.max_in_flight:
            logger.warning(
                "429 %s %s: %d bytes of uploads in flight",
                scope["method"],
                scope["path"],
                self.in_flight,
            )
            return await _answer(
                send,
                429,
                "the server is receiving too many uploads at once; retry in a second",
                {"Retry-After": "1"},
            )
        self.in_flight += reserved
        try:
            if length is None:  # streamed: counted as it arrives
                await self._counted(scope, receive, send)
            else:  # the server reads no more than Content-Length announces
                await self.app(scope, receive, send)
        finally:
            self.in_flight -= reserved

    async def _counted(self, scope: Scope, receive: Receive, send: Send) -> None:
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
