"""`TaesarClient` (blocking) and `AsyncTaesarClient`: one method per endpoint, typed
results, typed errors, retries.

Both clients have the same methods; results are the pydantic models of
`taesar_client.models`; every error answer raises a subclass of `TaesarAPIError`
named after its code.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any, Literal, overload
from urllib.parse import quote

import anyio  # httpx's own dependency
import httpx
import pydantic

from taesar_client._base import (
    DEFAULT_TIMEOUT,
    TERMINAL_STATUSES,
    AsyncJobSource,
    BaseClient,
    JobSource,
    RetryPolicy,
    SequenceLike,
    UnknownItems,
    Upload,
    job_upload,
    new_idempotency_key,
    options_dict,
    request_body,
)
from taesar_client.errors import (
    APIConnectionError,
    APITimeoutError,
    JobCancelledError,
    JobFailedError,
    JobTimeoutError,
    ServiceUnavailableError,
    error_from_response,
)
from taesar_client.models import (
    Ablations,
    Health,
    JobInfo,
    JobStatus,
    ModelInfo,
    ModelList,
    Readiness,
    RegeneratedSequence,
    RegenerateResponse,
)

__all__ = ["AsyncTaesarClient", "TaesarClient"]

ResultFormat = Literal["jsonl", "recbole"]
ProgressCallback = Callable[[JobInfo], Any]
AblationsLike = Ablations | dict[str, bool] | list[str] | None


def _job_path(job_id: str, suffix: str = "") -> str:
    return f"/jobs/{quote(job_id, safe='')}{suffix}"


def _connection_error(exc: httpx.TransportError) -> APIConnectionError:
    cls = APITimeoutError if isinstance(exc, httpx.TimeoutException) else APIConnectionError
    return cls(f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__)


def _finished(job: JobInfo) -> JobInfo:
    """Return a succeeded job, raise for the other terminal states."""
    if job.status == JobStatus.failed:
        raise JobFailedError(job)
    if job.status == JobStatus.cancelled:
        raise JobCancelledError(job)
    return job


def _readiness_or_raise(exc: ServiceUnavailableError) -> Readiness:
    """/readyz answers 503 model_not_ready / redis_unavailable with the readiness in its details."""
    try:
        return Readiness.model_validate(exc.details)
    except pydantic.ValidationError:
        raise exc from None


class TaesarClient(BaseClient):
    """Blocking client. Use as a context manager, or call `close()` when done."""

    def __init__(
        self,
        base_url: str,
        api_key: str | None = None,
        timeout: float | httpx.Timeout | None = DEFAULT_TIMEOUT,
        retries: int = 3,
        backoff: float = 0.5,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        super().__init__(base_url, api_key, timeout, retries, backoff)
        self._http = httpx.Client(base_url=self.base_url, headers=self._headers(), timeout=timeout, transport=transport)
        self._sleep: Callable[[float], None] = time.sleep  # tests replace it to run retries instantly

    # -- lifecycle --

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> TaesarClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- the API --

    def regenerate(
        self,
        target_domain: str,
        sequences: list[SequenceLike],
        *,
        model: str | None = None,
        explain: bool = False,
        explain_top_k: int = 5,
        unknown_items: UnknownItems = "error",
        ablations: AblationsLike = None,
        include_titles: bool = False,
    ) -> RegenerateResponse:
        """Regenerate a few sequences now, on the API's own engine."""
        options = options_dict(explain, explain_top_k, unknown_items, ablations, include_titles)
        body = request_body(target_domain, sequences, model, options)
        # a pure function of its input: repeating it cannot do harm, so it may be retried
        response = self._send("POST", "/regenerate", json=body, retry_safe=True)
        return RegenerateResponse.model_validate_json(response.content)

    def submit_job(
        self,
        target_domain: str,
        sequences: JobSource,
        *,
        model: str | None = None,
        explain: bool = False,
        explain_top_k: int = 5,
        unknown_items: UnknownItems = "error",
        ablations: AblationsLike = None,
        include_titles: bool = False,
        idempotency_key: str | None = None,
    ) -> JobInfo:
        """Queue a bulk job from a list, an iterable of sequences, or a .jsonl/.jsonl.gz path.

        A list whose JSON is at most 1 MiB goes as one JSON body; larger lists, iterables
        and files are streamed as gzip NDJSON (iterables and files are never held in
        memory). An Idempotency-Key is generated when none is given, so a
        retried submission returns the first job instead of creating a second one.
        """
        options = options_dict(explain, explain_top_k, unknown_items, ablations, include_titles)
        upload, params = job_upload(target_domain, sequences, model, options)
        headers = {"Idempotency-Key": idempotency_key or new_idempotency_key()}
        response = self._send("POST", "/jobs", upload=upload, params=params, headers=headers, retry_safe=True)
        return JobInfo.model_validate_json(response.content)

    def get_job(self, job_id: str) -> JobInfo:
        return JobInfo.model_validate_json(self._send("GET", _job_path(job_id)).content)

    def wait_for_job(
        self,
        job_id: str,
        *,
        poll_interval: float = 1.0,
        timeout: float | None = None,
        on_progress: ProgressCallback | None = None,
    ) -> JobInfo:
        """Poll until the job ends; raise JobFailedError / JobCancelledError / JobTimeoutError."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            job = self.get_job(job_id)
            if on_progress is not None:
                on_progress(job)
            if job.status.value in TERMINAL_STATUSES:
                return _finished(job)
            if deadline is not None and time.monotonic() + poll_interval > deadline:
                raise JobTimeoutError(f"job {job_id} still {job.status.value} after {timeout}s")
            self._sleep(poll_interval)

    @overload
    def iter_results(self, job_id: str, format: Literal["jsonl"] = "jsonl") -> Iterator[RegeneratedSequence]: ...
    @overload
    def iter_results(self, job_id: str, format: Literal["recbole"]) -> Iterator[str]: ...

    def iter_results(
        self, job_id: str, format: ResultFormat = "jsonl"
    ) -> Iterator[RegeneratedSequence] | Iterator[str]:
        """Stream a finished job's results line by line: parsed sequences, or RecBole text lines."""
        response = self._send("GET", _job_path(job_id, "/results"), params={"format": format}, stream=True)
        return _parse_lines(response.iter_lines(), response.close, format)

    def cancel_job(self, job_id: str) -> JobInfo:
        """Cancel a queued or running job; chunks already running finish their batch."""
        return JobInfo.model_validate_json(self._send("DELETE", _job_path(job_id)).content)

    def list_models(self) -> list[ModelInfo]:
        return ModelList.model_validate_json(self._send("GET", "/models").content).models

    def health(self) -> Health:
        return Health.model_validate_json(self._send("GET", "/healthz").content)

    def ready(self) -> Readiness:
        """Readiness (models loaded, Redis reachable); a 503 "not ready" is an answer, not an error."""
        try:
            return Readiness.model_validate_json(self._send("GET", "/readyz", retry_safe=False).content)
        except ServiceUnavailableError as exc:
            return _readiness_or_raise(exc)

    # -- transport --

    def _send(
        self,
        method: str,
        path: str,
        *,
        json: dict[str, Any] | None = None,
        upload: Upload | None = None,
        params: dict[str, str] | None = None,
        headers: dict[str, str] | None = None,
        retry_safe: bool | None = None,
        stream: bool = False,
    ) -> httpx.Response:
        """One call with retries; GET and DELETE are idempotent, so always retry-safe."""
        safe = method in ("GET", "DELETE") if retry_safe is None else retry_safe
        policy: RetryPolicy = self.retry_policy
        for attempt in range(policy.retries + 1):
            request = self._http.build_request(method, path, **self._request_kwargs(json, upload, params, headers))
            try:
                response = self._http.send(request, stream=stream)
            except httpx.TransportError as exc:
                if not policy.should_retry(attempt, retry_safe=safe and _replayable(upload)):
                    raise _connection_error(exc) from exc
                self._sleep(policy.delay(attempt))
                continue
            if response.is_success:
                return response
            response.read()
            response.close()
            if not policy.should_retry(attempt, retry_safe=safe and _replayable(upload), response=response):
                raise error_from_response(response)
            self._sleep(policy.delay(attempt, response))
        raise AssertionError("unreachable: the last attempt either returns or raises")


def _replayable(upload: Upload | None) -> bool:
    return upload is None or upload.replayable


def _parse_lines(lines: Iterator[str], close: Callable[[], Any], format: ResultFormat) -> Iterator[Any]:
    try:
        for line in lines:
            if not line:
                continue
            yield RegeneratedSequence.model_validate_json(line) if format == "jsonl" else line
    finally:
        close()  # also when the caller stops early, so the connection goes back to the pool


class AsyncTaesarClient(BaseClient):
    """The same API as `TaesarClient`, awaitable. Use `async with`, or `await aclose()`."""

    _async = True

    def __init__(
        self,
        base_url: str,
        api_key: str | None = None,
        timeout: float | httpx.Timeout | None = DEFAULT_TIMEOUT,
        retries: int = 3,
        backoff: float = 0.5,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        super().__init__(base_url, api_key, timeout, retries, backoff)
        self._http = httpx.AsyncClient(
            base_url=self.base_url, headers=self._headers(), timeout=timeout, transport=transport
        )
        self._sleep: Callable[[float], Any] = anyio.sleep

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncTaesarClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def regenerate(
        self,
        target_domain: str,
        sequences: list[SequenceLike],
        *,
        model: str | None = None,
        explain: bool = False,
        explain_top_k: int = 5,
        unknown_items: UnknownItems = "error",
        ablations: AblationsLike = None,
        include_titles: bool = False,
    ) -> RegenerateResponse:
        options = options_dict(explain, explain_top_k, unknown_items, ablations, include_titles)
        body = request_body(target_domain, sequences, model, options)
        response = await self._send("POST", "/regenerate", json=body, retry_safe=True)
        return RegenerateResponse.model_validate_json(response.content)

    async def submit_job(
        self,
        target_domain: str,
        sequences: AsyncJobSource,
        *,
        model: str | None = None,
        explain: bool = False,
        explain_top_k: int = 5,
        unknown_items: UnknownItems = "error",
        ablations: AblationsLike = None,
        include_titles: bool = False,
        idempotency_key: str | None = None,
    ) -> JobInfo:
        """As `TaesarClient.submit_job`; also takes an async iterable of sequences."""
        options = options_dict(explain, explain_top_k, unknown_items, ablations, include_titles)
        upload, params = job_upload(target_domain, sequences, model, options)
        headers = {"Idempotency-Key": idempotency_key or new_idempotency_key()}
        response = await self._send("POST", "/jobs", upload=upload, params=params, headers=headers, retry_safe=True)
        return JobInfo.model_validate_json(response.content)

    async def get_job(self, job_id: str) -> JobInfo:
        return JobInfo.model_validate_json((await self._send("GET", _job_path(job_id))).content)

    async def wait_for_job(
        self,
        job_id: str,
        *,
        poll_interval: float = 1.0,
        timeout: float | None = None,
        on_progress: ProgressCallback | None = None,
    ) -> JobInfo:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            job = await self.get_job(job_id)
            if on_progress is not None:
                on_progress(job)
            if job.status.value in TERMINAL_STATUSES:
                return _finished(job)
            if deadline is not None and time.monotonic() + poll_interval > deadline:
                raise JobTimeoutError(f"job {job_id} still {job.status.value} after {timeout}s")
            await self._sleep(poll_interval)

    @overload
    def iter_results(self, job_id: str, format: Literal["jsonl"] = "jsonl") -> AsyncIterator[RegeneratedSequence]: ...
    @overload
    def iter_results(self, job_id: str, format: Literal["recbole"]) -> AsyncIterator[str]: ...

    async def iter_results(self, job_id: str, format: ResultFormat = "jsonl") -> AsyncIterator[Any]:
        """`async for seq in client.iter_results(job_id)`: streamed like the sync client."""
        response = await self._send("GET", _job_path(job_id, "/results"), params={"format": format}, stream=True)
        try:
            async for line in response.aiter_lines():
                if line:
                    yield RegeneratedSequence.model_validate_json(line) if format == "jsonl" else line
        finally:
            await response.aclose()

    async def cancel_job(self, job_id: str) -> JobInfo:
        return JobInfo.model_validate_json((await self._send("DELETE", _job_path(job_id))).content)

    async def list_models(self) -> list[ModelInfo]:
        return ModelList.model_validate_json((await self._send("GET", "/models")).content).models

    async def health(self) -> Health:
        return Health.model_validate_json((await self._send("GET", "/healthz")).content)

    async def ready(self) -> Readiness:
        try:
            return Readiness.model_validate_json((await self._send("GET", "/readyz", retry_safe=False)).content)
        except ServiceUnavailableError as exc:
            return _readiness_or_raise(exc)

    async def _send(
        self,
        method: str,
        path: str,
        *,
        json: dict[str, Any] | None = None,
        upload: Upload | None = None,
        params: dict[str, str] | None = None,
        headers: dict[str, str] | None = None,
        retry_safe: bool | None = None,
        stream: bool = False,
    ) -> httpx.Response:
        safe = method in ("GET", "DELETE") if retry_safe is None else retry_safe
        policy = self.retry_policy
        for attempt in range(policy.retries + 1):
            request = self._http.build_request(method, path, **self._request_kwargs(json, upload, params, headers))
            try:
                response = await self._http.send(request, stream=stream)
            except httpx.TransportError as exc:
                if not policy.should_retry(attempt, retry_safe=safe and _replayable(upload)):
                    raise _connection_error(exc) from exc
                await self._sleep(policy.delay(attempt))
                continue
            if response.is_success:
                return response
            await response.aread()
            await response.aclose()
            if not policy.should_retry(attempt, retry_safe=safe and _replayable(upload), response=response):
                raise error_from_response(response)
            await self._sleep(policy.delay(attempt, response))
        raise AssertionError("unreachable: the last attempt either returns or raises")
