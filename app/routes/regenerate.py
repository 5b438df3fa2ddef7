"""POST /regenerate: online regeneration on the API's own engine.

The handler parses the body in slices (app/regenerate_body.py), checks limits and picks
the engine; decoding, the conversion to output records (the same `models.output` code
`taesar regenerate` writes with) and the JSON encoding all run in a worker thread, so
a large answer never stalls the event loop either. Concurrent calls are micro-batched
on the way (app/batching.py), with fair turns per API key and admission by cost. A
client that disconnects while its call waits or decodes gets nothing decoded for it:
its call leaves the queue at once, and a decode already running is awaited by nobody
(the request is logged as a client abort, status 499).
"""

from __future__ import annotations

import asyncio
import functools
import json
from collections.abc import Awaitable
from typing import Any, TypeVar

from fastapi import APIRouter, Request, Response
from starlette.requests import ClientDisconnect
from starlette.types import Receive

from app.deps import CallerDep, EnginesDep, SettingsDep
from app.errors import is_json, not_json
from app.regenerate_body import parse_regenerate_body
from app.routes import error_responses
from core import metrics
from core.engines import Engine, decode_options
from core.schemas import RegenerateRequest, RegenerateResponse
from core.settings import Settings
from models.tally import Tally

T = TypeVar("T")

router = APIRouter(tags=["regenerate"])

_REQUEST_EXAMPLES: dict[str, Any] = {
    "minimal": {
        "summary": "One sequence, the only loaded model",
        "value": {"target_domain": "drama", "sequences": [{"user_id": "u42", "items": ["50", "181", "258", "100"]}]},
    },
    "explain": {
        "summary": "Named model, top candidates, unknown items dropped",
        "value": {
            "model": "ml100k",
            "target_domain": "drama",
            "sequences": [{"user_id": "u42", "items": ["50", "181", "999999", "100"]}],
            "options": {"explain": True, "explain_top_k": 2, "unknown_items": "drop"},
        },
    },
    "ablation": {
        "summary": "Ablation: no global score",
        "value": {
            "target_domain": "drama",
            "sequences": [{"items": [50, 181, 258]}],
            "options": {"ablations": {"no_global": True}},
        },
    },
}
_RESPONSE_EXAMPLE = {
    "model": "ml100k",
    "target_domain": "drama",
    "results": [
        {
            "user_id": "u42",
            "target_domain": "drama",
            "sequence": ["127", "100"],
            "decisions": [
                {"position": 0, "item": "50", "domain": "action", "action": "discard", "reason": "no_context"},
                {
                    "position": 1,
                    "item": "181",
                    "domain": "action",
                    "action": "replace",
                    "replacement": "127",
                    "explain": {"global": [["127", 7.31], ["50", 6.02]], "local": [["127", 7.9], ["98", 7.4]]},
                },
                {"position": 2, "item": "999999", "action": "discard", "reason": "unknown_item"},
                {"position": 3, "item": "100", "domain": "drama", "action": "keep"},
            ],
            "stats": {"kept": 1, "replaced": 1, "discarded": 2},
        }
    ],
    "stats": {"kept": 1, "replaced": 1, "discarded": 2},
}


def render(engine: Engine, body: RegenerateRequest, results: list[Any]) -> tuple[bytes, Tally]:
    """Encode the engine's results as the response (runs in the decode thread): (JSON bytes, totals)."""
    from models.output import to_output_line

    target, titles = body.target_domain, body.options.include_titles
    # the very dicts `taesar regenerate` writes as JSONL lines, not a re-validated copy:
    # equal output by construction, and no second pass over a large answer
    lines = [
        to_output_line(r, engine.catalogue, target, s.user_id, titles=titles)
        for s, r in zip(body.sequences, results, strict=True)
    ]
    totals = Tally.total(r.stats for r in results)
    payload = {"model": engine.name, "target_domain": target, "results": lines, "stats": totals.as_dict()}
    return json.dumps(payload, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode(), totals


_REQUEST_OPENAPI: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": {"$ref": "#/components/schemas/RegenerateRequest"},
                "examples": _REQUEST_EXAMPLES,
            }
        },
    }
}


async def read_request(request: Request, settings: Settings) -> RegenerateRequest:
    """The body as a RegenerateRequest; 415 unless the content type is JSON."""
    content_type = request.headers.get("content-type")
    body = await request.body()
    if body and not is_json(content_type):
        raise not_json(content_type)
    return await parse_regenerate_body(body, settings.max_sequences_per_request, settings.max_items_per_sequence)


async def unless_disconnected(receive: Receive, work: Awaitable[T]) -> T:
    """`await work`, unless the client disconnects first: then cancel it and raise
    ClientDisconnect. Once the body is read, `receive` only returns when the client has gone."""
    task = asyncio.ensure_future(work)
    watch = asyncio.ensure_future(_disconnected(receive))
    try:
        await asyncio.wait((task, watch), return_when=asyncio.FIRST_COMPLETED)
    finally:
        for pending in (task, watch):
            if not pending.done():
                pending.cancel()
    if task.done() and not task.cancelled():
        return task.result()
    raise ClientDisconnect()


async def _disconnected(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


@router.post(
    "/regenerate",
    response_model=RegenerateResponse,
    summary="Regenerate sequences into one target domain",
    description="Every item gets keep / replace / discard. At most `TAESAR_MAX_SEQUENCES_PER_REQUEST` "
    "sequences (413 above it: use POST /jobs) of at most `TAESAR_MAX_ITEMS_PER_SEQUENCE` items (422). "
    "Concurrent calls are decoded together (micro-batching); 429 `queue_full` with `Retry-After` when "
    "more than `TAESAR_MICROBATCH_MAX_QUEUED_SEQUENCES` sequences or `TAESAR_MICROBATCH_MAX_QUEUED_COST` "
    "cost units (items; explanations weigh more) already wait for the model, or when the caller's API key "
    "already holds `TAESAR_MICROBATCH_KEY_SHARE` of that cost. Calls of different API keys take turns.",
    openapi_extra=_REQUEST_OPENAPI,
    responses={
        200: {"content": {"application/json": {"example": _RESPONSE_EXAMPLE}}},
        **error_responses(
            "bad_json",
            "unauthorized",
            "unknown_model",
            "payload_too_large",
            "unsupported_media_type",
            "body_timeout",
            "validation_error",
            "unknown_item",
            "unknown_domain",
            "queue_full",
            "model_not_ready",
        ),
    },
)
async def regenerate_sequences(
    request: Request, engines: EnginesDep, settings: SettingsDep, caller: CallerDep
) -> Response:
    body = await read_request(request, settings)  # the sequence and item caps are checked as it parses
    options = decode_options(body.options)
    engine = engines.get(body.model)
    engine.catalogue.domain_index(body.target_domain)  # 422 unknown_domain before waiting for a thread
    with metrics.DECODE_INFLIGHT.track_inprogress():
        decoded = engines.regenerate(
            engine,
            body.target_domain,
            options,
            [s.items for s in body.sequences],
            unknown_items=body.options.unknown_items,
            finish=functools.partial(render, engine, body),
            owner=caller,
        )
        content, totals = await unless_disconnected(request.receive, decoded)
    metrics.observe_decisions("sync", engine.name, body.target_domain, len(body.sequences), totals)
    return Response(content, media_type="application/json")
