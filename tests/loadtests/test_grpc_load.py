"""The gRPC load tools: the request (the same tensor as the HTTP v2 binary one, read by the
server's own codecs), the generator's pure parts, and short bounded runs of the generator and of
one measured point against a live server (``conftest.py``)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from loadtests import grpc_load
from loadtests.grpc_load import GrpcLoad
from loadtests.measure import measure_point
from loadtests.payloads import grpc_infer_request, preprocessed_photos, v2_binary_body
from loadtests.server_process import free_port
from server.grpc_api import inference_pb2 as pb
from server.grpc_api.codec import parse_infer
from server.v2_codec import TensorLimits, parse_infer_request
from tests.loadtests.conftest import LiveServer

LIMITS = TensorLimits.for_images(8, (224, 224, 3))


def photos(n: int) -> np.ndarray:
    return preprocessed_photos()[:n]


def test_the_request_carries_the_uint8_batch_raw_and_asks_for_the_top_5() -> None:
    images = photos(2)
    request = pb.ModelInferRequest.FromString(grpc_infer_request(images, "efficientnet_lite0"))
    assert request.model_name == "efficientnet_lite0" and request.model_version == ""
    [tensor] = request.inputs
    assert (tensor.name, tensor.datatype, list(tensor.shape)) == ("images", "UINT8", [2, 224, 224, 3])
    assert not tensor.HasField("contents")
    assert list(request.raw_input_contents) == [images.tobytes()]
    [output] = request.outputs
    assert output.name == "probabilities"
    assert output.parameters["classification"].WhichOneof("parameter_choice") == "int64_param"
    assert output.parameters["classification"].int64_param == 5


@pytest.mark.parametrize("n", [1, 3])
def test_the_server_reads_the_same_request_from_grpc_and_from_http_v2_binary(n: int) -> None:
    images = photos(n)
    over_grpc = parse_infer(pb.ModelInferRequest.FromString(grpc_infer_request(images, "m")), LIMITS)
    body, headers = v2_binary_body(images)
    over_http = parse_infer_request(body, int(headers["Inference-Header-Content-Length"]), LIMITS)
    for parsed in (over_grpc, over_http):
        [tensor] = parsed.inputs
        assert (tensor.name, tensor.datatype, tensor.shape) == ("images", "UINT8", [n, 224, 224, 3])
        assert tensor.array is not None and np.array_equal(tensor.array, images)
        assert [(o.name, o.classification) for o in parsed.outputs] == [("probabilities", 5)]


def test_requests_round_trip_through_their_file_and_a_truncated_one_is_refused(tmp_path: Path) -> None:
    requests = [b"", b"a", bytes(range(256)) * 700]
    path = tmp_path / "requests.bin"
    grpc_load.write_requests(path, requests)
    assert grpc_load.read_requests(path) == requests
    path.write_bytes(path.read_bytes()[:-1])
    with pytest.raises(ValueError, match="truncated"):
        grpc_load.read_requests(path)


def test_percentiles_are_nearest_rank_in_ms() -> None:
    seconds = [i / 1000 for i in range(1, 101)]  # 1 .. 100 ms
    assert [grpc_load.percentile_ms(seconds, q) for q in (50, 90, 99, 100)] == [50.0, 90.0, 99.0, 100.0]
    assert grpc_load.percentile_ms([0.0123], 99) == 12.3
    assert grpc_load.percentile_ms([], 50) == 0.0


def test_the_summary_has_wrks_figures_and_the_errors_codes() -> None:
    line = {"clients": 4, "channels": 2, "seconds": 2.004, "cpu_seconds": 0.51234, "ok": 300,
            "error_codes": {"UNAVAILABLE": 7}, "p50_ms": 5.0, "p90_ms": 8.0, "p95_ms": 9.0, "p99_ms": 12.5}  # fmt: skip
    assert grpc_load.summary(line) == {
        "clients": 4, "seconds": 2.0, "requests_ok": 300, "errors": 7, "req_per_s": 149.7, "p50_ms": 5.0,
        "p90_ms": 8.0, "p95_ms": 9.0, "p99_ms": 12.5, "channels": 2, "generator_cpu_seconds": 0.512,
        "error_codes": {"UNAVAILABLE": 7},
    }  # fmt: skip
    assert "error_codes" not in grpc_load.summary({**line, "error_codes": {}})


def test_channels_default_to_one_per_client_and_never_outnumber_them() -> None:
    assert [GrpcLoad("127.0.0.1:1", [b""]).channels_for(n) for n in (1, 32)] == [1, 32]
    assert [GrpcLoad("127.0.0.1:1", [b""], channels=4).channels_for(n) for n in (1, 32)] == [1, 4]


@pytest.mark.parametrize("target", ["example.com:8001", "10.0.0.2:8001", "0.0.0.0:8001"])
def test_only_loopback_is_a_target(target: str) -> None:
    with pytest.raises(ValueError, match="loopback"):
        grpc_load.closed_loop(GrpcLoad(target, [b""]), 1, 1.0)
    grpc_load.check_loopback("[::1]:8001")
    grpc_load.check_loopback("localhost:8001")


@pytest.mark.parametrize(
    "argv", [["--clients", "0"], ["--clients", "2", "--channels", "0"], ["--clients", "2", "--duration", "0"]]
)
def test_the_generator_refuses_empty_loads(argv: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    base = ["--target", "127.0.0.1:1", "--requests", str(tmp_path / "r.bin"), "--duration", "1"]
    with pytest.raises(SystemExit) as stopped:
        grpc_load.main([*base, *argv])
    assert stopped.value.code == 2
    capsys.readouterr()


def test_an_answer_must_be_the_classification_asked_for() -> None:
    response = pb.ModelInferResponse(outputs=[pb.ModelInferResponse.InferOutputTensor(datatype="BYTES", shape=[2, 5])])
    assert grpc_load.answer_problem(response.SerializeToString(), images=2, top_k=5) == "no raw output contents"
    response.raw_output_contents.append(b"\x00")
    assert grpc_load.answer_problem(response.SerializeToString(), images=2, top_k=5) is None
    assert "BYTES [1, 5]" in (grpc_load.answer_problem(response.SerializeToString(), images=1, top_k=5) or "")
    assert grpc_load.answer_problem(b"\xff", images=1, top_k=5) == "not a ModelInferResponse"


def simulated_requests(model: str = "simulated") -> list[bytes]:
    return [grpc_infer_request(image[None], model) for image in photos(5)]


def test_a_closed_loop_against_a_live_server_is_bounded_in_count(simulated_server: LiveServer) -> None:
    load = GrpcLoad(simulated_server.grpc_target, simulated_requests(), channels=2)
    figures = grpc_load.closed_loop(load, 3, 30.0, max_requests=40)
    assert figures["requests_ok"] == 40 and figures["errors"] == 0
    assert figures["seconds"] < 30 and figures["channels"] == 2 and figures["clients"] == 3
    assert 0 < figures["generator_cpu_seconds"] < 30
    assert 0 < figures["p50_ms"] <= figures["p99_ms"]


def test_a_closed_loop_against_a_live_server_is_bounded_in_time_and_counts_errors(
    simulated_server: LiveServer,
) -> None:
    load = GrpcLoad(simulated_server.grpc_target, simulated_requests("no_such_model"))
    figures = grpc_load.closed_loop(load, 2, 1.0)
    assert figures["requests_ok"] == 0 and figures["errors"] > 0
    assert figures["error_codes"] == {"NOT_FOUND": figures["errors"]}
    assert 0.9 < figures["seconds"] < 5


def test_a_generator_that_fails_says_why() -> None:
    with pytest.raises(RuntimeError, match=r"exited with 1: (.|\n)*ValueError: a closed loop needs requests"):
        grpc_load.closed_loop(GrpcLoad("127.0.0.1:1", []), 1, 1.0)  # nothing to send


def test_waiting_for_an_answer_checks_it_and_is_bounded(simulated_server: LiveServer) -> None:
    target = simulated_server.grpc_target
    grpc_load.wait_for_answer(target, simulated_requests()[0], images=1, top_k=5)
    with pytest.raises(RuntimeError, match="BYTES \\[1, 3\\]"):
        grpc_load.wait_for_answer(target, simulated_requests()[0], images=1, top_k=3)
    with pytest.raises(RuntimeError, match="NOT_FOUND"):
        grpc_load.wait_for_answer(target, simulated_requests("no_such_model")[0], images=1, top_k=5)
    started = time.monotonic()
    with pytest.raises(RuntimeError, match="UNAVAILABLE"):  # nothing listens there
        grpc_load.wait_for_answer(f"127.0.0.1:{free_port()}", b"", images=1, top_k=5, timeout_s=1.0)
    assert time.monotonic() - started < 10


def test_a_measured_grpc_point_has_the_servers_cpu_per_request_and_the_generators(
    simulated_server: LiveServer,
) -> None:
    load = GrpcLoad(simulated_server.grpc_target, simulated_requests())
    figures: dict[str, Any] = measure_point(
        simulated_server.base_url, [], 1.0, clients=4, server_pid=simulated_server.pid, warm_s=0.5, grpc=load
    )
    assert figures["mode"] == "closed" and figures["generator"] == "grpc.aio" and figures["channels"] == 4
    assert figures["requests_ok"] > 10 and figures["errors"] == 0
    assert figures["server_cpu_ms_per_request"] > 0 and figures["server_cpu"] > 0
    assert figures["generator_cpu"] > 0 and "generator_cpu_seconds" not in figures  # in cores, the child's own
    assert figures["mean_batch_size"] >= 1
    json.dumps(figures)
    with pytest.raises(ValueError, match="closed loop"):
        measure_point(simulated_server.base_url, [], 1.0, rate=10.0, grpc=load)
