"""Serving throughput: cnnpipe's `bentoml serve` against the usual way to serve a model (a plain
uvicorn app, one forward pass per request: bench/plain_server.py), same model, same closed-loop
client, same test images, in one invocation; prints both rates, their ratio, latency, errors and
the servers' memory (RSS of the whole process tree).

Run from the project root after `dvc repro` (images from the test split):

    python bench/serve.py                      # the workspace model, and resnet18 at 64 px
    python bench/serve.py --case models/model.pt --case densenet121:64:3 --rounds 3
    python bench/serve.py --model resnet18.pt         # --model: the same as --case
    python bench/serve.py --requests 10000 --concurrency 64 --servers cnnpipe   # a soak

A case is a model file, or ARCH:SIZE[:CHANNELS] for an untrained model of that architecture on
the workspace's classes (throughput does not depend on the weights); `--rounds N` alternates
the servers N times and prints the median ratio. Each model is packaged as
the package stage does (ONNX export checked against torch) into a temporary BentoML store; the
service runs with its default settings unless CNNPIPE_* variables are set. The servers and this
client share the machine's cores.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import aiohttp
import httpx
import numpy as np
import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from cnnpipe.core.dataset import InputSpec, image_folder  # noqa: E402
from cnnpipe.model import checkpoint, export, familiarity, files, registry  # noqa: E402
from cnnpipe.serve import packaging  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_images(limit: int) -> list[bytes]:
    with open(ROOT / "data/processed/test.csv", newline="") as f:
        files = [row["file"] for row in csv.DictReader(f)][:limit]
    folder = image_folder(ROOT / "data/raw")  # generated images, or the folder read in place
    return [(folder / name).read_bytes() for name in files]


def model_file(case: str, workdir: Path) -> Path:
    """The case's model file: as given, or an untrained ARCH:SIZE[:CHANNELS] written here."""
    if Path(case).exists():
        return Path(case)
    arch, size, *channels = case.split(":")
    meta = json.loads((ROOT / "data/processed/meta.json").read_text())
    n = int(channels[0]) if channels else 1
    spec = InputSpec(
        classes=meta["classes"], image_size=int(size), channels=n, mean=[0.5] * n, std=[0.25] * n
    )
    path = workdir / f"{arch}-{size}-{n}.pt"
    checkpoint.save(path, registry.build(arch, n, len(spec.classes), int(size)), arch, spec, {})
    return path


def package(path: Path, version: str, images: list[bytes], workdir: Path) -> str:
    """Store the model as the package stage does: ONNX export checked against torch."""
    from cnnpipe.core import preprocess

    model, card, data = checkpoint.load(path)
    statistics = familiarity.from_checkpoint(data)
    pixels = np.stack([preprocess.load(b, card.image_size, card.channels) for b in images])
    folder = workdir / version  # a packaged model: the checkpoint and the graph beside it
    folder.mkdir(exist_ok=True)
    files.place(path, folder / files.MODEL_FILE)
    graph = export.export_onnx(model, card, folder / files.MODEL_FILE, card.temperature, statistics)
    (folder / files.ONNX_FILE).write_bytes(graph)
    difference, _ = export.max_difference(
        folder / files.ONNX_FILE, model, card, pixels, 256, card.temperature, statistics
    )
    assert difference <= 1e-5, f"the ONNX export differs from torch by {difference}"
    metadata = card.model_dump(exclude_none=True)
    return packaging.store_model(
        f"{packaging.NAME}:{version}", folder, {}, metadata, files.hashes(folder, files.FILES)
    )


class Memory(threading.Thread):
    """Samples the RSS of a process and its children (MB)."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.process = psutil.Process(pid)
        self.samples: list[tuple[float, float]] = []  # (time, MB)
        self.running = True

    def now(self) -> float:
        total = 0
        for p in [self.process, *self.process.children(recursive=True)]:
            try:
                total += p.memory_info().rss
            except psutil.Error:
                pass
        return total / 2**20

    def run(self) -> None:
        while self.running:
            self.samples.append((time.perf_counter(), self.now()))
            time.sleep(0.2)


def start(command: list[str], env: dict, port: int) -> tuple[subprocess.Popen, float]:
    """A server, once it is ready (/readyz answers 200; the plain app: / answers at all); and
    the seconds it took."""
    began = time.perf_counter()
    server = subprocess.Popen(
        command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if server.poll() is not None:
            sys.exit(f"{command[2]} did not start: {server.stderr.read().strip()[-2000:]}")
        try:
            reply = httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1)
            if reply.status_code in (200, 404):  # 404: the plain app has no /readyz
                return server, time.perf_counter() - began
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    server.terminate()
    sys.exit(f"{command} did not answer within 120 s")


async def load(url: str, images: list[bytes], args, memory: Memory) -> dict:
    """A closed loop: `concurrency` clients, each posting its next image when answered."""
    latencies: list[float] = []
    errors: dict[str, int] = {}

    async def worker(session: aiohttp.ClientSession, todo, record: bool) -> None:
        for i in todo:
            began = time.perf_counter()
            form = aiohttp.FormData()
            form.add_field(
                "file", images[i % len(images)], filename="x.png", content_type="image/png"
            )
            try:
                async with session.post(url, data=form) as reply:
                    await reply.read()
                    kind = None if reply.status == 200 else str(reply.status)
            except aiohttp.ClientError as exc:
                kind = type(exc).__name__
            if not record:
                continue
            if kind is None:
                latencies.append(time.perf_counter() - began)
            else:
                errors[kind] = errors.get(kind, 0) + 1

    connector = aiohttp.TCPConnector(limit=args.concurrency)
    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        # warm-up: connections, the batching optimiser, caches
        warm = iter(range(args.concurrency * 4))
        await asyncio.gather(*(worker(session, warm, False) for _ in range(args.concurrency)))
        after_warm_up = memory.now()
        began = time.perf_counter()
        todo = iter(range(args.requests))
        await asyncio.gather(*(worker(session, todo, True) for _ in range(args.concurrency)))
        elapsed = time.perf_counter() - began
    ms = np.percentile(np.array(latencies) * 1000, [50, 95, 99]) if latencies else [np.nan] * 3
    return {
        "rps": len(latencies) / elapsed,
        "p": ms,
        "errors": errors,
        "rss": (after_warm_up, max((m for _, m in memory.samples), default=0), memory.now()),
        # the RSS a quarter, half, three quarters of the way through: flat, or growing?
        "rss_quarters": [
            min(memory.samples, key=lambda s: abs(s[0] - began - q * elapsed))[1]
            for q in (0.25, 0.5, 0.75)
        ],
    }


def measure(command: list[str], env: dict, port: int, images: list[bytes], args) -> dict:
    server, ready = start(command, env, port)
    memory = Memory(server.pid)
    memory.start()
    try:
        result = asyncio.run(load(f"http://127.0.0.1:{port}/predict", images, args, memory))
        result["alive"] = server.poll() is None
    finally:
        memory.running = False
        server.terminate()
        server.wait(timeout=60)
    result["ready"] = ready
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--images", type=int, default=256, help="test images to cycle through")
    parser.add_argument(
        "--case", "--model", action="append", help="a model file, or ARCH:SIZE[:CHANNELS]"
    )
    parser.add_argument("--servers", default="cnnpipe,plain", help="cnnpipe, plain or both")
    parser.add_argument("--rounds", type=int, default=1, help="runs of each server, alternating")
    args = parser.parse_args()
    cases = args.case or ["models/model.pt", "resnet18:64:3"]
    servers = args.servers.split(",")

    workdir = Path(tempfile.mkdtemp(prefix="bench-serve-"))
    os.environ["BENTOML_HOME"] = str(workdir / "bentoml")
    os.environ["BENTOML_DO_NOT_TRACK"] = "True"
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    images = test_images(args.images)
    print(f"{len(images)} test images, {len(os.sched_getaffinity(0))} cores, ", end="")
    print(f"{args.requests} requests per server at concurrency {args.concurrency}")
    for i, case in enumerate(cases):
        path = model_file(case, workdir)
        tag = package(path, f"bench{i}", images, workdir)
        card = checkpoint.card_of(checkpoint.read(path))
        print(f"\n{case}: {card.architecture}, {card.image_size} px, {card.channels} channel(s)")
        ratios = []
        for _ in range(args.rounds):
            rates = {}
            for name in servers:
                r = measure(*server_command(name, tag, path, env), images, args)
                rates[name] = r["rps"]
                p50, p95, p99 = r["p"]
                print(
                    f"  {name:8} {r['rps']:6.0f} req/s, p50/p95/p99 {p50:.0f}/{p95:.0f}/{p99:.0f}"
                    f" ms, errors {sum(r['errors'].values())} {r['errors'] or ''}, up in"
                    f" {r['ready']:.1f} s, RSS after warm-up/peak/end"
                    f" {'/'.join(f'{m:.0f}' for m in r['rss'])} MB (at 1/4, 1/2, 3/4 of the"
                    f" run: {'/'.join(f'{m:.0f}' for m in r['rss_quarters'])}), alive after:"
                    f" {r['alive']}"
                )
            if len(rates) == 2:
                ratios.append(rates["cnnpipe"] / rates["plain"])
                print(f"  ratio cnnpipe / plain: {ratios[-1]:.2f}")
        if len(ratios) > 1:
            print(f"  median ratio of {len(ratios)} rounds: {np.median(ratios):.2f}")


def server_command(name: str, tag: str, path: Path, env: dict) -> tuple[list[str], dict, int]:
    port = free_port()
    if name == "cnnpipe":
        command = [sys.executable, "-m", "bentoml", "serve", "--port", str(port)]
        return command, {**env, "CNNPIPE_MODEL": tag}, port
    command = [sys.executable, "-m", "uvicorn", "plain_server:app", "--app-dir", "bench"]
    command += ["--port", str(port), "--log-level", "warning"]
    return command, {**env, "CNNPIPE_BENCH_MODEL": str(path.resolve())}, port


if __name__ == "__main__":
    main()
