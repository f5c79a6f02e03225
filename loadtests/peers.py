"""imgserve beside PyTriton and MLServer: the same toy model and the same requests, in one run.

    python -m loadtests.peers --clients 16,64 --duration 10
    python -m loadtests.peers --imgserve-workers 0,2 --clients 16,64 --duration 10
    python -m loadtests.bench --peers --clients 16,64 --duration 10   # the same as the first

The model sleeps 5 ms per batch (not per item), at most 16 items a batch, with each server's
dynamic batching on: PyTriton's ``DynamicBatcher``, MLServer's adaptive batching, imgserve's
batcher over its ``simulated`` runtime. imgserve runs once per ``--imgserve-workers`` count,
each its own row: ``imgserve`` is one process (``serve --workers 0``), ``imgserve --workers N``
is N front-end processes beside a model-owner process under a supervisor. Every server gets
the same Open Inference Protocol v2 JSON request, ``POST /v2/models/toy/infer`` with one UINT8
[1, 8, 8, 3] tensor, checked once (200 and an output) before it is measured in a closed loop
(wrk) at each client count.

PyTriton and MLServer are installed into their own virtual environments under
``~/.cache/imgserve-peers/`` (made on the first run, reused after), from a Python 3.11
interpreter (``--base-python``). Each server runs as its own process group on 127.0.0.1 and is
stopped by its PID. Server CPU is that of the server's whole process tree (Triton's and
MLServer's model processes, imgserve's supervisor, workers and model owner included) during the
point, divided by the requests it served.
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
from loadtests.grpc_load import GrpcLoad
from loadtests.measure import batch_stats, closed_loop, cpu_ms_per_request, generator_name
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
INFER_PATH = f"/v2/models/{MODEL}/infer"
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


def imgserve_command(repository: Path, port: int, workers: int, grpc_port: int = 0) -> list[str]:
    """``imgserve serve`` on 127.0.0.1 with ``workers`` front-end processes (0: one process), and
    gRPC on ``grpc_port`` if one is given."""
    command = [sys.executable, "-m", "imgserve", "serve", "--model-repository", str(repository)]
    grpc = ["--grpc-port", str(grpc_port)] if grpc_port else []
    return [*command, "--workers", str(workers), *grpc, "--port", str(port)]


def imgserve_server(port: int, workdir: Path, workers: int = 0) -> Server:
    """Writes a ``simulated`` model (5 ms a batch, nothing per image) to ``workdir``."""
    if not (workdir / MODEL).exists():
        params = {"fixed_seconds": BATCH_SECONDS, "per_image_seconds": 0.0}
        size = ITEM_SHAPE[0]
        write_model(workdir, MODEL, "simulated", image_size=size, resize_shorter_side=size, parameters=params)
    env = {"IMGSERVE_DEFAULT_MODEL": MODEL, "IMGSERVE_BATCHING__MAX_BATCH_SIZE": str(MAX_BATCH)}
    return Server(imgserve_command(workdir, port, workers), port, env, workdir)


def imgserve_label(workers: int) -> str:
    return "imgserve" if workers == 0 else f"imgserve --workers {workers}"


def worker_counts(text: str) -> list[int]:
    """``"0,2"`` to ``[0, 2]``: imgserve's front-end process counts, 0 for one process."""
    counts = [int(w) for w in text.split(",") if w.strip()]
    if not counts or any(w < 0 for w in counts):
        raise ValueError(f"worker counts are whole numbers from 0: {text!r}")
    return counts


def entries(servers: list[str], imgserve_workers: list[int]) -> list[tuple[str, str, int]]:
    """(row label, server name, imgserve workers) for each server to measure, in order."""
    out: list[tuple[str, str, int]] = []
    for name in servers:
        counts = imgserve_workers if name == "imgserve" else [0]
        out += [(imgserve_label(n) if name == "imgserve" else name, name, n) for n in counts]
    return out


def build_server(
    name: str, port: int, workdir: Path, base_python: str, cache: Path, imgserve_workers: int = 0
) -> tuple[Server, str]:
    """The server and its version; a peer's venv is made first if it is not there yet."""
    if name == "imgserve":
        return imgserve_server(port, workdir, imgserve_workers), version(sys.executable, "imgserve")
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
    response = httpx.post(f"{base_url}{INFER_PATH}", content=body[0], headers=body[1], timeout=30)
    if response.status_code != 200 or not response.json().get("outputs"):
        raise RuntimeError(f"bad answer: {response.status_code} {response.text[:300]}")


def own_and_children_cpu_seconds() -> float:
    """This process's CPU and its finished children's (a wrk run, once it has exited)."""
    usage = os.times()
    return usage.user + usage.system + usage.children_user + usage.children_system


def mean_batch(before: tuple[float, float], after: tuple[float, float]) -> float | None:
    """Images per batch between two ``batch_stats`` readings; None where no batch ran (or the
    server has no imgserve metrics)."""
    batches = after[1] - before[1]
    return round((after[0] - before[0]) / batches, 2) if batches > 0 else None


def measure(
    base_url: str,
    server_pid: int,
    bodies: list[HttpRequest],
    clients: int,
    duration: float,
    path: str = INFER_PATH,
    *,
    grpc: GrpcLoad | None = None,
) -> dict[str, Any]:
    """One closed-loop point on one server, after a warm-up and a wait for a quiet machine: wrk
    figures, the CPU of the server's whole process tree (per request and in cores), the load
    generator's CPU in cores (wrk, or this process), and the mean batch where the server reports
    imgserve's batch metrics. With ``grpc``, the load is its gRPC calls instead, from
    ``loadtests.grpc_load``'s process (the generator's CPU is that process's while it sent)."""
    url = f"{base_url}{path}"
    closed_loop(url, bodies, clients, min(3.0, duration), grpc=grpc)  # warm up
    wait_until_quiet()
    batches_before = batch_stats(base_url)  # outside the CPU window: /metrics costs the server CPU
    generator_before = own_and_children_cpu_seconds()
    before = tree_cpu_seconds(server_pid)
    figures = closed_loop(url, bodies, clients, duration, grpc=grpc)
    cpu = tree_cpu_seconds(server_pid) - before
    generator = figures.pop("generator_cpu_seconds", None)  # a gRPC generator's own, in its window
    if generator is None:
        generator = own_and_children_cpu_seconds() - generator_before
    batch = mean_batch(batches_before, batch_stats(base_url))
    seconds = float(figures["seconds"])
    return {
        **figures,
        "server_cpu_cores": round(cpu / seconds, 2),
        "server_cpu_ms_per_request": cpu_ms_per_request(cpu, float(figures["requests_ok"]) + figures["errors"]),
        "generator_cpu_cores": round(generator / seconds, 2),
        "generator": generator_name(grpc),
        **({} if batch is None else {"mean_batch_size": batch}),
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


FAILURES = (OSError, RuntimeError, subprocess.SubprocessError, httpx.HTTPError, ValueError)
"""What a server that fails to start, answer or be measured raises: a failed row, not a stop."""


def failure(label: str, error: BaseException, log: Path, tmp: str) -> str:
    """Print the error and the server log's last lines; return the error's last line for the
    report, without this machine's paths."""
    tail = log.read_text(errors="replace").strip().splitlines()[-5:] if log.exists() else []
    print(f"{label} failed: {error}\n" + "\n".join(tail), file=sys.stderr)
    lines = str(error).replace(tmp, "<tmp>").replace(str(Path.home()), "~").strip().splitlines()
    return (lines[-1] if lines else type(error).__name__)[:300]


def run(
    clients: list[int],
    duration: float,
    out_dir: Path,
    *,
    base_python: str,
    cache: Path,
    servers: list[str],
    imgserve_workers: list[int] | None = None,
) -> dict[str, Any]:
    rows: list[dict[str, Any]] = []
    versions: dict[str, str] = {}
    imgserve_workers = imgserve_workers or [0]
    with tempfile.TemporaryDirectory(prefix="imgserve-peers-") as tmp:
        for i, (label, name, workers) in enumerate(entries(servers, imgserve_workers)):
            workdir = Path(tmp) / f"{i}-{name}"
            workdir.mkdir()
            try:
                server, versions[name] = build_server(name, free_port(), workdir, base_python, cache, workers)
                rows += measure_server(label, server, clients, duration)
            except FAILURES as error:
                rows.append({"server": label, "error": failure(label, error, workdir / "server.log", tmp)})
    report = {
        "machine": machine(),
        "model": {"batch_seconds": BATCH_SECONDS, "max_batch": MAX_BATCH, "peer_queue_delay_s": PEER_QUEUE_DELAY_S},
        "request": {"shape": [1, *ITEM_SHAPE], "datatype": "UINT8", "body_bytes": len(infer_body()[0])},
        "duration_s": duration,
        "imgserve_workers": imgserve_workers,
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
            rows.append({"server": name, **measure(base_url, process.pid, [body], n, duration)})
    return rows


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--base-python", default=default_base_python(), help="Python 3.11 that makes the venvs")
    parser.add_argument("--cache", type=Path, default=default_cache(), help="where the peers' venvs live")
    parser.add_argument("--servers", default=",".join(SERVERS), help="which of pytriton,mlserver,imgserve")
    parser.add_argument(
        "--imgserve-workers",
        type=worker_counts,
        default=[0],
        help="imgserve's front-end process counts, a row each (0: one process), e.g. 0,2",
    )


def run_from_args(args: argparse.Namespace, clients: list[int]) -> dict[str, Any]:
    """``run`` with the options of ``add_arguments`` (this command's and ``bench --peers``)."""
    servers = [s for s in args.servers.split(",") if s]
    return run(
        clients,
        args.duration,
        args.out_dir,
        base_python=args.base_python,
        cache=args.cache,
        servers=servers,
        imgserve_workers=args.imgserve_workers,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", default="16,64", help="closed-loop concurrencies")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per point")
    parser.add_argument("--out-dir", type=Path, default=Path("loadtests/results"))
    add_arguments(parser)
    args = parser.parse_args()
    report = run_from_args(args, [int(c) for c in args.clients.split(",") if c])
    print(markdown(report["rows"]))


if __name__ == "__main__":
    main()
