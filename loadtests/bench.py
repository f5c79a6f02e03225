"""The benchmark harness: imgserve against its baselines and its own ceiling, in one run.

    python -m loadtests.bench                 # what `make bench` runs: a few minutes
    python -m loadtests.bench --clients 1,8,32,128 --rates 100,200 --duration 20
    python -m loadtests.bench --peers --clients 16,64 --duration 10   # beside PyTriton and MLServer
    python -m loadtests.bench --peers --imgserve-workers 0,2          # imgserve at 0 and 2 workers
    python -m loadtests.bench --configs imgserve --payload v2-binary --protocol http,grpc --clients 1,32

It measures the in-process ceiling (decode + preprocess + model, no HTTP), then starts
each configuration as its own server process on 127.0.0.1 and drives it in a closed loop
(wrk, if installed) at each client count and in an open loop at each request rate. Before
each point it waits for the machine to be quiet. It writes ``bench.json`` (every figure and
the machine), ``bench.md`` (the table) and ``bench.png`` (throughput against p99) to
``--out-dir``. Cores, concurrency and the server's environment are parameters, so the
same command runs on a GPU host. ``--peers`` runs ``loadtests.peers`` instead: a toy model on
imgserve, PyTriton and MLServer side by side.

``--protocol`` is http (the default), grpc, or both (``http,grpc``): with grpc, each imgserve
configuration also serves gRPC on a free port, and its closed-loop points are measured over
``inference.GRPCInferenceService/ModelInfer`` too, with the same uint8 images as
``--payload v2-binary`` (which gRPC needs) in ``raw_input_contents``, from
``loadtests.grpc_load``'s own process (``grpc.aio``, one connection per client unless
``--grpc-channels`` says fewer). gRPC has no open loop here, and the naive server speaks HTTP only.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from loadtests import grpc_load, peers
from loadtests.grpc_load import GrpcLoad
from loadtests.measure import measure_point
from loadtests.payloads import HttpRequest, grpc_infer_request, preprocessed_photos, upload_requests, v2_binary_body
from loadtests.report import markdown_table, plot
from loadtests.server_process import free_port, server_process
from loadtests.system import machine, wait_until_quiet
from model_contract.manifest import ModelManifest

PROTOCOLS = ("http", "grpc")
HTTP_ONLY_CONFIGS = ("naive",)
TOP_K = 5


def configs(model: Path, extra_env: dict[str, str]) -> dict[str, tuple[list[str], dict[str, str]]]:
    python = sys.executable
    imgserve = [python, "-m", "imgserve", "serve", "--model-repository", str(model.parent.parent)]
    env = {"IMGSERVE_DEFAULT_MODEL": model.parent.name, **extra_env}
    return {
        "imgserve": (imgserve, env),
        "imgserve_fixed_timeout_10ms": (imgserve, {**env, "IMGSERVE_BATCHING__MAX_QUEUE_DELAY_MS": "10"}),
        "imgserve_no_batching": (imgserve, {**env, "IMGSERVE_BATCHING__MAX_BATCH_SIZE": "1"}),
        "naive": ([python, "-m", "loadtests.naive_server", "--model", str(model)], {}),
    }


def ceiling(model: Path) -> dict[str, Any]:
    run = subprocess.run(
        [sys.executable, "-m", "loadtests.ceiling", "--model", str(model)], check=True, capture_output=True, text=True
    )
    result: dict[str, Any] = json.loads(run.stdout.strip().splitlines()[-1])
    return result


def ratios(points: list[dict[str, Any]], ceiling_figures: dict[str, Any], clients: int) -> dict[str, float]:
    """imgserve over HTTP against the other configurations and the ceiling; and its gRPC points
    against its HTTP ones, where both were measured."""

    def at(config: str, n: int, protocol: str = "http") -> dict[str, Any] | None:
        return next(
            (
                p
                for p in points
                if p["config"] == config and p.get("clients") == n and p.get("protocol", "http") == protocol
            ),
            None,
        )

    out: dict[str, float] = {}
    mine = at("imgserve", clients)
    if mine:
        for other in ("naive", "imgserve_no_batching", "imgserve_fixed_timeout_10ms"):
            theirs = at(other, clients)
            if theirs and theirs["req_per_s"]:
                out[f"imgserve_vs_{other}_at_{clients}"] = round(mine["req_per_s"] / theirs["req_per_s"], 2)
        out[f"imgserve_vs_ceiling_at_{clients}"] = round(mine["req_per_s"] / ceiling_figures["ceiling_images_per_s"], 2)
    one = at("imgserve", 1)
    if one:
        out["one_client_p50_ms"] = one["p50_ms"]
        out["batch1_model_ms"] = ceiling_figures["batch1_model_ms"]
        out["one_client_p50_target_ms"] = round(1.1 * ceiling_figures["batch1_model_ms"] + 2.0, 2)
    over_grpc = at("imgserve", clients, "grpc")
    if mine and over_grpc and mine["req_per_s"]:
        out[f"imgserve_grpc_vs_http_at_{clients}"] = round(over_grpc["req_per_s"] / mine["req_per_s"], 2)
    one_grpc = at("imgserve", 1, "grpc")
    if one_grpc:
        out["one_client_p50_ms_grpc"] = one_grpc["p50_ms"]
    return out


def protocols(text: str) -> list[str]:
    """``"http,grpc"`` to ``["http", "grpc"]``; anything else than those two is refused."""
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names or any(n not in PROTOCOLS for n in names) or len(set(names)) != len(names):
        raise argparse.ArgumentTypeError(f"choose http and/or grpc, got {text!r}")
    return names


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=Path("models/efficientnet_lite0/1"), help="model version folder")
    parser.add_argument("--configs", default="imgserve,imgserve_fixed_timeout_10ms,imgserve_no_batching,naive")
    parser.add_argument("--clients", help="closed-loop concurrencies (default 1,8,32; with --peers 16,64)")
    parser.add_argument("--rates", default="", help="open-loop request rates (req/s), e.g. 50,100")
    parser.add_argument("--duration", type=float, default=8.0, help="seconds per point")
    parser.add_argument("--server-env", action="append", default=[], help="KEY=VALUE for the imgserve servers")
    parser.add_argument(
        "--payload",
        choices=["jpeg", "v2-binary"],
        default="jpeg",
        help="JPEG uploads to /v1/classify, or preprocessed uint8 as v2 binary tensors (imgserve configs only)",
    )
    parser.add_argument(
        "--protocol",
        type=protocols,
        default=["http"],
        help="http, grpc, or http,grpc: each imgserve config measured over each (grpc needs --payload v2-binary)",
    )
    parser.add_argument("--grpc-channels", type=int, help="gRPC connections per point (default: one per client)")
    parser.add_argument("--out-dir", type=Path, default=Path("loadtests/results"))
    parser.add_argument("--peers", action="store_true", help="the toy model on imgserve, PyTriton and MLServer")
    peers.add_arguments(parser)
    args = parser.parse_args(argv)
    if "grpc" in args.protocol and not args.peers:
        if args.payload != "v2-binary":
            parser.error("--protocol grpc sends tensors: add --payload v2-binary")
        if args.rates:
            parser.error("--protocol grpc is measured in a closed loop only: drop --rates, or run HTTP alone")
        if args.grpc_channels is not None and args.grpc_channels < 1:
            parser.error("--grpc-channels: a whole number from 1")
    return args


def measured_protocols(config: str, chosen: list[str]) -> list[str]:
    """The protocols a configuration is measured over: the naive server speaks HTTP only."""
    return [p for p in chosen if p == "http" or config not in HTTP_ONLY_CONFIGS]


def grpc_requests(model: Path, size: int) -> list[bytes]:
    """The v2 payload's images, one per request, as gRPC ``ModelInferRequest``s for ``model``."""
    return [grpc_infer_request(image[None], model.parent.name, top_k=TOP_K) for image in preprocessed_photos(size)]


def measure_config(
    name: str,
    command: list[str],
    env: dict[str, str],
    args: argparse.Namespace,
    bodies: list[HttpRequest],
    path: str,
    grpc_requests: list[bytes] | None,
    clients: list[int],
    rates: list[float],
) -> list[dict[str, Any]]:
    """Start one configuration's server, measure it over each of its protocols, stop it."""
    chosen = measured_protocols(name, args.protocol)
    if not chosen:
        print(f"{name}: speaks HTTP only, not measured over {','.join(args.protocol)}", file=sys.stderr)
        return []
    port = free_port()
    grpc: GrpcLoad | None = None
    grpc_args: list[str] = []
    if "grpc" in chosen and grpc_requests:
        grpc_port = free_port()
        grpc = GrpcLoad(f"127.0.0.1:{grpc_port}", grpc_requests, args.grpc_channels)
        grpc_args = ["--grpc-port", str(grpc_port)]
    points: list[dict[str, Any]] = []
    with server_process([*command, *grpc_args, "--port", str(port)], port, env) as (base_url, process):
        if grpc is not None:
            grpc_load.wait_for_answer(grpc.target, grpc.requests[0], images=1, top_k=TOP_K)
        for protocol in chosen:
            over = grpc if protocol == "grpc" else None
            loads: list[dict[str, Any]] = [{"clients": n} for n in clients]
            if protocol == "http":
                loads += [{"rate": r} for r in rates]
            for load in loads:
                wait_until_quiet()
                print(f"{name} over {protocol} {load} ...", file=sys.stderr)
                figures = measure_point(
                    base_url, bodies, args.duration, server_pid=process.pid, path=path, grpc=over, **load
                )
                points.append({"config": name, "protocol": protocol, **load, **figures})
    return points


def main() -> None:
    args = parse_args()
    if args.peers:
        report = peers.run_from_args(args, [int(c) for c in (args.clients or "16,64").split(",") if c])
        print(peers.markdown(report["rows"]))
        return

    extra_env = dict(item.split("=", 1) for item in args.server_env)
    chosen = {name: spec for name, spec in configs(args.model, extra_env).items() if name in args.configs.split(",")}
    clients = [int(c) for c in (args.clients or "1,8,32").split(",") if c]
    rates = [float(r) for r in args.rates.split(",") if r]
    path, bodies, over_grpc = "/v1/classify", upload_requests(), None
    if args.payload == "v2-binary":
        size = ModelManifest.read(args.model).preprocessing.crop_size
        path = f"/v2/models/{args.model.parent.name}/infer"
        bodies = [v2_binary_body(image[None]) for image in preprocessed_photos(size)]
        over_grpc = grpc_requests(args.model, size) if "grpc" in args.protocol else None

    print("in-process ceiling ...", file=sys.stderr)
    ceiling_figures = ceiling(args.model)
    points: list[dict[str, Any]] = []
    for name, (command, env) in chosen.items():
        points += measure_config(name, command, env, args, bodies, path, over_grpc, clients, rates)

    report = {
        "machine": machine(),
        "model": str(args.model),
        "duration_s": args.duration,
        "payload": args.payload,
        "protocols": args.protocol,
        "payload_bytes": [len(b) for b, _ in bodies],
        "ceiling": ceiling_figures,
        "points": points,
        "ratios": ratios(points, ceiling_figures, max(clients)) if clients else {},
    }
    args.out_dir.mkdir(parents=True, exist_ok=True)
    (args.out_dir / "bench.json").write_text(json.dumps(report, indent=2))
    table = markdown_table(points)
    (args.out_dir / "bench.md").write_text(table + "\n")
    cpu = report["machine"]
    plot(points, args.out_dir / "bench.png", f"{args.model.parent.name} on {cpu['cpus']} x {cpu['cpu_model']}")
    print(table)
    print(json.dumps({"ceiling": ceiling_figures, "ratios": report["ratios"]}, indent=2))


if __name__ == "__main__":
    main()
