"""The metrics follow Prometheus' conventions, and the autoscaling signal moves with the load."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

from server.metrics import Metrics
from tests.fakes import GatedRuntime
from tests.helpers import post, serving, start_blocking_call, until

NAME = re.compile(r"(imgserve|process)_[a-z][a-z0-9_]*[a-z0-9]")
LABEL = re.compile(r"[a-z][a-z0-9_]*")
TIME_WORDS = ("seconds", "duration", "latency", "wait", "timestamp")


def test_names_units_and_help_follow_prometheus_conventions() -> None:
    families = list(Metrics().registry.collect())
    assert len(families) > 20
    for family in families:
        name = family.name
        assert NAME.fullmatch(name), name
        assert family.documentation.strip(), f"{name} has no help text"
        assert not name.endswith("_total") or family.type == "counter", name  # _total is for counters
        assert not re.search(r"_(ms|milliseconds|millis|us|minutes)(_|$)", name), f"{name}: use base units"
        if any(word in name for word in TIME_WORDS):
            assert name.endswith("_seconds"), f"{name}: time is in seconds"
        if family.type == "histogram" and "seconds" not in name:
            assert name in ("imgserve_batch_size",), f"{name}: a histogram of what unit?"
        for sample in family.samples:
            assert all(LABEL.fullmatch(label) for label in sample.labels), sample


def test_requests_in_progress_follows_the_load(tmp_path: Path) -> None:
    """The HPA's signal: admitted requests not yet answered, in this pod."""

    async def scenario() -> None:
        runtime = GatedRuntime()
        async with serving(tmp_path, runtime) as (client, app):

            def in_progress() -> float:
                return app.state.metrics.registry.get_sample_value("imgserve_requests_in_progress") or 0.0

            assert in_progress() == 0
            blocked = await start_blocking_call(client, runtime)
            queued = [post(client, i) for i in (2, 3)]
            await until(lambda: in_progress() == 3)
            runtime.gate.set()
            answers = await asyncio.gather(blocked, *queued)
            assert [a.status_code for a in answers] == [200, 200, 200]
            await until(lambda: in_progress() == 0)

    asyncio.run(scenario())
