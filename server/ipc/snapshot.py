"""What a worker knows of the served models: a snapshot the model owner sends on connect and
whenever it changes (a version loaded, retired or warmed; an error found or cleared).

Workers learn versions by number, and the limits they admit by, from here; the models
themselves stay in the owner.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from batching import BatchingConfig
from model_contract.manifest import ModelManifest
from server.registry import ModelRegistry


@dataclass(frozen=True)
class VersionInfo:
    name: str
    version: int
    ready: bool
    runtime: str
    batching: BatchingConfig
    cache_limits: tuple[int, int] | None
    manifest: ModelManifest


@dataclass(frozen=True)
class CatalogSnapshot:
    versions: list[VersionInfo]
    errors: dict[str, str]
    failed_models: list[str]
    repository_readable: bool
    loaded_once: bool


def take_snapshot(registry: ModelRegistry, manifests: dict[tuple[str, int], Any]) -> dict[str, Any]:
    """The registry as a message; ``manifests`` memoizes each version's manifest as JSON."""
    versions = []
    for model in registry.models:
        key = (model.name, model.version)
        if key not in manifests:
            manifests[key] = model.manifest.model_dump(mode="json")
        versions.append(
            {
                "name": model.name,
                "version": model.version,
                "ready": model.ready,
                "runtime": model.runtime,
                "batching": dataclasses.asdict(model.batching),
                "cache_limits": model.cache_limits,
                "manifest": manifests[key],
            }
        )
    return {
        "versions": versions,
        "errors": registry.errors,
        "failed_models": registry.failed_models,
        "repository_readable": registry.repository_readable,
        "loaded_once": registry.loaded_once,
    }


def read_snapshot(message: dict[str, Any], known: dict[tuple[str, int], ModelManifest]) -> CatalogSnapshot:
    """The worker's side; ``known`` memoizes parsed manifests (a snapshot repeats them)."""
    versions = []
    for v in message["versions"]:
        key = (v["name"], v["version"])
        if key not in known:
            known[key] = ModelManifest.model_validate(v["manifest"])
        cache = v["cache_limits"]
        versions.append(
            VersionInfo(
                name=v["name"],
                version=v["version"],
                ready=v["ready"],
                runtime=v["runtime"],
                batching=_batching(v["batching"]),
                cache_limits=(int(cache[0]), int(cache[1])) if cache else None,
                manifest=known[key],
            )
        )
    return CatalogSnapshot(
        versions,
        dict(message["errors"]),
        list(message["failed_models"]),
        bool(message["repository_readable"]),
        bool(message["loaded_once"]),
    )


def _batching(fields: dict[str, Any]) -> BatchingConfig:
    return BatchingConfig(**{**fields, "allowed_batch_sizes": tuple(fields["allowed_batch_sizes"])})
