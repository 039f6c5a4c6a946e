"""The BentoML service in-process (the class and its ASGI app): predictions and the "unknown"
answer, the model input, runtimes and their temperature, /explain, bad uploads, the OpenAPI
document, the pages.

A LeNet-5 trained for a few seconds on clean tiny shapes is stored, with its checked ONNX export,
in the session's throwaway model store. The settings are environment variables the service reads
when it is imported: the `service` fixture imports it afresh with this module's settings.
"""

from __future__ import annotations

import io
import json
import logging
import re

import numpy as np
import pytest
from conftest import encode
from PIL import Image
from service_fixtures import (
    DATA_HASH,
    MAX_PIXELS,
    MAX_UPLOAD,
    TEMPERATURE,
    TEST_METRICS,
    imported_service,
    one_per_class,
    stored_model,
    stranger,
    truncated,
)
from starlette.testclient import TestClient

from cnnpipe.core import preprocess
from cnnpipe.core.errors import CnnpipeError
from cnnpipe.core.preprocess import FORMAT_NAMES
from cnnpipe.model.inference import probabilities
from cnnpipe.serve import runtime
from cnnpipe.serve.contract import EXPLAINED_HEADER
from cnnpipe.serve.decoding import Image as Upload

SETTINGS_ENV = {
    "CNNPIPE_MAX_UPLOAD_BYTES": str(MAX_UPLOAD),
    "CNNPIPE_MAX_PIXELS": str(MAX_PIXELS),
    "CNNPIPE_THREADS": "1",
    "CNNPIPE_WORKERS": "1",
    "CNNPIPE_MAX_IMAGES": "5",
}


@pytest.fixture(scope="module")
def stored(tmp_path_factory) -> dict:
    return stored_model(tmp_path_factory.mktemp("service"))


@pytest.fixture(scope="module")
def service(stored):
    with imported_service({**SETTINGS_ENV, "CNNPIPE_MODEL": stored["tag"]}) as module:
        yield module


@pytest.fixture(scope="module")
def client(service):
    with TestClient(service.Classifier.to_asgi(), raise_server_exceptions=False) as c:
        yield c


def post(
    client,
    data: bytes,
    name: str = "x.png",
    ctype: str | None = "image/png",
    route: str = "/predict",
    **form,
):
    if ctype is None:  # httpx always types a file part: write this one by hand
        body = (
            b'--b\r\nContent-Disposition: form-data; name="file"; filename="x"\r\n\r\n'
            + data
            + b"\r\n--b--\r\n"
        )
        headers = {"content-type": "multipart/form-data; boundary=b"}
        return client.post(route, content=body, headers=headers)
    return client.post(route, files={"file": (name, data, ctype)}, data=form)


# ---- the class and its runtimes


def test_the_class_predicts_each_class_of_generated_images(service, stored):
    classifier = service.Classifier()
    assert classifier.runtime.name == "onnx"  # the export is there: auto picks it
    for path, label in one_per_class(stored):
        (result,) = classifier.predict([Upload(preprocess.load(path, 32, 1), None)])
        assert result.label == label
        assert sum(result.probabilities.values()) == pytest.approx(1.0, abs=1e-5)


def test_onnx_and_torch_give_the_same_calibrated_answers(stored):
    """Same preprocessing (the uint8 batch), same probabilities to float rounding: softmax of
    the logits over the card's temperature, in the ONNX graph as in torch."""
    onnx = runtime.load(stored["dir"], "onnx", threads=1)
    torch = runtime.load(stored["dir"], "torch", threads=1)
    assert (onnx.name, torch.name) == ("onnx", "torch")
    images = stored["test"].images
    (a, far_a), (b, far_b) = onnx.scores(images), torch.scores(images)
    assert np.abs(a - b).max() <= 1e-5
    assert far_a is not None and far_b is not None
    assert np.abs(far_a - far_b).max() <= 1e-4 * max(1.0, float(far_b.max()))
    assert (a.argmax(1) == stored["predicted"]).all() and (b.argmax(1) == stored["predicted"]).all()
    calibrated = probabilities(stored["model"], stored["info"], images, TEMPERATURE)
    assert np.abs(a - calibrated).max() <= 1e-5
    assert np.abs(a - probabilities(stored["model"], stored["info"], images)).max() > 1e-3


def test_without_the_export_torch_runs_and_onnx_cannot_be_forced(stored, tmp_path):
    (tmp_path / "model.pt").write_bytes((stored["dir"] / "model.pt").read_bytes())
    assert runtime.load(tmp_path, "auto", threads=1).name == "torch"
    with pytest.raises(CnnpipeError, match="CNNPIPE_RUNTIME=onnx .* no model.onnx"):
        runtime.load(tmp_path, "onnx", threads=1)


# ---- the ASGI app


def test_predict_returns_label_confidence_and_every_class(client, stored):
    for path, label in one_per_class(stored):
        reply = post(client, path.read_bytes())
        assert reply.status_code == 200, reply.text
        body = reply.json()
        assert body["label"] == label and body["reason"] is None
        assert body["confidence"] == max(body["probabilities"].values())
        assert set(body["probabilities"]) == set(stored["info"].classes)


def test_a_picture_of_no_class_gets_no_label_with_the_reason_and_the_top_k(client, stored):
    card = stored["card"]
    board = encode(stranger())
    reply = post(client, board, top_k="2")
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert body["label"] is None and body["confidence"] < card.threshold
    assert f"{card.threshold:.3f}" in body["reason"] and "threshold" in body["reason"]
    far = body["distance"] > card.distance_threshold
    assert body["refusal"] == ("unfamiliar" if far else "unsure")
    assert len(body["probabilities"]) == 2
    assert next(iter(body["probabilities"].values())) == body["confidence"]
    path, label = one_per_class(stored)[0]
    files = [("files", ("a.png", path.read_bytes())), ("files", ("board.png", board))]
    batch = client.post("/predict_batch", files=files).json()
    assert [r["label"] for r in batch] == [label, None]


def test_top_k_as_a_form_field_or_a_query_parameter(client, stored):
    path, label = one_per_class(stored)[0]
    for reply in [
        post(client, path.read_bytes(), top_k="2"),
        client.post("/predict?top_k=2", files={"file": ("x.png", path.read_bytes())}),
        client.post(
            "/predict?top_k=9", files={"file": ("x.png", path.read_bytes())}, data={"top_k": "2"}
        ),
    ]:
        body = reply.json()
        assert len(body["probabilities"]) == 2 and next(iter(body["probabilities"])) == label
    blank = post(client, path.read_bytes(), top_k="")  # a browser's blank field: every class
    assert len(blank.json()["probabilities"]) == len(stored["info"].classes)


def test_the_model_input_is_what_the_process_stage_made(client, service, stored):
    """For the same file, the uint8 batch the runtime gets equals the test split's arrays (the
    normalisation is the runtime's: preprocess.normalize, traced into the ONNX graph)."""
    import bentoml

    runtime_ = bentoml.get_current_service().runtime
    seen: list[np.ndarray] = []
    original = runtime_.scores
    runtime_.scores = lambda batch: seen.append(batch.copy()) or original(batch)
    try:
        test = stored["test"]
        for i in (0, len(test.files) - 1):
            assert post(client, (stored["raw"] / test.files[i]).read_bytes()).status_code == 200
            assert np.array_equal(seen[-1], test.images[i : i + 1])
    finally:
        runtime_.scores = original


def test_predict_batch_answers_each_image_in_order(client, stored):
    pairs = one_per_class(stored)
    files = [("files", (p.name, p.read_bytes(), "image/png")) for p, _ in reversed(pairs)]
    reply = client.post("/predict_batch", files=files)
    assert reply.status_code == 200, reply.text
    assert [r["label"] for r in reply.json()] == [label for _, label in reversed(pairs)]


def test_metadata_names_the_model_its_runtime_and_the_export_check(client, stored):
    body = client.get("/metadata").json()
    assert body["model"] == stored["tag"] and body["runtime"] == "onnx"
    assert 0 <= body["onnx_max_difference"] <= 1e-5
    assert body["architecture"] == "lenet5" and body["classes"] == stored["info"].classes
    assert (body["image_size"], body["channels"]) == (32, 1)
    assert body["test_metrics"] == TEST_METRICS and body["git_revision"] == "abc123"
    assert body["temperature"] == TEMPERATURE and body["threshold"] == stored["card"].threshold
    assert body["target_coverage"] == 1.0 and body["data_hash"] == DATA_HASH
    assert body["distance_threshold"] == stored["card"].distance_threshold > 0
    assert body["feature_layers"] == ["features.0", "features.3"]


def test_explain_answers_a_png_of_the_most_probable_class(client, stored):
    path, label = one_per_class(stored)[2]
    for reply in [
        post(client, path.read_bytes(), route="/explain"),
        client.post("/explain", content=path.read_bytes(), headers={"content-type": "image/png"}),
    ]:
        assert reply.status_code == 200, reply.text
        assert reply.headers["content-type"] == "image/png"
        assert reply.headers[EXPLAINED_HEADER] == label
        with Image.open(io.BytesIO(reply.content)) as image:
            assert (image.format, image.size) == ("PNG", (256, 256))
            pixels = np.asarray(image.convert("RGB"), dtype=int)
        assert pixels.std() > 10  # a heat map over a picture, not a blank
    top_k = client.post(
        "/explain", files={"file": ("x.png", path.read_bytes())}, data={"top_k": "2"}
    )
    assert top_k.status_code == 400 and "send only file" in top_k.json()["detail"][0]["msg"]


def test_the_openapi_document_states_every_response_and_bound(client):
    spec = client.get("/docs.json").json()
    schemas = spec["components"]["schemas"]
    for route, many in (("/predict", False), ("/predict_batch", True)):
        operation = spec["paths"][route]["post"]
        assert set(operation["responses"]) == {"200", "400", "408", "413", "429", "503", "504"}
        bad = operation["responses"]["400"]["content"]["application/json"]["schema"]
        detail = schemas[bad["$ref"].rsplit("/", 1)[1]]["properties"]["detail"]
        assert detail["type"] == "array"  # what is sent: a list of {loc, msg}
        content = operation["requestBody"]["content"]
        form = content["multipart/form-data"]["schema"]["properties"]
        assert form["top_k"] == operation["parameters"][0]["schema"]  # the same in both
        assert form["top_k"]["anyOf"][0]["pattern"] == "^(?:[1-9][0-9]{0,3})?$"
        assert "security" not in operation  # no key set
        if many:
            assert (form["files"]["minItems"], form["files"]["maxItems"]) == (1, 5)
        else:
            assert form["file"]["format"] == "binary" and "image/*" in content
    assert "/metadata" in spec["paths"]
    prediction = schemas["Prediction"]["properties"]
    assert prediction["label"]["nullable"] and prediction["reason"]["nullable"]
    assert prediction["refusal"]["enum"] == ["unsure", "unfamiliar"]
    assert prediction["refusal"]["nullable"] and prediction["distance"]["nullable"]
    assert "threshold" in prediction["label"]["description"]
    explain = spec["paths"]["/explain"]["post"]
    assert set(explain["responses"]) == {"200", "400", "408", "413", "429", "504"}
    assert "image/png" in explain["responses"]["200"]["content"]
    assert EXPLAINED_HEADER in explain["responses"]["200"]["headers"]
    form = explain["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert set(form["properties"]) == {"file"} and "image/*" in explain["requestBody"]["content"]

    assert spec["info"]["title"] == "cnnpipe image classifier"
    assert "http" not in json.dumps(spec["info"])  # no badges from other sites (BentoML's)


def test_the_pages_load_nothing_from_another_origin_and_carry_a_csp(client):
    """`/` is the service's own page, `/docs` Swagger UI: HTML, scripts and styles of this origin
    only (BentoML's page at / loads Google Tag Manager), a Content-Security-Policy that allows
    nothing else, and nosniff on every answer."""
    loaded = set()
    for path in ("/", "/docs"):
        reply = client.get(path)
        assert reply.status_code == 200 and reply.headers["content-type"].startswith("text/html")
        policy = reply.headers["content-security-policy"]
        assert policy.startswith("default-src 'self'") and "object-src 'none'" in policy
        assert "http" not in policy and "*" not in policy
        assert reply.headers["x-content-type-options"] == "nosniff"
        assert "googletagmanager" not in reply.text
        urls = re.findall(r'(?:src|href)="([^"]*)"', reply.text)
        assert urls and all(u.startswith("/") and not u.startswith("//") for u in urls), urls
        loaded |= set(urls)
    assert "<title>cnnpipe</title>" in client.get("/").text and "/docs" in loaded
    assert "/static_content/swagger-ui-bundle.js" in loaded
    for url in loaded:
        reply = client.get(url)
        assert reply.status_code == 200, url
        assert reply.headers["x-content-type-options"] == "nosniff"
    script = client.get("/page/page.js").text
    assert "/predict" in script and "/explain" in script
    assert "innerHTML" not in script  # class names set as text, never as markup
    assert "validatorUrl: null" in client.get("/page/docs.js").text
    assert client.get("/metadata").headers["x-content-type-options"] == "nosniff"
    assert "content-security-policy" not in client.get("/metadata").headers  # JSON, not a page
    assert client.post("/").status_code == 405


def bomb() -> bytes:
    return encode(Image.new("L", (MAX_PIXELS // 500 + 1, 500)))


BAD = {
    "non-image bytes": (dict(data=b"hello, not an image"), "not a readable image"),
    # formats Pillow decodes but the contract does not list
    **{
        f"a {fmt} image": (dict(data=encode(Image.new("RGB", (16, 16)), fmt)), FORMAT_NAMES)
        for fmt in ("PPM", "TGA", "PCX")
    },
    "text typed as text": (dict(data=b"x", ctype="text/plain"), "not a readable image"),
    "empty file": (dict(data=b""), "empty"),
    "truncated PNG": (dict(data=truncated("PNG")), "truncated"),
    "truncated JPEG": (dict(data=truncated("JPEG"), ctype="image/jpeg"), "truncated"),
    "over the pixel limit": (dict(data=bomb()), "over the limit"),
}


@pytest.mark.parametrize("case", BAD)
def test_bad_images_get_400_with_a_message(client, case):
    kwargs, message = BAD[case]
    for route in ("/predict", "/explain"):
        reply = post(client, route=route, **kwargs)
        assert reply.status_code == 400, (route, reply.text)
        (detail,) = reply.json()["detail"]
        assert detail["loc"] == ["file"] and message in detail["msg"], (route, detail)


def test_an_image_is_judged_by_its_bytes_not_its_declared_type(client, stored):
    path, label = one_per_class(stored)[0]
    data = path.read_bytes()
    for reply in [
        post(client, data, ctype=None),  # an untyped part
        post(client, data, ctype="text/plain"),
        client.post("/predict", content=data, headers={"content-type": "image/png"}),
        client.post("/predict", content=data, headers={"content-type": "application/octet-stream"}),
    ]:
        assert reply.status_code == 200, reply.text
        assert reply.json()["label"] == label


def test_missing_text_unknown_and_bad_fields_get_400(client):
    def error(reply) -> str:
        assert reply.status_code == 400, reply.text
        return " ".join(d["msg"] for d in reply.json()["detail"])

    missing = client.post("/predict", files={"image": ("x.png", b"x", "image/png")})
    assert "no image" in error(missing) and "unknown field" in error(missing)
    assert "not a readable image" in error(client.post("/predict", files={"file": (None, "hi")}))
    assert "multipart" in error(client.post("/predict", json={"file": "x"}))
    assert "multipart" in error(
        client.post("/predict_batch", content=b"x", headers={"content-type": "image/png"})
    )
    two = client.post("/predict", files=[("file", ("a.png", b"x", "image/png"))] * 2)
    assert "/predict_batch" in error(two)
    six = client.post("/predict_batch", files=[("files", ("a.png", b"x", "image/png"))] * 6)
    assert "at most 5 files" in error(six)


# not ASCII digits, not a whole number, not in range, too long, padded, a leading zero
BAD_TOP_K = ["²", "٣", "9" * 5000, "-1", "1e3", "0", "10000", " 3", "3 ", "03", "3.0", "+3"]


@pytest.mark.parametrize("value", BAD_TOP_K, ids=lambda v: repr(v[:8]))
def test_a_malformed_top_k_gets_400_with_its_fix(client, stored, value):
    path, _ = one_per_class(stored)[0]
    image = {"file": ("x.png", path.read_bytes(), "image/png")}
    for reply in [
        client.post("/predict", files=image, data={"top_k": value}),
        client.post("/predict", files=image, params={"top_k": value}),
        client.post("/predict_batch", files={"files": image["file"]}, data={"top_k": value}),
    ]:
        assert reply.status_code == 400, (value[:8], reply.text[:200])
        (detail,) = reply.json()["detail"]
        assert detail["loc"] == ["top_k"] and "from 1 to 9999" in detail["msg"], detail
        assert len(detail["msg"]) < 200  # the 5,000 digits are not echoed back


def test_top_k_given_twice_gets_400(client, stored):
    path, _ = one_per_class(stored)[0]
    image = {"file": ("x.png", path.read_bytes(), "image/png")}
    twice = client.post("/predict?top_k=1&top_k=2", files=image)
    assert twice.status_code == 400 and "more than once" in twice.text
    blank = client.post("/predict?top_k=", files=image)  # blank: every class, as in a form
    assert len(blank.json()["probabilities"]) == len(stored["info"].classes)
    many = client.post("/predict?top_k=9999", files=image)  # more than the classes: all
    assert len(many.json()["probabilities"]) == len(stored["info"].classes)


def test_client_errors_are_logged_as_one_warning_line(client, caplog):
    with caplog.at_level(logging.INFO):
        assert post(client, b"not an image").status_code == 400
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    (line,) = [r for r in caplog.records if r.name == "cnnpipe.serve"]
    assert not errors and line.levelno == logging.WARNING and line.exc_info is None
    assert "400 POST /predict" in line.getMessage() and "not a readable image" in line.getMessage()
    caplog.clear()
    with caplog.at_level(logging.INFO):  # a field name cannot forge a log line
        body = (
            b'--b\r\nContent-Disposition: form-data; name="x\nERROR forged"\r\n\r\nv\r\n--b--\r\n'
        )
        headers = {"content-type": "multipart/form-data; boundary=b"}
        forged = client.post("/predict", content=body, headers=headers)
    assert forged.status_code == 400
    (line,) = [r for r in caplog.records if r.name == "cnnpipe.serve"]
    assert "\n" not in line.getMessage() and "x\\nERROR forged" in line.getMessage()


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


def unusual(path) -> dict[str, tuple[bytes, str]]:
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
