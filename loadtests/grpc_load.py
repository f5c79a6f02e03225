"""Closed-loop gRPC load: ``ModelInfer`` calls from ``grpc.aio`` over several channels, in a
process of its own, bounded in time and count, loopback targets only. wrk cannot speak gRPC.

    python -m loadtests.grpc_load --target 127.0.0.1:8001 --requests FILE --clients 32 --duration 10

``FILE`` holds serialized ``ModelInferRequest``s, each behind a 4-byte little-endian length
(``write_requests``). Client i sends them in turn from the i-th on, each call when its last one
is answered, on channel i mod ``--channels``; each channel is a connection of its own. Prints one
JSON line: calls answered OK, the others by status code, the window measured, its latency
percentiles (every call answered, as wrk counts non-2xx answers) and the CPU the process used in
that window. ``closed_loop`` runs it as a child process, off the harness's and the server's CPU,
and returns the figures ``wrk.run_wrk`` returns and that CPU (``generator_cpu_seconds``), which
the harness counts as the generator's instead of the child's whole life (~0.4 s of imports).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import math
import struct
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from google.protobuf.message import DecodeError

from loadtests.closed_loop import LOOPBACK_HOSTS
from server.grpc_api import inference_pb2 as pb  # the protocol's messages alone: no server code

MODEL_INFER = "/inference.GRPCInferenceService/ModelInfer"
SHED_CODES = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED)
REPO_ROOT = Path(__file__).resolve().parents[1]
CHANNEL_OPTIONS = (
    # A channel of its own connection: by default, channels to one target share connections.
    ("grpc.use_local_subchannel_pool", 1),
)
_LENGTH = struct.Struct("<I")


@dataclass(frozen=True)
class GrpcLoad:
    """What a gRPC point sends: serialized ``ModelInferRequest``s to ``target`` (host:port), over
    ``channels`` connections (None: one per client)."""

    target: str
    requests: list[bytes]
    channels: int | None = None

    def channels_for(self, clients: int) -> int:
        return max(1, min(clients, self.channels or clients))


def check_loopback(target: str) -> None:
    host = target.rsplit(":", 1)[0].strip("[]")
    if host not in LOOPBACK_HOSTS:
        raise ValueError(f"load tests only target this machine's loopback interface, not {target!r}")


def retry_after(error: grpc.RpcError) -> str | None:
    """The ``retry-after`` of a failed call's trailing metadata, if it has one."""
    trailing = error.trailing_metadata() if isinstance(error, grpc.Call) else None
    return next((str(value) for key, value in trailing or () if key == "retry-after"), None)


def is_shed(error: grpc.RpcError) -> bool:
    """Load shed as imgserve sheds it: UNAVAILABLE or RESOURCE_EXHAUSTED with a retry hint (over
    HTTP, 429 or 503 with Retry-After). Without the hint, the same codes are failures."""
    return isinstance(error, grpc.Call) and error.code() in SHED_CODES and retry_after(error) is not None


def answer_problem(response: bytes, images: int, top_k: int) -> str | None:
    """What is wrong with a ``ModelInferResponse`` to a request for the top ``top_k`` classes of
    ``images`` images, or None: one BYTES output of shape [images, top_k], in raw contents."""
    try:
        message = pb.ModelInferResponse.FromString(response)
    except DecodeError:
        return "not a ModelInferResponse"
    shapes = [(o.datatype, list(o.shape)) for o in message.outputs]
    if shapes != [("BYTES", [images, top_k])]:
        return f"outputs {shapes}, not one BYTES [{images}, {top_k}]"
    if len(message.raw_output_contents) != 1:
        return "no raw output contents" if not message.raw_output_contents else "more than one raw output contents"
    return None


def wait_for_answer(target: str, request: bytes, *, images: int, top_k: int, timeout_s: float = 60.0) -> None:
    """Send ``request`` until it is answered, for at most ``timeout_s``: a server's gRPC port
    opens just after its HTTP one, in each of its workers. Raises RuntimeError on a wrong
    answer, an error other than UNAVAILABLE, or no answer in time."""
    check_loopback(target)
    deadline = time.monotonic() + timeout_s
    with grpc.insecure_channel(target, options=CHANNEL_OPTIONS) as channel:
        call = channel.unary_unary(MODEL_INFER, request_serializer=None, response_deserializer=None)
        while True:
            try:
                response = call(request, timeout=max(1.0, deadline - time.monotonic()))
            except grpc.RpcError as error:
                code = error.code() if isinstance(error, grpc.Call) else None
                if code != grpc.StatusCode.UNAVAILABLE or time.monotonic() > deadline:
                    raise RuntimeError(f"{target} {MODEL_INFER}: {code} {error}") from None
                time.sleep(0.2)
                continue
            problem = answer_problem(response, images, top_k)
            if problem:
                raise RuntimeError(f"{target} {MODEL_INFER}: {problem}")
            return


def write_requests(path: Path, requests: list[bytes]) -> None:
    path.write_bytes(b"".join(_LENGTH.pack(len(r)) + r for r in requests))


def read_requests(path: Path) -> list[bytes]:
    data, requests, offset = path.read_bytes(), [], 0
    while offset < len(data):
        (length,) = _LENGTH.unpack_from(data, offset)
        offset += _LENGTH.size
        if offset + length > len(data):
            raise ValueError(f"{path}: truncated request")
        requests.append(data[offset : offset + length])
        offset += length
    return requests


def percentile_ms(sorted_seconds: list[float], q: float) -> float:
    """The nearest-rank ``q``-th percentile, in ms; 0 without samples."""
    if not sorted_seconds:
        return 0.0
    rank = max(1, math.ceil(q / 100 * len(sorted_seconds)))
    return round(sorted_seconds[rank - 1] * 1000, 1)


async def run_closed_loop(
    target: str,
    requests: list[bytes],
    clients: int,
    duration: float,
    *,
    channels: int,
    max_requests: int = 1_000_000,
    timeout_s: float = 60.0,
) -> dict[str, Any]:
    """``clients`` callers for ``duration`` seconds or ``max_requests`` calls, whichever ends first."""
    check_loopback(target)
    if not requests or clients < 1 or channels < 1:
        raise ValueError("a closed loop needs requests, clients and channels")
    cpu_before = time.process_time()  # every thread of this process: gRPC's own ones too
    opened = [grpc.aio.insecure_channel(target, options=CHANNEL_OPTIONS) for _ in range(min(channels, clients))]
    calls = [c.unary_unary(MODEL_INFER, request_serializer=None, response_deserializer=None) for c in opened]
    latencies: list[float] = []
    codes: Counter[str] = Counter()
    counter = itertools.count()
    started = time.perf_counter()
    stop_at = started + duration

    async def one_client(i: int) -> None:
        call, offset = calls[i % len(calls)], i % len(requests)
        payloads = itertools.cycle(requests[offset:] + requests[:offset])
        while time.perf_counter() < stop_at and next(counter) < max_requests:
            sent = time.perf_counter()
            try:
                await call(next(payloads), timeout=timeout_s)
                code = grpc.StatusCode.OK.name
            except grpc.aio.AioRpcError as error:
                code = error.code().name
            latencies.append(time.perf_counter() - sent)
            codes[code] += 1

    try:
        await asyncio.gather(*(one_client(i) for i in range(clients)))
    finally:
        seconds = time.perf_counter() - started
        for channel in opened:
            await channel.close()
        cpu_seconds = time.process_time() - cpu_before
    latencies.sort()
    return {
        "clients": clients,
        "channels": len(opened),
        "seconds": seconds,
        "cpu_seconds": cpu_seconds,
        "ok": codes.pop(grpc.StatusCode.OK.name, 0),
        "error_codes": dict(codes),
        **{f"p{q}_ms": percentile_ms(latencies, q) for q in (50, 90, 95, 99)},
    }


def summary(figures: dict[str, Any]) -> dict[str, Any]:
    """The generator's line as ``wrk.run_wrk``'s figures, the status codes of the errors, and the
    CPU the generator used while it sent (its start-up, mostly imports, left out)."""
    seconds, ok, codes = float(figures["seconds"]), int(figures["ok"]), figures["error_codes"]
    out: dict[str, Any] = {
        "clients": figures["clients"],
        "seconds": round(seconds, 2),
        "requests_ok": ok,
        "errors": sum(codes.values()),
        "req_per_s": round(ok / seconds, 1) if seconds > 0 else 0.0,
        **{k: figures[k] for k in ("p50_ms", "p90_ms", "p95_ms", "p99_ms")},
        "channels": figures["channels"],
        "generator_cpu_seconds": round(float(figures["cpu_seconds"]), 3),
    }
    if codes:
        out["error_codes"] = codes
    return out


def closed_loop(
    load: GrpcLoad, clients: int, duration: float, *, max_requests: int = 1_000_000, timeout_s: float = 60.0
) -> dict[str, Any]:
    """Run the generator as a child process for one closed-loop point; its figures."""
    check_loopback(load.target)
    with tempfile.TemporaryDirectory(prefix="imgserve-grpc-load-") as tmp:
        path = Path(tmp) / "requests.bin"
        write_requests(path, load.requests)
        command = [
            sys.executable, "-m", "loadtests.grpc_load", "--target", load.target, "--requests", str(path),
            "--clients", str(clients), "--duration", str(duration), "--channels", str(load.channels_for(clients)),
            "--max-requests", str(max_requests), "--timeout-s", str(timeout_s),
        ]  # fmt: skip
        run = subprocess.run(
            command, check=False, capture_output=True, text=True, timeout=duration + timeout_s + 60, cwd=REPO_ROOT
        )
    if run.returncode != 0:
        tail = "\n".join(run.stderr.strip().splitlines()[-5:])
        raise RuntimeError(f"the gRPC load generator exited with {run.returncode}: {tail}")
    return summary(json.loads(run.stdout.strip().splitlines()[-1]))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--target", required=True, help="host:port of the gRPC server, on loopback")
    parser.add_argument("--requests", type=Path, required=True, help="length-prefixed serialized ModelInferRequests")
    parser.add_argument("--clients", type=int, required=True, help="concurrent callers")
    parser.add_argument("--duration", type=float, required=True, help="seconds")
    parser.add_argument("--channels", type=int, help="connections, the callers spread over them (default: one each)")
    parser.add_argument("--max-requests", type=int, default=1_000_000, help="stop after this many calls")
    parser.add_argument("--timeout-s", type=float, default=60.0, help="each call's deadline")
    args = parser.parse_args(argv)
    if args.clients < 1 or args.duration <= 0 or (args.channels is not None and args.channels < 1):
        parser.error("clients and channels are at least 1, the duration more than 0")
    figures = asyncio.run(
        run_closed_loop(
            args.target,
            read_requests(args.requests),
            args.clients,
            args.duration,
            channels=args.channels or args.clients,
            max_requests=args.max_requests,
            timeout_s=args.timeout_s,
        )
    )
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
