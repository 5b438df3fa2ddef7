"""Domain errors of the service core. Each has a stable `code`; the HTTP layer
(`app/errors.py`) maps codes to statuses and renders the one error shape, and a worker
records the code in the job it fails. Nothing here knows about HTTP.

`ServiceError` extends `models.errors.TaesarError`, the base of the ML core's caller
errors (unknown item, unknown domain, ...), so one `except TaesarError` covers both.
"""

from __future__ import annotations

from typing import Any

from models.errors import TaesarError


class ServiceError(TaesarError):
    """An error a caller of the service can cause or must wait out.

    `retry_after_s`, when set, is how long a client should wait before trying again
    (the HTTP layer sends it as Retry-After).
    """

    code = "internal_error"

    def __init__(self, message: str, details: dict[str, Any] | None = None, *, retry_after_s: int | None = None):
        super().__init__(message, details)
        self.retry_after_s = retry_after_s


class InvalidRequest(ServiceError):
    """A request whose fields are well-formed but do not make sense together."""

    code = "validation_error"


class UnknownModel(ServiceError):
    code = "unknown_model"


class ModelNotReady(ServiceError):
    """No model is loaded, or the one asked for failed to load."""

    code = "model_not_ready"


def clip(text: str, limit: int = 200) -> str:
    """Echo at most `limit` characters of caller input in messages."""
    return text if len(text) <= limit else text[:limit] + "…"
