"""The Locust scenarios, run headless as a user runs them, against a live server.

The server is `imgserve serve` on the simulated runtime (``conftest.py``): a real process with a
known model cost and no TensorFlow start-up, HTTP and gRPC each on a port of its own. Locust runs
as its own process (it must never share one with TensorFlow). Short, bounded in time, loopback
only.
"""

from __future__ import annotations

import csv
import os
import shutil
import subprocess
import sys
from pathlib import Path

import grpc
import httpx
import numpy as np
import pytest

from loadtests.grpc_load import MODEL_INFER, is_shed, retry_after
from loadtests.payloads import grpc_infer_request
from loadtests.server_process import free_port, server_process
from tests.loadtests.conftest import LiveServer, start_simulated

REPO_ROOT = Path(__file__).resolve().parents[2]
LOCUSTFILE = REPO_ROOT / "loadtests" / "locust" / "locustfile.py"
GRPC_ENDPOINT = "ModelInfer [raw uint8]"


def run_locust(
    base_url: str,
    user_class: str,
    csv_prefix: Path,
    users: int = 4,
    seconds: int = 4,
    env: dict[str, str] | None = None,
) -> list[dict[str, str]]:
    locust = shutil.which("locust", path=str(Path(sys.executable).parent)) or "locust"
    command = [
        locust, "-f", str(LOCUSTFILE), "--headless", "-H", base_url,
        "-u", str(users), "-r", str(users), "-t", f"{seconds}s", "--stop-timeout", "5",
        "--csv", str(csv_prefix), "--only-summary", user_class,
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "IMGSERVE_MODEL": "simulated", **(env or {})}
    with open(f"{csv_prefix}.log", "wb") as log:
        subprocess.run(command, check=False, stdout=log, stderr=log, timeout=seconds + 60, env=env, cwd=REPO_ROOT)
    with open(f"{csv_prefix}_stats.csv", newline="") as f:
        return list(csv.DictReader(f))


def failures(csv_prefix: Path) -> str:
    """Locust's failures CSV (what failed, how often) and the end of its output, for an
    assertion's message."""
    failed = Path(f"{csv_prefix}_failures.csv")
    log = Path(f"{csv_prefix}.log").read_text(errors="replace").splitlines()[-15:]
    return (failed.read_text() if failed.exists() else "(no failures file)") + "\n" + "\n".join(log)


def grpc_calls(base_url: str, code: str) -> float:
    """ModelInfer calls the server has answered with ``code``, from its metrics."""
    prefix = f'imgserve_grpc_requests_total{{code="{code}",method="{MODEL_INFER}"}}'
    text = httpx.get(f"{base_url}/metrics", timeout=10).text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(prefix))


def batches_run(base_url: str) -> float:
    text = httpx.get(f"{base_url}/metrics", timeout=10).text
    return sum(
        float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith("imgserve_batches_total{")
    )


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
    simulated_server: LiveServer, tmp_path: Path, user_class: str, endpoint: str
) -> None:
    rows = {row["Name"]: row for row in run_locust(simulated_server.base_url, user_class, tmp_path / user_class)}
    assert endpoint in rows, failures(tmp_path / user_class)
    total = rows["Aggregated"]
    assert int(total["Request Count"]) > 10, failures(tmp_path / user_class)
    assert int(total["Failure Count"]) == 0, failures(tmp_path / user_class)


def test_the_grpc_user_runs_headless_its_calls_overlap_and_every_one_succeeds(
    simulated_server: LiveServer, tmp_path: Path
) -> None:
    base_url = simulated_server.base_url
    answered, batches = grpc_calls(base_url, "OK"), batches_run(base_url)
    env = {"IMGSERVE_GRPC_TARGET": simulated_server.grpc_target}
    rows = {row["Name"]: row for row in run_locust(base_url, "GrpcTensorUser", tmp_path / "grpc", users=8, env=env)}
    assert GRPC_ENDPOINT in rows, failures(tmp_path / "grpc")
    assert rows[GRPC_ENDPOINT]["Type"] == "grpc"
    total = rows["Aggregated"]
    assert int(total["Request Count"]) > 10, failures(tmp_path / "grpc")
    assert int(total["Failure Count"]) == 0, failures(tmp_path / "grpc")
    # The calls went over gRPC, each answered with its classification (the user checks the answer)...
    calls = grpc_calls(base_url, "OK") - answered
    assert calls >= int(total["Request Count"])
    # ...and the users' calls were in flight together: some batches held more than one call.
    # Without gRPC's gevent support each call would block every user, one call a batch.
    assert batches_run(base_url) - batches < calls


def test_shed_calls_with_a_retry_hint_count_as_successes_and_other_errors_do_not(tmp_path: Path) -> None:
    """A server that holds 2 requests at once, of a slow model, sheds most of 8 users' calls:
    UNAVAILABLE with retry-after, which the gRPC user counts as the server doing its job."""
    command, port, grpc_port, env = start_simulated(
        tmp_path / "models", fixed_s=0.02, env={"IMGSERVE_LIMITS__MAX_REQUESTS_IN_PROGRESS": "2"}
    )
    with server_process([*command, "--workers", "0"], port, env, startup_s=60) as (base_url, _):
        target = f"127.0.0.1:{grpc_port}"
        rows = run_locust(base_url, "GrpcTensorUser", tmp_path / "shed", users=8, seconds=3,
                          env={"IMGSERVE_GRPC_TARGET": target})  # fmt: skip
        total = {row["Name"]: row for row in rows}["Aggregated"]
        assert int(total["Request Count"]) > 10, failures(tmp_path / "shed")
        assert int(total["Failure Count"]) == 0, failures(tmp_path / "shed")
        assert grpc_calls(base_url, "UNAVAILABLE") > 0 and grpc_calls(base_url, "OK") > 0

        request = grpc_infer_request(np.zeros((1, 224, 224, 3), np.uint8), "no_such_model")
        with grpc.insecure_channel(target) as channel, pytest.raises(grpc.RpcError) as not_found:
            channel.unary_unary(MODEL_INFER)(request, timeout=10)
        assert not_found.value.code() == grpc.StatusCode.NOT_FOUND  # type: ignore[attr-defined]
        assert retry_after(not_found.value) is None and not is_shed(not_found.value)

    # UNAVAILABLE, but from no server: nothing listens on the port.
    with grpc.insecure_channel(f"127.0.0.1:{free_port()}") as nobody, pytest.raises(grpc.RpcError) as refused:
        nobody.unary_unary(MODEL_INFER)(request, timeout=10)
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE  # type: ignore[attr-defined]
    assert not is_shed(refused.value)
