"""A hostile client: a mix of abusive requests and stalled connections, bounded in time and
count, sent only to this machine's loopback interface. It runs in a process of its own so it
never shares a GIL with the legitimate load it disturbs.

Every request in the mix was, before the hostile-traffic work, one that a single client could
use to exhaust or stall the server: floods of tiny images, huge declared shapes, JSON bodies
of maximum size, decompression bombs within the pixel limit, corrupt files, calls to the
admin API, unknown keys; and connections that send half a body and stop.
"""

from __future__ import annotations

import asyncio
import io
import multiprocessing
import time
from dataclasses import dataclass
from urllib.parse import urlparse

import httpx
import numpy as np
import orjson
from PIL import Image

from loadtests.closed_loop import LOOPBACK_HOSTS


@dataclass(frozen=True)
class HostileRequest:
    label: str
    path: str
    body: bytes
    headers: dict[str, str]


def _png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def _v2_bytes(images: list[bytes]) -> tuple[bytes, dict[str, str]]:
    raw = b"".join(len(i).to_bytes(4, "little") + i for i in images)
    spec = {"name": "images", "datatype": "BYTES", "shape": [len(images)], "parameters": {"binary_data_size": len(raw)}}
    header = orjson.dumps({"inputs": [spec]})
    return header + raw, {"Inference-Header-Content-Length": str(len(header))}


def hostile_mix(model: str, key: str, photo: bytes) -> list[HostileRequest]:
    """The abusive requests, built once (the sender must not spend its CPU building them)."""
    auth = {"Authorization": f"Bearer {key}"}
    json_type = {**auth, "Content-Type": "application/json"}
    jpeg_type = {**auth, "Content-Type": "image/jpeg"}
    guessed = {"Authorization": "Bearer guessed", "Content-Type": "image/jpeg"}
    infer = f"/v2/models/{model}/infer"
    flood, flood_headers = _v2_bytes([_png(np.zeros((1, 1, 3), np.uint8))] * 2000)
    huge_dims = b'{"inputs":[{"name":"images","datatype":"UINT8","shape":[' + b",".join([b"1e308"] * 3000) + b"]}]}"
    overflow = orjson.dumps(
        {"inputs": [{"name": "images", "datatype": "UINT8", "shape": [64, 2**31 - 1, 2**31 - 1, 3], "data": []}]}
    )
    pixels = [7] * (64 * 224 * 224 * 3)
    pixels[-1] = 300  # out of range: refused only once all of it is parsed and converted
    big_json = orjson.dumps({"inputs": [{"name": "images", "datatype": "UINT8", "shape": [64, 224, 224, 3],
                                         "data": pixels}]})  # fmt: skip
    # 39 MP of one colour: a ~120 KB PNG that decodes to 117 MB, within the default limits.
    bomb = _png(np.full((6000, 6500, 3), 200, np.uint8))
    return [
        HostileRequest("flood of 2000 tiny PNGs", infer, flood, {**auth, **flood_headers}),
        HostileRequest("1e308 dimensions", infer, huge_dims, json_type),
        HostileRequest("overflowing shape", infer, overflow, json_type),
        HostileRequest("19 MB JSON pixels", infer, big_json, json_type),
        HostileRequest("39 MP PNG bomb", "/v1/classify", bomb, {**auth, "Content-Type": "image/png"}),
        HostileRequest("truncated JPEG", "/v1/classify", photo[: len(photo) // 3], jpeg_type),
        HostileRequest("not JSON", infer, b"{" * 5000, json_type),
        HostileRequest("admin unload", f"/v2/repository/models/{model}/unload", b"", auth),
        HostileRequest("unknown key", "/v1/classify", photo, guessed),
    ]  # fmt: skip


async def _stall(host: str, port: int, key: str, stop_at: float, counts: dict[str, int]) -> None:
    """One connection at a time that declares a body, sends a tenth of it, and stops; once
    the server answers (or closes), a pause, then the next."""
    while time.monotonic() < stop_at:
        try:
            reader, writer = await asyncio.open_connection(host, port)
        except OSError:
            await asyncio.sleep(0.1)
            continue
        head = (
            f"POST /v1/classify HTTP/1.1\r\nHost: {host}\r\nContent-Type: image/png\r\nContent-Length: 100000\r\n\r\n"
        )
        writer.write(head.encode() + b"\0" * 10_000)
        try:
            await asyncio.wait_for(reader.read(1), timeout=max(0.0, stop_at - time.monotonic()))
            closed = "stalled body: answered and closed by the server"
            counts[closed] = counts.get(closed, 0) + 1
        except (asyncio.TimeoutError, OSError):
            pass
        writer.close()
        await asyncio.sleep(0.5)


async def _send(client: httpx.AsyncClient, request: HostileRequest, counts: dict[str, int]) -> None:
    try:
        response = await client.post(request.path, content=request.body, headers=request.headers)
        outcome = f"{request.label}: {response.status_code}"
    except httpx.HTTPError as exc:
        outcome = f"{request.label}: {type(exc).__name__}"
    counts[outcome] = counts.get(outcome, 0) + 1


async def run_hostile(
    base_url: str,
    mix: list[HostileRequest],
    key: str,
    rate: float,
    duration: float,
    stalled: int,
    max_in_flight: int = 32,
) -> dict[str, int]:
    """Send the mix in turn at ``rate`` requests/s (at most ``max_in_flight`` outstanding) and
    hold ``stalled`` half-sent bodies open, for ``duration`` seconds. Counts by label and status."""
    target = urlparse(base_url)
    if target.hostname not in LOOPBACK_HOSTS or target.port is None:
        raise ValueError("the hostile client only targets this machine's loopback interface")
    counts: dict[str, int] = {}
    stop_at = time.monotonic() + duration
    stallers = [
        asyncio.ensure_future(_stall(target.hostname, target.port, key, stop_at, counts)) for _ in range(stalled)
    ]
    in_flight: set[asyncio.Task[None]] = set()
    limits = httpx.Limits(max_connections=max_in_flight, max_keepalive_connections=max_in_flight)
    async with httpx.AsyncClient(base_url=base_url, limits=limits, timeout=60) as client:
        started = time.monotonic()
        for i in range(int(rate * duration)):
            delay = started + i / rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            if len(in_flight) >= max_in_flight:
                counts["skipped: too many in flight"] = counts.get("skipped: too many in flight", 0) + 1
                continue
            task = asyncio.ensure_future(_send(client, mix[i % len(mix)], counts))
            in_flight.add(task)
            task.add_done_callback(in_flight.discard)
        if in_flight:
            await asyncio.wait(in_flight, timeout=60)
    await asyncio.gather(*stallers)
    return counts


def hostile_process(
    base_url: str,
    model: str,
    key: str,
    photo: bytes,
    rate: float,
    duration: float,
    stalled: int,
    results: multiprocessing.Queue[dict[str, int]],
) -> None:
    """Entry point of the hostile client's own process."""
    mix = hostile_mix(model, key, photo)
    results.put(asyncio.run(run_hostile(base_url, mix, key, rate, duration, stalled)))
