"""The chunk task: load chunk -> check cancelled -> decode -> store. Thin on purpose;
the job store makes every step safe to repeat.

The task is a shared task: it belongs to whichever Celery app the process built
(`workers.celery_app.worker_app`), under its stable name `core.queue.TASK_PROCESS_CHUNK`.

Failure policy:
- Redis unreachable (transient): retry with exponential backoff, at most MAX_RETRIES
  times, then fail the job if Redis answers by then.
- Anything retrying cannot fix (bad payload, unknown item with unknown_items=error,
  missing model, a bug): fail the job at once with a clear error.
- A chunk that keeps coming back without finishing (its worker was killed, e.g. by
  the OOM killer, MAX_DELIVERIES times) fails the job instead of looping forever.
"""

from __future__ import annotations

import contextlib
from typing import Any

from celery import Task, shared_task

from core import metrics
from core.jobstore import UNAVAILABLE_ERRORS, BadChunk, ChunkSkip
from core.logging import get_logger, log_event
from core.queue import TASK_PROCESS_CHUNK
from models.errors import TaesarError
from workers.loading import JobStopped, WorkerContext, context, decode_chunk

log = get_logger("worker")

MAX_RETRIES = 5
BACKOFF_S = 2.0  # 2, 4, 8, 16, 32 s: rides out a Redis restart or failover
# every delivery counts (retries included): retries + a few worker crashes
MAX_DELIVERIES = MAX_RETRIES + 4


@shared_task(name=TASK_PROCESS_CHUNK, bind=True, max_retries=MAX_RETRIES)
def process_chunk(self: Task, job_id: str, chunk_index: int) -> str:
    ctx = context()
    try:
        return run_chunk(ctx, job_id, chunk_index)
    except UNAVAILABLE_ERRORS as exc:
        if self.request.retries >= MAX_RETRIES:
            return _fail(ctx, job_id, "redis_unavailable", f"chunk {chunk_index}: Redis unavailable: {exc}")
        log_event(log, "chunk_retry", level=30, job_id=job_id, chunk=chunk_index, error=type(exc).__name__)
        raise self.retry(exc=exc, countdown=retry_countdown(self.request.retries, ctx)) from None


def retry_countdown(retries: int, ctx: WorkerContext) -> float:
    """Exponential backoff, kept under half the visibility timeout: the Redis transport
    redelivers a countdown message the worker holds longer than that timeout, and every
    such duplicate would count toward MAX_DELIVERIES."""
    return min(BACKOFF_S * 2**retries, ctx.settings.visibility_timeout_s / 2)


def run_chunk(ctx: WorkerContext, job_id: str, index: int) -> str:
    """Process one chunk; returns what happened (for logs and tests). Raises only the
    transient Redis errors, for the task to retry."""
    try:
        work = ctx.store.begin(job_id, index, MAX_DELIVERIES)
        if isinstance(work, ChunkSkip):
            return _skipped(ctx, job_id, index, work)
        out = decode_chunk(
            ctx.engine(work.model),
            work.chunk,
            work.target_domain,
            work.options,
            with_recbole_header=index == 0,
            should_stop=lambda: ctx.store.status(job_id) not in ("queued", "running"),
        )
        sequences = len(work.chunk.items)
        outcome = ctx.store.complete(
            job_id, index, sequences=sequences, stats=out.stats, jsonl=out.jsonl, recbole=out.recbole
        )
    except UNAVAILABLE_ERRORS:
        raise
    except JobStopped:
        outcome = "stopped"
    except TaesarError as exc:  # the domain errors of models/ and core/ alike
        return _fail(ctx, job_id, exc.code, exc.message, exc.details)
    except BadChunk as exc:
        return _fail(ctx, job_id, "bad_data", f"chunk {index}: {exc}")
    except Exception as exc:  # a bug must fail the job, not loop through redeliveries
        log_event(log, "chunk_crashed", level=40, job_id=job_id, chunk=index, exc_info=exc)
        return _fail(ctx, job_id, "internal_error", f"chunk {index}: {type(exc).__name__}: {exc}")
    if outcome in ("stored", "succeeded"):  # counted once, like the job's own counters
        metrics.observe_decisions("job", work.model, work.target_domain, sequences, out.stats)
    log_event(log, "chunk_done", job_id=job_id, chunk=index, outcome=outcome)
    return outcome


def _skipped(ctx: WorkerContext, job_id: str, index: int, skip: ChunkSkip) -> str:
    if skip.reason == "poison":
        return _fail(
            ctx,
            job_id,
            "internal_error",
            f"chunk {index} was delivered {skip.deliveries} times without finishing (its worker keeps dying)",
        )
    if skip.reason == "missing":
        return _fail(ctx, job_id, "bad_data", f"the input of chunk {index} is missing from Redis")
    log_event(log, "chunk_skipped", job_id=job_id, chunk=index, reason=skip.reason)
    return skip.reason


def _fail(ctx: WorkerContext, job_id: str, code: str, message: str, details: dict[str, Any] | None = None) -> str:
    # the message stays in the job record for its owner: it may quote an item of the payload
    log_event(log, "job_failed", level=30, job_id=job_id, code=code)
    with contextlib.suppress(*UNAVAILABLE_ERRORS):  # then nothing can record it; the job's keys expire
        ctx.store.fail(job_id, code, message, details)
    return "failed"
