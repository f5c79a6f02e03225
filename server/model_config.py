"""A model's own serving settings, read from ``<repo>/<model>/config.json``.

Strict: an unknown key anywhere is an error, so a misspelt ``"batchng"`` is reported instead of
silently ignored. ``batching`` overrides the server's batching settings field by field, with
their constraints. ``version_policy`` says which versions to serve, as in TF Serving and
Triton: ``{"latest": N}`` (the default, N = 1), ``{"all": {}}``, or ``{"specific": [1, 3]}``.
``cache`` turns on a result cache per version.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, model_validator

from model_contract.manifest import read_small_file
from server.settings import BatchingSettings

MODEL_CONFIG_FILE = "config.json"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class BatchingOverrides(BatchingSettings):
    """The server's batching fields and constraints; only the keys given override the server's."""

    model_config = ConfigDict(extra="forbid")

    def apply_to(self, server: BatchingSettings) -> BatchingSettings:
        overrides = self.model_dump(include=self.model_fields_set)
        return BatchingSettings.model_validate({**server.model_dump(), **overrides})


class AllVersions(_Strict):
    """``{"all": {}}``: takes no options."""


class VersionPolicy(_Strict):
    latest: int | None = Field(default=None, ge=1, description="Serve the N newest versions.")
    all: AllVersions | None = Field(default=None, description="Serve every version.")
    specific: list[Annotated[int, Field(ge=1)]] | None = Field(default=None, min_length=1, description="Serve these.")

    @model_validator(mode="after")
    def _exactly_one(self) -> VersionPolicy:
        given = [self.latest, self.all, self.specific]
        if sum(choice is not None for choice in given) != 1:
            raise ValueError("give exactly one of latest, all or specific")
        return self

    def select(self, versions: list[int]) -> list[int]:
        """The versions to serve, newest first."""
        newest_first = sorted(versions, reverse=True)
        if self.latest is not None:
            return newest_first[: self.latest]
        if self.specific is not None:
            wanted = set(self.specific)
            return [v for v in newest_first if v in wanted]
        return newest_first


class CacheConfig(_Strict):
    max_entries: int = Field(ge=1, description="Most results kept per version.")
    max_bytes: int = Field(ge=1, description="Most bytes of results kept per version.")


class ModelConfig(_Strict):
    batching: BatchingOverrides = Field(
        default_factory=BatchingOverrides,  # type: ignore[arg-type]
        description="Overrides of the server's batching settings.",
    )
    version_policy: VersionPolicy = Field(default_factory=lambda: VersionPolicy(latest=1))
    cache: CacheConfig | None = Field(
        default=None,
        description='Result cache per version, e.g. {"max_entries": 10000, "max_bytes": 100000000}; off if absent.',
    )

    def select(self, versions: list[int]) -> list[int]:
        """The versions to serve, newest first."""
        return self.version_policy.select(versions)

    def batching_for(self, server: BatchingSettings) -> BatchingSettings:
        """The server's batching settings with this model's overrides."""
        return self.batching.apply_to(server)

    @classmethod
    def read(cls, model_dir: Path) -> ModelConfig:
        path = model_dir / MODEL_CONFIG_FILE
        return cls.model_validate_json(read_small_file(path)) if path.is_file() else cls()
