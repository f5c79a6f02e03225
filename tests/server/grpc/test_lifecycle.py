"""A gRPC call's life beyond the happy path: a client that cancels while queued costs the model
nothing, and SIGTERM drains gRPC with HTTP (calls in progress are answered, new ones refused,
health says NOT_SERVING) before the models close."""

from __future__ import annotations

import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from loadtests.server_process import free_port
from server.frontend import port_is_free
from server.grpc_api import inference_pb2 as pb
from server.settings import BatchingSettings, Settings
from tests.fakes import GatedRuntime
from tests.helpers import MODEL, fake_app, poll
from tests.live_server import live_server
from tests.served import served_process
from tests.server.test_workers import write_slow_model

INFER = "/inference.GRPCInferenceService/ModelInfer"


def uint8_request(model: str, first_pixel: int) -> pb.ModelInferRequest:
    pixels = np.full((1, 8, 8, 3), first_pixel, np.uint8)
    request = pb.ModelInferRequest(model_name=model, raw_input_contents=[pixels.tobytes()])
    request.inputs.add(name="images", datatype="UINT8", shape=[1, 8, 8, 3])
    return request


def infer_stub(channel: grpc.Channel) -> Any:
    return channel.unary_unary(
        INFER,
        request_serializer=pb.ModelInferRequest.SerializeToString,
        response_deserializer=pb.ModelInferResponse.FromString,
    )


def test_a_call_cancelled_while_queued_never_reaches_the_model(tmp_path: Path) -> None:
    runtime = GatedRuntime()
    grpc_port = free_port()
    app = fake_app(tmp_path, runtime, batching=BatchingSettings(max_batch_size=4), grpc_port=grpc_port)
    registry = app.state.metrics.registry

    def sample(name: str, **labels: str) -> float:
        return registry.get_sample_value(name, labels) or 0.0

    with live_server(app, grpc=app.state.settings), grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
        infer = infer_stub(channel)
        warm_up = runtime.entered
        runtime.gate.clear()
        blocker = infer.future(uint8_request(MODEL, 1), timeout=30)
        poll(lambda: runtime.entered == warm_up + 1)  # the model is busy with the blocker
        queued = infer.future(uint8_request(MODEL, 2), timeout=30)
        poll(lambda: sample("imgserve_queue_depth", model=MODEL, version="1") == 1)
        queued.cancel()
        # The server noticed, and gave up the work: the call's task was cancelled.
        poll(lambda: sample("imgserve_grpc_requests_total", method=INFER, code="CANCELLED") == 1)
        runtime.gate.set()
        assert blocker.result(timeout=30).model_name == MODEL
        assert queued.cancelled()
        poll(lambda: sample("imgserve_dropped_images_total", model=MODEL, version="1", reason="abandoned") == 1)
        later = infer(uint8_request(MODEL, 3), timeout=30)
    assert later.model_name == MODEL
    assert 2 not in runtime.seen and {1, 3} <= set(runtime.seen)  # the cancelled image never ran
    assert sample("imgserve_grpc_requests_total", method=INFER, code="OK") == 2


def test_a_call_whose_deadline_passes_while_queued_never_runs(tmp_path: Path) -> None:
    """Long before the server's own 10 s deadline: once the model is free, the call is gone."""
    runtime = GatedRuntime()
    grpc_port = free_port()
    app = fake_app(tmp_path, runtime, batching=BatchingSettings(max_batch_size=4), grpc_port=grpc_port)
    registry = app.state.metrics.registry

    def expired() -> float:
        labels = {"model": MODEL, "version": "1", "reason": "expired"}
        return registry.get_sample_value("imgserve_dropped_images_total", labels) or 0.0

    with live_server(app, grpc=app.state.settings), grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
        infer = infer_stub(channel)
        warm_up = runtime.entered
        runtime.gate.clear()
        blocker = infer.future(uint8_request(MODEL, 1), timeout=30)
        poll(lambda: runtime.entered == warm_up + 1)
        with pytest.raises(grpc.RpcError) as late:
            infer(uint8_request(MODEL, 2), timeout=0.5)
        assert late.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        time.sleep(0.5)  # the server's deadline for it has passed too by now
        runtime.gate.set()
        assert blocker.result(timeout=30).model_name == MODEL
        poll(lambda: expired() + abandoned(registry) >= 1)
    assert 2 not in runtime.seen


def abandoned(registry: Any) -> float:
    labels = {"model": MODEL, "version": "1", "reason": "abandoned"}
    return registry.get_sample_value("imgserve_dropped_images_total", labels) or 0.0


def in_threads(calls: list[Callable[[], Any]]) -> list[Any]:
    with ThreadPoolExecutor(max_workers=len(calls)) as pool:
        futures = [pool.submit(call) for call in calls]
        return [f.result(timeout=60) for f in futures]


@pytest.mark.parametrize("workers", [0, 1])
def test_sigterm_answers_the_calls_in_progress_and_refuses_new_ones(tmp_path: Path, workers: int) -> None:
    repository = tmp_path / "models"
    write_slow_model(repository, fixed_s=1.0)  # each batch keeps the "device" busy for a second
    settings = Settings(
        model_repository=repository,
        default_model="simulated",
        grpc_port=free_port(),
        drain_timeout_s=10,
        batching=BatchingSettings(max_batch_size=1),
    )
    target = f"127.0.0.1:{settings.grpc_port}"
    with served_process(settings, workers) as (_, process), grpc.insecure_channel(target) as channel:
        infer, health = infer_stub(channel), health_pb2_grpc.HealthStub(channel)
        assert (
            health.Check(health_pb2.HealthCheckRequest(), timeout=10).status == health_pb2.HealthCheckResponse.SERVING
        )
        started = threading.Event()

        def call(pixel: int) -> Any:
            started.set()
            return infer(uint8_request("simulated", pixel), timeout=60)

        def stop_then_call() -> tuple[grpc.StatusCode, float]:
            started.wait(10)
            time.sleep(0.5)  # the first call is running, the others queued
            process.send_signal(signal.SIGTERM)
            time.sleep(0.5)
            sent = time.monotonic()
            with grpc.insecure_channel(target) as fresh, pytest.raises(grpc.RpcError) as refused:
                infer_stub(fresh)(uint8_request("simulated", 9), timeout=30)
            return refused.value.code(), time.monotonic() - sent

        *answers, (code, refused_after) = in_threads([*(lambda p=p: call(p) for p in range(3)), stop_then_call])
        assert [a.model_name for a in answers] == ["simulated"] * 3  # all three ran to the end
        assert code == grpc.StatusCode.UNAVAILABLE and refused_after < 5  # refused, not queued
        assert process.wait(timeout=60) in (0, -signal.SIGTERM)


def test_a_call_that_ends_before_its_message_arrives_is_not_the_clients_mistake(tmp_path: Path) -> None:
    """Cancelled, or past its deadline, while the message is still on its way: counted as such,
    not as a malformed call."""
    grpc_port = free_port()
    app = fake_app(tmp_path, GatedRuntime(), grpc_port=grpc_port)
    registry = app.state.metrics.registry
    stop = threading.Event()

    def nothing_yet() -> Iterator[bytes]:
        stop.wait(10)
        return
        yield b""  # a generator that never sends

    def counted(code: str) -> float:
        return registry.get_sample_value("imgserve_grpc_requests_total", {"method": INFER, "code": code}) or 0.0

    with live_server(app, grpc=app.state.settings), grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
        call = channel.stream_unary(INFER, request_serializer=None, response_deserializer=None)
        pending = call.future(nothing_yet(), timeout=30)
        time.sleep(0.5)
        pending.cancel()
        poll(lambda: counted("CANCELLED") == 1)
        with pytest.raises(grpc.RpcError) as late:
            call(nothing_yet(), timeout=0.5)
        assert late.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        stop.set()
        poll(lambda: counted("DEADLINE_EXCEEDED") + counted("CANCELLED") == 2)
    assert counted("INVALID_ARGUMENT") == 0


def test_watch_streams_have_slots_of_their_own(tmp_path: Path) -> None:
    """Health Watch streams stay open as long as their clients want, and need no key: a few of
    them, not every call slot (here 8 connections: 2 streams)."""
    grpc_port = free_port()
    app = fake_app(tmp_path, GatedRuntime(), grpc_port=grpc_port, http={"max_connections": 8})
    with live_server(app, grpc=app.state.settings), grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
        health = health_pb2_grpc.HealthStub(channel)
        watching = [health.Watch(health_pb2.HealthCheckRequest(), timeout=30) for _ in range(2)]
        for stream in watching:
            assert next(stream).status == health_pb2.HealthCheckResponse.SERVING
        with pytest.raises(grpc.RpcError) as refused:
            next(health.Watch(health_pb2.HealthCheckRequest(), timeout=30))
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
        assert dict(refused.value.trailing_metadata())["retry-after"] == "5"
        assert (
            health.Check(health_pb2.HealthCheckRequest(), timeout=10).status == health_pb2.HealthCheckResponse.SERVING
        )
        watching[0].cancel()
        poll(lambda: next(health.Watch(health_pb2.HealthCheckRequest(), timeout=30)).status == 1)


def test_a_port_whose_last_connections_wait_is_free_for_the_supervisor() -> None:
    """TIME_WAIT after gRPC traffic must not make the supervisor refuse to start (it binds the
    way the server does); a port something listens on is not free."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    assert not port_is_free("127.0.0.1", port)
    client = socket.create_connection(("127.0.0.1", port))
    accepted, _ = listener.accept()
    accepted.close()  # the server's side closes first: its end waits in TIME_WAIT
    time.sleep(0.1)
    client.close()
    listener.close()
    assert port_is_free("127.0.0.1", port)
