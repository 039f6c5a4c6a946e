"""What the service needs of BentoML's private API, in one place: the IO descriptors of its
endpoints.

BentoML 1.4 parses a request with its API's input spec (`IODescriptor.from_http_request`) and
sends the result with the output spec (`to_http_response`); its public types cannot take a
multipart upload decoded off the event loop, nor a raw image body. The images are decoded before
BentoML sees the request (cnnpipe.serve.uploads.Uploads leaves them in the request's state), so
the input specs here only pick them up. tests/test_bentoml_io.py fails loudly when BentoML
changes what is used here.
"""

from __future__ import annotations

import typing as t

from _bentoml_sdk.io_models import IODescriptor, IOMixin
from pydantic import BaseModel, ConfigDict
from starlette.requests import Request
from starlette.responses import Response

from cnnpipe.serve.contract import Prediction, explained_header
from cnnpipe.serve.decoding import Image
from cnnpipe.serve.uploads import STATE_KEY


class DecodedImages(IODescriptor):
    """The input of /predict, /predict_batch and /explain: the request's decoded images."""

    model_config = ConfigDict(arbitrary_types_allowed=True)
    images: list[t.Any]

    @classmethod
    def __pydantic_init_subclass__(cls, **kwargs: t.Any) -> None:
        super().__pydantic_init_subclass__(**kwargs)
        cls.multipart_fields = ["images"]  # documented as an upload (cnnpipe.serve.contract)

    @classmethod
    async def from_http_request(cls, request: Request, serde: t.Any) -> DecodedImages:
        images: list[Image] | None = request.scope.get("state", {}).get(STATE_KEY)
        if images is None:
            raise RuntimeError("the request reached the API without the Uploads middleware")
        return cls.model_construct(images=images)


class PredictInput(DecodedImages):
    pass


class PredictBatchInput(DecodedImages):
    pass


class ExplainInput(DecodedImages):
    pass


class HeatMap(IOMixin, BaseModel):
    """The /explain response: a PNG, and the class it explains in a header."""

    png: bytes
    label: str

    @classmethod
    async def to_http_response(cls, obj: t.Any, serde: t.Any) -> t.Any:
        return Response(obj.png, media_type="image/png", headers=explained_header(obj.label))


class OnePrediction(IOMixin, Prediction):
    """The /predict response: the one result of the request's one-image batch."""

    @classmethod
    async def to_http_response(cls, obj: t.Any, serde: t.Any) -> t.Any:
        (result,) = obj
        return await super().to_http_response(result, serde)
