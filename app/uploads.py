"""Reading the body of POST /jobs without ever blocking the event loop or holding it whole.

Two kinds of body arrive:

- **JSON** (the /regenerate body): refused above `TAESAR_MAX_JSON_JOB_BYTES` (1 MiB by
  default; by `Content-Length` before reading, or as soon as more bytes arrive), then
  parsed in one piece. The cap is what bounds both the parse's stall of the event loop
  (about 35 ms per MiB on one core; a worker thread would not help, the parser holds
  the GIL throughout) and its memory (about 7 bytes of Python objects per body byte).
  Larger jobs go as NDJSON, which is streamed.
- **NDJSON**, optionally gzip: decompressed and split into lines in slices of at most
  `SLICE_BYTES`, the event loop getting a turn after each slice, so a gzip bomb of blank
  lines costs everyone else a few milliseconds per slice, never seconds. The caps
  (inflated bytes, line length) are checked slice by slice, before anything larger is
  held.

`RequestDigest` fingerprints what a submission asks for (model, target, options and
every sequence, after parsing), so an Idempotency-Key reused with another body is told
apart from a retry of the same one, however the body was encoded or compressed.
"""

from __future__ import annotations

import hashlib
import json
import zlib
from collections.abc import AsyncIterator, Iterator
from itertools import compress
from typing import Any, Literal

import anyio.lowlevel
from fastapi import Request
from pydantic import ValidationError

from app.errors import ApiError, sanitize_errors, validation_failure
from core.schemas import RegenerateRequest, SequenceIn

NDJSON = "application/x-ndjson"
GZIP_TYPES = frozenset({"application/gzip", "application/x-gzip"})
JSON_TYPES = frozenset({"application/json"})
SLICE_BYTES = 1 << 20  # decompressed bytes handled between two turns of the event loop
MAX_LINE_BYTES = 8 << 20  # one sequence line; a body without newlines must not grow a buffer forever
MAX_INFLATION = 16  # decompressed bytes allowed per byte of settings.max_body_bytes
BOM = b"\xef\xbb\xbf"
# where a sequence came from, for error messages: ("line", n) in NDJSON (from 1), ("sequence", k) in JSON (from 0)
Where = tuple[str, int]


def body_kind(request: Request) -> Literal["json", "ndjson", "gzip"]:
    mime = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if mime in JSON_TYPES:
        return "json"
    if mime == NDJSON or mime in GZIP_TYPES:
        gz = mime in GZIP_TYPES or request.headers.get("content-encoding", "").strip().lower() in ("gzip", "x-gzip")
        return "gzip" if gz else "ndjson"
    raise ApiError(
        "unsupported_media_type",
        f"send 'Content-Type: application/json' (the /regenerate body) or '{NDJSON}' (one sequence per line); "
        f"got {mime[:100] or 'none'!r}",
        {"content_type": mime[:100]},
    )


# -- JSON ------------------------------------------------------------------------------------


def _json_too_large(limit: int, size: int | None) -> ApiError:
    return ApiError(
        "payload_too_large",
        f"a JSON job body is limited to {limit} bytes; send larger jobs as NDJSON "
        f"(Content-Type: {NDJSON}, one sequence per line, gzip allowed), which is streamed",
        {"max_bytes": limit, "content_length": size},
        headers={"Connection": "close"},  # the rest of the body is still on the wire
    )


async def read_json_job(request: Request, limit: int) -> RegenerateRequest:
    """The JSON body, read up to `limit` bytes, parsed."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise _json_too_large(limit, int(declared))
    parts: list[bytes] = []
    size = 0
    async for part in request.stream():
        size += len(part)
        if size > limit:
            raise _json_too_large(limit, None)
        parts.append(part)
    return parse_json_job(b"".join(parts))


def parse_json_job(body: bytes) -> RegenerateRequest:
    try:
        return RegenerateRequest.model_validate_json(body)
    except ValidationError as exc:
        errors = exc.errors()
        if any(e["type"] == "json_invalid" for e in errors):
            raise ApiError("bad_json", "request body is not valid JSON", {"errors": sanitize_errors(errors)}) from None
        raise validation_failure([{**e, "loc": ("body", *e["loc"])} for e in errors]) from None


async def listed(sequences: list[SequenceIn]) -> AsyncIterator[tuple[Where, SequenceIn]]:
    for k, seq in enumerate(sequences):
        yield ("sequence", k), seq
        if k % 1024 == 1023:
            await anyio.lowlevel.checkpoint()


# -- NDJSON ------------------------------------------------------------------------------------


async def ndjson_sequences(
    request: Request, max_inflated: int, *, gzip: bool
) -> AsyncIterator[tuple[Where, SequenceIn]]:
    """(("line", number from 1), sequence) for every non-blank line, validated as it arrives."""
    splitter = LineSplitter(gzip, max_inflated)
    async for part in request.stream():
        for lines in splitter.feed(part):
            for number, line in lines:
                yield ("line", number), parse_line(number, line)
            await anyio.lowlevel.checkpoint()
    for lines in splitter.finish():
        for number, line in lines:
            yield ("line", number), parse_line(number, line)


def parse_line(number: int, line: bytes) -> SequenceIn:
    try:
        return SequenceIn.model_validate_json(line)
    except ValidationError as exc:
        err = sanitize_errors(exc.errors())[0]
        where = ".".join(str(p) for p in err["loc"])
        msg = "not valid JSON" if err["type"] == "json_invalid" else f"{where}: {err['msg']}" if where else err["msg"]
        raise ApiError("bad_upload", f"line {number}: {msg}", {"line": number, "error": err}) from None


class LineSplitter:
    """Bytes in (gzip or plain), slices of numbered non-blank lines out.

    `feed` and `finish` yield one list of (line number, line) per slice of at most
    `SLICE_BYTES` decompressed bytes. Gzip is detected by its magic bytes too, so a .gz
    file sent without Content-Encoding still works; concatenated gzip members are read
    in turn; a UTF-8 byte order mark before the first line is dropped.
    """

    def __init__(self, gzip: bool, max_inflated: int) -> None:
        self.gzip = gzip
        self.max_inflated = max_inflated
        self.inflated = 0
        self.z: Any = None
        self.decided = gzip
        self.head = b""
        self.pending: list[bytes] = []  # pieces of the line not yet ended by a newline
        self.pending_bytes = 0
        self.number = 0  # lines ended so far, blank ones included

    def feed(self, data: bytes) -> Iterator[list[tuple[int, bytes]]]:
        if not self.decided:
            self.head += data
            if len(self.head) < 2:
                return
            self.gzip, self.decided, data, self.head = self.head[:2] == b"\x1f\x8b", True, self.head, b""
        pieces = self._inflate(data) if self.gzip else _slices(data)
        for piece in pieces:
            yield self._lines(piece)

    def finish(self) -> Iterator[list[tuple[int, bytes]]]:
        if not self.decided and self.head:
            yield self._lines(self.head)
        if self.gzip and (self.z is None or not self.z.eof):
            raise ApiError("bad_upload", "the gzip stream is truncated", {"line": self.number + 1})
        if self.pending_bytes:
            last = self._line(b"".join(self.pending))
            self.pending, self.pending_bytes = [], 0
            self.number += 1
            if last.strip():
                yield [(self.number, last)]

    def _inflate(self, data: bytes) -> Iterator[bytes]:
        if self.z is None:
            self.z = zlib.decompressobj(16 + zlib.MAX_WBITS)
        while True:
            try:
                piece = self.z.decompress(data, SLICE_BYTES)
            except zlib.error as exc:
                raise ApiError("bad_upload", f"the body is not valid gzip: {exc}", {"line": self.number + 1}) from None
            self.inflated += len(piece)
            if self.inflated > self.max_inflated:
                raise ApiError(
                    "payload_too_large",
                    f"the upload inflates to more than {self.max_inflated} bytes",
                    {"max_inflated_bytes": self.max_inflated},
                )
            if piece:
                yield piece
            if self.z.unconsumed_tail:  # stopped at SLICE_BYTES with input left
                data = self.z.unconsumed_tail
            elif len(piece) == SLICE_BYTES and not self.z.eof:  # output may still be pending inside zlib
                data = b""
            elif self.z.eof and self.z.unused_data.strip(b"\x00"):  # the next member of a concatenated file
                data, self.z = self.z.unused_data, zlib.decompressobj(16 + zlib.MAX_WBITS)
            else:
                return

    def _lines(self, data: bytes) -> list[tuple[int, bytes]]:
        if not self.pending and data.isspace():  # blank lines only: count them, split nothing
            end = data.rfind(b"\n")
            self.number += data.count(b"\n", 0, end + 1)
            self._hold(data[end + 1 :])
            return []
        end = data.find(b"\n")
        if end < 0:
            self._hold(data)
            return []
        first = self._line(b"".join(self.pending) + data[:end]) if self.pending else self._line(data[:end])
        self.pending, self.pending_bytes = [], 0
        lines = data[end + 1 :].split(b"\n")
        self._hold(lines.pop())
        lines.insert(0, first)
        base = self.number + 1
        self.number += len(lines)
        # blank lines cost nothing per line: `compress` keeps the non-empty ones in C
        return [(base + i, lines[i]) for i in compress(range(len(lines)), lines) if not lines[i].isspace()]

    def _line(self, line: bytes) -> bytes:
        if len(line) > MAX_LINE_BYTES:
            self._too_long()
        return line[len(BOM) :] if self.number == 0 and line.startswith(BOM) else line

    def _hold(self, rest: bytes) -> None:
        if rest:
            self.pending.append(rest)
            self.pending_bytes += len(rest)
            if self.pending_bytes > MAX_LINE_BYTES:
                self._too_long()

    def _too_long(self) -> None:
        raise ApiError(
            "bad_upload", f"line {self.number + 1} is longer than {MAX_LINE_BYTES} bytes", {"line": self.number + 1}
        )


def _slices(data: bytes) -> Iterator[bytes]:
    for start in range(0, len(data), SLICE_BYTES):
        yield data[start : start + SLICE_BYTES]


# -- what a submission asks for --------------------------------------------------------------


class RequestDigest:
    """SHA-256 over the job's spec and its parsed sequences, in order."""

    def __init__(self, model: str, target_domain: str, options: dict[str, Any]) -> None:
        spec = {"model": model, "target_domain": target_domain, "options": options}
        self._h = hashlib.sha256(json.dumps(spec, sort_keys=True, separators=(",", ":")).encode())

    def add(self, user_id: str | None, items: list[str]) -> None:
        self._h.update(json.dumps([user_id, items], ensure_ascii=False, separators=(",", ":")).encode())
        self._h.update(b"\n")

    def hexdigest(self) -> str:
        return self._h.hexdigest()
