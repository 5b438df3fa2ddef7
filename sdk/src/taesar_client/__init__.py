"""Python SDK for the Taesar service: `TaesarClient` (sync) and `AsyncTaesarClient`.

    from taesar_client import TaesarClient

    with TaesarClient("http://localhost:8000", api_key="...") as client:
        out = client.regenerate("drama", [["50", "181", "258"]])
        job = client.submit_job("drama", "users.jsonl.gz")
        client.wait_for_job(job.id, on_progress=lambda j: print(j.progress))
        for seq in client.iter_results(job.id):
            ...

Both clients have the same methods; results are the pydantic models of
`taesar_client.models`; every error answer raises a subclass of `TaesarAPIError`
named after its code (`taesar_client.errors`). It depends on httpx and pydantic only.
"""

from __future__ import annotations

from taesar_client._base import DEFAULT_TIMEOUT
from taesar_client._client import AsyncTaesarClient, TaesarClient
from taesar_client._version import __version__
from taesar_client.errors import (
    APIConnectionError,
    APITimeoutError,
    BadDataError,
    BadJsonError,
    BadRequestError,
    BadUploadError,
    ConflictError,
    IdempotencyMismatchError,
    InternalError,
    JobCancelledError,
    JobFailedError,
    JobNotFinishedError,
    JobNotFoundError,
    JobTimeoutError,
    MethodNotAllowedError,
    ModelNotReadyError,
    NotFoundError,
    PayloadTooLargeError,
    QueueFullError,
    RateLimitedError,
    RedisUnavailableError,
    RequestTimeoutError,
    ServiceUnavailableError,
    TaesarAPIError,
    TooManyUploadsError,
    UnauthorizedError,
    UnknownDomainError,
    UnknownItemError,
    UnknownModelError,
    UnsupportedMediaTypeError,
    ValidationError,
)
from taesar_client.models import (
    Ablations,
    Health,
    JobInfo,
    JobStatus,
    ModelInfo,
    Readiness,
    RegeneratedSequence,
    RegenerateResponse,
    SequenceIn,
)

__all__ = [
    "DEFAULT_TIMEOUT",
    "APIConnectionError",
    "APITimeoutError",
    "Ablations",
    "AsyncTaesarClient",
    "BadDataError",
    "BadJsonError",
    "BadRequestError",
    "BadUploadError",
    "ConflictError",
    "Health",
    "IdempotencyMismatchError",
    "InternalError",
    "JobCancelledError",
    "JobFailedError",
    "JobInfo",
    "JobNotFinishedError",
    "JobNotFoundError",
    "JobStatus",
    "JobTimeoutError",
    "MethodNotAllowedError",
    "ModelInfo",
    "ModelNotReadyError",
    "NotFoundError",
    "PayloadTooLargeError",
    "QueueFullError",
    "RateLimitedError",
    "Readiness",
    "RedisUnavailableError",
    "RegenerateResponse",
    "RegeneratedSequence",
    "RequestTimeoutError",
    "SequenceIn",
    "ServiceUnavailableError",
    "TaesarAPIError",
    "TaesarClient",
    "TooManyUploadsError",
    "UnauthorizedError",
    "UnknownDomainError",
    "UnknownItemError",
    "UnknownModelError",
    "UnsupportedMediaTypeError",
    "ValidationError",
    "__version__",
]
