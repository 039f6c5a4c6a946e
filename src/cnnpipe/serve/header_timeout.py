"""A deadline for request headers, in the uvicorn workers `bentoml serve` starts.

uvicorn times out idle keep-alive connections but not a client that opens a connection and sends
its headers slowly (slowloris): every such connection is held forever. BentoML creates the uvicorn
server itself and passes it no protocol class, so the deadline is added to uvicorn's HTTP protocol
classes: a connection whose next request has not started (its headers not all received)
`seconds` after it opened, or after its last response, is answered 408 and closed. This relies on
uvicorn internals (the protocols' connection_made, on_response_complete, cycle and transport);
tests/test_header_timeout.py fails loudly if uvicorn changes them.
"""

from __future__ import annotations

import asyncio
import functools
import importlib
import typing as t

PROTOCOLS = (
    "uvicorn.protocols.http.h11_impl:H11Protocol",
    "uvicorn.protocols.http.httptools_impl:HttpToolsProtocol",
)
TIMEOUT_RESPONSE = (
    b"HTTP/1.1 408 Request Timeout\r\ncontent-type: text/plain\r\nconnection: close\r\n"
    b"content-length: 33\r\n\r\nthe request headers came too slow"
)


def _expire(protocol: t.Any, cycle: t.Any) -> None:
    """Close the connection if no request has started since the deadline was set."""
    transport = protocol.transport
    if protocol.cycle is cycle and transport is not None and not transport.is_closing():
        transport.write(TIMEOUT_RESPONSE)
        transport.close()


def _arm(protocol: t.Any, seconds: float) -> None:
    loop = asyncio.get_running_loop()
    loop.call_later(seconds, _expire, protocol, protocol.cycle)


def _with_deadline(method: t.Callable, seconds: float) -> t.Callable:
    @functools.wraps(method)
    def wrapped(self: t.Any, *args: t.Any, **kwargs: t.Any) -> t.Any:
        result = method(self, *args, **kwargs)
        _arm(self, seconds)
        return result

    wrapped.__cnnpipe_header_timeout__ = seconds  # type: ignore[attr-defined]
    return wrapped


def protocol_classes() -> list[type]:
    """uvicorn's HTTP protocol classes that can be imported here (httptools is optional)."""
    classes = []
    for spec in PROTOCOLS:
        module, name = spec.split(":")
        try:
            classes.append(getattr(importlib.import_module(module), name))
        except ImportError:
            continue
    return classes


def install(seconds: float) -> None:
    """Give every HTTP connection of this process's uvicorn `seconds` to send each request's
    headers (idempotent)."""
    for cls in protocol_classes():
        for name in ("connection_made", "on_response_complete"):
            method = getattr(cls, name)
            original = getattr(method, "__wrapped__", method)
            setattr(cls, name, _with_deadline(original, seconds))
