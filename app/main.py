"""Assembles the FastAPI app; the behaviour lives in routes/, deps.py, engines.py and errors.py."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import anyio.to_thread
from fastapi import Depends, FastAPI
from fastapi.middleware.cors import CORSMiddleware
from redis.asyncio import Redis

from app.deps import get_caller
from app.engines import load_served_engines
from app.errors import install_error_handlers
from app.middleware import BodyLimit, RequestObserver
from app.routes import docs, document_one_error_shape, document_parsed_bodies, health, jobs, models, regenerate
from app.routes.catalogue import router as catalogue_router
from app.routes.job_list import router as job_list_router
from app.routes.ui import install_ui
from core import metrics
from core.engines import apply_torch_threads
from core.logging import configure_logging, get_logger, log_event
from core.schemas import RegenerateRequest
from core.settings import Settings, get_settings

REDIS_TIMEOUT_S = 0.5  # fail fast: readiness and job calls must answer, not queue up behind a dead Redis
log = get_logger("app")

DESCRIPTION = """\
Rewrites mixed-domain user sequences into one target domain with Taesar
(keep / replace / discard per item). `POST /regenerate` answers online from the
API's own engine; `POST /jobs` queues bulk work for GPU workers.

Authentication, when `TAESAR_API_KEYS` is set: `Authorization: Bearer <key>` or
`X-API-Key: <key>` on every endpoint except health, readiness, metrics and docs.
Every error answers `{"error": {"code", "message", "details"}}`.
"""


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    settings: Settings = app.state.settings
    # loading hashes and parses every weight file: keep it off the event loop
    engines = await anyio.to_thread.run_sync(load_served_engines, settings)
    metrics.set_models(len(engines.engines), len(engines.failures))
    app.state.engines = engines
    app.state.redis = Redis.from_url(
        settings.redis_url, socket_connect_timeout=REDIS_TIMEOUT_S, socket_timeout=REDIS_TIMEOUT_S
    )
    log_event(log, "started", models=engines.names, failures=len(engines.failures))
    try:
        yield
    finally:
        await app.state.redis.aclose()
        app.state.engines = None
        log_event(log, "stopped")


def _body_limits(settings: Settings) -> Callable[[str], int | None]:
    sync_limit = settings.max_body_bytes // 8  # /regenerate answers online: its bodies stay small

    def limit_for(path: str) -> int | None:
        return sync_limit if path == "/regenerate" else settings.max_body_bytes

    return limit_for


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    configure_logging(settings.log_level)
    apply_torch_threads(settings)
    app = FastAPI(
        title="Taesar regeneration service",
        version="0.1.0",
        description=DESCRIPTION,
        lifespan=lifespan,
        docs_url=None,  # app.routes.docs serves both pages from local assets
        redoc_url=None,
    )
    app.state.settings = settings
    install_error_handlers(app)

    auth = [Depends(get_caller)]
    docs.install_docs(app)
    app.include_router(health.router)
    app.include_router(models.router, dependencies=auth)
    app.include_router(regenerate.router, dependencies=auth)
    app.include_router(jobs.router, dependencies=auth)
    app.include_router(catalogue_router, dependencies=auth)
    app.include_router(job_list_router, dependencies=auth)
    install_ui(app)

    # added innermost first: BodyLimit sits inside CORS, so even a 413 carries CORS headers
    app.add_middleware(BodyLimit, limit_for=_body_limits(settings), timeout_s=settings.body_timeout_s)
    if settings.cors_origins:  # closed by default: no CORS headers at all
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST", "DELETE"],
            allow_headers=[
                "Authorization",
                "X-API-Key",
                "Content-Type",
                "Content-Encoding",
                "Idempotency-Key",
                "X-Request-ID",
            ],
            expose_headers=["X-Request-ID", "Retry-After", "Location"],
        )
    app.add_middleware(RequestObserver, static_prefix=docs.STATIC_URL)
    _document_one_error_shape(app)
    return app


def _document_one_error_shape(app: FastAPI) -> None:
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = document_parsed_bodies(document_one_error_shape(build()), RegenerateRequest)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
