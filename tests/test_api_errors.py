"""Every documented error path answers its status and code, in the one error shape.

Table-driven: each case is one bad request, the status and code it must get, and
optionally a check of the details. No case may ever produce a 500.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.errors import STATUS_BY_CODE, ApiError
from app.main import create_app
from core.schemas import ErrorResponse
from models.errors import DataError
from tests.api_support import api_client, model_dir_with, settings_for

pytestmark = pytest.mark.anyio

MAX_SEQUENCES = 5
MAX_ITEMS = 40
MAX_BODY = 64 * 1024  # /regenerate gets 1/8 of it: 8 KiB


@pytest.fixture
async def client(tiny_bundle: Path, tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    settings = settings_for(
        model_dir_with(tiny_bundle, tmp_path),
        max_sequences_per_request=MAX_SEQUENCES,
        max_items_per_sequence=MAX_ITEMS,
        max_body_bytes=MAX_BODY,
    )
    async with api_client(settings) as c:
        yield c


@dataclass
class Case:
    name: str
    status: int
    code: str
    method: str = "POST"
    path: str = "/regenerate"
    json: Any = None  # a callable(catalogue) -> body, or a body
    content: bytes | None = None
    headers: dict[str, str] = field(default_factory=dict)
    check: Callable[[dict[str, Any]], bool] | None = None


def ok_body(cat: dict[str, Any], **changes: Any) -> dict[str, Any]:
    base = {"target_domain": cat["domains"][0], "sequences": [{"items": cat["item_ids"][:3]}]}
    return {**base, **changes}


def seqs(n: int, length: int = 2) -> Callable[[dict], dict]:
    return lambda cat: ok_body(cat, sequences=[{"items": (cat["item_ids"] * length)[:length]}] * n)


CASES = [
    Case(
        "malformed json",
        400,
        "bad_json",
        content=b'{"target_domain": "x", ',
        headers={"content-type": "application/json"},
        check=lambda d: isinstance(d["position"], int),
    ),
    Case("json is not an object", 422, "validation_error", json=[1, 2, 3]),
    Case("text body", 415, "unsupported_media_type", content=b"hello", headers={"content-type": "text/plain"}),
    Case("no body", 422, "validation_error"),
    Case(
        "missing target",
        422,
        "validation_error",
        json=lambda c: {"sequences": [{"items": ["1"]}]},
        check=lambda d: d["errors"][0]["loc"] == ["body", "target_domain"],
    ),
    Case("sequences not a list", 422, "validation_error", json=lambda c: ok_body(c, sequences="abc")),
    Case("no sequences", 422, "validation_error", json=lambda c: ok_body(c, sequences=[])),
    Case("empty sequence", 422, "validation_error", json=lambda c: ok_body(c, sequences=[{"items": []}])),
    Case("item of a wrong type", 422, "validation_error", json=lambda c: ok_body(c, sequences=[{"items": [[1]]}])),
    Case(
        "NaN where an int belongs",
        422,
        "validation_error",
        content=b'{"target_domain": "x", "sequences": [{"items": [NaN]}], "options": {"explain_top_k": Infinity}}',
        headers={"content-type": "application/json"},
    ),
    Case("unexpected field", 422, "validation_error", json=lambda c: ok_body(c, colour="red")),
    Case("unknown option", 422, "validation_error", json=lambda c: ok_body(c, options={"fast": True})),
    Case("bad unknown_items", 422, "validation_error", json=lambda c: ok_body(c, options={"unknown_items": "keep"})),
    Case("explain_top_k zero", 422, "validation_error", json=lambda c: ok_body(c, options={"explain_top_k": 0})),
    Case("explain_top_k huge", 422, "validation_error", json=lambda c: ok_body(c, options={"explain_top_k": 10**9})),
    Case(
        "contradictory ablations",
        422,
        "validation_error",
        json=lambda c: ok_body(c, options={"ablations": {"no_global": True, "no_local": True}}),
    ),
    Case(
        "user id too long",
        422,
        "validation_error",
        json=lambda c: ok_body(c, sequences=[{"user_id": "u" * 300, "items": c["item_ids"][:2]}]),
        check=lambda d: len(d["errors"][0]["input"]) <= 101,
    ),
    Case(
        "unknown model",
        404,
        "unknown_model",
        json=lambda c: ok_body(c, model="nope"),
        check=lambda d: d["known"] == ["tiny"],
    ),
    Case(
        "unknown domain",
        422,
        "unknown_domain",
        json=lambda c: ok_body(c, target_domain="Toys"),
        check=lambda d: d["domain"] == "Toys",
    ),
    Case(
        "unknown item",
        422,
        "unknown_item",
        json=lambda c: ok_body(c, sequences=[{"items": c["item_ids"][:2]}, {"items": [c["item_ids"][0], "zzz"]}]),
        check=lambda d: d["sequence"] == 1 and d["position"] == 1 and d["item"] == "zzz",
    ),
    Case(
        "huge unknown item is not echoed in full",
        422,
        "unknown_item",
        json=lambda c: ok_body(c, sequences=[{"items": ["q" * 5000]}]),
        check=lambda d: len(json.dumps(d)) < 1000,
    ),
    Case(
        "too many sequences",
        413,
        "payload_too_large",
        json=seqs(MAX_SEQUENCES + 1),
        # counted up to the first one too many: the rest of the body is not decoded
        check=lambda d: d == {"at_least": MAX_SEQUENCES + 1, "max": MAX_SEQUENCES},
    ),
    Case(
        "sequence too long",
        422,
        "validation_error",
        json=seqs(2, MAX_ITEMS + 1),
        check=lambda d: d["errors"][0]["loc"] == ["body", "sequences", 0, "items"] and d["count"] == 2,
    ),
    Case(
        "body over the limit",
        413,
        "payload_too_large",
        json=lambda c: ok_body(c, sequences=[{"items": ["q" * 9000]}]),
        check=lambda d: d["max_bytes"] == MAX_BODY // 8,
    ),
    Case("unknown path", 404, "not_found", method="GET", path="/regenrate"),
    Case("wrong method", 405, "method_not_allowed", method="GET", path="/regenerate"),
    Case("unknown job", 404, "job_not_found", method="GET", path="/jobs/0123456789abcdef0123456789abcdef"),
]


async def _send(client: httpx.AsyncClient, case: Case, cat: dict[str, Any]) -> httpx.Response:
    payload = case.json(cat) if callable(case.json) else case.json
    if payload is not None:
        return await client.request(case.method, case.path, json=payload, headers=case.headers)
    return await client.request(case.method, case.path, content=case.content, headers=case.headers)


def assert_error_shape(r: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/json"
    body = r.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message", "details"}
    error = ErrorResponse.model_validate(body).error
    assert error.code == code and STATUS_BY_CODE[code] == status and error.message
    return error.details


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
async def test_error_path_answers_its_status_and_code(
    client: httpx.AsyncClient, catalogue: dict[str, Any], case: Case
) -> None:
    details = assert_error_shape(await _send(client, case, catalogue), case.status, case.code)
    if case.check is not None:
        assert case.check(details), details


async def test_every_error_code_of_the_table_is_documented_on_its_operation(client: httpx.AsyncClient) -> None:
    schema = (await client.get("/openapi.json")).json()
    for case in CASES:
        op = schema["paths"].get(case.path, {}).get(case.method.lower())
        if op is None or case.code in ("method_not_allowed",):
            continue  # undocumented paths and methods are Starlette's 404/405
        documented = op["responses"].get(str(case.status), {})
        examples = documented.get("content", {}).get("application/json", {}).get("examples", {})
        assert case.code in examples, (case.name, case.path, case.code)


async def test_streamed_body_over_the_limit_is_cut_off_without_content_length(
    client: httpx.AsyncClient, catalogue: dict[str, Any]
) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        yield b'{"target_domain": "x", "sequences": [{"items": ["'
        for _ in range(100):
            yield b"a" * 1024  # 100 KiB, far above the 8 KiB limit
        yield b'"]}]}'

    r = await client.post("/regenerate", content=chunks(), headers={"content-type": "application/json"})
    assert "content-length" not in r.request.headers
    assert_error_shape(r, 413, "payload_too_large")


async def test_gzip_body_is_not_json(client: httpx.AsyncClient, catalogue: dict[str, Any]) -> None:
    blob = gzip.compress(json.dumps(ok_body(catalogue)).encode())
    r = await client.post("/regenerate", content=blob, headers={"content-type": "application/json"})
    assert_error_shape(r, 400, "bad_json")


async def test_validation_details_are_bounded_for_many_bad_items(client: httpx.AsyncClient) -> None:
    body = {"target_domain": "x", "sequences": [{"items": [None] * 40}] * MAX_SEQUENCES}
    details = assert_error_shape(await client.post("/regenerate", json=body), 422, "validation_error")
    # each item fails both members of str | int
    assert len(details["errors"]) == 20 and details["count"] == 2 * 40 * MAX_SEQUENCES
    assert details["errors"][0]["loc"] == ["body", "sequences", 0, "items", 0, "str"]


async def test_the_sequence_cap_answers_before_the_rest_of_the_body_is_decoded(client: httpx.AsyncClient) -> None:
    # bad from the sequence after the cap on: 413 names the cap, not what follows
    good = [{"items": ["0-0"]}] * (MAX_SEQUENCES + 1)
    body = {"target_domain": "x", "sequences": [*good, *([{"items": [None]}] * 100)]}
    details = assert_error_shape(await client.post("/regenerate", json=body), 413, "payload_too_large")
    assert details == {"at_least": MAX_SEQUENCES + 1, "max": MAX_SEQUENCES}


# -- handlers for errors the routes above cannot provoke --------------------------------


@pytest.fixture
async def raising_client(tiny_bundle: Path, tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    """An app with extra routes that raise, answered without re-raising into the test."""
    app = create_app(settings_for(model_dir_with(tiny_bundle, tmp_path)))

    @app.get("/boom")
    async def boom() -> None:
        raise RuntimeError("secret internals")

    @app.get("/data-error")
    async def data_error() -> None:
        raise DataError("column 'item_id' is missing", {"column": "item_id"})

    @app.get("/queue-full")
    async def queue_full() -> None:
        raise ApiError("queue_full", "too many pending sequences", {"pending": 9}, headers={"Retry-After": "7"})

    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as c:
            yield c


async def test_unexpected_exception_answers_500_internal_error_without_internals(
    raising_client: httpx.AsyncClient,
) -> None:
    r = await raising_client.get("/boom")
    details = assert_error_shape(r, 500, "internal_error")
    assert "secret internals" not in r.text
    assert details["request_id"] == r.headers["x-request-id"]


async def test_domain_errors_from_models_map_by_their_code(raising_client: httpx.AsyncClient) -> None:
    details = assert_error_shape(await raising_client.get("/data-error"), 422, "bad_data")
    assert details == {"column": "item_id"}


async def test_api_error_headers_reach_the_client(raising_client: httpx.AsyncClient) -> None:
    r = await raising_client.get("/queue-full")
    assert_error_shape(r, 429, "queue_full")
    assert r.headers["retry-after"] == "7"
