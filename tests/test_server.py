"""The service as users run it: a real `bentoml serve`, called by the clients people use and by
`cnnpipe predict`'s user (same answers), its page used in a real browser, checked against its
own OpenAPI document by schemathesis, and attacked with slow clients and decompression bombs."""

from __future__ import annotations

import io
import json
import os
import select
import shutil
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import psutil
import pytest
import requests
from conftest import REPO, encode, free_port, server_process
from PIL import Image
from service_fixtures import MAX_UPLOAD, one_per_class, stored_model, stranger, truncated

from cnnpipe.serve.contract import EXPLAINED_HEADER

pytestmark = pytest.mark.e2e

HEADER_TIMEOUT_S = 1.0
BODY_TIMEOUT_S = 2.0
SERVER_ENV = {
    "CNNPIPE_MAX_UPLOAD_BYTES": str(MAX_UPLOAD),
    "CNNPIPE_HEADER_TIMEOUT_S": str(HEADER_TIMEOUT_S),
    "CNNPIPE_BODY_TIMEOUT_S": str(BODY_TIMEOUT_S),
    "CNNPIPE_MAX_IMAGES": "8",
}


@pytest.fixture(scope="module")
def stored(tmp_path_factory) -> dict:
    return stored_model(tmp_path_factory.mktemp("server"))


@pytest.fixture(scope="module")
def server(stored):
    """The service with its default settings (workers, threads, runtime), limits lowered."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CNNPIPE_")}
    env.update(SERVER_ENV, CNNPIPE_MODEL=stored["tag"], PYTHONPATH=str(REPO / "src"))
    with server_process(REPO, env) as running:
        yield running


def rss_mb(process: psutil.Process) -> float:
    return process.memory_info().rss / 2**20


def loads_torch(process: psutil.Process) -> bool:
    return any("libtorch" in m.path for m in process.memory_maps())


def server_processes(server) -> list[psutil.Process]:
    supervisor = psutil.Process(server.process.pid)
    return [supervisor, *supervisor.children(recursive=True)]


def test_predicting_loads_no_torch_and_explaining_loads_it_in_one_worker(server, stored):
    """First in this module: no process of the server has loaded torch (the ONNX runtime)
    until /explain, which needs gradients, loads it in the worker that answers."""
    path, label = one_per_class(stored)[1]
    for _ in range(4):  # every worker warm
        reply = httpx.post(f"{server.url}/predict", files={"file": path.open("rb")}, timeout=30)
        assert reply.status_code == 200
    assert not any(loads_torch(p) for p in server_processes(server))
    reply = httpx.post(f"{server.url}/explain", files={"file": path.open("rb")}, timeout=60)
    assert reply.status_code == 200, reply.text
    assert reply.headers["content-type"] == "image/png" and reply.headers[EXPLAINED_HEADER] == label
    assert Image.open(io.BytesIO(reply.content)).size == (256, 256)
    assert sum(loads_torch(p) for p in server_processes(server)) == 1
    bad = httpx.post(f"{server.url}/explain", files={"file": ("b.png", truncated("PNG"))})
    assert bad.status_code == 400 and bad.json()["detail"][0]["loc"] == ["file"]
    too_big = httpx.post(f"{server.url}/explain", files={"file": ("x", b"\0" * (MAX_UPLOAD + 1))})
    assert too_big.status_code == 413


def browser_form(data: bytes) -> tuple[bytes, dict]:
    """A multipart body as a browser's <form enctype="multipart/form-data"> sends it, with a
    blank top_k field."""
    boundary = "----WebKitFormBoundary7MA4YWxkTrZu0gW"
    body = (
        f"--{boundary}\r\n"
        'Content-Disposition: form-data; name="file"; filename="star.png"\r\n'
        "Content-Type: image/png\r\n\r\n"
    ).encode()
    body += (
        data + f'\r\n--{boundary}\r\nContent-Disposition: form-data; name="top_k"\r\n\r\n'.encode()
    )
    body += f"\r\n--{boundary}--\r\n".encode()
    return body, {"Content-Type": f"multipart/form-data; boundary={boundary}"}


def test_every_common_client_gets_the_same_prediction(server, stored, tmp_path):
    path, label = one_per_class(stored)[2]
    url = f"{server.url}/predict"
    data = path.read_bytes()
    answers = {}
    with open(path, "rb") as f:  # the part goes untyped
        answers["python-requests"] = requests.post(url, files={"file": f}, timeout=30)
    with open(path, "rb") as f:
        answers["httpx"] = httpx.post(url, files={"file": f}, timeout=30)
    body, headers = browser_form(data)
    answers["browser form"] = requests.post(url, data=body, headers=headers, timeout=30)
    answers["raw image/png"] = httpx.post(url, content=data, headers={"Content-Type": "image/png"})
    answers["raw octet-stream"] = requests.post(
        url, data=data, headers={"Content-Type": "application/octet-stream"}, timeout=30
    )
    results = {name: (reply.status_code, reply.json()) for name, reply in answers.items()}
    if shutil.which("curl"):
        for name, args in {
            "curl -F": ["-F", f"file=@{path}"],
            "curl --data-binary": ["-H", "Content-Type: image/png", "--data-binary", f"@{path}"],
        }.items():
            out = subprocess.run(
                ["curl", "-s", "-w", "\n%{http_code}", *args, url], capture_output=True, text=True
            ).stdout
            body_text, status = out.rsplit("\n", 1)
            results[name] = (int(status), httpx.Response(200, content=body_text).json())
    expected = results["httpx"][1]
    assert expected["label"] == label
    for name, (status, answer) in results.items():
        assert status == 200, (name, answer)
        assert answer == expected, name


def test_cnnpipe_predict_answers_as_the_service_does(server, stored, tmp_path):
    """`cnnpipe predict` on the test images and a picture of no class, with the served model:
    for each file the label (null included), the probabilities and the reason of /predict."""
    (tmp_path / "checkerboard.png").write_bytes(encode(stranger()))
    paths = [stored["raw"] / name for name in stored["test"].files] + [
        tmp_path / "checkerboard.png"
    ]
    out = tmp_path / "rows.json"
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    command = [sys.executable, "-c", "from cnnpipe.cli import main; main()", "predict"]
    result = subprocess.run(
        [*command, *map(str, paths), "--model", stored["tag"], "--out", str(out)],
        env=env,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    rows = json.loads(out.read_text())
    assert [row["path"] for row in rows] == [str(p) for p in paths]
    assert rows[-1]["label"] is None  # the checkerboard
    for row in rows:
        with open(row["path"], "rb") as f:
            served = httpx.post(f"{server.url}/predict", files={"file": f}, timeout=30).json()
        assert row["label"] == served["label"] and row["reason"] == served["reason"], row["path"]
        assert list(row["probabilities"]) == list(served["probabilities"])
        for name, p in served["probabilities"].items():
            assert row["probabilities"][name] == pytest.approx(p, abs=1e-6)


CHROMEDRIVER = Path("/usr/bin/chromedriver")  # Debian's chromium-driver (.ci/run installs it)


@pytest.mark.skipif(not CHROMEDRIVER.exists(), reason="apt-get install chromium chromium-driver")
def test_the_page_answers_a_chosen_image_in_a_browser(server, stored):
    """Headless Chromium opens `/`, chooses a test image and reads the answer, its
    probabilities and the heat map from the page; the page loaded nothing from elsewhere."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    path, label = one_per_class(stored)[0]
    with open(path, "rb") as f:
        served = httpx.post(f"{server.url}/predict", files={"file": f}, timeout=30).json()
    options = webdriver.ChromeOptions()
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1280,1000"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=options)
    try:
        driver.get(f"{server.url}/")
        wait = WebDriverWait(driver, 60)
        wait.until(lambda d: d.find_element(By.ID, "version").text)
        assert driver.find_element(By.ID, "classes").text == ", ".join(stored["info"].classes)
        assert "accuracy" in driver.find_element(By.ID, "metrics").text
        assert driver.find_element(By.CSS_SELECTOR, "a[href='/docs']")
        driver.find_element(By.ID, "file").send_keys(str(path))
        wait.until(
            lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-state") == "done"
        )
        assert driver.find_element(By.ID, "label").text == label == served["label"]
        shown = driver.find_element(By.ID, "probabilities").text
        best = max(served["probabilities"].values())
        assert f"{label} {100 * best:.1f}%" in shown
        heat_width = driver.execute_script("return document.getElementById('heatmap').naturalWidth")
        assert heat_width == 256
        loaded = driver.execute_script(
            "return performance.getEntriesByType('resource').map((e) => e.name)"
        )
        # the chosen image and the heat map are blob: URLs of this page
        origins = [name.removeprefix("blob:") for name in loaded]
        assert loaded and all(name.startswith(server.url) for name in origins), loaded
        errors = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
        assert not errors, errors  # no script error, nothing the CSP blocked
    finally:
        driver.quit()


def test_a_bad_batch_fails_alone_among_concurrent_batches(server, stored):
    """Concurrent /predict_batch requests are grouped; the one with a bad image gets 400, the
    others their results, and the server keeps answering."""
    pairs = one_per_class(stored)
    good = [("files", (p.name, p.read_bytes(), "image/png")) for p, _ in pairs]
    bad = [*good[:1], ("files", ("bad.png", truncated("PNG"), "image/png")), *good[1:]]
    batches = [bad if i == 5 else good for i in range(12)]
    with ThreadPoolExecutor(12) as pool:
        replies = list(
            pool.map(
                lambda files: httpx.post(f"{server.url}/predict_batch", files=files, timeout=30),
                batches,
            )
        )
    for i, reply in enumerate(replies):
        if i == 5:
            assert reply.status_code == 400
            assert reply.json()["detail"][0]["loc"] == ["files", 1]
        else:
            assert reply.status_code == 200, reply.text
            assert [r["label"] for r in reply.json()] == [label for _, label in pairs]
    too_big = httpx.post(f"{server.url}/predict", files={"file": ("x", b"\0" * (MAX_UPLOAD + 1))})
    assert too_big.status_code == 413
    assert httpx.get(f"{server.url}/readyz").status_code == 200


def test_schemathesis_finds_every_documented_response_true(server):
    """`schemathesis run --checks all` in the project root (schemathesis.toml says what an image
    is): every response matches the document, every valid request is accepted."""
    result = subprocess.run(
        [
            str(Path(sys.executable).parent / "schemathesis"),
            "run",
            f"{server.url}/docs.json",
            "--checks",
            "all",
            "--url",
            server.url,
            "--max-examples",
            "12",
            "--seed",
            "1",
            "--generation-database",  # the seed alone decides: no examples kept from other runs
            "none",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert result.returncode == 0, result.stdout[-6000:]
    assert "No issues found" in result.stdout


def test_slow_request_headers_are_timed_out(server):
    host, port = server.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as slow:
        slow.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\n")  # and never the rest
        began = time.monotonic()
        answer = slow.recv(1024)
        waited = time.monotonic() - began
        assert answer.startswith(b"HTTP/1.1 408") and slow.recv(1024) == b""  # then closed
    assert HEADER_TIMEOUT_S - 0.2 < waited < HEADER_TIMEOUT_S + 5
    assert httpx.get(f"{server.url}/readyz").status_code == 200


UPLOAD_START = (
    b'--x\r\nContent-Disposition: form-data; name="file"; filename="big.png"\r\n'
    b"Content-Type: image/png\r\n\r\n"
)


def chunked_upload(url: str, content_length: str | None, pause: float = 0.0) -> tuple[bytes, int]:
    """A multipart upload whose file never ends, sent in 64 KiB chunks (one byte each, `pause`
    apart, if pausing) from a raw socket until the server answers; (its status line, the body
    bytes sent by then, the server's kernel buffers included)."""
    host, port = url.removeprefix("http://").split(":")
    head = "POST /predict HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
    head += "Content-Type: multipart/form-data; boundary=x\r\n"
    if content_length is not None:
        head += f"Content-Length: {content_length}\r\n"
    data = b"\0" if pause else b"\0" * 2**16
    chunk = f"{len(data):x}\r\n".encode() + data + b"\r\n"
    sent = 0
    with socket.create_connection((host, int(port)), timeout=30) as client:
        client.sendall(f"{head}\r\n".encode() + b"%x\r\n%s\r\n" % (len(UPLOAD_START), UPLOAD_START))
        while not select.select([client], [], [], pause)[0] and sent < 2**30:
            try:
                client.sendall(chunk)
            except OSError:  # closed: what it sent is waiting to be read
                break
            sent += len(data)
        return client.recv(4096).split(b"\r\n", 1)[0], sent


def test_bodies_are_limited_by_the_bytes_they_deliver_whatever_their_headers_say(server):
    """h11 frames a request with both Content-Length and Transfer-Encoding by its chunks:
    refused at once (Content-Length: 1 used to let gigabytes through). A chunked body is cut at
    the limit, a slow one at its deadline; each refusal is one line, and the server goes on."""
    status, sent = chunked_upload(server.url, "1")
    assert status == b"HTTP/1.1 400 Bad Request" and sent < 25 * 2**20, sent
    status, sent = chunked_upload(server.url, None)
    assert status == b"HTTP/1.1 413 Request Entity Too Large" and sent < 25 * 2**20, sent
    began = time.monotonic()
    status, sent = chunked_upload(server.url, None, pause=0.05)
    assert status == b"HTTP/1.1 408 Request Timeout" and sent < 200
    assert BODY_TIMEOUT_S - 0.2 < time.monotonic() - began < BODY_TIMEOUT_S + 5
    log = server.log.read_text()
    assert "400 POST /predict from 127.0.0.1: Content-Length and Transfer-Encoding" in log
    assert f"413 POST /predict from 127.0.0.1: body over {MAX_UPLOAD} bytes" in log
    assert "408 POST /predict from 127.0.0.1: body incomplete after" in log
    assert "Traceback" not in log
    assert httpx.get(f"{server.url}/readyz").status_code == 200


def test_malformed_top_k_values_get_400_and_no_traceback(server, stored):
    path, _ = one_per_class(stored)[0]
    for value in ["²", "9" * 5000, "-1", "1e3"]:
        reply = httpx.post(
            f"{server.url}/predict", files={"file": path.open("rb")}, data={"top_k": value}
        )
        assert reply.status_code == 400 and reply.json()["detail"][0]["loc"] == ["top_k"]
        query = httpx.post(
            f"{server.url}/predict", params={"top_k": value}, files={"file": path.open("rb")}
        )
        assert query.status_code == 400, value[:8]
    assert "Traceback" not in server.log.read_text()


def test_16_bit_bombs_stay_within_the_memory_budget(server, stored):
    """8 concurrent 60 KB PNGs of 5000x5000 16-bit pixels: each worker grows by at most 300 MB
    and comes back to within 50 MB."""
    buffer = io.BytesIO()
    Image.new("I;16", (5000, 5000), 1000).save(buffer, "PNG")
    bomb = buffer.getvalue()
    assert len(bomb) < 100_000
    workers = psutil.Process(server.process.pid).children(recursive=True)
    assert workers
    path, _ = one_per_class(stored)[0]
    for _ in range(4):  # every worker warm
        httpx.post(f"{server.url}/predict", files={"file": path.open("rb")}, timeout=30)
    baseline = {p.pid: rss_mb(p) for p in workers}
    peak = dict(baseline)
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            for p in workers:
                peak[p.pid] = max(peak[p.pid], rss_mb(p))
            time.sleep(0.02)

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        with ThreadPoolExecutor(8) as pool:
            replies = list(
                pool.map(
                    lambda _: httpx.post(
                        f"{server.url}/predict", files={"file": ("b.png", bomb)}, timeout=120
                    ),
                    range(8),
                )
            )
    finally:
        done.set()
        sampler.join()
    assert [r.status_code for r in replies] == [200] * 8
    time.sleep(1)
    after = {p.pid: rss_mb(p) for p in workers}
    growth = {pid: peak[pid] - baseline[pid] for pid in baseline}
    print(f"worker RSS MB, baseline {baseline}, peak {peak}, 1 s after {after}")  # pytest -rP
    assert max(growth.values()) <= 300, growth
    assert all(after[pid] - baseline[pid] <= 50 for pid in baseline), (baseline, after)


def cpu_seconds(processes: list[psutil.Process]) -> float:
    return sum(p.cpu_times().user + p.cpu_times().system for p in processes)


def test_decoding_stops_when_the_client_leaves(server):
    """A client that gives up on 8 slow-to-decode images: the worker stops after the image it
    is decoding and says so in one line."""
    buffer = io.BytesIO()
    Image.new("I;16", (5000, 5000), 1000).save(buffer, "PNG")
    files = [("files", (f"{i}.png", buffer.getvalue(), "image/png")) for i in range(8)]
    with pytest.raises(httpx.TimeoutException):
        httpx.post(f"{server.url}/predict_batch", files=files, timeout=0.5)
    deadline = time.monotonic() + 20
    while "ended before its images were decoded" not in server.log.read_text():
        assert time.monotonic() < deadline, server.log.read_text()[-3000:]
        time.sleep(0.1)
    workers = psutil.Process(server.process.pid).children(recursive=True)
    before = cpu_seconds(workers)
    time.sleep(1.5)
    # idle: decoding one of these images keeps a core busy for over a second; half a core
    # leaves room for a loaded machine's housekeeping
    assert cpu_seconds(workers) - before < 0.75


def test_serve_without_the_model_fails_with_one_line(tmp_path):
    env = {**os.environ, "BENTOML_HOME": str(tmp_path / "empty"), "PYTHONPATH": str(REPO / "src")}
    service = "cnnpipe.serve.service:Classifier"  # in a folder with no package record
    result = subprocess.run(
        [sys.executable, "-m", "bentoml", "serve", service, "--port", str(free_port())],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "not in the BentoML store" in lines[0] and "dvc pull" in lines[0]
