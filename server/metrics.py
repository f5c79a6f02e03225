"""Prometheus metrics, in a registry per app (so tests and several apps never collide)."""

from __future__ import annotations

from typing import Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0)
BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "imgserve_requests_total", "HTTP requests by route and status.", ["route", "method", "status"], registry=r
        )
        self.request_seconds = Histogram(
            "imgserve_request_duration_seconds", "HTTP request latency.", ["route"], buckets=LATENCY_BUCKETS, registry=r
        )
        self.batch_size = Histogram(
            "imgserve_batch_size",
            "Images per model call, as formed.",
            ["model"],
            buckets=BATCH_SIZE_BUCKETS,
            registry=r,
        )
        self.queue_wait = Histogram(
            "imgserve_queue_wait_seconds",
            "Time images wait before their batch runs.",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_run = Histogram(
            "imgserve_batch_run_seconds", "Time one model call takes.", ["model"], buckets=LATENCY_BUCKETS, registry=r
        )
        self.queue_depth = Gauge("imgserve_queue_depth", "Images waiting for the model.", ["model"], registry=r)
        self.batch_failures = Counter(
            "imgserve_batch_failures_total", "Model calls that raised.", ["model"], registry=r
        )
        self.latency_model = Gauge(
            "imgserve_batch_latency_model_seconds",
            "Fitted batch run time: seconds = per_image * n + fixed.",
            ["model", "term"],
            registry=r,
        )
        self.padding = Counter(
            "imgserve_batch_padding_images_total",
            "Padding rows added to reach an allowed batch size.",
            ["model"],
            registry=r,
        )
        self.padded_slots = Counter(
            "imgserve_batch_slots_total", "Rows sent to the runtime, padding included.", ["model"], registry=r
        )
        self.cache = Counter(
            "imgserve_result_cache_requests_total", "Result cache lookups by outcome.", ["model", "result"], registry=r
        )
        self.images_decoded = Counter(
            "imgserve_images_decoded_total",
            "Images whose decode ran, by outcome (ok, or refused as a client error).",
            ["model", "outcome"],
            registry=r,
        )
        self.dropped = Counter(
            "imgserve_dropped_images_total",
            "Images that never reached the model, by reason (rejected, expired, abandoned).",
            ["model", "reason"],
            registry=r,
        )

    def batch_observer(self, model: str) -> ModelBatchMetrics:
        return ModelBatchMetrics(self, model)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class ModelBatchMetrics:
    """The batcher's observer for one model."""

    def __init__(self, metrics: Metrics, model: str) -> None:
        self._batch_size = metrics.batch_size.labels(model)
        self._queue_wait = metrics.queue_wait.labels(model)
        self._batch_run = metrics.batch_run.labels(model)
        self._queue_depth = metrics.queue_depth.labels(model)
        self._failures = metrics.batch_failures.labels(model)
        self._rejected = metrics.dropped.labels(model, "rejected")
        self._expired = metrics.dropped.labels(model, "expired")
        self._abandoned = metrics.dropped.labels(model, "abandoned")
        self._padding = metrics.padding.labels(model)
        self._slots = metrics.padded_slots.labels(model)
        self._per_item = metrics.latency_model.labels(model, "per_image")
        self._fixed = metrics.latency_model.labels(model, "fixed")

    def batch_done(self, size: int, queue_waits: Sequence[float], run_seconds: float, failed: bool) -> None:
        if failed:
            self._failures.inc()
            return
        self._batch_size.observe(size)
        self._batch_run.observe(run_seconds)
        for wait in queue_waits:
            self._queue_wait.observe(wait)

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
