"""Malformed and hostile requests: each one answers its documented status and error code, in
the one error shape, and never a 500.

One table, run against the real app in-process with the real Redis behind /jobs (under a
key prefix no worker listens to). A refused upload must leave nothing in Redis.
"""

from __future__ import annotations

import gzip
import json
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
import redis

from app.errors import STATUS_BY_CODE
from core.schemas import ErrorResponse
from tests.api_support import REDIS_URL, api_client, delete_prefix, model_dir_with, settings_for

pytestmark = pytest.mark.anyio

KEY = "bad-input-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
MAX_SEQUENCES = 5
MAX_ITEMS = 40
MAX_BODY = 64 * 1024  # /jobs; /regenerate gets 1/8 of it: 8 KiB
MAX_PENDING = 50
JSON_TYPE = {"content-type": "application/json"}
NDJSON_TYPE = {"content-type": "application/x-ndjson"}


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"


@dataclass
class Env:
    client: httpx.AsyncClient
    cat: dict[str, Any]
    prefix: str
    job_id: str  # a real queued job of KEY's

    def job_ids(self) -> set[str]:
        r = redis.Redis.from_url(REDIS_URL)
        ids = {k.decode().split(":")[2] for k in r.scan_iter(f"{self.prefix}:job:*", count=1000)}
        r.close()
        return ids


@pytest.fixture(scope="module")
async def env(tiny_bundle: Path, tmp_path_factory: pytest.TempPathFactory, catalogue: dict) -> AsyncIterator[Env]:
    prefix = f"test-bad-{uuid.uuid4().hex[:8]}"
    settings = settings_for(
        model_dir_with(tiny_bundle, tmp_path_factory.mktemp("bad")),
        key_prefix=prefix,
        api_keys=[KEY],
        max_sequences_per_request=MAX_SEQUENCES,
        max_items_per_sequence=MAX_ITEMS,
        max_body_bytes=MAX_BODY,
        max_pending_sequences=MAX_PENDING,
        job_ttl_s=600,
    )
    try:
        async with api_client(settings) as client:
            body = {"target_domain": catalogue["domains"][0], "sequences": [{"items": catalogue["item_ids"][:3]}]}
            r = await client.post("/jobs", json=body, headers=AUTH)
            assert r.status_code == 202, r.text
            yield Env(client, catalogue, prefix, r.json()["id"])
    finally:
        delete_prefix(prefix)


Body = Callable[[dict[str, Any]], Any]


@dataclass
class Case:
    name: str
    status: int
    code: str
    method: str = "POST"
    path: str | Callable[[Env], str] = "/regenerate"
    json: Body | None = None  # catalogue -> JSON body
    content: bytes | Callable[[dict[str, Any]], bytes] | None = None
    headers: dict[str, str] = field(default_factory=dict)
    params: Callable[[dict[str, Any]], dict[str, str]] | None = None
    auth: dict[str, str] = field(default_factory=lambda: dict(AUTH))
    check: Callable[[dict[str, Any]], bool] | None = None


def body(cat: dict[str, Any], **changes: Any) -> dict[str, Any]:
    return {"target_domain": cat["domains"][0], "sequences": [{"items": cat["item_ids"][:3]}], **changes}


def with_seqs(*seqs: Any, **changes: Any) -> Body:
    return lambda cat: body(cat, sequences=[s(cat) if callable(s) else s for s in seqs], **changes)


def with_options(**options: Any) -> Body:
    return lambda cat: body(cat, options=options)


def lines(cat: dict[str, Any], n: int, bad: dict[int, bytes] | None = None) -> bytes:
    """n good NDJSON lines, with line k (from 1) replaced by bad[k]."""
    items = cat["item_ids"]
    out = [json.dumps({"user_id": f"u{k}", "items": items[k % 5 : k % 5 + 3]}).encode() for k in range(n)]
    for k, line in (bad or {}).items():
        out[k - 1] = line
    return b"\n".join(out) + b"\n"


def target(cat: dict[str, Any], **extra: str) -> dict[str, str]:
    return {"target_domain": cat["domains"][0], **extra}


def raw(text: bytes) -> Callable[[dict[str, Any]], bytes]:
    return lambda cat: text


REGENERATE = [
    # -- not JSON, or JSON of the wrong kind
    Case("malformed json", 400, "bad_json", content=b'{"target_domain": "x", ', headers=JSON_TYPE),
    Case("truncated json", 400, "bad_json", content=b"{", headers=JSON_TYPE),
    Case("invalid utf-8", 400, "bad_json", content=b'{"target_domain": "\xff\xfe"}', headers=JSON_TYPE),
    Case("nesting past the parser's limit", 400, "bad_json", content=b"[" * 3000 + b"]" * 3000, headers=JSON_TYPE),
    Case(
        "a 5000-digit number",
        400,
        "bad_json",
        content=b'{"target_domain": "x", "sequences": [{"items": [' + b"9" * 5000 + b"]}]}",
        headers=JSON_TYPE,
    ),
    Case("json null", 422, "validation_error", content=b"null", headers=JSON_TYPE),
    Case("json array", 422, "validation_error", content=b"[1, 2, 3]", headers=JSON_TYPE),
    Case("json string", 422, "validation_error", content=b'"regenerate please"', headers=JSON_TYPE),
    Case("empty body", 422, "validation_error", content=b"", headers=JSON_TYPE),
    # -- wrong content types
    Case("text/plain", 415, "unsupported_media_type", content=b"hello", headers={"content-type": "text/plain"}),
    Case("no content type", 415, "unsupported_media_type", content=b'{"target_domain": "x"}'),
    Case(
        "form-encoded",
        415,
        "unsupported_media_type",
        content=b"target_domain=x",
        headers={"content-type": "application/x-www-form-urlencoded"},
    ),
    Case("xml", 415, "unsupported_media_type", content=b"<x/>", headers={"content-type": "application/xml"}),
    # -- wrong types and shapes
    Case("target_domain a number", 422, "validation_error", json=lambda c: body(c, target_domain=7)),
    Case(
        "target_domain missing",
        422,
        "validation_error",
        json=lambda c: {"sequences": [{"items": ["1"]}]},
        check=lambda d: d["errors"][0]["loc"] == ["body", "target_domain"],
    ),
    Case("sequences a string", 422, "validation_error", json=lambda c: body(c, sequences="abc")),
    Case("no sequences", 422, "validation_error", json=lambda c: body(c, sequences=[])),
    Case("an empty sequence", 422, "validation_error", json=with_seqs({"items": []})),
    Case("a nested list as item", 422, "validation_error", json=with_seqs({"items": [["a"]]})),
    Case("a null item", 422, "validation_error", json=with_seqs({"items": [None]})),
    Case("a float item", 422, "validation_error", json=with_seqs({"items": [1.5]})),
    Case(
        "user_id a number",
        422,
        "validation_error",
        json=with_seqs(lambda c: {"user_id": 42, "items": c["item_ids"][:2]}),
    ),
    Case(
        "user_id of 300 characters",
        422,
        "validation_error",
        json=with_seqs(lambda c: {"user_id": "u" * 300, "items": c["item_ids"][:2]}),
        check=lambda d: len(d["errors"][0]["input"]) <= 101,  # echoed clipped
    ),
    Case("an unexpected field", 422, "validation_error", json=lambda c: body(c, colour="red")),
    Case("model a list", 422, "validation_error", json=lambda c: body(c, model=["tiny"])),
    # -- negative or absurd options
    Case("unknown option", 422, "validation_error", json=with_options(fast=True)),
    Case("explain_top_k negative", 422, "validation_error", json=with_options(explain=True, explain_top_k=-3)),
    Case("explain_top_k absurd", 422, "validation_error", json=with_options(explain_top_k=10**30)),
    Case(
        "explain_top_k infinite",
        422,
        "validation_error",
        content=b'{"target_domain": "x", "sequences": [{"items": ["a"]}], "options": {"explain_top_k": 1e999}}',
        headers=JSON_TYPE,
    ),
    Case(
        "NaN item",
        422,
        "validation_error",
        content=b'{"target_domain": "x", "sequences": [{"items": [NaN]}]}',
        headers=JSON_TYPE,
    ),
    Case("explain not a boolean", 422, "validation_error", json=with_options(explain="maybe")),
    Case("unknown_items unknown", 422, "validation_error", json=with_options(unknown_items="keep")),
    Case(
        "contradictory ablations",
        422,
        "validation_error",
        json=with_options(ablations={"no_global": True, "no_local": True}),
    ),
    Case("unknown ablation", 422, "validation_error", json=with_options(ablations={"no_everything": True})),
    # -- unknown models, domains, items (unicode and very long ids included)
    Case(
        "unknown model",
        404,
        "unknown_model",
        json=lambda c: body(c, model="nope"),
        check=lambda d: d["known"] == ["tiny"],
    ),
    Case(
        "a 5000-character model name",
        404,
        "unknown_model",
        json=lambda c: body(c, model="m" * 5000),
        check=lambda d: len(d["model"]) <= 201,
    ),
    Case("unknown domain", 422, "unknown_domain", json=lambda c: body(c, target_domain="Toys")),
    Case("emoji domain", 422, "unknown_domain", json=lambda c: body(c, target_domain="🎬 Dräma 日本")),
    Case(
        "control characters in domain", 422, "unknown_domain", json=lambda c: body(c, target_domain="x\x00\n\x1b[31m")
    ),
    Case(
        "unknown item",
        422,
        "unknown_item",
        json=with_seqs(lambda c: {"items": c["item_ids"][:2]}, lambda c: {"items": [c["item_ids"][0], "zzz"]}),
        check=lambda d: (d["sequence"], d["position"], d["item"]) == (1, 1, "zzz"),
    ),
    Case("unicode item", 422, "unknown_item", json=with_seqs({"items": ["ítem-ñ-日本-🎬"]})),
    Case(
        "a 5000-character item",
        422,
        "unknown_item",
        json=with_seqs({"items": ["q" * 5000]}),
        check=lambda d: len(json.dumps(d)) < 1000,
    ),
    # -- limits
    Case(
        "too many sequences",
        413,
        "payload_too_large",
        json=lambda c: body(c, sequences=[{"items": c["item_ids"][:2]}] * (MAX_SEQUENCES + 1)),
        check=lambda d: d == {"at_least": MAX_SEQUENCES + 1, "max": MAX_SEQUENCES},
    ),
    Case(
        "a sequence too long",
        422,
        "validation_error",
        json=lambda c: body(c, sequences=[{"items": (c["item_ids"] * 9)[: MAX_ITEMS + 1]}]),
        check=lambda d: d["errors"][0]["loc"] == ["body", "sequences", 0, "items"],
    ),
    Case(
        "body over the limit",
        413,
        "payload_too_large",
        json=with_seqs({"items": ["q" * 9000]}),
        check=lambda d: d["max_bytes"] == MAX_BODY // 8,
    ),
    # -- routing and authentication
    Case("wrong method", 405, "method_not_allowed", method="PUT", content=b"{}", headers=JSON_TYPE),
    Case("unknown path", 404, "not_found", method="GET", path="/regenerate/../admin"),
    Case("no key", 401, "unauthorized", json=body, auth={}),
    Case("wrong key", 401, "unauthorized", json=body, auth={"Authorization": "Bearer not-the-key"}),
    Case("a prefix of the key", 401, "unauthorized", json=body, auth={"X-API-Key": KEY[:-1]}),
    # sent as UTF-8 bytes, as a client would; the server reads header bytes as latin-1
    Case("non-ASCII key", 401, "unauthorized", json=body, auth={"X-API-Key": "kéy-ünïcode".encode()}),  # type: ignore[dict-item]
    Case("basic auth scheme", 401, "unauthorized", json=body, auth={"Authorization": f"Basic {KEY}"}),
]

JOBS = [
    Case(
        "jobs: csv upload",
        415,
        "unsupported_media_type",
        path="/jobs",
        content=b"a,b\n",
        headers={"content-type": "text/csv"},
    ),
    Case(
        "jobs: ndjson without target_domain",
        422,
        "validation_error",
        path="/jobs",
        content=lambda c: lines(c, 2),
        headers=NDJSON_TYPE,
    ),
    Case(
        "jobs: a bad line in the middle",
        400,
        "bad_upload",
        path="/jobs",
        content=lambda c: lines(c, 5, {3: b'{"items": ["a", ]}'}),
        headers=NDJSON_TYPE,
        params=target,
        check=lambda d: d["line"] == 3,
    ),
    Case(
        "jobs: a line that is an array",
        400,
        "bad_upload",
        path="/jobs",
        content=lambda c: lines(c, 4, {2: b"[1, 2]"}),
        headers=NDJSON_TYPE,
        params=target,
        check=lambda d: d["line"] == 2,
    ),
    Case(
        "jobs: a line with an unknown field",
        400,
        "bad_upload",
        path="/jobs",
        content=lambda c: lines(c, 4, {4: b'{"user": "u", "items": ["a"]}'}),
        headers=NDJSON_TYPE,
        params=target,
        check=lambda d: d["line"] == 4,
    ),
    Case(
        "jobs: only blank lines",
        400,
        "bad_upload",
        path="/jobs",
        content=b"\n \n\n",
        headers=NDJSON_TYPE,
        params=target,
    ),
    Case(
        "jobs: a line with too many items",
        413,
        "payload_too_large",
        path="/jobs",
        content=lambda c: lines(c, 3, {2: json.dumps({"items": (c["item_ids"] * 9)[: MAX_ITEMS + 1]}).encode()}),
        headers=NDJSON_TYPE,
        params=target,
        check=lambda d: d["line"] == 2,
    ),
    Case(
        "jobs: an unknown item on line 2",
        422,
        "unknown_item",
        path="/jobs",
        content=lambda c: lines(c, 3, {2: b'{"items": ["no-such-item"]}'}),
        headers=NDJSON_TYPE,
        params=target,
        check=lambda d: (d["line"], d["item"]) == (2, "no-such-item"),
    ),
    Case(
        "jobs: broken gzip",
        400,
        "bad_upload",
        path="/jobs",
        content=b"\x1f\x8b\x08\x00garbage-not-deflate" * 4,
        headers=NDJSON_TYPE | {"content-encoding": "gzip"},
        params=target,
    ),
    Case(
        "jobs: truncated gzip",
        400,
        "bad_upload",
        path="/jobs",
        content=lambda c: gzip.compress(lines(c, 40))[:-12],
        headers=NDJSON_TYPE | {"content-encoding": "gzip"},
        params=target,
    ),
    Case(
        "jobs: gzip bomb",
        413,
        "payload_too_large",
        path="/jobs",
        content=gzip.compress(b"\n" * (4 << 20)),  # ~4 KiB that inflate to 4 MiB
        headers=NDJSON_TYPE | {"content-encoding": "gzip"},
        params=target,
    ),
    Case(
        "jobs: options not JSON",
        422,
        "validation_error",
        path="/jobs",
        content=lambda c: lines(c, 2),
        headers=NDJSON_TYPE,
        params=lambda c: target(c, options="{not json"),
    ),
    Case(
        "jobs: absurd option",
        422,
        "validation_error",
        path="/jobs",
        content=lambda c: lines(c, 2),
        headers=NDJSON_TYPE,
        params=lambda c: target(c, options='{"explain_top_k": -1}'),
    ),
    Case(
        "jobs: unknown model",
        404,
        "unknown_model",
        path="/jobs",
        content=lambda c: lines(c, 2),
        headers=NDJSON_TYPE,
        params=lambda c: target(c, model="nope"),
    ),
    Case(
        "jobs: unknown domain",
        422,
        "unknown_domain",
        path="/jobs",
        content=lambda c: lines(c, 2),
        headers=NDJSON_TYPE,
        params=lambda c: {"target_domain": "../../etc/passwd"},
    ),
    Case(
        "jobs: model name of 300 characters",
        422,
        "validation_error",
        path="/jobs",
        content=lambda c: lines(c, 2),
        headers=NDJSON_TYPE,
        params=lambda c: target(c, model="m" * 300),
    ),
    Case(
        "jobs: more sequences than the queue holds",
        413,
        "payload_too_large",
        path="/jobs",
        json=lambda c: body(c, sequences=[{"items": c["item_ids"][:2]}] * (MAX_PENDING + 1)),
    ),
    Case(
        "jobs: ndjson over the body limit",
        413,
        "payload_too_large",
        path="/jobs",
        content=lambda c: lines(c, 4) * (MAX_BODY // 200),
        headers=NDJSON_TYPE,
        params=target,
    ),
    Case(
        "jobs: idempotency key of 300 characters",
        422,
        "validation_error",
        path="/jobs",
        json=body,
        headers={"idempotency-key": "k" * 300},
    ),
    Case("jobs: no key", 401, "unauthorized", path="/jobs", json=body, auth={}),
    # -- hostile job ids
    Case("job id: path traversal", 404, "not_found", method="GET", path="/jobs/..%2F..%2Fetc%2Fpasswd"),
    Case("job id: 10000 characters", 404, "job_not_found", method="GET", path="/jobs/" + "a" * 10_000),
    Case("job id: unicode", 404, "job_not_found", method="GET", path="/jobs/ジョブ-🎬"),
    Case("job id: redis glob", 404, "job_not_found", method="GET", path="/jobs/*"),
    Case("job id: NUL byte", 404, "job_not_found", method="DELETE", path="/jobs/abc%00def"),
    Case(
        "job id: another key of a real job",
        404,
        "job_not_found",
        method="GET",
        path=lambda e: f"/jobs/{e.job_id}:tries",
    ),
    Case(
        "job id: a chunk key of a real job",
        404,
        "job_not_found",
        method="GET",
        path=lambda e: f"/jobs/{e.job_id}:in:0/results",
    ),
    Case(
        "results: unknown format",
        422,
        "validation_error",
        method="GET",
        path=lambda e: f"/jobs/{e.job_id}/results?format=xml",
    ),
    Case(
        "results of a queued job",
        409,
        "job_not_finished",
        method="GET",
        path=lambda e: f"/jobs/{e.job_id}/results",
        check=lambda d: d["status"] == "queued",
    ),
    Case("cancel an unknown job", 404, "job_not_found", method="DELETE", path="/jobs/" + "A" * 22),
]

CASES = REGENERATE + JOBS


def test_the_table_has_at_least_40_distinct_cases() -> None:
    assert len(CASES) >= 40 and len({c.name for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
async def test_a_bad_request_answers_its_status_and_code(env: Env, case: Case) -> None:
    cat = env.cat
    path = case.path(env) if callable(case.path) else case.path
    headers = case.auth | case.headers
    params = case.params(cat) if case.params else None
    if case.json is not None:
        r = await env.client.request(case.method, path, json=case.json(cat), headers=headers, params=params)
    else:
        content = case.content(cat) if callable(case.content) else case.content
        r = await env.client.request(case.method, path, content=content, headers=headers, params=params)
    assert r.status_code == case.status, r.text
    assert r.headers["content-type"] == "application/json"
    payload = r.json()
    assert set(payload) == {"error"} and set(payload["error"]) == {"code", "message", "details"}, payload
    error = ErrorResponse.model_validate(payload).error
    assert error.code == case.code and STATUS_BY_CODE[case.code] == case.status, payload
    assert error.message and len(error.message) < 1000  # hostile input is never echoed at length
    if case.check is not None:
        assert case.check(error.details), error.details
    if case.status == 401:
        assert r.headers["www-authenticate"] == "Bearer"
    if case.method == "POST" and path.startswith("/jobs"):
        assert env.job_ids() == {env.job_id}, "a refused upload left keys in Redis"


# -- backpressure and limits ------------------------------------------------------------------


@pytest.fixture
async def bounded(tiny_bundle: Path, tmp_path: Path) -> AsyncIterator[tuple[httpx.AsyncClient, str]]:
    """An app whose queue holds 100 pending sequences, on a prefix no worker consumes."""
    prefix = f"test-bound-{uuid.uuid4().hex[:8]}"
    settings = settings_for(
        model_dir_with(tiny_bundle, tmp_path),
        key_prefix=prefix,
        api_keys=[KEY],
        max_pending_sequences=100,
        max_body_bytes=64 * 1024,
        chunk_size=10,
        job_ttl_s=600,
    )
    try:
        async with api_client(settings) as client:
            yield client, prefix
    finally:
        delete_prefix(prefix)


def pending(prefix: str) -> int:
    r = redis.Redis.from_url(REDIS_URL)
    total = sum(int(v) for v in r.hgetall(f"{prefix}:pending").values())
    r.close()
    return total


async def test_the_queue_bound_is_exact_and_answers_429_with_retry_after(
    bounded: tuple[httpx.AsyncClient, str], catalogue: dict
) -> None:
    client, prefix = bounded
    seqs = [{"items": catalogue["item_ids"][:3]}]
    post = lambda n: client.post("/jobs", json=body(catalogue, sequences=seqs * n), headers=AUTH)  # noqa: E731
    first, second = await post(60), await post(40)  # exactly the bound: accepted
    assert first.status_code == second.status_code == 202
    full = await post(1)
    ndjson_full = await client.post(
        "/jobs", params=target(catalogue), content=lines(catalogue, 1), headers=AUTH | NDJSON_TYPE
    )
    for r in (full, ndjson_full):
        assert r.status_code == 429 and r.json()["error"]["code"] == "queue_full", r.text
        assert int(r.headers["retry-after"]) > 0
        assert r.json()["error"]["details"] == {"pending": 100, "max_pending": 100}
    await client.delete(f"/jobs/{second.json()['id']}", headers=AUTH)  # cancelling frees its share
    assert (await post(40)).status_code == 202
    assert pending(prefix) == 100


async def test_concurrent_submissions_never_overfill_the_queue(
    bounded: tuple[httpx.AsyncClient, str], catalogue: dict
) -> None:
    """The bound is checked and taken in one atomic step (a Lua script), so ten racing
    uploads of 30 sequences each get exactly three places in a queue of 100."""
    client, prefix = bounded
    answers: list[httpx.Response] = []

    async def submit() -> None:
        answers.append(
            await client.post(
                "/jobs", params=target(catalogue), content=lines(catalogue, 30), headers=AUTH | NDJSON_TYPE
            )
        )

    async with anyio.create_task_group() as tg:
        for _ in range(10):
            tg.start_soon(submit)
    codes = sorted(r.status_code for r in answers)
    assert codes == [202] * 3 + [429] * 7, [r.text for r in answers if r.status_code not in (202, 429)]
    assert pending(prefix) == 90
    accepted = {r.json()["id"] for r in answers if r.status_code == 202}
    r = redis.Redis.from_url(REDIS_URL)
    stored = {k.decode().split(":")[2] for k in r.scan_iter(f"{prefix}:job:*", count=1000)}
    r.close()
    assert stored == accepted  # the refused uploads left nothing behind


async def test_a_streamed_upload_without_content_length_is_cut_off_at_the_body_limit(
    bounded: tuple[httpx.AsyncClient, str], catalogue: dict
) -> None:
    client, prefix = bounded
    line = lines(catalogue, 1)

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(2000):  # ~100 KiB, over the 64 KiB limit, in small pieces
            yield line

    r = await client.post("/jobs", params=target(catalogue), content=chunks(), headers=AUTH | NDJSON_TYPE)
    assert "content-length" not in r.request.headers
    assert r.status_code == 413 and r.json()["error"]["code"] == "payload_too_large", r.text
    assert pending(prefix) == 0
