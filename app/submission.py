"""What POST /jobs checks before a job exists: the upload slot, the job's model, target
and options, and every sequence of the upload (item cap, unknown items, the job size),
as the sequences stream from `app.uploads` into the job store or into a digest."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Protocol

import anyio
from fastapi import Request
from pydantic import ValidationError

from app.errors import ApiError, validation_failure
from app.uploads import RequestDigest, Where
from core import metrics
from core.engines import Engine, Engines, decode_options
from core.jobstore import JobSpec
from core.schemas import RegenerateOptions, SequenceIn
from core.settings import Settings

RETRY_AFTER_QUEUE_FULL_S = 30
RETRY_AFTER_UPLOADS_S = 5


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
class Staging:
    """What every sequence of one submission is checked against."""

    spec: JobSpec
    engine: Engine
    settings: Settings


class Sink(Protocol):
    """Where checked sequences go: the job store's `JobWriter`, or a `DigestOnly`."""

    @property
    def count(self) -> int: ...

    async def add(self, user_id: str | None, items: list[str]) -> None: ...


class DigestOnly:
    """Where a replayed request's sequences go: counted and fingerprinted, stored nowhere."""

    def __init__(self) -> None:
        self.count = 0

    async def add(self, user_id: str | None, items: list[str]) -> None:
        self.count += 1


async def stage(sink: Sink, sequences: AsyncIterator[tuple[Where, SequenceIn]], staging: Staging) -> str:
    """Check every sequence and add it to `sink`; returns the request's digest."""
    spec, engine, settings = staging.spec, staging.engine, staging.settings
    digest = RequestDigest(spec.model, spec.target_domain, spec.options)
    check_items = spec.options.get("unknown_items", "error") == "error"
    async for (unit, number), seq in sequences:
        if len(seq.items) > settings.max_items_per_sequence:
            raise ApiError(
                "payload_too_large",
                f"{unit} {number}: {len(seq.items)} items; the limit is {settings.max_items_per_sequence}",
                {unit: number, "items": len(seq.items), "max": settings.max_items_per_sequence},
            )
        items = [str(i) for i in seq.items]
        if check_items:  # fail the submission, not the job hours later: the engine would refuse it anyway
            engine.check_known([items], first=number, unit=unit)
        check_job_size(sink.count + 1, settings)
        digest.add(seq.user_id, items)
        await sink.add(seq.user_id, items)
    if sink.count == 0:
        raise ApiError("bad_upload", "the upload holds no sequence", {"line": 0})
    return digest.hexdigest()


def job_spec(
    engines: Engines, caller: str, model: str | None, target: str, options: RegenerateOptions
) -> tuple[JobSpec, Engine]:
    """Resolve the model and check the target domain and options now, not in a worker later."""
    engine = engines.get(model)
    engine.catalogue.domain_index(target)  # UnknownDomainError -> 422 unknown_domain
    decode_options(options)  # 422 for ablations that exclude each other
    return JobSpec(caller, engine.name, target, options.model_dump(mode="json")), engine


def check_job_size(n: int, settings: Settings) -> None:
    if n > settings.max_pending_sequences:
        raise ApiError(
            "payload_too_large",
            f"a job holds at most {settings.max_pending_sequences} sequences; split the upload",
            {"max": settings.max_pending_sequences},
        )


def queue_full(pending: int, settings: Settings) -> ApiError:
    metrics.count_job("rejected")
    return ApiError(
        "queue_full",
        f"the job queue is full ({pending} sequences pending, limit {settings.max_pending_sequences}); retry later",
        {"pending": pending, "max_pending": settings.max_pending_sequences},
        headers={"Retry-After": str(RETRY_AFTER_QUEUE_FULL_S)},
    )


# -- the query of an NDJSON upload ---------------------------------------------------------


def required_target(target_domain: str | None) -> str:
    if target_domain is None:
        raise ApiError(
            "validation_error",
            "query.target_domain: required with an NDJSON upload",
            {"errors": [{"loc": ["query", "target_domain"], "msg": "Field required", "type": "missing"}], "count": 1},
        )
    return target_domain


def query_options(raw: str | None) -> RegenerateOptions:
    if raw is None:
        return RegenerateOptions()
    try:
        return RegenerateOptions.model_validate_json(raw)
    except ValidationError as exc:
        raise validation_failure([{**e, "loc": ("query", "options", *e["loc"])} for e in exc.errors()]) from None
