"""Serving throughput: `bentoml serve` under concurrent /predict requests against the same model
in-process (decode + batched forward passes, no HTTP), measured in the same invocation.

Run from the project root after `dvc repro` (images from the test split, model from the store):

    python bench/serve.py --requests 1000 --concurrency 32
    python bench/serve.py --model path/to/model.pt     # store that model in a temporary store

The server and this client share the machine's cores, so the ratio is a lower bound of what a
server on its own machine would reach.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_images(limit: int) -> list[bytes]:
    with open(ROOT / "data/processed/test.csv", newline="") as f:
        files = [row["file"] for row in csv.DictReader(f)][:limit]
    return [(ROOT / "data/raw" / name).read_bytes() for name in files]


def in_process(model_path: Path, images: list[bytes], batch: int, threads: int) -> float:
    """Images per second: decode with preprocess.load, then forward passes of `batch` images."""
    import torch

    from cnnpipe.core import preprocess
    from cnnpipe.model import checkpoint
    from cnnpipe.model.inference import probabilities

    torch.set_num_threads(threads)
    model, info, _ = checkpoint.load(model_path)
    probabilities(model, info, np.stack([preprocess.load(images[0], info.image_size, 1)] * batch))
    start = time.perf_counter()
    for i in range(0, len(images), batch):
        pixels = [preprocess.load(b, info.image_size, info.channels) for b in images[i : i + batch]]
        probabilities(model, info, np.stack(pixels))
    return len(images) / (time.perf_counter() - start)


def start_server(env: dict, port: int) -> subprocess.Popen:
    server = subprocess.Popen(
        [sys.executable, "-m", "bentoml", "serve", "--host", "127.0.0.1", "--port", str(port)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if server.poll() is not None:
            sys.exit(f"the server did not start: {server.stderr.read().strip()}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                return server
        except httpx.TransportError:
            pass
        time.sleep(0.3)
    server.terminate()
    sys.exit("the server was not ready within 120 s")


async def load(url: str, images: list[bytes], requests: int, concurrency: int) -> dict:
    latencies: list[float] = []
    errors: dict[str, int] = {}
    counter = iter(range(requests))
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)

    async def worker(client: httpx.AsyncClient) -> None:
        for i in counter:
            start = time.perf_counter()
            try:
                files = {"file": ("image.png", images[i % len(images)], "image/png")}
                reply = await client.post(url, files=files)
                ok = reply.status_code == 200
                kind = str(reply.status_code)
            except httpx.HTTPError as exc:
                ok, kind = False, type(exc).__name__
            if ok:
                latencies.append(time.perf_counter() - start)
            else:
                errors[kind] = errors.get(kind, 0) + 1

    async with httpx.AsyncClient(limits=limits, timeout=60) as client:
        for image in images[:concurrency]:  # warm-up: connections, first batches
            await client.post(url, files={"file": ("image.png", image, "image/png")})
        start = time.perf_counter()
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
        elapsed = time.perf_counter() - start
    ms = np.percentile(np.array(latencies) * 1000, [50, 95, 99]) if latencies else [np.nan] * 3
    return {"rps": len(latencies) / elapsed, "p": ms, "errors": errors}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--images", type=int, default=256, help="test images to cycle through")
    parser.add_argument("--model", type=Path, help="a model.pt to serve (default: the store's)")
    args = parser.parse_args()

    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "BENTOML_DO_NOT_TRACK": "True"}
    if args.model:
        env["BENTOML_HOME"] = os.environ["BENTOML_HOME"] = tempfile.mkdtemp(prefix="bench-")
    os.environ.setdefault("BENTOML_DO_NOT_TRACK", "True")
    import bentoml

    from cnnpipe.model import checkpoint
    from cnnpipe.serve import packaging
    from cnnpipe.serve.service import SETTINGS

    if args.model:
        card = checkpoint.card_of(checkpoint.read(args.model))
        packaging.store_model("bench", args.model, card)
    stored = bentoml.models.get(SETTINGS.model)
    model_path = Path(stored.path_of(packaging.MODEL_FILE))
    images = test_images(args.images)

    rate = in_process(model_path, images, SETTINGS.max_batch_size, SETTINGS.torch_threads)
    port = free_port()
    server = start_server(env, port)
    try:
        url = f"http://127.0.0.1:{port}/predict"
        result = asyncio.run(load(url, images, args.requests, args.concurrency))
    finally:
        server.terminate()
        server.wait(timeout=30)
    p50, p95, p99 = result["p"]
    errors = sum(result["errors"].values())
    arch = stored.info.metadata.get("architecture", "?")
    print(f"model {stored.tag} ({arch}), {len(images)} test images, {os.cpu_count()} cores")
    batch = SETTINGS.max_batch_size
    print(f"in-process: {rate:.0f} images/s (decode + forward, batches of {batch})")
    print(
        f"server: {result['rps']:.0f} requests/s at concurrency {args.concurrency}, "
        f"{args.requests} requests, latency p50 {p50:.1f} ms p95 {p95:.1f} ms p99 {p99:.1f} ms, "
        f"errors {errors} {result['errors'] or ''}"
    )
    print(f"ratio server / in-process: {result['rps'] / rate:.2f}")


if __name__ == "__main__":
    main()
