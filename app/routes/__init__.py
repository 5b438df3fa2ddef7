"""HTTP routes, one router per resource, plus the OpenAPI helper they share.

Every operation documents its error answers with `error_responses(...)`, so the
schema lists, per status, the `ErrorResponse` model and one example per error code.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from app.errors import STATUS_BY_CODE
from core.schemas import ErrorResponse

_EXAMPLES: dict[str, tuple[str, dict[str, Any]]] = {
    "bad_json": ("request body is not valid JSON: Expecting ',' delimiter", {"position": 57}),
    "unauthorized": ("missing or invalid API key: send 'Authorization: Bearer <key>' or 'X-API-Key: <key>'", {}),
    "unknown_model": ("unknown model 'ml1m'; loaded: ml100k", {"model": "ml1m", "known": ["ml100k"]}),
    "not_found": ("no such path: /regenrate", {}),
    "payload_too_large": (
        "1500 sequences in one request; the limit is 1000 (use POST /jobs for more)",
        {"sequences": 1500, "max": 1000},
    ),
    "unsupported_media_type": (
        "send the body as JSON with 'Content-Type: application/json' (got 'text/plain')",
        {"content_type": "text/plain"},
    ),
    "validation_error": (
        "body.sequences.0.items: List should have at least 1 item after validation, not 0",
        {
            "errors": [
                {
                    "loc": ["body", "sequences", 0, "items"],
                    "msg": "List should have at least 1 item after validation, not 0",
                    "type": "too_short",
                    "input": "<list>",
                }
            ],
            "count": 1,
        },
    ),
    "unknown_item": (
        "unknown item '99999' at position 3 of sequence 0",
        {"item": "99999", "sequence": 0, "position": 3},
    ),
    "unknown_domain": (
        "unknown domain 'Toys'; known domains: action, comedy, drama, thriller",
        {"domain": "Toys", "known": ["action", "comedy", "drama", "thriller"]},
    ),
    "internal_error": ("internal server error; it has been logged", {"request_id": "3f2c9a8e0b1d4c55"}),
    "model_not_ready": ("no model is loaded", {"failures": []}),
    "redis_unavailable": ("Redis at the configured URL does not answer", {"redis": False}),
    "body_timeout": (
        "the request body stalled: no complete body after waiting 30 s for the client",
        {"timeout_s": 30.0, "received_bytes": 65536},
    ),
    "idempotency_mismatch": (
        "this Idempotency-Key was used for job kq3V4o1cB0r8x2m5Zp7yXw with another request (model, target, "
        "options or sequences differ); use a new key for a new job",
        {"job_id": "kq3V4o1cB0r8x2m5Zp7yXw"},
    ),
    "too_many_uploads": (
        "4 uploads are being read already; retry shortly",
        {"max_concurrent_uploads": 4},
    ),
}

_DESCRIPTIONS = {
    400: "Malformed request",
    401: "Missing or invalid API key",
    404: "Not found",
    408: "The request body stalled past the body timeout",
    413: "Request too large",
    415: "Body is not JSON",
    422: "Request is well-formed but invalid",
    429: "Too many requests or queue full",
    500: "Server bug (never expected)",
    503: "Not ready: no model loaded or a dependency is down",
}


def error_example(code: str) -> dict[str, Any]:
    message, details = _EXAMPLES.get(code, (code.replace("_", " "), {}))
    return {"error": {"code": code, "message": message, "details": details}}


def error_responses(*codes: str) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses` for these error codes: ErrorResponse, one example per code."""
    by_status: dict[int, list[str]] = {}
    for code in (*codes, "internal_error"):
        by_status.setdefault(STATUS_BY_CODE[code], []).append(code)
    return {
        status: {
            "model": ErrorResponse,
            "description": _DESCRIPTIONS.get(status, "Error"),
            "content": {
                "application/json": {"examples": {c: {"summary": c, "value": error_example(c)} for c in group}}
            },
        }
        for status, group in sorted(by_status.items())
    }


def document_one_error_shape(schema: dict[str, Any]) -> dict[str, Any]:
    """Rewrite FastAPI's automatic 422 (HTTPValidationError) into our ErrorResponse.

    FastAPI adds that 422 to every operation with parameters; our handler never answers
    in that shape, so leaving it would document a response the service cannot give.
    """
    validation = error_responses("validation_error")[422]
    replacement = {
        "description": validation["description"],
        "content": {
            "application/json": {
                "schema": {"$ref": "#/components/schemas/ErrorResponse"},
                "examples": validation["content"]["application/json"]["examples"],
            }
        },
    }
    for item in schema.get("paths", {}).values():
        for op in item.values():
            response = op.get("responses", {}).get("422") if isinstance(op, dict) else None
            ref = (response or {}).get("content", {}).get("application/json", {}).get("schema", {}).get("$ref", "")
            if ref.endswith("/HTTPValidationError"):
                op["responses"]["422"] = replacement
    components = schema.get("components", {}).get("schemas", {})
    components.setdefault("ErrorResponse", ErrorResponse.model_json_schema(ref_template="#/components/schemas/{model}"))
    components.setdefault("ErrorDetail", components["ErrorResponse"].pop("$defs", {}).get("ErrorDetail", {}))
    for unused in ("HTTPValidationError", "ValidationError"):
        components.pop(unused, None)
    return schema


def document_parsed_bodies(schema: dict[str, Any], *models: type[BaseModel]) -> dict[str, Any]:
    """Add the component schemas of request bodies that routes parse themselves (and
    reference with `$ref` in `openapi_extra`): FastAPI only collects declared ones."""
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    for model in models:
        body = model.model_json_schema(ref_template="#/components/schemas/{model}")
        for name, definition in body.pop("$defs", {}).items():
            components.setdefault(name, definition)
        components.setdefault(model.__name__, body)
    return schema
