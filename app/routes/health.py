"""Liveness, readiness and Prometheus metrics; open without an API key (probes and scrapers)."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse

from app.deps import EnginesDep, RedisDep
from app.errors import error_response
from app.routes import error_responses
from core import metrics
from core.schemas import Health, Readiness

router = APIRouter(tags=["health"])

REDIS_PING_TIMEOUT_S = 0.5  # the whole probe must answer inside a kubelet's default 1 s timeout


@router.get(
    "/healthz",
    response_model=Health,
    summary="Liveness: the process answers",
    responses={200: {"content": {"application/json": {"example": {"status": "ok"}}}}, **error_responses()},
)
async def read_health() -> Health:
    return Health()


async def redis_ok(redis: RedisDep) -> bool:
    try:
        # wait_for bounds the whole ping, retries included: a black-holed host must not hang a probe
        return bool(await asyncio.wait_for(redis.ping(), REDIS_PING_TIMEOUT_S))
    except Exception:  # any failure at all means "not reachable" to a probe
        return False


@router.get(
    "/readyz",
    response_model=Readiness,
    summary="Readiness: models loaded and Redis reachable",
    responses={
        200: {
            "content": {
                "application/json": {"example": {"status": "ready", "models": ["ml100k"], "redis": True, "errors": []}}
            }
        },
        **error_responses("model_not_ready", "redis_unavailable"),
    },
)
async def read_readiness(engines: EnginesDep, redis: RedisDep) -> Readiness | JSONResponse:
    reachable = await redis_ok(redis)
    ready = Readiness(
        status="ready" if engines.engines and reachable else "not_ready",
        models=engines.names,
        redis=reachable,
        errors=[{"model": f.name, "code": f.code} for f in engines.failures],
    )
    if ready.status == "ready":
        return ready
    code = "model_not_ready" if not engines.engines else "redis_unavailable"
    message = "no model is loaded" if not engines.engines else "Redis does not answer"
    if not engines.engines and not reachable:
        message += ", and Redis does not answer"
    return error_response(code, message, ready.model_dump(), headers={"Retry-After": "5"})


@router.get(
    "/metrics",
    summary="Prometheus metrics",
    response_class=Response,
    responses={
        200: {
            "content": {
                "text/plain": {
                    "schema": {"type": "string"},
                    "example": "# TYPE taesar_http_requests_total counter\n"
                    'taesar_http_requests_total{method="POST",route="/regenerate",status="200"} 42.0\n',
                }
            }
        },
        **error_responses(),
    },
)
async def read_metrics() -> Response:
    body, content_type = metrics.render()
    return Response(body, media_type=content_type)
