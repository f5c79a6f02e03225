"""Noisy neighbour: what a hostile client costs the legitimate ones.

    python -m loadtests.abuse --duration 20

Starts ``imgserve serve`` (the default model unless ``--repository``/``--model`` say
otherwise) with two API keys: ``legit``, unlimited, and ``hostile``, held to a tier of its
own in the keys file: a rate limit and a CPU share. Legitimate clients (closed loop, real
JPEG photos; wrk when installed, else the Python generator) are measured twice in one run:
quiet, then while the hostile client, in a process of its own, sends the hostile mix
(loadtests/hostile.py) at twice its rate limit, so it is always at the limit, and holds
half-sent bodies open. The server's resident memory is sampled throughout. Target:
legitimate throughput at least 0.8 of quiet, p99 at most 2x quiet, RSS bounded.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from loadtests.hostile import hostile_process
from loadtests.measure import closed_loop
from loadtests.payloads import jpeg_payloads
from loadtests.server_process import free_port, server_process
from loadtests.system import process_cpu_seconds, tree_cpu_seconds, tree_rss_bytes
from server.api_keys import new_key_line


class RssSampler:
    """The server's resident set (its parsing workers included), sampled every ``interval`` s."""

    def __init__(self, pid: int, interval: float = 0.1) -> None:
        self.pid, self.interval = pid, interval
        self.samples: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def rss_bytes(self) -> int:
        return tree_rss_bytes(self.pid)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.samples.append((time.monotonic(), self.rss_bytes()))

    def peak_mb(self, since: float, until: float) -> float:
        values = [rss for t, rss in self.samples if since <= t <= until] or [0]
        return round(max(values) / 2**20, 1)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


def measure(args: argparse.Namespace) -> dict[str, Any]:
    legit_key, legit_line = new_key_line("legit")
    hostile_key, hostile_line = new_key_line("hostile")
    photos = jpeg_payloads()
    bodies = [(p, {"Content-Type": "image/jpeg", "Authorization": f"Bearer {legit_key}"}) for p in photos]
    with tempfile.TemporaryDirectory() as tmp:
        keys = Path(tmp) / "keys.txt"
        tier = f"rate={args.hostile_limit}/second cpu={args.hostile_cpu}"
        keys.write_text(f"{legit_line}\n{hostile_line} {tier}\n")
        port = free_port()
        command = [sys.executable, "-m", "imgserve", "serve", "--port", str(port)]
        command += ["--model-repository", str(args.repository)]
        env = {"IMGSERVE_API_KEYS_FILE": str(keys), "IMGSERVE_DEFAULT_MODEL": args.model, **dict(args.env)}
        with server_process(command, port, env) as (base_url, process), RssSampler(process.pid) as rss:
            url = f"{base_url}/v1/classify"
            closed_loop(url, bodies, args.clients, min(3.0, args.duration))  # warm
            idle_mb = round(rss.rss_bytes() / 2**20, 1)
            started = time.monotonic()
            server_cpu = tree_cpu_seconds(process.pid)
            quiet = closed_loop(url, bodies, args.clients, args.duration)
            quiet_end = time.monotonic()
            quiet["server_cpu"] = round((tree_cpu_seconds(process.pid) - server_cpu) / quiet["seconds"], 2)

            results: multiprocessing.Queue[dict[str, int]] = multiprocessing.Queue()
            rate = 2 * args.hostile_limit
            hostile = multiprocessing.Process(
                target=hostile_process,
                args=(base_url, args.model, hostile_key, photos[0], rate, args.duration + 2, args.stalled, results),
            )
            hostile.start()
            assert hostile.pid is not None
            time.sleep(1.0)  # let the hostile client reach its pace
            abused_start = time.monotonic()
            server_cpu, hostile_cpu = tree_cpu_seconds(process.pid), process_cpu_seconds(hostile.pid)
            abused = closed_loop(url, bodies, args.clients, args.duration)
            abused_end = time.monotonic()
            abused["server_cpu"] = round((tree_cpu_seconds(process.pid) - server_cpu) / abused["seconds"], 2)
            # The hostile client shares this machine's cores: what it burns is not the server's doing.
            hostile_cpu = round((process_cpu_seconds(hostile.pid) - hostile_cpu) / abused["seconds"], 2)
            hostile_counts = results.get(timeout=120)
            hostile.join(timeout=30)
            time.sleep(2.0)
            after_mb = round(rss.rss_bytes() / 2**20, 1)
            return {
                "cpus": os.cpu_count(),
                "clients": args.clients,
                "duration_s": args.duration,
                "hostile_rate_limit_per_s": args.hostile_limit,
                "hostile_cpu_share": args.hostile_cpu,
                "hostile_send_rate_per_s": rate,
                "stalled_connections": args.stalled,
                "hostile_client_cpu": hostile_cpu,
                "quiet": quiet,
                "abused": abused,
                "throughput_ratio": round(abused["req_per_s"] / max(quiet["req_per_s"], 1e-9), 3),
                "p99_ratio": round(abused["p99_ms"] / max(quiet["p99_ms"], 1e-9), 3),
                "rss_mb": {
                    "idle": idle_mb,
                    "peak_quiet": rss.peak_mb(started, quiet_end),
                    "peak_abused": rss.peak_mb(abused_start, abused_end),
                    "after": after_mb,
                },
                "hostile": dict(sorted(hostile_counts.items())),
            }


def markdown(report: dict[str, Any]) -> str:
    quiet, abused, rss = report["quiet"], report["abused"], report["rss_mb"]
    lines = [
        "| legitimate clients | req/s | p50 ms | p99 ms | errors | server CPU (cores) | server peak RSS MB |",
        "|---|---|---|---|---|---|---|",
        f"| quiet | {quiet['req_per_s']} | {quiet['p50_ms']} | {quiet['p99_ms']} | {quiet['errors']} | "
        f"{quiet['server_cpu']} | {rss['peak_quiet']} |",
        f"| with the hostile client | {abused['req_per_s']} | {abused['p50_ms']} | {abused['p99_ms']} | "
        f"{abused['errors']} | {abused['server_cpu']} | {rss['peak_abused']} |",
        "",
        f"throughput ratio {report['throughput_ratio']} (target >= 0.8), p99 ratio {report['p99_ratio']} "
        f"(target <= 2); RSS idle {rss['idle']} MB, after {rss['after']} MB; the hostile client itself "
        f"used {report['hostile_client_cpu']} CPU on the same machine",
        "",
        "| hostile request: status | count |",
        "|---|---|",
        *(f"| {label} | {count} |" for label, count in report["hostile"].items()),
    ]  # fmt: skip
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=20.0, help="seconds per phase")
    parser.add_argument("--clients", type=int, default=8, help="legitimate closed-loop clients")
    parser.add_argument("--hostile-limit", type=int, default=10, help="the hostile key's rate limit, requests/s")
    parser.add_argument(
        "--hostile-cpu", type=float, default=0.2, help="the hostile key's CPU share, CPU-seconds per second"
    )
    parser.add_argument("--stalled", type=int, default=20, help="half-sent bodies the hostile client holds open")
    parser.add_argument("--repository", type=Path, default=Path("models"), help="model repository")
    parser.add_argument("--model", default="efficientnet_lite0", help="model behind /v1/classify")
    parser.add_argument(
        "--env", action="append", type=lambda kv: tuple(kv.split("=", 1)), default=[], help="IMGSERVE_X=value"
    )
    parser.add_argument("--out", type=Path, help="write the JSON report here")
    args = parser.parse_args()
    report = measure(args)
    print(markdown(report))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
