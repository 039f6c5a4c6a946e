"""The request-header deadline added to uvicorn's HTTP protocols, on a real uvicorn server; and
the uvicorn internals it relies on (fails loudly when uvicorn changes them)."""

import inspect
import socket
import threading
import time

import uvicorn
from conftest import free_port
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from cnnpipe.serve import header_timeout


def test_uvicorn_still_has_what_the_deadline_relies_on():
    classes = header_timeout.protocol_classes()
    assert classes, "no uvicorn HTTP protocol class could be imported"
    for cls in classes:
        for name in ("connection_made", "on_response_complete"):
            assert callable(getattr(cls, name)), f"{cls.__name__}.{name} is gone"
        init = inspect.getsource(cls.__init__)
        assert "self.cycle" in init and "self.transport" in init, cls.__name__
        assert "self.cycle = RequestResponseCycle(" in inspect.getsource(cls)


def test_a_slow_client_gets_408_and_a_fast_one_its_answer():
    header_timeout.install(0.5)
    header_timeout.install(0.5)  # idempotent: one deadline, not two
    app = Starlette(routes=[Route("/", lambda _: PlainTextResponse("ok"))])
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, port=port, log_level="error", http="h11"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        while not server.started:
            time.sleep(0.01)
        with socket.create_connection(("127.0.0.1", port)) as slow:
            slow.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n")
            began = time.monotonic()
            assert slow.recv(1024).startswith(b"HTTP/1.1 408")
            assert 0.4 < time.monotonic() - began < 3
        with socket.create_connection(("127.0.0.1", port)) as fast:
            fast.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            answer = b""
            while not answer.endswith(b"ok"):  # the whole answer: headers and body
                answer += fast.recv(1024)
            assert answer.startswith(b"HTTP/1.1 200")
            time.sleep(0.8)  # past the deadline on a kept-alive connection: closed, no 408
            fast.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            reply = fast.recv(1024)
            assert reply == b"" or reply.startswith(b"HTTP/1.1 408")
    finally:
        server.should_exit = True
        thread.join(timeout=10)
