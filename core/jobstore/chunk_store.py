"""A worker's side of the job store (blocking): claim a delivered chunk, watch for
cancellation, store its results or fail the job."""

from __future__ import annotations

import json
import time
from typing import Any

import redis

from core.jobstore.chunks import compress, decode_chunk
from core.jobstore.records import (
    STAGING,
    ChunkSkip,
    ChunkWork,
    JobKeys,
    JobRecord,
    pending_key,
    script_outcome,
)
from core.jobstore.scripts import BEGIN, COMPLETE, FINISH
from models.tally import Tally


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

    def complete(self, job_id: str, index: int, *, sequences: int, stats: Tally, jsonl: bytes, recbole: bytes) -> str:
        """Store chunk `index`'s result and count it, only the first time; returns
        'stored', 'succeeded' (this was the last chunk), 'duplicate', or the job's
        final status / 'gone' when the result is no longer wanted."""
        k = self.keys(job_id)
        now = time.time()
        got = self._complete(
            keys=[k.meta, k.input(index), k.output(index), k.recbole(index), pending_key(self.prefix)],
            args=[
                job_id,
                sequences,
                stats.kept,
                stats.replaced,
                stats.discarded,
                repr(now),
                compress(jsonl),
                compress(recbole),
            ],
        )
        return script_outcome(got, now)

    def fail(self, job_id: str, code: str, message: str, details: dict[str, Any] | None = None) -> str:
        """Fail the job (unless already final) with an error its owner can read."""
        k = self.keys(job_id)
        now = time.time()
        error = json.dumps({"code": code, "message": message, "details": details or {}}, default=str)
        got = self._finish(keys=[k.meta, pending_key(self.prefix)], args=[job_id, "failed", repr(now), error, k.meta])
        return script_outcome(got, now)

    def record(self, job_id: str) -> JobRecord | None:
        h = self.r.hgetall(self.keys(job_id).meta)
        return JobRecord.from_hash(job_id, h) if h and h.get(b"status") != STAGING.encode() else None
