"""A one-thread executor whose thread is a daemon.

A model call that never returns (a runtime stuck in ``predict``) must not keep the process
alive: ``ThreadPoolExecutor`` threads are joined when the interpreter exits, so one stuck call
would hang ``imgserve serve`` after shutdown forever. A daemon thread is abandoned at exit.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from concurrent.futures import Executor, Future
from typing import Any, TypeVar

T = TypeVar("T")

_Work = tuple[Future[Any], Callable[..., Any], tuple[Any, ...], dict[str, Any]]


class DaemonWorker(Executor):
    def __init__(self, name: str) -> None:
        self._work: queue.SimpleQueue[_Work | None] = queue.SimpleQueue()
        self._closed = False
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._serve, name=name, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while (work := self._work.get()) is not None:
            future, fn, args, kwargs = work
            del work
            if future.set_running_or_notify_cancel():
                try:
                    future.set_result(fn(*args, **kwargs))
                except BaseException as exc:
                    future.set_exception(exc)
            # An idle worker must not keep its last batch (and its result) alive.
            del future, fn, args, kwargs

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> Future[T]:
        with self._lock:
            if self._closed:
                raise RuntimeError("cannot submit to a worker that was shut down")
            future: Future[T] = Future()
            self._work.put((future, fn, args, kwargs))
            return future

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        with self._lock:
            if not self._closed:
                self._closed = True
                if cancel_futures:
                    self._cancel_queued()
                self._work.put(None)  # after the calls already queued
        if wait:
            self._thread.join()

    def _cancel_queued(self) -> None:
        try:
            while (work := self._work.get_nowait()) is not None:
                work[0].cancel()
        except queue.Empty:
            pass
