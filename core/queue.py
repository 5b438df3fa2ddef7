"""The chunk queue: the Celery app factory, the stable task names and the producer.

A Celery app is built from a `Settings` object by `create_celery`, never from the
environment at import time: the API builds a send-only producer with its settings
(`enqueue_chunks` sends by task name, so no task code is imported), and a worker
builds its app with its settings plus the module that holds the tasks
(`workers.celery_app.worker_app`). Nothing here imports torch.

Job state is not kept in Celery: the result backend is disabled and every task
writes its outcome to the job store (`core.jobstore`). Celery only carries
"process chunk i of job j" messages.
"""

from __future__ import annotations

from collections.abc import Sequence

from celery import Celery
from kombu.exceptions import OperationalError as KombuOperationalError

from core.jobstore import UNAVAILABLE_ERRORS
from core.settings import Settings

# Stable task names: the API sends by name, so renaming a function never breaks a
# queue that still holds messages from the previous release.
TASK_PROCESS_CHUNK = "taesar.jobs.process_chunk"

# Redis, or the broker on it, unreachable right now: the API answers 503, a worker retries
QUEUE_UNAVAILABLE_ERRORS: tuple[type[Exception], ...] = (*UNAVAILABLE_ERRORS, KombuOperationalError)


def queue_name(settings: Settings) -> str:
    """The chunk queue; derived from the key prefix so that one setting isolates a
    deployment (or a test session) from every other one sharing the same Redis."""
    return f"{settings.key_prefix}.chunks"


def broker_key_prefix(settings: Settings) -> str:
    """Prefix of every key kombu writes (queue list, unacked hash, bindings)."""
    return f"{settings.key_prefix}:celery:"


def create_celery(settings: Settings, *, include: Sequence[str] = ()) -> Celery:
    """A Celery app on `settings.redis_url`.

    Without `include` it is a pure producer: sending by name needs no task code, so
    nothing heavy is imported. A worker passes the modules that define its tasks.
    """
    app = Celery("taesar", broker=settings.redis_url, include=list(include))
    app.conf.update(
        # at-least-once delivery: a message is acked only after its task returned, and a
        # worker killed mid-task hands the message back; completion is idempotent in the
        # job store, so a second delivery never double-counts
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        # one message at a time per process, so a busy worker cannot hoard chunks
        worker_prefetch_multiplier=1,
        broker_transport_options={
            # an unacked message is redelivered after this long: keep it well above the
            # time one chunk takes (settings.chunk_size sequences)
            "visibility_timeout": settings.visibility_timeout_s,
            # look for such abandoned messages (SIGKILLed worker) every 10 s, not every 100 s
            # (sooner with a shorter timeout, or the scan interval would dominate it)
            "unacked_restore_interval": min(10, settings.visibility_timeout_s),
            "unacked_restore_throttle": 1,
            "global_keyprefix": broker_key_prefix(settings),
            # a broker that vanishes without closing the socket must fail a call, not hang it
            "socket_connect_timeout": 5,
            "socket_timeout": 30,
        },
        broker_connection_retry_on_startup=True,
        task_default_queue=queue_name(settings),
        # state lives in the job store; a result backend would only duplicate it in Redis
        result_backend=None,
        task_ignore_result=True,
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        worker_hijack_root_logger=False,
        worker_send_task_events=False,
        task_send_sent_event=False,
        enable_utc=True,
    )
    return app


def enqueue_chunks(producer: Celery, job_id: str, n_chunks: int) -> None:
    """Send one "process chunk i" message per chunk of a committed job (blocking)."""
    # one producer connection for all chunks: a fresh one per message would dominate
    with producer.producer_or_acquire() as p:
        for i in range(n_chunks):
            producer.send_task(TASK_PROCESS_CHUNK, args=[job_id, i], producer=p)
