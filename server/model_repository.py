"""Find models in a repository laid out as ``<repo>/<model>/<version>/manifest.json``.

A model may also have ``<repo>/<model>/config.json``: serving settings for all its versions
(today its ``batching`` section, overriding the server's defaults field by field).
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

    @classmethod
    def read(cls, model_dir: Path) -> ModelConfig:
        path = model_dir / MODEL_CONFIG_FILE
        return cls.model_validate_json(path.read_text()) if path.is_file() else cls()


@dataclass(frozen=True)
class ModelVersion:
    manifest: ModelManifest
    path: Path
    config: ModelConfig


def latest_versions(repository: Path) -> list[ModelVersion]:
    """The newest version of every model in the repository, by model name."""
    if not repository.is_dir():
        raise FileNotFoundError(f"model repository {repository} does not exist")
    found: list[ModelVersion] = []
    for model_dir in sorted(p for p in repository.iterdir() if p.is_dir()):
        versions = [p for p in model_dir.iterdir() if p.name.isdigit() and (p / MANIFEST_FILE).is_file()]
        if versions:
            newest = max(versions, key=lambda p: int(p.name))
            found.append(ModelVersion(ModelManifest.read(newest), newest, ModelConfig.read(model_dir)))
    return found
