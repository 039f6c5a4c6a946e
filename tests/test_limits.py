"""Request limits: 413 over the upload size, 429 when the uploads in flight would exceed their
budget."""

import asyncio

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
        Starlette(routes=[Route("/", upload, methods=["POST"])]), max_bytes, max_in_flight
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
