"""The manifest a build writes next to each model version; the server's only view of it."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field

MANIFEST_FILE = "manifest.json"


class TensorSpec(BaseModel):
    name: str
    dtype: str
    shape: list[int] = Field(description="-1 marks the batch dimension.")


class Preprocessing(BaseModel):
    resize_shorter_side: int = Field(gt=0)
    crop_size: int = Field(gt=0)
    interpolation: Literal["bicubic", "bilinear"] = "bicubic"
    mean: float = 0.0
    std: float = 1.0
    normalization: Literal["in_graph", "host"] = "in_graph"


class ModelManifest(BaseModel):
    name: str
    version: int = Field(ge=1)
    runtime: str
    artifact: str = Field(description="Path of the runtime's artifact, relative to the version folder.")
    signature: str = "serving_default"
    input: TensorSpec
    output: TensorSpec
    preprocessing: Preprocessing
    labels: list[str]
    source: dict[str, str] = Field(default_factory=dict)
    parameters: dict[str, float] = Field(default_factory=dict, description="Runtime-specific settings.")
    artifacts: dict[str, str] = Field(
        default_factory=dict,
        description="More runtimes this version can be served with, and their artifact paths. A .keras artifact is "
        "the bare network: the runtime applies the preprocessing's mean and std itself.",
    )

    @classmethod
    def read(cls, version_dir: Path) -> ModelManifest:
        return cls.model_validate_json((version_dir / MANIFEST_FILE).read_text())

    def artifact_for(self, runtime: str) -> str:
        return self.artifacts.get(runtime, self.artifact if runtime == self.runtime else "")

    @property
    def item_shape(self) -> tuple[int, ...]:
        return tuple(self.input.shape[1:])
