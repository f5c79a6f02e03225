"""The Locust scenarios, run headless as a user runs them, against a live server.

The server is `imgserve serve` on the simulated runtime: a real HTTP process with a known
model cost and no TensorFlow start-up. Locust runs as its own process (it must never share
one with TensorFlow). Short, bounded in time, loopback only.
"""

from __future__ import annotations

import csv
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from loadtests.batching_bench import write_simulated_model
from loadtests.server_process import free_port, server_process

REPO_ROOT = Path(__file__).resolve().parents[2]
LOCUSTFILE = REPO_ROOT / "loadtests" / "locust" / "locustfile.py"


@pytest.fixture(scope="module")
def simulated_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    repository = tmp_path_factory.mktemp("models")
    write_simulated_model(repository, fixed_s=0.002, per_image_s=0.0001)
    port = free_port()
    command = [sys.executable, "-m", "imgserve", "serve", "--port", str(port), "--model-repository", str(repository)]
    with server_process(command, port, {"IMGSERVE_DEFAULT_MODEL": "simulated"}, startup_s=60) as (base_url, _):
        yield base_url


def run_locust(
    base_url: str, user_class: str, csv_prefix: Path, users: int = 4, seconds: int = 4
) -> list[dict[str, str]]:
    locust = shutil.which("locust", path=str(Path(sys.executable).parent)) or "locust"
    command = [
        locust, "-f", str(LOCUSTFILE), "--headless", "-H", base_url,
        "-u", str(users), "-r", str(users), "-t", f"{seconds}s", "--stop-timeout", "5",
        "--csv", str(csv_prefix), "--only-summary", user_class,
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "IMGSERVE_MODEL": "simulated"}
    subprocess.run(command, check=False, capture_output=True, timeout=seconds + 60, env=env, cwd=REPO_ROOT)
    with open(f"{csv_prefix}_stats.csv", newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.parametrize(
    ("user_class", "endpoint"),
    [
        ("SingleImageUser", "/v1/classify"),
        ("BatchUploadUser", "/v1/classify/batch"),
        ("MixedTrafficUser", "/v1/classify [mixed sizes]"),
        ("V2BinaryTensorUser", "/v2/models/[model]/infer [binary uint8]"),
    ],
)
def test_scenario_runs_headless_and_every_request_succeeds(
    simulated_server: str, tmp_path: Path, user_class: str, endpoint: str
) -> None:
    rows = {row["Name"]: row for row in run_locust(simulated_server, user_class, tmp_path / user_class)}
    assert endpoint in rows, sorted(rows)
    total = rows["Aggregated"]
    assert int(total["Request Count"]) > 10
    assert int(total["Failure Count"]) == 0
