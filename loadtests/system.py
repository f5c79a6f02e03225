"""CPU accounting from /proc (Linux): how busy the machine is, and what a process used."""

from __future__ import annotations

import os
import time
from pathlib import Path

_TICKS = os.sysconf("SC_CLK_TCK")


def _machine_busy_and_total() -> tuple[int, int]:
    fields = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return sum(fields) - idle, sum(fields)


def machine_busy_fraction(interval: float = 0.5) -> float:
    busy0, total0 = _machine_busy_and_total()
    time.sleep(interval)
    busy1, total1 = _machine_busy_and_total()
    return (busy1 - busy0) / max(total1 - total0, 1)


def wait_until_quiet(max_busy: float = 0.10, timeout: float = 20.0) -> float:
    """Wait (bounded) until the whole machine is mostly idle; return the last busy fraction."""
    deadline = time.monotonic() + timeout
    busy = machine_busy_fraction()
    while busy > max_busy and time.monotonic() < deadline:
        busy = machine_busy_fraction()
    return busy


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process, all its threads included."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICKS  # utime, stime


def children_cpu_seconds() -> float:
    """CPU time of this process's finished children (a wrk run, once it has exited)."""
    usage = os.times()
    return usage.children_user + usage.children_system
