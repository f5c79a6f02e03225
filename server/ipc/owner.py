"""The model-owner process: the one place that holds the models (catalog, batchers, runtimes),
so batching is global across the front-end workers and a device holds one copy of each model.

Each worker connects over a Unix socket. It sends ``infer`` (a model version, its ring's
slots, the deadline), ``cancel`` (its client left: drop the images before they run),
``reload``, ``unload`` and ``forget_ring``; the owner answers each with ``result`` (the output rows as the
payload), ``error`` (the typed error), ``cancelled`` or ``done``, and pushes a ``catalog``
snapshot on connect and whenever the served versions change, which the worker confirms
(``ack``): a reload or unload answers once every worker has the new catalog.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import numpy as np

from batching import BatcherClosed
from batching.clock import Clock, MonotonicClock
from model_contract.errors import ErrorKind, ServiceError
from server.ipc import frames
from server.ipc.errors import encode_error
from server.ipc.slots import AttachedRing
from server.ipc.snapshot import take_snapshot
from server.local_models import LocalModels, build_registry
from server.metrics import Metrics
from server.registry import ModelRegistry
from server.request_context import request_id
from server.runtimes import load_runtime
from server.runtimes.base import RuntimeFactory
from server.settings import Settings

log = logging.getLogger(__name__)


# A worker sends headers only (pixels are in shared memory): anything bigger is not ours.
INBOUND_HEADER_BYTES = 64 * 1024
# How long a reload or unload waits for every worker to confirm the new catalog before it
# answers, so the next request through any worker sees it.
SNAPSHOT_ACK_S = 2.0

Work = Callable[["_Worker", frames.Header], Awaitable[tuple[frames.Header, bytes]]]


class _Worker:
    """One connected worker: its writer, its requests in progress, the rings it named and the
    newest catalog it confirmed."""

    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self.writer = writer
        self.tasks: dict[int, asyncio.Task[None]] = {}
        self.rings: dict[str, AttachedRing] = {}
        self.acked = 0
        self.acks = asyncio.Event()

    def send(self, header: frames.Header, payload: bytes | memoryview = b"") -> None:
        if not self.writer.is_closing():
            frames.send(self.writer, header, payload)

    def send_encoded(self, parts: list[bytes | memoryview]) -> None:
        if not self.writer.is_closing():
            self.writer.writelines(parts)

    def close(self) -> None:
        for ring in self.rings.values():
            ring.close()
        self.rings.clear()


class ModelOwner:
    def __init__(self) -> None:
        self.registry: ModelRegistry | None = None
        self._workers: set[_Worker] = set()
        self._manifests: dict[tuple[str, int], Any] = {}
        self._sent: frames.Header | None = None
        self._sequence = 0
        # Repository operations belong to the server, not to the worker that asked: one that
        # dies or drains must not cancel a reload halfway. Held here until they end.
        self._repository_tasks: set[asyncio.Task[None]] = set()

    def _snapshot(self) -> frames.Header:
        assert self.registry is not None
        snapshot = take_snapshot(self.registry, self._manifests)
        # Only the versions served now: a version unloaded and loaded again may have changed.
        served = {(v["name"], v["version"]) for v in snapshot["versions"]}
        self._manifests = {k: v for k, v in self._manifests.items() if k in served}
        return snapshot

    def broadcast(self) -> None:
        """The registry may have changed: if it did, every worker learns it before any later
        answer reaches it. Encoded once for all of them."""
        if self.registry is None:
            return
        snapshot = self._snapshot()
        if snapshot == self._sent:
            return
        self._sent = snapshot
        self._sequence += 1
        parts = frames.encode({"op": "catalog", "seq": self._sequence, **snapshot})
        for worker in self._workers:
            worker.send_encoded(parts)

    async def _confirmed(self) -> None:
        """Until every connected worker has confirmed the newest catalog (bounded)."""
        wanted = self._sequence

        async def confirmed(worker: _Worker) -> None:
            while worker.acked < wanted and not worker.writer.is_closing():
                worker.acks.clear()
                await worker.acks.wait()

        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(asyncio.gather(*(confirmed(w) for w in list(self._workers))), SNAPSHOT_ACK_S)

    async def connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        worker = _Worker(writer)
        self._workers.add(worker)
        self._sent = None  # this worker has seen nothing yet: the next broadcast goes out
        self.broadcast()
        try:
            while True:
                header, _ = await frames.receive(reader, INBOUND_HEADER_BYTES, max_payload_bytes=0)
                self._dispatch(worker, header)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass  # the worker exited or was killed: what it asked for is nobody's any more
        except frames.FrameError:
            log.exception("a worker sent a malformed frame; dropping its connection")
        finally:
            self._workers.discard(worker)
            worker.acks.set()
            tasks = list(worker.tasks.values())
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            worker.close()
            writer.close()

    def _dispatch(self, worker: _Worker, header: frames.Header) -> None:
        op, request = header.get("op"), header.get("id")
        if op == "forget_ring":  # the worker removed it (its version was retired): unmap it too
            ring = worker.rings.pop(str(header.get("ring")), None)
            if ring is not None:
                ring.close()
            return
        if op == "ack":
            worker.acked = max(worker.acked, int(header.get("seq", 0)))
            worker.acks.set()
            return
        if not isinstance(request, int):
            raise frames.FrameError(f"a message without an id: {op!r}")
        if op == "cancel":
            task = worker.tasks.get(request)
            if task is not None:
                task.cancel()
            return
        if op == "infer":
            task = asyncio.create_task(self._answer(worker, request, self._infer, header))
            worker.tasks[request] = task
            task.add_done_callback(lambda _: worker.tasks.pop(request, None))
        elif op in ("reload", "unload"):
            work = self._reload if op == "reload" else self._unload
            task = asyncio.create_task(self._answer(worker, request, work, header))
            self._repository_tasks.add(task)
            task.add_done_callback(self._repository_tasks.discard)
        else:
            raise frames.FrameError(f"unknown operation {op!r}")

        def cancelled(done: asyncio.Task[None]) -> None:
            # Also for a task cancelled before its first step (a cancel read in the same
            # chunk as its infer), which never reaches _answer's handlers: the worker frees
            # the request's slots only on an answer.
            if done.cancelled():
                worker.send({"op": "cancelled", "id": request})

        task.add_done_callback(cancelled)

    async def _answer(self, worker: _Worker, request: int, work: Work, header: frames.Header) -> None:
        rid = header.get("rid")
        request_id.set(rid if isinstance(rid, str) else None)  # this task's own context
        try:
            answer, payload = await work(worker, header)
        except asyncio.CancelledError:
            raise  # answered by the done callback
        except Exception as exc:
            worker.send({"op": "error", "id": request, "error": encode_error(exc)})
            return
        worker.send({"id": request, **answer}, payload)

    async def _infer(self, worker: _Worker, header: frames.Header) -> tuple[frames.Header, bytes]:
        assert self.registry is not None
        try:
            model = self.registry.get(header["model"], header["version"])
        except ServiceError as exc:
            if exc.kind is not ErrorKind.MODEL_NOT_FOUND:
                raise
            # Retired after the worker chose it (its snapshot is on the way): as in one process,
            # the worker's service retries on the version that replaced it, if the client
            # asked for the newest.
            raise BatcherClosed(f"version {header['version']} was retired") from None
        ring = worker.rings.get(header["ring"])
        if ring is None:
            manifest = model.manifest
            dtype = np.dtype(manifest.input.dtype)
            ring = AttachedRing(header["ring"], manifest.item_shape, dtype, int(header["ring_slots"]))
            worker.rings[header["ring"]] = ring
        starts: list[float] = []
        priority = header.get("priority", 0)
        outputs = await model.infer_many(
            ring.views(header["slots"]),
            header["deadline"],
            on_start=starts.append,
            priority=priority if isinstance(priority, int) else 0,
        )
        stacked = np.ascontiguousarray(np.stack(outputs))
        answer = {"op": "result", "dtype": stacked.dtype.str, "shape": list(stacked.shape), "started": min(starts)}
        return answer, stacked.tobytes()

    async def _reload(self, worker: _Worker, header: frames.Header) -> tuple[frames.Header, bytes]:
        assert self.registry is not None
        await self.registry.reload(only=header.get("only"))
        await self._confirmed()
        return {"op": "done"}, b""

    async def _unload(self, worker: _Worker, header: frames.Header) -> tuple[frames.Header, bytes]:
        assert self.registry is not None
        await self.registry.unload(str(header["name"]))
        await self._confirmed()
        return {"op": "done"}, b""

    async def close(self) -> None:
        await asyncio.gather(*self._repository_tasks, return_exceptions=True)
        for worker in list(self._workers):
            worker.writer.close()


class OwnerServer:
    """The models of ``settings`` served on a Unix socket: the owner's whole life, minus signals."""

    def __init__(
        self,
        settings: Settings,
        runtime_factory: RuntimeFactory = load_runtime,
        clock: Clock | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        clock = clock or MonotonicClock()
        self._owner = ModelOwner()
        registry = build_registry(settings, runtime_factory, metrics or Metrics(), clock, self._owner.broadcast)
        self._owner.registry = registry
        self._models = LocalModels(registry, settings.repository_poll_s, clock)
        self._server: asyncio.AbstractServer | None = None
        self._path: Path | None = None

    async def start(self, socket_path: Path) -> None:
        with contextlib.suppress(FileNotFoundError):
            socket_path.unlink()  # a previous owner's, killed before it could clean up
        self._path = socket_path
        self._server = await asyncio.start_unix_server(self._owner.connection, str(socket_path))
        await self._models.start()

    async def close(self) -> None:
        """Stop listening, drain every model's queue, release the models, drop the workers."""
        if self._server is not None:
            self._server.close()
        await self._models.close()
        await self._owner.close()
        if self._path is not None:
            with contextlib.suppress(FileNotFoundError):
                self._path.unlink()


async def serve_models(settings: Settings, socket_path: Path) -> None:
    """Until SIGTERM or SIGINT: serve the repository's models to the workers that connect on
    ``socket_path``. Then stop listening, drain every model's queue and release the models."""
    metrics = Metrics()
    metrics.process_started("model-owner")
    server = OwnerServer(settings, metrics=metrics)
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopping.set)
    await server.start(socket_path)
    log.info("model owner listening on %s (pid %d)", socket_path, os.getpid())
    try:
        await stopping.wait()
    finally:
        await server.close()
