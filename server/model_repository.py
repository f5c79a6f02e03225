"""Find models in a repository laid out as ``<repo>/<model>/<version>/manifest.json``."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from server.manifest import MANIFEST_FILE, ModelManifest


@dataclass(frozen=True)
class ModelVersion:
    manifest: ModelManifest
    path: Path


def latest_versions(repository: Path) -> list[ModelVersion]:
    """The newest version of every model in the repository, by model name."""
    if not repository.is_dir():
        raise FileNotFoundError(f"model repository {repository} does not exist")
    found: list[ModelVersion] = []
    for model_dir in sorted(p for p in repository.iterdir() if p.is_dir()):
        versions = [p for p in model_dir.iterdir() if p.name.isdigit() and (p / MANIFEST_FILE).is_file()]
        if versions:
            newest = max(versions, key=lambda p: int(p.name))
            found.append(ModelVersion(ModelManifest.read(newest), newest))
    return found
