"""`imgserve serve` as a user runs it: a real process, real sockets, stopped by its PID."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from loadtests.server_process import free_port, server_process
from tests.conftest import PHOTOS

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def served(model_repository: Path) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    port = free_port()
    env = {"IMGSERVE_BATCHING__MAX_BATCH_SIZE": "8", "IMGSERVE_LIMITS__MAX_BODY_BYTES": "1000000"}
    command = [sys.executable, "-m", "imgserve", "serve", "--port", str(port)]
    command += ["--model-repository", str(model_repository)]
    with server_process(command, port, env, startup_s=180, stderr=subprocess.PIPE) as served:
        yield served


def test_concurrent_clients_get_correct_answers_and_bad_ones_do_not_disturb_them(
    served: tuple[str, subprocess.Popen[bytes]], photo_bytes: dict[str, bytes]
) -> None:
    base_url, _ = served
    good = [name for name in PHOTOS for _ in range(4)]  # 20 real photos
    bad = [b"", b"GIF89a broken", photo_bytes["coffee"][:5000]] * 2

    def classify(payload: bytes) -> httpx.Response:
        return httpx.post(f"{base_url}/v1/classify", files={"file": ("x", payload, "image/png")}, timeout=120)

    with ThreadPoolExecutor(max_workers=16) as pool:
        # Interleave bad uploads among the good ones so they share batches and decode threads.
        payloads = [photo_bytes[n] for n in good]
        for i, b in enumerate(bad):
            payloads.insert(3 * i + 1, b)
        responses = list(pool.map(classify, payloads))

    good_responses = [r for r, p in zip(responses, payloads, strict=True) if p not in bad]
    bad_responses = [r for r, p in zip(responses, payloads, strict=True) if p in bad]
    assert len(good_responses) == len(good) and len(bad_responses) == len(bad)
    for name, response in zip(good, good_responses, strict=True):
        assert response.status_code == 200, response.text
        assert response.json()["predictions"][0]["index"] in PHOTOS[name]["top1"]  # type: ignore[operator]
    assert all(400 <= r.status_code < 500 and "error" in r.json() for r in bad_responses)

    metrics = httpx.get(f"{base_url}/metrics").text
    (images_batched,) = [
        float(line.rsplit(" ", 1)[1])
        for line in metrics.splitlines()
        if line.startswith('imgserve_batch_size_sum{model="efficientnet_lite0",version="1"}')
    ]
    assert images_batched == len(good)  # every good image ran exactly once; no bad one did


def test_oversized_body_is_refused_before_it_is_read(served: tuple[str, subprocess.Popen[bytes]]) -> None:
    base_url, _ = served
    response = httpx.post(
        f"{base_url}/v1/classify", content=b"\0" * 3_000_000, headers={"Content-Type": "image/jpeg"}, timeout=30
    )
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "payload_too_large"


def test_sigterm_shuts_down_cleanly(served: tuple[str, subprocess.Popen[bytes]]) -> None:
    _, process = served
    os.kill(process.pid, signal.SIGTERM)
    # uvicorn drains, runs the lifespan shutdown, then re-raises SIGTERM to exit by it.
    assert process.wait(timeout=60) in (0, -signal.SIGTERM)
    log = process.stderr.read().decode() if process.stderr else ""
    assert "Application shutdown complete" in log
    assert "Traceback" not in log
