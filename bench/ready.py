"""Start-up and memory of `bentoml serve` in the project root (the workspace's model, as
models/package.json names it): seconds to a 200 from /readyz, and the RSS of every process
once it has answered a request; where the start-up goes (importing the service).

    python bench/ready.py --runs 5
    python bench/ready.py --runs 5 --src /path/to/other/checkout/src   # another revision's code
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def one_start(env: dict, image: bytes) -> tuple[float, list[tuple[str, float]]]:
    port = free_port()
    began = time.perf_counter()
    server = subprocess.Popen(
        [sys.executable, "-m", "bentoml", "serve", "--port", str(port), "--host", "127.0.0.1"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        while True:
            assert server.poll() is None, "the server stopped"
            try:
                if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.02)
        ready = time.perf_counter() - began
        for _ in range(8):
            reply = httpx.post(f"http://127.0.0.1:{port}/predict", files={"file": image})
            assert reply.status_code == 200, reply.text
        processes = [psutil.Process(server.pid), *psutil.Process(server.pid).children(True)]
        rss = [(" ".join(p.cmdline()[1:3]), p.memory_info().rss / 2**20) for p in processes]
        return ready, rss
    finally:
        server.terminate()
        server.wait(timeout=60)


def import_seconds(env: dict) -> float:
    code = "import time; t = time.perf_counter(); import cnnpipe.serve.service; "
    code += "print(time.perf_counter() - t)"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True)
    return float(out.stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--src", type=Path, default=ROOT / "src", help="the cnnpipe code to serve")
    args = parser.parse_args()
    env = {**os.environ, "PYTHONPATH": str(args.src.resolve()), "BENTOML_DO_NOT_TRACK": "True"}
    image = next((ROOT / "data/raw/images").rglob("*.png")).read_bytes()
    starts = [one_start(env, image) for _ in range(args.runs)]
    imports = [import_seconds(env) for _ in range(args.runs)]
    ready = [s for s, _ in starts]
    print(f"code: {args.src}")
    print(f"ready (/readyz 200) in s: median {statistics.median(ready):.2f}, runs", end=" ")
    print(", ".join(f"{s:.2f}" for s in ready))
    print(f"importing the service: median {statistics.median(imports):.2f} s")
    _, rss = starts[-1]
    print(f"RSS after 8 requests: {sum(m for _, m in rss):.0f} MB in all:", end=" ")
    print(", ".join(f"{name} {m:.0f} MB" for name, m in rss))


if __name__ == "__main__":
    main()
