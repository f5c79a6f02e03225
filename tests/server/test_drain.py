"""SIGTERM under load loses nothing: for the drain delay the server says it is not ready and
serves on; then its listeners close, what is in progress ends, and it exits. Real processes,
HTTP and gRPC clients in a closed loop (loadtests/drain.py plays the load balancer)."""

from __future__ import annotations

import signal

import pytest

from loadtests.drain import run

pytestmark = pytest.mark.e2e

DELAY_S = 2.0


@pytest.mark.parametrize("workers", [0, 1])
def test_sigterm_under_load_fails_no_accepted_request(workers: int) -> None:
    row = run(workers, clients=4, grpc_clients=2, delay_s=DELAY_S, lb_lag_s=0.5, warm_s=1.0, batch_s=0.01)
    assert row["failed"] == 0, row["failures"]
    assert row["answered_before_sigterm"] > 0 and row["answered_during_drain"] > 0, row
    assert row["ready_503_after_s"] is not None and row["ready_503_after_s"] < 1.0, row  # at once
    # The listeners stayed open through the delay, then closed.
    assert row["listener_closed_after_s"] is not None and row["listener_closed_after_s"] >= DELAY_S - 0.2, row
    assert row["exit_code"] in (0, -signal.SIGTERM), row
