"""Closed-loop load from ``wrk`` (Debian package ``wrk``): C, two threads, so the load
generator takes a small share of a small machine's CPU. The Python generator in
``closed_loop`` costs several times more per request and, past a few dozen connections,
becomes the bottleneck itself.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
from pathlib import Path
from urllib.parse import urlparse

from loadtests.closed_loop import LOOPBACK_HOSTS
from loadtests.payloads import HttpRequest

# Requests rotate through the payloads; `done` prints one JSON line with the figures.
_SCRIPT = """
local paths = {%(paths)s}
local headers = {%(headers)s}
local requests = {}
local counter = 0
init = function(args)
  for i, path in ipairs(paths) do
    local f = io.open(path, "rb"); local body = f:read("*a"); f:close()
    requests[i] = wrk.format("POST", nil, headers[i], body)
  end
end
request = function()
  counter = counter %% #requests + 1
  return requests[counter]
end
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '{"requests": %%d, "duration_us": %%d, "transport_errors": %%d, "non_2xx": %%d, '
    .. '"p50_us": %%d, "p90_us": %%d, "p95_us": %%d, "p99_us": %%d}\\n',
    summary.requests, summary.duration, e.connect + e.read + e.write + e.timeout, e.status,
    latency:percentile(50), latency:percentile(90), latency:percentile(95), latency:percentile(99)))
end
"""


def available() -> bool:
    return shutil.which("wrk") is not None


def _lua_table(headers: dict[str, str]) -> str:
    return "{" + ", ".join(f'["{k}"] = "{v}"' for k, v in headers.items()) + "}"


def run_wrk(url: str, bodies: list[HttpRequest], clients: int, duration: float) -> dict[str, float]:
    if urlparse(url).hostname not in LOOPBACK_HOSTS:
        raise ValueError("load tests only target this machine's loopback interface")
    with tempfile.TemporaryDirectory() as tmp:
        paths = []
        for i, (body, _) in enumerate(bodies):
            path = Path(tmp) / f"body{i}.bin"
            path.write_bytes(body)
            paths.append(path)
        script = Path(tmp) / "post.lua"
        script.write_text(
            _SCRIPT
            % {
                "paths": ", ".join(f'"{p}"' for p in paths),
                "headers": ", ".join(_lua_table(h) for _, h in bodies),
            }
        )
        threads = min(2, clients)
        command = [
            "wrk",
            f"-t{threads}",
            f"-c{clients}",
            f"-d{max(1, round(duration))}s",
            "--timeout",
            "60s",
            "-s",
            str(script),
            url,
        ]
        output = subprocess.run(command, check=True, capture_output=True, text=True, timeout=duration + 120).stdout
    figures = json.loads(next(line for line in output.splitlines() if line.startswith("{")))
    seconds = figures["duration_us"] / 1e6
    ok = figures["requests"] - figures["non_2xx"]
    return {
        "clients": clients,
        "seconds": round(seconds, 2),
        "requests_ok": ok,
        "errors": figures["non_2xx"] + figures["transport_errors"],
        "req_per_s": round(ok / seconds, 1),
        "p50_ms": round(figures["p50_us"] / 1000, 1),
        "p90_ms": round(figures["p90_us"] / 1000, 1),
        "p95_ms": round(figures["p95_us"] / 1000, 1),
        "p99_ms": round(figures["p99_us"] / 1000, 1),
    }
