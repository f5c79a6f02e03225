"""The manifest a build writes next to each model version: its reader and its writer.

Every build writes a version through ``ModelManifest.write`` and everything that looks at one
(the server, ``imgserve verify``, the benchmarks) reads it through ``ModelManifest.read``.
"""

from __future__ import annotations

import re
from pathlib import Path, PurePath
from typing import Any, Literal

from pydantic import BaseModel, Field

from model_contract.preprocess import PreprocessSpec

MANIFEST_FILE = "manifest.json"
# A version's folder name, and a version as a URL gives it: ASCII digits, no sign, no leading
# zero (so "7" and "007" cannot both be version 7), and short enough for int(): str.isdigit()
# would accept "²", and int() refuses 5,000 digits.
VERSION_NAME = re.compile(r"[1-9][0-9]{0,17}")
MAX_FILE_BYTES = 16 * 1024 * 1024
"""Largest manifest or model config read; a real one is a few tens of kilobytes."""


def read_small_file(path: Path, limit: int = MAX_FILE_BYTES) -> bytes:
    """The file's bytes; refuses (without reading it all) a file larger than ``limit``."""
    with path.open("rb") as f:
        data = f.read(limit + 1)
    if len(data) > limit:
        raise ValueError(f"{path.name} is larger than {limit} bytes")
    return data


def inside_folder(folder: Path, relative: str) -> Path:
    """``folder / relative`` resolved (symlinks followed); refuses a path that leads outside ``folder``."""
    if PurePath(relative).is_absolute():
        raise ValueError(f"artifact {relative!r} is absolute; give it relative to the version folder")
    try:
        root = folder.resolve()
        path = (root / relative).resolve()
    except (OSError, RuntimeError, ValueError) as exc:  # a symlink loop (RuntimeError before 3.13), a NUL
        raise ValueError(f"artifact {relative!r} cannot be resolved: {exc}") from exc
    if not path.is_relative_to(root):
        raise ValueError(f"artifact {relative!r} leads outside its version folder")
    return path


# The element types every protocol imgserve speaks can name (v2 datatypes, TF Serving's DT_*).
TensorDtype = Literal[
    "bool", "uint8", "uint16", "uint32", "uint64", "int8", "int16", "int32", "int64", "float16", "float32", "float64"
]


def version_number(text: str) -> int | None:
    """The version ``text`` names (a folder's name, a URL's segment), or None if it names none."""
    return int(text) if VERSION_NAME.fullmatch(text) else None


class TensorSpec(BaseModel):
    name: str
    dtype: TensorDtype
    shape: list[int] = Field(description="-1 marks the batch dimension.")


class ModelManifest(BaseModel):
    name: str
    version: int = Field(ge=1)
    runtime: str
    artifact: str = Field(description="Path of the runtime's artifact, relative to the version folder.")
    signature: str = "serving_default"
    input: TensorSpec
    output: TensorSpec
    preprocessing: PreprocessSpec
    labels: list[str]
    source: dict[str, str] = Field(default_factory=dict)
    parameters: dict[str, float] = Field(default_factory=dict, description="Runtime-specific settings.")
    artifacts: dict[str, str] = Field(
        default_factory=dict,
        description="More runtimes this version can be served with, and their artifact paths. A .keras artifact is "
        "the bare network: the runtime applies the preprocessing's mean and std itself.",
    )

    build: dict[str, Any] | None = Field(
        default=None, description="How ``imgserve build`` made this version, and its verification figures."
    )

    @classmethod
    def read(cls, version_dir: Path) -> ModelManifest:
        return cls.model_validate_json(read_small_file(version_dir / MANIFEST_FILE))

    @staticmethod
    def is_version(folder: Path) -> bool:
        return (folder / MANIFEST_FILE).is_file()

    def write(self, version_dir: Path) -> Path:
        """Write ``manifest.json`` into ``version_dir`` (a staging folder: builds publish a
        version by renaming the whole folder into place)."""
        path = version_dir / MANIFEST_FILE
        path.write_text(self.model_dump_json(indent=2, exclude_none=True))
        return path

    def artifact_for(self, runtime: str) -> str:
        """The runtime's artifact path as the manifest gives it; unchecked: serve through ``artifact_path``."""
        return self.artifacts.get(runtime, self.artifact if runtime == self.runtime else "")

    def artifact_path(self, version_dir: Path, runtime: str) -> Path:
        """The runtime's artifact, resolved and confined to ``version_dir`` (ValueError otherwise)."""
        return inside_folder(version_dir, self.artifact_for(runtime))

    def check_artifacts(self, version_dir: Path) -> None:
        """Every artifact path stays inside ``version_dir``, so a manifest cannot point a runtime elsewhere."""
        for relative in (self.artifact, *self.artifacts.values()):
            inside_folder(version_dir, relative)

    @property
    def item_shape(self) -> tuple[int, ...]:
        return tuple(self.input.shape[1:])
