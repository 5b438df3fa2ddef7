"""The worker's Celery app: `celery -A workers.celery_app worker` and `taesar worker`.

`worker_app(settings)` builds it with `core.queue.create_celery` from a `Settings`
object plus the task module (`workers.tasks`). The module attribute `app`, which
`celery -A` looks up, is built on first access from `core.settings.get_settings()`:
importing this module reads no environment and builds nothing.
"""

from __future__ import annotations

import threading
from typing import Any

from celery import Celery

from core.queue import create_celery
from core.settings import Settings, get_settings

TASK_MODULES = ("workers.tasks",)

_app: Celery | None = None
_lock = threading.Lock()


def worker_app(settings: Settings) -> Celery:
    """A Celery app that consumes the chunk queue of `settings` and runs its tasks."""
    return create_celery(settings, include=TASK_MODULES)


def __getattr__(name: str) -> Any:
    """`workers.celery_app.app`: this process's worker app, from the environment's settings."""
    if name != "app":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    global _app
    with _lock:
        if _app is None:
            _app = worker_app(get_settings())
        return _app
