"""``imgserve serve --workers N``: one model-owner process and N front-end workers, supervised.

    clients ──TCP──▶ [ shared listening socket ]
                      │ worker-1 │ worker-2 │ … │ worker-N   HTTP, parsing, admission, decode
                      └────┬─────┴────┬─────┴───┴────┬─────┘
              Unix socket (control, results) + shared memory (pixels)
                           ▼          ▼              ▼
                      [ model owner ]  catalog, batchers, runtimes: one copy per device

The supervisor binds the socket, starts the owner and the workers (spawned, not forked: no
threads or model state are inherited), restarts a child that dies, and on SIGTERM or SIGINT
drains the workers first (their requests in progress still reach the owner), then the owner.
"""

from __future__ import annotations

import contextlib
import logging
import math
import multiprocessing
import os
import shutil
import signal
import socket
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from multiprocessing.connection import wait
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

from server.frontend import port_is_free
from server.ipc.processes import ring_prefix, run_owner, run_worker, worker_settings
from server.ipc.slots import remove_rings
from server.metrics import forget_process, prepare_multiprocess_dir
from server.settings import Settings
from server.shared_limits import SharedLimits

log = logging.getLogger(__name__)

# A child that dies within this long of starting is crash-looping: wait before the next try,
# doubling up to the cap, so a broken model repository does not spin the CPU.
STABLE_AFTER_S = 5.0
MAX_RESTART_DELAY_S = 10.0
# After the drain timeout, what the owner may still take to release its models.
RELEASE_GRACE_S = 5.0


def default_workers(cores: int | None = None) -> int:
    """One worker per core, less one for the model owner, at least one and at most 16 (beyond
    that, one process's batching and the accelerator are the limit, not HTTP)."""
    cores = cores or os.cpu_count() or 1
    return max(1, min(cores - 1, 16))


@dataclass
class _Child:
    name: str
    start: Callable[[], BaseProcess]
    process: BaseProcess | None = None
    started_at: float = 0.0
    delay_s: float = 0.0
    restart_at: float | None = None
    on_exit: list[Callable[[int], None]] = field(default_factory=list)

    def launch(self) -> None:
        self.process = self.start()
        self.started_at = time.monotonic()
        self.restart_at = None
        log.info("%s started (pid %s)", self.name, self.process.pid)


def listen(host: str, port: int, backlog: int = 2048) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP spelled out: asyncio sets TCP_NODELAY on accepted connections only for a
    # socket whose protocol says TCP; with 0, every small response waited ~40 ms for a delayed ACK.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(backlog)
    sock.set_inheritable(True)
    return sock


class Supervisor:
    def __init__(self, settings: Settings, workers: int) -> None:
        self._settings = settings
        self._workers = workers
        self._context = multiprocessing.get_context("spawn")
        self._stopping = False

    def run(self) -> int:
        settings = self._settings
        parent = os.getpid()
        with contextlib.ExitStack() as cleanup:  # unwound in reverse, whatever fails on the way
            run_dir = Path(tempfile.mkdtemp(prefix="imgserve-"))
            cleanup.callback(shutil.rmtree, run_dir, ignore_errors=True)
            # The in-progress budgets and rate-limit counts of all workers together: global limits.
            shared = SharedLimits.create(self._workers, settings.limits)
            cleanup.callback(shared.unlink)
            cleanup.callback(shared.close)
            cleanup.callback(remove_rings, f"imgserve-{parent}-")  # whatever a worker left
            owner_socket = run_dir / "owner.sock"
            # Before any child starts: each reads it when it first imports prometheus_client.
            prepare_multiprocess_dir(run_dir / "metrics")
            sock = listen(settings.host, settings.port)
            cleanup.callback(sock.close)
            if settings.grpc_port and not port_is_free(settings.host, settings.grpc_port):
                raise OSError(f"the gRPC port {settings.grpc_port} is in use on {settings.host}")
            wake_read, wake_write = socket.socketpair()
            cleanup.callback(wake_read.close)
            cleanup.callback(wake_write.close)
            wake_write.setblocking(False)
            previous = signal.set_wakeup_fd(wake_write.fileno())
            cleanup.callback(signal.set_wakeup_fd, previous)
            for signum in (signal.SIGTERM, signal.SIGINT):
                signal.signal(signum, self._stop)
            shares = worker_settings(settings, self._workers, os.cpu_count() or 1)

            def start_owner() -> BaseProcess:
                return self._spawn("model-owner", run_owner, settings, owner_socket, parent)

            def start_worker(i: int) -> BaseProcess:
                args = (shares, i, sock, owner_socket, parent, shared)
                return self._spawn(f"worker-{i}", run_worker, *args)

            def worker_died(i: int, pid: int) -> None:
                # What a dead worker held is freed before its replacement starts: its share of
                # the budgets, its rings, and its own children (the JSON parsing processes).
                shared.forget_worker(i)
                remove_rings(ring_prefix(parent, i))
                _kill_group(pid)

            owner = _Child("model-owner", start_owner, on_exit=[_kill_group])
            workers = [
                _Child(f"worker-{i}", partial(start_worker, i), on_exit=[partial(worker_died, i)])
                for i in range(self._workers)
            ]
            address = f"http://{settings.host}:{settings.port}"
            log.info("serving on %s with %d workers and a model owner", address, len(workers))
            try:
                for child in (owner, *workers):
                    child.launch()
                self._supervise([owner, *workers], wake_read)
            finally:
                sock.close()  # the supervisor's copy; each worker closes its own after its drain delay
                self._shutdown(workers, owner)
        return 0

    def _spawn(self, name: str, target: Callable[..., None], *args: Any) -> BaseProcess:
        process = self._context.Process(target=target, args=args, name=name, daemon=False)
        process.start()
        return process

    def _stop(self, signum: int, _frame: object) -> None:
        if not self._stopping:
            log.info("%s: draining workers, then the model owner", signal.Signals(signum).name)
        self._stopping = True

    def _supervise(self, children: list[_Child], wake: socket.socket) -> None:
        while not self._stopping:
            running = {c.process.sentinel: c for c in children if c.process is not None and c.restart_at is None}
            now = time.monotonic()
            timeout = min([c.restart_at - now for c in children if c.restart_at is not None] + [1.0])
            ready = wait([*running, wake], timeout=max(0.0, timeout))
            if wake in ready:
                wake.recv(4096)
            for sentinel in ready:
                child = running.get(sentinel) if isinstance(sentinel, int) else None
                if child is not None and not self._stopping:
                    self._died(child)
            now = time.monotonic()
            for child in children:
                if child.restart_at is not None and now >= child.restart_at and not self._stopping:
                    child.launch()

    def _died(self, child: _Child) -> None:
        assert child.process is not None
        child.process.join()
        pid, code = child.process.pid or 0, child.process.exitcode
        forget_process(pid)  # its live gauges leave /metrics; its counts stay in the totals
        for callback in child.on_exit:
            callback(pid)
        lived = time.monotonic() - child.started_at
        child.delay_s = 0.0 if lived >= STABLE_AFTER_S else min(MAX_RESTART_DELAY_S, max(0.5, 2 * child.delay_s))
        child.restart_at = time.monotonic() + child.delay_s
        log.error("%s (pid %d) exited with %s; restarting in %.1f s", child.name, pid, code, child.delay_s)

    def _shutdown(self, workers: list[_Child], owner: _Child) -> None:
        # Each worker serves on through the drain delay (saying it is not ready), then drains.
        drain = self._settings.drain_timeout_s
        deadline = time.monotonic() + self._settings.drain_delay_s + drain + 2
        _terminate([w for w in workers if w.process is not None], deadline=deadline)
        if owner.process is not None:
            _terminate([owner], deadline=time.monotonic() + math.ceil(drain) + RELEASE_GRACE_S)
        log.info("stopped")


def _kill_group(pid: int) -> None:
    """Whatever is left of a child's process group (each child leads its own)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


def _terminate(children: list[_Child], deadline: float) -> None:
    """SIGTERM each, wait until ``deadline``, then SIGKILL what is left; then what they left."""
    # Only those still running: a child that died earlier has been cleaned up after already,
    # and its pid (and process group ID) may since belong to somebody else.
    children = [c for c in children if c.process is not None and c.process.is_alive()]
    processes = [c.process for c in children if c.process is not None]
    for process in processes:
        process.terminate()
    for process in processes:
        process.join(max(0.0, deadline - time.monotonic()))
        if process.is_alive():
            log.error("%s (pid %s) did not stop in time; killing it", process.name, process.pid)
            process.kill()
            process.join(5)
    for child in children:
        if child.process is not None and child.process.pid is not None:
            for callback in child.on_exit:
                callback(child.process.pid)
