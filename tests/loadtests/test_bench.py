"""The benchmark harness's protocol options, its gRPC requests, its ratios and its table. No
server is started here (``test_grpc_load.py`` measures a gRPC point against a live one)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from loadtests import bench
from loadtests.report import markdown_table
from server.grpc_api import inference_pb2 as pb


def test_http_stays_the_default_and_grpc_is_asked_for_with_the_v2_payload() -> None:
    args = bench.parse_args([])
    assert args.protocol == ["http"] and args.payload == "jpeg" and args.grpc_channels is None
    both = bench.parse_args(["--payload", "v2-binary", "--protocol", "http,grpc", "--grpc-channels", "8"])
    assert both.protocol == ["http", "grpc"] and both.grpc_channels == 8
    assert bench.parse_args(["--payload", "v2-binary", "--protocol", "grpc"]).protocol == ["grpc"]


@pytest.mark.parametrize(
    "argv",
    [
        ["--protocol", "grpc"],  # JPEG uploads are HTTP only
        ["--protocol", "grpc", "--payload", "v2-binary", "--rates", "60"],  # no gRPC open loop
        ["--protocol", "grpc", "--payload", "v2-binary", "--grpc-channels", "0"],
        ["--protocol", "udp"],
        ["--protocol", "http,http"],
        ["--protocol", ""],
    ],
)
def test_bad_protocol_options_stop_before_anything_runs(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as stopped:
        bench.parse_args(argv)
    assert stopped.value.code == 2
    capsys.readouterr()


def test_the_naive_server_is_measured_over_http_only() -> None:
    assert bench.measured_protocols("imgserve_no_batching", ["http", "grpc"]) == ["http", "grpc"]
    assert bench.measured_protocols("naive", ["http", "grpc"]) == ["http"]
    assert bench.measured_protocols("naive", ["grpc"]) == []


def test_the_grpc_requests_name_the_model_of_the_folder_and_carry_one_image_each() -> None:
    requests = bench.grpc_requests(Path("models/efficientnet_lite0/1"), 224)
    assert len(requests) == 5 and len(set(requests)) == 5
    for request in map(pb.ModelInferRequest.FromString, requests):
        assert request.model_name == "efficientnet_lite0" and list(request.inputs[0].shape) == [1, 224, 224, 3]
        assert request.outputs[0].parameters["classification"].int64_param == 5


def point(config: str, clients: int, rate: float, protocol: str | None = None, **extra: Any) -> dict[str, Any]:
    p = {"config": config, "mode": "closed", "clients": clients, "req_per_s": rate, "p50_ms": 10.0, "p99_ms": 20.0}
    return {**p, **({} if protocol is None else {"protocol": protocol}), "errors": 0, **extra}


CEILING = {"ceiling_images_per_s": 200.0, "batch1_model_ms": 10.0}


def test_ratios_compare_http_with_http_and_grpc_with_http() -> None:
    points = [
        point("imgserve", 32, 60.0, "grpc"),  # first, so a ratio that ignored the protocol would pick it
        point("imgserve", 1, 40.0, "grpc", p50_ms=12.5),
        point("imgserve", 32, 150.0, "http"),
        point("imgserve", 1, 80.0, "http"),
        point("naive", 32, 20.0, "http"),
    ]
    ratios = bench.ratios(points, CEILING, 32)
    assert ratios["imgserve_vs_naive_at_32"] == 7.5
    assert ratios["imgserve_vs_ceiling_at_32"] == 0.75
    assert ratios["imgserve_grpc_vs_http_at_32"] == 0.4
    assert ratios["one_client_p50_ms"] == 10.0 and ratios["one_client_p50_ms_grpc"] == 12.5


def test_points_from_before_protocols_count_as_http() -> None:
    ratios = bench.ratios([point("imgserve", 32, 150.0), point("naive", 32, 30.0)], CEILING, 32)
    assert ratios["imgserve_vs_naive_at_32"] == 5.0 and "imgserve_grpc_vs_http_at_32" not in ratios


def test_the_table_says_which_points_went_over_grpc_and_their_cpu_per_request() -> None:
    table = markdown_table(
        [
            point("imgserve", 32, 150.0, "http", server_cpu=1.8, server_cpu_ms_per_request=12.0, generator_cpu=0.05),
            point("imgserve", 32, 140.0, "grpc", server_cpu=1.7, server_cpu_ms_per_request=12.1, generator_cpu=0.4),
            {**point("naive", 0, 19.4), "mode": "open", "rate": 60.0},
        ]
    ).splitlines()
    assert table[0] == (
        "| config | load | req/s | p50 ms | p95 ms | p99 ms | mean batch | errors | server CPU | server CPU ms/req "
        "| generator CPU |"
    )
    assert table[2] == "| imgserve | 32 clients | 150.0 | 10.0 | - | 20.0 | - | 0 | 1.8 | 12.0 | 0.05 |"
    assert table[3] == "| imgserve over gRPC | 32 clients | 140.0 | 10.0 | - | 20.0 | - | 0 | 1.7 | 12.1 | 0.4 |"
    assert table[4] == "| naive | 60.0 req/s offered | 19.4 | 10.0 | - | 20.0 | - | 0 | - | - | - |"
