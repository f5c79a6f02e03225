"""Turn a benchmark report (JSON) into a Markdown table and a throughput-vs-p99 plot."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def label(point: dict[str, Any]) -> str:
    """A point's configuration, and its protocol where it is not HTTP."""
    return f"{point['config']} over gRPC" if point.get("protocol") == "grpc" else str(point["config"])


def markdown_table(points: list[dict[str, Any]]) -> str:
    lines = [
        "| config | load | req/s | p50 ms | p95 ms | p99 ms | mean batch | errors | server CPU | server CPU ms/req "
        "| generator CPU |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for p in points:
        load = f"{p['clients']} clients" if p["mode"] == "closed" else f"{p['rate']} req/s offered"
        cpu_ms = p.get("server_cpu_ms_per_request")
        lines.append(
            f"| {label(p)} | {load} | {p['req_per_s']} | {p['p50_ms']} | {p.get('p95_ms', '-')} | {p['p99_ms']} | "
            f"{p.get('mean_batch_size', '-')} | {p['errors']} | {p.get('server_cpu', '-')} | "
            f"{'-' if cpu_ms is None else cpu_ms} | {p.get('generator_cpu', '-')} |"
        )
    return "\n".join(lines)


def plot(points: list[dict[str, Any]], path: Path, title: str) -> None:
    """Closed-loop points per config: throughput on x, p99 latency on y (log)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    for config in dict.fromkeys(label(p) for p in points):
        series = sorted((p for p in points if label(p) == config and p["mode"] == "closed"), key=lambda p: p["clients"])
        if not series:
            continue
        ax.plot([p["req_per_s"] for p in series], [p["p99_ms"] for p in series], marker="o", label=config)
        for p in series:
            ax.annotate(
                str(p["clients"]), (p["req_per_s"], p["p99_ms"]), fontsize=7, xytext=(3, 3), textcoords="offset points"
            )
    ax.set_xlabel("throughput (requests/s)")
    ax.set_ylabel("p99 latency (ms, log)")
    ax.set_yscale("log")
    ax.set_title(title, fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
