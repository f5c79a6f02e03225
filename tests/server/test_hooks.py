"""Prediction hooks: found through a real entry point, called off the caller's thread, and
never able to slow, fail or hold up the caller."""

from __future__ import annotations

import logging
import queue
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, Counter

from server.hooks import ENTRY_POINT_GROUP, LOG_INTERVAL_S, PredictionHooks, load_hooks

RESULT = {"model": "m", "predictions": [{"label": "tabby", "score": 0.9}]}
WAIT_S = 5.0  # bound on every wait for a hook thread; a passing test waits far less


class Dropped:
    """A fresh drop counter, and its value."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.counter = Counter("imgserve_prediction_hook_drops", "Dropped notifications.", registry=self.registry)

    @property
    def value(self) -> float:
        return self.registry.get_sample_value("imgserve_prediction_hook_drops_total") or 0.0


class Recorder:
    def __init__(self) -> None:
        self.received: queue.Queue[tuple[str, dict[str, Any]]] = queue.Queue()

    def on_prediction_complete(self, request_id: str, result: dict[str, Any]) -> None:
        self.received.put((request_id, result))

    def take(self, count: int) -> list[str]:
        return [self.received.get(timeout=WAIT_S)[0] for _ in range(count)]


class Gate:
    """A hook that blocks until released (at most ``WAIT_S``), saying when it has started."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()
        self.calls: list[str] = []

    def on_prediction_complete(self, request_id: str, result: dict[str, Any]) -> None:
        self.calls.append(request_id)
        self.entered.set()
        self.release.wait(timeout=WAIT_S)


class Raiser:
    def on_prediction_complete(self, request_id: str, result: dict[str, Any]) -> None:
        raise RuntimeError(f"hook broke on {request_id}")


class Mutator:
    def on_prediction_complete(self, request_id: str, result: dict[str, Any]) -> None:
        result["predictions"].clear()


@pytest.fixture
def gate() -> Iterator[Gate]:
    hook = Gate()
    yield hook
    hook.release.set()


def failures_logged(caplog: pytest.LogCaptureFixture, name: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "server.hooks" and f"prediction hook {name} failed" in r.message]


# Discovery through a real entry point.

HOOK_MODULE = """
import queue

received = queue.Queue()


class Recorder:
    def on_prediction_complete(self, request_id, result):
        received.put(("class", request_id))


class _Instance:
    def on_prediction_complete(self, request_id, result):
        received.put(("object", request_id))


OBJECT = _Instance()
NOT_A_HOOK = 42


class Broken:
    def __init__(self):
        raise RuntimeError("cannot start")
"""


@pytest.fixture
def installed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A distribution on sys.path whose entry points name good and broken hooks; the module's name."""
    module = f"imgserve_test_hooks_{uuid.uuid4().hex[:12]}"
    (tmp_path / f"{module}.py").write_text(HOOK_MODULE)
    dist_info = tmp_path / f"{module}-1.0.dist-info"
    dist_info.mkdir()
    (dist_info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {module}\nVersion: 1.0\n")
    (dist_info / "entry_points.txt").write_text(
        f"[{ENTRY_POINT_GROUP}]\n"
        f"recorder = {module}:Recorder\n"
        f"object = {module}:OBJECT\n"
        f"broken = {module}:Broken\n"
        f"missing = {module}:Nowhere\n"
        f"not_a_hook = {module}:NOT_A_HOOK\n"
        "no_module = imgserve_no_such_module_anywhere:Hook\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    return module


def test_hooks_installed_as_entry_points_receive_notifications(
    installed: str, caplog: pytest.LogCaptureFixture
) -> None:
    import importlib

    caplog.set_level(logging.INFO, logger="server.hooks")
    dropped = Dropped()
    hooks = PredictionHooks.from_entry_points(dropped.counter)
    try:
        ours = [name for name in hooks.names if name in {"recorder", "object"}]
        assert sorted(ours) == ["object", "recorder"]
        hooks.notify("req-1", RESULT)
        received = importlib.import_module(installed).received
        got = {received.get(timeout=WAIT_S), received.get(timeout=WAIT_S)}
        assert got == {("class", "req-1"), ("object", "req-1")}
    finally:
        assert hooks.close(timeout_s=WAIT_S)
    skipped = {r.message.split()[2] for r in caplog.records if "skipped" in r.message}
    assert {"broken", "missing", "not_a_hook", "no_module"} <= skipped
    assert dropped.value == 0


def test_load_hooks_skips_what_fails_to_load(installed: str) -> None:
    names = [name for name, _ in load_hooks()]
    assert "recorder" in names and "object" in names
    assert not {"broken", "missing", "not_a_hook", "no_module"} & set(names)


# Behaviour under failing, slow and stuck hooks.


def test_a_hook_that_raises_does_not_affect_the_caller_or_the_others(caplog: pytest.LogCaptureFixture) -> None:
    now = [1000.0]
    recorder = Recorder()
    hooks = PredictionHooks(
        [("raiser", Raiser()), ("recorder", recorder)], Dropped().counter, threads=1, clock=lambda: now[0]
    )
    try:
        for i in range(5):
            hooks.notify(f"req-{i}", RESULT)  # raises nothing
        assert recorder.take(5) == [f"req-{i}" for i in range(5)]
        assert len(failures_logged(caplog, "raiser")) == 1  # not once per call
        now[0] += LOG_INTERVAL_S + 1
        hooks.notify("req-5", RESULT)
        assert recorder.take(1) == ["req-5"]
    finally:
        assert hooks.close(timeout_s=WAIT_S)
    logged = failures_logged(caplog, "raiser")
    assert len(logged) == 2 and "4 more since the last report" in logged[1].message
    assert logged[0].exc_info is not None  # with the hook's traceback


def test_each_hook_gets_its_own_copy_of_the_result() -> None:
    recorder = Recorder()
    hooks = PredictionHooks([("mutator", Mutator()), ("recorder", recorder)], Dropped().counter, threads=1)
    try:
        hooks.notify("req-1", RESULT)
        _, seen = recorder.received.get(timeout=WAIT_S)
    finally:
        assert hooks.close(timeout_s=WAIT_S)
    assert seen == RESULT and RESULT["predictions"]


def test_notify_does_not_wait_for_a_slow_hook(gate: Gate) -> None:
    dropped = Dropped()
    hooks = PredictionHooks([("slow", gate)], dropped.counter, threads=2, max_queued=100)
    try:
        started = time.perf_counter()
        for i in range(50):
            hooks.notify(f"req-{i}", RESULT)
            assert time.perf_counter() - started < 0.5  # 50 calls in all; fails at the first blocking one
        assert gate.entered.wait(WAIT_S)  # the hook is running, and blocked
        assert dropped.value == 0
    finally:
        gate.release.set()
        assert hooks.close(timeout_s=WAIT_S)
    assert sorted(gate.calls) == sorted(f"req-{i}" for i in range(50))  # closing drained the queue


def test_a_full_queue_drops_and_counts(gate: Gate) -> None:
    dropped = Dropped()
    hooks = PredictionHooks([("gate", gate)], dropped.counter, threads=1, max_queued=4)
    try:
        hooks.notify("req-0", RESULT)
        assert gate.entered.wait(WAIT_S)  # the one thread is busy with req-0
        for i in range(1, 8):
            hooks.notify(f"req-{i}", RESULT)  # 1-4 are queued, 5-7 find the queue full
        assert dropped.value == 3
    finally:
        gate.release.set()
        assert hooks.close(timeout_s=WAIT_S)
    assert gate.calls == [f"req-{i}" for i in range(5)]


def test_close_returns_within_its_bound_with_a_stuck_hook(gate: Gate) -> None:
    dropped = Dropped()
    hooks = PredictionHooks([("stuck", gate)], dropped.counter, threads=1)
    hooks.notify("req-0", RESULT)
    assert gate.entered.wait(WAIT_S)
    hooks.notify("req-1", RESULT)
    hooks.notify("req-2", RESULT)
    started = time.monotonic()
    assert hooks.close(timeout_s=0.2) is False
    assert time.monotonic() - started < 1.0
    assert dropped.value == 2  # what was still queued is dropped, and counted
    hooks.notify("req-3", RESULT)  # after close: dropped too
    assert dropped.value == 3
    gate.release.set()
    for thread in threading.enumerate():
        if thread.name.startswith("imgserve-hook-"):
            thread.join(WAIT_S)
    assert gate.calls == ["req-0"]  # once free, the thread ended without taking the dropped ones


def test_without_hooks_no_thread_starts() -> None:
    before = {t.name for t in threading.enumerate()}
    hooks = PredictionHooks([], Dropped().counter)
    hooks.notify("req-1", RESULT)
    assert {t.name for t in threading.enumerate()} - before == set()
    assert hooks.close(timeout_s=0.1)
