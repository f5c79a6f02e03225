"""Jobs across a crash, with real processes: a server killed with SIGKILL in the middle of a job
leaves it running under a lease; a new server on the same SQLite file takes it up once the lease
has run out and finishes it, without running the images that already had their outcome again."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import httpx
import pytest

from server.settings import BatchingSettings, JobSettings, Settings
from tests.helpers import png
from tests.served import served_process
from tests.server.test_workers import MODEL, write_slow_model

pytestmark = pytest.mark.e2e


def job_of(url: str, job_id: str) -> dict[str, object]:
    response: dict[str, object] = httpx.get(f"{url}/v1/jobs/{job_id}", timeout=10).json()
    return response


def done(url: str, job_id: str) -> int:
    images = job_of(url, job_id)["images"]
    assert isinstance(images, dict)
    return int(images["done"])


def wait_until(condition: object, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout_s} s: {what}")
        time.sleep(0.1)


@pytest.mark.parametrize("workers", [0, 1])
def test_a_job_cut_short_by_a_crash_is_finished_by_the_next_server(tmp_path: Path, workers: int) -> None:
    write_slow_model(tmp_path / "models", fixed_s=0.3)  # a batch of two takes 0.3 s
    settings = Settings(
        model_repository=tmp_path / "models",
        default_model=MODEL,
        batching=BatchingSettings(max_batch_size=2),
        result_store=f"sqlite:///{tmp_path / 'store.db'}",
        jobs=JobSettings(enabled=True, lease_s=1.0),
    )
    images = [("files", (f"{i}.png", png(i), "image/png")) for i in range(12)]
    with served_process(settings, workers) as (url, process):
        submitted = httpx.post(f"{url}/v1/jobs", files=images, data={"top_k": "1"}, timeout=30)
        assert submitted.status_code == 202, submitted.text
        job_id = str(submitted.json()["job_id"])
        wait_until(lambda: done(url, job_id) >= 4, 30, "part of the job ran")
        done_before = done(url, job_id)
        process.send_signal(signal.SIGKILL)  # the supervisor only, with --workers: its children stop by themselves
        process.wait(10)
    with served_process(settings, workers) as (url, _):
        wait_until(lambda: job_of(url, job_id)["status"] == "done", 60, "the job finished after the restart")
        job = job_of(url, job_id)
        stats = httpx.get(f"{url}/v2/models/{MODEL}/stats", timeout=10).json()["model_stats"][0]
    # This life ran what had no outcome yet: at most the batch that was running at the kill again.
    assert 0 < stats["inference_count"] <= 12 - done_before + 2
    results = job["results"]
    assert isinstance(results, list) and len(results) == 12
    assert [r["result"]["class"] for r in results] == [f"class{i % 10}" for i in range(12)]
    assert job["images"] == {"total": 12, "done": 12, "failed": 0}
