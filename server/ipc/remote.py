"""The worker's side of the boundary: the model catalog and served models of the model-owner
process, behind the same interfaces (``server/serving.py``) as the in-process registry.

``RemoteCatalog`` keeps one connection to the owner, reconnecting when it drops. While the
owner is away (restarting, warming up), every model is unavailable: requests get 503 with
Retry-After, and those in flight when it went get the same.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path

import numpy as np

from batching import BatchingConfig, Overloaded
from batching.clock import Clock
from model_contract.errors import ErrorKind, ServiceError
from model_contract.manifest import ModelManifest
from model_contract.preprocess import PreprocessSpec
from server.ipc import frames
from server.ipc.errors import decode_error
from server.ipc.slots import SharedMemoryFull, SlotRing, SlotsExhausted
from server.ipc.snapshot import CatalogSnapshot, VersionInfo, read_snapshot
from server.metrics import Metrics
from server.request_context import request_id
from server.result_cache import CachedResults, ResultCache
from server.serving import Compute, Offload, OnStart, pick_version

log = logging.getLogger(__name__)

RETRY_AFTER_S = 1.0
# How long a starting worker waits for the owner's catalog before it takes connections anyway.
FIRST_CATALOG_WAIT_S = 5.0
# After a request's deadline, how long it may still wait for the batch it is in to run.
ANSWER_GRACE_S = 30.0
# Between attempts to reach the owner: fast at first (a restart takes a moment), then calmer.
RECONNECT_DELAYS_S = (0.05, 0.1, 0.2, 0.5)


def _owner_away() -> ServiceError:
    """For a request in flight when the owner went away."""
    return ServiceError(ErrorKind.UNAVAILABLE, "the model process is restarting", retry_after=RETRY_AFTER_S)


def _dropped() -> ServiceError:
    return ServiceError(ErrorKind.SHUTTING_DOWN, "the model process dropped the request", retry_after=RETRY_AFTER_S)


class _Request:
    """A request sent to the owner, until the owner answers for it (even after its caller
    gave up: the slots it names stay taken until then)."""

    def __init__(self, future: asyncio.Future[tuple[frames.Header, bytes]], release: Callable[[], None]) -> None:
        self.future = future
        self.release = release


class OwnerLink:
    def __init__(self, socket_path: Path, on_snapshot: Callable[[CatalogSnapshot | None], None]) -> None:
        self._path = socket_path
        self._on_snapshot = on_snapshot
        self._writer: asyncio.StreamWriter | None = None
        self._ids = itertools.count(1)
        self._requests: dict[int, _Request] = {}
        self._manifests: dict[tuple[str, int], ModelManifest] = {}
        self._task: asyncio.Task[None] | None = None
        self._first_snapshot = asyncio.Event()

    @property
    def connected(self) -> bool:
        return self._writer is not None

    def start(self) -> None:
        self._task = asyncio.create_task(self._stay_connected(), name="model-owner-link")

    async def _stay_connected(self) -> None:
        for attempt in itertools.count():
            try:
                reader, writer = await asyncio.open_unix_connection(str(self._path))
            except OSError:
                await asyncio.sleep(RECONNECT_DELAYS_S[min(attempt, len(RECONNECT_DELAYS_S) - 1)])
                continue
            if attempt:
                log.info("connected to the model owner")
            self._writer = writer
            try:
                await self._read(reader)
            except (asyncio.IncompleteReadError, ConnectionError):
                log.warning("lost the model owner; answering 503 until it is back")
            except Exception:
                # Whatever it was (a malformed frame, a snapshot we cannot read), this link
                # cannot be trusted: drop it and start over, never stay away for good.
                log.exception("unreadable message from the model owner; reconnecting")
            finally:
                self._writer = None
                writer.close()
                self._manifests.clear()  # a new owner may have new versions under old numbers
                self._on_snapshot(None)
                self._fail_all(_owner_away())

    async def _read(self, reader: asyncio.StreamReader) -> None:
        while True:
            header, payload = await frames.receive(reader)
            if header.get("op") == "catalog":
                snapshot = read_snapshot(header, self._manifests)
                served = {(v.name, v.version) for v in snapshot.versions}
                self._manifests = {k: v for k, v in self._manifests.items() if k in served}
                self._on_snapshot(snapshot)
                self._first_snapshot.set()
                self.notify({"op": "ack", "seq": header.get("seq", 0)})
                continue
            request = self._requests.pop(header.get("id", -1), None)
            if request is None:
                continue
            request.release()
            if request.future.done():
                continue  # its caller gave up
            if header.get("op") == "error":
                request.future.set_exception(decode_error(header["error"]))
            elif header.get("op") == "cancelled":
                request.future.set_exception(_dropped())
            else:
                request.future.set_result((header, payload))

    def _fail_all(self, error: Exception) -> None:
        requests, self._requests = self._requests, {}
        for request in requests.values():
            request.release()
            if not request.future.done():
                request.future.set_exception(error)

    async def call(
        self, header: frames.Header, release: Callable[[], None] = lambda: None, timeout_s: float | None = None
    ) -> tuple[frames.Header, bytes]:
        """Send ``header`` and wait for its answer, at most ``timeout_s`` (then 504). If the
        caller is cancelled or times out, the owner is told to drop the work (queued images
        never run); ``release`` runs once the owner has answered for it, or the link is gone."""
        if self._writer is None:
            release()
            raise _owner_away()
        request_id = next(self._ids)
        future: asyncio.Future[tuple[frames.Header, bytes]] = asyncio.get_running_loop().create_future()
        self._requests[request_id] = _Request(future, release)
        frames.send(self._writer, {**header, "id": request_id})
        try:
            return await asyncio.wait_for(asyncio.shield(future), timeout_s)
        except (asyncio.CancelledError, asyncio.TimeoutError) as exc:
            if not future.done():
                self.notify({"op": "cancel", "id": request_id})
            future.cancel()
            if isinstance(exc, asyncio.TimeoutError):
                raise ServiceError(ErrorKind.TIMEOUT, "the model process did not answer in time") from None
            raise

    async def connected_once(self, timeout_s: float) -> bool:
        """Wait (bounded) until the owner's first catalog has arrived."""
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._first_snapshot.wait(), timeout_s)
        return self._first_snapshot.is_set()

    def notify(self, header: frames.Header) -> None:
        """A message that needs no answer; dropped while the owner is away."""
        if self._writer is not None:
            frames.send(self._writer, header)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


class RemoteModel:
    """One version served by the owner (a ``ServedModel``). Its result cache is this worker's."""

    def __init__(
        self, info: VersionInfo, link: OwnerLink, rings: Rings, results: CachedResults | None, clock: Clock
    ) -> None:
        self._info = info
        self._link = link
        self._rings = rings
        self._results = results
        self._clock = clock

    @property
    def name(self) -> str:
        return self._info.name

    @property
    def version(self) -> int:
        return self._info.version

    @property
    def manifest(self) -> ModelManifest:
        return self._info.manifest

    @property
    def ready(self) -> bool:
        return self._info.ready

    @property
    def runtime(self) -> str:
        return self._info.runtime

    @property
    def batching(self) -> BatchingConfig:
        return self._info.batching

    @property
    def max_queue_size(self) -> int:
        return self._info.batching.max_queue_size

    @property
    def max_batch_size(self) -> int:
        return self._info.batching.max_batch_size

    @property
    def preprocessing(self) -> PreprocessSpec:
        return self._info.manifest.preprocessing

    async def infer_many(
        self,
        tensors: Sequence[np.ndarray],
        deadline: float | None,
        on_start: OnStart | None = None,
        priority: int = 0,
    ) -> list[np.ndarray]:
        ring = self._rings.ring_for(self._info)
        try:
            slots = ring.put(list(tensors))
        except SlotsExhausted:
            raise Overloaded(RETRY_AFTER_S, ring.count - ring.free, ring.count, "no free tensor slot") from None
        header = {
            "op": "infer",
            "model": self.name,
            "version": self.version,
            "ring": ring.name,
            "ring_slots": ring.count,
            "slots": slots,
            "deadline": deadline,
            "priority": priority,
            "rid": request_id.get(),  # the owner's log lines for it carry its id too
        }
        # Past its deadline a request only waits for the batch it is in: a reply that never
        # comes (an owner stuck in a runtime) must not hold the request and its budgets forever.
        timeout = None if deadline is None else max(0.0, deadline - self._clock.now()) + ANSWER_GRACE_S
        release = partial(self._rings.release, ring, slots)
        answer, payload = await self._link.call(header, release=release, timeout_s=timeout)
        rows = np.frombuffer(payload, dtype=np.dtype(answer["dtype"])).reshape(answer["shape"])
        if on_start is not None and isinstance(answer.get("started"), float):
            on_start(answer["started"])  # the owner's monotonic clock is this host's, as deadlines are
        return list(rows)

    async def remembered(self, encoded: bytes, compute: Compute, offload: Offload) -> np.ndarray:
        if self._results is None:
            return await compute()
        return await self._results.remembered(encoded, compute, offload)


class Rings:
    """This worker's slot rings, one per model version it has sent images to. Named after the
    worker, so the supervisor can remove them if the worker dies; a retired version's ring is
    removed once the owner has answered for everything in it."""

    def __init__(self, prefix: str, link: OwnerLink) -> None:
        self._prefix = prefix
        self._link = link
        self._numbers = itertools.count()
        self._rings: dict[tuple[str, int], SlotRing] = {}
        self._retired: set[tuple[str, int]] = set()

    def ring_for(self, info: VersionInfo) -> SlotRing:
        key = (info.name, info.version)
        if key not in self._rings:
            # Room for the owner's whole queue plus the batches running beside it: the owner's
            # queue bound refuses before this worker runs out of slots.
            count = info.batching.max_queue_size + 3 * info.batching.max_batch_size
            name = f"{self._prefix}{next(self._numbers)}"
            try:
                self._rings[key] = SlotRing(info.manifest.item_shape, np.dtype(info.manifest.input.dtype), count, name)
            except SharedMemoryFull as exc:
                log.error("%s; give /dev/shm more room (a container: --shm-size, or a memory-backed emptyDir)", exc)
                raise ServiceError(
                    ErrorKind.UNAVAILABLE, "the server is out of shared memory for images", RETRY_AFTER_S
                ) from None
            self._retired.discard(key)
        return self._rings[key]

    def release(self, ring: SlotRing, slots: list[int]) -> None:
        ring.release(slots)
        self._drop_retired()

    def retire_all_but(self, live: set[tuple[str, int]]) -> None:
        self._retired = {key for key in self._rings if key not in live}
        self._drop_retired()

    def _drop_retired(self) -> None:
        for key in [k for k in self._retired if self._rings[k].free == self._rings[k].count]:
            ring = self._rings.pop(key)
            self._retired.discard(key)
            self._link.notify({"op": "forget_ring", "ring": ring.name})
            ring.close()

    def close(self) -> None:
        for ring in self._rings.values():
            ring.close()
        self._rings.clear()


class RemoteCatalog:
    """The owner's models, as this worker last heard of them (a ``ModelCatalog``), with the
    lifecycle the app runs (``start``, ``close``)."""

    def __init__(self, socket_path: Path, metrics: Metrics, clock: Clock, ring_prefix: str) -> None:
        self._metrics = metrics
        self._clock = clock
        self._link = OwnerLink(socket_path, self._update)
        self._rings = Rings(ring_prefix, self._link)
        self._snapshot: CatalogSnapshot | None = None
        self._serving: dict[str, dict[int, RemoteModel]] = {}
        self._caches: dict[tuple[str, int], CachedResults] = {}

    @property
    def catalog(self) -> RemoteCatalog:
        return self

    async def start(self) -> None:
        """Connect; return once the owner's catalog is known (a worker restarted beside ready
        ones must not answer "not ready" meanwhile), or after a few seconds without it."""
        self._link.start()
        await self._link.connected_once(FIRST_CATALOG_WAIT_S)

    async def close(self) -> None:
        await self._link.close()
        self._rings.close()

    def _results_for(self, info: VersionInfo) -> CachedResults | None:
        if info.cache_limits is None:
            return None
        key = (info.name, info.version)
        if key not in self._caches:
            max_entries, max_bytes = info.cache_limits
            self._caches[key] = CachedResults(
                info.name,
                info.version,
                ResultCache(max_entries, max_bytes),
                hits=self._metrics.cache.labels(info.name, str(info.version), "hit"),
                misses=self._metrics.cache.labels(info.name, str(info.version), "miss"),
            )
        return self._caches[key]

    def _update(self, snapshot: CatalogSnapshot | None) -> None:
        self._snapshot = snapshot
        serving: dict[str, dict[int, RemoteModel]] = {}
        for info in snapshot.versions if snapshot else []:
            model = RemoteModel(info, self._link, self._rings, self._results_for(info), self._clock)
            serving.setdefault(info.name, {})[info.version] = model
        self._serving = serving
        if snapshot is not None:
            # A retired version's cache goes with it, its ring once nothing is in flight in it.
            live = {(i.name, i.version) for i in snapshot.versions}
            self._caches = {k: v for k, v in self._caches.items() if k in live}
            self._rings.retire_all_but(live)

    @property
    def models(self) -> list[RemoteModel]:
        return [m for versions in self._serving.values() for m in versions.values()]

    @property
    def ready(self) -> bool:
        return bool(self._serving) and all(m.ready for m in self.models)

    @property
    def errors(self) -> dict[str, str]:
        return dict(self._snapshot.errors) if self._snapshot else {}

    @property
    def failed_models(self) -> list[str]:
        return list(self._snapshot.failed_models) if self._snapshot else []

    @property
    def repository_readable(self) -> bool:
        return self._snapshot.repository_readable if self._snapshot else True

    def get(self, name: str, version: int | None = None) -> RemoteModel:
        if self._snapshot is None:
            # As while one process loads its models: not ready yet, come back shortly.
            raise ServiceError(ErrorKind.NOT_READY, "the models are loading", retry_after=RETRY_AFTER_S)
        return pick_version(self._serving.get(name, {}), name, version, self._snapshot.loaded_once)

    async def reload(self, only: str | None = None) -> None:
        await self._link.call({"op": "reload", "only": only})

    async def unload(self, name: str) -> None:
        await self._link.call({"op": "unload", "name": name})
