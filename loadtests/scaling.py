"""What ``imgserve serve --workers N`` costs and buys: three tables, one flag each.

    python -m loadtests.scaling --table corems     # front-end core-ms per request, workers 0,1,2
    python -m loadtests.scaling --table real       # the built model, workers 0,2, 1 and 32 clients
    python -m loadtests.scaling --table scaling --runtime keras_jax --device gpu   # a GPU host

``corems``: 640x480 JPEG photos uploaded to /v1/classify at saturation (64 clients), with a
simulated model of a known cost (5 ms + 0.1 ms per image, at most 32 a batch), at each worker
count: req/s, p50/p99, the CPU of the server's whole process tree per request (core-ms per
request: what the front end costs, since the model only sleeps) and the mean batch.

``real``: the built EfficientNet-Lite0 (``--model``), at 1 and 32 clients, at each worker count.

``scaling``: for N in 1,2,4,8,12 workers, the simulated model at a GPU-like cost (2 ms +
0.02 ms per image, at most 128 a batch, padded to powers of two, two batches in flight) and
the real model on the runtime and device given (``--runtime``, ``--device``: the server's
IMGSERVE_RUNTIME and IMGSERVE_DEVICE), with JPEG uploads and with preprocessed uint8 images as
v2 binary tensors, at 32 clients per worker. Efficiency = req/s(N) / (N x req/s(1)); the load
generator's CPU (in cores) says whether wrk, not the server, was the limit.

``--protocols http,grpc`` measures the v2 payload over gRPC too, on the same server
(``inference.GRPCInferenceService/ModelInfer``, the same uint8 tensor in ``raw_input_contents``,
top-5 through the classification parameter), from ``loadtests.grpc_load``'s own process:
``grpc.aio`` with one channel (connection) per client unless ``--grpc-channels`` says fewer. A
JPEG upload is HTTP only. A ``protocol`` column then says which, and the generator's CPU is
shown (a ``model`` column too, where a table that has none measures more than one).

``--workers 0`` is one process (HTTP, decode and model together); N > 0 is N front-end
processes beside a model-owner process under a supervisor, all in the server's process tree.
Every other choice (``--workers``, ``--clients``, ``--clients-per-worker``, ``--models``,
``--payloads``, ``--protocols``, the simulated cost, ``--max-batch``, ``--server-env``)
overrides the table's default. Each server runs as its own process on 127.0.0.1 on a free port and is stopped by its
PID; each point waits for a quiet machine after its warm-up. Writes ``scaling-<table>.json``
(every figure, the machine, the settings) and ``scaling-<table>.md`` to ``--out-dir``, and
prints the table.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
from PIL import Image, ImageOps

from loadtests import grpc_load, wrk
from loadtests.batching_bench import write_model
from loadtests.gpu_bench import device_name
from loadtests.grpc_load import GrpcLoad
from loadtests.payloads import (
    HttpRequest,
    grpc_infer_request,
    jpeg_payloads,
    multipart_body,
    preprocessed_photos,
    v2_binary_body,
)
from loadtests.peers import FAILURES, failure, imgserve_command, measure, worker_counts
from loadtests.server_process import free_port, server_process
from loadtests.system import machine
from model_contract.manifest import ModelManifest

SIMULATED = "simulated"
SIMULATED_SIZE = 224  # write_model's default input: the v2 tensors' height and width
UPLOAD_SIZE = (640, 480)
MODELS = ("simulated", "real")
PAYLOADS = {"jpeg": "640x480 JPEG upload to /v1/classify", "v2": "uint8 v2 binary tensor"}
PROTOCOLS = ("http", "grpc")
GRPC_PAYLOADS = ("v2",)  # what gRPC carries: tensors
TOP_K = 5
Payload = tuple[str, list[HttpRequest]]  # the path, and the bodies sent to it in turn


@dataclass(frozen=True)
class Table:
    """A table's defaults: what it measures unless a flag says otherwise."""

    title: str
    workers: str
    clients: str
    per_worker: bool  # clients x max(N, 1) at N workers
    models: str
    payloads: str
    fixed_ms: float
    per_image_ms: float
    max_batch: int | None  # None: the server's own
    gpu_batching: bool  # batch sizes padded to powers of two, two batches in flight
    columns: tuple[str, ...]


COLUMNS = {
    "model": "model",
    "payload": "payload",
    "protocol": "protocol",
    "workers": "workers",
    "clients": "clients",
    "req_per_s": "req/s",
    "p50_ms": "p50 ms",
    "p99_ms": "p99 ms",
    "efficiency": "efficiency",
    "server_cpu_ms_per_request": "CPU ms/req",
    "server_cpu_cores": "CPU cores",
    "mean_batch_size": "mean batch",
    "generator_cpu_cores": "generator CPU",
    "errors": "errors",
}
_FIGURES = ("req_per_s", "p50_ms", "p99_ms")
TABLES = {
    "corems": Table(
        "front-end core-ms per request", "0,1,2", "64", False, "simulated", "jpeg", 5.0, 0.1, 32, False,
        ("payload", "workers", "clients", *_FIGURES, "server_cpu_ms_per_request", "server_cpu_cores",
         "mean_batch_size", "errors"),
    ),
    "real": Table(
        "real model", "0,2", "1,32", False, "real", "jpeg", 5.0, 0.1, None, False,
        ("payload", "workers", "clients", *_FIGURES, "server_cpu_ms_per_request", "server_cpu_cores",
         "mean_batch_size", "errors"),
    ),
    "scaling": Table(
        "scaling", "1,2,4,8,12", "32", True, "simulated,real", "jpeg,v2", 2.0, 0.02, 128, True,
        ("model", "payload", "workers", "clients", *_FIGURES, "efficiency", "server_cpu_ms_per_request",
         "mean_batch_size", "generator_cpu_cores", "errors"),
    ),
}  # fmt: skip


@dataclass(frozen=True)
class Plan:
    """One run: the table's defaults with the command line's choices over them."""

    table: str
    workers: list[int]
    clients: list[int]
    per_worker: bool
    models: list[str]
    payloads: list[str]
    fixed_ms: float
    per_image_ms: float
    max_batch: int | None
    gpu_batching: bool
    model: Path  # the real model's version folder
    runtime: str | None
    device: str | None
    duration: float
    server_env: dict[str, str] = field(default_factory=dict)
    protocols: list[str] = field(default_factory=lambda: ["http"])
    grpc_channels: int | None = None  # None: one per client

    def clients_at(self, workers: int) -> list[int]:
        return [c * max(workers, 1) for c in self.clients] if self.per_worker else list(self.clients)

    def protocols_for(self, payload: str) -> list[str]:
        """The protocols a payload is measured over: gRPC carries tensors only."""
        return [p for p in self.protocols if p == "http" or payload in GRPC_PAYLOADS]


def _names(text: str, allowed: tuple[str, ...] | list[str], what: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in allowed]
    if not names or unknown:
        raise ValueError(f"{what}: choose from {','.join(allowed)}, got {text!r}")
    return names


def _positive_ints(text: str, what: str) -> list[int]:
    values = [int(v) for v in text.split(",") if v.strip()]
    if not values or min(values) < 1:
        raise ValueError(f"{what}: whole numbers from 1, got {text!r}")
    return values


def parse_args(argv: list[str] | None = None) -> tuple[Plan, Path]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--table", choices=sorted(TABLES), required=True, help="which table to measure")
    parser.add_argument("--workers", help="front-end process counts (0: one process); default per table")
    load = parser.add_mutually_exclusive_group()
    load.add_argument("--clients", help="closed-loop concurrencies (corems: 64; real: 1,32)")
    load.add_argument("--clients-per-worker", help="concurrencies per worker, times N (scaling: 32)")
    parser.add_argument("--models", help="simulated and/or real (default per table)")
    parser.add_argument("--payloads", help="jpeg and/or v2 (default per table)")
    parser.add_argument("--protocols", default="http", help="http and/or grpc (the v2 payload only); default http")
    parser.add_argument("--grpc-channels", type=int, help="gRPC connections per point (default: one per client)")
    parser.add_argument("--fixed-ms", type=float, help="simulated model's cost per batch (corems 5, scaling 2)")
    parser.add_argument("--per-image-ms", type=float, help="and per image (corems 0.1, scaling 0.02)")
    parser.add_argument("--max-batch", type=int, help="the server's max_batch_size (corems 32, scaling 128)")
    parser.add_argument("--model", type=Path, default=Path("models/efficientnet_lite0/1"), help="real model folder")
    parser.add_argument("--runtime", help="IMGSERVE_RUNTIME for the real model, e.g. keras_jax")
    parser.add_argument("--device", help="IMGSERVE_DEVICE for the real model, e.g. gpu")
    parser.add_argument("--server-env", action="append", default=[], help="KEY=VALUE for every server, last wins")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per point")
    parser.add_argument("--out-dir", type=Path, default=Path("loadtests/results"))
    args = parser.parse_args(argv)
    table = TABLES[args.table]
    if args.clients or args.clients_per_worker:
        per_worker, clients_text = args.clients is None, args.clients or args.clients_per_worker
    else:
        per_worker, clients_text = table.per_worker, table.clients
    try:
        if any("=" not in item for item in args.server_env):
            raise ValueError(f"--server-env takes KEY=VALUE, got {args.server_env}")
        if args.grpc_channels is not None and args.grpc_channels < 1:
            raise ValueError(f"--grpc-channels: a whole number from 1, got {args.grpc_channels}")
        plan = Plan(
            table=args.table,
            workers=worker_counts(args.workers or table.workers),
            clients=_positive_ints(clients_text, "clients"),
            per_worker=per_worker,
            models=_names(args.models or table.models, MODELS, "models"),
            payloads=_names(args.payloads or table.payloads, list(PAYLOADS), "payloads"),
            fixed_ms=table.fixed_ms if args.fixed_ms is None else args.fixed_ms,
            per_image_ms=table.per_image_ms if args.per_image_ms is None else args.per_image_ms,
            max_batch=args.max_batch or table.max_batch,
            gpu_batching=table.gpu_batching,
            model=args.model,
            runtime=args.runtime,
            device=args.device,
            duration=args.duration,
            server_env=dict(item.split("=", 1) for item in args.server_env),
            protocols=_names(args.protocols, PROTOCOLS, "protocols"),
            grpc_channels=args.grpc_channels,
        )
        if "grpc" in plan.protocols and not set(plan.payloads) & set(GRPC_PAYLOADS):
            raise ValueError(f"gRPC carries tensors: add {','.join(GRPC_PAYLOADS)} to --payloads")
    except ValueError as error:
        parser.error(str(error))
    return plan, args.out_dir


def power_of_two_sizes(max_batch: int) -> list[int]:
    """1, 2, 4, ... below ``max_batch``, then ``max_batch``: the shapes a jitted model compiles."""
    sizes, size = [], 1
    while size < max_batch:
        sizes.append(size)
        size *= 2
    return [*sizes, max_batch]


def server_env(plan: Plan, model: str, workers: int) -> dict[str, str]:
    """The environment of the server for ``model`` (simulated or real) at ``workers``: room in
    its queue and admission for every client, then the flags' runtime, device and extras."""
    most = max(plan.clients_at(workers))
    env = {
        "IMGSERVE_DEFAULT_MODEL": SIMULATED if model == SIMULATED else plan.model.parent.name,
        "IMGSERVE_BATCHING__MAX_QUEUE_SIZE": str(max(256, 2 * most)),
        "IMGSERVE_LIMITS__MAX_REQUESTS_IN_PROGRESS": str(max(256, 2 * most)),
        "IMGSERVE_HTTP__MAX_CONNECTIONS": str(max(1000, 4 * most)),
    }
    if plan.max_batch is not None:
        env["IMGSERVE_BATCHING__MAX_BATCH_SIZE"] = str(plan.max_batch)
        if plan.gpu_batching:
            env["IMGSERVE_BATCHING__ALLOWED_BATCH_SIZES"] = json.dumps(power_of_two_sizes(plan.max_batch))
    if plan.gpu_batching:
        env["IMGSERVE_BATCHING__MAX_CONCURRENT_BATCHES"] = "2"
    if model != SIMULATED:
        env |= {k: v for k, v in {"IMGSERVE_RUNTIME": plan.runtime, "IMGSERVE_DEVICE": plan.device}.items() if v}
    return env | plan.server_env


def write_simulated(repository: Path, plan: Plan) -> None:
    params = {"fixed_seconds": plan.fixed_ms / 1000, "per_image_seconds": plan.per_image_ms / 1000}
    write_model(repository, SIMULATED, "simulated", parameters=params)


def uploads_640x480(quality: int = 90) -> list[bytes]:
    """The payload photos scaled to cover 640x480, centre-cropped to it, as JPEG."""
    out = []
    for photo in jpeg_payloads(shorter_side=max(UPLOAD_SIZE), quality=95):
        image = ImageOps.fit(Image.open(io.BytesIO(photo)), UPLOAD_SIZE, Image.Resampling.BICUBIC)
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=quality)
        out.append(buffer.getvalue())
    return out


def requests_for(payload: str, model_name: str, crop_size: int) -> Payload:
    """The path and the bodies of one payload kind."""
    if payload == "jpeg":
        return "/v1/classify", [(body, {"Content-Type": kind}) for body, kind in map(multipart_body, uploads_640x480())]
    return f"/v2/models/{model_name}/infer", [v2_binary_body(image[None]) for image in preprocessed_photos(crop_size)]


def grpc_requests_for(model_name: str, crop_size: int) -> list[bytes]:
    """The v2 payload's images as gRPC ``ModelInferRequest``s: the same uint8 tensors, batch 1."""
    return [grpc_infer_request(image[None], model_name, top_k=TOP_K) for image in preprocessed_photos(crop_size)]


def columns(plan: Plan) -> tuple[str, ...]:
    """The table's columns, with ``protocol`` after the payload and the generator's CPU before
    the errors when gRPC is measured (its generator is Python, on the same cores), and ``model``
    first when the table has no such column but the plan measures more than one."""
    out = TABLES[plan.table].columns
    if "model" not in out and len(plan.models) > 1:
        out = ("model", *out)
    if "grpc" in plan.protocols:
        at = out.index("payload") + 1
        out = (*out[:at], "protocol", *out[at:])
        if "generator_cpu_cores" not in out:
            at = out.index("errors")
            out = (*out[:at], "generator_cpu_cores", *out[at:])
    return out


def efficiency(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each row with N >= 1 workers gains req/s(N) / (N x req/s(1)), against the 1-worker row of
    the same model, payload and load (clients per worker, or clients)."""

    def key(r: dict[str, Any]) -> tuple[Any, ...]:
        return r.get("model"), r.get("payload"), r.get("protocol"), r.get("clients_per_worker", r.get("clients"))

    base = {key(r): r["req_per_s"] for r in rows if r.get("workers") == 1 and r.get("req_per_s")}
    out = []
    for r in rows:
        one = base.get(key(r))
        if one and r.get("workers", 0) >= 1 and "req_per_s" in r:
            r = {**r, "efficiency": round(r["req_per_s"] / (r["workers"] * one), 2)}
        out.append(r)
    return out


def markdown(rows: list[dict[str, Any]], columns: tuple[str, ...]) -> str:
    lines = ["| " + " | ".join(COLUMNS[c] for c in columns) + " |", "|" + "---|" * len(columns)]
    for r in rows:
        if "error" in r:
            head = [str(r.get(c, "-")) for c in columns if c in ("model", "payload", "protocol", "workers")]
            cells = [*head, f"failed: {r['error']}"] + [""] * (len(columns) - len(head) - 1)
        else:
            cells = ["-" if r.get(c) is None else str(r[c]) for c in columns]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _check(base_url: str, path: str, body: HttpRequest) -> None:
    response = httpx.post(f"{base_url}{path}", content=body[0], headers=body[1], timeout=120)
    if response.status_code != 200:
        raise RuntimeError(f"{path}: {response.status_code} {response.text[:300]}")


def measure_server(
    plan: Plan,
    model: str,
    workers: int,
    repository: Path,
    workdir: Path,
    payloads: dict[str, Payload],
    grpc_requests: list[bytes] | None = None,
) -> list[dict[str, Any]]:
    """Start one server, check each payload once (over each protocol), measure each payload over
    each protocol at each load, stop it."""
    port = free_port()
    grpc_port = free_port() if grpc_requests else 0
    command = imgserve_command(repository, port, workers, grpc_port)
    grpc = GrpcLoad(f"127.0.0.1:{grpc_port}", grpc_requests, plan.grpc_channels) if grpc_requests else None
    rows = []
    with (
        (workdir / "server.log").open("wb") as log,
        server_process(
            command, port, server_env(plan, model, workers), startup_s=600, stderr=log, stdout=log, cwd=workdir,
            own_group=True,
        ) as (base_url, process),
    ):  # fmt: skip
        for path, bodies in payloads.values():
            _check(base_url, path, bodies[0])
        if grpc is not None:
            grpc_load.wait_for_answer(grpc.target, grpc.requests[0], images=1, top_k=TOP_K)
        for payload, (path, bodies) in payloads.items():
            for protocol in plan.protocols_for(payload):
                over = grpc if protocol == "grpc" else None
                for n in plan.clients_at(workers):
                    print(f"{model} {payload} over {protocol}: {workers} workers, {n} clients ...", file=sys.stderr)
                    figures = measure(base_url, process.pid, bodies, n, plan.duration, path=path, grpc=over)
                    row = {"model": model, "payload": payload, "protocol": protocol, "workers": workers, **figures}
                    if plan.per_worker:
                        row["clients_per_worker"] = n // max(workers, 1)
                    rows.append(row)
    return rows


def run(plan: Plan) -> list[dict[str, Any]]:
    """Every point of the plan: a server per model and worker count (each started from its own
    folder, stopped before the next), a row per payload and load on it, or a failed row."""
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="imgserve-scaling-") as tmp:
        simulated = Path(tmp) / "repository"
        write_simulated(simulated, plan)
        for model in plan.models:
            if model == SIMULATED:
                repository, name, crop = simulated, SIMULATED, SIMULATED_SIZE
            else:
                repository, name = plan.model.parent.parent.resolve(), plan.model.parent.name
                crop = ModelManifest.read(plan.model).preprocessing.crop_size
            payloads = {p: requests_for(p, name, crop) for p in plan.payloads}
            over_grpc = any("grpc" in plan.protocols_for(p) for p in plan.payloads)
            grpc_requests = grpc_requests_for(name, crop) if over_grpc else None
            for workers in plan.workers:
                workdir = Path(tmp) / f"{model}-{workers}"
                workdir.mkdir()
                try:
                    rows += measure_server(plan, model, workers, repository, workdir, payloads, grpc_requests)
                except FAILURES as error:
                    label, log = f"{model} at {workers} workers", workdir / "server.log"
                    rows.append({"model": model, "workers": workers, "error": failure(label, error, log, tmp)})
    return efficiency(rows)


def report(plan: Plan, rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Every figure, the machine and the settings; the real model by name, not by path."""
    settings = {k: v for k, v in asdict(plan).items() if k != "model"}
    settings["real_model"] = f"{plan.model.parent.name}/{plan.model.name}"
    payload_bytes = {"jpeg": [len(p) for p in uploads_640x480()]} if "jpeg" in plan.payloads else {}
    return {
        "table": plan.table,
        "title": TABLES[plan.table].title,
        "machine": {**machine(), "gpu": device_name()},
        "generator": "wrk" if wrk.available() else "python",
        "settings": settings,
        "payloads": {p: PAYLOADS[p] for p in plan.payloads},
        "payload_bytes": payload_bytes,
        "rows": rows,
    }


def main() -> None:
    plan, out_dir = parse_args()
    result = report(plan, run(plan))
    table = markdown(result["rows"], columns(plan))
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"scaling-{plan.table}.json").write_text(json.dumps(result, indent=2))
    (out_dir / f"scaling-{plan.table}.md").write_text(f"## {result['title']}\n\n{table}\n")
    print(table)


if __name__ == "__main__":
    main()
