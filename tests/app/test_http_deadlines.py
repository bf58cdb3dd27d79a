"""Read deadlines (issue #22, 7): a connection that never finishes its headers, or trickles its body, is closed;
a slow but steady upload and keep-alive requests are answered. A real uvicorn server on a loopback port with the
options `hhvaem serve` uses (`server_options`), a tiny application, raw sockets to control the timing."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator

import pytest
import uvicorn
from fastapi import FastAPI, Request

from hhvaem.app.core.config import Settings
from hhvaem.app.core.http import server_options

HEADERS, BODY, RATE = 0.6, 0.6, 200.0  # seconds, seconds, bytes per second


@pytest.fixture(scope="module")
def url() -> Iterator[tuple[str, int]]:
    app = FastAPI()

    @app.post("/echo")
    async def echo(request: Request) -> dict:
        return {"bytes": len(await request.body())}

    @app.get("/ping")
    async def ping() -> dict:
        return {"ok": True}

    settings = Settings(header_timeout_seconds=HEADERS, body_timeout_seconds=BODY, body_min_rate=RATE)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    config = uvicorn.Config(app, log_config=None, lifespan="off", ws="none", **server_options(settings))
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline, "the server did not start"
        time.sleep(0.02)
    yield sock.getsockname()
    server.should_exit = True
    thread.join(10)


@contextlib.contextmanager
def connection(address) -> Iterator[socket.socket]:
    s = socket.create_connection(address, timeout=10)
    try:
        yield s
    finally:
        s.close()


def closed_by_server(s: socket.socket, dribble: bytes = b"", every: float = 0.1, limit: float = 8.0) -> float:
    """Seconds until the server closes `s` while we send `dribble` every `every` seconds (nothing if empty)."""
    started = time.monotonic()
    s.setblocking(False)
    while time.monotonic() - started < limit:
        try:
            if s.recv(65536) == b"":
                return time.monotonic() - started
        except BlockingIOError:
            pass
        except (ConnectionResetError, BrokenPipeError):
            return time.monotonic() - started
        if dribble:
            try:
                s.send(dribble)
            except (ConnectionResetError, BrokenPipeError):
                return time.monotonic() - started
        time.sleep(every)
    raise AssertionError(f"the server kept the connection open for {limit} s")


def answer(s: socket.socket) -> bytes:
    s.setblocking(True)
    data = b""
    while b"\r\n\r\n" not in data or not data.rstrip().endswith(b"}"):
        chunk = s.recv(65536)
        assert chunk, f"closed before the answer: {data!r}"
        data += chunk
    return data


def test_a_connection_that_sends_nothing_is_closed(url) -> None:
    with connection(url) as s:
        assert HEADERS - 0.1 <= closed_by_server(s) <= HEADERS + 3


def test_headers_dribbled_forever_are_closed_at_the_header_deadline(url) -> None:
    with connection(url) as s:
        s.sendall(b"GET /ping HTTP/1.1\r\nHost: x\r\n")
        # each header line resets nothing: the deadline counts from the connection, not from the last byte
        assert HEADERS - 0.1 <= closed_by_server(s, dribble=b"X-a: b\r\n") <= HEADERS + 3


def test_a_trickled_body_is_closed(url) -> None:
    with connection(url) as s:
        s.sendall(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n")
        # 10 bytes per 0.1 s = 100 B/s, half the minimum rate: closed after BODY + received / RATE
        assert closed_by_server(s, dribble=b"0123456789") <= 2 * BODY + 3


def test_a_slow_but_steady_upload_and_a_second_request_on_the_connection_are_answered(url) -> None:
    body = b"7" * 600  # sent at about 400 B/s for 1.5 s: past BODY, but above the minimum rate
    with connection(url) as s:
        s.sendall(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(body))
        for i in range(0, len(body), 40):
            s.sendall(body[i : i + 40])
            time.sleep(0.1)
        first = answer(s)
        assert first.startswith(b"HTTP/1.1 200") and first.endswith(b'{"bytes":600}'), first
        time.sleep(HEADERS / 2)  # idle between two requests, within the deadlines
        s.sendall(b"GET /ping HTTP/1.1\r\nHost: x\r\n\r\n")
        second = answer(s)
        assert second.startswith(b"HTTP/1.1 200") and second.endswith(b'{"ok":true}'), second
