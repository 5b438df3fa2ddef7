"""/jobs: bulk regeneration through Redis and the Celery workers.

POST /jobs accepts the /regenerate JSON body (up to `TAESAR_MAX_JSON_JOB_BYTES`), or
an NDJSON upload (one {"user_id"?, "items"} per line, optionally gzip) with model,
target_domain and options in the query string; `app.uploads` reads both without
blocking the event loop. At most `TAESAR_MAX_CONCURRENT_UPLOADS` bodies are read at
once. The upload is validated line by line and streamed into Redis one chunk at a time
(`app.jobstore.JobWriter`), then one Celery task per chunk is sent by name. Results
are served only once the job succeeded (409 before): a partial, ordered download would
need the client to track which chunks it already has, while waiting costs it nothing
(the SDK's `wait_for_job`).

The API never imports workers.tasks or torch for this: it sends with a producer-only
Celery app from `workers.celery_app`, which imports neither.
"""

from __future__ import annotations

import hmac
import re
import secrets
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
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
from app.joblist import remember_job
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
    SequenceIn,
    Stats,
)
from app.settings import Settings
from app.uploads import (
    MAX_INFLATION,
    NDJSON,
    RequestDigest,
    Where,
    body_kind,
    listed,
    ndjson_sequences,
    read_json_job,
)
from workers.celery_app import TASK_PROCESS_CHUNK, create_celery

router = APIRouter(prefix="/jobs", tags=["jobs"])
log = get_logger("jobs")

RETRY_AFTER_REDIS_S = 5
RETRY_AFTER_QUEUE_FULL_S = 30
RETRY_AFTER_UPLOADS_S = 5
_JOB_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")  # the alphabet of secrets.token_urlsafe

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
        str | None,
        Header(
            max_length=255,
            description="same key, same caller, same request: the same job, never a second one; "
            "the same key with another request: 422 idempotency_mismatch",
        ),
    ] = None,
    model: Annotated[str | None, Query(max_length=256, description="NDJSON only: bundle name")] = None,
    target_domain: Annotated[str | None, Query(max_length=256, description="NDJSON only: target domain")] = None,
    options: Annotated[str | None, Query(max_length=4096, description="NDJSON only: RegenerateOptions as JSON")] = None,
) -> Response:
    if idempotency_key is not None and not idempotency_key.strip():
        raise ApiError("bad_request", "the Idempotency-Key header is empty: send a non-empty key, or no header", {})
    kind = body_kind(request)
    async with upload_slot(request, settings):
        if kind == "json":
            req = await read_json_job(request, settings.max_json_job_bytes)
            spec, engine = _job_spec(engines, caller, req.model, req.target_domain, req.options)
            _check_job_size(len(req.sequences), settings)
            sequences: AsyncIterator[tuple[Where, SequenceIn]] = listed(req.sequences)
        else:
            spec, engine = _job_spec(engines, caller, model, _required_target(target_domain), _query_options(options))
            sequences = ndjson_sequences(request, settings.max_body_bytes * MAX_INFLATION, gzip=kind == "gzip")
        job_id = secrets.token_urlsafe(16)  # 128 random bits: unguessable, and the only handle on a job
        async with redis_errors():
            if idempotency_key is not None:
                expires_at = int(time.time()) + settings.job_ttl_s
                existing = await store.claim_idempotency(caller, idempotency_key, job_id, expires_at)
                if existing is not None:
                    return await _replay(store, existing, request, _Staging(spec, engine, settings), sequences)
            try:
                job = await _submit(store, producer, job_id, _Staging(spec, engine, settings), sequences)
            except BaseException:
                if idempotency_key is not None:
                    with anyio.CancelScope(shield=True):
                        await _quietly(store.release_idempotency(caller, idempotency_key, job_id))
                raise
    metrics.count_job("submitted")
    log_event(log, "job_submitted", job_id=job_id, caller=caller, sequences=job.total, chunks=job.n_chunks)
    return _job_response(job, request, 202)


@asynccontextmanager
async def upload_slot(request: Request, settings: Settings) -> AsyncIterator[None]:
    """At most `max_concurrent_uploads` bodies are read at once; a request waits up to
    `upload_wait_s` for a slot (its body stays unread on the wire meanwhile), then 429."""
    slots = getattr(request.app.state, "upload_slots", None)
    if slots is None:
        slots = request.app.state.upload_slots = anyio.Semaphore(settings.max_concurrent_uploads)
    try:
        with anyio.fail_after(settings.upload_wait_s):
            await slots.acquire()
    except TimeoutError:
        raise ApiError(
            "too_many_uploads",
            f"{settings.max_concurrent_uploads} uploads are being read already; retry shortly",
            {"max_concurrent_uploads": settings.max_concurrent_uploads},
            headers={"Retry-After": str(RETRY_AFTER_UPLOADS_S)},
        ) from None
    try:
        yield
    finally:
        slots.release()


@dataclass
class _Staging:
    """What every sequence of one submission is checked against."""

    spec: JobSpec
    engine: Engine
    settings: Settings


class _DigestOnly:
    """Where a replayed request's sequences go: counted and fingerprinted, stored nowhere."""

    def __init__(self) -> None:
        self.count = 0

    async def add(self, user_id: str | None, items: list[str]) -> None:
        self.count += 1


async def _replay(
    store: JobStore,
    job_id: str,
    request: Request,
    staging: _Staging,
    sequences: AsyncIterator[tuple[Where, SequenceIn]],
) -> Response:
    """The job an Idempotency-Key names, if this request asks for the same thing."""
    job = await store.get(job_id)
    if job is None:
        # the first request with this key is still uploading (or just failed)
        raise ApiError(
            "conflict",
            "a request with this Idempotency-Key is still in progress; retry when it has finished",
            headers={"Retry-After": "1"},
        )
    if job.request_digest:
        digest = await _stage(_DigestOnly(), sequences, staging)
        if digest != job.request_digest:
            raise ApiError(
                "idempotency_mismatch",
                f"this Idempotency-Key was used for job {job_id} with another request (model, target, options "
                "or sequences differ); use a new key for a new job",
                {"job_id": job_id},
            )
    metrics.count_job("deduplicated")
    return _job_response(job, request, 200, **{"Idempotent-Replayed": "true"})


async def _submit(
    store: JobStore,
    producer: Celery,
    job_id: str,
    staging: _Staging,
    sequences: AsyncIterator[tuple[Where, SequenceIn]],
) -> JobRecord:
    """Stage every chunk, commit under the queue bound, then enqueue; on any failure
    (a client that went away included) nothing of the job stays in Redis."""
    settings = staging.settings
    # refuse early when the queue is already full, before reading a possibly huge body
    pending = await store.pending_sequences()
    if pending >= settings.max_pending_sequences:
        raise _queue_full(pending, settings)
    writer = await store.open_job(job_id, staging.spec, settings.chunk_size)
    try:
        digest = await _stage(writer, sequences, staging)
        result = await writer.commit(settings.max_pending_sequences, digest)
        if not result.accepted:
            raise _queue_full(result.pending, settings)
        metrics.set_queue_depth(result.pending)
        await remember_job(store, staging.spec.owner, job_id)  # for GET /jobs
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
    sink: JobWriter | _DigestOnly, sequences: AsyncIterator[tuple[Where, SequenceIn]], staging: _Staging
) -> str:
    """Check every sequence and add it to `sink`; returns the request's digest."""
    spec, engine, settings = staging.spec, staging.engine, staging.settings
    digest = RequestDigest(spec.model, spec.target_domain, spec.options)
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
        _check_job_size(sink.count + 1, settings)
        digest.add(seq.user_id, items)
        await sink.add(seq.user_id, items)
    if sink.count == 0:
        raise ApiError("bad_upload", "the upload holds no sequence", {"line": 0})
    return digest.hexdigest()


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
