"""The noisy-neighbour benchmark, run briefly as a user runs it, on the simulated runtime: it
starts the server, measures both phases, and reports what the hostile client got back."""

from __future__ import annotations

import argparse
from pathlib import Path

from loadtests.abuse import markdown, measure
from loadtests.batching_bench import write_simulated_model


def test_the_abuse_benchmark_measures_both_phases_and_the_hostile_mix_is_refused(tmp_path: Path) -> None:
    write_simulated_model(tmp_path, fixed_s=0.002, per_image_s=0.0001)
    args = argparse.Namespace(
        duration=2.0, clients=2, hostile_limit=20, hostile_cpu=0.2, stalled=2,
        repository=tmp_path, model="simulated", env=[],
    )  # fmt: skip
    report = measure(args)
    assert report["quiet"]["req_per_s"] > 0 and report["abused"]["req_per_s"] > 0
    assert report["quiet"]["errors"] == 0 and report["abused"]["errors"] == 0  # legitimate clients: no failure
    hostile = report["hostile"]
    assert not any(label.endswith(": 500") for label in hostile), hostile
    assert hostile.get("flood of 2000 tiny PNGs: 413", 0) + hostile.get("flood of 2000 tiny PNGs: 429", 0) > 0
    assert hostile.get("admin unload: 403", 0) > 0 and hostile.get("unknown key: 401", 0) > 0
    assert report["rss_mb"]["peak_abused"] > 0
    assert "throughput ratio" in markdown(report)
