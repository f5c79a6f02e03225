"""Optional OpenTelemetry tracing: a span per request (HTTP or gRPC), a child of the client's
``traceparent`` (W3C trace context), with children for what imgserve does with it: ``decode``
(on the work pool), ``queue`` (waiting for a batch) and ``batch`` (the model running it).

On when the OpenTelemetry SDK and its OTLP exporter are installed (``pip install
'imgserve[tracing]'``) and ``OTEL_EXPORTER_OTLP_ENDPOINT`` (or ``..._TRACES_ENDPOINT``) is set;
the exporter reads the standard ``OTEL_*`` variables. Off, it imports nothing and costs a branch.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from batching.clock import Clock

log = logging.getLogger(__name__)

ENDPOINT_VARIABLES = ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")


class Tracing:
    """Spans through ``tracer`` (an OpenTelemetry ``Tracer``), or none when it is None."""

    def __init__(self, tracer: Any | None = None) -> None:
        self._tracer = tracer

    @property
    def enabled(self) -> bool:
        return self._tracer is not None

    @contextmanager
    def request(self, name: str, carrier: Mapping[str, str], attributes: Mapping[str, Any]) -> Iterator[Any]:
        """The span of one request, a child of the trace context in ``carrier`` (its headers or
        metadata: ``traceparent``, ``tracestate``); yields the span (None when off)."""
        if self._tracer is None:
            yield None
            return
        from opentelemetry.propagate import extract
        from opentelemetry.trace import SpanKind

        parent = extract(carrier)
        with self._tracer.start_as_current_span(
            name, context=parent, kind=SpanKind.SERVER, attributes=dict(attributes)
        ) as span:
            yield span

    @contextmanager
    def span(self, name: str) -> Iterator[None]:
        """A child of the current span, around a block."""
        if self._tracer is None:
            yield
            return
        with self._tracer.start_as_current_span(name):
            yield

    def record(self, name: str, start: float, end: float, clock: Clock, attributes: Mapping[str, Any]) -> None:
        """A child of the current span that has already happened, from ``start`` to ``end`` on
        ``clock`` (the batcher's: queueing and batches are timed there)."""
        if self._tracer is None:
            return
        now_ns, now = time.time_ns(), clock.now()
        span = self._tracer.start_span(
            name, start_time=now_ns - round((now - start) * 1e9), attributes=dict(attributes)
        )
        span.end(end_time=now_ns - round((now - end) * 1e9))


def tracing_from_environment() -> Tracing:
    """Spans exported over OTLP when an endpoint is set and the packages are there, else none."""
    if not any(os.environ.get(name) for name in ENDPOINT_VARIABLES):
        return Tracing()
    try:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ImportError:
        log.warning("an OTLP endpoint is set but OpenTelemetry is not installed (pip install 'imgserve[tracing]')")
        return Tracing()
    provider = TracerProvider(
        resource=Resource.create({"service.name": os.environ.get("OTEL_SERVICE_NAME", "imgserve")})
    )
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    return Tracing(provider.get_tracer("imgserve"))
