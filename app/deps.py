"""Dependencies that route handlers receive as `Annotated` aliases.

Everything a handler needs comes from `request.app.state`, filled by `create_app`
and its lifespan, so tests get a fully separate service per `create_app(settings)`
and can still swap any piece with `app.dependency_overrides`.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from redis.asyncio import Redis

from app.engines import ServedEngines
from app.errors import ApiError
from core.settings import Settings

ANONYMOUS = "anonymous"

# auto_error=False: a missing or malformed header must end in our 401 shape, not FastAPI's
_bearer = HTTPBearer(auto_error=False, description="`Authorization: Bearer <key>`, one of TAESAR_API_KEYS")
_api_key = APIKeyHeader(name="X-API-Key", auto_error=False, description="the same key in an `X-API-Key` header")


async def get_settings(request: Request) -> Settings:
    return request.app.state.settings


async def get_engines(request: Request) -> ServedEngines:
    engines = getattr(request.app.state, "engines", None)
    if engines is None:  # only while the lifespan has not run (e.g. a client used without `with`)
        raise ApiError("model_not_ready", "the service is starting", headers={"Retry-After": "5"})
    return engines


async def get_redis(request: Request) -> Redis:
    """The shared asyncio Redis client (job state, readiness); created in the lifespan."""
    return request.app.state.redis


SettingsDep = Annotated[Settings, Depends(get_settings)]
EnginesDep = Annotated[ServedEngines, Depends(get_engines)]
RedisDep = Annotated[Redis, Depends(get_redis)]


def caller_id(key: str) -> str:
    """A stable, non-reversible name for the holder of `key` (job ownership, logs)."""
    return hashlib.sha256(key.encode()).hexdigest()[:16]


def key_matches(presented: str, keys: list[str]) -> bool:
    """Compare against *every* key with compare_digest, so timing reveals neither the
    key nor which position in the list matched."""
    given = presented.encode()
    matched = False
    for key in keys:
        matched |= hmac.compare_digest(given, key.encode())
    return matched


async def get_caller(
    request: Request,
    settings: SettingsDep,
    bearer: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    api_key: Annotated[str | None, Depends(_api_key)],
) -> str:
    """The authenticated caller's id; `anonymous` when authentication is off."""
    if not settings.api_keys:
        return ANONYMOUS
    for presented in (bearer.credentials if bearer is not None else None, api_key):
        if presented and key_matches(presented, settings.api_keys):
            request.state.caller = caller_id(presented)  # for the request log line
            return request.state.caller
    raise ApiError(
        "unauthorized",
        "missing or invalid API key: send 'Authorization: Bearer <key>' or 'X-API-Key: <key>'",
        headers={"WWW-Authenticate": "Bearer"},
    )


CallerDep = Annotated[str, Depends(get_caller)]
