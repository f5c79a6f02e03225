"""The peer benchmark's pure parts: the request, the command lines and files it builds for each
server, the venv it would make, and its report. Nothing here installs or starts a peer."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

from loadtests import bench, peers
from model_contract.manifest import ModelManifest


def test_the_request_is_one_small_uint8_tensor_in_v2_json() -> None:
    body, headers = peers.infer_body()
    request = json.loads(body)
    assert headers == {"Content-Type": "application/json"}
    [tensor] = request["inputs"]
    assert tensor["name"] == "images" and tensor["datatype"] == "UINT8" and tensor["shape"] == [1, 8, 8, 3]
    assert len(tensor["data"]) == 8 * 8 * 3 and all(0 <= v <= 255 for v in tensor["data"])
    assert len(body) < 2000


def test_a_peer_venv_is_made_afresh_from_the_base_python_then_installed_into(tmp_path: Path) -> None:
    venv = tmp_path / "mlserver"
    make, install = peers.install_commands("/usr/bin/python3.11", venv, peers.PEER_PACKAGES["mlserver"])
    assert make == ["/usr/bin/python3.11", "-m", "venv", "--clear", str(venv)]
    assert install[:4] == [str(venv / "bin" / "python"), "-m", "pip", "install"]
    assert install[-2:] == ["mlserver", "uvloop<0.22"]
    assert peers.PEER_PACKAGES["pytriton"] == ["nvidia-pytriton"]


def test_a_finished_install_is_reused_and_one_from_another_base_python_is_not(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ran: list[list[str]] = []
    monkeypatch.setattr(subprocess, "run", lambda command, **_: ran.append(command))
    venv = tmp_path / "pytriton"
    venv.mkdir()
    (venv / ".imgserve-installed").write_text("/usr/bin/python3.11\nnvidia-pytriton")
    assert peers.ensure_venv("/usr/bin/python3.11", venv, ["nvidia-pytriton"]) == venv / "bin" / "python"
    assert ran == []
    peers.ensure_venv("/opt/other/python3.11", venv, ["nvidia-pytriton"])
    assert [command[1:3] for command in ran] == [["-m", "venv"], ["-m", "pip"]]
    assert (venv / ".imgserve-installed").read_text() == "/opt/other/python3.11\nnvidia-pytriton"


def test_pytriton_gets_the_toy_model_and_the_interpreters_library_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LD_LIBRARY_PATH", "/already/there")
    server = peers.pytriton_server(tmp_path / "bin" / "python", "/usr/lib/x86_64-linux-gnu", 8123, tmp_path)
    assert server.env == {"LD_LIBRARY_PATH": "/usr/lib/x86_64-linux-gnu:/already/there"}
    assert server.command[1].endswith("peer_servers/pytriton_server.py") and Path(server.command[1]).exists()
    assert server.command[2:] == ["8123", "toy", "16", "0.005", "1000"]
    assert server.port == 8123


def test_mlserver_gets_a_repository_with_adaptive_batching_on_loopback(tmp_path: Path) -> None:
    server = peers.mlserver_server(tmp_path / "venv" / "bin" / "python", 8124, tmp_path)
    assert server.command == [str(tmp_path / "venv" / "bin" / "mlserver"), "start", str(tmp_path)]
    settings = json.loads((tmp_path / "settings.json").read_text())
    assert settings["host"] == "127.0.0.1" and settings["http_port"] == 8124
    assert len({settings["http_port"], settings["grpc_port"], settings["metrics_port"]}) == 3
    model = json.loads((tmp_path / "toy" / "model-settings.json").read_text())
    assert model["max_batch_size"] == 16 and 0 < model["max_batch_time"] <= 0.005
    assert model["implementation"] == "mlserver_model.ToyModel"
    assert model["parameters"]["extra"]["batch_seconds"] == 0.005
    assert "class ToyModel" in (tmp_path / "toy" / "mlserver_model.py").read_text()


def test_imgserve_serves_a_simulated_model_of_5ms_a_batch_up_to_16(tmp_path: Path) -> None:
    server = peers.imgserve_server(8125, tmp_path)
    assert server.command[:4] == [sys.executable, "-m", "imgserve", "serve"]
    assert server.command[-4:] == ["--workers", "0", "--port", "8125"]  # one process, not the CLI's default
    assert server.env["IMGSERVE_BATCHING__MAX_BATCH_SIZE"] == "16" and server.env["IMGSERVE_DEFAULT_MODEL"] == "toy"
    manifest = ModelManifest.read(tmp_path / "toy" / "1")
    assert manifest.runtime == "simulated" and manifest.item_shape == (8, 8, 3)
    assert manifest.parameters == {"fixed_seconds": 0.005, "per_image_seconds": 0.0}


@pytest.mark.parametrize("script", ["pytriton_server.py", "mlserver_model.py"])
def test_the_peer_scripts_parse_and_listen_only_where_told(script: str) -> None:
    source = (peers.SCRIPTS / script).read_text()
    ast.parse(source)
    if script == "pytriton_server.py":
        assert 'http_address="127.0.0.1"' in source and "allow_grpc=False" in source


def test_cpu_per_request_is_core_milliseconds_and_none_without_requests() -> None:
    assert peers.cpu_ms_per_request(2.0, 1000) == 2.0
    assert peers.cpu_ms_per_request(1.0, 0) is None


def test_the_table_has_a_row_per_point_and_says_which_server_failed() -> None:
    rows = [
        {"server": "imgserve", "clients": 16, "req_per_s": 900.5, "p50_ms": 17.1, "p99_ms": 30.2, "errors": 0,
         "server_cpu_ms_per_request": 0.8, "server_cpu_cores": 0.72},
        {"server": "mlserver", "error": "server exited with 1"},
    ]  # fmt: skip
    table = peers.markdown(rows).splitlines()
    assert table[0].startswith("| server | clients | req/s | p50 ms | p99 ms | errors | server CPU ms/req")
    assert table[2] == "| imgserve | 16 | 900.5 | 17.1 | 30.2 | 0 | 0.8 | 0.72 |"
    assert table[3].startswith("| mlserver | - | failed: server exited with 1")


def test_imgserve_at_n_workers_runs_the_supervisor_with_n_front_end_processes(tmp_path: Path) -> None:
    server = peers.imgserve_server(8126, tmp_path, workers=2)
    assert server.command[-4:] == ["--workers", "2", "--port", "8126"]
    assert peers.imgserve_label(0) == "imgserve" and peers.imgserve_label(2) == "imgserve --workers 2"


def test_imgserve_gets_a_row_per_worker_count_and_the_peers_one_each() -> None:
    assert peers.entries(["pytriton", "mlserver", "imgserve"], [0, 2]) == [
        ("pytriton", "pytriton", 0),
        ("mlserver", "mlserver", 0),
        ("imgserve", "imgserve", 0),
        ("imgserve --workers 2", "imgserve", 2),
    ]
    assert peers.entries(["mlserver"], [0, 2]) == [("mlserver", "mlserver", 0)]


@pytest.mark.parametrize(("text", "counts"), [("0", [0]), ("0,2", [0, 2]), (" 1, 4 ,", [1, 4])])
def test_worker_counts_are_whole_numbers_from_zero(text: str, counts: list[int]) -> None:
    assert peers.worker_counts(text) == counts


@pytest.mark.parametrize("text", ["", "-1", "1,x", ","])
def test_other_worker_counts_are_refused(text: str) -> None:
    with pytest.raises(ValueError):
        peers.worker_counts(text)


def test_mean_batch_is_images_over_batches_between_two_readings() -> None:
    assert peers.mean_batch((100.0, 10.0), (180.0, 20.0)) == 8.0
    assert peers.mean_batch((0.0, 0.0), (0.0, 0.0)) is None  # no batch ran, or no imgserve metrics


def _captured_run(monkeypatch: pytest.MonkeyPatch, argv: list[str], main: object) -> dict[str, object]:
    calls: list[dict[str, object]] = []

    def fake_run(clients: list[int], duration: float, out_dir: Path, **options: object) -> dict[str, object]:
        calls.append({"clients": clients, "duration": duration, **options})
        return {"rows": []}

    monkeypatch.setattr(peers, "run", fake_run)
    monkeypatch.setattr(sys, "argv", argv)
    main()  # type: ignore[operator]
    [call] = calls
    return call


def test_the_worker_counts_reach_the_run_from_this_command_and_from_bench(monkeypatch: pytest.MonkeyPatch) -> None:
    argv = ["--imgserve-workers", "0,2", "--servers", "imgserve", "--clients", "16", "--duration", "2"]
    for main, prog in ((peers.main, ["peers"]), (bench.main, ["bench", "--peers"])):
        call = _captured_run(monkeypatch, [*prog, *argv], main)
        assert call["imgserve_workers"] == [0, 2] and call["servers"] == ["imgserve"]
        assert call["clients"] == [16] and call["duration"] == 2.0
    assert _captured_run(monkeypatch, ["peers"], peers.main)["imgserve_workers"] == [0]


def test_imgserve_serves_grpc_only_on_a_port_it_is_given(tmp_path: Path) -> None:
    assert "--grpc-port" not in peers.imgserve_command(tmp_path, 8127, 1)
    command = peers.imgserve_command(tmp_path, 8127, 1, grpc_port=8128)
    assert command[-6:] == ["--workers", "1", "--grpc-port", "8128", "--port", "8127"]
