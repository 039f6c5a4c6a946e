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
import weakref

PROTOCOLS = (
    "uvicorn.protocols.http.h11_impl:H11Protocol",
    "uvicorn.protocols.http.httptools_impl:HttpToolsProtocol",
)
TIMEOUT_RESPONSE = (
    b"HTTP/1.1 408 Request Timeout\r\ncontent-type: text/plain\r\nconnection: close\r\n"
    b"content-length: 33\r\n\r\nthe request headers came too slow"
)


def _expire(protocol_ref: weakref.ref, cycle_ref: weakref.ref | None) -> None:
    """Close the connection if no request has started since the deadline was set."""
    protocol = protocol_ref()
    if protocol is None:  # the connection is gone
        return
    current = protocol.cycle
    if cycle_ref is None and current is not None:
        return  # the connection's first request has started
    if cycle_ref is not None and current is not cycle_ref():
        return  # a new request has started (or the one armed after was freed: it ended)
    transport = protocol.transport
    if transport is not None and not transport.is_closing():
        transport.write(TIMEOUT_RESPONSE)
        transport.close()


def _arm(protocol: t.Any, seconds: float) -> None:
    # weak references: the timer must not keep a finished request (its scope, its images) or a
    # closed connection alive for `seconds`
    cycle = protocol.cycle
    loop = asyncio.get_running_loop()
    loop.call_later(
        seconds, _expire, weakref.ref(protocol), weakref.ref(cycle) if cycle is not None else None
    )


def _with_deadline(method: t.Callable, seconds: float) -> t.Callable:
    @functools.wraps(method)
    def wrapped(self: t.Any, *args: t.Any, **kwargs: t.Any) -> t.Any:
        result = method(self, *args, **kwargs)
        _arm(self, seconds)
        return result

    # a mark on the function (mypy knows no attributes of a Callable beyond calling it)
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
