"""/jobs: bulk regeneration through Redis and the Celery workers.

POST /jobs accepts the /regenerate JSON body (up to `TAESAR_MAX_JSON_JOB_BYTES`), or
an NDJSON upload (one {"user_id"?, "items"} per line, optionally gzip) with model,
target_domain and options in the query string; `app.uploads` reads both without
blocking the event loop. At most `TAESAR_MAX_CONCURRENT_UPLOADS` bodies are read at
once. The upload is validated line by line (`app.submission`) and streamed into Redis
one chunk at a time (`core.jobstore.JobWriter`), then one Celery task per chunk is sent
by name. Results are served only once the job succeeded (409 before): a partial,
ordered download would need the client to track which chunks it already has, while
waiting costs it nothing (the SDK's `wait_for_job`).

The API sends with a producer-only Celery app built from its settings
(`core.queue.create_celery`): no task code and no torch is imported for that. The
examples and documented answers of these operations live in `app.routes.jobs_openapi`.
"""

from __future__ import annotations

import hmac
import re
import secrets
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime, timezone
from typing import Annotated, Any, Literal

import anyio
import anyio.to_thread
from celery import Celery
from fastapi import APIRouter, Depends, Header, Query, Request, Response
from fastapi.responses import StreamingResponse

from app.deps import CallerDep, EnginesDep, RedisDep, SettingsDep
from app.errors import ApiError
from app.routes.jobs_openapi import (
    CANCEL_RESPONSES,
    CREATE_RESPONSES,
    READ_RESPONSES,
    RESULTS_RESPONSES,
    UPLOAD_OPENAPI,
)
from app.submission import (
    DigestOnly,
    Staging,
    check_job_size,
    job_spec,
    query_options,
    queue_full,
    required_target,
    stage,
    upload_slot,
)
from app.uploads import MAX_INFLATION, NDJSON, Where, body_kind, listed, ndjson_sequences, read_json_job
from core import metrics
from core.jobstore import JobRecord, JobStore
from core.jobstore.owners import remember_job
from core.logging import get_logger, log_event
from core.queue import QUEUE_UNAVAILABLE_ERRORS, create_celery, enqueue_chunks
from core.schemas import ErrorDetail, JobInfo, JobLinks, JobStatus, Progress, SequenceIn, Stats

router = APIRouter(prefix="/jobs", tags=["jobs"])
log = get_logger("jobs")

RETRY_AFTER_REDIS_S = 5
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
    except QUEUE_UNAVAILABLE_ERRORS as exc:
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
        decisions=Stats(**job.decisions.as_dict()),
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


@router.post(
    "",
    status_code=202,
    response_model=JobInfo,
    summary="Queue a bulk regeneration job (JSON body or NDJSON/gzip upload)",
    openapi_extra=UPLOAD_OPENAPI,
    responses=CREATE_RESPONSES,
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
            spec, engine = job_spec(engines, caller, req.model, req.target_domain, req.options)
            check_job_size(len(req.sequences), settings)
            sequences: AsyncIterator[tuple[Where, SequenceIn]] = listed(req.sequences)
        else:
            spec, engine = job_spec(engines, caller, model, required_target(target_domain), query_options(options))
            sequences = ndjson_sequences(request, settings.max_body_bytes * MAX_INFLATION, gzip=kind == "gzip")
        job_id = secrets.token_urlsafe(16)  # 128 random bits: unguessable, and the only handle on a job
        async with redis_errors():
            if idempotency_key is not None:
                expires_at = int(time.time()) + settings.job_ttl_s
                existing = await store.claim_idempotency(caller, idempotency_key, job_id, expires_at)
                if existing is not None:
                    return await _replay(store, existing, request, Staging(spec, engine, settings), sequences)
            try:
                job = await _submit(store, producer, job_id, Staging(spec, engine, settings), sequences)
            except BaseException:
                if idempotency_key is not None:
                    with anyio.CancelScope(shield=True):
                        await _quietly(store.release_idempotency(caller, idempotency_key, job_id))
                raise
    metrics.count_job("submitted")
    log_event(log, "job_submitted", job_id=job_id, caller=caller, sequences=job.total, chunks=job.n_chunks)
    return _job_response(job, request, 202)


async def _replay(
    store: JobStore,
    job_id: str,
    request: Request,
    staging: Staging,
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
        digest = await stage(DigestOnly(), sequences, staging)
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
    staging: Staging,
    sequences: AsyncIterator[tuple[Where, SequenceIn]],
) -> JobRecord:
    """Stage every chunk, commit under the queue bound, then enqueue; on any failure
    (a client that went away included) nothing of the job stays in Redis."""
    settings = staging.settings
    # refuse early when the queue is already full, before reading a possibly huge body
    pending = await store.pending_sequences()
    if pending >= settings.max_pending_sequences:
        raise queue_full(pending, settings)
    writer = await store.open_job(job_id, staging.spec, settings.chunk_size)
    try:
        digest = await stage(writer, sequences, staging)
        result = await writer.commit(settings.max_pending_sequences, digest)
        if not result.accepted:
            raise queue_full(result.pending, settings)
        metrics.set_queue_depth(result.pending)
        await remember_job(store, staging.spec.owner, job_id)  # for GET /jobs
        await anyio.to_thread.run_sync(enqueue_chunks, producer, job_id, writer.n_chunks)
    except BaseException:
        # also a committed job whose tasks were not all sent: workers skip a job that is gone
        with anyio.CancelScope(shield=True):
            await _quietly(writer.discard())
        raise
    job = await store.get(job_id)
    assert job is not None
    return job


async def _quietly(awaitable: Any) -> None:
    """Best-effort cleanup: the original error matters more than a failed cleanup (every
    key expires anyway)."""
    try:
        await awaitable
    except Exception as exc:
        log_event(log, "job_cleanup_failed", level=30, error=type(exc).__name__)


# -- GET / DELETE ------------------------------------------------------------------------


@router.get(
    "/{job_id}",
    response_model=JobInfo,
    summary="Status, progress, decision counts and timings of a job",
    responses=READ_RESPONSES,
)
async def read_job(job_id: str, request: Request, caller: CallerDep, store: StoreDep) -> Response:
    async with redis_errors():
        job = await owned_job(store, job_id, caller)
    return _job_response(job, request, 200)


@router.get(
    "/{job_id}/results",
    summary="Stream the results in input order: NDJSON (default) or the RecBole atomic file",
    response_class=StreamingResponse,
    responses=RESULTS_RESPONSES,
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
    responses=CANCEL_RESPONSES,
)
async def cancel_job(job_id: str, request: Request, caller: CallerDep, store: StoreDep) -> Response:
    async with redis_errors():
        await owned_job(store, job_id, caller)
        await store.cancel(job_id)  # a final job keeps its status: cancelling is idempotent
        job = await owned_job(store, job_id, caller)
    return _job_response(job, request, 200)
