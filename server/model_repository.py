"""Find models in a repository laid out as ``<repo>/<model>/<version>/manifest.json``.

A model may also have ``<repo>/<model>/config.json`` (see ``server.model_config``): serving
settings for all its versions. A version folder is named with ASCII digits (``1``, ``2``, ...);
other folders are ignored. One broken model or version never stops the others: a scan reports
what is wrong, per model, and skips only that.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from pydantic import ValidationError

from model_contract.manifest import MANIFEST_FILE, ModelManifest, version_number
from server.model_config import MODEL_CONFIG_FILE, ModelConfig

__all__ = ["ModelConfig", "ModelVersion", "RepositoryScan", "latest_versions", "scan_repository", "served_versions"]

_ERRORS_SHOWN = 3


@dataclass(frozen=True)
class ModelVersion:
    manifest: ModelManifest
    path: Path
    config: ModelConfig


@dataclass(frozen=True)
class RepositoryScan:
    versions: dict[str, list[ModelVersion]] = field(default_factory=dict)
    """Per model with a valid config, the versions its policy serves, newest first."""
    errors: dict[str, list[str]] = field(default_factory=dict)
    """Per model, what is wrong: its config (then it is absent from ``versions``) or some versions."""


def describe(exc: Exception) -> str:
    """One short line: pydantic's report is many lines and echoes the input."""
    if not isinstance(exc, ValidationError):
        return str(exc) or type(exc).__name__
    errors = exc.errors()
    parts = [": ".join(filter(None, (".".join(map(str, e["loc"])), e["msg"]))) for e in errors[:_ERRORS_SHOWN]]
    more = f" (and {len(errors) - _ERRORS_SHOWN} more)" if len(errors) > _ERRORS_SHOWN else ""
    return "; ".join(parts) + more


def _version_folders(model_dir: Path) -> dict[int, Path]:
    return {
        int(p.name): p
        for p in model_dir.iterdir()
        if version_number(p.name) is not None and ModelManifest.is_version(p)
    }


def _read_version(folder: Path, number: int) -> ModelManifest:
    try:
        manifest = ModelManifest.read(folder)
    except (OSError, ValueError) as exc:  # ValidationError is a ValueError
        raise ValueError(f"{MANIFEST_FILE}: {describe(exc)}") from exc
    if manifest.version != number:
        raise ValueError(f"{MANIFEST_FILE} says version {manifest.version}, its folder {number}")
    manifest.check_artifacts(folder)
    return manifest


def _read_config(model_dir: Path) -> ModelConfig:
    try:
        return ModelConfig.read(model_dir)
    except (OSError, ValueError) as exc:
        raise ValueError(f"{MODEL_CONFIG_FILE}: {describe(exc)}") from exc


def _scan_model(model_dir: Path, scan: RepositoryScan) -> None:
    try:
        folders = _version_folders(model_dir)
        if not folders:
            return  # not a model (yet)
        config = _read_config(model_dir)
    except (OSError, ValueError) as exc:
        scan.errors[model_dir.name] = [describe(exc)]
        return
    valid: dict[int, ModelManifest] = {}
    for number, folder in sorted(folders.items()):
        try:
            valid[number] = _read_version(folder, number)
        except (OSError, ValueError) as exc:
            scan.errors.setdefault(model_dir.name, []).append(f"v{number}: {describe(exc)}")
    # The policy picks among the valid versions only: a broken new version leaves the newest
    # valid one serving (as a failed rollout should), and "specific" skips the broken ones.
    scan.versions[model_dir.name] = [ModelVersion(valid[v], folders[v], config) for v in config.select(list(valid))]


def scan_repository(repository: Path) -> RepositoryScan:
    """Every model's served versions, and what is wrong with the models or versions skipped.

    Raises only when the repository itself cannot be listed.
    """
    if not repository.is_dir():
        raise FileNotFoundError(f"model repository {repository} does not exist")
    scan = RepositoryScan()
    for model_dir in sorted(p for p in repository.iterdir() if p.is_dir() and not p.name.startswith(".")):
        _scan_model(model_dir, scan)
    return scan


def served_versions(repository: Path) -> dict[str, list[ModelVersion]]:
    """Per model, the versions its policy serves, newest first; broken models and versions left out."""
    return scan_repository(repository).versions


def latest_versions(repository: Path) -> list[ModelVersion]:
    """The newest served version of every model."""
    return [versions[0] for versions in served_versions(repository).values() if versions]
