"""POST /regenerate: online regeneration on the API's own engine.

The handler only checks limits and picks the engine; decoding, the conversion to
output records (the same `models.output` code `taesar regenerate` writes with) and
the JSON encoding all run in a worker thread, so a large answer never stalls the
event loop either. Concurrent calls are micro-batched on the way (app/batching.py).
"""

from __future__ import annotations

import functools
import json
from typing import Annotated, Any

from fastapi import APIRouter, Body, Response

from app import metrics
from app.deps import EnginesDep, SettingsDep
from app.engines import Engine, decode_options
from app.errors import ApiError
from app.routes import error_responses
from app.schemas import RegenerateRequest, RegenerateResponse
from app.settings import Settings

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


def check_limits(body: RegenerateRequest, settings: Settings) -> None:
    """413 for too many sequences (the request is too big for the online path: use
    /jobs), 422 for a sequence longer than the per-sequence cap (that sequence is bad)."""
    n, cap = len(body.sequences), settings.max_sequences_per_request
    if n > cap:
        raise ApiError(
            "payload_too_large",
            f"{n} sequences in one request; the limit is {cap} (use POST /jobs for more)",
            {"sequences": n, "max": cap},
        )
    longest = settings.max_items_per_sequence
    too_long = [(i, len(s.items)) for i, s in enumerate(body.sequences) if len(s.items) > longest]
    if too_long:
        errors = [
            {
                "loc": ["body", "sequences", i, "items"],
                "msg": f"{k} items; at most {longest} are allowed",
                "type": "too_long",
            }
            for i, k in too_long[:20]
        ]
        raise ApiError(
            "validation_error",
            f"body.sequences.{too_long[0][0]}.items: {errors[0]['msg']}",
            {"errors": errors, "count": len(too_long)},
        )


def render(engine: Engine, body: RegenerateRequest, results: list[Any]) -> tuple[bytes, dict[str, int]]:
    """Encode the engine's results as the response (runs in the decode thread): (JSON bytes, totals)."""
    from models.output import to_output_line

    target = body.target_domain
    # the very dicts `taesar regenerate` writes as JSONL lines, not a re-validated copy:
    # equal output by construction, and no second pass over a large answer
    lines = [
        to_output_line(r, engine.catalogue, target, s.user_id) for s, r in zip(body.sequences, results, strict=True)
    ]
    totals = {k: sum(r.stats[k] for r in results) for k in ("kept", "replaced", "discarded")}
    payload = {"model": engine.name, "target_domain": target, "results": lines, "stats": totals}
    return json.dumps(payload, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode(), totals


@router.post(
    "/regenerate",
    response_model=RegenerateResponse,
    summary="Regenerate sequences into one target domain",
    description="Every item gets keep / replace / discard. At most `TAESAR_MAX_SEQUENCES_PER_REQUEST` "
    "sequences (413 above it: use POST /jobs) of at most `TAESAR_MAX_ITEMS_PER_SEQUENCE` items (422). "
    "Concurrent calls are decoded together (micro-batching); 429 `queue_full` with `Retry-After` when "
    "more than `TAESAR_MICROBATCH_MAX_QUEUED_SEQUENCES` sequences already wait for the model.",
    responses={
        200: {"content": {"application/json": {"example": _RESPONSE_EXAMPLE}}},
        **error_responses(
            "bad_json",
            "unauthorized",
            "unknown_model",
            "payload_too_large",
            "unsupported_media_type",
            "validation_error",
            "unknown_item",
            "unknown_domain",
            "queue_full",
            "model_not_ready",
        ),
    },
)
async def regenerate_sequences(
    body: Annotated[RegenerateRequest, Body(openapi_examples=_REQUEST_EXAMPLES)],
    engines: EnginesDep,
    settings: SettingsDep,
) -> Response:
    check_limits(body, settings)
    options = decode_options(body.options)
    engine = engines.get(body.model)
    engine.catalogue.domain_index(body.target_domain)  # 422 unknown_domain before waiting for a thread
    with metrics.DECODE_INFLIGHT.track_inprogress():
        content, totals = await engines.regenerate(
            engine,
            body.target_domain,
            options,
            [s.items for s in body.sequences],
            unknown_items=body.options.unknown_items,
            finish=functools.partial(render, engine, body),
        )
    metrics.observe_decisions("sync", engine.name, body.target_domain, len(body.sequences), totals)
    return Response(content, media_type="application/json")
