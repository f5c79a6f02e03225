"""Python HTTP load generators, bounded in time and count, loopback targets only.

Closed loop: N clients, each sends its next request when the last one is answered. Open
loop: requests leave at a fixed rate whatever the answers, as independent users do, so a
server that falls behind shows it as latency instead of slowing the arrivals down.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from dataclasses import dataclass, field
from urllib.parse import urlparse

import httpx
import numpy as np

from loadtests.payloads import HttpRequest

LOOPBACK_HOSTS = {"127.0.0.1", "localhost", "::1"}


@dataclass
class LoadResult:
    clients: int
    seconds: float
    latencies: list[float] = field(default_factory=list)
    statuses: dict[int, int] = field(default_factory=dict)
    transport_errors: int = 0

    @property
    def ok(self) -> int:
        return self.statuses.get(200, 0)

    def summary(self) -> dict[str, float]:
        lat = np.asarray(self.latencies) * 1000 if self.latencies else np.zeros(1)
        return {
            "clients": self.clients,
            "seconds": round(self.seconds, 2),
            "requests_ok": self.ok,
            "errors": sum(n for s, n in self.statuses.items() if s != 200) + self.transport_errors,
            "req_per_s": round(self.ok / self.seconds, 1),
            "p50_ms": round(float(np.percentile(lat, 50)), 1),
            "p90_ms": round(float(np.percentile(lat, 90)), 1),
            "p95_ms": round(float(np.percentile(lat, 95)), 1),
            "p99_ms": round(float(np.percentile(lat, 99)), 1),
        }


async def _send(client: httpx.AsyncClient, url: str, body: bytes, headers: dict[str, str], result: LoadResult) -> None:
    """One request, timed and recorded in ``result``."""
    sent = time.perf_counter()
    try:
        response = await client.post(url, content=body, headers=headers)
    except httpx.TransportError:
        result.transport_errors += 1
        return
    result.latencies.append(time.perf_counter() - sent)
    result.statuses[response.status_code] = result.statuses.get(response.status_code, 0) + 1


async def run_closed_loop(
    url: str,
    bodies: list[HttpRequest],
    clients: int,
    duration: float,
    max_requests: int = 1_000_000,
) -> LoadResult:
    if urlparse(url).hostname not in LOOPBACK_HOSTS:
        raise ValueError("load tests only target this machine's loopback interface")
    result = LoadResult(clients=clients, seconds=duration)
    counter = itertools.count()
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    started = time.perf_counter()
    stop_at = started + duration

    async with httpx.AsyncClient(limits=limits, timeout=60) as client:

        async def one_client(offset: int) -> None:
            payloads = itertools.cycle(bodies[offset % len(bodies) :] + bodies[: offset % len(bodies)])
            while time.perf_counter() < stop_at and next(counter) < max_requests:
                body, headers = next(payloads)
                await _send(client, url, body, headers, result)

        await asyncio.gather(*(one_client(i) for i in range(clients)))
    result.seconds = time.perf_counter() - started
    return result


async def run_open_loop(
    url: str,
    bodies: list[HttpRequest],
    rate: float,
    duration: float,
    max_in_flight: int = 512,
) -> LoadResult:
    """Send ``rate`` requests per second for ``duration`` seconds. Arrivals that find
    ``max_in_flight`` requests outstanding are counted as transport errors, not queued, so
    the generator's own memory stays bounded."""
    if urlparse(url).hostname not in LOOPBACK_HOSTS:
        raise ValueError("load tests only target this machine's loopback interface")
    result = LoadResult(clients=0, seconds=duration)
    limits = httpx.Limits(max_connections=max_in_flight, max_keepalive_connections=64)
    in_flight: set[asyncio.Task[None]] = set()
    started = time.perf_counter()
    total = int(rate * duration)

    async with httpx.AsyncClient(limits=limits, timeout=60) as client:
        for i in range(total):
            delay = started + i / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            if len(in_flight) >= max_in_flight:
                result.transport_errors += 1
                continue
            body, headers = bodies[i % len(bodies)]
            task = asyncio.ensure_future(_send(client, url, body, headers, result))
            in_flight.add(task)
            task.add_done_callback(in_flight.discard)
        if in_flight:
            await asyncio.wait(in_flight)
    result.seconds = time.perf_counter() - started
    return result
