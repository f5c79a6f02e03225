"""``imgserve serve --workers N`` as a user runs it: the supervisor, its front-end workers and
the model owner as real processes, killed with SIGKILL and stopped with SIGTERM.

The model is the simulated runtime (a known cost per batch, sleeping like a device), so a
test decides how long the model is busy without depending on this machine's speed.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import httpx

from loadtests.batching_bench import write_model
from server.settings import BatchingSettings, LimitSettings, Settings
from tests.helpers import png
from tests.served import served_process

MODEL = "simulated"
ADMIN = "admin-secret"


def write_slow_model(repository: Path, fixed_s: float, version: int = 1) -> None:
    write_model(
        repository,
        MODEL,
        "simulated",
        image_size=8,
        resize_shorter_side=8,
        classes=10,
        parameters={"fixed_seconds": fixed_s, "per_image_seconds": 0.0},
        version=version,
    )


def settings_for(repository: Path, **overrides: Any) -> Settings:
    batching = overrides.pop("batching", BatchingSettings(max_batch_size=1, max_queue_size=2))
    return Settings(model_repository=repository, default_model=MODEL, admin_token=ADMIN, batching=batching, **overrides)


def infer(url: str, timeout: float = 30, **headers: str) -> httpx.Response:
    """One request on a fresh connection, so that successive ones spread over the workers."""
    return httpx.post(
        f"{url}/v1/classify", content=png(7), headers={"Content-Type": "image/png", **headers}, timeout=timeout
    )


def pids_by_role(url: str) -> dict[str, int]:
    """The live processes, from the merged /metrics view (one sample per process)."""
    text = httpx.get(f"{url}/metrics", timeout=10).text
    pattern = r'imgserve_process_start_time_seconds\{pid="(\d+)",role="([^"]+)"\}'
    return {role: int(pid) for pid, role in re.findall(pattern, text)}


def metric(url: str, name: str, **labels: str) -> float:
    text = httpx.get(f"{url}/metrics", timeout=10).text
    total = 0.0
    for line in text.splitlines():
        named = line.startswith(name + "{") or line.startswith(name + " ")
        if named and all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def rings(supervisor: int, worker: int | None = None) -> list[str]:
    """The shared-memory rings of a server's workers (of one of them)."""
    prefix = f"imgserve-{supervisor}-" + ("" if worker is None else f"w{worker}-")
    return sorted(p.name for p in Path("/dev/shm").glob(prefix + "*"))


def until(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout_s} s: {what}")
        time.sleep(0.1)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie has exited: only its parent has not reaped it yet
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(") ", 1)[1][0] != "Z"
    except FileNotFoundError:
        return False


@contextmanager
def cluster(tmp_path: Path, workers: int = 2, fixed_s: float = 0.01, **overrides: Any) -> Iterator[tuple[str, Any]]:
    write_slow_model(tmp_path / "models", fixed_s)
    settings = settings_for(tmp_path / "models", **overrides)
    with (tmp_path / "server.log").open("wb") as log, served_process(settings, workers, stderr=log) as (url, process):
        until(lambda: len(pids_by_role(url)) == workers + 1, 30, "every process reports in /metrics")
        yield url, process


def in_threads(calls: list[Callable[[], httpx.Response]]) -> list[httpx.Response]:
    results: list[Any] = [None] * len(calls)

    def run(i: int) -> None:
        try:
            results[i] = calls[i]()
        except httpx.HTTPError as exc:
            results[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(calls))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    return results


def test_every_process_serves_and_reports_in_one_metrics_view(tmp_path: Path) -> None:
    with cluster(tmp_path, workers=2) as (url, _):
        assert set(pids_by_role(url)) == {"model-owner", "worker-0", "worker-1"}
        before = metric(url, "imgserve_requests_total", route="/v1/classify", status="200")
        answers = [infer(url) for _ in range(20)]
        assert [r.status_code for r in answers] == [200] * 20
        # Counted by whichever worker answered, batched by the owner: one view of both.
        assert metric(url, "imgserve_requests_total", route="/v1/classify", status="200") == before + 20
        assert metric(url, "imgserve_batch_size_count", model=MODEL) >= 20
    log = (tmp_path / "server.log").read_text()
    for role in ("supervisor", "model-owner", "worker-0", "worker-1"):
        assert re.search(rf" {role}\[\d+\] ", log), f"no log line tagged {role}"


def test_a_killed_worker_is_replaced_while_the_other_serves(tmp_path: Path) -> None:
    with cluster(tmp_path, workers=2) as (url, process):
        victim = pids_by_role(url)["worker-0"]
        until(lambda: infer(url).status_code == 200 and bool(rings(process.pid, worker=0)), 10, "worker-0 has a ring")
        victims_rings = set(rings(process.pid, worker=0))
        os.kill(victim, signal.SIGKILL)
        # Connections that were the dead worker's are reset; every new one is served.
        served = 0
        deadline = time.monotonic() + 20
        while served < 20 and time.monotonic() < deadline:
            with suppress(httpx.TransportError):
                served += infer(url).status_code == 200
        assert served == 20
        until(lambda: pids_by_role(url).get("worker-0") not in (None, victim), 20, "worker-0 restarted")
        assert not alive(victim)
        # Its ring went with it; its replacement made its own.
        assert not set(rings(process.pid, worker=0)) & victims_rings


def test_without_its_model_owner_a_worker_answers_503_with_retry_after_until_it_is_back(tmp_path: Path) -> None:
    with cluster(tmp_path, workers=2) as (url, _):
        owner = pids_by_role(url)["model-owner"]
        os.kill(owner, signal.SIGKILL)
        statuses = set()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            response = infer(url)
            statuses.add(response.status_code)
            if response.status_code == 200 and 503 in statuses:
                break
            assert response.status_code in (200, 503), response.text
            if response.status_code == 503:
                assert float(response.headers["Retry-After"]) > 0
                assert response.json()["error"]["code"] in ("unavailable", "not_ready")
            time.sleep(0.02)
        assert statuses == {503, 200}, "first 503 while the owner is away, then served again"
        assert pids_by_role(url)["model-owner"] != owner


def test_the_queue_bound_is_global_across_workers(tmp_path: Path) -> None:
    # One image at a time, two queued: of twelve at once, at most three are admitted, whichever
    # worker took them; the rest are refused at once, never queued.
    with cluster(tmp_path, workers=2, fixed_s=1.0) as (url, _):
        answers = in_threads([lambda: infer(url) for _ in range(12)])
        statuses = sorted(r.status_code for r in answers)
        assert statuses == [200] * 3 + [429] * 9, statuses
        assert all(float(r.headers["Retry-After"]) > 0 for r in answers if r.status_code == 429)


def test_the_in_progress_limit_is_global_across_workers(tmp_path: Path) -> None:
    # Two requests in progress for the whole server, not two per worker: the model queue has
    # room for all eight, so only the in-progress budget can refuse.
    limits = LimitSettings(max_requests_in_progress=2)
    batching = BatchingSettings(max_batch_size=8, max_queue_size=16)
    with cluster(tmp_path, workers=2, fixed_s=1.0, limits=limits, batching=batching) as (url, _):
        answers = in_threads([lambda: infer(url) for _ in range(8)])
        statuses = sorted(r.status_code for r in answers)
        assert statuses == [200, 200] + [429] * 6, statuses
        refused = [r for r in answers if r.status_code == 429]
        assert all("requests in progress" in r.json()["error"]["message"] for r in refused)


def test_the_rate_limit_is_global_across_workers(tmp_path: Path) -> None:
    with cluster(tmp_path, workers=2, rate_limit="5/minute") as (url, _):
        answers = [infer(url) for _ in range(12)]  # fresh connections: both workers answer
        assert [r.status_code for r in answers] == [200] * 5 + [429] * 7
        assert [r.headers["RateLimit-Remaining"] for r in answers[:5]] == ["4", "3", "2", "1", "0"]
        assert all(int(r.headers["Retry-After"]) >= 1 for r in answers[5:])


def test_a_deadline_that_passes_in_the_owners_queue_is_a_504(tmp_path: Path) -> None:
    with cluster(tmp_path, workers=2, fixed_s=1.0) as (url, _):

        def short_deadline() -> httpx.Response:
            time.sleep(0.2)  # behind the first one, which holds the model for a second
            return infer(url, **{"X-Request-Timeout-Ms": "300"})

        answers = in_threads([lambda: infer(url), short_deadline])
        assert [r.status_code for r in answers] == [200, 504]
        assert answers[1].json()["error"]["code"] == "timeout"


def test_an_abandoned_request_is_dropped_before_it_runs(tmp_path: Path) -> None:
    with cluster(tmp_path, workers=2, fixed_s=1.0) as (url, _):
        abandoned = metric(url, "imgserve_dropped_images_total", reason="abandoned")
        batches = metric(url, "imgserve_batch_size_count", model=MODEL)

        def give_up() -> httpx.Response:
            time.sleep(0.2)  # behind the first one, which holds the model for a second
            return infer(url, timeout=0.3)

        answers = in_threads([lambda: infer(url), give_up])
        assert answers[0].status_code == 200
        assert isinstance(answers[1], httpx.TimeoutException)
        until(
            lambda: metric(url, "imgserve_dropped_images_total", reason="abandoned") == abandoned + 1,
            10,
            "the owner dropped the abandoned image",
        )
        time.sleep(1.2)  # had it run, its batch would have ended by now
        assert metric(url, "imgserve_batch_size_count", model=MODEL) == batches + 1


def test_a_new_version_loaded_through_one_worker_is_served_by_all(tmp_path: Path) -> None:
    with cluster(tmp_path, workers=2) as (url, _):
        write_slow_model(tmp_path / "models", 0.01, version=2)
        admin = {"Authorization": f"Bearer {ADMIN}"}
        loaded = httpx.post(f"{url}/v2/repository/models/{MODEL}/load", headers=admin, timeout=60)
        assert loaded.status_code == 200, loaded.text
        # Fresh connections: both workers answer, and both know version 2 at once.
        for _ in range(12):
            response = httpx.get(f"{url}/v2/models/{MODEL}/versions/2", timeout=10)
            assert response.status_code == 200, response.text
        assert infer(url).json()["version"] == 2


def test_sigterm_drains_requests_in_progress_then_every_process_exits(tmp_path: Path) -> None:
    with cluster(tmp_path, workers=2, fixed_s=0.5, batching=BatchingSettings(max_batch_size=1)) as (url, process):
        children = list(pids_by_role(url).values())
        started = threading.Event()

        def in_progress() -> float:
            lines = httpx.get(f"{url}/metrics", timeout=10).text.splitlines()
            return sum(float(line.split()[-1]) for line in lines if line.startswith("imgserve_requests_in_progress "))

        def stop_soon() -> httpx.Response:
            started.wait(5)
            # Every request is in (a busy machine may take a while to start four threads), then stop.
            until(lambda: in_progress() == 4, 20, "the four requests in progress")
            process.send_signal(signal.SIGTERM)
            return httpx.Response(200)

        calls: list[Callable[[], httpx.Response]] = [lambda: (started.set(), infer(url))[1] for _ in range(4)]
        answers = in_threads([*calls, stop_soon])
        assert [r.status_code for r in answers[:4]] == [200] * 4, answers
        assert process.wait(timeout=30) == 0
        until(lambda: not any(alive(pid) for pid in children), 10, "every child exited")
        assert rings(process.pid) == [], "shared memory left behind"


def test_the_children_stop_when_the_supervisor_is_killed(tmp_path: Path) -> None:
    with cluster(tmp_path, workers=1) as (url, process):
        children = list(pids_by_role(url).values())
        process.send_signal(signal.SIGKILL)
        process.wait(10)
        until(lambda: not any(alive(pid) for pid in children), 15, "orphaned children exit")


def test_the_command_without_workers_serves_in_one_process(tmp_path: Path) -> None:
    write_slow_model(tmp_path / "models", 0.01)
    with served_process(settings_for(tmp_path / "models"), workers=0) as (url, process):
        assert infer(url).status_code == 200
        assert subprocess.run(["pgrep", "-P", str(process.pid)], capture_output=True).stdout == b""
