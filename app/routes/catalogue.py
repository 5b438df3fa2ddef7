"""Inside one model: its details, its catalogue (search by id or title, lookup of many
terms at once) and the sample users its bundle keeps. Read from the loaded bundle;
nothing here decodes or touches Redis."""

from __future__ import annotations

import hashlib
from typing import Annotated, Any

import anyio.to_thread
from fastapi import APIRouter, Query

from app.browse_schemas import (
    CatalogueItem,
    ItemLookup,
    ItemLookupRequest,
    ItemSearch,
    ModelDetail,
    SampleList,
    SampleUser,
)
from app.deps import EnginesDep
from app.routes import error_responses
from app.routes.models import _EXAMPLE as MODEL_LIST_EXAMPLE
from app.routes.models import model_info
from core.engines import Engine

router = APIRouter(prefix="/models", tags=["models"])

MAX_SEARCH_RESULTS = 50
MAX_TERM_CHARS = 500

_ITEM_EXAMPLE = {"id": "50", "domain": "action", "title": "Star Wars (1977)", "genres": ["Action", "Sci-Fi"]}
_SEARCH_EXAMPLE = {"model": "ml100k", "query": "star wars", "items": [_ITEM_EXAMPLE], "total": 1}
_DETAIL_EXAMPLE = {
    **MODEL_LIST_EXAMPLE["models"][0],
    "created_at": "2026-01-01T12:00:00+00:00",
    "bundle_sha256": "5d41402abc4b2a76b9719d911017c592" * 2,
    "titled_items": 1682,
    "sample_users": 100,
}
_SAMPLES_EXAMPLE = {"model": "ml100k", "users": [{"user_id": "1", "items": ["168", "172", "165", "156"]}]}
_LOOKUP_OPENAPI: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": {"$ref": "#/components/schemas/ItemLookupRequest"},
                "example": {"terms": ["50", "toy story (1995)", "no such film"]},
            }
        },
    }
}


def catalogue_item(engine: Engine, dense: int) -> CatalogueItem:
    cat = engine.catalogue
    item = cat.external(dense)
    genres = list(cat.info.genres.get(item, ())) if cat.info is not None else []
    return CatalogueItem(id=item, domain=cat.domain_of(dense), title=cat.title(item), genres=genres)


def _bundle_sha256(engine: Engine) -> str:
    return hashlib.sha256((engine.path / "manifest.json").read_bytes()).hexdigest()


@router.get(
    "/{model}",
    response_model=ModelDetail,
    summary="One loaded bundle: what GET /models lists, plus its checksum, titles and sample users",
    responses={
        200: {"content": {"application/json": {"example": _DETAIL_EXAMPLE}}},
        **error_responses("unauthorized", "unknown_model", "model_not_ready"),
    },
)
async def read_model(model: str, engines: EnginesDep) -> ModelDetail:
    from models.bundle import read_samples

    engine = engines.get(model)
    info = model_info(engine).model_dump()
    cat = engine.catalogue
    return ModelDetail(
        **info,
        created_at=engine.manifest.get("created_at"),
        bundle_sha256=await anyio.to_thread.run_sync(_bundle_sha256, engine),
        titled_items=len(cat.info.titles) if cat.info is not None else 0,
        sample_users=len(read_samples(engine.manifest)),
    )


@router.get(
    "/{model}/items",
    response_model=ItemSearch,
    summary="Search the model's catalogue by item id or title",
    description="Best matches first: the item with that id, items with that title (ignoring case and accents), "
    "ids that start with the query, titles that start with it, titles that contain it. An empty query lists "
    "the catalogue (of `domain`) in order.",
    responses={
        200: {"content": {"application/json": {"example": _SEARCH_EXAMPLE}}},
        **error_responses("unauthorized", "unknown_model", "unknown_domain", "validation_error", "model_not_ready"),
    },
)
async def search_catalogue(
    model: str,
    engines: EnginesDep,
    q: Annotated[str, Query(max_length=MAX_TERM_CHARS, description="an item id or (part of) a title")] = "",
    domain: Annotated[str | None, Query(max_length=256, description="only items of this domain")] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_SEARCH_RESULTS)] = 20,
) -> ItemSearch:
    from models.titles import search_items

    engine = engines.get(model)
    k = engine.catalogue.domain_index(domain) if domain is not None else None
    found, total = await anyio.to_thread.run_sync(lambda: search_items(engine.catalogue, q, domain=k, limit=limit))
    return ItemSearch(model=engine.name, query=q, items=[catalogue_item(engine, d) for d in found], total=total)


@router.post(
    "/{model}/items/lookup",
    response_model=ItemLookup,
    summary="Resolve many item ids or exact titles at once",
    openapi_extra=_LOOKUP_OPENAPI,
    responses={
        200: {"content": {"application/json": {"example": {"model": "ml100k", "matches": [_ITEM_EXAMPLE, None]}}}},
        **error_responses("unauthorized", "unknown_model", "bad_json", "validation_error", "model_not_ready"),
    },
)
async def lookup_items(model: str, body: ItemLookupRequest, engines: EnginesDep) -> ItemLookup:
    from models.titles import lookup_item

    engine = engines.get(model)

    def resolve() -> list[Any]:
        hits = [lookup_item(engine.catalogue, t[:MAX_TERM_CHARS]) for t in body.terms]
        return [catalogue_item(engine, d) if d is not None else None for d in hits]

    return ItemLookup(model=engine.name, matches=await anyio.to_thread.run_sync(resolve))


@router.get(
    "/{model}/samples",
    response_model=SampleList,
    summary="Sample users the bundle keeps: the training parts of up to 100 users of its dataset",
    description="Empty for a bundle written without samples.",
    responses={
        200: {"content": {"application/json": {"example": _SAMPLES_EXAMPLE}}},
        **error_responses("unauthorized", "unknown_model", "model_not_ready"),
    },
)
async def list_samples(model: str, engines: EnginesDep) -> SampleList:
    from models.bundle import read_samples

    engine = engines.get(model)
    users = [SampleUser(user_id=u, items=items) for u, items in read_samples(engine.manifest)]
    return SampleList(model=engine.name, users=users)
