"""Optional access control: with CNNPIPE_API_KEY (or CNNPIPE_API_KEY_FILE) set, a request must
bear the key (`Authorization: Bearer <key>`) on every route but the open ones, or it gets 401
before any of its body is read.

Open: the health checks (an orchestrator probes them without the key), the two pages, their
files and the OpenAPI document (they hold nothing of the model; Swagger UI then asks for the
key and sends it), and /metrics with CNNPIPE_METRICS_PUBLIC. Every other route needs the key:
the model endpoints, /metadata, and whatever BentoML serves besides. The key is compared in
constant time. The key travels in clear over plain HTTP: put TLS in front (docs/serving.md).
"""

from __future__ import annotations

import hmac
import logging
import typing as t

from cnnpipe.core.redact import printable
from cnnpipe.serve.limits import answer

if t.TYPE_CHECKING:
    from starlette.types import ASGIApp, Receive, Scope, Send

logger = logging.getLogger("cnnpipe.serve")
HEALTH = frozenset({"/livez", "/healthz", "/readyz"})
PAGES = frozenset({"/", "/docs", "/docs.json"})
# the pages' own files and the Swagger UI files BentoML serves
OPEN_PREFIXES = ("/page/", "/static_content/")
METRICS = "/metrics"
REALM = 'Bearer realm="cnnpipe"'


def open_paths(metrics_public: bool) -> frozenset[str]:
    """The paths served without the key."""
    return HEALTH | PAGES | ({METRICS} if metrics_public else frozenset())


class BearerKey:
    """ASGI middleware: 401 with a WWW-Authenticate challenge for a request to a closed route
    without `Authorization: Bearer <key>`."""

    def __init__(self, app: ASGIApp, key: bytes, metrics_public: bool) -> None:
        self.app = app
        self.key = key
        self.open = open_paths(metrics_public)

    def _bears_the_key(self, scope: Scope) -> bool | None:
        """True: the key; False: another credential; None: none."""
        for name, value in scope["headers"]:
            if name == b"authorization":
                scheme, _, token = value.partition(b" ")
                # compared whatever the scheme, so that the time taken says nothing either
                same = hmac.compare_digest(token.strip(), self.key)
                return same and scheme.lower() == b"bearer"
        return None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] != "http" or path in self.open or path.startswith(OPEN_PREFIXES):
            return await self.app(scope, receive, send)
        bears = self._bears_the_key(scope)
        if bears:
            return await self.app(scope, receive, send)
        client = scope["client"][0] if scope.get("client") else "?"
        why = "no Authorization header" if bears is None else "a wrong key"
        logger.warning("401 %s %s from %s: %s", scope["method"], printable(path), client, why)
        challenge = REALM if bears is None else f'{REALM}, error="invalid_token"'
        error = (
            "this service requires an API key; send it as the header Authorization: Bearer <key>"
            if bears is None
            else "the API key is not this service's; send the key it was started with "
            "(CNNPIPE_API_KEY) as Authorization: Bearer <key>"
        )
        await answer(send, 401, {"error": error}, {"WWW-Authenticate": challenge})
