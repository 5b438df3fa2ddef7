"""Each caller's recent jobs, for the API's `GET /jobs`: one Redis sorted set per caller.

    P:owner:{caller}:jobs   zset   job id -> created_at (seconds); expires with the newest job

The API adds a job when it is queued (`remember_job`); nothing removes it explicitly:
entries older than the job TTL are trimmed on the next write, at most `MAX_REMEMBERED`
stay per caller, and a listed id whose job has expired (or was discarded) is skipped.
The caller id is the API key's hash or `anonymous` (app.deps), so it is safe in a key name.
"""

from __future__ import annotations

import time

from core.jobstore.records import STAGING, JobRecord
from core.jobstore.submissions import JobStore

MAX_REMEMBERED = 1000


def owner_jobs_key(prefix: str, owner: str) -> str:
    return f"{prefix}:owner:{owner}:jobs"


async def remember_job(store: JobStore, owner: str, job_id: str) -> None:
    """Add a queued job to its owner's list (and trim the list)."""
    now = time.time()
    key = owner_jobs_key(store.prefix, owner)
    async with store.r.pipeline(transaction=True) as pipe:
        pipe.zadd(key, {job_id: now})
        pipe.zremrangebyscore(key, "-inf", now - store.ttl_s)
        pipe.zremrangebyrank(key, 0, -MAX_REMEMBERED - 1)
        pipe.expire(key, store.ttl_s)
        await pipe.execute()


async def recent_jobs(store: JobStore, owner: str, limit: int) -> list[JobRecord]:
    """The owner's newest jobs that still exist, newest first, at most `limit`."""
    ids = [i.decode() for i in await store.r.zrevrange(owner_jobs_key(store.prefix, owner), 0, limit - 1)]
    if not ids:
        return []
    async with store.r.pipeline(transaction=False) as pipe:
        for job_id in ids:
            pipe.hgetall(store.keys(job_id).meta)
        hashes = await pipe.execute()
    return [
        JobRecord.from_hash(job_id, h)
        for job_id, h in zip(ids, hashes, strict=True)
        if h and h.get(b"status") != STAGING.encode() and h.get(b"owner", b"").decode() == owner
    ]
