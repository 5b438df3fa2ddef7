"""Service settings: one pydantic-settings class, read from TAESAR_* environment variables
(or a .env file) and validated at start-up.

`get_settings()` reads the environment once, when an entry point (the API's
`create_app`, `taesar serve`, a worker's Celery app) first asks for it; everything below
an entry point receives the `Settings` object instead, so tests build any number of
differently configured services and workers in one process."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="TAESAR_", env_file=".env", extra="ignore")

    model_dir: Path = Field(Path("models_store"), description="folder of bundle folders; folder name = model name")
    redis_url: str = "redis://127.0.0.1:6379/0"
    key_prefix: str = Field("taesar", description="prefix of every Redis key the service writes")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    # comma-separated; empty disables authentication (local development only)
    api_keys: Annotated[list[str], NoDecode] = Field(default_factory=list)
    chunk_size: int = Field(500, ge=1, le=100_000, description="sequences per queued task")
    # must exceed one chunk's decode time, or chunks are decoded twice (results still count
    # once) and each extra delivery counts toward the poison limit; retry countdowns are
    # capped below it (workers.tasks). The floor is low so the fault tests can see a killed
    # worker's chunk come back in seconds; production keeps the default.
    visibility_timeout_s: int = Field(3600, ge=5)
    job_ttl_s: int = Field(7 * 24 * 3600, ge=60)
    max_sequences_per_request: int = Field(1000, ge=1)
    max_pending_sequences: int = Field(5_000_000, ge=1)
    max_items_per_sequence: int = Field(10_000, ge=1)
    max_body_bytes: int = Field(64 * 1024 * 1024, ge=1024, description="for /jobs uploads; /regenerate uses 1/8")
    max_json_job_bytes: int = Field(
        1024 * 1024, ge=1024, le=64 * 1024 * 1024, description="a JSON body of POST /jobs at most; larger go as NDJSON"
    )
    max_concurrent_uploads: int = Field(4, ge=1, le=1024, description="POST /jobs bodies read at once per process")
    upload_wait_s: float = Field(10.0, ge=0, le=3600, description="wait for an upload slot before 429")
    body_timeout_s: float = Field(
        30.0, gt=0, le=3600, description="time a request may keep the server waiting for its body, in total"
    )
    decode_batch_size: int = Field(256, ge=1)
    # threads decoding /regenerate requests at once (per model with micro-batching); more than
    # 1 only pays off with spare CPU cores beyond torch's own intra-op threads (or several GPUs)
    decode_threads: int = Field(1, ge=1, le=64)
    # MB of [rows, V] score work per decode: "auto" is half the GPU's free memory on CUDA
    # (split between the decodes one process can run at once) and 256 on CPU
    memory_budget_mb: Literal["auto"] | Annotated[int, Field(ge=16)] = "auto"
    # torch CPU threads of this process (None: torch's choice, all cores). API and workers on
    # one host should not ask for more threads than cores in total.
    torch_threads: int | None = Field(None, ge=1, le=1024)
    # micro-batching of concurrent /regenerate calls (app/batching.py); a wait of 0 decodes
    # every call on its own (the queue bounds and fair turns still apply)
    microbatch_max_wait_ms: float = Field(
        2.0, ge=0, le=1000, description="longest a call waits for company while calls are concurrent"
    )
    microbatch_max_sequences: int = Field(64, ge=1, description="sequences joined into one engine batch at most")
    microbatch_max_queued_sequences: int = Field(
        10_000, ge=1, description="sequences waiting for a decoder, per model; 429 queue_full above it"
    )
    microbatch_max_queued_cost: int = Field(
        50_000,
        ge=1,
        description="cost units (items, explanations weigh more) waiting for a decoder, per model; 429 above it",
    )
    microbatch_key_share: float = Field(
        0.5, gt=0, le=1, description="share of microbatch_max_queued_cost that one API key's calls may hold"
    )
    cors_origins: Annotated[list[str], NoDecode] = Field(default_factory=list)
    log_level: str = "INFO"
    worker_metrics_port: int | None = Field(
        None, ge=1, le=65535, description="a worker serves its Prometheus metrics on this port (off when unset)"
    )

    @field_validator("api_keys", "cors_origins", mode="before")
    @classmethod
    def _split_csv(cls, v: object) -> object:
        if isinstance(v, str):
            return [part.strip() for part in v.split(",") if part.strip()]
        return v


@lru_cache
def get_settings() -> Settings:
    return Settings()
