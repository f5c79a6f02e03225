"""Every request has an id: the client's ``X-Request-ID`` when it is sane, else a new one; echoed
in the answer (HTTP header, gRPC trailing metadata), in every log line written while it is handled,
and in its access line."""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest

from loadtests.server_process import free_port
from server.grpc_api import inference_pb2 as pb
from server.request_context import RequestIdFilter
from tests.fakes import GatedRuntime
from tests.helpers import MODEL, fake_app, png, serving
from tests.live_server import live_server

pytestmark = pytest.mark.usefixtures("split_models")

GENERATED = re.compile(r"[0-9a-f]{32}")


class Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.addFilter(RequestIdFilter())
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def access(self) -> list[logging.LogRecord]:
        return [r for r in self.records if r.name == "imgserve.access"]


@pytest.fixture
def records(caplog: pytest.LogCaptureFixture) -> Iterator[Records]:
    caplog.set_level(logging.INFO, logger="imgserve.access")
    handler = Records()
    logging.getLogger().addHandler(handler)
    try:
        yield handler
    finally:
        logging.getLogger().removeHandler(handler)


@pytest.mark.parametrize(
    ("offered", "kept"),
    [("abc-123", True), ("trace:7f/01+x=@a.b_c", True), ("x" * 129, False), ("two words", False), (None, False)],
    ids=["plain", "punctuation", "too-long", "space", "none"],
)
def test_the_clients_id_is_kept_when_sane_and_echoed(
    tmp_path: Path, records: Records, offered: str | None, kept: bool
) -> None:
    async def scenario() -> None:
        async with serving(tmp_path, GatedRuntime(), access_log=True) as (client, _):
            headers = {"Content-Type": "image/png", **({"X-Request-ID": offered} if offered is not None else {})}
            response = await client.post("/v1/classify", content=png(3), headers=headers)
            assert response.status_code == 200
            echoed = response.headers["X-Request-ID"]
            assert echoed == offered if kept else GENERATED.fullmatch(echoed)
            (line,) = [r for r in records.access() if getattr(r, "path", "") == "/v1/classify"]
            assert (line.request_id, line.status, line.method) == (echoed, 200, "POST")  # type: ignore[attr-defined]

    asyncio.run(scenario())


def test_lines_written_while_a_request_is_handled_carry_its_id(tmp_path: Path, records: Records) -> None:
    async def scenario() -> None:
        runtime = GatedRuntime()
        async with serving(tmp_path, runtime, access_log=True) as (client, _):
            headers = {"Content-Type": "image/png", "X-Request-ID": "poisoned-1"}
            failed = await client.post("/v1/classify", content=png(runtime.poison), headers=headers)
            assert failed.status_code == 500
            empty = {"Content-Type": "image/png", "X-Request-ID": "empty-2"}
            refused = await client.post("/v1/classify", content=b"", headers=empty)
            assert refused.status_code == 400 and refused.headers["X-Request-ID"] == "empty-2"

    asyncio.run(scenario())
    failure = [r for r in records.records if r.name == "server.service" and r.levelno >= logging.ERROR]
    assert failure and all(getattr(r, "request_id", None) == "poisoned-1" for r in failure)
    statuses = {getattr(r, "request_id", None): getattr(r, "status", None) for r in records.access()}
    assert statuses["poisoned-1"] == 500 and statuses["empty-2"] == 400
    assert all(not hasattr(r, "request_id") for r in records.records if r.name == "server.registry")


def test_grpc_calls_echo_their_id_and_write_an_access_line(tmp_path: Path, records: Records) -> None:
    grpc_port = free_port()
    app = fake_app(tmp_path, GatedRuntime(), grpc_port=grpc_port, access_log=True)
    pixels = np.full((1, 8, 8, 3), 3, np.uint8)
    request = pb.ModelInferRequest(model_name=MODEL, raw_input_contents=[pixels.tobytes()])
    request.inputs.add(name="images", datatype="UINT8", shape=[1, 8, 8, 3])
    with live_server(app, grpc=app.state.settings), grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
        infer = channel.unary_unary(
            "/inference.GRPCInferenceService/ModelInfer",
            request_serializer=pb.ModelInferRequest.SerializeToString,
            response_deserializer=pb.ModelInferResponse.FromString,
        )
        _, call = infer.with_call(request, metadata=(("x-request-id", "grpc-7"),), timeout=30)
        assert ("x-request-id", "grpc-7") in tuple(call.trailing_metadata())
        _, anonymous = infer.with_call(request, timeout=30)
        generated = dict(anonymous.trailing_metadata())["x-request-id"]
        assert GENERATED.fullmatch(generated)
    lines = {getattr(r, "request_id", None): r for r in records.access() if getattr(r, "protocol", "") == "grpc"}
    assert lines["grpc-7"].status == "OK" and generated in lines  # type: ignore[attr-defined]
    assert lines["grpc-7"].method == "/inference.GRPCInferenceService/ModelInfer"  # type: ignore[attr-defined]
