"""What cnnpipe.serve.bentoml_io uses of BentoML's private API is still there and still called
the same way: this fails loudly, naming what changed, when a BentoML upgrade breaks it."""

import inspect

import _bentoml_impl.server.app as server_app
from _bentoml_sdk.io_models import IODescriptor, IOMixin

from cnnpipe.serve import bentoml_io


def test_the_io_descriptor_hooks_are_there_with_their_signatures():
    for cls, name in [
        (IODescriptor, "from_http_request"),
        (IOMixin, "to_http_response"),
        (IOMixin, "openapi_components"),
    ]:
        method = inspect.getattr_static(cls, name, None)
        assert isinstance(method, classmethod), f"BentoML changed {cls.__name__}.{name}"
    params = list(inspect.signature(IODescriptor.from_http_request).parameters)
    assert params == ["request", "serde"], f"from_http_request takes {params} now"
    assert list(inspect.signature(IOMixin.to_http_response).parameters) == ["obj", "serde"]
    assert "multipart_fields" in IOMixin.__annotations__


def test_bentoml_still_parses_requests_with_the_input_spec_and_batches_its_field():
    source = inspect.getsource(server_app.ServiceAppFactory.api_endpoint)
    assert "method.input_spec.from_http_request(request, serde)" in source
    assert "method.output_spec.to_http_response(output, serde)" in source
    assert "input_data.model_fields" in source  # the spec's one field is the batched argument


def test_the_descriptors_take_the_decoded_images_from_the_request_state():
    import asyncio

    from starlette.requests import Request

    from cnnpipe.serve.uploads import STATE_KEY

    images = [object()]
    request = Request({"type": "http", "state": {STATE_KEY: images}, "headers": []})
    parsed = asyncio.run(bentoml_io.PredictInput.from_http_request(request, None))
    assert parsed.images is images
