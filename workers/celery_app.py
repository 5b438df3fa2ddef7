"""The Celery app of the bulk-job workers, and the stable names the API enqueues by.

This module must stay free of torch and of `models/`: the API imports it to build a
producer (`create_celery(settings).send_task(TASK_PROCESS_CHUNK, ...)`), and the API
process must never load the ML stack for that. Tasks live in `workers.tasks`, which
only the worker imports (through `include`).

Job state is not kept in Celery: the result backend is disabled and every task
writes its outcome to the job store (`app.jobstore`). Celery only carries
"process chunk i of job j" messages.

Start a worker with `taesar worker` or `celery -A workers.celery_app worker --pool solo`.
"""

from __future__ import annotations

from celery import Celery

from app.settings import Settings, get_settings

# Stable task names: the API sends by name, so renaming a function never breaks a
# queue that still holds messages from the previous release.
TASK_PROCESS_CHUNK = "taesar.jobs.process_chunk"


def queue_name(settings: Settings) -> str:
    """The chunk queue; derived from the key prefix so that one setting isolates a
    deployment (or a test session) from every other one sharing the same Redis."""
    return f"{settings.key_prefix}.chunks"


def broker_key_prefix(settings: Settings) -> str:
    """Prefix of every key kombu writes (queue list, unacked hash, bindings)."""
    return f"{settings.key_prefix}:celery:"


def create_celery(settings: Settings, *, with_tasks: bool = False) -> Celery:
    """A Celery app on `settings.redis_url`.

    `with_tasks=False` gives a pure producer (the API): sending by name needs no task
    code, so nothing heavy is imported.
    """
    app = Celery("taesar", broker=settings.redis_url, include=["workers.tasks"] if with_tasks else [])
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


# The app `celery -A workers.celery_app worker` finds; configured from the environment.
app = create_celery(get_settings(), with_tasks=True)
