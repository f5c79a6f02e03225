"""A hostile or careless model repository: one broken model or version is reported and skipped,
and every other model (and every other version of the same model) keeps serving."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

import server.registry
from loadtests.batching_bench import write_model
from model_contract.errors import ServiceError
from model_contract.manifest import MANIFEST_FILE, ModelManifest
from server.app import create_app
from server.metrics import Metrics
from server.model_repository import scan_repository, served_versions
from server.registry import ModelRegistry
from server.runtimes import RuntimeOptions, load_runtime
from server.settings import BatchingSettings, Settings
from tests.fakes import GatedRuntime
from tests.helpers import png, until

# Each test runs with the models in the app and behind the model owner's protocol.
pytestmark = pytest.mark.usefixtures("split_models")


def add_model(repository: Path, name: str, version: int = 1, config: Any = None) -> Path:
    return write_model(
        repository, name, "fake", image_size=8, resize_shorter_side=8, classes=10, version=version, config=config
    )


def fake_runtime(manifest: ModelManifest, path: Path, options: RuntimeOptions) -> GatedRuntime:
    return GatedRuntime()


@asynccontextmanager
async def registry_over(repository: Path) -> AsyncIterator[ModelRegistry]:
    """A registry on fake runtimes, after its first load."""
    registry = ModelRegistry(
        repository, fake_runtime, RuntimeOptions(), BatchingSettings(max_batch_size=2), Metrics(), drain_timeout_s=1
    )
    await registry.load_all()
    try:
        yield registry
    finally:
        await registry.close()


def serves(registry: ModelRegistry, name: str) -> list[int]:
    return sorted(m.version for m in registry.models if m.name == name)


def edit_manifest(folder: Path, **changes: Any) -> None:
    path = folder / MANIFEST_FILE
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


def truncated_json(folder: Path) -> None:
    (folder / MANIFEST_FILE).write_text('{"name": "bad", "version": ')


def wrong_shape(folder: Path) -> None:
    edit_manifest(folder, input="images", labels={"0": "cat"})


def parent_escape(folder: Path) -> None:
    edit_manifest(folder, artifact="../../outside/model")


def absolute_path(folder: Path) -> None:
    edit_manifest(folder, artifact="/etc/passwd")


def escape_in_artifacts(folder: Path) -> None:
    edit_manifest(folder, artifacts={"keras_jax": "sub/../../../outside/model.keras"})


def symlink_out(folder: Path) -> None:
    outside = folder.parents[2] / "outside"
    outside.mkdir()
    (outside / "model.keras").write_bytes(b"weights")
    (folder / "model.keras").symlink_to(outside / "model.keras")
    edit_manifest(folder, artifacts={"keras_jax": "model.keras"})


def symlinked_folder_out(folder: Path) -> None:
    outside = folder.parents[2] / "outside"
    outside.mkdir()
    (folder / "saved_model").symlink_to(outside, target_is_directory=True)
    edit_manifest(folder, artifact="saved_model")


def other_version_number(folder: Path) -> None:
    edit_manifest(folder, version=7)


BROKEN_VERSIONS = [
    pytest.param(truncated_json, "manifest.json: Invalid JSON", id="malformed-json"),
    pytest.param(wrong_shape, "manifest.json: input: Input should be", id="wrong-shape"),
    pytest.param(parent_escape, "artifact '../../outside/model' leads outside its version folder", id="dotdot"),
    pytest.param(absolute_path, "artifact '/etc/passwd' is absolute", id="absolute"),
    pytest.param(escape_in_artifacts, "leads outside its version folder", id="dotdot-in-artifacts"),
    pytest.param(symlink_out, "artifact 'model.keras' leads outside its version folder", id="symlink-out"),
    pytest.param(symlinked_folder_out, "artifact 'saved_model' leads outside", id="symlinked-folder-out"),
    pytest.param(other_version_number, "manifest.json says version 7, its folder 1", id="version-mismatch"),
]


@pytest.mark.parametrize(("break_version", "reason"), BROKEN_VERSIONS)
def test_a_broken_manifest_is_reported_and_the_good_model_serves(
    tmp_path: Path, break_version: Callable[[Path], None], reason: str
) -> None:
    repository = tmp_path / "models"
    add_model(repository, "good")
    break_version(add_model(repository, "bad"))

    async def scenario() -> None:
        async with registry_over(repository) as registry:
            assert serves(registry, "good") == [1]
            assert registry.get("good").ready
            assert serves(registry, "bad") == []
            with pytest.raises(ServiceError, match="no model named 'bad'"):
                registry.get("bad")
            assert registry.failed_models == ["bad"]
            assert registry.errors["bad"].startswith("v1: ")
            assert reason in registry.errors["bad"]

    asyncio.run(scenario())


BROKEN_CONFIGS = [
    pytest.param('{"version_policy": ', "config.json: Invalid JSON", id="malformed-json"),
    pytest.param([{"latest": 1}], "config.json: Input should be an object", id="not-an-object"),
    pytest.param({"batchng": {"max_batch_size": 2}}, "batchng: Extra inputs are not permitted", id="misspelt-section"),
    pytest.param({"batching": {"max_batch_sise": 2}}, "batching.max_batch_sise: Extra inputs", id="misspelt-batching"),
    pytest.param({"batching": {"max_batch_size": 0}}, "batching.max_batch_size: Input should be greater", id="range"),
    pytest.param({"batching": {"max_queue_delay_ms": "soon"}}, "batching.max_queue_delay_ms", id="batching-type"),
    pytest.param({"version_policy": {"latest": 1, "all": {}}}, "exactly one of latest, all or specific", id="two"),
    pytest.param({"version_policy": {}}, "exactly one of latest, all or specific", id="no-policy"),
    pytest.param({"version_policy": {"newest": 1}}, "version_policy.newest: Extra inputs", id="unknown-policy"),
    pytest.param({"version_policy": {"latest": 0}}, "version_policy.latest: Input should be greater", id="latest-0"),
    pytest.param({"version_policy": {"all": {"x": 1}}}, "version_policy.all.x: Extra inputs", id="all-options"),
    pytest.param({"version_policy": {"specific": [1, -2]}}, "version_policy.specific.1", id="specific-negative"),
    pytest.param({"version_policy": {"specific": []}}, "version_policy.specific", id="specific-empty"),
    pytest.param({"cache": {"max_entries": 1, "max_bytes": 1, "ttl": 60}}, "cache.ttl: Extra inputs", id="cache-key"),
    pytest.param({"cache": {"max_entries": 0, "max_bytes": 1}}, "cache.max_entries: Input should be", id="cache-0"),
    pytest.param({"cache": {"max_entries": 10}}, "cache.max_bytes: Field required", id="cache-partial"),
]


@pytest.mark.parametrize(("config", "reason"), BROKEN_CONFIGS)
def test_an_invalid_config_is_reported_and_the_good_model_serves(tmp_path: Path, config: Any, reason: str) -> None:
    add_model(tmp_path, "good")
    add_model(tmp_path, "bad", config=None if isinstance(config, str) else config)
    if isinstance(config, str):
        (tmp_path / "bad" / "config.json").write_text(config)

    async def scenario() -> None:
        async with registry_over(tmp_path) as registry:
            assert serves(registry, "good") == [1]
            assert serves(registry, "bad") == []
            assert registry.failed_models == ["bad"]
            assert registry.errors["bad"].startswith("config.json: ")
            assert reason in registry.errors["bad"]

    asyncio.run(scenario())


def test_a_valid_config_applies_every_section(tmp_path: Path) -> None:
    config = {
        "batching": {"max_batch_size": 3, "allowed_batch_sizes": [1, 3]},
        "version_policy": {"all": {}},
        "cache": {"max_entries": 10, "max_bytes": 10_000},
    }
    for version in (1, 2):
        add_model(tmp_path, "m", version=version, config=config)

    async def scenario() -> None:
        async with registry_over(tmp_path) as registry:
            assert registry.errors == {}
            assert serves(registry, "m") == [1, 2]
            batching = registry.get("m").batching
            assert batching.max_batch_size == 3 and batching.allowed_batch_sizes == (1, 3)
            assert batching.max_queue_size == 256  # not overridden: the server's value

    asyncio.run(scenario())


def test_only_ascii_digit_folders_are_versions(tmp_path: Path) -> None:
    add_model(tmp_path, "m", version=1, config={"version_policy": {"all": {}}})
    for name in ("²", "٣", "+4", "05", "6 ", "0", "9" * 30, "latest"):
        folder = tmp_path / "m" / name
        folder.mkdir()
        (folder / MANIFEST_FILE).write_text((tmp_path / "m" / "1" / MANIFEST_FILE).read_text())

    scan = scan_repository(tmp_path)
    assert [v.manifest.version for v in scan.versions["m"]] == [1]
    assert scan.errors == {}


def test_the_newest_valid_version_serves_when_a_newer_one_is_broken(tmp_path: Path) -> None:
    add_model(tmp_path, "m", version=1)
    truncated_json(add_model(tmp_path, "m", version=2))

    async def scenario() -> None:
        async with registry_over(tmp_path) as registry:
            assert serves(registry, "m") == [1]  # latest 1 among the valid versions
            assert registry.get("m").version == 1
            assert registry.errors["m"].startswith("v2: manifest.json: Invalid JSON")

    asyncio.run(scenario())


def test_policies_choose_among_the_valid_versions(tmp_path: Path) -> None:
    for version in (1, 2, 3):
        add_model(tmp_path, "all", version=version, config={"version_policy": {"all": {}}})
        add_model(tmp_path, "some", version=version, config={"version_policy": {"specific": [2, 3]}})
    parent_escape(tmp_path / "all" / "2")
    parent_escape(tmp_path / "some" / "3")

    assert {name: [v.manifest.version for v in vs] for name, vs in served_versions(tmp_path).items()} == {
        "all": [3, 1],
        "some": [2],
    }


def test_a_serving_model_whose_config_breaks_keeps_serving_and_recovers_when_fixed(tmp_path: Path) -> None:
    add_model(tmp_path, "m", config={"version_policy": {"latest": 1}})

    async def scenario() -> None:
        async with registry_over(tmp_path) as registry:
            serving = registry.get("m")
            (tmp_path / "m" / "config.json").write_text('{"version_polcy": {"latest": 1}}')
            await registry.reload()
            assert "version_polcy" in registry.errors["m"]
            assert registry.get("m") is serving  # its policy is unknown: nothing changes
            (tmp_path / "m" / "config.json").write_text('{"version_policy": {"latest": 1}}')
            await registry.reload()
            assert registry.errors == {} and registry.failed_models == []
            assert registry.get("m") is serving

    asyncio.run(scenario())


def test_a_serving_version_whose_manifest_breaks_keeps_serving(tmp_path: Path) -> None:
    folder = add_model(tmp_path, "m")

    async def scenario() -> None:
        async with registry_over(tmp_path) as registry:
            serving = registry.get("m")
            truncated_json(folder)  # e.g. caught half-written by a poll
            await registry.reload()
            assert registry.get("m") is serving
            assert registry.failed_models == ["m"]

    asyncio.run(scenario())


def test_the_repository_scan_leaves_the_event_loop_free(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    add_model(tmp_path, "m")
    released = threading.Event()

    def scan_needing_the_loop(repository: Path) -> Any:
        # Only the event loop sets the event: run on the loop, this would wait in vain.
        if not released.wait(timeout=5):
            raise TimeoutError("the scan held the event loop")
        return scan_repository(repository)

    monkeypatch.setattr(server.registry, "scan_repository", scan_needing_the_loop)

    async def scenario() -> None:
        registry = ModelRegistry(tmp_path, fake_runtime, RuntimeOptions(), BatchingSettings(), Metrics())
        loading = asyncio.ensure_future(registry.load_all())
        await asyncio.sleep(0)  # the reload starts and hands the scan to a thread
        released.set()
        await loading
        try:
            assert registry.repository_readable
            assert serves(registry, "m") == [1]
        finally:
            await registry.close()

    asyncio.run(scenario())


def test_the_app_serves_the_good_model_and_names_the_broken_ones(tmp_path: Path) -> None:
    add_model(tmp_path, "good")
    add_model(tmp_path, "typo", config={"batchng": {"max_batch_size": 2}})
    absolute_path(add_model(tmp_path, "escape"))
    (tmp_path / "good" / "²").mkdir()

    async def scenario() -> None:
        batching = BatchingSettings(max_batch_size=2)
        settings = Settings(
            model_repository=tmp_path, default_model="good", batching=batching, admin_token="repository-admin"
        )
        app = create_app(settings, runtime_factory=fake_runtime)
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            admin = {"Authorization": "Bearer repository-admin"}
            async with httpx.AsyncClient(transport=transport, base_url="http://localhost", headers=admin) as client:
                await until(lambda: bool(app.state.service.models()))  # the background load
                listed = (await client.get("/v1/models")).json()["models"]
                assert [(m["name"], m["version"]) for m in listed] == [("good", 1)]
                answer = await client.post("/v1/classify", content=png(3), headers={"Content-Type": "image/png"})
                assert answer.status_code == 200 and answer.json()["model"] == "good"
                ready = (await client.get("/ready")).json()
                assert ready["failed"] == ["escape", "typo"] and "absolute" not in str(ready)
                index = (await client.post("/v2/repository/index")).json()
                reasons = {e["name"]: e["reason"] for e in index if e["reason"]}
                assert set(reasons) == {"typo", "escape"}
                assert "batchng" in reasons["typo"] and "absolute" in reasons["escape"]
                load = await client.post("/v2/repository/models/typo/load")
                assert load.status_code == 400 and "batchng" in load.json()["error"]

    asyncio.run(scenario())


def test_artifact_path_resolves_inside_the_version_folder_only(tmp_path: Path) -> None:
    folder = add_model(tmp_path, "m")
    (folder / "weights").mkdir()
    (folder / "current").symlink_to(folder / "weights", target_is_directory=True)
    edit_manifest(folder, artifact="current", artifacts={"litert": "weights/../model.tflite", "keras_jax": "../x"})
    manifest = ModelManifest.read(folder)

    assert manifest.artifact_path(folder, "fake") == (folder / "weights").resolve()  # a symlink within is fine
    assert manifest.artifact_path(folder, "litert") == (folder / "model.tflite").resolve()
    with pytest.raises(ValueError, match="leads outside its version folder"):
        manifest.artifact_path(folder, "keras_jax")


def test_a_runtime_refuses_an_artifact_outside_its_folder(tmp_path: Path) -> None:
    pytest.importorskip("ai_edge_litert")
    folder = add_model(tmp_path, "m")
    edit_manifest(folder, runtime="litert", artifact="../../elsewhere.tflite")
    with pytest.raises(ValueError, match="leads outside its version folder"):
        load_runtime(ModelManifest.read(folder), folder, RuntimeOptions())
