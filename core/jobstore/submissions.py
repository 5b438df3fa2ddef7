"""The API's side of the job store (asyncio): idempotency, streaming an upload into
Redis chunk by chunk, committing under the queue bound, reading, cancelling and
streaming results."""

from __future__ import annotations

import json
import time
import zlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

import redis.asyncio as aioredis

from core.jobstore.chunks import MAX_CHUNK_BYTES, ChunkEncoder
from core.jobstore.records import (
    STAGING,
    CommitResult,
    JobKeys,
    JobRecord,
    JobSpec,
    ResultFormat,
    idempotency_key,
    job_key_prefix,
    pending_key,
    script_outcome,
)
from core.jobstore.scripts import COMMIT, FINISH, PENDING_SUM, RELEASE_IF_OWNED


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
        now = time.time()
        got = await self._finish(
            keys=[k.meta, pending_key(self.prefix)], args=[job_id, "cancelled", repr(now), "", k.meta]
        )
        return script_outcome(got, now)

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
