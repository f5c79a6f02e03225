"""The scaling benchmark's pure parts: its options, the server each point starts, the efficiency
arithmetic, the uploads and the table. No server is started here."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from loadtests import scaling
from model_contract.manifest import ModelManifest
from server.grpc_api import inference_pb2 as pb


def plan(*argv: str) -> scaling.Plan:
    return scaling.parse_args(list(argv))[0]


def test_each_table_is_one_flag_with_its_defaults() -> None:
    corems = plan("--table", "corems")
    assert corems.workers == [0, 1, 2] and corems.clients_at(2) == [64]
    assert corems.models == ["simulated"] and corems.payloads == ["jpeg"]
    assert (corems.fixed_ms, corems.per_image_ms, corems.max_batch) == (5.0, 0.1, 32)
    real = plan("--table", "real")
    assert real.workers == [0, 2] and real.clients_at(2) == [1, 32] and real.models == ["real"]
    assert real.max_batch is None  # the server's own
    scaled = plan("--table", "scaling")
    assert scaled.workers == [1, 2, 4, 8, 12] and scaled.payloads == ["jpeg", "v2"]
    assert scaled.models == ["simulated", "real"]
    assert (scaled.fixed_ms, scaled.per_image_ms, scaled.max_batch) == (2.0, 0.02, 128)
    assert scaling.parse_args(["--table", "corems"])[1] == Path("loadtests/results")


def test_in_the_scaling_table_clients_grow_with_the_workers() -> None:
    scaled = plan("--table", "scaling")
    assert [scaled.clients_at(n) for n in (0, 1, 2, 12)] == [[32], [32], [64], [384]]
    assert plan("--table", "scaling", "--clients-per-worker", "8,16").clients_at(4) == [32, 64]
    assert plan("--table", "scaling", "--clients", "100").clients_at(4) == [100]  # as given
    assert plan("--table", "corems", "--clients-per-worker", "16").clients_at(2) == [32]


def test_flags_override_the_tables_defaults(tmp_path: Path) -> None:
    p = plan(
        "--table", "scaling", "--workers", "1,2", "--models", "simulated", "--payloads", "v2",
        "--fixed-ms", "3", "--per-image-ms", "0.5", "--max-batch", "64", "--runtime", "keras_jax",
        "--device", "gpu", "--duration", "2", "--server-env", "IMGSERVE_COMPUTE_DTYPE=bfloat16",
        "--model", "elsewhere/resnet/3",
    )  # fmt: skip
    assert p.workers == [1, 2] and p.models == ["simulated"] and p.payloads == ["v2"]
    assert (p.fixed_ms, p.per_image_ms, p.max_batch, p.duration) == (3.0, 0.5, 64, 2.0)
    assert (p.runtime, p.device, p.model) == ("keras_jax", "gpu", Path("elsewhere/resnet/3"))
    assert p.server_env == {"IMGSERVE_COMPUTE_DTYPE": "bfloat16"}


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["--table", "gpu"],
        ["--table", "corems", "--workers", "-1"],
        ["--table", "corems", "--clients", "0"],
        ["--table", "corems", "--clients", "8", "--clients-per-worker", "8"],
        ["--table", "corems", "--models", "resnet"],
        ["--table", "corems", "--payloads", "png"],
        ["--table", "corems", "--server-env", "IMGSERVE_PORT"],
    ],
)
def test_bad_options_stop_before_anything_runs(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as stopped:
        scaling.parse_args(argv)
    assert stopped.value.code == 2
    capsys.readouterr()


def test_corems_runs_the_simulated_model_at_most_32_a_batch_with_room_for_every_client() -> None:
    corems = plan("--table", "corems")
    for workers in corems.workers:
        assert scaling.server_env(corems, "simulated", workers) == {
            "IMGSERVE_DEFAULT_MODEL": "simulated",
            "IMGSERVE_BATCHING__MAX_BATCH_SIZE": "32",
            "IMGSERVE_BATCHING__MAX_QUEUE_SIZE": "256",
            "IMGSERVE_LIMITS__MAX_REQUESTS_IN_PROGRESS": "256",
            "IMGSERVE_HTTP__MAX_CONNECTIONS": "1000",
        }


def test_the_real_table_keeps_the_servers_batching_and_names_the_built_model() -> None:
    env = scaling.server_env(plan("--table", "real"), "real", 2)
    assert env["IMGSERVE_DEFAULT_MODEL"] == "efficientnet_lite0"
    assert not any(key.startswith("IMGSERVE_BATCHING__MAX_BATCH") for key in env)
    assert "IMGSERVE_RUNTIME" not in env and "IMGSERVE_DEVICE" not in env


def test_the_scaling_table_batches_like_a_gpu_and_gives_the_runtime_to_the_real_model_only() -> None:
    scaled = plan("--table", "scaling", "--runtime", "keras_jax", "--device", "gpu", "--server-env", "IMGSERVE_X=1")
    simulated = scaling.server_env(scaled, "simulated", 1)
    assert simulated["IMGSERVE_BATCHING__MAX_BATCH_SIZE"] == "128"
    assert json.loads(simulated["IMGSERVE_BATCHING__ALLOWED_BATCH_SIZES"]) == [1, 2, 4, 8, 16, 32, 64, 128]
    assert simulated["IMGSERVE_BATCHING__MAX_CONCURRENT_BATCHES"] == "2"
    assert "IMGSERVE_RUNTIME" not in simulated and simulated["IMGSERVE_X"] == "1"
    real = scaling.server_env(scaled, "real", 12)  # 384 clients
    assert (real["IMGSERVE_RUNTIME"], real["IMGSERVE_DEVICE"]) == ("keras_jax", "gpu")
    assert real["IMGSERVE_BATCHING__MAX_QUEUE_SIZE"] == "768"
    assert real["IMGSERVE_LIMITS__MAX_REQUESTS_IN_PROGRESS"] == "768"
    assert real["IMGSERVE_HTTP__MAX_CONNECTIONS"] == "1536"


def test_the_command_line_env_wins() -> None:
    p = plan("--table", "corems", "--server-env", "IMGSERVE_BATCHING__MAX_BATCH_SIZE=8")
    assert scaling.server_env(p, "simulated", 0)["IMGSERVE_BATCHING__MAX_BATCH_SIZE"] == "8"


def test_powers_of_two_end_at_the_max_batch() -> None:
    assert scaling.power_of_two_sizes(1) == [1]
    assert scaling.power_of_two_sizes(100) == [1, 2, 4, 8, 16, 32, 64, 100]


def test_the_simulated_model_has_the_plans_cost_in_seconds(tmp_path: Path) -> None:
    scaling.write_simulated(tmp_path, plan("--table", "corems"))
    manifest = ModelManifest.read(tmp_path / "simulated" / "1")
    assert manifest.runtime == "simulated" and manifest.item_shape == (224, 224, 3)
    assert manifest.parameters == pytest.approx({"fixed_seconds": 0.005, "per_image_seconds": 0.0001})


def test_uploads_are_640x480_jpeg_photos() -> None:
    uploads = scaling.uploads_640x480()
    assert len(uploads) == 5 and len(set(uploads)) == 5
    for data in uploads:
        image = Image.open(io.BytesIO(data))
        assert image.format == "JPEG" and image.size == (640, 480) and image.mode == "RGB"


def row(model: str, payload: str, workers: int, rate: float, **extra: Any) -> dict[str, Any]:
    return {"model": model, "payload": payload, "workers": workers, "req_per_s": rate, **extra}


def test_efficiency_is_throughput_over_n_times_one_workers() -> None:
    rows = scaling.efficiency(
        [
            row("simulated", "jpeg", 1, 100.0, clients=32, clients_per_worker=32),
            row("simulated", "jpeg", 2, 190.0, clients=64, clients_per_worker=32),
            row("simulated", "jpeg", 4, 200.0, clients=128, clients_per_worker=32),
            row("simulated", "v2", 1, 400.0, clients=32, clients_per_worker=32),
            row("simulated", "v2", 2, 800.0, clients=64, clients_per_worker=32),
            row("real", "jpeg", 2, 50.0, clients=64, clients_per_worker=32),  # no 1-worker row
        ]
    )
    assert [r.get("efficiency") for r in rows] == [1.0, 0.95, 0.5, 1.0, 1.0, None]


def test_efficiency_compares_like_loads_and_leaves_one_process_and_failures_alone() -> None:
    rows = scaling.efficiency(
        [
            row("simulated", "jpeg", 0, 120.0, clients=64),
            row("simulated", "jpeg", 1, 100.0, clients=64),
            row("simulated", "jpeg", 1, 20.0, clients=1),
            row("simulated", "jpeg", 2, 150.0, clients=64),
            row("simulated", "jpeg", 2, 30.0, clients=1),
            {"model": "simulated", "workers": 4, "error": "server exited with 1"},
        ]
    )
    assert [r.get("efficiency") for r in rows] == [None, 1.0, 1.0, 0.75, 0.75, None]


def test_the_table_shows_the_chosen_columns_and_which_server_failed() -> None:
    rows = [
        row("simulated", "v2", 1, 900.5, clients=32, p50_ms=17.1, p99_ms=30.2, efficiency=1.0,
            server_cpu_ms_per_request=0.8, mean_batch_size=12.5, generator_cpu_cores=0.9, errors=0),
        row("real", "jpeg", 2, 80.0, clients=64, p50_ms=700.0, p99_ms=900.0, server_cpu_ms_per_request=None,
            errors=3),
        {"model": "real", "workers": 4, "error": "server not ready after 600s"},
    ]  # fmt: skip
    table = scaling.markdown(rows, scaling.TABLES["scaling"].columns).splitlines()
    assert table[0] == (
        "| model | payload | workers | clients | req/s | p50 ms | p99 ms | efficiency | CPU ms/req | mean batch "
        "| generator CPU | errors |"
    )
    assert table[1] == "|" + "---|" * 12
    assert table[2] == "| simulated | v2 | 1 | 32 | 900.5 | 17.1 | 30.2 | 1.0 | 0.8 | 12.5 | 0.9 | 0 |"
    assert table[3] == "| real | jpeg | 2 | 64 | 80.0 | 700.0 | 900.0 | - | - | - | - | 3 |"
    assert table[4].startswith("| real | - | 4 | failed: server not ready after 600s |")
    assert table[4].count("|") == 13


def test_the_corems_table_leads_with_workers_and_core_ms() -> None:
    [header, _] = scaling.markdown([], scaling.TABLES["corems"].columns).splitlines()
    assert header == (
        "| payload | workers | clients | req/s | p50 ms | p99 ms | CPU ms/req | CPU cores | mean batch | errors |"
    )


def test_the_report_names_the_real_model_without_its_path() -> None:
    p = plan("--table", "real", "--model", "/somewhere/private/models/efficientnet_lite0/1", "--payloads", "v2")
    report = scaling.report(p, [])
    assert report["settings"]["real_model"] == "efficientnet_lite0/1"
    assert "/somewhere" not in json.dumps(report)
    assert {"cpus", "cpu_model", "gpu"} <= set(report["machine"])


def test_http_is_the_protocol_unless_grpc_is_asked_for() -> None:
    assert plan("--table", "real").protocols == ["http"]
    assert scaling.columns(plan("--table", "real")) == scaling.TABLES["real"].columns
    both = plan("--table", "real", "--payloads", "jpeg,v2", "--protocols", "http,grpc", "--grpc-channels", "4")
    assert both.protocols == ["http", "grpc"] and both.grpc_channels == 4
    assert both.protocols_for("v2") == ["http", "grpc"]
    assert both.protocols_for("jpeg") == ["http"]  # an upload to /v1/classify is HTTP only
    assert plan("--table", "real", "--payloads", "v2", "--protocols", "grpc").protocols_for("v2") == ["grpc"]


@pytest.mark.parametrize(
    "argv",
    [
        ["--protocols", "grpc"],  # the real table's payload is jpeg
        ["--protocols", "http,grpc", "--payloads", "jpeg"],
        ["--protocols", "quic", "--payloads", "v2"],
        ["--protocols", "", "--payloads", "v2"],
        ["--protocols", "grpc", "--payloads", "v2", "--grpc-channels", "0"],
    ],
)
def test_bad_protocol_options_stop_before_anything_runs(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as stopped:
        scaling.parse_args(["--table", "real", *argv])
    assert stopped.value.code == 2
    capsys.readouterr()


def test_with_grpc_the_table_says_each_rows_protocol() -> None:
    p = plan("--table", "real", "--payloads", "v2", "--protocols", "http,grpc")
    assert scaling.columns(p) == (
        "payload", "protocol", "workers", "clients", "req_per_s", "p50_ms", "p99_ms", "server_cpu_ms_per_request",
        "server_cpu_cores", "mean_batch_size", "generator_cpu_cores", "errors",
    )  # fmt: skip
    rows = [
        row("real", "v2", 0, 80.0, protocol="grpc", clients=32, p50_ms=380.0, p99_ms=500.0, errors=0),
        {"model": "real", "workers": 1, "error": "server exited with 1"},
    ]
    table = scaling.markdown(rows, scaling.columns(p)).splitlines()
    assert table[0].startswith("| payload | protocol | workers | clients | req/s |")
    assert table[2].startswith("| v2 | grpc | 0 | 32 | 80.0 | 380.0 | 500.0 |")
    assert table[3].startswith("| - | - | 1 | failed: server exited with 1 |")
    assert table[3].count("|") == table[0].count("|")


def test_a_table_without_a_model_column_gains_one_when_it_measures_two_models() -> None:
    both = plan("--table", "real", "--models", "simulated,real", "--payloads", "v2", "--protocols", "http,grpc")
    assert scaling.columns(both)[:4] == ("model", "payload", "protocol", "workers")
    assert scaling.columns(plan("--table", "corems", "--models", "simulated,real"))[:3] == (
        "model",
        "payload",
        "workers",
    )
    assert scaling.columns(plan("--table", "scaling")) == scaling.TABLES["scaling"].columns  # it has one
    with_grpc = scaling.columns(plan("--table", "scaling", "--protocols", "http,grpc"))
    assert with_grpc.count("generator_cpu_cores") == 1 and with_grpc[:3] == ("model", "payload", "protocol")


def test_efficiency_compares_a_protocol_with_itself() -> None:
    rows = scaling.efficiency(
        [
            row("simulated", "v2", 1, 100.0, protocol="http", clients=32),
            row("simulated", "v2", 1, 50.0, protocol="grpc", clients=32),
            row("simulated", "v2", 2, 150.0, protocol="http", clients=32),
            row("simulated", "v2", 2, 150.0, protocol="grpc", clients=32),
        ]
    )
    assert [r.get("efficiency") for r in rows] == [1.0, 1.0, 0.75, 1.5]


def test_the_grpc_requests_are_the_v2_payloads_images_for_the_model() -> None:
    requests = scaling.grpc_requests_for("simulated", 224)
    assert len(requests) == 5 and len(set(requests)) == 5
    message = pb.ModelInferRequest.FromString(requests[0])
    assert message.model_name == "simulated" and list(message.inputs[0].shape) == [1, 224, 224, 3]
    [(path, bodies)] = [scaling.requests_for("v2", "simulated", 224)]
    assert path == "/v2/models/simulated/infer"
    header_length = int(bodies[0][1]["Inference-Header-Content-Length"])
    assert bodies[0][0][header_length:] == message.raw_input_contents[0]  # the same bytes on both protocols
