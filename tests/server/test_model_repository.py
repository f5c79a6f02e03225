"""The model repository at run time: version policies, reload without failed requests, a
broken version, unload, the memory budget, and polling. Fake runtimes make it fast."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from model_contract.manifest import ModelManifest
from server.app import create_app
from server.runtimes import RuntimeOptions
from server.settings import BatchingSettings, Settings
from tests.fakes import GatedRuntime, ManualClock
from tests.helpers import MODEL, png, queue_depth, until, write_fake_model

# Each test runs with the models in the app and behind the model owner's protocol.
pytestmark = pytest.mark.usefixtures("split_models")

ADMIN_TOKEN = "repository-admin-token"


@asynccontextmanager
async def serving(
    repository: Path,
    broken_versions: frozenset[int] = frozenset(),
    runtimes: list[GatedRuntime] | None = None,
    clock: ManualClock | None = None,
    **settings: Any,
) -> AsyncIterator[httpx.AsyncClient]:
    """The app on fake runtimes (each one appended to ``runtimes``), once loading is done."""
    created = runtimes if runtimes is not None else []

    def factory(manifest: ModelManifest, path: Path, options: RuntimeOptions) -> GatedRuntime:
        if manifest.version in broken_versions:
            raise RuntimeError("artifact is corrupt")
        created.append(GatedRuntime())
        return created[-1]

    batching = BatchingSettings(max_batch_size=4)
    config = Settings(
        model_repository=repository, default_model=MODEL, batching=batching, admin_token=ADMIN_TOKEN, **settings
    )
    app = create_app(config, runtime_factory=factory, clock=clock)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
        async with httpx.AsyncClient(transport=transport, base_url="http://localhost", headers=admin) as client:
            index = app.state.service.repository_index
            await until(lambda: bool(index().served or index().errors))  # the first load is done
            client.app = app  # type: ignore[attr-defined]  # for tests that read the metrics and the service
            yield client


async def served_versions(client: httpx.AsyncClient) -> list[int]:
    return sorted(m["version"] for m in (await client.get("/v1/models")).json()["models"])


async def classify(client: httpx.AsyncClient, value: int = 3) -> httpx.Response:
    return await client.post("/v1/classify", content=png(value), headers={"Content-Type": "image/png"})


def test_version_policy_latest_two_serves_the_two_newest(tmp_path: Path) -> None:
    for v in (1, 2, 3):
        write_fake_model(tmp_path, version=v, config={"version_policy": {"latest": 2}})

    async def scenario() -> None:
        async with serving(tmp_path) as client:
            assert await served_versions(client) == [2, 3]
            assert (await classify(client)).json()["version"] == 3  # the default is the newest
            pinned = await client.get(f"/v2/models/{MODEL}/versions/2")
            assert pinned.status_code == 200 and pinned.json()["versions"] == ["2"]
            assert (await client.get(f"/v2/models/{MODEL}/versions/1")).status_code == 404

    asyncio.run(scenario())


def test_specific_versions_policy(tmp_path: Path) -> None:
    for v in (1, 2, 3):
        write_fake_model(tmp_path, version=v, config={"version_policy": {"specific": [1, 3]}})

    async def scenario() -> None:
        async with serving(tmp_path) as client:
            assert await served_versions(client) == [1, 3]

    asyncio.run(scenario())


def test_a_new_version_takes_over_under_load_without_a_failed_request(tmp_path: Path) -> None:
    write_fake_model(tmp_path, version=1)

    async def scenario() -> None:
        async with serving(tmp_path) as client:
            statuses: list[int] = []
            versions: list[int] = []
            stop = asyncio.Event()

            async def user() -> None:
                for _ in range(400):  # bounded, whatever happens
                    if stop.is_set():
                        return
                    response = await classify(client)
                    statuses.append(response.status_code)
                    if response.status_code == 200:
                        versions.append(response.json()["version"])

            users = [asyncio.ensure_future(user()) for _ in range(8)]
            await until(lambda: versions.count(1) >= 8)  # under load
            write_fake_model(tmp_path, version=2)
            loaded = await client.post(f"/v2/repository/models/{MODEL}/load")
            assert loaded.status_code == 200, loaded.text
            await until(lambda: versions.count(2) >= 8)  # still under load, now on the new version
            stop.set()
            await asyncio.gather(*users)
            assert statuses and set(statuses) == {200}
            assert versions[0] == 1 and versions[-1] == 2
            assert await served_versions(client) == [2]  # version 1 was retired

    asyncio.run(scenario())


def test_a_version_that_fails_to_load_leaves_the_serving_one_and_says_why(tmp_path: Path) -> None:
    write_fake_model(tmp_path, version=1)

    async def scenario() -> None:
        async with serving(tmp_path, broken_versions=frozenset({2})) as client:
            write_fake_model(tmp_path, version=2)
            failed = await client.post(f"/v2/repository/models/{MODEL}/load")
            assert failed.status_code == 400 and "corrupt" in failed.json()["error"]
            assert (await classify(client)).json()["version"] == 1
            index = (await client.post("/v2/repository/index")).json()
            assert any(e["name"] == MODEL and "corrupt" in e["reason"] for e in index)
            assert (await client.get("/ready")).status_code == 200  # still serving

    asyncio.run(scenario())


def test_unload_then_load_again(tmp_path: Path) -> None:
    write_fake_model(tmp_path, version=1)

    async def scenario() -> None:
        async with serving(tmp_path) as client:
            assert (await client.post(f"/v2/repository/models/{MODEL}/unload")).status_code == 200
            gone = await classify(client)
            assert gone.status_code == 404 and gone.json()["error"]["code"] == "model_not_found"
            assert (await client.post(f"/v2/repository/models/{MODEL}/load")).status_code == 200
            assert (await classify(client)).status_code == 200
            missing = await client.post("/v2/repository/models/nothing/load")
            assert missing.status_code == 404

    asyncio.run(scenario())


def test_a_model_beyond_the_memory_budget_is_not_loaded(tmp_path: Path) -> None:
    write_fake_model(tmp_path, version=1)

    async def scenario() -> None:
        async with serving(tmp_path, max_model_bytes=10) as client:
            ready = await client.get("/ready")
            assert ready.status_code == 503 and ready.json()["failed"] == [MODEL]
            # Why is for the operator (the admin API and the log), not for anyone who can reach /ready.
            assert "memory budget" not in ready.text
            (entry,) = (await client.post("/v2/repository/index")).json()
            assert "memory budget" in entry["reason"]

    asyncio.run(scenario())


def test_polling_picks_up_a_new_version(tmp_path: Path) -> None:
    write_fake_model(tmp_path, version=1)

    async def scenario() -> None:
        clock = ManualClock()
        async with serving(tmp_path, repository_poll_s=60, clock=clock) as client:
            write_fake_model(tmp_path, version=2)
            clock.advance(60)  # the poll is due: no real minute passes
            service = client.app.state.service  # type: ignore[attr-defined]
            await until(lambda: [m.version for m in service.models()] == [2])
            assert await served_versions(client) == [2]

    asyncio.run(scenario())


def test_a_cache_hit_returns_the_identical_body_without_running_the_model(tmp_path: Path) -> None:
    write_fake_model(tmp_path, version=1, config={"cache": {"max_entries": 100, "max_bytes": 100_000}})
    runtimes: list[GatedRuntime] = []

    async def scenario() -> None:
        async with serving(tmp_path, runtimes=runtimes) as client:
            metrics = client.app.state.metrics.registry  # type: ignore[attr-defined]

            def lookups(result: str) -> float:
                labels = {"model": MODEL, "version": "1", "result": result}
                return float(metrics.get_sample_value("imgserve_result_cache_requests_total", labels) or 0)

            first, second = await classify(client, 5), await classify(client, 5)
            assert first.status_code == 200 and first.content == second.content
            assert (lookups("miss"), lookups("hit")) == (1, 1)
            assert runtimes[0].seen.count(5) == 1  # the model ran once
            # A new version starts with an empty cache: never another version's answer.
            write_fake_model(tmp_path, version=2)
            await client.post(f"/v2/repository/models/{MODEL}/load")
            third = await classify(client, 5)
            assert third.json()["version"] == 2 and runtimes[1].seen.count(5) == 1

    asyncio.run(scenario())


def test_unload_drains_queued_requests_before_releasing_the_model(tmp_path: Path) -> None:
    write_fake_model(tmp_path, version=1, config={"batching": {"max_batch_size": 1}})
    runtimes: list[GatedRuntime] = []

    async def scenario() -> None:
        async with serving(tmp_path, runtimes=runtimes) as client:
            (runtime,) = runtimes
            runtime.gate.clear()
            entered = runtime.entered
            in_flight = [asyncio.ensure_future(classify(client, v)) for v in (1, 2, 3)]
            await until(lambda: runtime.entered > entered)
            app = client.app  # type: ignore[attr-defined]
            await until(lambda: queue_depth(app) == 2)  # the other two queue behind the stuck one
            unloading = asyncio.ensure_future(client.post(f"/v2/repository/models/{MODEL}/unload"))
            await until(lambda: not app.state.service.models())  # no longer served, now draining
            assert not unloading.done()  # the queue holds the unload until it has drained
            runtime.gate.set()
            assert [r.status_code for r in await asyncio.gather(*in_flight)] == [200, 200, 200]
            assert (await unloading).status_code == 200
            assert (await classify(client)).status_code == 404

    asyncio.run(scenario())
