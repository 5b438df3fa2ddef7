"""What the sync and async SDK clients share, with no I/O: configuration, request
bodies, the retry policy and the upload encoders.

Keeping every decision here means `TaesarClient` and `AsyncTaesarClient` differ only
in `await`, so they cannot drift apart.
"""

from __future__ import annotations

import json
import os
import random
import uuid
import zlib
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import httpx

from taesar_client._version import __version__
from taesar_client.errors import parse_retry_after
from taesar_client.models import Ablations, RegenerateOptions, SequenceIn

DEFAULT_TIMEOUT = 30.0
RETRY_STATUSES = frozenset({429, 503})
# a misconfigured proxy must not park a client for hours; past this we wait this long
MAX_RETRY_AFTER_S = 120.0
UPLOAD_CHUNK_BYTES = 256 * 1024
NDJSON = "application/x-ndjson"
JSON_JOB_BYTES = 1 << 20  # a list of sequences above this goes as NDJSON (the server caps JSON bodies)
TERMINAL_STATUSES = frozenset({"succeeded", "failed", "cancelled"})

SequenceLike = SequenceIn | Mapping[str, Any] | Sequence[str | int]
UnknownItems = Literal["error", "drop"]
# a small list goes as one JSON body; a larger one, an iterable or a .jsonl / .jsonl.gz path is streamed
JobSource = list[SequenceLike] | tuple[SequenceLike, ...] | Iterable[SequenceLike] | str | os.PathLike[str]
AsyncJobSource = JobSource | AsyncIterable[SequenceLike]


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with jitter; Retry-After from the server wins when present."""

    retries: int = 3
    backoff: float = 0.5

    def should_retry(self, attempt: int, *, retry_safe: bool, response: httpx.Response | None = None) -> bool:
        """`response` None means a connection error (no answer at all)."""
        if attempt >= self.retries or not retry_safe:
            return False
        return response is None or retryable_answer(response)

    def delay(self, attempt: int, response: httpx.Response | None = None) -> float:
        if response is not None and (after := parse_retry_after(response)) is not None:
            return min(after, MAX_RETRY_AFTER_S)
        # "equal jitter": at least half the exponential step, so retries always back off,
        # plus a random half so a crowd of clients does not retry in lockstep
        step = self.backoff * (2**attempt)
        return min(step / 2 + random.uniform(0, step / 2), MAX_RETRY_AFTER_S)


def retryable_answer(response: httpx.Response) -> bool:
    """429 and 503 mean "not done, try later". So does a 409 with Retry-After to a request
    with an Idempotency-Key: the first request with that key is still being processed,
    and a retry will get its job."""
    if response.status_code in RETRY_STATUSES:
        return True
    return (
        response.status_code == 409
        and "retry-after" in response.headers
        and "idempotency-key" in response.request.headers
    )


class BaseClient:
    """Configuration and request building shared by both clients."""

    _async = False

    def __init__(
        self,
        base_url: str,
        api_key: str | None = None,
        timeout: float | httpx.Timeout | None = DEFAULT_TIMEOUT,
        retries: int = 3,
        backoff: float = 0.5,
    ) -> None:
        if retries < 0 or backoff < 0:
            raise ValueError("retries and backoff must be >= 0")
        self.base_url = base_url.rstrip("/")
        self.api_key = api_key
        self.timeout = timeout
        self.retry_policy = RetryPolicy(retries=retries, backoff=backoff)

    def _headers(self) -> dict[str, str]:
        headers = {"User-Agent": f"taesar-sdk/{__version__} httpx/{httpx.__version__}", "Accept": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        return headers

    def _request_kwargs(
        self,
        json_body: dict[str, Any] | None,
        upload: Upload | None,
        params: dict[str, str] | None,
        headers: dict[str, str] | None,
    ) -> dict[str, Any]:
        """Arguments of httpx's build_request; a stream gets a fresh generator per attempt."""
        kwargs: dict[str, Any] = {"params": params, "headers": headers, "json": json_body}
        if upload is not None:
            kwargs["headers"] = {**upload.headers, **(headers or {})}
            if upload.json_body is not None:
                kwargs["json"] = upload.json_body
            else:
                kwargs["content"] = upload.achunks() if self._async else upload.chunks()
        return kwargs

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.base_url!r})"


# -- request bodies -------------------------------------------------------------------


def sequence_dict(seq: SequenceLike) -> dict[str, Any]:
    """A sequence as the API wants it; a bare list of item ids is accepted for brevity."""
    if isinstance(seq, SequenceIn):
        return seq.model_dump(exclude_none=True)
    if isinstance(seq, Mapping):
        return dict(seq)
    if isinstance(seq, str | bytes):
        raise TypeError("a sequence is a list of item ids or {'user_id', 'items'}, not a string")
    return {"items": list(seq)}


def options_dict(
    explain: bool = False,
    explain_top_k: int = 5,
    unknown_items: UnknownItems = "error",
    ablations: Ablations | Mapping[str, bool] | Iterable[str] | None = None,
    include_titles: bool = False,
) -> dict[str, Any]:
    """Validated here with the request model, so a typo fails before any upload."""
    options = RegenerateOptions(
        explain=explain,
        explain_top_k=explain_top_k,
        unknown_items=unknown_items,
        ablations=_ablations(ablations),
        include_titles=include_titles,
    )
    return options.model_dump(exclude_defaults=True)


def _ablations(value: Ablations | Mapping[str, bool] | Iterable[str] | None) -> Ablations:
    if value is None:
        return Ablations()
    if isinstance(value, Ablations):
        return value
    if isinstance(value, Mapping):
        return Ablations.model_validate(dict(value))
    # ["no_global", "no_local"], like the CLI's repeated --ablation flag
    return Ablations.model_validate(dict.fromkeys(value, True))


def request_body(
    target_domain: str, sequences: Iterable[SequenceLike], model: str | None, options: dict[str, Any]
) -> dict[str, Any]:
    body: dict[str, Any] = {"target_domain": target_domain, "sequences": [sequence_dict(s) for s in sequences]}
    if model is not None:
        body["model"] = model
    if options:
        body["options"] = options
    return body


def new_idempotency_key() -> str:
    return f"sdk-{uuid.uuid4().hex}"


# -- uploads --------------------------------------------------------------------------


@dataclass
class Upload:
    """A request body that can be produced once or, when `replayable`, once per attempt.

    Streams are never materialised: a retried upload re-reads its file, and an
    iterator, which cannot be rewound, is only retried while nothing was read from it.
    """

    headers: dict[str, str]
    json_body: dict[str, Any] | None = None
    source: Path | Iterable[SequenceLike] | AsyncIterable[SequenceLike] | None = None
    started: bool = False

    @property
    def replayable(self) -> bool:
        return self.json_body is not None or isinstance(self.source, Path | list | tuple) or not self.started

    def chunks(self) -> Iterator[bytes]:
        self.started = True
        if isinstance(self.source, Path):
            yield from file_chunks(self.source)
        else:
            assert isinstance(self.source, Iterable), "an async iterable needs AsyncTaesarClient"
            yield from gzip_chunks(ndjson_lines(self.source))

    async def achunks(self) -> AsyncIterator[bytes]:
        self.started = True
        if isinstance(self.source, Path):
            # 256 KiB reads from a local file are short enough not to stall the loop
            for chunk in file_chunks(self.source):
                yield chunk
        elif isinstance(self.source, AsyncIterable):
            gz = _Gzipper()
            async for seq in self.source:
                if out := gz.feed(_ndjson_line(seq)):
                    yield out
            yield gz.finish()
        else:
            assert self.source is not None
            for chunk in gzip_chunks(ndjson_lines(self.source)):
                yield chunk


def job_upload(
    target_domain: str, sequences: AsyncJobSource, model: str | None, options: dict[str, Any]
) -> tuple[Upload, dict[str, str]]:
    """The body and query parameters of POST /jobs.

    A list (or tuple) whose JSON body is at most `JSON_JOB_BYTES` goes as one JSON body,
    like /regenerate; a larger list, a path or any other iterable is streamed as gzip
    NDJSON, one sequence per line, with the job's settings in the query string because
    the body holds only sequences (the server caps JSON job bodies; NDJSON is streamed).
    """
    if isinstance(sequences, list | tuple):
        body = request_body(target_domain, sequences, model, options)
        if len(json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()) <= JSON_JOB_BYTES:
            return Upload(headers={"Content-Type": "application/json"}, json_body=body), {}
    headers = {"Content-Type": NDJSON, "Content-Encoding": "gzip"}
    params = ndjson_params(target_domain, model, options)
    if isinstance(sequences, str | os.PathLike):
        path = Path(sequences)
        if not path.is_file():
            raise FileNotFoundError(f"no such file: {path}")
        return Upload(headers=headers, source=path), params
    if not isinstance(sequences, Iterable | AsyncIterable):
        raise TypeError(f"sequences must be a list, an iterable or a path, not {type(sequences).__name__}")
    return Upload(headers=headers, source=sequences), params


def ndjson_params(target_domain: str, model: str | None, options: dict[str, Any]) -> dict[str, str]:
    params = {"target_domain": target_domain}
    if model is not None:
        params["model"] = model
    if options:
        params["options"] = json.dumps(options, separators=(",", ":"))
    return params


def ndjson_lines(sequences: Iterable[SequenceLike]) -> Iterator[bytes]:
    for seq in sequences:
        yield _ndjson_line(seq)


def _ndjson_line(seq: SequenceLike) -> bytes:
    return json.dumps(sequence_dict(seq), ensure_ascii=False, separators=(",", ":")).encode() + b"\n"


class _Gzipper:
    """Incremental gzip: feed lines, get compressed chunks of about UPLOAD_CHUNK_BYTES."""

    def __init__(self) -> None:
        self._z = zlib.compressobj(6, zlib.DEFLATED, 16 + zlib.MAX_WBITS)  # 16+: gzip framing
        self._pending: list[bytes] = []
        self._size = 0

    def feed(self, data: bytes) -> bytes:
        self._pending.append(data)
        self._size += len(data)
        if self._size < UPLOAD_CHUNK_BYTES:
            return b""
        raw, self._pending, self._size = b"".join(self._pending), [], 0
        # a sync flush per chunk puts bytes on the wire now: zlib would otherwise sit on
        # highly compressible input and the upload would only start at the very end
        return self._z.compress(raw) + self._z.flush(zlib.Z_SYNC_FLUSH)

    def finish(self) -> bytes:
        return self._z.compress(b"".join(self._pending)) + self._z.flush()


def gzip_chunks(lines: Iterable[bytes]) -> Iterator[bytes]:
    gz = _Gzipper()
    for line in lines:
        if out := gz.feed(line):
            yield out
    yield gz.finish()


def file_chunks(path: Path) -> Iterator[bytes]:
    """A .gz file goes up as it is; anything else is compressed while it is read."""
    with path.open("rb") as f:
        if _is_gzip(path):
            while chunk := f.read(UPLOAD_CHUNK_BYTES):
                yield chunk
        else:
            yield from gzip_chunks(iter(lambda: f.read(UPLOAD_CHUNK_BYTES), b""))


def _is_gzip(path: Path) -> bool:
    with path.open("rb") as f:
        return f.read(2) == b"\x1f\x8b"
