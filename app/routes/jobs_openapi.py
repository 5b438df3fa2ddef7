"""The OpenAPI documentation of /jobs: examples and the documented answers of each
operation, kept out of the router so that it reads as behaviour."""

from __future__ import annotations

from typing import Any

from app.routes import error_responses
from app.uploads import NDJSON
from core.schemas import JobInfo

EXAMPLE_JOB = {
    "id": "kq3V4o1cB0r8x2m5Zp7yXw",
    "status": "queued",
    "model": "ml100k",
    "target_domain": "drama",
    "progress": {"done": 0, "total": 250000},
    "decisions": {"kept": 0, "replaced": 0, "discarded": 0},
    "created_at": "2026-01-01T12:00:00Z",
    "started_at": None,
    "finished_at": None,
    "expires_at": "2026-01-08T12:00:00Z",
    "error": None,
    "links": {"self": "/jobs/kq3V4o1cB0r8x2m5Zp7yXw", "results": "/jobs/kq3V4o1cB0r8x2m5Zp7yXw/results"},
}

UPLOAD_OPENAPI: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": {"$ref": "#/components/schemas/RegenerateRequest"},
                "example": {
                    "target_domain": "drama",
                    "sequences": [{"user_id": "u42", "items": ["50", "181", "258", "100", "127"]}],
                    "options": {"unknown_items": "drop"},
                },
            },
            NDJSON: {
                "schema": {"type": "string", "format": "binary"},
                "example": '{"user_id": "u42", "items": ["50", "181", "258"]}\n{"items": ["1", "2"]}\n',
            },
        },
        "description": "The /regenerate body, or NDJSON lines {user_id?, items} (send `Content-Encoding: gzip` "
        "or a gzip file as is); with NDJSON, pass model, target_domain and options in the query.",
    }
}

CREATE_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "model": JobInfo,
        "description": "Idempotency-Key seen before: the existing job (header `Idempotent-Replayed: true`)",
        "content": {"application/json": {"example": {**EXAMPLE_JOB, "status": "running"}}},
    },
    202: {"content": {"application/json": {"example": EXAMPLE_JOB}}},
    **error_responses(
        "bad_request",
        "bad_json",
        "bad_upload",
        "unauthorized",
        "unknown_model",
        "body_timeout",
        "conflict",
        "payload_too_large",
        "unsupported_media_type",
        "validation_error",
        "unknown_item",
        "unknown_domain",
        "idempotency_mismatch",
        "queue_full",
        "too_many_uploads",
        "model_not_ready",
        "redis_unavailable",
    ),
}

READ_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"content": {"application/json": {"example": {**EXAMPLE_JOB, "status": "running"}}}},
    **error_responses("unauthorized", "job_not_found", "redis_unavailable"),
}

RESULTS_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "One output object per input sequence, in input order; with "
        "`format=recbole`, a header line then one `user_id  item_id_list  item_id` row per sequence "
        "of at least two items. `X-Taesar-Sequences` gives the number of input sequences.",
        "content": {
            NDJSON: {
                "example": '{"user_id":"u42","target_domain":"drama","sequence":["258","100"],'
                '"decisions":[...],"stats":{"kept":1,"replaced":1,"discarded":1}}\n'
            },
            "text/tab-separated-values": {
                "example": "user_id:token\titem_id_list:token_seq\titem_id:token\nu42\t258\t100\n"
            },
        },
    },
    **error_responses("unauthorized", "job_not_found", "job_not_finished", "redis_unavailable"),
}

CANCEL_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"content": {"application/json": {"example": {**EXAMPLE_JOB, "status": "cancelled"}}}},
    **error_responses("unauthorized", "job_not_found", "redis_unavailable"),
}
