"""Drain under load: does a SIGTERM lose any request the server accepted?

    python -m loadtests.drain --workers 0,1 --clients 16 --delay-s 3

For each worker count, `imgserve serve` runs the simulated model (a known cost per batch) with
``IMGSERVE_DRAIN_DELAY_S``. Clients send v2 binary tensors in a closed loop over HTTP, and over
gRPC when ``--grpc-clients`` is set. Then the server gets SIGTERM, and a load balancer is played:
it polls ``/ready`` and, ``--lb-lag-s`` after it first answers 503 (the time an orchestrator takes
to remove an endpoint), the clients stop sending. Everything stays on 127.0.0.1, bounded in time.

Reported per run: requests answered before the SIGTERM and during the delay, how long /ready took
to turn 503, failures (any answer that is not a success, or a call that broke, among requests
sent before the load balancer stopped them), when the listener stopped taking connections, and
how the process exited.
"""

from __future__ import annotations

import argparse
import json
import signal
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from loadtests.batching_bench import write_model
from loadtests.server_process import free_port, server_process

IMAGE_SIZE = 8


@dataclass
class Tally:
    """What the clients saw, split at the SIGTERM."""

    before: int = 0
    during: int = 0
    failures: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def answered(self, after_sigterm: bool) -> None:
        with self.lock:
            if after_sigterm:
                self.during += 1
            else:
                self.before += 1

    def failed(self, what: str) -> None:
        with self.lock:
            self.failures.append(what)


def v2_body() -> tuple[bytes, dict[str, str]]:
    pixels = np.random.default_rng(0).integers(0, 255, (1, IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8).tobytes()
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "images",
                    "datatype": "UINT8",
                    "shape": [1, IMAGE_SIZE, IMAGE_SIZE, 3],
                    "parameters": {"binary_data_size": len(pixels)},
                }
            ]
        }
    ).encode()
    return header + pixels, {"Inference-Header-Content-Length": str(len(header))}


def http_client(base_url: str, model: str, stop: threading.Event, sigterm: threading.Event, tally: Tally) -> None:
    body, headers = v2_body()
    with httpx.Client(base_url=base_url, timeout=60) as client:
        while not stop.is_set():
            after = sigterm.is_set()
            try:
                response = client.post(f"/v2/models/{model}/infer", content=body, headers=headers)
            except httpx.HTTPError as exc:
                tally.failed(f"http {type(exc).__name__}")
                continue
            if response.status_code == 200:
                tally.answered(after)
            else:
                tally.failed(f"http {response.status_code}")


def grpc_client(target: str, model: str, stop: threading.Event, sigterm: threading.Event, tally: Tally) -> None:
    import grpc

    from server.grpc_api import inference_pb2 as pb

    pixels = np.zeros((1, IMAGE_SIZE, IMAGE_SIZE, 3), np.uint8)
    request = pb.ModelInferRequest(model_name=model, raw_input_contents=[pixels.tobytes()])
    request.inputs.add(name="images", datatype="UINT8", shape=list(pixels.shape))
    with grpc.insecure_channel(target) as channel:
        infer = channel.unary_unary(
            "/inference.GRPCInferenceService/ModelInfer",
            request_serializer=pb.ModelInferRequest.SerializeToString,
            response_deserializer=pb.ModelInferResponse.FromString,
        )
        while not stop.is_set():
            after = sigterm.is_set()
            try:
                infer(request, timeout=60)
            except grpc.RpcError as exc:
                tally.failed(f"grpc {exc.code().name}")
                continue
            tally.answered(after)


def accepts(port: int) -> bool:
    with socket.socket() as probe:
        probe.settimeout(0.5)
        return probe.connect_ex(("127.0.0.1", port)) == 0


def until(condition: Callable[[], bool], timeout_s: float, step_s: float = 0.05) -> float | None:
    """The monotonic time ``condition`` was first seen to hold, or None if not within ``timeout_s``."""
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        if condition():
            return time.monotonic()
        time.sleep(step_s)
    return None


def _after(moment: float | None, start: float) -> float | None:
    return None if moment is None else round(moment - start, 2)


def run(
    workers: int, clients: int, grpc_clients: int, delay_s: float, lb_lag_s: float, warm_s: float, batch_s: float
) -> dict[str, Any]:
    repository = Path(tempfile.mkdtemp(prefix="imgserve-drain-"))
    params = {"fixed_seconds": batch_s, "per_image_seconds": 0.0}
    write_model(
        repository, "simulated", "simulated", image_size=IMAGE_SIZE, resize_shorter_side=IMAGE_SIZE, parameters=params
    )
    port, grpc_port = free_port(), free_port()
    command = [sys.executable, "-m", "imgserve", "serve", "--workers", str(workers), "--port", str(port)]
    command += ["--grpc-port", str(grpc_port), "--model-repository", str(repository)]
    env = {"IMGSERVE_DEFAULT_MODEL": "simulated", "IMGSERVE_DRAIN_DELAY_S": str(delay_s)}
    tally, stop, sigterm = Tally(), threading.Event(), threading.Event()
    with server_process(command, port, env, startup_s=120) as (base_url, process):
        threads = [
            threading.Thread(target=http_client, args=(base_url, "simulated", stop, sigterm, tally))
            for _ in range(clients)
        ]
        threads += [
            threading.Thread(target=grpc_client, args=(f"127.0.0.1:{grpc_port}", "simulated", stop, sigterm, tally))
            for _ in range(grpc_clients)
        ]
        for thread in threads:
            thread.start()
        time.sleep(warm_s)
        sigterm.set()
        process.send_signal(signal.SIGTERM)
        sent_at = time.monotonic()
        not_ready_at = until(lambda: _not_ready(base_url), timeout_s=delay_s + 5)
        time.sleep(lb_lag_s)  # the orchestrator removes the endpoint; the clients stop sending
        stop.set()
        for thread in threads:
            thread.join(timeout=90)
        closed_at = until(lambda: not accepts(port), timeout_s=delay_s + 30)
        exit_code = process.wait(timeout=90)
        exited_after = time.monotonic() - sent_at
    return {
        "workers": workers,
        "clients_http": clients,
        "clients_grpc": grpc_clients,
        "drain_delay_s": delay_s,
        "answered_before_sigterm": tally.before,
        "answered_during_drain": tally.during,
        "failed": len(tally.failures),
        "failures": sorted(set(tally.failures)),
        "ready_503_after_s": _after(not_ready_at, sent_at),
        "listener_closed_after_s": _after(closed_at, sent_at),
        "exited_after_s": round(exited_after, 2),
        "exit_code": exit_code,
    }


def _not_ready(base_url: str) -> bool:
    try:
        return httpx.get(f"{base_url}/ready", timeout=2).status_code == 503
    except httpx.HTTPError:
        return False


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", default="0,1", help="worker counts, comma-separated (0: one process)")
    parser.add_argument("--clients", type=int, default=16, help="HTTP clients in a closed loop")
    parser.add_argument("--grpc-clients", type=int, default=4, help="gRPC clients in a closed loop")
    parser.add_argument("--delay-s", type=float, default=3.0, help="IMGSERVE_DRAIN_DELAY_S")
    parser.add_argument("--lb-lag-s", type=float, default=1.0, help="after /ready turns 503, until clients stop")
    parser.add_argument("--warm-s", type=float, default=3.0, help="load before the SIGTERM")
    parser.add_argument("--batch-ms", type=float, default=20.0, help="the simulated model's time per batch")
    parser.add_argument("--out", type=Path, help="write the rows as JSON here")
    args = parser.parse_args(argv)
    if args.lb_lag_s >= args.delay_s:
        parser.error("--lb-lag-s must be shorter than --delay-s: the drain delay is there to cover it")
    rows = [
        run(int(w), args.clients, args.grpc_clients, args.delay_s, args.lb_lag_s, args.warm_s, args.batch_ms / 1000)
        for w in args.workers.split(",")
    ]
    for row in rows:
        print(json.dumps(row))
    if args.out:
        args.out.write_text(json.dumps(rows, indent=2))
    return 0 if all(r["failed"] == 0 and r["exit_code"] in (0, -signal.SIGTERM) for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
