"""OpenTelemetry tracing, through the SDK's in-memory exporter: a request's span is a child of
the client's traceparent, and decode, queue and batch are children of it, over HTTP and gRPC, in
one process and behind the model owner's protocol."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from loadtests.server_process import free_port
from server.grpc_api import inference_pb2 as pb
from server.tracing import Tracing, tracing_from_environment
from tests.fakes import GatedRuntime
from tests.helpers import MODEL, fake_app, png, serving
from tests.live_server import live_server

pytestmark = pytest.mark.usefixtures("split_models")

TRACE_ID = 0x4BF92F3577B34DA6A3CE929D0E0E4736
CLIENT_SPAN = 0x00F067AA0BA902B7
TRACEPARENT = f"00-{TRACE_ID:032x}-{CLIENT_SPAN:016x}-01"


@pytest.fixture
def exported() -> tuple[Tracing, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return Tracing(provider.get_tracer("test")), exporter


def tree(spans: tuple[ReadableSpan, ...]) -> tuple[ReadableSpan, dict[str, ReadableSpan]]:
    """The request's span (the one whose parent is the client's), and its children by name."""
    (root,) = [s for s in spans if s.parent is not None and s.parent.span_id == CLIENT_SPAN]
    assert all(s.context.trace_id == TRACE_ID for s in spans)
    children = {s.name: s for s in spans if s.parent is not None and s.parent.span_id == root.context.span_id}
    return root, children


def assert_queue_then_batch(root: ReadableSpan, children: dict[str, ReadableSpan]) -> None:
    queue, batch = children["queue"], children["batch"]
    assert queue.end_time is not None and batch.end_time is not None and root.end_time is not None
    assert root.start_time <= queue.start_time <= queue.end_time  # type: ignore[operator]
    assert abs(queue.end_time - batch.start_time) < 1_000  # type: ignore[operator]
    assert batch.end_time <= root.end_time
    assert batch.attributes is not None and batch.attributes["imgserve.model"] == MODEL


def test_an_http_request_is_a_child_of_the_clients_trace(
    tmp_path: Path, exported: tuple[Tracing, InMemorySpanExporter]
) -> None:
    tracing, exporter = exported

    async def scenario() -> None:
        async with serving(tmp_path, GatedRuntime(), tracing=tracing) as (client, _):
            exporter.clear()  # readiness probes of the fixture
            headers = {"Content-Type": "image/png", "traceparent": TRACEPARENT}
            response = await client.post("/v1/classify", content=png(3), headers=headers)
            assert response.status_code == 200

    asyncio.run(scenario())
    root, children = tree(exporter.get_finished_spans())
    assert root.name == "POST /v1/classify" and root.attributes is not None
    assert root.attributes["http.response.status_code"] == 200
    assert set(children) == {"decode", "queue", "batch"}
    assert children["decode"].end_time <= children["queue"].start_time  # type: ignore[operator]
    assert_queue_then_batch(root, children)


def test_a_grpc_call_is_a_child_of_the_clients_trace(
    tmp_path: Path, exported: tuple[Tracing, InMemorySpanExporter]
) -> None:
    tracing, exporter = exported
    grpc_port = free_port()
    app = fake_app(tmp_path, GatedRuntime(), grpc_port=grpc_port, tracing=tracing)
    pixels = np.full((1, 8, 8, 3), 3, np.uint8)
    request = pb.ModelInferRequest(model_name=MODEL, raw_input_contents=[pixels.tobytes()])
    request.inputs.add(name="images", datatype="UINT8", shape=[1, 8, 8, 3])
    with live_server(app, grpc=app.state.settings), grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
        infer: Any = channel.unary_unary(
            "/inference.GRPCInferenceService/ModelInfer",
            request_serializer=pb.ModelInferRequest.SerializeToString,
            response_deserializer=pb.ModelInferResponse.FromString,
        )
        exporter.clear()
        infer(request, metadata=(("traceparent", TRACEPARENT),), timeout=30)
    root, children = tree(exporter.get_finished_spans())
    assert root.name == "/inference.GRPCInferenceService/ModelInfer"
    assert set(children) == {"queue", "batch"}  # pixels: nothing to decode
    assert_queue_then_batch(root, children)


def test_without_an_endpoint_nothing_is_traced(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"):
        monkeypatch.delenv(name, raising=False)
    assert not tracing_from_environment().enabled
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318")
    assert tracing_from_environment().enabled
