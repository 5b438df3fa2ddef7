"""Bodies of the endpoints that look inside a model and list a caller's jobs: model
details, catalogue search and lookup, sample users, recent jobs. The web page (/ui)
is built on them; any client may use them. The SDK mirrors them like core/schemas.py.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from core.schemas import JobInfo, ModelInfo


class CatalogueItem(BaseModel):
    id: str = Field(examples=["50"])
    domain: str = Field(examples=["action"])
    title: str | None = Field(None, examples=["Star Wars (1977)"])
    genres: list[str] = Field(default_factory=list, examples=[["Action", "Adventure", "Sci-Fi"]])


class ItemSearch(BaseModel):
    model: str
    query: str
    items: list[CatalogueItem] = Field(description="best first: exact id, exact title, id prefix, title prefix, rest")
    total: int = Field(description="matches in all, of which `items` holds the first `limit`")


class ItemLookupRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    terms: list[str] = Field(
        min_length=1, max_length=1000, description="item ids or titles", examples=[["50", "Toy Story (1995)"]]
    )


class ItemLookup(BaseModel):
    model: str
    matches: list[CatalogueItem | None] = Field(
        description="one per term, in order: the item with that id, else the first whose title is the term "
        "(ignoring case and accents), else null"
    )


class SampleUser(BaseModel):
    user_id: str
    items: list[str] = Field(description="the training part of the user's sequence (no validation or test item)")


class SampleList(BaseModel):
    model: str
    users: list[SampleUser]


class ModelDetail(ModelInfo):
    created_at: str | None = None
    bundle_sha256: str = Field(description="sha256 of the bundle's manifest.json, which holds every file's sha256")
    titled_items: int = Field(description="catalogue items that have a title")
    sample_users: int = Field(description="users the bundle keeps as samples (GET /models/{model}/samples)")


class JobList(BaseModel):
    jobs: list[JobInfo] = Field(description="the caller's jobs, newest first, that have not expired")
