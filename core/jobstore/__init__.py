"""Bulk-job state in Redis: the one package through which the API and the workers read
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
    P:owner:{caller}:jobs zset job id -> created_at: the caller's recent jobs (owners.py)
    P:celery:*        the broker's own keys (queue list, unacked hash), see core.queue

Guarantees, each enforced by one Lua script so that no interleaving of API
requests, workers and redeliveries can break it:
- a job becomes visible (status queued) only after all its chunks are stored and the
  queue bound was checked (COMMIT); a failed upload leaves nothing behind;
- a chunk's result is stored and counted at most once, however often its message is
  delivered (COMPLETE writes only while J:out:{i} is absent);
- a job turns succeeded exactly once (the COMPLETE that stores the last chunk), and a
  terminal status (succeeded, failed, cancelled) never changes again; the step that
  makes a job final observes its duration (`taesar_job_duration_seconds`).

Modules: `chunks` (a chunk's stored input), `records` (key names and records),
`scripts` (the Lua steps), `submissions` (the API's side, asyncio), `owners` (each
caller's recent jobs, for the API) and `chunk_store` (a worker's side, blocking).
"""

from __future__ import annotations

from core.jobstore.chunk_store import ChunkStore
from core.jobstore.chunks import (
    COMPRESS_LEVEL,
    MAX_CHUNK_BYTES,
    BadChunk,
    ChunkEncoder,
    ChunkInput,
    compress,
    decode_chunk,
    encode_chunk,
)
from core.jobstore.records import (
    STAGING,
    TERMINAL,
    UNAVAILABLE_ERRORS,
    ChunkSkip,
    ChunkWork,
    CommitResult,
    JobKeys,
    JobRecord,
    JobSpec,
    ResultFormat,
    idempotency_key,
    job_key_prefix,
    pending_key,
)
from core.jobstore.submissions import JobStore, JobWriter, ResultsGone

__all__ = [
    "COMPRESS_LEVEL",
    "MAX_CHUNK_BYTES",
    "STAGING",
    "TERMINAL",
    "UNAVAILABLE_ERRORS",
    "BadChunk",
    "ChunkEncoder",
    "ChunkInput",
    "ChunkSkip",
    "ChunkStore",
    "ChunkWork",
    "CommitResult",
    "JobKeys",
    "JobRecord",
    "JobSpec",
    "JobStore",
    "JobWriter",
    "ResultFormat",
    "ResultsGone",
    "compress",
    "decode_chunk",
    "encode_chunk",
    "idempotency_key",
    "job_key_prefix",
    "pending_key",
]
