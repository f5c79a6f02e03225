"""Start a server as its own process, wait until it is ready, stop it by its PID."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def server_process(
    command: list[str],
    port: int,
    env: dict[str, str] | None = None,
    startup_s: float = 300,
    stderr: int | IO[bytes] | None = subprocess.DEVNULL,
    *,
    ready_path: str = "/ready",
    cwd: Path | None = None,
    own_group: bool = False,
    stdout: int | IO[bytes] | None = subprocess.DEVNULL,
) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """Yield the base URL on 127.0.0.1 once ``ready_path`` answers 200, and the process.

    With ``own_group`` the server leads a new process group (its PID is the group's ID), and
    stopping signals the whole group: servers that run their model in child processes.
    imgserve's gRPC server stays off (``IMGSERVE_GRPC_PORT=0``) unless ``env`` or the command
    asks for it: two servers must not both try port 8001."""
    base_url = f"http://127.0.0.1:{port}"
    process = subprocess.Popen(
        command,
        env={**os.environ, "IMGSERVE_GRPC_PORT": "0", **(env or {})},
        cwd=cwd,
        stdout=stdout,
        stderr=stderr,
        start_new_session=own_group,
    )
    try:
        deadline = time.monotonic() + startup_s
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"server exited with {process.returncode}: {' '.join(command)}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"server not ready after {startup_s}s: {' '.join(command)}")
            try:
                if httpx.get(f"{base_url}{ready_path}", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        yield base_url, process
    finally:
        _stop(process, own_group)
        if process.stderr:
            process.stderr.close()


def _stop(process: subprocess.Popen[bytes], own_group: bool) -> None:
    def send(sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError):
            if own_group:
                os.killpg(process.pid, sig)
            else:
                process.send_signal(sig)

    if process.poll() is None:
        send(signal.SIGTERM)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            send(signal.SIGKILL)
            process.wait()
    if own_group:
        send(signal.SIGKILL)  # what the leader left behind in its group, if anything
