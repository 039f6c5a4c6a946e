"""Request limits, on the bytes a body really delivers: 413 over the upload size, 429 when the
uploads in flight would exceed their budget, 408 for a body too slow, 400 for a request framed
both ways."""

from __future__ import annotations

import asyncio
import json

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from cnnpipe.serve.limits import Rebalance, RequestLimits


def app_with_limits(max_bytes: int, max_in_flight: int, release: asyncio.Event) -> RequestLimits:
    async def upload(request: Request) -> JSONResponse:
        body = await request.body()
        await release.wait()  # the upload stays in flight until released
        return JSONResponse({"bytes": len(body)})

    return RequestLimits(
        Starlette(routes=[Route("/", upload, methods=["POST"])]), max_bytes, max_in_flight, 30
    )


def test_uploads_over_the_budget_in_flight_get_429_and_the_budget_comes_back():
    async def scenario() -> list[int]:
        release = asyncio.Event()
        app = app_with_limits(max_bytes=1000, max_in_flight=2500, release=release)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://x") as client:
            held = [asyncio.create_task(client.post("/", content=b"a" * 1000)) for _ in range(2)]
            await asyncio.sleep(0.05)
            refused = await client.post("/", content=b"a" * 1000)  # 3000 > 2500
            small = asyncio.create_task(client.post("/", content=b"a" * 400))  # 2400 fits
            await asyncio.sleep(0.05)
            release.set()
            statuses = [refused.status_code, *[(await t).status_code for t in [*held, small]]]
            again = await client.post("/", content=b"a" * 1000)
            assert refused.headers["retry-after"] == "1" and "retry" in refused.json()["error"]
            return [*statuses, again.status_code, app.in_flight]

    assert asyncio.run(scenario()) == [429, 200, 200, 200, 200, 0]


def test_bodies_over_the_limit_get_413_announced_or_streamed():
    async def scenario() -> list[int]:
        release = asyncio.Event()
        release.set()
        app = app_with_limits(max_bytes=1000, max_in_flight=10_000, release=release)
        transport = httpx.ASGITransport(app=app)

        async def stream():
            for _ in range(3):
                yield b"a" * 600

        async with httpx.AsyncClient(transport=transport, base_url="http://x") as client:
            announced = await client.post("/", content=b"a" * 1001)
            streamed = await client.post("/", content=stream())
            fits = await client.post("/", content=b"a" * 1000)
        return [announced.status_code, streamed.status_code, fits.status_code, app.in_flight]

    assert asyncio.run(scenario()) == [413, 413, 200, 0]


class Exchange:
    """One request driven by hand, as uvicorn drives the app: its body comes in `chunks` (then,
    if `hang`, nothing more for ever), and what the middleware sends is kept."""

    def __init__(self, headers: dict[str, str], chunks: list[bytes], hang: bool = False) -> None:
        self.scope = {
            "type": "http",
            "method": "POST",
            "path": "/",
            "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()],
            "client": ("127.0.0.1", 1),
        }
        self.chunks = list(chunks)
        self.hang = hang
        self.reads = 0  # messages of the body handed to the app
        self.sent: list[dict] = []

    async def receive(self) -> dict:
        if not self.chunks:
            if self.hang:
                await asyncio.Event().wait()
            return {"type": "http.disconnect"}
        self.reads += 1
        body = self.chunks.pop(0)
        return {"type": "http.request", "body": body, "more_body": bool(self.chunks) or self.hang}

    async def send(self, message: dict) -> None:
        self.sent.append(message)

    def run(self, app) -> Exchange:
        asyncio.run(app(self.scope, self.receive, self.send))
        return self

    @property
    def status(self) -> int:
        return next(m["status"] for m in self.sent if m["type"] == "http.response.start")

    @property
    def headers(self) -> dict[bytes, bytes]:
        start = next(m for m in self.sent if m["type"] == "http.response.start")
        return dict(start["headers"])

    def json(self) -> dict:
        return json.loads(b"".join(m.get("body", b"") for m in self.sent[1:]))


async def read_all(scope, receive, send) -> None:
    """An app that reads the whole body, then answers its length."""
    size, more = 0, True
    while more:
        message = await receive()
        if message["type"] == "http.disconnect":
            return
        size += len(message.get("body", b""))
        more = message.get("more_body", False)
    await JSONResponse({"bytes": size})(scope, receive, send)


def test_a_request_framed_both_ways_gets_400_before_its_body_is_read():
    """h11 frames such a request by its chunks: Content-Length says 1, gigabytes may follow."""
    limits = RequestLimits(read_all, max_bytes=1000, max_in_flight=10_000, timeout_s=30)
    chunks = [b"a" * 600] * 100
    both = Exchange({"Content-Length": "1", "Transfer-Encoding": "chunked"}, chunks).run(limits)
    assert both.status == 400 and both.reads == 0 and both.headers[b"connection"] == b"close"
    assert "Content-Length and Transfer-Encoding" in both.json()["detail"][0]["msg"]


def test_a_chunked_body_gets_413_at_the_limit_and_the_rest_is_never_read():
    limits = RequestLimits(read_all, max_bytes=1000, max_in_flight=10_000, timeout_s=30)
    streamed = Exchange({"Transfer-Encoding": "chunked"}, [b"a" * 600] * 100).run(limits)
    assert streamed.status == 413 and streamed.reads == 2  # 1200 > 1000: not one chunk more
    assert streamed.headers[b"connection"] == b"close" and "1000 bytes" in streamed.json()["error"]
    assert [m["type"] for m in streamed.sent].count(
        "http.response.start"
    ) == 1  # the app's: dropped
    fits = Exchange({"Transfer-Encoding": "chunked"}, [b"a" * 500] * 2).run(limits)
    assert (fits.status, fits.json(), limits.in_flight) == (200, {"bytes": 1000}, 0)


def test_the_budget_in_flight_is_charged_as_bytes_arrive_not_as_announced():
    async def scenario() -> tuple[int, int, int, int]:
        release = asyncio.Event()

        async def hold(scope, receive, send) -> None:
            message = await receive()
            while message.get("more_body"):
                message = await receive()
            if message["type"] == "http.disconnect":
                return
            await release.wait()
            await JSONResponse({})(scope, receive, send)

        limits = RequestLimits(hold, max_bytes=1000, max_in_flight=1500, timeout_s=30)
        # announces 1000 but has sent 100 so far: holds 100 of the budget, not 1000
        slow = Exchange({"Content-Length": "1000"}, [b"a" * 100], hang=True)
        held = asyncio.create_task(limits(slow.scope, slow.receive, slow.send))
        await asyncio.sleep(0.01)
        full = Exchange({"Content-Length": "1000"}, [b"a" * 1000])  # 1100: fits
        first = asyncio.create_task(limits(full.scope, full.receive, full.send))
        await asyncio.sleep(0.01)
        over = Exchange({"Content-Length": "900"}, [b"a" * 300, b"a" * 600])  # 1400, then 2000
        await limits(over.scope, over.receive, over.send)
        in_flight = limits.in_flight
        release.set()
        await first
        held.cancel()
        return full.status, over.status, over.reads, in_flight

    # the first 1000 fits beside the slow one's 100; the next is refused at its second chunk
    assert asyncio.run(scenario()) == (200, 429, 2, 1100)


def test_a_body_that_does_not_arrive_in_time_gets_408():
    limits = RequestLimits(read_all, max_bytes=1000, max_in_flight=10_000, timeout_s=0.2)
    slow = Exchange({"Transfer-Encoding": "chunked"}, [b"a" * 10], hang=True).run(limits)
    assert slow.status == 408 and "0.2 s" in slow.json()["error"] and limits.in_flight == 0
    assert slow.headers[b"connection"] == b"close"


def test_every_nth_answer_on_a_connection_closes_it():
    async def hello(request: Request) -> JSONResponse:
        return JSONResponse({})

    app = Rebalance(Starlette(routes=[Route("/", hello)]), every=3)

    async def scenario() -> list[list[str | None]]:
        closes: dict[int, list[str | None]] = {1: [], 2: []}
        for port in (1, 2):  # two connections, told apart by the client's port
            transport = httpx.ASGITransport(app=app, client=("127.0.0.1", port))
            async with httpx.AsyncClient(transport=transport, base_url="http://x") as client:
                for _ in range(7 if port == 1 else 2):
                    closes[port].append((await client.get("/")).headers.get("connection"))
        return [closes[1], closes[2]]

    first, second = asyncio.run(scenario())
    assert first == [None, None, "close", None, None, "close", None]
    assert second == [None, None]
