"""CPU accounting from /proc (Linux): how busy the machine is, and what a process used."""

from __future__ import annotations

import contextlib
import os
import platform
import time
from pathlib import Path
from typing import Any

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


def process_tree(pid: int) -> list[int]:
    """``pid`` and its descendants (a server's parsing workers), from /proc."""
    parents: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue  # the process ended while we looked
        parents.setdefault(ppid, []).append(int(stat.parent.name))
    tree, frontier = [pid], [pid]
    while frontier:
        frontier = [child for parent in frontier for child in parents.get(parent, [])]
        tree += frontier
    return tree


def tree_cpu_seconds(pid: int) -> float:
    """CPU time of a process and its living descendants."""
    total = 0.0
    for member in process_tree(pid):
        with contextlib.suppress(OSError):
            total += process_cpu_seconds(member)
    return total


def tree_rss_bytes(pid: int) -> int:
    """Resident memory of a process and its living descendants."""
    total = 0
    for member in process_tree(pid):
        try:
            lines = Path(f"/proc/{member}/status").read_text().splitlines()
        except OSError:
            continue
        total += next((int(line.split()[1]) * 1024 for line in lines if line.startswith("VmRSS:")), 0)
    return total


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process, all its threads included."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICKS  # utime, stime


def children_cpu_seconds() -> float:
    """CPU time of this process's finished children (a wrk run, once it has exited)."""
    usage = os.times()
    return usage.children_user + usage.children_system


def machine() -> dict[str, Any]:
    """The machine a benchmark ran on, for its report (no paths, no host name)."""
    model_name = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if "model name" in line
        ),
        platform.processor(),
    )
    memory_kb = int(Path("/proc/meminfo").read_text().split()[1])
    return {
        "cpus": os.cpu_count(),
        "cpu_model": model_name,
        "memory_gib": round(memory_kb / 2**20, 1),
        "python": platform.python_version(),
        "date": time.strftime("%Y-%m-%d"),
    }
