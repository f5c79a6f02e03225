"""The model-owner process: the one place that holds the models (catalog, batchers, runtimes),
so batching is global across the front-end workers and a device holds one copy of each model.

Each worker connects over a Unix socket. It sends ``infer`` (a model version, its ring's
slots, the deadline), ``cancel`` (its client left: drop the images before they run),
``reload``, ``unload`` and ``forget_ring``; the owner answers each with ``result`` (the output rows as the
payload), ``error`` (the typed error), ``cancelled`` or ``done``, and pushes a ``catalog``
snapshot on connect and whenever the served versions change.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
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
from server.runtimes import load_runtime
from server.runtimes.base import RuntimeFactory
from server.settings import Settings

log = logging.getLogger(__name__)


class _Worker:
    """One connected worker: its writer, its requests in progress and the rings it named."""

    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self.writer = writer
        self.tasks: dict[int, asyncio.Task[None]] = {}
        self.rings: dict[str, AttachedRing] = {}

    def send(self, header: frames.Header, payload: bytes | memoryview = b"") -> None:
        if not self.writer.is_closing():
            frames.send(self.writer, header, payload)

    def close(self) -> None:
        for ring in self.rings.values():
            ring.close()
        self.rings.clear()


class ModelOwner:
    def __init__(self) -> None:
        self.registry: ModelRegistry | None = None
        self._workers: set[_Worker] = set()
        self._manifests: dict[tuple[str, int], Any] = {}

    def _snapshot(self) -> frames.Header:
        assert self.registry is not None
        return {"op": "catalog", **take_snapshot(self.registry, self._manifests)}

    def broadcast(self) -> None:
        """The registry changed: every worker learns it before any later answer reaches it."""
        if self.registry is None or not self._workers:
            return
        snapshot = self._snapshot()
        for worker in self._workers:
            worker.send(snapshot)

    async def connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        worker = _Worker(writer)
        self._workers.add(worker)
        worker.send(self._snapshot())
        try:
            while True:
                header, _ = await frames.receive(reader)
                self._dispatch(worker, header)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass  # the worker exited or was killed: what it asked for is nobody's any more
        except frames.FrameError:
            log.exception("a worker sent a malformed frame; dropping its connection")
        finally:
            self._workers.discard(worker)
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
        if not isinstance(request, int):
            raise frames.FrameError(f"a message without an id: {op!r}")
        if op == "cancel":
            task = worker.tasks.get(request)
            if task is not None:
                task.cancel()
            return
        handler = {"infer": self._infer, "reload": self._reload, "unload": self._unload}.get(str(op))
        if handler is None:
            raise frames.FrameError(f"unknown operation {op!r}")
        task = asyncio.create_task(self._answer(worker, request, handler(worker, header)))
        worker.tasks[request] = task
        task.add_done_callback(lambda _: worker.tasks.pop(request, None))

    async def _answer(self, worker: _Worker, request: int, work: Any) -> None:
        try:
            header, payload = await work
        except asyncio.CancelledError:
            worker.send({"op": "cancelled", "id": request})
            return
        except Exception as exc:
            worker.send({"op": "error", "id": request, "error": encode_error(exc)})
            return
        worker.send({"id": request, **header}, payload)

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
        outputs = await model.infer_many(ring.views(header["slots"]), header["deadline"])
        stacked = np.ascontiguousarray(np.stack(outputs))
        return {"op": "result", "dtype": stacked.dtype.str, "shape": list(stacked.shape)}, stacked.tobytes()

    async def _reload(self, worker: _Worker, header: frames.Header) -> tuple[frames.Header, bytes]:
        assert self.registry is not None
        await self.registry.reload(only=header.get("only"))
        return {"op": "done"}, b""

    async def _unload(self, worker: _Worker, header: frames.Header) -> tuple[frames.Header, bytes]:
        assert self.registry is not None
        await self.registry.unload(str(header["name"]))
        return {"op": "done"}, b""

    async def close(self) -> None:
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
        self._models.start()

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
