"""Access control with CNNPIPE_API_KEY: the model endpoints require the key, the health checks and
the pages do not, and the OpenAPI document says so."""

from __future__ import annotations

import pytest
from service_fixtures import imported_service
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from cnnpipe.serve.access import BearerKey
from cnnpipe.serve.contract import document
from cnnpipe.serve.settings import Settings

KEY = b"s3cret-key"
ROUTES = ["/predict", "/predict_batch", "/explain", "/metadata", "/metrics", "/schema.json"]
OPEN = ["/livez", "/healthz", "/readyz", "/", "/docs", "/docs.json", "/page/page.js"]
OPEN += ["/static_content/swagger-ui.css"]
ROUTES += OPEN


async def reached(request: Request) -> JSONResponse:
    return JSONResponse({"path": request.url.path})


def client(metrics_public: bool = False) -> TestClient:
    """Every route of the service, each answering its path, behind the key."""
    app = Starlette(routes=[Route(path, reached, methods=["GET", "POST"]) for path in ROUTES])
    return TestClient(BearerKey(app, key=KEY, metrics_public=metrics_public))


@pytest.fixture(scope="module")
def keyed():
    with client() as c:
        yield c


def test_the_model_endpoints_require_the_key_as_a_bearer_token(keyed):
    for path in ("/predict", "/predict_batch", "/explain"):
        bare = keyed.post(path, content=b"x" * 1000)
        assert bare.status_code == 401 and "Authorization: Bearer <key>" in bare.json()["error"]
        assert bare.headers["www-authenticate"] == 'Bearer realm="cnnpipe"'
        assert bare.headers["connection"] == "close"  # its body is never read
    for path in ("/metadata", "/metrics", "/schema.json"):  # and whatever else BentoML serves
        assert keyed.get(path).status_code == 401, path
    for wrong in ("Bearer s3cret", "Bearer s3cret-key-and-more", "Basic s3cret-key", "s3cret-key"):
        reply = keyed.get("/metadata", headers={"Authorization": wrong})
        assert reply.status_code == 401, wrong
        assert 'error="invalid_token"' in reply.headers["www-authenticate"]
        assert "not this service's" in reply.json()["error"]
    for right in ("Bearer s3cret-key", "bearer s3cret-key", "BEARER  s3cret-key "):
        reply = keyed.post("/predict", headers={"Authorization": right})
        assert reply.json() == {"path": "/predict"}, right


def test_health_checks_and_pages_stay_open_and_metrics_can_be_opened(keyed):
    for path in OPEN:
        assert keyed.get(path).status_code == 200, path
    with client(metrics_public=True) as public:
        assert public.get("/metrics").status_code == 200
        assert public.get("/metadata").status_code == 401


def test_the_document_declares_the_bearer_scheme_where_it_is_required():
    base = {
        "paths": {
            route: {"get": {"responses": {"200": {"description": "ok"}}}}
            for route in ("/readyz", "/livez", "/healthz", "/metrics")
        }
    }
    spec = document(base, Settings(api_key="k"), "cnnpipe:v1")
    assert spec["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    keyed = [("/predict", "post"), ("/predict_batch", "post"), ("/explain", "post")]
    for route, method in [*keyed, ("/metadata", "get")]:
        operation = spec["paths"][route][method]
        assert operation["security"] == [{"bearer": []}] and "401" in operation["responses"]
    assert spec["paths"]["/metrics"]["get"]["security"] == [{"bearer": []}]
    for route in ("/readyz", "/livez", "/healthz"):
        assert spec["paths"][route]["get"]["security"] == [] and "401" not in spec["paths"][route]
    public = document(base, Settings(api_key="k", metrics_public=True), "cnnpipe:v1")
    assert public["paths"]["/metrics"]["get"]["security"] == []
    unkeyed = document({"paths": {}}, Settings(), "cnnpipe:v1")
    assert "securitySchemes" not in unkeyed["components"]
    assert "security" not in unkeyed["paths"]["/predict"]["post"]


def test_the_service_requires_the_key_only_when_one_is_set(tmp_path):
    """The key is checked before the limits read any body; without a key the check is not there
    (nothing to pay per request)."""
    key_file = tmp_path / "key"
    key_file.write_text("s3cret-key\n")
    with imported_service({"CNNPIPE_API_KEY_FILE": str(key_file)}) as module:
        middlewares = module.Classifier.middlewares
        names = [cls.__name__ for cls, _ in middlewares]
        assert names.index("BearerKey") < names.index("RequestLimits")
        assert dict(middlewares)[BearerKey] == {"key": KEY, "metrics_public": False}
    with imported_service({}) as module:
        assert BearerKey not in dict(module.Classifier.middlewares)
