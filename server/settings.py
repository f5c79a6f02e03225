"""Typed settings from the environment (prefix ``IMGSERVE_``), built once and passed down.

Nested sections use a double underscore: ``IMGSERVE_BATCHING__MAX_BATCH_SIZE=16``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import limits
from pydantic import BaseModel, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from batching import BatchingConfig
from model_contract.imaging import DecodeLimits


class BatchingSettings(BaseModel):
    max_batch_size: int = Field(32, ge=1, description="Most images in one model call.")
    max_queue_delay_ms: float = Field(
        0.0, ge=0, description="How long a partial batch may wait to fill once the model is free (0: never wait)."
    )
    max_adaptive_delay_ms: float = Field(
        2.0,
        ge=0,
        description="Most a partial batch may wait, once the model is free, for requests the recent load says are "
        "on their way (clients just answered coming back); only when a batch's fixed cost dominates, never on an idle "
        "server, never past a deadline (0: off).",
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
            max_adaptive_delay=self.max_adaptive_delay_ms / 1000.0,
            max_queue_size=max(self.max_queue_size, self.max_batch_size),
            max_concurrent_batches=self.max_concurrent_batches,
            allowed_batch_sizes=tuple(self.allowed_batch_sizes),
        )


class LimitSettings(BaseModel):
    """What one request, and all requests together, may cost. Checked before the work they bound."""

    max_body_bytes: int = Field(20 * 1024 * 1024, ge=1, description="Largest request body; larger ones get 413.")
    max_body_bytes_in_flight: int = Field(
        256 * 1024 * 1024,
        ge=1,
        description="Bytes of request bodies being received or held by requests in progress, all together; "
        "beyond it new requests get 429.",
    )
    max_image_pixels: int = Field(
        40_000_000, ge=1, description="Largest decoded image (width x height); guards against decompression bombs."
    )
    max_decoded_image_bytes: int = Field(
        128 * 1024 * 1024,
        ge=1,
        description="Largest decoded image in memory (pixels x bands x bytes per sample); 413 beyond it.",
    )
    max_images_per_request: int = Field(
        64, ge=1, description="Most images in one request, on every protocol; more get 413."
    )
    max_images_in_progress: int = Field(
        1024,
        ge=1,
        description="Images being decoded or queued for a model, all requests together; beyond it 429. "
        "Bounds the decode backlog and the memory of decoded tensors.",
    )
    max_top_k: int = Field(100, ge=1, description="Largest top_k a client may ask for.")
    max_requests_in_progress: int = Field(
        256,
        ge=1,
        description="Requests with a body being received, parsed, decoded or queued at once; beyond it new ones "
        "get 429 before their body is read.",
    )
    request_timeout_s: float = Field(
        10.0,
        gt=0,
        description="Deadline for a request's images to reach the model; past it the answer is 504. "
        "A client may shorten it with the X-Request-Timeout-Ms header.",
    )

    @model_validator(mode="after")
    def _budgets_hold_one_request(self) -> LimitSettings:
        # A budget smaller than one allowed request would answer 429 to a request no retry can admit.
        if self.max_body_bytes_in_flight < self.max_body_bytes:
            raise ValueError("max_body_bytes_in_flight must be at least max_body_bytes")
        if self.max_images_in_progress < self.max_images_per_request:
            raise ValueError("max_images_in_progress must be at least max_images_per_request")
        return self

    def decode_limits(self) -> DecodeLimits:
        return DecodeLimits(self.max_image_pixels, self.max_decoded_image_bytes)


class HttpSettings(BaseModel):
    """Slow or oversized clients: what the HTTP layer tolerates before it closes the connection."""

    max_header_bytes: int = Field(
        16 * 1024, ge=1024, description="Request line and headers together; larger ones get 431 and are closed."
    )
    max_headers: int = Field(100, ge=1, description="Most header fields in one request (431 beyond).")
    header_timeout_s: float = Field(
        10.0,
        gt=0,
        description="Time to send the request line and headers: a connection's first request from the "
        "connection's opening, later ones from their first byte; then 408 and the connection is closed.",
    )
    body_timeout_s: float = Field(
        30.0, gt=0, description="Time to send the whole body, from the end of the headers; then 408, and close."
    )
    keep_alive_timeout_s: float = Field(
        5.0, gt=0, description="Idle time allowed on a connection between requests (or before the first); then close."
    )
    max_connections: int = Field(
        1000, ge=1, description="Open connections served at once; requests on connections beyond it get 503."
    )


class JobSettings(BaseModel):
    """Asynchronous jobs (``/v1/jobs``): images classified in the background, at a lower priority
    than requests a client waits on, with a signed callback when done."""

    enabled: bool = Field(False, description="Serve /v1/jobs (and run jobs); needs a result store.")
    max_images_per_job: int = Field(10_000, ge=1, description="Most images in one job (413 beyond).")
    max_body_bytes: int = Field(64 * 1024 * 1024, ge=1, description="Largest POST /v1/jobs body (413 beyond).")
    max_body_bytes_in_flight: int = Field(
        128 * 1024 * 1024,
        ge=1,
        description="Bytes of job uploads being received or held, all together: a budget of their own, apart "
        "from the requests' (429 beyond), so uploads of jobs never crowd out requests.",
    )
    images_per_batch: int = Field(
        8,
        ge=1,
        description="Most of a job's images in one model call (and at most the model's batch): a request that "
        "arrives meanwhile waits for at most that batch.",
    )
    max_queued_per_client: int = Field(
        10,
        ge=1,
        description="Jobs one client (API key, else address) may have queued or running, or whose callback is "
        "still being delivered (429 beyond).",
    )
    max_queued: int = Field(1000, ge=1, description="Jobs queued or running, all clients together (429 beyond).")
    concurrency: int = Field(1, ge=1, description="Jobs one server process runs at once.")
    lease_s: float = Field(
        30.0, gt=0, description="A running job's lease: a job whose runner died is taken up again after it."
    )
    callback_senders: int = Field(
        4,
        ge=1,
        le=64,
        description="Callbacks one server process delivers at once: a receiver that never answers holds one "
        "sender for its timeouts, not all deliveries.",
    )
    callback_max_attempts: int = Field(6, ge=1, description="Attempts to deliver a job's callback.")
    callback_connect_timeout_s: float = Field(3.0, gt=0, description="To connect to a callback's receiver.")
    callback_read_timeout_s: float = Field(10.0, gt=0, description="For the receiver to answer.")
    callback_retry_base_s: float = Field(1.0, gt=0, description="First retry after about this; doubling, jittered.")
    callback_retry_max_s: float = Field(300.0, gt=0, description="Longest wait between attempts.")


class StoreSettings(BaseModel):
    """What the result store keeps, and for how long."""

    keep_images: bool = Field(
        False, description="Keep each classified image, content-addressed, in images_dir (jobs' and requests')."
    )
    images_dir: Path | None = Field(None, description="Where kept images go (default: images/ beside a SQLite file).")
    retention_s: float = Field(7 * 24 * 3600.0, gt=0, description="Finished jobs and stored results older go.")
    max_image_bytes: int = Field(
        1024**3, ge=0, description="Kept images beyond this size together go, oldest first (0: no limit)."
    )
    keep_results: bool = Field(
        True, description="Store /v1/classify answers by request id, for GET /v1/results/{request_id}."
    )


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="IMGSERVE_", env_nested_delimiter="__")

    host: str = Field("127.0.0.1", description="Address to bind.")
    port: int = Field(8000, description="Port to bind.")
    grpc_port: int = Field(
        8001,
        ge=0,
        le=65535,
        description="Port of the gRPC server (the Open Inference Protocol's GRPCInferenceService, health, "
        "reflection), on the same host; 0 turns gRPC off.",
    )
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
    drain_delay_s: float = Field(
        0.0,
        ge=0,
        description="On SIGTERM, how long to keep serving with /ready answering 503 (and gRPC health NOT_SERVING) "
        "before the listeners close, so that load balancers take the server out of rotation first (Kubernetes: a "
        "few seconds). A second SIGTERM ends the delay.",
    )
    drain_timeout_s: float = Field(
        10.0,
        ge=0,
        description="How long shutdown waits for requests in progress (rounded up to whole seconds; then they are "
        "cancelled), and shutdown or a reload for queued work.",
    )
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
    http: HttpSettings = Field(default_factory=HttpSettings)  # type: ignore[arg-type]
    jobs: JobSettings = Field(default_factory=JobSettings)  # type: ignore[arg-type]
    store: StoreSettings = Field(default_factory=StoreSettings)  # type: ignore[arg-type]
    result_store: SecretStr | None = Field(
        None,
        description="Where jobs and results are kept: sqlite:///FILE or postgresql://USER:PASSWORD@HOST/DB. "
        "Unset: none, unless jobs are enabled (then sqlite:///imgserve.db).",
    )
    callback_secret: SecretStr | None = Field(
        None, description="Key of the HMAC-SHA256 signature of job callbacks (X-Imgserve-Signature)."
    )
    callback_allowed_hosts: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Hosts a job's callback_url may name (names, IP addresses or networks, comma-separated); "
        "empty (the default): callbacks are refused.",
    )
    log_level: str = Field("info", description="uvicorn and application log level.")
    log_format: Literal["text", "json"] = Field(
        "text", description="text: one readable line per record; json: one JSON object per line, for log collectors."
    )
    access_log: bool = Field(
        False, description="One line per HTTP request and gRPC call, with its id, status and time (costs throughput)."
    )

    # Access control. Everything a stranger could misuse is closed unless configured.
    admin_token: SecretStr | None = Field(
        None,
        description="Bearer token for the repository API (index, load, unload); unset: that API is refused.",
    )
    api_keys_file: Path | None = Field(
        None,
        description="File of hashed client API keys (see `imgserve hash-key`); when set, inference and metadata "
        "routes need `Authorization: Bearer <key>` or `X-API-Key`. Reloaded when it changes.",
    )
    rate_limit: str | None = Field(
        None,
        description='Requests per client, e.g. "50/second" or "50/second;1000/minute": per API key when keys are '
        "configured, else per client address. Unset: no rate limit.",
    )
    cpu_limit: float | None = Field(
        None,
        gt=0,
        description="CPU-seconds per second one client's requests may spend parsing and decoding (per API key, "
        "else per address), measured and paid after the fact; a client in debt gets 429. Unset: no limit.",
    )
    allowed_hosts: Annotated[list[str] | None, NoDecode] = Field(
        None,
        description="Host header values accepted, comma-separated ('*.example.com' allowed). Unset: the loopback "
        "names when bound to a loopback address, any host otherwise.",
    )
    cors_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="Origins allowed by CORS, comma-separated; empty (the default): CORS off."
    )
    docs: bool = Field(True, description="Serve /docs and /openapi.json.")
    public_probes: bool = Field(True, description="/health, /ready and /v2/health/* need no API key.")
    public_metrics: bool = Field(True, description="/metrics needs no API key.")

    @field_validator("allowed_hosts", "cors_origins", "callback_allowed_hosts", mode="before")
    @classmethod
    def _comma_separated(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("rate_limit")
    @classmethod
    def _parses(cls, value: str | None) -> str | None:
        if value:
            try:
                limits.parse_many(value)
            except ValueError as exc:
                raise ValueError(f"rate_limit {value!r} is not like '50/second;1000/minute'") from exc
        return value or None

    @model_validator(mode="after")
    def _a_job_fits_the_body_budget(self) -> Settings:
        if self.jobs.max_body_bytes > self.jobs.max_body_bytes_in_flight:
            raise ValueError("jobs.max_body_bytes must be at most jobs.max_body_bytes_in_flight")
        return self

    @property
    def store_url(self) -> SecretStr | None:
        """The result store in use (a secret: it may hold a password): the configured one, or
        jobs' embedded default."""
        if self.result_store and self.result_store.get_secret_value():
            return self.result_store
        return SecretStr("sqlite:///imgserve.db") if self.jobs.enabled else None

    @property
    def trusted_hosts(self) -> list[str]:
        """The Host values to accept; ['*'] for any."""
        if self.allowed_hosts is not None:
            return self.allowed_hosts
        if self.host in ("127.0.0.1", "localhost", "::1"):
            return ["127.0.0.1", "localhost", "[::1]"]
        return ["*"]
