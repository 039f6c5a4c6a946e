"""Hostile request bodies against cnnpipe's `bentoml serve`: what a worker reads, and how much
memory it takes, before it answers. Each case is sent from a raw socket (no client library
would frame a request both ways), as fast as the loopback takes it, while the answer is
watched for; it prints the status, the bytes sent when the answer came, the seconds, and the
RSS of the worker that answered (before, peak while sending, 1 s after).

Run from the project root after `dvc repro` (the workspace model):

    python bench/bodies.py                         # every case, default settings
    python bench/bodies.py --mib 400 --case both   # Content-Length: 1 and 400 MiB of chunks

Cases: `both` (Content-Length: 1 and Transfer-Encoding: chunked, then --mib MiB of chunks),
`chunked` (chunks only, --mib MiB: over CNNPIPE_MAX_UPLOAD_BYTES), `slow` (a body sent one
byte a second: 408 after CNNPIPE_BODY_TIMEOUT_S, set low here), then an ordinary /predict.
"""

from __future__ import annotations

import argparse
import itertools
import os
import select
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import psutil
from serve import ROOT, free_port, package, start, test_images

MiB = 2**20
CHUNK = 64 * 2**10


def head(chunked: bool, length: int | None) -> bytes:
    lines = [
        "POST /predict HTTP/1.1",
        "Host: 127.0.0.1",
        "Content-Type: multipart/form-data; boundary=x",
    ]
    if length is not None:
        lines.append(f"Content-Length: {length}")
    if chunked:
        lines.append("Transfer-Encoding: chunked")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


# the start of a well-formed upload: what follows is the file's content, for as long as it goes
FORM_START = (
    b'--x\r\nContent-Disposition: form-data; name="file"; filename="big.png"\r\n'
    b"Content-Type: image/png\r\n\r\n"
)


def chunk(data: bytes) -> bytes:
    return f"{len(data):x}\r\n".encode() + data + b"\r\n"


class Sent:
    def __init__(self) -> None:
        self.bytes = 0
        self.stop = threading.Event()


def send_all(sock: socket.socket, parts, sent: Sent, pause: float = 0.0) -> None:
    try:
        for part in parts:
            if sent.stop.is_set():
                return
            sock.sendall(part)
            sent.bytes += len(part)
            if pause:
                time.sleep(pause)
    except OSError:  # the server closed the connection: it is not reading any more
        pass


def attack(port: int, request_head: bytes, parts, pause: float = 0.0, timeout: float = 120):
    """(status line, body bytes sent when the answer arrived, seconds to the answer)."""
    sock = socket.create_connection(("127.0.0.1", port))
    sock.sendall(request_head)
    sent = Sent()
    began = time.perf_counter()
    sender = threading.Thread(target=send_all, args=(sock, parts, sent, pause), daemon=True)
    sender.start()
    answer = b""
    at = None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([sock], [], [], 0.05)
        if not ready:
            continue
        try:
            data = sock.recv(65536)
        except ConnectionResetError:
            break
        if at is None:
            at = (sent.bytes, time.perf_counter() - began)
        if not data:
            break
        answer += data
        if b"\r\n\r\n" in answer:
            break
    sent.stop.set()
    sock.close()
    sender.join(timeout=10)
    status = answer.split(b"\r\n", 1)[0].decode(errors="replace") or "(no answer)"
    return status, *(at or (sent.bytes, time.perf_counter() - began))


class Peak(threading.Thread):
    """The peak RSS (MB) of each worker while it runs."""

    def __init__(self, workers: list[psutil.Process]) -> None:
        super().__init__(daemon=True)
        self.workers = workers
        self.peak = {p.pid: rss(p) for p in workers}
        self.running = True

    def run(self) -> None:
        while self.running:
            for p in self.workers:
                self.peak[p.pid] = max(self.peak[p.pid], rss(p))
            time.sleep(0.01)


def rss(process: psutil.Process) -> float:
    return process.memory_info().rss / MiB


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mib", type=int, default=400, help="MiB of chunks to send")
    parser.add_argument("--case", action="append", choices=["both", "chunked", "slow"])
    args = parser.parse_args()
    cases = args.case or ["both", "chunked", "slow"]
    workdir = Path(tempfile.mkdtemp(prefix="bench-bodies-"))
    os.environ["BENTOML_HOME"] = str(workdir / "bentoml")
    os.environ["BENTOML_DO_NOT_TRACK"] = "True"
    images = test_images(16)
    tag = package(ROOT / "models/model.pt", "bodies0", images, workdir)
    port = free_port()
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT / "src"),
        "CNNPIPE_MODEL": tag,
        "CNNPIPE_WORKERS": "1",  # the worker that answers is the one measured
        "CNNPIPE_BODY_TIMEOUT_S": "3",
    }
    command = [sys.executable, "-m", "bentoml", "serve", "--port", str(port), "--host", "127.0.0.1"]
    server, _ = start(command, env, port)
    try:
        workers = psutil.Process(server.pid).children(recursive=True)
        url = f"http://127.0.0.1:{port}/predict"
        for _ in range(4):  # warm
            httpx.post(url, files={"file": ("x.png", images[0])}, timeout=30)
        block = b"\0" * CHUNK
        many = (args.mib * MiB) // CHUNK
        print(f"bentoml serve, 1 worker, defaults but CNNPIPE_BODY_TIMEOUT_S=3; {args.mib} MiB")
        for case in cases:
            before = {p.pid: rss(p) for p in workers}
            peak = Peak(workers)
            peak.start()
            if case == "both":
                parts = itertools.chain([chunk(FORM_START)], (chunk(block) for _ in range(many)))
                status, sent, seconds = attack(port, head(True, 1), parts)
            elif case == "chunked":
                parts = itertools.chain([chunk(FORM_START)], (chunk(block) for _ in range(many)))
                status, sent, seconds = attack(port, head(True, None), parts)
            else:
                slow = (chunk(b"\0") for _ in range(600))
                parts = itertools.chain([chunk(FORM_START)], slow)
                status, sent, seconds = attack(port, head(True, None), parts, pause=1.0)
            peak.running = False
            peak.join()
            time.sleep(1)
            after = {p.pid: rss(p) for p in workers}
            (pid,) = before
            print(
                f"  {case:8} {status}: answered after {sent / MiB:.2f} MiB sent, {seconds:.2f} s;"
                f" worker RSS {before[pid]:.0f} MB, peak {peak.peak[pid]:.0f} MB"
                f" (+{peak.peak[pid] - before[pid]:.0f}), 1 s after {after[pid]:.0f} MB"
            )
        began = time.perf_counter()
        reply = httpx.post(url, files={"file": ("x.png", images[0])}, timeout=30)
        print(f"  then /predict: {reply.status_code} in {time.perf_counter() - began:.3f} s")
    finally:
        server.terminate()
        server.wait(timeout=60)


if __name__ == "__main__":
    main()
