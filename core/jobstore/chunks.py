"""A chunk's stored input: compressed JSON, written sequence by sequence during an
upload and read back whole by the worker that decodes it."""

from __future__ import annotations

import json
import zlib
from dataclasses import dataclass

# zlib level 1: ~3x faster than the default and still ~5-10x on these repetitive JSON
# lines; chunks are written once and read once, so speed beats the last few percent
COMPRESS_LEVEL = 1
MAX_CHUNK_BYTES = 8 << 20  # a stored chunk (compressed) at most, whatever its sequences hold


class BadChunk(ValueError):
    """A stored chunk that cannot be decoded: retrying cannot fix it."""


@dataclass
class ChunkInput:
    first: int  # index of the chunk's first sequence in the job (for error messages)
    users: list[str | None]
    items: list[list[str]]


def encode_chunk(first: int, users: list[str | None], items: list[list[str]]) -> bytes:
    encoder = ChunkEncoder(first)
    for user_id, seq in zip(users, items, strict=True):
        encoder.add(user_id, seq)
    return encoder.finish()


class ChunkEncoder:
    """One chunk's stored blob, compressed sequence by sequence as they are added: an
    upload holds the compressed chunk, never its sequences as Python lists."""

    def __init__(self, first: int) -> None:
        self._z = zlib.compressobj(COMPRESS_LEVEL)
        self._out = [self._z.compress(b'{"first":%d,"items":[' % first)]
        self._size = 0
        self._users: list[str | None] = []

    @property
    def count(self) -> int:
        return len(self._users)

    @property
    def size(self) -> int:
        """Compressed bytes so far."""
        return self._size

    def add(self, user_id: str | None, items: list[str]) -> None:
        line = json.dumps(items, ensure_ascii=False, separators=(",", ":")).encode()
        out = self._z.compress(b"," + line if self._users else line)
        self._out.append(out)
        self._size += len(out)
        self._users.append(user_id)

    def finish(self) -> bytes:
        users = json.dumps(self._users, ensure_ascii=False, separators=(",", ":")).encode()
        self._out.append(self._z.compress(b'],"users":' + users + b"}"))
        self._out.append(self._z.flush())
        return b"".join(self._out)


def decode_chunk(blob: bytes) -> ChunkInput:
    try:
        data = json.loads(zlib.decompress(blob))
        first, users, items = int(data["first"]), data["users"], data["items"]
    except (zlib.error, ValueError, TypeError, KeyError) as exc:
        raise BadChunk(f"stored chunk is not valid: {type(exc).__name__}: {exc}") from None
    if not (isinstance(users, list) and isinstance(items, list) and len(users) == len(items)):
        raise BadChunk("stored chunk is not valid: 'users' and 'items' must be lists of equal length")
    if not all(isinstance(s, list) and all(isinstance(i, str) for i in s) for s in items):
        raise BadChunk("stored chunk is not valid: every sequence must be a list of item id strings")
    if not all(u is None or isinstance(u, str) for u in users):
        raise BadChunk("stored chunk is not valid: user ids must be strings or null")
    return ChunkInput(first, users, items)


def compress(data: bytes) -> bytes:
    return zlib.compress(data, COMPRESS_LEVEL)
