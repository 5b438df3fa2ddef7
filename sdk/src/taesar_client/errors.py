"""The SDK's exceptions: one root, one class per HTTP status family, one per error code.

The server answers every error as {"error": {"code", "message", "details"}}; this
module has one class for each code the server can send (the service's test suite
keeps the two tables in step). Catch a status family (`NotFoundError`) to handle every
code that shares it, or one code (`UnknownModelError`).
"""

from __future__ import annotations

import email.utils
import time
from typing import TYPE_CHECKING, Any

import httpx

if TYPE_CHECKING:
    from taesar_client.models import JobInfo


class TaesarAPIError(Exception):
    """Root of everything the SDK raises; also the class of codes this SDK does not know."""

    status_code: int | None = None
    code: str | None = None

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        status_code: int | None = None,
        details: dict[str, Any] | None = None,
        response: httpx.Response | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        # instance values win over the class defaults, so an unknown code keeps its name
        self.code = code if code is not None else type(self).code
        self.status_code = status_code if status_code is not None else type(self).status_code
        self.details = details or {}
        self.response = response

    @property
    def retry_after(self) -> float | None:
        """Seconds the server asked us to wait (429/503), if it said."""
        return parse_retry_after(self.response) if self.response is not None else None

    def __str__(self) -> str:
        prefix = f"[{self.status_code} {self.code}] " if self.code else f"[{self.status_code}] "
        return prefix + self.message if self.status_code else self.message


# -- transport and waiting (no HTTP answer) ------------------------------------------


class APIConnectionError(TaesarAPIError):
    """The server could not be reached, or the connection broke (after all retries)."""


class APITimeoutError(APIConnectionError):
    """The request ran past the client's timeout (after all retries)."""


class JobFailedError(TaesarAPIError):
    """`wait_for_job` saw the job end as failed; `.job` holds its last state."""

    code = "job_failed"

    def __init__(self, job: JobInfo) -> None:
        error = job.error
        message = error.message if error else f"job {job.id} ended as {job.status.value}"
        super().__init__(message, code=error.code if error else type(self).code, details=error.details if error else {})
        self.job = job


class JobCancelledError(JobFailedError):
    code = "job_cancelled"


class JobTimeoutError(TaesarAPIError, TimeoutError):
    """`wait_for_job` gave up before the job finished; the job itself goes on."""

    code = "wait_timeout"


# -- HTTP status families -------------------------------------------------------------


class BadRequestError(TaesarAPIError):
    status_code = 400
    code = "bad_request"


class UnauthorizedError(TaesarAPIError):
    status_code = 401
    code = "unauthorized"


class NotFoundError(TaesarAPIError):
    status_code = 404
    code = "not_found"


class MethodNotAllowedError(TaesarAPIError):
    status_code = 405
    code = "method_not_allowed"


class RequestTimeoutError(TaesarAPIError):
    """The server stopped waiting for the request body (it arrived too slowly)."""

    status_code = 408
    code = "body_timeout"


class ConflictError(TaesarAPIError):
    status_code = 409
    code = "conflict"


class PayloadTooLargeError(TaesarAPIError):
    status_code = 413
    code = "payload_too_large"


class UnsupportedMediaTypeError(TaesarAPIError):
    status_code = 415
    code = "unsupported_media_type"


class ValidationError(TaesarAPIError):
    status_code = 422
    code = "validation_error"


class RateLimitedError(TaesarAPIError):
    status_code = 429
    code = "rate_limited"


class InternalError(TaesarAPIError):
    status_code = 500
    code = "internal_error"


class ServiceUnavailableError(TaesarAPIError):
    status_code = 503
    code = "service_unavailable"


# -- one class per specific code ------------------------------------------------------


class BadJsonError(BadRequestError):
    code = "bad_json"


class BadUploadError(BadRequestError):
    code = "bad_upload"


class UnknownModelError(NotFoundError):
    code = "unknown_model"


class JobNotFoundError(NotFoundError):
    code = "job_not_found"


class JobNotFinishedError(ConflictError):
    code = "job_not_finished"


class UnknownItemError(ValidationError):
    code = "unknown_item"


class UnknownDomainError(ValidationError):
    code = "unknown_domain"


class BadDataError(ValidationError):
    code = "bad_data"


class IdempotencyMismatchError(ValidationError):
    """The Idempotency-Key was used before for a different request."""

    code = "idempotency_mismatch"


class QueueFullError(RateLimitedError):
    code = "queue_full"


class TooManyUploadsError(RateLimitedError):
    code = "too_many_uploads"


class ModelNotReadyError(ServiceUnavailableError):
    code = "model_not_ready"


class RedisUnavailableError(ServiceUnavailableError):
    code = "redis_unavailable"


_HTTP_FAMILIES: tuple[type[TaesarAPIError], ...] = (
    BadRequestError,
    UnauthorizedError,
    NotFoundError,
    MethodNotAllowedError,
    RequestTimeoutError,
    ConflictError,
    PayloadTooLargeError,
    UnsupportedMediaTypeError,
    ValidationError,
    RateLimitedError,
    InternalError,
    ServiceUnavailableError,
)
_SPECIFIC: tuple[type[TaesarAPIError], ...] = (
    BadJsonError,
    BadUploadError,
    UnknownModelError,
    JobNotFoundError,
    JobNotFinishedError,
    UnknownItemError,
    UnknownDomainError,
    BadDataError,
    IdempotencyMismatchError,
    QueueFullError,
    TooManyUploadsError,
    ModelNotReadyError,
    RedisUnavailableError,
)
ERROR_BY_CODE: dict[str, type[TaesarAPIError]] = {c.code: c for c in (*_HTTP_FAMILIES, *_SPECIFIC) if c.code}
ERROR_BY_STATUS: dict[int, type[TaesarAPIError]] = {c.status_code: c for c in _HTTP_FAMILIES if c.status_code}


def error_from_response(response: httpx.Response) -> TaesarAPIError:
    """The typed exception for a 4xx/5xx answer; the body must already be read."""
    code, message, details = _parse_error_body(response)
    cls = ERROR_BY_CODE.get(code or "") or ERROR_BY_STATUS.get(response.status_code) or TaesarAPIError
    return cls(message, code=code, status_code=response.status_code, details=details, response=response)


def _parse_error_body(response: httpx.Response) -> tuple[str | None, str, dict[str, Any]]:
    # a proxy in front of the service may answer with HTML or nothing: keep the text
    try:
        error = response.json()["error"]
        return str(error["code"]), str(error.get("message", "")), dict(error.get("details") or {})
    except (ValueError, KeyError, TypeError):
        text = response.text.strip()[:500]
        return None, text or f"HTTP {response.status_code} {response.reason_phrase}", {}


def parse_retry_after(response: httpx.Response) -> float | None:
    """Retry-After as seconds: either delta-seconds or an HTTP date (RFC 9110 §10.2.3)."""
    value = response.headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())
