"""Typed settings from the environment (prefix ``IMGSERVE_``), built once and passed down.

Nested sections use a double underscore: ``IMGSERVE_BATCHING__MAX_BATCH_SIZE=16``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from batching import BatchingConfig


class BatchingSettings(BaseModel):
    max_batch_size: int = Field(32, ge=1, description="Most images in one model call.")
    max_queue_delay_ms: float = Field(
        0.0, ge=0, description="How long a partial batch may wait to fill once the model is free (0: never wait)."
    )
    max_queue_size: int = Field(256, ge=1, description="Most images queued per model; beyond it requests get 429.")
    max_concurrent_batches: int = Field(
        1, ge=1, description="Batches in flight per model; 2 overlaps assembling the next batch with running this one."
    )
    allowed_batch_sizes: list[int] = Field(
        default_factory=list,
        description="Batch sizes the model runs (padded up to the next); empty: every size up to max_batch_size.",
    )

    def to_config(self) -> BatchingConfig:
        return BatchingConfig(
            max_batch_size=self.max_batch_size,
            max_queue_delay=self.max_queue_delay_ms / 1000.0,
            max_queue_size=max(self.max_queue_size, self.max_batch_size),
            max_concurrent_batches=self.max_concurrent_batches,
            allowed_batch_sizes=tuple(self.allowed_batch_sizes),
        )


class LimitSettings(BaseModel):
    max_body_bytes: int = Field(20 * 1024 * 1024, ge=1, description="Largest request body; larger ones get 413.")
    max_image_pixels: int = Field(
        40_000_000, ge=1, description="Largest decoded image (width x height); guards against decompression bombs."
    )
    max_files: int = Field(64, ge=1, description="Most images in one /v1/classify/batch request.")
    max_top_k: int = Field(100, ge=1, description="Largest top_k a client may ask for.")
    max_requests_in_progress: int = Field(
        256,
        ge=1,
        description="Classify requests being decoded or queued at once; beyond it new ones get 429. "
        "Bounds the decode backlog the way max_queue_size bounds the model's.",
    )
    request_timeout_s: float = Field(
        10.0,
        gt=0,
        description="Deadline for a request's images to reach the model; past it the answer is 504. "
        "A client may shorten it with the X-Request-Timeout-Ms header.",
    )


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="IMGSERVE_", env_nested_delimiter="__")

    host: str = Field("127.0.0.1", description="Address to bind.")
    port: int = Field(8000, description="Port to bind.")
    model_repository: Path = Field(Path("models"), description="Folder of <model>/<version>/ directories.")
    default_model: str = Field("efficientnet_lite0", description="Model that /v1/classify uses.")
    decode_threads: int = Field(0, ge=0, description="Threads decoding images (0: one per CPU core).")
    inference_threads: int = Field(0, ge=0, description="Threads inside the runtime's ops (0: the runtime decides).")
    runtime: str | None = Field(
        None, description="Preferred runtime (e.g. keras_jax) for versions that carry an artifact for it."
    )
    compute_dtype: Literal["float32", "bfloat16", "float16"] = Field(
        "float32", description="Compute precision, for runtimes that support lower ones (keras_jax)."
    )
    device: str | None = Field(None, description="Device platform for keras_jax (gpu, cpu); default: JAX's first.")
    drain_timeout_s: float = Field(10.0, ge=0, description="How long shutdown or a reload waits for queued work.")
    repository_poll_s: float = Field(
        0.0,
        ge=0,
        description="Rescan the model repository this often and load/unload what changed (0: only on request).",
    )
    max_model_bytes: int = Field(
        0, ge=0, description="Budget for all loaded versions' artifacts together, in bytes (0: no limit)."
    )
    batching: BatchingSettings = Field(default_factory=BatchingSettings)  # type: ignore[arg-type]
    limits: LimitSettings = Field(default_factory=LimitSettings)  # type: ignore[arg-type]
    log_level: str = Field("info", description="uvicorn and application log level.")
