"""The service's pages, as ASGI middleware: `/`, a page for people to try the model (choose or
drop an image: its top classes with their calibrated probabilities, the "unknown" answer, the
Grad-CAM heat map; the model's classes, test metrics and version), and `/docs`, Swagger UI on the
OpenAPI document. Both are static files of this package (cnnpipe/serve/static) and Swagger UI's
files that BentoML ships, so they work offline; a Content-Security-Policy header keeps every
script, style, image and request on the server itself. BentoML's own page at `/`, which these
replace, loads Google Tag Manager.

SecurityHeaders puts `X-Content-Type-Options: nosniff` on every answer (an answer is what its
Content-Type says, never sniffed into HTML) and a Content-Security-Policy on any HTML answer that
has none, whichever route gave it.
"""

from __future__ import annotations

import typing as t
from pathlib import Path

from starlette.responses import FileResponse, PlainTextResponse, Response

if t.TYPE_CHECKING:
    from starlette.types import ASGIApp, Message, Receive, Scope, Send

STATIC = Path(__file__).parent / "static"
ASSETS = "/page/"  # where the page's own scripts and styles are served
# the page: nothing but this server; blob: for the chosen image and the heat map it shows
PAGE_POLICY = (
    "default-src 'self'; img-src 'self' blob:; object-src 'none'; base-uri 'none'; "
    "frame-ancestors 'none'; form-action 'self'"
)
# Swagger UI sets style attributes and draws its icons from data: URIs
DOCS_POLICY = (
    "default-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
    "object-src 'none'; base-uri 'none'; frame-ancestors 'none'"
)
# any other HTML answer: nothing at all may load
OTHER_HTML_POLICY = b"default-src 'none'; base-uri 'none'; frame-ancestors 'none'"
PAGES = {"/": ("index.html", PAGE_POLICY), "/docs": ("docs.html", DOCS_POLICY)}
MEDIA_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
}


class Pages:
    """Serves GET (and HEAD) `/`, `/docs` and the page's assets under /page/; passes anything
    else on."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.assets = {f"{ASSETS}{p.name}": p for p in STATIC.iterdir() if p.suffix != ".html"}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "") if scope["type"] == "http" else None
        if path in PAGES:
            name, policy = PAGES[path]
            file = STATIC / name
        elif path in self.assets:
            file, policy = self.assets[path], PAGE_POLICY
        else:
            return await self.app(scope, receive, send)
        if scope["method"] not in ("GET", "HEAD"):
            refused = PlainTextResponse("use GET", status_code=405, headers={"Allow": "GET"})
            return await refused(scope, receive, send)
        headers = {
            "Content-Security-Policy": policy,
            "X-Content-Type-Options": "nosniff",
            "Cache-Control": "no-cache",
        }
        media_type = MEDIA_TYPES.get(file.suffix, "application/octet-stream")
        response: Response = FileResponse(file, media_type=media_type, headers=headers)
        await response(scope, receive, send)


class SecurityHeaders:
    """ASGI middleware: nosniff on every answer, a Content-Security-Policy on every HTML one."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                names = {name.lower() for name, _ in headers}
                if b"x-content-type-options" not in names:
                    headers.append((b"x-content-type-options", b"nosniff"))
                html = any(
                    n.lower() == b"content-type" and v.startswith(b"text/html") for n, v in headers
                )
                if html and b"content-security-policy" not in names:
                    headers.append((b"content-security-policy", OTHER_HTML_POLICY))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, with_headers)
