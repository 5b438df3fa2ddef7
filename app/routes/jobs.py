"""/jobs: bulk regeneration through Redis and the Celery workers.

POST /jobs accepts the /regenerate JSON body, or an NDJSON upload (one
{"user_id"?, "items"} per line, optionally gzip) with model, target_domain and
options in the query string. The upload is validated line by line and streamed into
Redis one chunk at a time (`app.jobstore.JobWriter`), then one Celery task per chunk
is sent by name. Results are served only once the job succeeded (409 before): a
partial, ordered download would need the client to track which chunks it already
has, while waiting costs it nothing (the SDK's `wait_for_job`).

The API never imports workers.tasks or torch for this: it sends with a producer-only
Celery app from `workers.celery_app`, which imports neither.
"""

from __future__ import annotations

import hmac
import re
import secrets
import time
import zlib
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from datetime import datetime, timezone
from typing import Annotated, Any, Literal

import anyio
import anyio.to_thread
from celery import Celery
from fastapi import APIRouter, Depends, Header, Query, Request, Response
from fastapi.responses import StreamingResponse
from kombu.exceptions import OperationalError as KombuOperationalError
from pydantic import ValidationError

from app import metrics
from app.deps import CallerDep, EnginesDep, RedisDep, SettingsDep
from app.engines import Engine, Engines
from app.errors import ApiError, sanitize_errors
from app.jobstore import UNAVAILABLE_ERRORS, JobRecord, JobSpec, JobStore, JobWriter
from app.logging import get_logger, log_event
from app.routes import error_responses
from app.schemas import (
    ErrorDetail,
    JobInfo,
    JobLinks,
    JobStatus,
    Progress,
    RegenerateOptions,
    RegenerateRequest,
    SequenceIn,
    Stats,
)
from app.settings import Settings
from workers.celery_app import TASK_PROCESS_CHUNK, create_celery

router = APIRouter(prefix="/jobs", tags=["jobs"])
log = get_logger("jobs")

NDJSON = "application/x-ndjson"
GZIP_TYPES = frozenset({"application/gzip", "application/x-gzip"})
JSON_TYPES = frozenset({"application/json"})
RETRY_AFTER_REDIS_S = 5
RETRY_AFTER_QUEUE_FULL_S = 30
MAX_LINE_BYTES = 8 << 20  # one sequence line; a body without newlines must not grow a buffer forever
INFLATE_STEP = 1 << 20  # decompress at most this much per step, so a gzip bomb is noticed early
MAX_INFLATION = 16  # decompressed bytes allowed per received byte of settings.max_body_bytes
_JOB_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")  # the alphabet of secrets.token_urlsafe
# where a sequence came from, for error messages: ("line", n) in NDJSON (from 1), ("sequence", k) in JSON (from 0)
Where = tuple[str, int]

# -- dependencies -----------------------------------------------------------------------


async def get_store(redis: RedisDep, settings: SettingsDep) -> JobStore:
    return JobStore(redis, settings.key_prefix, settings.job_ttl_s)


async def get_producer(request: Request, settings: SettingsDep) -> Celery:
    """A send-only Celery app, built once per API app (no connection until the first send)."""
    producer = getattr(request.app.state, "job_producer", None)
    if producer is None:
        producer = request.app.state.job_producer = create_celery(settings)
    return producer


StoreDep = Annotated[JobStore, Depends(get_store)]
ProducerDep = Annotated[Celery, Depends(get_producer)]


@asynccontextmanager
async def redis_errors() -> AsyncIterator[None]:
    """Redis (or the broker on it) being down is a 503 the client may retry, never a 500."""
    try:
        yield
    except (*UNAVAILABLE_ERRORS, KombuOperationalError) as exc:
        log_event(log, "redis_unavailable", level=30, error=type(exc).__name__)
        raise ApiError(
            "redis_unavailable",
            "the job queue (Redis) is unavailable; retry later",
            {"redis": False},
            headers={"Retry-After": str(RETRY_AFTER_REDIS_S)},
        ) from None


# -- responses ---------------------------------------------------------------------------


def _time(ts: float | None) -> datetime | None:
    return datetime.fromtimestamp(ts, timezone.utc) if ts is not None else None


def job_info(job: JobRecord, request: Request) -> JobInfo:
    base = f"{request.scope.get('root_path', '')}/jobs/{job.id}"
    return JobInfo(
        id=job.id,
        status=JobStatus(job.status),
        model=job.model,
        target_domain=job.target_domain,
        progress=Progress(done=job.done, total=job.total),
        decisions=Stats(kept=job.kept, replaced=job.replaced, discarded=job.discarded),
        created_at=_time(job.created_at),
        started_at=_time(job.started_at),
        finished_at=_time(job.finished_at),
        expires_at=_time(job.expires_at),
        error=ErrorDetail(**job.error) if job.error else None,
        links=JobLinks(self=base, results=f"{base}/results"),
    )


def _job_response(job: JobRecord, request: Request, status_code: int, **headers: str) -> Response:
    info = job_info(job, request)
    return Response(
        info.model_dump_json(),
        status_code=status_code,
        media_type="application/json",
        headers={"Location": info.links.self, **headers},
    )


async def owned_job(store: JobStore, job_id: str, caller: str) -> JobRecord:
    """The caller's job; someone else's job is indistinguishable from a missing one."""
    # only ids we could have issued reach Redis: '<id>:tries' would name another key of the job
    job = await store.get(job_id) if _JOB_ID.fullmatch(job_id) else None
    if job is None or not hmac.compare_digest(job.owner.encode(), caller.encode()):
        raise ApiError("job_not_found", f"no job {job_id[:64]!r} (it may have expired)", {"job_id": job_id[:64]})
    return job


# -- POST /jobs --------------------------------------------------------------------------

_EXAMPLE_JOB = {
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

_UPLOAD_OPENAPI: dict[str, Any] = {
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


@router.post(
    "",
    status_code=202,
    response_model=JobInfo,
    summary="Queue a bulk regeneration job (JSON body or NDJSON/gzip upload)",
    openapi_extra=_UPLOAD_OPENAPI,
    responses={
        200: {
            "model": JobInfo,
            "description": "Idempotency-Key seen before: the existing job (header `Idempotent-Replayed: true`)",
            "content": {"application/json": {"example": {**_EXAMPLE_JOB, "status": "running"}}},
        },
        202: {"content": {"application/json": {"example": _EXAMPLE_JOB}}},
        **error_responses(
            "bad_json",
            "bad_upload",
            "unauthorized",
            "unknown_model",
            "conflict",
            "payload_too_large",
            "unsupported_media_type",
            "validation_error",
            "unknown_item",
            "unknown_domain",
            "queue_full",
            "model_not_ready",
            "redis_unavailable",
        ),
    },
)
async def create_job(
    request: Request,
    settings: SettingsDep,
    caller: CallerDep,
    engines: EnginesDep,
    store: StoreDep,
    producer: ProducerDep,
    idempotency_key: Annotated[
        str | None, Header(max_length=255, description="same key, same caller: the same job, never a second one")
    ] = None,
    model: Annotated[str | None, Query(max_length=256, description="NDJSON only: bundle name")] = None,
    target_domain: Annotated[str | None, Query(max_length=256, description="NDJSON only: target domain")] = None,
    options: Annotated[str | None, Query(max_length=4096, description="NDJSON only: RegenerateOptions as JSON")] = None,
) -> Response:
    kind = _body_kind(request)
    if kind == "json":
        req = _parse_json_body(await request.body())
        spec, engine = _job_spec(engines, caller, req.model, req.target_domain, req.options)
        _check_job_size(len(req.sequences), settings)
        sequences: AsyncIterator[tuple[Where, SequenceIn]] = _aiter_list(req.sequences)
    else:
        spec, engine = _job_spec(engines, caller, model, _required_target(target_domain), _query_options(options))
        sequences = ndjson_sequences(request, settings, gzip=kind == "gzip")
    job_id = secrets.token_urlsafe(16)  # 128 random bits: unguessable, and the only handle on a job
    async with redis_errors():
        if idempotency_key is not None:
            expires_at = int(time.time()) + settings.job_ttl_s
            existing = await store.claim_idempotency(caller, idempotency_key, job_id, expires_at)
            if existing is not None:
                return await _replay(store, existing, request)
        try:
            job = await _submit(store, producer, settings, job_id, spec, engine, sequences)
        except BaseException:
            if idempotency_key is not None:
                with anyio.CancelScope(shield=True):
                    await _quietly(store.release_idempotency(caller, idempotency_key, job_id))
            raise
    metrics.count_job("submitted")
    log_event(log, "job_submitted", job_id=job_id, caller=caller, sequences=job.total, chunks=job.n_chunks)
    return _job_response(job, request, 202)


async def _replay(store: JobStore, job_id: str, request: Request) -> Response:
    job = await store.get(job_id)
    if job is None:
        # the first request with this key is still uploading (or just failed)
        raise ApiError(
            "conflict",
            "a request with this Idempotency-Key is still in progress; retry when it has finished",
            headers={"Retry-After": "1"},
        )
    metrics.count_job("deduplicated")
    return _job_response(job, request, 200, **{"Idempotent-Replayed": "true"})


async def _submit(
    store: JobStore,
    producer: Celery,
    settings: Settings,
    job_id: str,
    spec: JobSpec,
    engine: Engine,
    sequences: AsyncIterator[tuple[Where, SequenceIn]],
) -> JobRecord:
    """Stage every chunk, commit under the queue bound, then enqueue; on any failure
    nothing of the job stays in Redis."""
    # refuse early when the queue is already full, before reading a possibly huge body
    pending = await store.pending_sequences()
    if pending >= settings.max_pending_sequences:
        raise _queue_full(pending, settings)
    writer = await store.open_job(job_id, spec, settings.chunk_size)
    try:
        await _stage(writer, sequences, engine, spec, settings)
        result = await writer.commit(settings.max_pending_sequences)
        if not result.accepted:
            raise _queue_full(result.pending, settings)
        metrics.set_queue_depth(result.pending)
        await anyio.to_thread.run_sync(_enqueue, producer, job_id, writer.n_chunks)
    except BaseException:
        # also a committed job whose tasks were not all sent: workers skip a job that is gone
        with anyio.CancelScope(shield=True):
            await _quietly(writer.discard())
        raise
    job = await store.get(job_id)
    assert job is not None
    return job


async def _stage(
    writer: JobWriter,
    sequences: AsyncIterator[tuple[Where, SequenceIn]],
    engine: Engine,
    spec: JobSpec,
    settings: Settings,
) -> None:
    check_items = spec.options.get("unknown_items", "error") == "error"
    async for where, seq in sequences:
        if len(seq.items) > settings.max_items_per_sequence:
            raise ApiError(
                "payload_too_large",
                f"{where[0]} {where[1]}: {len(seq.items)} items; the limit is {settings.max_items_per_sequence}",
                {where[0]: where[1], "items": len(seq.items), "max": settings.max_items_per_sequence},
            )
        items = [str(i) for i in seq.items]
        if check_items:
            # fail the submission, not the job hours later: the engine would refuse it anyway
            unknown = next(((p, i) for p, i in enumerate(items) if engine.catalogue.get(i) is None), None)
            if unknown is not None:
                p, item = unknown
                raise ApiError(
                    "unknown_item",
                    f"{where[0]} {where[1]}, position {p}: item {item[:100]!r} is not in model "
                    f"{engine.name!r}'s catalogue",
                    {where[0]: where[1], "position": p, "item": item[:100]},
                )
        _check_job_size(writer.count + 1, settings)
        await writer.add(seq.user_id, items)
    if writer.count == 0:
        raise ApiError("bad_upload", "the upload holds no sequence", {"line": 0})


def _enqueue(producer: Celery, job_id: str, n_chunks: int) -> None:
    # one producer connection for all chunks: a fresh one per message would dominate
    with producer.producer_or_acquire() as p:
        for i in range(n_chunks):
            producer.send_task(TASK_PROCESS_CHUNK, args=[job_id, i], producer=p)


def _queue_full(pending: int, settings: Settings) -> ApiError:
    metrics.count_job("rejected")
    return ApiError(
        "queue_full",
        f"the job queue is full ({pending} sequences pending, limit {settings.max_pending_sequences}); retry later",
        {"pending": pending, "max_pending": settings.max_pending_sequences},
        headers={"Retry-After": str(RETRY_AFTER_QUEUE_FULL_S)},
    )


def _check_job_size(n: int, settings: Settings) -> None:
    if n > settings.max_pending_sequences:
        raise ApiError(
            "payload_too_large",
            f"a job holds at most {settings.max_pending_sequences} sequences; split the upload",
            {"max": settings.max_pending_sequences},
        )


async def _quietly(awaitable: Any) -> None:
    """Best-effort cleanup: the original error matters more than a failed cleanup (every
    key expires anyway)."""
    try:
        await awaitable
    except Exception as exc:
        log_event(log, "job_cleanup_failed", level=30, error=type(exc).__name__)


# -- request parsing ---------------------------------------------------------------------


def _body_kind(request: Request) -> Literal["json", "ndjson", "gzip"]:
    mime = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if mime in JSON_TYPES:
        return "json"
    if mime == NDJSON or mime in GZIP_TYPES:
        gz = mime in GZIP_TYPES or request.headers.get("content-encoding", "").strip().lower() in ("gzip", "x-gzip")
        return "gzip" if gz else "ndjson"
    raise ApiError(
        "unsupported_media_type",
        f"send 'Content-Type: application/json' (the /regenerate body) or '{NDJSON}' (one sequence per line); "
        f"got {mime[:100] or 'none'!r}",
        {"content_type": mime[:100]},
    )


def _parse_json_body(body: bytes) -> RegenerateRequest:
    try:
        return RegenerateRequest.model_validate_json(body)
    except ValidationError as exc:
        errors = exc.errors()
        if any(e["type"] == "json_invalid" for e in errors):
            raise ApiError("bad_json", "request body is not valid JSON", {"errors": sanitize_errors(errors)}) from None
        clean = sanitize_errors([{**e, "loc": ("body", *e["loc"])} for e in errors])
        where = ".".join(str(p) for p in clean[0]["loc"])
        raise ApiError(
            "validation_error", f"{where}: {clean[0]['msg']}", {"errors": clean, "count": len(errors)}
        ) from None


def _required_target(target_domain: str | None) -> str:
    if target_domain is None:
        raise ApiError(
            "validation_error",
            "query.target_domain: required with an NDJSON upload",
            {"errors": [{"loc": ["query", "target_domain"], "msg": "Field required", "type": "missing"}], "count": 1},
        )
    return target_domain


def _query_options(raw: str | None) -> RegenerateOptions:
    if raw is None:
        return RegenerateOptions()
    try:
        return RegenerateOptions.model_validate_json(raw)
    except ValidationError as exc:
        clean = sanitize_errors([{**e, "loc": ("query", "options", *e["loc"])} for e in exc.errors()])
        where = ".".join(str(p) for p in clean[0]["loc"])
        raise ApiError(
            "validation_error", f"{where}: {clean[0]['msg']}", {"errors": clean, "count": len(clean)}
        ) from None


def _job_spec(
    engines: Engines, caller: str, model: str | None, target: str, options: RegenerateOptions
) -> tuple[JobSpec, Engine]:
    """Resolve the model and check the target domain now, not in a worker later."""
    from app.engines import decode_options

    engine = engines.get(model)
    engine.catalogue.domain_index(target)  # UnknownDomainError -> 422 unknown_domain
    decode_options(options)  # 422 for ablations that exclude each other
    return JobSpec(caller, engine.name, target, options.model_dump(mode="json")), engine


async def _aiter_list(seqs: list[SequenceIn]) -> AsyncIterator[tuple[Where, SequenceIn]]:
    for k, seq in enumerate(seqs):
        yield ("sequence", k), seq


async def ndjson_sequences(
    request: Request, settings: Settings, *, gzip: bool
) -> AsyncIterator[tuple[Where, SequenceIn]]:
    """(("line", number from 1), sequence) for every non-blank line, validated as it arrives."""
    lines = _LineSplitter(gzip, settings.max_body_bytes * MAX_INFLATION)
    async for part in request.stream():
        for number, line in lines.feed(part):
            yield ("line", number), _parse_line(number, line)
    for number, line in lines.finish():
        yield ("line", number), _parse_line(number, line)


def _parse_line(number: int, line: bytes) -> SequenceIn:
    try:
        return SequenceIn.model_validate_json(line)
    except ValidationError as exc:
        err = sanitize_errors(exc.errors())[0]
        where = ".".join(str(p) for p in err["loc"])
        msg = "not valid JSON" if err["type"] == "json_invalid" else f"{where}: {err['msg']}" if where else err["msg"]
        raise ApiError("bad_upload", f"line {number}: {msg}", {"line": number, "error": err}) from None


class _LineSplitter:
    """Bytes in (gzip or plain), complete lines out; gzip is detected by its magic bytes
    too, so a .gz file sent without Content-Encoding still works."""

    def __init__(self, gzip: bool, max_inflated: int) -> None:
        self.gzip = gzip
        self.max_inflated = max_inflated
        self.inflated = 0
        self.z: Any = None
        self.decided = gzip
        self.buf = b""
        self.number = 0
        self.head = b""

    def feed(self, data: bytes) -> Iterator[tuple[int, bytes]]:
        if not self.decided:
            self.head += data
            if len(self.head) < 2:
                return
            self.gzip, self.decided, data, self.head = self.head[:2] == b"\x1f\x8b", True, self.head, b""
        yield from self._lines(self._inflate(data) if self.gzip else data)

    def finish(self) -> Iterator[tuple[int, bytes]]:
        if not self.decided and self.head:
            yield from self._lines(self.head)
        if self.gzip and (self.z is None or not self.z.eof):
            raise ApiError("bad_upload", "the gzip stream is truncated", {"line": self.number + 1})
        if self.buf.strip():
            self.number += 1
            yield self.number, self.buf
        self.buf = b""

    def _inflate(self, data: bytes) -> bytes:
        out: list[bytes] = []
        if self.z is None:
            self.z = zlib.decompressobj(16 + zlib.MAX_WBITS)
        while True:
            try:
                piece = self.z.decompress(data, INFLATE_STEP)
            except zlib.error as exc:
                raise ApiError("bad_upload", f"the body is not valid gzip: {exc}", {"line": self.number + 1}) from None
            self.inflated += len(piece)
            if self.inflated > self.max_inflated:
                raise ApiError(
                    "payload_too_large",
                    f"the upload inflates to more than {self.max_inflated} bytes",
                    {"max_inflated_bytes": self.max_inflated},
                )
            out.append(piece)
            if self.z.unconsumed_tail:  # stopped at INFLATE_STEP with input left
                data = self.z.unconsumed_tail
            elif len(piece) == INFLATE_STEP and not self.z.eof:  # output may still be pending inside zlib
                data = b""
            elif self.z.eof and self.z.unused_data.strip(b"\x00"):  # the next member of a concatenated file
                data, self.z = self.z.unused_data, zlib.decompressobj(16 + zlib.MAX_WBITS)
            else:
                return b"".join(out)

    def _lines(self, data: bytes) -> Iterator[tuple[int, bytes]]:
        if not data:
            return
        parts = (self.buf + data).split(b"\n")
        self.buf = parts.pop()
        if len(self.buf) > MAX_LINE_BYTES:
            raise ApiError(
                "bad_upload", f"line {self.number + 1} is longer than {MAX_LINE_BYTES} bytes", {"line": self.number + 1}
            )
        for line in parts:
            self.number += 1
            if line.strip():
                yield self.number, line


# -- GET / DELETE ------------------------------------------------------------------------


@router.get(
    "/{job_id}",
    response_model=JobInfo,
    summary="Status, progress, decision counts and timings of a job",
    responses={
        200: {"content": {"application/json": {"example": {**_EXAMPLE_JOB, "status": "running"}}}},
        **error_responses("unauthorized", "job_not_found", "redis_unavailable"),
    },
)
async def read_job(job_id: str, request: Request, caller: CallerDep, store: StoreDep) -> Response:
    async with redis_errors():
        job = await owned_job(store, job_id, caller)
    return _job_response(job, request, 200)


@router.get(
    "/{job_id}/results",
    summary="Stream the results in input order: NDJSON (default) or the RecBole atomic file",
    response_class=StreamingResponse,
    responses={
        200: {
            "description": "One DESIGN.md output object per input sequence, in input order; with "
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
    },
)
async def read_job_results(
    job_id: str,
    caller: CallerDep,
    store: StoreDep,
    format: Annotated[Literal["jsonl", "recbole"], Query(description="jsonl (NDJSON) or recbole")] = "jsonl",
) -> StreamingResponse:
    async with redis_errors():
        job = await owned_job(store, job_id, caller)
        if job.status != "succeeded":
            raise ApiError(
                "job_not_finished",
                f"job {job_id} is {job.status}; results are served once it has succeeded",
                {"status": job.status, "done": job.done, "total": job.total},
                headers={"Retry-After": "5"} if job.status in ("queued", "running") else None,
            )
        if not await store.results_complete(job):
            raise ApiError("job_not_found", f"the results of job {job_id} have expired", {"job_id": job_id})
    media, suffix = (NDJSON, "jsonl") if format == "jsonl" else ("text/tab-separated-values", "inter")
    return StreamingResponse(
        store.iter_results(job, format),
        media_type=media,
        headers={
            "Content-Disposition": f'attachment; filename="{job_id}.{suffix}"',
            "X-Taesar-Sequences": str(job.total),
        },
    )


@router.delete(
    "/{job_id}",
    response_model=JobInfo,
    summary="Cancel a job: pending chunks are skipped, a running chunk stops at its next batch",
    responses={
        200: {"content": {"application/json": {"example": {**_EXAMPLE_JOB, "status": "cancelled"}}}},
        **error_responses("unauthorized", "job_not_found", "redis_unavailable"),
    },
)
async def cancel_job(job_id: str, request: Request, caller: CallerDep, store: StoreDep) -> Response:
    async with redis_errors():
        await owned_job(store, job_id, caller)
        status = await store.cancel(job_id)  # a final job keeps its status: cancelling is idempotent
        job = await owned_job(store, job_id, caller)
    if status == "cancelled":
        metrics.count_job("cancelled")
    return _job_response(job, request, 200)
