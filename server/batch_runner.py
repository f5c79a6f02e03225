"""Runs batches on a runtime: assembles the batch on one thread, runs the model on another,
and releases both and the runtime at the end, off the event loop and within a bound."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import numpy as np

from batching import BatchingConfig
from server.daemon_worker import DaemonWorker
from server.metrics import ModelBatchMetrics
from server.runtimes import Runtime

log = logging.getLogger(__name__)

A = TypeVar("A")
B = TypeVar("B")
V = TypeVar("V")


@dataclass(frozen=True)
class _Timed(Generic[V]):
    """A step's result and how long the step took (seconds), for the model statistics."""

    value: V
    seconds: float
    input_s: float = 0.0
    """For the model's outputs: how long assembling their batch took."""


class BatchRunner:
    def __init__(
        self,
        label: str,
        runtime: Runtime,
        item_shape: tuple[int, ...],
        dtype: np.dtype[Any],
        batching: BatchingConfig,
        metrics: ModelBatchMetrics | None = None,
    ) -> None:
        self._label = label
        self._runtime = runtime
        self._item_shape = item_shape
        self._dtype = dtype
        self._batching = batching
        self._metrics = metrics
        # Host work (stacking, padding) and model compute each get their own thread, so with
        # two batches in flight the next is assembled while the current one runs; neither
        # ever blocks the event loop. Daemon threads: a runtime stuck in predict must not keep
        # the process from exiting.
        self._assembler = DaemonWorker(f"assemble-{label}")
        self._executor = DaemonWorker(f"infer-{label}")

    def _assemble(self, items: list[np.ndarray]) -> _Timed[np.ndarray]:
        """Stack into one array of the padded batch size; padding rows stay zero."""
        started = time.perf_counter()
        rows = self._batching.padded_size(len(items))
        batch = np.zeros((rows, *self._item_shape), dtype=self._dtype)
        np.stack(items, out=batch[: len(items)])
        if self._metrics is not None:
            self._metrics.padded(len(items), rows)
        return _Timed(batch, time.perf_counter() - started)

    async def run(self, items: list[np.ndarray]) -> list[np.ndarray]:
        """The batcher's batch function: one output row per item.

        The assembled batch goes from the assembling thread straight to the model's thread: the
        event loop, busy with HTTP under load, is woken once per batch (for the outputs), not
        once more in between to pass the batch on."""
        predicted = await asyncio.wrap_future(_then(self._assembler.submit(self._assemble, items), self._predict))
        started = time.perf_counter()
        rows = list(predicted.value[: len(items)])
        if self._metrics is not None:
            output_s = time.perf_counter() - started
            self._metrics.batch_phases(len(items), predicted.input_s, predicted.seconds, output_s)
        return rows

    def _predict(self, assembled: _Timed[np.ndarray]) -> Future[_Timed[np.ndarray]]:
        def predict() -> _Timed[np.ndarray]:
            started = time.perf_counter()
            outputs = self._runtime.predict(assembled.value)
            return _Timed(outputs, time.perf_counter() - started, input_s=assembled.seconds)

        return self._executor.submit(predict)

    async def warm_up(self) -> None:
        """Run every batch shape the runtime will be called with, so no live request pays
        for a first-call allocation or kernel selection."""
        loop = asyncio.get_running_loop()
        for rows in self._batching.batch_shapes:
            batch = np.zeros((rows, *self._item_shape), dtype=self._dtype)
            await loop.run_in_executor(self._executor, self._runtime.predict, batch)

    def _release(self) -> None:
        self._assembler.shutdown(wait=True)
        self._executor.shutdown(wait=True)
        self._runtime.close()

    async def close(self, timeout_s: float) -> None:
        """Release the threads and the runtime. A runtime that hangs in ``predict`` or ``close``
        is logged and left behind after ``timeout_s``: shutdown must end."""
        try:
            released = await _ended_within(self._release, timeout_s, f"release-{self._label}")
        except Exception:
            log.exception("%s: releasing the runtime failed", self._label)
            return
        if not released:
            log.error("%s: the runtime did not release within %.1f s; leaving it behind", self._label, timeout_s)


async def _ended_within(call: Callable[[], None], timeout_s: float, name: str) -> bool:
    """Run ``call`` on a daemon thread, and wait at most ``timeout_s`` for it to end.

    Not ``asyncio.to_thread``: a thread of an executor that never ends would block the
    executor's shutdown, and the interpreter's exit, forever; a daemon thread does neither.
    """
    loop = asyncio.get_running_loop()
    ended: asyncio.Future[None] = loop.create_future()

    def settle(error: BaseException | None) -> None:
        if ended.done():
            return
        if error is None:
            ended.set_result(None)
        else:
            ended.set_exception(error)

    def target() -> None:
        error: BaseException | None = None
        try:
            call()
        except BaseException as exc:
            error = exc
        with contextlib.suppress(RuntimeError):  # the loop closed while we hung: nobody waits
            loop.call_soon_threadsafe(settle, error)

    threading.Thread(target=target, name=name, daemon=True).start()
    try:
        await asyncio.wait_for(asyncio.shield(ended), timeout_s)
    except asyncio.TimeoutError:
        return False
    finally:
        # Timed out, or cancelled from outside: what the thread reports later goes nowhere
        # (and is not logged as an exception never retrieved). A no-op once it has ended.
        ended.cancel()
    return True


def _cancelled_step_error() -> RuntimeError:
    # An ordinary error, not CancelledError: the batcher answers its callers for an Exception,
    # and a CancelledError (a BaseException) would leave them waiting.
    return RuntimeError("the batch was cancelled by its worker's shutdown")


def _then(first: Future[A], next_step: Callable[[A], Future[B]]) -> Future[B]:
    """A future of ``next_step(first's result)``'s result, started from the thread that
    completes ``first``; a failure of either step becomes its failure."""
    result: Future[B] = Future()

    def settle(step: Future[B]) -> None:
        if step.cancelled():
            result.set_exception(_cancelled_step_error())
        elif (error := step.exception()) is not None:
            result.set_exception(error)
        else:
            result.set_result(step.result())

    def start(done: Future[A]) -> None:
        # Running from here on: a caller that gives up waiting can no longer cancel it (as with
        # an executor's future), so the steps below never settle a cancelled future.
        if not result.set_running_or_notify_cancel():
            return  # cancelled while the first step ran
        if done.cancelled():
            result.set_exception(_cancelled_step_error())
        elif (error := done.exception()) is not None:
            result.set_exception(error)
        else:
            try:
                next_step(done.result()).add_done_callback(settle)
            except BaseException as exc:  # the worker was shut down
                result.set_exception(exc)

    first.add_done_callback(start)
    return result
