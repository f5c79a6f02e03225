"""Metrics of several processes merged into one /metrics view, as ``imgserve serve --workers N``
runs them; and one process alone, unchanged.

prometheus_client picks its value class once, when it is imported, from the environment. This
test process imported it in single-process mode and stays there: every multiprocess check runs
in children started with the spawn context after ``prepare_multiprocess_dir`` (the supervisor's
call) put the directory in the environment, which monkeypatch restores afterwards."""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Iterator
from contextlib import contextmanager
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from server.metrics import (
    MULTIPROCESS_ENV,
    Metrics,
    forget_process,
    prepare_multiprocess_dir,
)

TIMEOUT_S = 60.0
ROUTE = "/v1/classify"
MODEL = "m"

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def _record(metrics: Metrics, n: int) -> None:
    """What one process records, scaled by ``n`` so that each process's share is visible."""
    metrics.requests.labels(ROUTE, "POST", "200").inc(n)
    metrics.request_seconds.labels(ROUTE).observe(0.001 * n)
    observer = metrics.batch_observer(MODEL, 1)
    observer.batch_done(n, [0.002] * n, run_seconds=0.01, failed=False)
    observer.queue_depth(n)
    observer.latency_model(per_item=n / 1000, fixed=n / 100)


def _child(role: str, conn: Connection) -> None:
    """A server process: one Metrics, then commands from the test until it stops or is killed."""
    metrics = Metrics()
    metrics.process_started(role)
    while True:
        command, argument = conn.recv()
        if command == "record":
            _record(metrics, argument)
            conn.send(None)
        elif command == "render":
            conn.send(metrics.render().decode())
        elif command == "same_instruments":
            conn.send(Metrics().requests is metrics.requests)
        else:  # stop
            conn.close()
            return


class _Child:
    def __init__(self, process: BaseProcess, conn: Connection) -> None:
        self.process = process
        self.conn = conn

    @property
    def pid(self) -> int:
        assert self.process.pid is not None
        return self.process.pid

    def call(self, command: str, argument: Any = None) -> Any:
        self.conn.send((command, argument))
        if not self.conn.poll(TIMEOUT_S):
            raise TimeoutError(f"child {self.pid} did not answer {command!r}")
        return self.conn.recv()

    def stop(self) -> None:
        self.conn.send(("stop", None))
        self.process.join(TIMEOUT_S)
        assert self.process.exitcode == 0

    def kill(self) -> None:
        self.process.kill()
        self.process.join(TIMEOUT_S)
        assert not self.process.is_alive()


@contextmanager
def _children(*roles: str) -> Iterator[list[_Child]]:
    context = multiprocessing.get_context("spawn")
    children: list[_Child] = []
    try:
        for role in roles:
            ours, theirs = context.Pipe()
            process = context.Process(target=_child, args=(role, theirs), daemon=True)
            process.start()
            theirs.close()
            children.append(_Child(process, ours))
        yield children
    finally:
        for child in children:
            if child.process.is_alive():
                child.process.kill()
            child.process.join(TIMEOUT_S)
            child.conn.close()


def _samples(text: str) -> Samples:
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def _without_process_metrics(text: str) -> list[str]:
    """The render without the process_* lines, whose CPU and memory move between two renders."""
    return [
        line for line in text.splitlines() if not line.startswith(("process_", "# HELP process_", "# TYPE process_"))
    ]


def _value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


def _roles(samples: Samples) -> dict[str, str]:
    """role -> pid, from the process start-time gauge."""
    found = [dict(labels) for name, labels in samples if name == "imgserve_process_start_time_seconds"]
    return {labels["role"]: labels["pid"] for labels in found}


@pytest.fixture
def metrics_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv(MULTIPROCESS_ENV, "")  # recorded as unset before: monkeypatch removes it afterwards
    return prepare_multiprocess_dir(tmp_path / "metrics")


def test_one_render_merges_every_process_and_a_forgotten_process_keeps_only_its_totals(metrics_dir: Path) -> None:
    with _children("worker-1", "model-owner") as (worker, owner):
        owner.call("record", 2)
        worker.call("record", 1)  # the latest fit: the latency model shows this one
        assert worker.call("same_instruments"), "a second Metrics in one process shares the first's instruments"

        merged = _samples(worker.call("render"))
        assert _value(merged, "imgserve_requests_total", route=ROUTE, method="POST", status="200") == 3
        assert _value(merged, "imgserve_request_duration_seconds_count", route=ROUTE) == 2
        assert _value(merged, "imgserve_request_duration_seconds_sum", route=ROUTE) == pytest.approx(0.003)
        assert _value(merged, "imgserve_batch_size_count", model=MODEL, version="1") == 2
        assert _value(merged, "imgserve_batch_size_sum", model=MODEL, version="1") == 3
        assert _value(merged, "imgserve_batch_size_bucket", model=MODEL, version="1", le="2.0") == 2
        assert _value(merged, "imgserve_batch_size_bucket", model=MODEL, version="1", le="1.0") == 1
        assert _value(merged, "imgserve_queue_wait_seconds_count", model=MODEL, version="1") == 3
        assert _value(merged, "imgserve_queue_depth", model=MODEL, version="1") == 3  # livesum
        assert (
            _value(merged, "imgserve_batch_latency_model_seconds", model=MODEL, version="1", term="per_image") == 0.001
        )
        assert _roles(merged) == {"worker-1": str(worker.pid), "model-owner": str(owner.pid)}
        assert _without_process_metrics(owner.call("render")) == _without_process_metrics(worker.call("render"))
        # Each live process's own CPU and memory, whichever process the scrape reached.
        for role, child in (("worker-1", worker), ("model-owner", owner)):
            assert (_value(merged, "process_resident_memory_bytes", role=role, pid=str(child.pid)) or 0) > 1e6
            assert _value(merged, "process_cpu_seconds_total", role=role, pid=str(child.pid)) is not None

        worker.kill()
        dead = _samples(owner.call("render"))
        assert _value(dead, "imgserve_queue_depth", model=MODEL, version="1") == 3, (
            "a dead process counts until forgotten"
        )

        forget_process(worker.pid)
        after = _samples(owner.call("render"))
        assert _value(after, "imgserve_requests_total", route=ROUTE, method="POST", status="200") == 3
        assert _value(after, "imgserve_batch_size_count", model=MODEL, version="1") == 2
        assert _value(after, "imgserve_queue_wait_seconds_count", model=MODEL, version="1") == 3
        assert _value(after, "imgserve_queue_depth", model=MODEL, version="1") == 2
        assert (
            _value(after, "imgserve_batch_latency_model_seconds", model=MODEL, version="1", term="per_image") == 0.002
        )
        assert _value(after, "imgserve_batch_latency_model_seconds", model=MODEL, version="1", term="fixed") == 0.02
        assert _roles(after) == {"model-owner": str(owner.pid)}
        assert {dict(labels)["pid"] for name, labels in after if name == "process_resident_memory_bytes"} == {
            str(owner.pid)
        }

        # A restarted worker (a new pid) adds to the same totals.
        with _children("worker-1") as (restarted,):
            restarted.call("record", 4)
            again = _samples(restarted.call("render"))
        assert _value(again, "imgserve_requests_total", route=ROUTE, method="POST", status="200") == 7
        assert _roles(again)["worker-1"] == str(restarted.pid)
        owner.stop()


def test_preparing_the_directory_clears_an_earlier_runs_samples(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(MULTIPROCESS_ENV, "")
    directory = tmp_path / "metrics"
    directory.mkdir()
    (directory / "counter_123.db").write_bytes(b"stale")
    (directory / "README").write_text("kept")
    prepared = prepare_multiprocess_dir(directory)
    assert prepared == directory.resolve()
    assert sorted(p.name for p in directory.iterdir()) == ["README"]
    assert os.environ[MULTIPROCESS_ENV] == str(prepared)


def test_setting_the_directory_after_prometheus_client_was_imported_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(MULTIPROCESS_ENV, str(tmp_path))
    with pytest.raises(RuntimeError, match="after prometheus_client was imported"):
        Metrics()


def test_one_process_alone_keeps_a_registry_per_app() -> None:
    first, second = Metrics(), Metrics()
    first.requests.labels(ROUTE, "GET", "200").inc()
    first.batch_observer(MODEL, 1).queue_depth(5)
    first.process_started("worker-1")
    labels = {"route": ROUTE, "method": "GET", "status": "200"}
    assert first.registry.get_sample_value("imgserve_requests_total", labels) == 1
    assert second.registry.get_sample_value("imgserve_requests_total", labels) is None
    assert second.registry.get_sample_value("imgserve_queue_depth", {"model": MODEL, "version": "1"}) is None
    rendered, other = _samples(first.render().decode()), _samples(second.render().decode())
    assert _value(rendered, "imgserve_requests_total", route=ROUTE, method="GET", status="200") == 1
    assert _value(rendered, "imgserve_queue_depth", model=MODEL, version="1") == 5
    assert _value(rendered, "imgserve_process_start_time_seconds", role="worker-1")  # no pid label alone
    assert _value(other, "imgserve_requests_total", route=ROUTE, method="GET", status="200") is None
