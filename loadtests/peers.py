"""imgserve beside PyTriton and MLServer: the same toy model and the same requests, in one run.

    python -m loadtests.peers --clients 16,64 --duration 10
    python -m loadtests.bench --peers --clients 16,64 --duration 10   # the same

The model sleeps 5 ms per batch (not per item), at most 16 items a batch, with each server's
dynamic batching on: PyTriton's ``DynamicBatcher``, MLServer's adaptive batching, imgserve's
batcher over its ``simulated`` runtime. Every server gets the same Open Inference Protocol v2
JSON request, ``POST /v2/models/toy/infer`` with one UINT8 [1, 8, 8, 3] tensor, checked once
(200 and an output) before it is measured in a closed loop (wrk) at each client count.

PyTriton and MLServer are installed into their own virtual environments under
``~/.cache/imgserve-peers/`` (made on the first run, reused after), from a Python 3.11
interpreter (``--base-python``). Each server runs as its own process group on 127.0.0.1 and is
stopped by its PID. Server CPU is that of the server's whole process tree (Triton's and
MLServer's model processes included) during the point, divided by the requests it served.
Writes ``peers.json`` and ``peers.md`` to ``--out-dir``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from loadtests.batching_bench import write_model
from loadtests.measure import closed_loop
from loadtests.payloads import HttpRequest
from loadtests.server_process import free_port, server_process
from loadtests.system import machine, tree_cpu_seconds, wait_until_quiet

MODEL = "toy"
ITEM_SHAPE = (8, 8, 3)
MAX_BATCH = 16
BATCH_SECONDS = 0.005
PEER_QUEUE_DELAY_S = 0.001
"""How long PyTriton and MLServer may wait for a fuller batch (MLServer needs more than 0 to
batch at all). imgserve never waits: it batches what queued while the model was busy."""

PEER_PACKAGES = {"pytriton": ["nvidia-pytriton"], "mlserver": ["mlserver", "uvloop<0.22"]}
DISTRIBUTIONS = {"pytriton": "nvidia-pytriton", "mlserver": "mlserver"}
SERVERS = ("pytriton", "mlserver", "imgserve")
SCRIPTS = Path(__file__).parent / "peer_servers"
READY_PATH = f"/v2/models/{MODEL}/ready"  # Triton is ready before its models are
INSTALL_TIMEOUT_S = 1800


@dataclass(frozen=True)
class Server:
    """How to start one server: its command, its extra environment, its working folder."""

    command: list[str]
    port: int
    env: dict[str, str]
    cwd: Path


def default_cache() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "imgserve-peers"


def venv_python(venv: Path) -> Path:
    return venv / "bin" / "python"


def default_base_python() -> str:
    """The system's Python 3.11 where there is one (a pyenv shim may pick another build)."""
    system = Path("/usr/bin/python3.11")
    return str(system) if system.exists() else shutil.which("python3.11") or "python3.11"


def install_commands(base_python: str, venv: Path, packages: list[str]) -> list[list[str]]:
    """Make the venv afresh (``--clear``), then install into it."""
    return [
        [base_python, "-m", "venv", "--clear", str(venv)],
        [str(venv_python(venv)), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", *packages],
    ]


def ensure_venv(base_python: str, venv: Path, packages: list[str]) -> Path:
    """The venv's Python, after installing ``packages`` unless a finished install of them, from
    this base Python, is there already."""
    marker = venv / ".imgserve-installed"
    wanted = "\n".join([base_python, *packages])
    if not (marker.exists() and marker.read_text() == wanted):
        for command in install_commands(base_python, venv, packages):
            print(" ".join(command), file=sys.stderr)
            subprocess.run(command, check=True, timeout=INSTALL_TIMEOUT_S)
        marker.write_text(wanted)
    return venv_python(venv)


def library_dir(python: str) -> str:
    """The folder of an interpreter's ``libpython`` (PyTriton's Triton backend loads it)."""
    code = "import sysconfig; print(sysconfig.get_config_var('LIBDIR'))"
    return subprocess.run([python, "-c", code], check=True, capture_output=True, text=True, timeout=60).stdout.strip()


def version(python: str, distribution: str) -> str:
    code = f"import importlib.metadata as m; print(m.version({distribution!r}))"
    run = subprocess.run([python, "-c", code], capture_output=True, text=True, timeout=60)
    return run.stdout.strip() or "unknown"


def pytriton_server(python: Path, libdir: str, port: int, workdir: Path) -> Server:
    args = [str(port), MODEL, str(MAX_BATCH), str(BATCH_SECONDS), str(round(PEER_QUEUE_DELAY_S * 1e6))]
    library_path = ":".join(p for p in (libdir, os.environ.get("LD_LIBRARY_PATH", "")) if p)
    command = [str(python), str(SCRIPTS / "pytriton_server.py"), *args]
    return Server(command, port, {"LD_LIBRARY_PATH": library_path}, workdir)


def mlserver_server(python: Path, port: int, workdir: Path) -> Server:
    """Writes MLServer's repository (settings, the model's settings and its runtime) to ``workdir``."""
    settings = {
        "host": "127.0.0.1",
        "http_port": port,
        "grpc_port": free_port(),
        "metrics_port": free_port(),
        "debug": False,
    }
    model_settings = {
        "name": MODEL,
        "implementation": "mlserver_model.ToyModel",
        "max_batch_size": MAX_BATCH,
        "max_batch_time": PEER_QUEUE_DELAY_S,
        "parameters": {"extra": {"batch_seconds": BATCH_SECONDS}},
    }
    (workdir / MODEL).mkdir(parents=True, exist_ok=True)
    (workdir / "settings.json").write_text(json.dumps(settings))
    (workdir / MODEL / "model-settings.json").write_text(json.dumps(model_settings))
    shutil.copy(SCRIPTS / "mlserver_model.py", workdir / MODEL / "mlserver_model.py")
    return Server([str(python.parent / "mlserver"), "start", str(workdir)], port, {}, workdir)


def imgserve_server(port: int, workdir: Path) -> Server:
    """Writes a ``simulated`` model (5 ms a batch, nothing per image) to ``workdir``."""
    if not (workdir / MODEL).exists():
        params = {"fixed_seconds": BATCH_SECONDS, "per_image_seconds": 0.0}
        size = ITEM_SHAPE[0]
        write_model(workdir, MODEL, "simulated", image_size=size, resize_shorter_side=size, parameters=params)
    command = [sys.executable, "-m", "imgserve", "serve", "--model-repository", str(workdir), "--port", str(port)]
    env = {"IMGSERVE_DEFAULT_MODEL": MODEL, "IMGSERVE_BATCHING__MAX_BATCH_SIZE": str(MAX_BATCH)}
    return Server(command, port, env, workdir)


def build_server(name: str, port: int, workdir: Path, base_python: str, cache: Path) -> tuple[Server, str]:
    """The server and its version; a peer's venv is made first if it is not there yet."""
    if name == "imgserve":
        return imgserve_server(port, workdir), version(sys.executable, "imgserve")
    python = ensure_venv(base_python, cache / name, PEER_PACKAGES[name])
    if name == "pytriton":
        server = pytriton_server(python, library_dir(base_python), port, workdir)
    else:
        server = mlserver_server(python, port, workdir)
    return server, version(str(python), DISTRIBUTIONS[name])


def infer_body() -> HttpRequest:
    """One v2 JSON request: a UINT8 [1, 8, 8, 3] tensor named ``images``, data flat."""
    shape = [1, *ITEM_SHAPE]
    data = [i % 251 for i in range(math.prod(shape))]
    body = {"inputs": [{"name": "images", "datatype": "UINT8", "shape": shape, "data": data}]}
    return json.dumps(body).encode(), {"Content-Type": "application/json"}


def check_answer(base_url: str, body: HttpRequest) -> None:
    response = httpx.post(f"{base_url}/v2/models/{MODEL}/infer", content=body[0], headers=body[1], timeout=30)
    if response.status_code != 200 or not response.json().get("outputs"):
        raise RuntimeError(f"bad answer: {response.status_code} {response.text[:300]}")


def cpu_ms_per_request(cpu_seconds: float, requests: float) -> float | None:
    return round(cpu_seconds * 1000 / requests, 3) if requests else None


def measure(base_url: str, server_pid: int, body: HttpRequest, clients: int, duration: float) -> dict[str, Any]:
    """One closed-loop point on one server: wrk figures and the server tree's CPU per request."""
    url = f"{base_url}/v2/models/{MODEL}/infer"
    closed_loop(url, [body], clients, min(3.0, duration))  # warm up
    wait_until_quiet()
    before = tree_cpu_seconds(server_pid)
    figures = closed_loop(url, [body], clients, duration)
    cpu = tree_cpu_seconds(server_pid) - before
    return {
        **figures,
        "server_cpu_cores": round(cpu / float(figures["seconds"]), 2),
        "server_cpu_ms_per_request": cpu_ms_per_request(cpu, float(figures["requests_ok"]) + figures["errors"]),
    }


def markdown(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| server | clients | req/s | p50 ms | p99 ms | errors | server CPU ms/req | server CPU cores |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['server']} | - | failed: {r['error']} | | | | | |")
            continue
        cpu = r["server_cpu_ms_per_request"]
        lines.append(
            f"| {r['server']} | {r['clients']} | {r['req_per_s']} | {r['p50_ms']} | {r['p99_ms']} | {r['errors']} | "
            f"{'-' if cpu is None else cpu} | {r['server_cpu_cores']} |"
        )
    return "\n".join(lines)


def _last_line(error: BaseException, tmp: str) -> str:
    """The error's last line for the report, without this machine's paths."""
    lines = str(error).replace(tmp, "<tmp>").replace(str(Path.home()), "~").strip().splitlines()
    return (lines[-1] if lines else type(error).__name__)[:300]


def run(
    clients: list[int], duration: float, out_dir: Path, *, base_python: str, cache: Path, servers: list[str]
) -> dict[str, Any]:
    rows: list[dict[str, Any]] = []
    versions: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="imgserve-peers-") as tmp:
        for name in servers:
            workdir = Path(tmp) / name
            workdir.mkdir()
            try:
                server, versions[name] = build_server(name, free_port(), workdir, base_python, cache)
                rows += measure_server(name, server, clients, duration)
            except (OSError, RuntimeError, subprocess.SubprocessError, httpx.HTTPError, ValueError) as error:
                log = workdir / "server.log"
                tail = log.read_text(errors="replace").strip().splitlines()[-5:] if log.exists() else []
                print(f"{name} failed: {error}\n" + "\n".join(tail), file=sys.stderr)
                rows.append({"server": name, "error": _last_line(error, tmp)})
    report = {
        "machine": machine(),
        "model": {"batch_seconds": BATCH_SECONDS, "max_batch": MAX_BATCH, "peer_queue_delay_s": PEER_QUEUE_DELAY_S},
        "request": {"shape": [1, *ITEM_SHAPE], "datatype": "UINT8", "body_bytes": len(infer_body()[0])},
        "duration_s": duration,
        "versions": versions,
        "rows": rows,
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "peers.json").write_text(json.dumps(report, indent=2))
    (out_dir / "peers.md").write_text(markdown(rows) + "\n")
    return report


def measure_server(name: str, server: Server, clients: list[int], duration: float) -> list[dict[str, Any]]:
    """Start the server, check its answer once, measure it at each client count, stop it."""
    body = infer_body()
    rows = []
    with (
        (server.cwd / "server.log").open("wb") as log,
        server_process(
            server.command, server.port, server.env, stderr=log, stdout=log, ready_path=READY_PATH, cwd=server.cwd,
            own_group=True,
        ) as (base_url, process),
    ):  # fmt: skip
        check_answer(base_url, body)
        for n in clients:
            print(f"{name}: {n} clients ...", file=sys.stderr)
            rows.append({"server": name, **measure(base_url, process.pid, body, n, duration)})
    return rows


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--base-python", default=default_base_python(), help="Python 3.11 that makes the venvs")
    parser.add_argument("--cache", type=Path, default=default_cache(), help="where the peers' venvs live")
    parser.add_argument("--servers", default=",".join(SERVERS), help="which of pytriton,mlserver,imgserve")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", default="16,64", help="closed-loop concurrencies")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per point")
    parser.add_argument("--out-dir", type=Path, default=Path("loadtests/results"))
    add_arguments(parser)
    args = parser.parse_args()
    clients = [int(c) for c in args.clients.split(",") if c]
    servers = [s for s in args.servers.split(",") if s]
    report = run(clients, args.duration, args.out_dir, base_python=args.base_python, cache=args.cache, servers=servers)
    print(markdown(report["rows"]))


if __name__ == "__main__":
    main()
