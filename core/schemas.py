"""Request and response bodies of the HTTP API.

The SDK (`sdk/`, `taesar_client.models`) has its own copy of these models, so that it
needs neither this package nor torch; `tests/test_sdk_models.py` compares the two
through the OpenAPI document.
"""

from __future__ import annotations

from datetime import datetime
from enum import Enum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt

ItemId = str | StrictInt  # StrictInt: JSON true must not become item 1
Action = Literal["keep", "replace", "discard"]

# -- errors -------------------------------------------------------------------------


class ErrorDetail(BaseModel):
    code: str = Field(examples=["unknown_domain"])
    message: str = Field(examples=["unknown domain 'Toys'; known domains: action, comedy, drama, thriller"])
    details: dict[str, Any] = Field(default_factory=dict)


class ErrorResponse(BaseModel):
    """The one shape of every 4xx/5xx answer."""

    error: ErrorDetail


# -- regenerate ---------------------------------------------------------------------


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SequenceIn(Strict):
    user_id: str | None = Field(None, max_length=256, examples=["u42"])
    items: list[ItemId] = Field(min_length=1, examples=[["50", "181", "258", "100"]])


class Ablations(Strict):
    no_adaptation: bool = Field(False, description="experts := mixed model")
    no_source_experts: bool = Field(False, description="z^S := z^M")
    no_global: bool = Field(False, description="always decide with the local score")
    no_local: bool = Field(False, description="replace with the global argmax when it is a target item")


class RegenerateOptions(Strict):
    explain: bool = Field(False, description="add the top global and local candidates with their scores")
    explain_top_k: int = Field(5, ge=1, le=50)
    unknown_items: Literal["error", "drop"] = Field(
        "error", description="error: 422 unknown_item; drop: discard with reason unknown_item"
    )
    ablations: Ablations = Field(default_factory=Ablations)
    include_titles: bool = Field(
        False, description="add `titles` ({item id: title}) to each result, when the model's catalogue has titles"
    )


class RegenerateRequest(Strict):
    model: str | None = Field(None, description="bundle name; optional when exactly one is loaded")
    target_domain: str = Field(examples=["drama"])
    sequences: list[SequenceIn] = Field(min_length=1)
    options: RegenerateOptions = Field(default_factory=RegenerateOptions)

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "target_domain": "drama",
                    "sequences": [{"user_id": "u42", "items": ["50", "181", "258", "100", "127"]}],
                    "options": {"explain": False, "unknown_items": "drop"},
                }
            ]
        },
    )


# (item id, score): the exact form `models.output` writes, so that /regenerate, job
# results and `taesar regenerate` lines are one format that the SDK parses alike
Candidate = tuple[str, float]


class Explanation(BaseModel):
    """The top candidates of one decided position, best first."""

    model_config = ConfigDict(populate_by_name=True, serialize_by_alias=True)

    global_: list[Candidate] = Field(
        alias="global",
        description="top items by the global score g over the whole catalogue",
        examples=[[["127", 7.31]]],
    )
    local: list[Candidate] = Field(
        default_factory=list, description="top target items by the local score l (empty when not computed)"
    )


class Decision(BaseModel):
    position: int
    item: str
    domain: str | None = None
    action: Action
    replacement: str | None = None
    reason: str | None = None
    explain: Explanation | None = None


class Stats(BaseModel):
    kept: int
    replaced: int
    discarded: int


class RegeneratedSequence(BaseModel):
    user_id: str | None = None
    target_domain: str
    sequence: list[str]
    decisions: list[Decision]
    stats: Stats
    titles: dict[str, str] | None = Field(
        None, description="with include_titles: the title of every item this result names that has one"
    )


class RegenerateResponse(BaseModel):
    model: str
    target_domain: str
    results: list[RegeneratedSequence]
    stats: Stats


# -- jobs ---------------------------------------------------------------------------


class JobStatus(str, Enum):
    queued = "queued"
    running = "running"
    succeeded = "succeeded"
    failed = "failed"
    cancelled = "cancelled"


class JobLinks(BaseModel):
    self: str
    results: str


class Progress(BaseModel):
    done: int
    total: int


class JobInfo(BaseModel):
    id: str
    status: JobStatus
    model: str
    target_domain: str
    progress: Progress
    decisions: Stats
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    expires_at: datetime | None = None
    error: ErrorDetail | None = None
    links: JobLinks


# -- models and health --------------------------------------------------------------


class DomainInfo(BaseModel):
    name: str
    n_items: int


class ModelInfo(BaseModel):
    name: str
    format_version: int
    n_items: int
    domains: list[DomainInfo]
    hyper_parameters: dict[str, Any]
    training: dict[str, Any]
    metrics: dict[str, Any]
    data_fingerprint: str | None = None


class ModelLoadError(BaseModel):
    """A bundle folder that the service found but could not load."""

    model: str
    code: str
    message: str | None = None


class ModelList(BaseModel):
    models: list[ModelInfo]
    errors: list[ModelLoadError] = Field(default_factory=list)


class Health(BaseModel):
    status: Literal["ok"] = "ok"


class Readiness(BaseModel):
    status: Literal["ready", "not_ready"]
    models: list[str]
    redis: bool
    detail: str | None = None
    errors: list[ModelLoadError] = Field(default_factory=list, description="bundles that failed to load")
