"""`taesar serve`: uvicorn running `create_app`, configured from TAESAR_* settings."""

from __future__ import annotations

import os

from core.logging import configure_logging, get_logger, log_event
from core.settings import get_settings

log = get_logger("serve")


def serve_command(host: str = "127.0.0.1", port: int = 8000, workers: int = 1) -> None:
    """Serve the API until interrupted.

    Each of `workers` processes loads every bundle itself (memory grows with the
    count); one process with `TAESAR_DECODE_THREADS` is usually the better use of one
    GPU. With several workers set PROMETHEUS_MULTIPROC_DIR so /metrics covers them all.
    """
    import uvicorn

    settings = get_settings()  # validate the environment now: a bad value fails before binding the port
    configure_logging(settings.log_level)
    if workers > 1 and not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        log_event(
            log,
            "metrics_per_process",
            level=30,
            workers=workers,
            hint="set PROMETHEUS_MULTIPROC_DIR to aggregate /metrics across workers",
        )
    log_event(log, "serving", host=host, port=port, workers=workers, model_dir=str(settings.model_dir))
    uvicorn.run(
        "app.main:create_app",
        factory=True,  # an import string, so that workers > 1 can re-create the app per process
        host=host,
        port=port,
        workers=workers,
        log_config=None,  # keep our JSON handlers (configure_logging) instead of uvicorn's text format
        access_log=False,  # RequestObserver logs one line per request
        timeout_graceful_shutdown=30,
        proxy_headers=True,
    )
