"""Find models in a repository laid out as ``<repo>/<model>/<version>/manifest.json``.

A model may also have ``<repo>/<model>/config.json``: serving settings for all its versions.
Its ``batching`` section overrides the server's defaults field by field, and its
``version_policy`` says which versions to serve, as in TF Serving and Triton:
``{"latest": N}`` (the default, N = 1), ``{"all": {}}``, or ``{"specific": [1, 3]}``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from server.manifest import MANIFEST_FILE, ModelManifest

MODEL_CONFIG_FILE = "config.json"


class ModelConfig(BaseModel):
    batching: dict[str, Any] = Field(default_factory=dict, description="Overrides of the server's batching settings.")
    version_policy: dict[str, Any] = Field(default_factory=lambda: {"latest": 1})
    cache: dict[str, int] | None = Field(
        default=None,
        description='Result cache per version, e.g. {"max_entries": 10000, "max_bytes": 100000000}; off if absent.',
    )

    def select(self, versions: list[int]) -> list[int]:
        """The versions to serve, newest first."""
        newest_first = sorted(versions, reverse=True)
        policy = self.version_policy
        if "all" in policy:
            return newest_first
        if "specific" in policy:
            wanted = {int(v) for v in policy["specific"]}
            return [v for v in newest_first if v in wanted]
        if "latest" in policy:
            return newest_first[: max(1, int(policy["latest"]))]
        raise ValueError(f"unknown version_policy {policy}; use latest, all or specific")

    @classmethod
    def read(cls, model_dir: Path) -> ModelConfig:
        path = model_dir / MODEL_CONFIG_FILE
        return cls.model_validate_json(path.read_text()) if path.is_file() else cls()


@dataclass(frozen=True)
class ModelVersion:
    manifest: ModelManifest
    path: Path
    config: ModelConfig


def served_versions(repository: Path) -> dict[str, list[ModelVersion]]:
    """Per model, the versions its policy serves, newest first."""
    if not repository.is_dir():
        raise FileNotFoundError(f"model repository {repository} does not exist")
    found: dict[str, list[ModelVersion]] = {}
    for model_dir in sorted(p for p in repository.iterdir() if p.is_dir() and not p.name.startswith(".")):
        paths = {int(p.name): p for p in model_dir.iterdir() if p.name.isdigit() and (p / MANIFEST_FILE).is_file()}
        if not paths:
            continue
        config = ModelConfig.read(model_dir)
        found[model_dir.name] = [
            ModelVersion(ModelManifest.read(paths[v]), paths[v], config) for v in config.select(list(paths))
        ]
    return found


def latest_versions(repository: Path) -> list[ModelVersion]:
    """The newest served version of every model."""
    return [versions[0] for versions in served_versions(repository).values() if versions]
