"""Per-version statistics in the shape of Triton's statistics extension, read from the server's
own metrics (``server/metrics.py``), so that with ``--workers`` they count every worker's
requests and the model owner's batches, as ``/metrics`` does.

What each figure counts:
- ``success`` / ``fail``: requests that reached the version (it was found and ready), by how they
  ended; the duration is from then until the answer (decode, queue and model; a cache hit too).
- ``queue``: images that ran, and the time each waited for its batch.
- ``compute_input`` / ``compute_infer`` / ``compute_output``: images that ran; each is charged
  its batch's time in the phase (assembling the batch, the runtime, splitting the outputs), as
  Triton charges every request in a batch.
- ``cache_hit`` / ``cache_miss``: result cache lookups (counts; their time is not measured, 0).
- ``batch_stats``: per batch size (images, without padding), the model calls and their time in
  each phase.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from prometheus_client.metrics_core import Metric

PHASES = ("input", "infer", "output")


@dataclass
class Duration:
    count: int = 0
    seconds: float = 0.0

    def as_triton(self) -> dict[str, int]:
        return {"count": self.count, "ns": round(self.seconds * 1e9)}


@dataclass
class _Batches:
    """The model calls of one batch size."""

    count: int = 0
    seconds: dict[str, float] = field(default_factory=lambda: dict.fromkeys(PHASES, 0.0))


@dataclass
class ModelStatistics:
    name: str
    version: int
    last_inference_s: float = 0.0
    """Unix time the last batch ended (0: none yet)."""
    requests: dict[str, Duration] = field(default_factory=lambda: {"success": Duration(), "failure": Duration()})
    queue: Duration = field(default_factory=Duration)
    cache: dict[str, int] = field(default_factory=lambda: {"hit": 0, "miss": 0})
    batches: dict[int, _Batches] = field(default_factory=lambda: defaultdict(_Batches))

    @property
    def inference_count(self) -> int:
        """Images that ran."""
        return sum(size * b.count for size, b in self.batches.items())

    @property
    def execution_count(self) -> int:
        """Model calls."""
        return sum(b.count for b in self.batches.values())

    def compute(self, phase: str) -> Duration:
        """Per image: each image is charged its batch's time in ``phase``."""
        return Duration(self.inference_count, sum(size * b.seconds[phase] for size, b in self.batches.items()))

    def as_triton(self) -> dict[str, Any]:
        """Triton's JSON (and, through ``json_format``, its protobuf) shape."""
        return {
            "name": self.name,
            "version": str(self.version),
            "last_inference": round(self.last_inference_s * 1000),
            "inference_count": self.inference_count,
            "execution_count": self.execution_count,
            "inference_stats": {
                "success": self.requests["success"].as_triton(),
                "fail": self.requests["failure"].as_triton(),
                "queue": self.queue.as_triton(),
                "compute_input": self.compute("input").as_triton(),
                "compute_infer": self.compute("infer").as_triton(),
                "compute_output": self.compute("output").as_triton(),
                "cache_hit": Duration(self.cache["hit"]).as_triton(),
                "cache_miss": Duration(self.cache["miss"]).as_triton(),
            },
            "batch_stats": [
                {
                    "batch_size": size,
                    **{f"compute_{phase}": Duration(b.count, b.seconds[phase]).as_triton() for phase in PHASES},
                }
                for size, b in sorted(self.batches.items())
            ],
        }


def read_statistics(families: Iterable[Metric], versions: Sequence[tuple[str, int]]) -> list[ModelStatistics]:
    """The statistics of ``versions`` (model, version), in that order, from metric families as
    ``Metrics.collect()`` gives them."""
    stats = {(name, str(version)): ModelStatistics(name, version) for name, version in versions}
    for family in families:
        for sample in family.samples:
            labels = sample.labels
            entry = stats.get((labels.get("model", ""), labels.get("version", "")))
            if entry is not None:
                _add(entry, sample.name, labels, sample.value)
    return list(stats.values())


def _add(entry: ModelStatistics, sample: str, labels: dict[str, str], value: float) -> None:
    if sample.startswith("imgserve_inference_request_duration_seconds_"):
        outcome = entry.requests.get(labels.get("outcome", ""))
        if outcome is not None:
            _duration(outcome, sample, value)
    elif sample.startswith("imgserve_queue_wait_seconds_"):
        _duration(entry.queue, sample, value)
    elif sample == "imgserve_batches_total":
        entry.batches[int(labels["batch_size"])].count += round(value)
    elif sample == "imgserve_batch_phase_seconds_total" and labels.get("phase") in PHASES:
        entry.batches[int(labels["batch_size"])].seconds[labels["phase"]] += value
    elif sample == "imgserve_result_cache_requests_total" and labels.get("result") in entry.cache:
        entry.cache[labels["result"]] += round(value)
    elif sample == "imgserve_last_inference_timestamp_seconds":
        entry.last_inference_s = max(entry.last_inference_s, value)


def _duration(duration: Duration, sample: str, value: float) -> None:
    if sample.endswith("_count"):
        duration.count += round(value)
    elif sample.endswith("_sum"):
        duration.seconds += value
