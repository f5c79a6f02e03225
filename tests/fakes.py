"""Test doubles: a clock that moves only when told, and a batch runner the test controls."""

from __future__ import annotations

import asyncio
import threading
from typing import Any, Sequence

import numpy as np


async def settle(rounds: int = 20) -> None:
    """Let every ready task run until the loop is idle again (no wall-clock sleeping)."""
    for _ in range(rounds):
        await asyncio.sleep(0)


class ManualClock:
    def __init__(self, start: float = 100.0) -> None:
        self._now = start
        self._timers: list[tuple[float, asyncio.Future[None]]] = []

    def now(self) -> float:
        return self._now

    def advance(self, seconds: float) -> None:
        self._now += seconds
        for until, timer in self._timers:
            if until <= self._now and not timer.done():
                timer.set_result(None)

    async def wait(self, event: asyncio.Event, until: float | None) -> None:
        if until is None:
            await event.wait()
            return
        if until <= self._now:
            return
        timer: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (until, timer)
        self._timers.append(entry)
        event_task = asyncio.ensure_future(event.wait())
        try:
            waiters: set[asyncio.Future[Any]] = {event_task, timer}
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        finally:
            event_task.cancel()
            self._timers.remove(entry)


class FakeRunner:
    """Records each batch; with ``hold=True`` every call waits until the test releases it.

    Results are ``item * 10``; an item equal to ``poison`` makes the whole call raise, as a
    corrupt tensor would make a real runtime fail the batch it is in.
    """

    def __init__(self, hold: bool = False, poison: object = None) -> None:
        self.hold = hold
        self.poison = poison
        self.calls: list[list[int]] = []
        self._gates: list[asyncio.Event] = []

    async def __call__(self, items: list[int]) -> Sequence[int]:
        self.calls.append(list(items))
        if self.hold:
            gate = asyncio.Event()
            self._gates.append(gate)
            await gate.wait()
        if self.poison is not None and self.poison in items:
            raise ValueError(f"cannot run item {self.poison}")
        return [i * 10 for i in items]

    def release(self) -> None:
        """Let the oldest waiting call finish."""
        self._gates.pop(0).set()

    @property
    def waiting(self) -> int:
        return len(self._gates)


class RecordingObserver:
    def __init__(self) -> None:
        self.batch_sizes: list[int] = []
        self.failed_batches = 0
        self.rejected_cost = 0
        self.expired_count = 0
        self.abandoned_count = 0
        self.depths: list[int] = []
        self.latency = (0.0, 0.0)

    def batch_done(self, size: int, queue_waits: Sequence[float], run_seconds: float, failed: bool) -> None:
        self.batch_sizes.append(size)
        self.failed_batches += failed

    def queue_depth(self, cost: int) -> None:
        self.depths.append(cost)

    def rejected(self, cost: int) -> None:
        self.rejected_cost += cost

    def expired(self, count: int) -> None:
        self.expired_count += count

    def abandoned(self, count: int) -> None:
        self.abandoned_count += count

    def latency_model(self, per_item: float, fixed: float) -> None:
        self.latency = (per_item, fixed)


class GatedRuntime:
    """A runtime whose ``predict`` blocks (on the inference thread) while the gate is shut.

    Scores put all mass on class ``pixel % classes`` of each image's first pixel. An image
    whose first pixel is ``poison`` makes the whole batch raise, like a runtime fault.
    """

    def __init__(self, classes: int = 10, poison: int = 13) -> None:
        self.classes = classes
        self.poison = poison
        self.gate = threading.Event()
        self.gate.set()
        self.batch_sizes: list[int] = []
        self.entered = 0  # calls that reached predict, finished or still blocked
        self.seen: list[int] = []  # first pixel of every row run, padding included

    def predict(self, batch: Any) -> Any:
        self.entered += 1
        if not self.gate.wait(timeout=30):
            raise TimeoutError("test never opened the gate")
        self.batch_sizes.append(len(batch))
        first = batch[:, 0, 0, 0].astype(int)
        self.seen.extend(first.tolist())
        if (first == self.poison).any():
            raise RuntimeError("poisoned input")
        out = np.zeros((len(batch), self.classes), np.float32)
        out[np.arange(len(batch)), first % self.classes] = 1.0
        return out

    def close(self) -> None:
        pass


def fake_manifest(name: str = "m", version: int = 1, classes: int = 10, runtime: str = "tensorflow") -> Any:
    """A manifest for 8x8 RGB images and ``classes`` classes named ``class<i>``."""
    from model_contract.manifest import ModelManifest

    return ModelManifest.model_validate(
        {
            "name": name,
            "version": version,
            "runtime": runtime,
            "artifact": "",
            "input": {"name": "images", "dtype": "uint8", "shape": [-1, 8, 8, 3]},
            "output": {"name": "probabilities", "dtype": "float32", "shape": [-1, classes]},
            "preprocessing": {"resize_shorter_side": 8, "crop_size": 8},
            "labels": [f"class{i}" for i in range(classes)],
        }
    )


class FakeModel:
    """A ``ServedModel`` on a real micro-batcher and the test's clock. Each batch goes through a
    ``FakeRunner`` over the images' first pixels, which the test can hold (``hold=True``) and
    poison (an image whose first pixel is ``poison`` fails its batch). An image's output puts
    most of its mass on class ``first pixel % classes`` and the rest on the class after it.
    """

    def __init__(
        self,
        manifest: Any,
        clock: Any,
        *,
        runtime: str = "fake",
        max_batch_size: int = 4,
        max_queue_size: int = 16,
        results: Any = None,
        hold: bool = False,
        poison: int | None = None,
    ) -> None:
        from batching import BatchingConfig, MicroBatcher

        self.manifest = manifest
        self.runtime = runtime
        self.ready = True
        self.runner = FakeRunner(hold=hold, poison=poison)
        self._results = results
        config = BatchingConfig(max_batch_size=max_batch_size, max_queue_size=max_queue_size)
        self._batcher: Any = MicroBatcher(self._run, config, clock=clock)
        self._batcher.start()

    @property
    def name(self) -> str:
        return str(self.manifest.name)

    @property
    def version(self) -> int:
        return int(self.manifest.version)

    @property
    def preprocessing(self) -> Any:
        return self.manifest.preprocessing

    @property
    def batching(self) -> Any:
        return self._batcher.config

    @property
    def max_queue_size(self) -> int:
        return int(self._batcher.config.max_queue_size)

    @property
    def max_batch_size(self) -> int:
        return int(self._batcher.config.max_batch_size)

    @property
    def queued(self) -> int:
        """Images waiting for a batch."""
        return int(self._batcher.queued_cost)

    @property
    def batches(self) -> list[int]:
        """The size of every batch that reached the "model"."""
        return [len(call) for call in self.runner.calls]

    async def _run(self, items: list[np.ndarray]) -> list[np.ndarray]:
        first = [int(item[0, 0, 0]) for item in items]
        await self.runner(first)  # held while the test holds it; raises if poisoned
        classes = len(self.manifest.labels)
        out = np.zeros((len(items), classes), np.float32)
        out[np.arange(len(items)), [f % classes for f in first]] = 0.75
        out[np.arange(len(items)), [(f + 1) % classes for f in first]] = 0.25
        return list(out)

    def release(self) -> None:
        """Let the oldest held batch finish."""
        self.runner.release()

    async def infer_many(
        self, tensors: Sequence[np.ndarray], deadline: float | None, on_start: Any = None, priority: int = 0
    ) -> list[np.ndarray]:
        result: list[np.ndarray] = await self._batcher.submit_many(
            tensors, deadline=deadline, on_start=on_start, priority=priority
        )
        return result

    async def remembered(self, encoded: bytes, compute: Any, offload: Any) -> np.ndarray:
        if self._results is None:
            return await compute()  # type: ignore[no-any-return]
        return await self._results.remembered(encoded, compute, offload)  # type: ignore[no-any-return]

    async def retire(self) -> None:
        """As a reload does: stop intake; anything sent from now on gets ``BatcherClosed``."""
        await self._batcher.close(0)


class FakeCatalog:
    """A ``ModelCatalog`` over the models the test hands it; the newest version is the default."""

    def __init__(self, *models: Any) -> None:
        self.serving: list[Any] = list(models)
        self.errors: dict[str, str] = {}
        self.repository_readable = True
        self.reloads: list[str | None] = []
        self.unloaded: list[str] = []
        self.lookups = 0

    @property
    def models(self) -> list[Any]:
        return list(self.serving)

    @property
    def ready(self) -> bool:
        return bool(self.serving) and all(m.ready for m in self.serving)

    @property
    def failed_models(self) -> list[str]:
        return sorted(self.errors)

    def get(self, name: str, version: int | None = None) -> Any:
        from model_contract.errors import ErrorKind, ServiceError

        self.lookups += 1
        versions = [m for m in self.serving if m.name == name and version in (None, m.version)]
        if not versions:
            raise ServiceError(ErrorKind.MODEL_NOT_FOUND, f"no model named {name!r}")
        return max(versions, key=lambda m: m.version)

    async def reload(self, only: str | None = None) -> None:
        self.reloads.append(only)

    async def unload(self, name: str) -> None:
        self.unloaded.append(name)
        self.serving = [m for m in self.serving if m.name != name]
