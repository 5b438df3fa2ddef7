"""Bulk-job state in Redis: the one module through which the API and the workers read
and write jobs. No torch, no Celery, no FastAPI here.

Key layout (P = settings.key_prefix, J = P:job:{id}); every key of a job expires at
the job's `expires_at` (creation + settings.job_ttl_s), set when the key is written:

    J                 hash    owner, model, target_domain, options (JSON), status, total,
                              n_chunks, chunks_done, done, kept, replaced, discarded,
                              created_at, started_at, finished_at, expires_at, error (JSON)
    J:in:{i}          string  zlib(JSON {"first", "users": [...], "items": [[...], ...]}) of chunk i;
                              deleted in the same step that stores chunk i's result
    J:out:{i}         string  zlib(NDJSON), the output lines of chunk i (models.output)
    J:rb:{i}          string  zlib(RecBole atomic rows of chunk i; chunk 0 starts with the header)
    J:tries           hash    chunk index -> deliveries seen (bounds poison chunks)
    P:idem:{h}        string  job id for (caller, Idempotency-Key); h = sha256 of both
    P:pending         hash    job id -> sequences not done yet (the bounded queue);
                              its TTL is renewed on every write
    P:celery:*        the broker's own keys (queue list, unacked hash), see workers.celery_app

Guarantees, each enforced by one Lua script so that no interleaving of API
requests, workers and redeliveries can break it:
- a job becomes visible (status queued) only after all its chunks are stored and the
  queue bound was checked (COMMIT); a failed upload leaves nothing behind;
- a chunk's result is stored and counted at most once, however often its message is
  delivered (COMPLETE writes only while J:out:{i} is absent);
- a job turns succeeded exactly once (the COMPLETE that stores the last chunk), and a
  terminal status (succeeded, failed, cancelled) never changes again.
"""

from __future__ import annotations

import hashlib
import json
import time
import zlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Literal

import redis
import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

# errors that mean "Redis is unreachable right now", as opposed to a bug: callers turn
# them into 503 + Retry-After (API) or a bounded retry (workers)
UNAVAILABLE_ERRORS: tuple[type[Exception], ...] = (RedisConnectionError, RedisTimeoutError)

STAGING = "staging"  # internal: upload in progress; readers see 404
TERMINAL = frozenset({"succeeded", "failed", "cancelled"})
ResultFormat = Literal["jsonl", "recbole"]
# zlib level 1: ~3x faster than the default and still ~5-10x on these repetitive JSON
# lines; chunks are written once and read once, so speed beats the last few percent
COMPRESS_LEVEL = 1
MAX_CHUNK_BYTES = 8 << 20  # a stored chunk (compressed) at most, whatever its sequences hold


class BadChunk(ValueError):
    """A stored chunk that cannot be decoded: retrying cannot fix it."""


# -- keys ------------------------------------------------------------------------------


@dataclass(frozen=True)
class JobKeys:
    prefix: str
    job_id: str

    @property
    def meta(self) -> str:
        return f"{self.prefix}:job:{self.job_id}"

    def input(self, i: int) -> str:
        return f"{self.meta}:in:{i}"

    def output(self, i: int) -> str:
        return f"{self.meta}:out:{i}"

    def recbole(self, i: int) -> str:
        return f"{self.meta}:rb:{i}"

    @property
    def tries(self) -> str:
        return f"{self.meta}:tries"


def job_key_prefix(prefix: str) -> str:
    return f"{prefix}:job:"


def pending_key(prefix: str) -> str:
    return f"{prefix}:pending"


def idempotency_key(prefix: str, owner: str, key: str) -> str:
    # hashed: a client's header value can be long or odd, and must not reach key names
    digest = hashlib.sha256(f"{owner}\x00{key}".encode()).hexdigest()
    return f"{prefix}:idem:{digest}"


# -- chunk payloads --------------------------------------------------------------------


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


# -- job records -----------------------------------------------------------------------


@dataclass
class JobSpec:
    """What a job decodes: everything the worker needs besides the sequences."""

    owner: str
    model: str
    target_domain: str
    options: dict[str, Any]


@dataclass
class JobRecord:
    id: str
    owner: str
    status: str
    model: str
    target_domain: str
    options: dict[str, Any]
    total: int
    n_chunks: int
    chunks_done: int
    done: int
    kept: int
    replaced: int
    discarded: int
    created_at: float
    started_at: float | None
    finished_at: float | None
    expires_at: int
    error: dict[str, Any] | None = None
    request_digest: str = ""  # of what the submission asked for (app.uploads.RequestDigest)

    @classmethod
    def from_hash(cls, job_id: str, h: dict[bytes, bytes]) -> JobRecord:
        s = {k.decode(): v.decode() for k, v in h.items()}

        def num(name: str) -> int:
            return int(s.get(name) or 0)

        def when(name: str) -> float | None:
            return float(s[name]) if s.get(name) else None

        return cls(
            id=job_id,
            owner=s["owner"],
            status=s["status"],
            model=s["model"],
            target_domain=s["target_domain"],
            options=json.loads(s.get("options") or "{}"),
            total=num("total"),
            n_chunks=num("n_chunks"),
            chunks_done=num("chunks_done"),
            done=num("done"),
            kept=num("kept"),
            replaced=num("replaced"),
            discarded=num("discarded"),
            created_at=float(s["created_at"]),
            started_at=when("started_at"),
            finished_at=when("finished_at"),
            expires_at=num("expires_at"),
            error=json.loads(s["error"]) if s.get("error") else None,
            request_digest=s.get("request_digest", ""),
        )


@dataclass
class CommitResult:
    accepted: bool
    pending: int  # sequences pending across all jobs (before this one, when refused)


# -- Lua: each script is one atomic step of a job's life ---------------------------------

_PRUNED_PENDING_SUM = """
local pending = 0
local entries = redis.call('HGETALL', pkey)
for i = 1, #entries, 2 do
  -- a job that expired or vanished mid-flight must not hold queue capacity forever
  if redis.call('EXISTS', ARGV[1] .. entries[i]) == 1 then
    pending = pending + tonumber(entries[i + 1])
  else
    redis.call('HDEL', pkey, entries[i])
  end
end
"""

# KEYS: meta, pending  ARGV: job key prefix, job id, total, n_chunks, max pending, pending ttl, request digest
COMMIT = (
    """
if redis.call('HGET', KEYS[1], 'status') ~= 'staging' then return {-1, 0} end
local pkey = KEYS[2]
"""
    + _PRUNED_PENDING_SUM
    + """
local total = tonumber(ARGV[3])
if pending + total > tonumber(ARGV[5]) then return {0, pending} end
redis.call('HSET', KEYS[1], 'status', 'queued', 'total', ARGV[3], 'n_chunks', ARGV[4], 'request_digest', ARGV[7])
redis.call('HSET', KEYS[2], ARGV[2], total)
redis.call('EXPIRE', KEYS[2], ARGV[6])
return {1, pending + total}
"""
)

# KEYS: pending  ARGV: job key prefix
PENDING_SUM = "local pkey = KEYS[1]\n" + _PRUNED_PENDING_SUM + "return pending\n"

# KEYS: meta, in:i, out:i, tries  ARGV: chunk index, now, max deliveries
BEGIN = """
local st = redis.call('HGET', KEYS[1], 'status')
if (not st) or st == 'staging' then return {'gone'} end
if st == 'succeeded' or st == 'failed' or st == 'cancelled' then return {st} end
if redis.call('EXISTS', KEYS[3]) == 1 then return {'done'} end
local exp = redis.call('HGET', KEYS[1], 'expires_at')
local tries = redis.call('HINCRBY', KEYS[4], ARGV[1], 1)
redis.call('EXPIREAT', KEYS[4], exp)
if tries > tonumber(ARGV[3]) then return {'poison', tostring(tries)} end
local blob = redis.call('GET', KEYS[2])
if not blob then return {'missing'} end
if st == 'queued' then redis.call('HSET', KEYS[1], 'status', 'running', 'started_at', ARGV[2]) end
local m = redis.call('HMGET', KEYS[1], 'model', 'target_domain', 'options')
return {'run', blob, m[1], m[2], m[3], tostring(tries)}
"""

# KEYS: meta, in:i, out:i, rb:i, pending
# ARGV: job id, sequences, kept, replaced, discarded, now, out blob, recbole blob
COMPLETE = """
local st = redis.call('HGET', KEYS[1], 'status')
if (not st) or st == 'staging' then return 'gone' end
if redis.call('EXISTS', KEYS[3]) == 1 then return 'duplicate' end
if st ~= 'queued' and st ~= 'running' then
  redis.call('DEL', KEYS[2])
  return st
end
local exp = redis.call('HGET', KEYS[1], 'expires_at')
redis.call('SET', KEYS[3], ARGV[7], 'EXAT', exp)
redis.call('SET', KEYS[4], ARGV[8], 'EXAT', exp)
redis.call('DEL', KEYS[2])
local n = tonumber(ARGV[2])
redis.call('HINCRBY', KEYS[1], 'done', n)
redis.call('HINCRBY', KEYS[1], 'kept', ARGV[3])
redis.call('HINCRBY', KEYS[1], 'replaced', ARGV[4])
redis.call('HINCRBY', KEYS[1], 'discarded', ARGV[5])
local chunks = redis.call('HINCRBY', KEYS[1], 'chunks_done', 1)
if redis.call('HINCRBY', KEYS[5], ARGV[1], -n) <= 0 then redis.call('HDEL', KEYS[5], ARGV[1]) end
if chunks >= tonumber(redis.call('HGET', KEYS[1], 'n_chunks')) then
  redis.call('HSET', KEYS[1], 'status', 'succeeded', 'finished_at', ARGV[6])
  redis.call('HDEL', KEYS[5], ARGV[1])
  return 'succeeded'
end
return 'stored'
"""

# KEYS: meta, pending  ARGV: job id, new status, now, error JSON or '', job key (J)
FINISH = """
local st = redis.call('HGET', KEYS[1], 'status')
if (not st) or st == 'staging' then return 'gone' end
if st == 'succeeded' or st == 'failed' or st == 'cancelled' then return st end
redis.call('HSET', KEYS[1], 'status', ARGV[2], 'finished_at', ARGV[3])
if ARGV[4] ~= '' then redis.call('HSET', KEYS[1], 'error', ARGV[4]) end
redis.call('HDEL', KEYS[2], ARGV[1])
-- results of a job that will never succeed are never served: free the memory now
local n = tonumber(redis.call('HGET', KEYS[1], 'n_chunks') or '0')
for i = 0, n - 1 do
  redis.call('DEL', ARGV[5] .. ':in:' .. i, ARGV[5] .. ':out:' .. i, ARGV[5] .. ':rb:' .. i)
end
return ARGV[2]
"""

# KEYS: idempotency key  ARGV: job id
RELEASE_IF_OWNED = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


# -- API side (asyncio) ---------------------------------------------------------------


class JobStore:
    """What the API does with jobs. Cheap to build: it wraps a shared client."""

    def __init__(self, client: aioredis.Redis, prefix: str, ttl_s: int) -> None:
        self.r = client
        self.prefix = prefix
        self.ttl_s = ttl_s
        self._commit = client.register_script(COMMIT)
        self._pending_sum = client.register_script(PENDING_SUM)
        self._finish = client.register_script(FINISH)
        self._release = client.register_script(RELEASE_IF_OWNED)

    def keys(self, job_id: str) -> JobKeys:
        return JobKeys(self.prefix, job_id)

    # idempotency

    async def claim_idempotency(self, owner: str, key: str, job_id: str, expires_at: int) -> str | None:
        """Bind (owner, key) to `job_id`; returns the job id already bound, if any.

        SET NX makes two concurrent submissions with one key race on a single write:
        exactly one creates a job, the other gets its id.
        """
        name = idempotency_key(self.prefix, owner, key)
        if await self.r.set(name, job_id, nx=True, exat=expires_at):
            return None
        existing = await self.r.get(name)
        if existing is None:  # expired between the two calls: claim again
            return await self.claim_idempotency(owner, key, job_id, expires_at)
        return existing.decode()

    async def release_idempotency(self, owner: str, key: str, job_id: str) -> None:
        """Forget the binding after a failed submission, so that a retry can succeed."""
        await self._release(keys=[idempotency_key(self.prefix, owner, key)], args=[job_id])

    # submission

    async def open_job(self, job_id: str, spec: JobSpec, chunk_size: int) -> JobWriter:
        now = time.time()
        expires_at = int(now) + self.ttl_s
        fields = {
            "owner": spec.owner,
            "model": spec.model,
            "target_domain": spec.target_domain,
            "options": json.dumps(spec.options, separators=(",", ":")),
            "status": STAGING,
            "created_at": repr(now),
            "expires_at": str(expires_at),
        }
        meta = self.keys(job_id).meta
        async with self.r.pipeline(transaction=True) as pipe:
            pipe.hset(meta, mapping=fields)
            pipe.expireat(meta, expires_at)
            await pipe.execute()
        return JobWriter(self, job_id, chunk_size, expires_at)

    async def commit(self, job_id: str, total: int, n_chunks: int, max_pending: int, digest: str = "") -> CommitResult:
        """Queue the staged job if the bound allows; `digest` (of what the request asked
        for) lets a later request with the same Idempotency-Key be compared."""
        accepted, pending = await self._commit(
            keys=[self.keys(job_id).meta, pending_key(self.prefix)],
            args=[job_key_prefix(self.prefix), job_id, total, n_chunks, max_pending, self.ttl_s, digest],
        )
        assert accepted != -1, f"job {job_id} committed twice"
        return CommitResult(bool(accepted), int(pending))

    async def discard(self, job_id: str, n_chunks: int) -> None:
        """Delete a job that was never accepted (bad upload, queue full, enqueue failure)."""
        k = self.keys(job_id)
        # outputs too: a worker may have finished a chunk before a failed enqueue was noticed
        names = [k.meta, k.tries, *(key for i in range(n_chunks) for key in (k.input(i), k.output(i), k.recbole(i)))]
        async with self.r.pipeline(transaction=False) as pipe:
            pipe.hdel(pending_key(self.prefix), job_id)
            for start in range(0, len(names), 1000):
                pipe.delete(*names[start : start + 1000])
            await pipe.execute()

    async def pending_sequences(self) -> int:
        return int(await self._pending_sum(keys=[pending_key(self.prefix)], args=[job_key_prefix(self.prefix)]))

    # reading and cancelling

    async def get(self, job_id: str) -> JobRecord | None:
        """The job, or None when it does not exist, expired or is still being uploaded."""
        h = await self.r.hgetall(self.keys(job_id).meta)
        if not h or h.get(b"status") == STAGING.encode():
            return None
        return JobRecord.from_hash(job_id, h)

    async def cancel(self, job_id: str) -> str:
        """Cancel unless already final; returns the status the job ends up in."""
        k = self.keys(job_id)
        got = await self._finish(
            keys=[k.meta, pending_key(self.prefix)], args=[job_id, "cancelled", repr(time.time()), "", k.meta]
        )
        return got.decode()

    async def iter_results(self, job: JobRecord, fmt: ResultFormat) -> AsyncIterator[bytes]:
        """The stored results chunk by chunk, in input order; one chunk in memory at a time."""
        k = self.keys(job.id)
        # the RecBole header is part of chunk 0's rows: the format is the worker's (models.output)
        for i in range(job.n_chunks):
            blob = await self.r.get(k.recbole(i) if fmt == "recbole" else k.output(i))
            if blob is None:
                # the job expired while we streamed: stop rather than send a silent gap
                raise ResultsGone(f"chunk {i} of job {job.id} is gone (expired)")
            yield zlib.decompress(blob)

    async def results_complete(self, job: JobRecord) -> bool:
        k = self.keys(job.id)
        names = [k.output(i) for i in range(job.n_chunks)]
        found = 0
        for start in range(0, len(names), 1000):
            found += await self.r.exists(*names[start : start + 1000])
        return found == job.n_chunks


class ResultsGone(RuntimeError):
    pass


@dataclass
class JobWriter:
    """Streams an upload into Redis, one chunk of `chunk_size` sequences at a time, so
    that an upload of millions of sequences never sits in the API's memory. A chunk of
    very long sequences is stored early, once it compresses to `MAX_CHUNK_BYTES`: the
    upload's memory and Redis's largest value stay bounded whatever the sequences hold
    (each chunk records the index of its first sequence)."""

    store: JobStore
    job_id: str
    chunk_size: int
    expires_at: int
    total: int = 0
    n_chunks: int = 0
    _chunk: ChunkEncoder | None = None

    @property
    def count(self) -> int:
        """Sequences added so far, flushed or not."""
        return self.total + (self._chunk.count if self._chunk is not None else 0)

    async def add(self, user_id: str | None, items: list[str]) -> None:
        if self._chunk is None:
            self._chunk = ChunkEncoder(self.total)
        self._chunk.add(user_id, items)
        if self._chunk.count >= self.chunk_size or self._chunk.size >= MAX_CHUNK_BYTES:
            await self.flush()

    async def flush(self) -> None:
        if self._chunk is None:
            return
        chunk, self._chunk = self._chunk, None
        await self.store.r.set(self.store.keys(self.job_id).input(self.n_chunks), chunk.finish(), exat=self.expires_at)
        self.n_chunks += 1
        self.total += chunk.count

    async def commit(self, max_pending: int, digest: str = "") -> CommitResult:
        await self.flush()
        return await self.store.commit(self.job_id, self.total, self.n_chunks, max_pending, digest)

    async def discard(self) -> None:
        # +1: a chunk whose SET was in flight when the upload failed may have landed
        await self.store.discard(self.job_id, self.n_chunks + 1)


# -- worker side (blocking) --------------------------------------------------------------


@dataclass
class ChunkWork:
    job_id: str
    index: int
    model: str
    target_domain: str
    options: dict[str, Any]
    chunk: ChunkInput
    delivery: int  # 1 on the first delivery of this chunk


@dataclass
class ChunkSkip:
    """Why a delivered chunk needs no work: the job is gone or final, the chunk is done,
    or it was delivered too often (poison)."""

    reason: str
    deliveries: int = 0


class ChunkStore:
    """What a worker does with jobs: claim a chunk, watch for cancellation, store results."""

    def __init__(self, client: redis.Redis, prefix: str, ttl_s: int) -> None:
        self.r = client
        self.prefix = prefix
        self.ttl_s = ttl_s
        self._begin = client.register_script(BEGIN)
        self._complete = client.register_script(COMPLETE)
        self._finish = client.register_script(FINISH)

    def keys(self, job_id: str) -> JobKeys:
        return JobKeys(self.prefix, job_id)

    def begin(self, job_id: str, index: int, max_deliveries: int) -> ChunkWork | ChunkSkip:
        """Count this delivery and load the chunk; marks the job running on its first chunk."""
        k = self.keys(job_id)
        got = self._begin(
            keys=[k.meta, k.input(index), k.output(index), k.tries], args=[index, repr(time.time()), max_deliveries]
        )
        reason = got[0].decode()
        if reason != "run":
            return ChunkSkip(reason, int(got[1]) if len(got) > 1 else 0)
        _, blob, model, target, options, tries = got
        return ChunkWork(
            job_id, index, model.decode(), target.decode(), json.loads(options), decode_chunk(blob), int(tries)
        )

    def status(self, job_id: str) -> str | None:
        st = self.r.hget(self.keys(job_id).meta, "status")
        return st.decode() if st is not None else None

    def complete(
        self, job_id: str, index: int, *, sequences: int, stats: dict[str, int], jsonl: bytes, recbole: bytes
    ) -> str:
        """Store chunk `index`'s result and count it, only the first time; returns
        'stored', 'succeeded' (this was the last chunk), 'duplicate', or the job's
        final status / 'gone' when the result is no longer wanted."""
        k = self.keys(job_id)
        got = self._complete(
            keys=[k.meta, k.input(index), k.output(index), k.recbole(index), pending_key(self.prefix)],
            args=[
                job_id,
                sequences,
                stats["kept"],
                stats["replaced"],
                stats["discarded"],
                repr(time.time()),
                compress(jsonl),
                compress(recbole),
            ],
        )
        return got.decode()

    def fail(self, job_id: str, code: str, message: str, details: dict[str, Any] | None = None) -> str:
        """Fail the job (unless already final) with an error its owner can read."""
        k = self.keys(job_id)
        error = json.dumps({"code": code, "message": message, "details": details or {}}, default=str)
        got = self._finish(
            keys=[k.meta, pending_key(self.prefix)], args=[job_id, "failed", repr(time.time()), error, k.meta]
        )
        return got.decode()

    def record(self, job_id: str) -> JobRecord | None:
        h = self.r.hgetall(self.keys(job_id).meta)
        return JobRecord.from_hash(job_id, h) if h and h.get(b"status") != STAGING.encode() else None
