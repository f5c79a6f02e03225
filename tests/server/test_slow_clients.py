"""Slow, oversized and excess clients, and shutdown, on the wire: a real `imgserve serve` process
(the simulated runtime) and raw sockets on 127.0.0.1, with timeouts shortened through the environment."""

from __future__ import annotations

import io
import json
import os
import select
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import pytest
from PIL import Image

from loadtests.batching_bench import write_model
from loadtests.server_process import free_port, server_process

pytestmark = pytest.mark.e2e

SHORT_TIMEOUTS = {
    "IMGSERVE_HTTP__HEADER_TIMEOUT_S": "1",
    "IMGSERVE_HTTP__BODY_TIMEOUT_S": "1",
    "IMGSERVE_HTTP__KEEP_ALIVE_TIMEOUT_S": "1",
}
MARGIN_S = 5.0  # on top of a configured timeout: a shared, noisy machine


Response = tuple[int, dict[str, str], bytes]


@contextmanager
def _server(
    folder: Path, env: dict[str, str], model_seconds: float = 0.01
) -> Iterator[tuple[int, subprocess.Popen[bytes]]]:
    repository = folder / "models"
    write_model(
        repository, "simulated", "simulated", parameters={"fixed_seconds": model_seconds, "per_image_seconds": 0}
    )
    port = free_port()
    command = [sys.executable, "-m", "imgserve", "serve", "--port", str(port), "--model-repository", str(repository)]
    env = {"IMGSERVE_DEFAULT_MODEL": "simulated", **env}
    with (
        (folder / "server.log").open("wb") as log,
        server_process(command, port, env, startup_s=60, stderr=log) as (_, process),
    ):
        yield port, process


@pytest.fixture(scope="module")
def port(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    with _server(tmp_path_factory.mktemp("slow"), SHORT_TIMEOUTS) as (port, _):
        yield port


@pytest.fixture(scope="module")
def png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (64, 48), (200, 120, 30)).save(buffer, format="PNG")
    return buffer.getvalue()


def _connect(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=10)


def _get(path: str = "/health", extra: str = "") -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{extra}\r\n".encode()


def _post_head(length: int, expect_continue: bool = False) -> bytes:
    expect = "Expect: 100-continue\r\n" if expect_continue else ""
    return (
        f"POST /v1/classify HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: image/png\r\n"
        f"Content-Length: {length}\r\n{expect}\r\n"
    ).encode()


def _parse_head(head: bytes) -> tuple[int, dict[str, str]]:
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {name.strip().lower(): value.strip() for name, _, value in (line.partition(":") for line in lines)}
    return int(status_line.split()[1]), headers


def _read_response(sock: socket.socket) -> Response:
    """One response with a Content-Length, leaving the connection open."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"connection closed mid-response: {data!r}"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status, headers = _parse_head(head)
    while len(body) < int(headers["content-length"]):
        chunk = sock.recv(65536)
        assert chunk, "connection closed mid-body"
        body += chunk
    return status, headers, body


def _read_until_closed(sock: socket.socket, limit_s: float) -> bytes:
    """Everything the server sends until it closes the connection; fails past ``limit_s``."""
    deadline = time.monotonic() + limit_s
    data = b""
    while True:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            return data
        except TimeoutError:
            pytest.fail(f"connection still open after {limit_s} s; received {data!r}")
        if not chunk:
            return data
        data += chunk


def _closing_response(sock: socket.socket, limit_s: float) -> Response:
    raw = _read_until_closed(sock, limit_s)
    head, _, body = raw.partition(b"\r\n\r\n")
    status, headers = _parse_head(head)
    return status, headers, body


def _assert_error(response: Response, status: int, code: str) -> None:
    got, headers, body = response
    assert got == status, body
    assert headers["connection"] == "close"
    assert headers["content-type"] == "application/json"
    assert json.loads(body)["error"]["code"] == code
    assert "server" not in headers


def test_a_64_kb_header_gets_431_and_the_connection_is_closed(port: int) -> None:
    with _connect(port) as sock:
        sock.sendall(_get(extra=f"X-Big: {'a' * 64 * 1024}\r\n"))
        _assert_error(_closing_response(sock, MARGIN_S), 431, "headers_too_large")


def test_200_headers_get_431(port: int) -> None:
    with _connect(port) as sock:
        sock.sendall(_get(extra="".join(f"X-Field-{i}: {i}\r\n" for i in range(200))))
        _assert_error(_closing_response(sock, MARGIN_S), 431, "headers_too_large")


def test_normal_requests_still_work_kept_alive_without_a_server_header(port: int, png: bytes) -> None:
    with _connect(port) as sock:
        sock.sendall(_get(extra="X-Ordinary: yes\r\n"))
        status, headers, _ = _read_response(sock)
        assert status == 200 and "server" not in headers
        sock.sendall(_post_head(len(png)) + png)  # same connection: kept alive
        status, headers, body = _read_response(sock)
        assert status == 200, body
        assert "server" not in headers and json.loads(body)["predictions"]
        # Idle after the response: closed without a word after the keep-alive timeout.
        assert _read_until_closed(sock, 1 + MARGIN_S) == b""


def test_a_connection_that_sends_nothing_is_closed_after_the_idle_timeout(port: int) -> None:
    with _connect(port) as sock:
        started = time.monotonic()
        assert _read_until_closed(sock, 1 + MARGIN_S) == b""
        assert time.monotonic() - started >= 0.5  # closed by the timer, not at once


def test_stray_bytes_between_requests_do_not_keep_a_connection_open(port: int) -> None:
    with _connect(port) as sock:
        sock.sendall(_get())
        assert _read_response(sock)[0] == 200
        started = time.monotonic()
        for _ in range(20):  # an empty line every 0.3 s: 6 s at most; closed after about 1 s
            try:
                sock.sendall(b"\r\n")
            except OSError:  # closed (and reset) already
                break
            if select.select([sock], [], [], 0.3)[0]:
                break
        _read_until_closed(sock, MARGIN_S)
        assert time.monotonic() - started < 1 + MARGIN_S


def test_headers_sent_one_byte_at_a_time_get_408_then_the_connection_is_closed(port: int) -> None:
    request = _get(extra=f"X-Slow: {'a' * 100}\r\n")
    with _connect(port) as sock:
        started = time.monotonic()
        for byte in request[:60]:  # 12 s at most; the server answers after about 1 s
            sock.sendall(bytes([byte]))
            if select.select([sock], [], [], 0.2)[0]:
                break
        _assert_error(_closing_response(sock, MARGIN_S), 408, "request_timeout")
        assert time.monotonic() - started < 1 + MARGIN_S


def test_a_body_stalled_half_way_gets_408_while_others_are_served(port: int, png: bytes) -> None:
    with _connect(port) as stalled, _connect(port) as other:
        stalled.sendall(_post_head(len(png)) + png[: len(png) // 2])
        other.sendall(_post_head(len(png)) + png)
        status, _, body = _read_response(other)
        assert status == 200, body
        _assert_error(_closing_response(stalled, 1 + MARGIN_S), 408, "request_timeout")
        other.sendall(_get())
        assert _read_response(other)[0] == 200


def test_requests_beyond_max_connections_get_503(tmp_path: Path) -> None:
    with _server(tmp_path, {"IMGSERVE_HTTP__MAX_CONNECTIONS": "4"}) as (port, _), ExitStack() as stack:
        held = [stack.enter_context(_connect(port)) for _ in range(4)]
        for sock in held:  # four open connections, each served and kept alive
            sock.sendall(_get())
            assert _read_response(sock)[0] == 200
        with _connect(port) as fifth:
            fifth.sendall(_get())
            assert _read_response(fifth)[0] == 503
        held.pop().close()
        deadline = time.monotonic() + MARGIN_S
        while True:  # once the server has seen one close, a new connection is served again
            with _connect(port) as sock:
                sock.sendall(_get())
                if _read_response(sock)[0] == 200:
                    break
            assert time.monotonic() < deadline, "still refused after a connection closed"
            time.sleep(0.1)


def _begin_upload(port: int, png: bytes) -> socket.socket:
    """A classify request whose handler is running: the server asked for its body (100 Continue)."""
    sock = _connect(port)
    sock.sendall(_post_head(len(png), expect_continue=True))
    interim = b""
    while b"\r\n\r\n" not in interim:
        chunk = sock.recv(1)
        assert chunk, "closed before 100 Continue"
        interim += chunk
    assert interim.startswith(b"HTTP/1.1 100 "), interim
    return sock


def test_sigterm_exits_within_the_drain_timeout_despite_a_half_sent_body(tmp_path: Path, png: bytes) -> None:
    drain_s = 2
    env = {
        "IMGSERVE_DRAIN_TIMEOUT_S": str(drain_s),
        "IMGSERVE_HTTP__BODY_TIMEOUT_S": "60",
        "IMGSERVE_BATCHING__MAX_BATCH_SIZE": "2",  # warm-up runs each batch size once: keep it short
    }
    with _server(tmp_path, env, model_seconds=0.5) as (port, process), ExitStack() as stack:
        stalled = stack.enter_context(_begin_upload(port, png))
        stalled.sendall(png[: len(png) // 2])  # and nothing more: without a bound, shutdown waits 60 s
        in_flight = [stack.enter_context(_begin_upload(port, png)) for _ in range(3)]
        for sock in in_flight:
            sock.sendall(png)
        os.kill(process.pid, signal.SIGTERM)
        started = time.monotonic()
        for sock in in_flight:  # sent before SIGTERM: answered (two batches of 0.5 s) before exit
            status, _, body = _read_response(sock)
            assert status == 200, body
        assert process.wait(timeout=drain_s + 10) in (0, -signal.SIGTERM)
        assert time.monotonic() - started < drain_s + MARGIN_S
    assert "Application shutdown complete" in (tmp_path / "server.log").read_text()
