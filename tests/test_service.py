"""The BentoML service, in-process (the class and its ASGI app) and as a real `bentoml serve`.

A LeNet-5 trained for a few seconds on clean tiny shapes is stored in the session's throwaway
model store; the serving limits are set (as environment variables, which the service reads when
it is imported) by the `service` fixture, before the service is imported.
"""

from __future__ import annotations

import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from conftest import REPO, TINY, encode, free_port, serving
from PIL import Image
from starlette.testclient import TestClient

from cnnpipe.core import preprocess
from cnnpipe.core.dataset import read_split
from cnnpipe.core.errors import CnnpipeError
from cnnpipe.core.params import GenerateParams, ProcessParams
from cnnpipe.data import sources, split
from cnnpipe.model import checkpoint, registry
from cnnpipe.model.inference import probabilities
from cnnpipe.serve import packaging

MAX_UPLOAD = 2_000_000
MAX_PIXELS = 1_000_000
TEST_METRICS = {"test_accuracy": 1.0}


def train_tiny(images: np.ndarray, labels: np.ndarray, spec) -> torch.nn.Module:
    """LeNet-5 fitted to the clean shapes in a few seconds."""
    torch.manual_seed(0)
    torch.set_num_threads(1)
    model = registry.build("lenet5", spec.channels, len(spec.classes), spec.image_size)
    x = preprocess.normalize(torch.from_numpy(np.asarray(images)), spec.mean, spec.std)
    y = torch.from_numpy(labels)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.005)
    for _ in range(40):
        for i in torch.randperm(len(x)).split(16):
            optimizer.zero_grad()
            torch.nn.functional.cross_entropy(model(x[i]), y[i]).backward()
            optimizer.step()
    return model.eval()


@pytest.fixture(scope="module")
def stored(tmp_path_factory) -> dict:
    """Raw images, processed splits, a trained model in the store, and the test images."""
    base = tmp_path_factory.mktemp("service")
    raw, processed = base / "raw", base / "processed"
    sources.write_raw(GenerateParams(**{**TINY["generate"], "images_per_class": 60}), raw)
    spec, _ = split.write_processed(raw, processed, ProcessParams(**TINY["process"]))
    train = read_split(processed, "train", mmap=False)
    model = train_tiny(train.images, train.labels, spec)
    checkpoint.save(base / "model.pt", model, "lenet5", spec, {"best_epoch": 1})
    card = checkpoint.card_of(checkpoint.read(base / "model.pt")).model_copy(
        update={
            "sha256": checkpoint.file_hash(base / "model.pt"),
            "test_metrics": TEST_METRICS,
            "git_revision": "abc123",
        }
    )
    tag = packaging.store_model("test0000", base / "model.pt", card)
    test = read_split(processed, "test", mmap=False)
    predicted = probabilities(model, spec, test.images).argmax(1)
    return {"raw": raw, "tag": tag, "info": spec, "test": test, "predicted": predicted}


SETTINGS_ENV = {
    "CNNPIPE_MAX_UPLOAD_BYTES": str(MAX_UPLOAD),
    "CNNPIPE_MAX_PIXELS": str(MAX_PIXELS),
    "CNNPIPE_THREADS": "1",
}


@pytest.fixture(scope="module")
def service(stored):
    """The service module, imported with this module's settings and the stored model."""
    assert "cnnpipe.serve.service" not in sys.modules, "imported before its settings were set"
    with pytest.MonkeyPatch.context() as patch:
        for name, value in {**SETTINGS_ENV, "CNNPIPE_MODEL": stored["tag"]}.items():
            patch.setenv(name, value)
        from cnnpipe.serve import service

        yield service


@pytest.fixture(scope="module")
def client(service):
    with TestClient(service.Classifier.to_asgi(), raise_server_exceptions=False) as c:
        yield c


def one_per_class(stored) -> list[tuple[Path, str]]:
    """For each class, the first test image the model gets right in-process."""
    test, classes = stored["test"], stored["info"].classes
    firsts = {}
    for file, label, predicted in zip(test.files, test.labels, stored["predicted"], strict=True):
        if label == predicted:
            firsts.setdefault(classes[label], stored["raw"] / file)
    assert list(firsts) == classes, "the tiny model gets no test image of some class right"
    return [(path, name) for name, path in firsts.items()]


def post(client, data: bytes, name: str = "x.png", ctype: str | None = "image/png", **form):
    if ctype is None:  # httpx always types a file part: write this one by hand
        body = (
            b'--b\r\nContent-Disposition: form-data; name="file"; filename="x"\r\n\r\n'
            + data
            + b"\r\n--b--\r\n"
        )
        headers = {"content-type": "multipart/form-data; boundary=b"}
        return client.post("/predict", content=body, headers=headers)
    return client.post("/predict", files={"file": (name, data, ctype)}, data=form)


# ---- in-process: the class


def test_the_class_predicts_each_class_of_generated_images(service, stored):
    classifier = service.Classifier()
    for path, label in one_per_class(stored):
        pixels = preprocess.load(path, 32, 1)
        (result,) = classifier.predict([service.Image(pixels, None)])
        assert result.label == label
        assert sum(result.probabilities.values()) == pytest.approx(1.0, abs=1e-5)


def test_settings_come_from_env_and_bad_values_name_the_variable(service):
    settings_from_env = service.settings_from_env
    assert settings_from_env({"CNNPIPE_MAX_BATCH_SIZE": "8"}).max_batch_size == 8
    assert settings_from_env({"CNNPIPE_WORKERS": "2"}).workers == 2
    with pytest.raises(CnnpipeError, match="CNNPIPE_MAX_BATCH_SIZE='lots'"):
        settings_from_env({"CNNPIPE_MAX_BATCH_SIZE": "lots"})


# ---- in-process: the ASGI app


def test_predict_returns_label_confidence_and_every_class(client, stored):
    for path, label in one_per_class(stored):
        reply = post(client, path.read_bytes())
        assert reply.status_code == 200, reply.text
        body = reply.json()
        assert body["label"] == label
        assert body["confidence"] == max(body["probabilities"].values())
        assert set(body["probabilities"]) == set(stored["info"].classes)


def test_top_k_returns_the_k_most_probable(client, stored):
    path, label = one_per_class(stored)[0]
    body = post(client, path.read_bytes(), top_k="2").json()
    assert len(body["probabilities"]) == 2 and next(iter(body["probabilities"])) == label


def test_the_model_input_equals_what_evaluate_feeds(client, stored):
    """For the same file, the tensor the service gives the model is evaluate's tensor."""
    import bentoml

    service = bentoml.get_current_service()
    seen: list[torch.Tensor] = []
    hook = service.model.register_forward_pre_hook(lambda _m, args: seen.append(args[0].clone()))
    try:
        test, info = stored["test"], stored["info"]
        for i in (0, len(test.files) - 1):
            assert post(client, (stored["raw"] / test.files[i]).read_bytes()).status_code == 200
            expected = preprocess.normalize(
                torch.from_numpy(test.images[i : i + 1]), info.mean, info.std
            )
            assert torch.equal(seen[-1], expected)
    finally:
        hook.remove()


def test_predict_batch_answers_each_image_in_order(client, stored):
    pairs = one_per_class(stored)
    files = [("files", (p.name, p.read_bytes(), "image/png")) for p, _ in reversed(pairs)]
    reply = client.post("/predict_batch", files=files)
    assert reply.status_code == 200, reply.text
    assert [r["label"] for r in reply.json()] == [label for _, label in reversed(pairs)]


def test_metadata_names_the_model_and_what_the_package_stage_recorded(client, stored):
    body = client.get("/metadata").json()
    assert body["model"] == stored["tag"]
    assert body["architecture"] == "lenet5"
    assert body["classes"] == stored["info"].classes
    assert (body["image_size"], body["channels"]) == (32, 1)
    assert body["test_metrics"] == TEST_METRICS and body["git_revision"] == "abc123"


def test_health_and_openapi_with_a_file_upload(client):
    assert client.get("/healthz").status_code == 200
    assert client.get("/readyz").status_code == 200
    spec = client.get("/docs.json").json()
    body = spec["paths"]["/predict"]["post"]["requestBody"]["content"]
    assert "multipart/form-data" in body
    schema = spec["components"]["schemas"]["PredictInput"]
    assert schema["properties"]["file"]["format"] == "binary"
    assert "/predict_batch" in spec["paths"]
    assert "swagger" in client.get("/").text.lower()


def truncated(fmt: str) -> bytes:
    data = encode(Image.new("RGB", (64, 64), (200, 10, 10)).effect_spread(8), fmt)
    return data[: len(data) // 2]


def bomb() -> bytes:
    return encode(Image.new("L", (MAX_PIXELS // 500 + 1, 500)))


BAD = {
    "non-image bytes": (dict(data=b"hello, not an image"), "not a readable image"),
    "empty file": (dict(data=b""), "empty"),
    "truncated PNG": (dict(data=truncated("PNG")), "truncated"),
    "truncated JPEG": (dict(data=truncated("JPEG"), ctype="image/jpeg"), "truncated"),
    "wrong content type": (dict(data=b"x", ctype="text/plain"), "typed text/plain"),
    "missing content type": (dict(data=b"x", ctype=None), "no Content-Type"),
    "over the pixel limit": (dict(data=bomb()), "over the limit"),
}


@pytest.mark.parametrize("case", BAD)
def test_bad_images_get_400_with_a_message(client, stored, case):
    kwargs, message = BAD[case]
    reply = post(client, **kwargs)
    assert reply.status_code == 400, reply.text
    (detail,) = reply.json()["detail"]
    assert detail["loc"] == ["file"] and message in detail["msg"], detail


def test_missing_text_unknown_and_bad_fields_get_400(client):
    def error(reply) -> str:
        assert reply.status_code == 400, reply.text
        return " ".join(d["msg"] for d in reply.json()["detail"])

    missing = client.post("/predict", files={"image": ("x.png", b"x", "image/png")})
    assert "no image" in error(missing) and "unknown field" in error(missing)
    text = client.post("/predict", files={"file": (None, "hello")})
    assert "not a file" in error(text)
    assert "at least 1" in error(post(client, b"x", top_k="0"))
    assert "multipart/form-data" in error(client.post("/predict", json={"file": "x"}))
    two = client.post("/predict", files=[("file", ("a.png", b"x", "image/png"))] * 2)
    assert "/predict_batch" in error(two)


def test_a_body_over_the_limit_gets_413(client):
    reply = post(client, b"\0" * (MAX_UPLOAD + 1))
    assert reply.status_code == 413 and "limit" in reply.json()["error"]

    def stream():
        for _ in range(3):
            yield b"\0" * MAX_UPLOAD

    streamed = client.post(
        "/predict", content=stream(), headers={"content-type": "multipart/form-data; boundary=x"}
    )
    assert streamed.status_code == 413


def unusual(path: Path) -> dict[str, tuple[bytes, str]]:
    """The same picture in unusual but valid forms."""
    grey = Image.open(path).convert("L")
    rotated = grey.rotate(90, expand=True)  # stored turned; EXIF orientation 8 turns it back
    exif = Image.Exif()
    exif[0x0112] = 6
    big = grey.resize((1000, 900))
    return {
        "greyscale": (encode(grey), "image/png"),
        "palette": (encode(grey.convert("P")), "image/png"),
        "RGBA": (encode(grey.convert("RGBA")), "image/png"),
        "16-bit": (encode(Image.fromarray(np.asarray(grey).astype(np.uint16) * 257)), "image/png"),
        "CMYK JPEG": (encode(grey.convert("CMYK"), "JPEG", quality=98), "image/jpeg"),
        "EXIF-rotated": (encode(rotated, "PNG", exif=exif), "image/png"),
        "animated GIF": (
            encode(grey.convert("P"), "GIF", save_all=True, append_images=[rotated.convert("P")]),
            "image/gif",
        ),
        "WebP": (encode(grey, "WEBP", lossless=True), "image/webp"),
        "BMP": (encode(grey, "BMP"), "image/bmp"),
        "TIFF": (encode(grey, "TIFF"), "image/tiff"),
        "large": (encode(big), "application/octet-stream"),
    }


def test_unusual_but_valid_images_are_read_as_the_same_picture(client, stored):
    path, label = one_per_class(stored)[1]
    for name, (data, ctype) in unusual(path).items():
        reply = post(client, data, ctype=ctype)
        assert reply.status_code == 200, (name, reply.text)
        assert reply.json()["label"] == label, name
    for size in [(1, 1), (3000, 7)]:
        assert post(client, encode(Image.new("RGB", size))).status_code == 200


# ---- a real server


@pytest.fixture(scope="module")
def server(stored):
    env = {**os.environ, **SETTINGS_ENV, "CNNPIPE_MODEL": stored["tag"]}
    env["PYTHONPATH"] = str(REPO / "src")
    with serving(REPO, env) as url:
        yield url


@pytest.mark.e2e
def test_server_predicts_each_class_and_serves_metadata_and_metrics(server, stored):
    for path, label in one_per_class(stored):
        with open(path, "rb") as f:
            reply = httpx.post(f"{server}/predict", files={"file": f}, timeout=30)
        assert reply.status_code == 200, reply.text
        assert reply.json()["label"] == label
    assert httpx.get(f"{server}/metadata").json()["model"] == stored["tag"]
    metrics = httpx.get(f"{server}/metrics").text
    assert 'endpoint="/predict"' in metrics


@pytest.mark.e2e
def test_server_bad_batch_fails_alone_among_concurrent_batches(server, stored):
    """Concurrent /predict_batch requests are grouped; the one with a bad image gets 400, the
    others their results, and the server keeps answering."""
    pairs = one_per_class(stored)
    good = [("files", (p.name, p.read_bytes(), "image/png")) for p, _ in pairs]
    bad = [*good[:1], ("files", ("bad.png", truncated("PNG"), "image/png")), *good[1:]]
    requests = [bad if i == 5 else good for i in range(12)]
    with ThreadPoolExecutor(12) as pool:
        replies = list(
            pool.map(
                lambda files: httpx.post(f"{server}/predict_batch", files=files, timeout=30),
                requests,
            )
        )
    for i, reply in enumerate(replies):
        if i == 5:
            assert reply.status_code == 400
            assert reply.json()["detail"][0]["loc"] == ["files", 1]
        else:
            assert reply.status_code == 200, reply.text
            assert [r["label"] for r in reply.json()] == [label for _, label in pairs]
    for data, ctype in [
        (b"", "image/png"),
        (truncated("JPEG"), "image/jpeg"),
        (bomb(), "image/png"),
    ]:
        reply = httpx.post(f"{server}/predict", files={"file": ("x", data, ctype)}, timeout=30)
        assert reply.status_code == 400
    too_big = httpx.post(f"{server}/predict", files={"file": ("x", b"\0" * (MAX_UPLOAD + 1))})
    assert too_big.status_code == 413
    assert httpx.get(f"{server}/readyz").status_code == 200


@pytest.mark.e2e
def test_serve_without_the_model_fails_with_one_line(tmp_path):
    env = {**os.environ, "BENTOML_HOME": str(tmp_path / "empty"), "PYTHONPATH": str(REPO / "src")}
    result = subprocess.run(
        [sys.executable, "-m", "bentoml", "serve", "--port", str(free_port())],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "dvc repro" in lines[0] and "bentoml import" in lines[0]


def test_in_the_project_root_the_workspace_model_is_served(service, tmp_path, monkeypatch):
    settings_from_env = service.settings_from_env
    monkeypatch.chdir(tmp_path)
    assert settings_from_env({}).model == "cnnpipe:latest"
    tags = tmp_path / "models/bento/tags.json"
    tags.parent.mkdir(parents=True)
    tags.write_text('{"model": "cnnpipe:0123456789abcdef", "bento": null}')
    assert settings_from_env({}).model == "cnnpipe:0123456789abcdef"
    assert settings_from_env({"CNNPIPE_MODEL": "cnnpipe:other"}).model == "cnnpipe:other"
