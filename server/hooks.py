"""In-process prediction hooks: code a deployment installs as a Python package, called with each
prediction's result, off the request path.

A hook is an entry point in the group ``imgserve.prediction_callbacks`` that names a class
(instantiated with no arguments) or an object, with an ``on_prediction_complete`` method::

    [project.entry-points."imgserve.prediction_callbacks"]
    audit = "my_package.hooks:AuditLog"

``PredictionHooks.notify`` never blocks or fails its caller: it queues the call (a bounded queue)
for a few daemon threads, since hooks may do blocking I/O. When the queue is full the
notification is dropped and counted on the ``dropped`` Counter the server passes in. A hook that
raises is logged at most once a minute (with how many failures it had meanwhile), and the other
hooks still run. Hooks run one after another for each notification, and notifications run in
parallel on the threads: a slow hook delays later notifications, never a request. Each hook gets
its own deep copy of the result; the caller hands the dict over and must not change it after.
"""

from __future__ import annotations

import copy
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from importlib.metadata import entry_points
from typing import Any, Protocol

from prometheus_client import Counter

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "imgserve.prediction_callbacks"
LOG_INTERVAL_S = 60.0
"""A failing hook, or a full queue, is logged at most this often."""


class PredictionCallback(Protocol):
    def on_prediction_complete(self, request_id: str, result: dict[str, Any]) -> None: ...


def load_hooks(group: str = ENTRY_POINT_GROUP) -> list[tuple[str, PredictionCallback]]:
    """The installed hooks, by entry point name. One that fails to load is logged and skipped:
    a broken plugin must not keep the server from starting."""
    hooks: list[tuple[str, PredictionCallback]] = []
    for entry in entry_points(group=group):
        try:
            loaded = entry.load()
            hook = loaded() if isinstance(loaded, type) else loaded
        except Exception:
            log.exception("prediction hook %s (%s) failed to load; skipped", entry.name, entry.value)
            continue
        if not callable(getattr(hook, "on_prediction_complete", None)):
            log.error("prediction hook %s (%s) has no on_prediction_complete method; skipped", entry.name, entry.value)
            continue
        log.info("prediction hook %s loaded (%s)", entry.name, entry.value)
        hooks.append((entry.name, hook))
    return hooks


class _Throttle:
    """Whether a log line about ``key`` is due, and how many were held back since the last."""

    def __init__(self, clock: Callable[[], float], interval_s: float) -> None:
        self._clock = clock
        self._interval_s = interval_s
        self._last: dict[str, float] = {}
        self._held: dict[str, int] = {}
        self._lock = threading.Lock()

    def due(self, key: str) -> int | None:
        """None: stay quiet; else the number of occurrences not logged since the last line."""
        now = self._clock()
        with self._lock:
            last = self._last.get(key)
            if last is not None and now - last < self._interval_s:
                self._held[key] = self._held.get(key, 0) + 1
                return None
            self._last[key] = now
            return self._held.pop(key, 0)


def _meanwhile(held: int) -> str:
    return f" ({held} more since the last report)" if held else ""


class PredictionHooks:
    """The process's hooks and the threads that call them. Create once; ``close`` at shutdown.
    With no hooks it starts no thread and ``notify`` returns at once."""

    def __init__(
        self,
        hooks: Sequence[tuple[str, PredictionCallback]],
        dropped: Counter,
        *,
        max_queued: int = 1024,
        threads: int = 2,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_queued < 1 or threads < 1:
            raise ValueError("hooks need a queue of at least one and at least one thread")
        self._hooks = list(hooks)
        self._dropped = dropped
        self._max_queued = max_queued
        self._queue: deque[tuple[str, dict[str, Any]]] = deque()
        self._ready = threading.Condition()
        self._closing = False
        self._throttle = _Throttle(clock, LOG_INTERVAL_S)
        count = threads if self._hooks else 0
        self._threads = [
            threading.Thread(target=self._serve, name=f"imgserve-hook-{i}", daemon=True) for i in range(count)
        ]
        for thread in self._threads:
            thread.start()

    @classmethod
    def from_entry_points(cls, dropped: Counter, **options: Any) -> PredictionHooks:
        return cls(load_hooks(), dropped, **options)

    @property
    def names(self) -> list[str]:
        return [name for name, _ in self._hooks]

    def notify(self, request_id: str, result: dict[str, Any]) -> None:
        """Queue the result for every hook; drop it (counted) when the queue is full or closed."""
        if not self._hooks:
            return
        with self._ready:
            if not self._closing and len(self._queue) < self._max_queued:
                self._queue.append((request_id, result))
                self._ready.notify()
                return
            closing = self._closing
        self._dropped.inc()
        if not closing and (held := self._throttle.due("queue full")) is not None:
            log.warning(
                "prediction hooks' queue is full (%d): notification dropped%s", self._max_queued, _meanwhile(held)
            )

    def close(self, timeout_s: float = 5.0) -> bool:
        """Stop taking notifications, let the threads finish what is queued for up to
        ``timeout_s``, then drop the rest. False when a hook was still running at the end (its
        thread is a daemon: it does not hold the process up)."""
        deadline = time.monotonic() + timeout_s
        with self._ready:
            self._closing = True
            self._ready.notify_all()
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        busy = sum(thread.is_alive() for thread in self._threads)
        if not busy:
            return True
        with self._ready:
            left = len(self._queue)
            self._queue.clear()
        if left:
            self._dropped.inc(left)
        log.warning(
            "prediction hooks: %d thread(s) still in a hook after %.1fs; %d notification(s) dropped",
            busy,
            timeout_s,
            left,
        )
        return False

    def _serve(self) -> None:
        while True:
            with self._ready:
                while not self._queue and not self._closing:
                    self._ready.wait()
                if not self._queue:  # closing, and nothing left (or what was left dropped)
                    return
                request_id, result = self._queue.popleft()
            for name, hook in self._hooks:
                self._call(name, hook, request_id, result)

    def _call(self, name: str, hook: PredictionCallback, request_id: str, result: dict[str, Any]) -> None:
        try:
            # Its own copy: a hook that changes the dict must not change what the next one sees.
            hook.on_prediction_complete(request_id, copy.deepcopy(result))
        except Exception:
            held = self._throttle.due(name)
            if held is not None:
                log.exception("prediction hook %s failed on request %s%s", name, request_id, _meanwhile(held))
