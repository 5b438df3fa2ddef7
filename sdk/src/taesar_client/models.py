"""The request and response bodies of the Taesar HTTP API, as the SDK sends and reads them.

These mirror the schemas of the service's OpenAPI document (`GET /openapi.json`) field
for field: names, required-ness, types, enums, bounds and defaults. The service's test
suite compares the two, so a field added on one side and not the other fails there.

Request models forbid unknown fields, like the server, so a typo fails before anything
is sent; response models ignore fields they do not know, so an older SDK keeps working
against a newer server.
"""

from __future__ import annotations

from datetime import datetime
from enum import Enum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt

__all__ = [
    "Ablations",
    "Action",
    "Candidate",
    "CatalogueItem",
    "Decision",
    "DomainInfo",
    "ErrorDetail",
    "ErrorResponse",
    "Explanation",
    "Health",
    "ItemId",
    "ItemLookup",
    "ItemLookupRequest",
    "ItemSearch",
    "JobInfo",
    "JobLinks",
    "JobList",
    "JobStatus",
    "ModelDetail",
    "ModelInfo",
    "ModelList",
    "ModelLoadError",
    "Progress",
    "Readiness",
    "RegenerateOptions",
    "RegenerateRequest",
    "RegenerateResponse",
    "RegeneratedSequence",
    "SampleList",
    "SampleUser",
    "SequenceIn",
    "Stats",
]

ItemId = str | StrictInt  # StrictInt: JSON true is not item 1
Action = Literal["keep", "replace", "discard"]
# (item id, score), best first
Candidate = tuple[str, float]


# -- errors -------------------------------------------------------------------------


class ErrorDetail(BaseModel):
    code: str
    message: str
    details: dict[str, Any] = Field(default_factory=dict)


class ErrorResponse(BaseModel):
    """The one shape of every 4xx/5xx answer."""

    error: ErrorDetail


# -- requests -------------------------------------------------------------------------


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SequenceIn(_Strict):
    """One user's history; `items` are the model's item ids, oldest first."""

    user_id: str | None = Field(None, max_length=256)
    items: list[ItemId] = Field(min_length=1)


class Ablations(_Strict):
    no_adaptation: bool = Field(False, description="experts := mixed model")
    no_source_experts: bool = Field(False, description="z^S := z^M")
    no_global: bool = Field(False, description="always decide with the local score")
    no_local: bool = Field(False, description="replace with the global argmax when it is a target item")


class RegenerateOptions(_Strict):
    explain: bool = Field(False, description="add the top global and local candidates with their scores")
    explain_top_k: int = Field(5, ge=1, le=50)
    unknown_items: Literal["error", "drop"] = Field(
        "error", description="error: 422 unknown_item; drop: discard with reason unknown_item"
    )
    ablations: Ablations = Field(default_factory=Ablations)
    include_titles: bool = Field(False, description="add `titles` ({item id: title}) to each result")


class RegenerateRequest(_Strict):
    """The body of POST /regenerate, and of POST /jobs when it is sent as JSON."""

    model: str | None = Field(None, description="bundle name; optional when exactly one is loaded")
    target_domain: str
    sequences: list[SequenceIn] = Field(min_length=1)
    options: RegenerateOptions = Field(default_factory=RegenerateOptions)


# -- regenerate answers ---------------------------------------------------------------


class Explanation(BaseModel):
    """The top candidates of one decided position, best first."""

    model_config = ConfigDict(populate_by_name=True, serialize_by_alias=True)

    global_: list[Candidate] = Field(alias="global", description="top items by the global score g")
    local: list[Candidate] = Field(default_factory=list, description="top target items by the local score l")


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
    titles: dict[str, str] | None = Field(None, description="with include_titles: item id -> title")


class RegenerateResponse(BaseModel):
    model: str
    target_domain: str
    results: list[RegeneratedSequence]
    stats: Stats


# -- jobs -----------------------------------------------------------------------------


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


# -- models and health ----------------------------------------------------------------


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


# -- inside a model, and the caller's jobs ---------------------------------------------


class ModelDetail(ModelInfo):
    """GET /models/{model}: ModelInfo plus the bundle's checksum, titles and samples."""

    created_at: str | None = None
    bundle_sha256: str
    titled_items: int
    sample_users: int


class CatalogueItem(BaseModel):
    id: str
    domain: str
    title: str | None = None
    genres: list[str] = Field(default_factory=list)


class ItemSearch(BaseModel):
    model: str
    query: str
    items: list[CatalogueItem]
    total: int


class ItemLookupRequest(_Strict):
    terms: list[str] = Field(min_length=1, max_length=1000, description="item ids or titles")


class ItemLookup(BaseModel):
    model: str
    matches: list[CatalogueItem | None]


class SampleUser(BaseModel):
    user_id: str
    items: list[str]


class SampleList(BaseModel):
    model: str
    users: list[SampleUser]


class JobList(BaseModel):
    jobs: list[JobInfo]
