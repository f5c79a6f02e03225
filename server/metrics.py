"""Prometheus metrics: a registry per app in one process, or one merged view of many processes.

With no multiprocess directory in the environment (the default), each ``Metrics`` owns its
registry, so tests and several apps in one process never collide.

``imgserve serve --workers N`` runs several processes. The supervisor calls
``prepare_multiprocess_dir`` before it spawns any child, so that every child imports
prometheus_client with ``PROMETHEUS_MULTIPROC_DIR`` already set (the library picks its value
class once, at import). Each process then writes its samples to its own files in that
directory, ``Metrics.render()`` in any process returns the sum over all of them, and the
supervisor calls ``forget_process(pid)`` when a child has died: that child's live gauges go
away, its counters and histograms keep counting in the totals.
"""

from __future__ import annotations

import os
import time
from functools import partial
from pathlib import Path
from typing import Iterable, Sequence

from prometheus_client import (
    CONTENT_TYPE_PLAIN_0_0_4,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    generate_latest,
    values,
)
from prometheus_client.metrics_core import Metric
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead
from prometheus_client.registry import Collector

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0)
BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)

MULTIPROCESS_ENV = "PROMETHEUS_MULTIPROC_DIR"
"""The variable that turns on prometheus_client's multiprocess mode; it names the directory."""

CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4
"""The media type of ``Metrics.render()``'s output, in either mode."""


def prepare_multiprocess_dir(path: Path) -> Path:
    """For the supervisor, before it spawns its first child: create ``path``, delete the sample
    files an earlier run left there (their counts would add to this run's), and set
    ``MULTIPROCESS_ENV`` in this process's environment, which spawned children inherit.
    Returns the absolute path. The supervisor itself records no metrics."""
    path = path.resolve()
    path.mkdir(parents=True, exist_ok=True)
    for stale in path.glob("*.db"):
        stale.unlink()
    os.environ[MULTIPROCESS_ENV] = str(path)
    return path


def multiprocess_dir() -> Path | None:
    """The directory of multiprocess mode, or None when this process runs alone."""
    value = os.environ.get(MULTIPROCESS_ENV)
    return Path(value) if value else None


def forget_process(pid: int, directory: Path | None = None) -> None:
    """For the supervisor, once a child has died (before or after its replacement starts):
    drop the dead process's live gauges (queue depth, latency model, process start time) from
    the merged view. Its counters and histograms stay: totals never go down."""
    directory = directory or multiprocess_dir()
    if directory is None:
        raise RuntimeError(f"{MULTIPROCESS_ENV} is not set: there are no other processes to forget")
    mark_process_dead(pid, str(directory))  # type: ignore[no-untyped-call]


_process_metrics: dict[int, Metrics] = {}
"""Multiprocess mode: the first Metrics of this process (by pid), whose instruments the next share."""


class Metrics:
    """The server's instruments. ``registry`` holds this process's own values (tests read
    them there); ``render()`` is what /metrics serves: in multiprocess mode, the merged view of
    every process that wrote to the directory.

    In multiprocess mode all the Metrics of one process share one set of instruments: the
    directory holds one file set per process, and two instruments writing the same sample
    would overwrite each other's counts."""

    def __init__(self) -> None:
        directory = multiprocess_dir()
        if directory is not None and values.ValueClass is values.MutexValue:
            raise RuntimeError(
                f"{MULTIPROCESS_ENV} was set after prometheus_client was imported in this process; "
                "it must be in the environment before (prepare_multiprocess_dir, then spawn)"
            )
        if directory is None and values.ValueClass is not values.MutexValue:
            raise RuntimeError(f"prometheus_client runs in multiprocess mode but {MULTIPROCESS_ENV} is not set")
        if directory is not None and (first := _process_metrics.get(os.getpid())) is not None:
            vars(self).update(vars(first))
            return
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "imgserve_requests_total", "HTTP requests by route and status.", ["route", "method", "status"], registry=r
        )
        self.request_seconds = Histogram(
            "imgserve_request_duration_seconds", "HTTP request latency.", ["route"], buckets=LATENCY_BUCKETS, registry=r
        )
        # What the autoscaler follows (deploy/kubernetes: the HPA and the prometheus-adapter rule):
        # work taken in by a pod, whichever protocol and process took it. It tracks load where CPU
        # cannot: a GPU pod waiting on its device is busy at low CPU.
        self.requests_in_progress = Gauge(
            "imgserve_requests_in_progress",
            "Requests admitted and not yet answered (HTTP requests with a body, gRPC inference calls).",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.result_write_drops = Counter(
            "imgserve_result_store_drops_total",
            "Request results not kept: the store fell behind and too many bytes waited to be written.",
            registry=r,
        )
        self.hook_drops = Counter(
            "imgserve_prediction_hook_drops_total",
            "Prediction hook notifications dropped: the hooks' queue was full (server/hooks.py).",
            registry=r,
        )
        # gRPC calls, by full method name and status code name (grpc-prometheus names them alike).
        self.grpc_requests = Counter(
            "imgserve_grpc_requests_total", "gRPC calls by method and status code.", ["method", "code"], registry=r
        )
        self.grpc_request_seconds = Histogram(
            "imgserve_grpc_request_duration_seconds",
            "gRPC call latency.",
            ["method"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        # Every model metric is labelled by model and version: two served versions of one model
        # (a canary beside the current one) must never add into, or overwrite, each other.
        per_version = ["model", "version"]
        self.batch_size = Histogram(
            "imgserve_batch_size",
            "Images per model call, as formed.",
            per_version,
            buckets=BATCH_SIZE_BUCKETS,
            registry=r,
        )
        self.queue_wait = Histogram(
            "imgserve_queue_wait_seconds",
            "Time images wait before their batch runs.",
            per_version,
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_run = Histogram(
            "imgserve_batch_run_seconds", "Time one model call takes.", per_version, buckets=LATENCY_BUCKETS, registry=r
        )
        # Multiprocess modes of the gauges. Every gauge is "live*": a dead process's values go
        # with it (forget_process). Queue depth is a count of images waiting, so the processes'
        # values add up: exact with the one model owner, and still right if several processes
        # ever hold queues. A dead owner's queue died with it; its replacement starts at zero.
        self.queue_depth = Gauge(
            "imgserve_queue_depth",
            "Images waiting for the model.",
            per_version,
            registry=r,
            multiprocess_mode="livesum",
        )
        self.batch_failures = Counter(
            "imgserve_batch_failures_total", "Model calls that raised.", per_version, registry=r
        )
        # An estimate, not an amount: a sum or a maximum of two fits means nothing, the latest
        # fit is the best one (its replacement's, once the dead owner is forgotten).
        self.latency_model = Gauge(
            "imgserve_batch_latency_model_seconds",
            "Fitted batch run time: seconds = per_image * n + fixed.",
            [*per_version, "term"],
            registry=r,
            multiprocess_mode="livemostrecent",
        )
        self.padding = Counter(
            "imgserve_batch_padding_images_total",
            "Padding rows added to reach an allowed batch size.",
            per_version,
            registry=r,
        )
        self.padded_slots = Counter(
            "imgserve_batch_slots_total", "Rows sent to the runtime, padding included.", per_version, registry=r
        )
        self.cache = Counter(
            "imgserve_result_cache_requests_total",
            "Result cache lookups by outcome.",
            [*per_version, "result"],
            registry=r,
        )
        self.images_decoded = Counter(
            "imgserve_images_decoded_total",
            "Images whose decode ran, by outcome (ok, or refused as a client error).",
            [*per_version, "outcome"],
            registry=r,
        )
        self.dropped = Counter(
            "imgserve_dropped_images_total",
            "Images that never reached the model, by reason (rejected, expired, abandoned).",
            [*per_version, "reason"],
            registry=r,
        )
        # The model statistics extension (server/model_statistics.py) is read from these, so that
        # in multiprocess mode it counts every worker's requests and the owner's batches.
        self.inference_requests = Histogram(
            "imgserve_inference_request_duration_seconds",
            "Requests that reached a model version, from then until answered, by outcome (success, failure).",
            [*per_version, "outcome"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.batches = Counter(
            "imgserve_batches_total",
            "Model calls that succeeded, by batch size (images, without padding).",
            [*per_version, "batch_size"],
            registry=r,
        )
        self.batch_phase = Counter(
            "imgserve_batch_phase_seconds_total",
            "Time model calls that succeeded spent, by batch size and phase: input (assembling the batch), "
            "infer (the runtime), output (splitting the results).",
            [*per_version, "batch_size", "phase"],
            registry=r,
        )
        self.last_inference = Gauge(
            "imgserve_last_inference_timestamp_seconds",
            "Unix time the version's last batch ended.",
            per_version,
            registry=r,
            multiprocess_mode="max",
        )
        # One sample per live process, labelled with its role (and its pid in multiprocess mode).
        self.process_start = Gauge(
            "imgserve_process_start_time_seconds",
            "Unix time each live process started serving, by role.",
            ["role"],
            registry=r,
            multiprocess_mode="liveall",
        )
        if directory is None:
            ProcessCollector(registry=r)  # the standard process_* metrics of this one process
            self._exposition = r
        else:
            self._exposition = CollectorRegistry()
            self._exposition.register(_ServerProcesses(directory))
            _process_metrics[os.getpid()] = self

    def batch_observer(self, model: str, version: int) -> ModelBatchMetrics:
        return ModelBatchMetrics(self, model, version)

    def process_started(self, role: str) -> None:
        """Say that this process, in ``role`` (supervisor, model-owner, worker-1...), is up."""
        self.process_start.labels(role).set(time.time())

    def render(self) -> bytes:
        """The exposition text (``CONTENT_TYPE``): this app's metrics, or in multiprocess mode
        every process's, counters and histograms summed, live gauges as their modes say."""
        return generate_latest(self._exposition)

    def collect(self) -> Iterable[Metric]:
        """Every metric family as ``render()`` would show it (merged across processes in
        multiprocess mode): file I/O there, so call it off the event loop."""
        return self._exposition.collect()


class ModelBatchMetrics:
    """The batcher's and the batch runner's observer for one model version."""

    def __init__(self, metrics: Metrics, model: str, version: int) -> None:
        labels = (model, str(version))
        self._labels = labels
        self._metrics = metrics
        self._batch_size = metrics.batch_size.labels(*labels)
        self._queue_wait = metrics.queue_wait.labels(*labels)
        self._batch_run = metrics.batch_run.labels(*labels)
        self._queue_depth = metrics.queue_depth.labels(*labels)
        self._failures = metrics.batch_failures.labels(*labels)
        self._rejected = metrics.dropped.labels(*labels, "rejected")
        self._expired = metrics.dropped.labels(*labels, "expired")
        self._abandoned = metrics.dropped.labels(*labels, "abandoned")
        self._padding = metrics.padding.labels(*labels)
        self._slots = metrics.padded_slots.labels(*labels)
        self._per_item = metrics.latency_model.labels(*labels, "per_image")
        self._fixed = metrics.latency_model.labels(*labels, "fixed")
        self._last_inference = metrics.last_inference.labels(*labels)
        self._by_size: dict[int, tuple[Counter, Counter, Counter, Counter]] = {}

    def batch_done(self, size: int, queue_waits: Sequence[float], run_seconds: float, failed: bool) -> None:
        if failed:
            self._failures.inc()
            return
        self._batch_size.observe(size)
        self._batch_run.observe(run_seconds)
        for wait in queue_waits:
            self._queue_wait.observe(wait)

    def batch_phases(self, size: int, input_s: float, infer_s: float, output_s: float) -> None:
        """A model call that succeeded, ``size`` images without padding, phase by phase."""
        counters = self._by_size.get(size)
        if counters is None:
            m, labels = self._metrics, (*self._labels, str(size))
            counters = (
                m.batches.labels(*labels),
                m.batch_phase.labels(*labels, "input"),
                m.batch_phase.labels(*labels, "infer"),
                m.batch_phase.labels(*labels, "output"),
            )
            self._by_size[size] = counters
        batches, input_c, infer_c, output_c = counters
        batches.inc()
        input_c.inc(input_s)
        infer_c.inc(infer_s)
        output_c.inc(output_s)
        self._last_inference.set(time.time())

    def queue_depth(self, cost: int) -> None:
        self._queue_depth.set(cost)

    def rejected(self, cost: int) -> None:
        self._rejected.inc(cost)

    def expired(self, count: int) -> None:
        self._expired.inc(count)

    def abandoned(self, count: int) -> None:
        self._abandoned.inc(count)

    def padded(self, real: int, rows: int) -> None:
        self._padding.inc(rows - real)
        self._slots.inc(rows)

    def latency_model(self, per_item: float, fixed: float) -> None:
        self._per_item.set(per_item)
        self._fixed.set(fixed)


class _ServerProcesses(Collector):
    """Multiprocess mode: every process's samples merged, and the standard ``process_*`` metrics
    (CPU, memory, file descriptors, start time) of every live process of the server, read from
    /proc and labelled by the process's role and pid, as ``imgserve_process_start_time_seconds``
    lists them. A scrape reaches one worker; it reports them all."""

    def __init__(self, directory: Path) -> None:
        self._merged = MultiProcessCollector(None, str(directory))  # type: ignore[no-untyped-call]

    def collect(self) -> Iterable[Metric]:
        families = list(self._merged.collect())  # type: ignore[no-untyped-call]
        yield from families
        live = [
            (sample.labels.get("role", ""), sample.labels.get("pid", ""))
            for family in families
            if family.name == "imgserve_process_start_time_seconds"
            for sample in family.samples
        ]
        merged: dict[str, Metric] = {}
        for role, pid in live:
            if not pid.isdigit():
                continue
            for family in ProcessCollector(registry=None, pid=partial(int, pid)).collect():
                into = merged.setdefault(family.name, Metric(family.name, family.documentation, family.type))
                for s in family.samples:
                    into.add_sample(s.name, {**s.labels, "role": role, "pid": pid}, s.value)
        yield from merged.values()
