"""The job store against the real Redis: atomic steps of a job's life, no worker, no torch.

Every test writes under its own key prefix and deletes only those keys.
"""

from __future__ import annotations

import asyncio
import uuid
import zlib
from collections.abc import Iterator

import pytest
import redis
import redis.asyncio as aioredis

from core.jobstore import (
    BadChunk,
    ChunkSkip,
    ChunkStore,
    ChunkWork,
    JobSpec,
    JobStore,
    decode_chunk,
    encode_chunk,
    pending_key,
)
from models.tally import Tally
from tests.api_support import REDIS_URL, delete_prefix

TTL = 600
STATS = Tally(kept=1, replaced=2, discarded=3)


@pytest.fixture
def prefix() -> Iterator[str]:
    name = f"taesar-test-{uuid.uuid4().hex[:10]}"
    yield name
    delete_prefix(name)


def run(coro):
    return asyncio.run(coro)


async def _with_store(prefix: str, fn, *args):
    client = aioredis.Redis.from_url(REDIS_URL)
    try:
        return await fn(JobStore(client, prefix, TTL), *args)
    finally:
        await client.aclose()


def sync_store(prefix: str) -> ChunkStore:
    return ChunkStore(redis.Redis.from_url(REDIS_URL), prefix, TTL)


async def _submit(store: JobStore, job_id: str, n: int, chunk_size: int, max_pending: int = 10**6):
    writer = await store.open_job(job_id, JobSpec("alice", "tiny", "x", {"unknown_items": "error"}), chunk_size)
    for k in range(n):
        await writer.add(f"u{k}", [str(k), str(k + 1)])
    return writer, await writer.commit(max_pending)


def submit(prefix: str, job_id: str, n: int = 5, chunk_size: int = 2, max_pending: int = 10**6):
    return run(_with_store(prefix, _submit, job_id, n, chunk_size, max_pending))


def complete(store: ChunkStore, job_id: str, i: int, n: int = 2) -> str:
    return store.complete(job_id, i, sequences=n, stats=STATS, jsonl=b'{"a":1}\n' * n, recbole=b"u\t1\t2\n")


def test_chunks_round_trip_compressed() -> None:
    blob = encode_chunk(4, ["u1", None], [["1", "2"], ["3"]])
    assert zlib.decompress(blob).startswith(b"{")
    chunk = decode_chunk(blob)
    assert (chunk.first, chunk.users, chunk.items) == (4, ["u1", None], [["1", "2"], ["3"]])


@pytest.mark.parametrize(
    "blob", [b"not zlib", zlib.compress(b"[1]"), zlib.compress(b'{"first":0,"users":[null],"items":[[1]]}')]
)
def test_a_corrupt_chunk_is_a_bad_chunk(blob: bytes) -> None:
    with pytest.raises(BadChunk):
        decode_chunk(blob)


def test_an_upload_is_split_into_chunks_and_becomes_visible_only_when_committed(prefix: str) -> None:
    async def scenario(store: JobStore) -> None:
        writer = await store.open_job("j1", JobSpec("alice", "tiny", "x", {}), 2)
        for k in range(5):
            await writer.add(None, [str(k)])
        assert await store.get("j1") is None  # staging: invisible
        result = await writer.commit(100)
        assert result.accepted and result.pending == 5
        job = await store.get("j1")
        assert job is not None
        assert (job.status, job.total, job.n_chunks, job.owner) == ("queued", 5, 3, "alice")

    run(_with_store(prefix, scenario))
    chunk = decode_chunk(redis.Redis.from_url(REDIS_URL).get(f"{prefix}:job:j1:in:2"))
    assert (chunk.first, chunk.items) == (4, [["4"]])


def test_a_redelivered_chunk_is_stored_and_counted_once(prefix: str) -> None:
    submit(prefix, "j1", n=4, chunk_size=2)
    store = sync_store(prefix)
    # two deliveries of chunk 0 both begin before either completes (visibility timeout)
    assert isinstance(store.begin("j1", 0, 5), ChunkWork)
    assert isinstance(store.begin("j1", 0, 5), ChunkWork)
    assert complete(store, "j1", 0) == "stored"
    assert complete(store, "j1", 0) == "duplicate"
    assert store.begin("j1", 0, 5) == ChunkSkip("done")  # a third delivery does no work at all
    job = store.record("j1")
    assert (job.done, job.chunks_done, job.decisions) == (2, 1, STATS)
    assert store.r.get(f"{prefix}:job:j1:in:0") is None  # input freed with the result
    assert complete(store, "j1", 1) == "succeeded"
    assert complete(store, "j1", 1) == "duplicate"  # success is reported exactly once
    job = store.record("j1")
    assert (job.status, job.done, job.chunks_done) == ("succeeded", 4, 2)
    assert job.finished_at is not None and job.started_at is not None
    assert store.r.hget(pending_key(prefix), "j1") is None


def test_the_queue_bound_refuses_a_job_that_does_not_fit(prefix: str) -> None:
    _, first = submit(prefix, "j1", n=6, max_pending=10)
    assert first.accepted
    _, second = submit(prefix, "j2", n=5, max_pending=10)
    assert not second.accepted and second.pending == 6
    # finishing chunks frees capacity
    store = sync_store(prefix)
    for i in range(3):
        store.begin("j1", i, 5)
        complete(store, "j1", i)
    _, third = submit(prefix, "j3", n=5, max_pending=10)
    assert third.accepted


def test_queue_capacity_of_a_vanished_job_is_reclaimed(prefix: str) -> None:
    submit(prefix, "j1", n=8, max_pending=10)
    redis.Redis.from_url(REDIS_URL).delete(f"{prefix}:job:j1")  # as if it had expired mid-flight
    _, result = submit(prefix, "j2", n=8, max_pending=10)
    assert result.accepted and result.pending == 8


def test_a_cancelled_job_stores_no_more_results_and_stays_cancelled(prefix: str) -> None:
    submit(prefix, "j1", n=4, chunk_size=2)
    store = sync_store(prefix)
    assert isinstance(store.begin("j1", 0, 5), ChunkWork)
    assert run(_with_store(prefix, JobStore.cancel, "j1")) == "cancelled"
    assert complete(store, "j1", 0) == "cancelled"  # the running chunk finished too late
    assert store.begin("j1", 1, 5) == ChunkSkip("cancelled")  # the pending one is skipped
    assert store.fail("j1", "x", "y") == "cancelled"  # final states never change
    keys = {k.decode() for k in store.r.scan_iter(f"{prefix}:job:j1:*")}
    assert not any(":in:" in k or ":out:" in k for k in keys)
    assert store.r.hget(pending_key(prefix), "j1") is None


def test_cancelling_a_finished_job_keeps_its_status(prefix: str) -> None:
    submit(prefix, "j1", n=2, chunk_size=2)
    store = sync_store(prefix)
    store.begin("j1", 0, 5)
    assert complete(store, "j1", 0) == "succeeded"
    assert run(_with_store(prefix, JobStore.cancel, "j1")) == "succeeded"


def test_failing_a_job_records_the_error(prefix: str) -> None:
    submit(prefix, "j1", n=4, chunk_size=2)
    store = sync_store(prefix)
    assert store.fail("j1", "unknown_item", "item '9' is unknown", {"item": "9"}) == "failed"
    job = store.record("j1")
    assert job.status == "failed"
    assert job.error == {"code": "unknown_item", "message": "item '9' is unknown", "details": {"item": "9"}}


def test_a_chunk_delivered_too_often_is_poison(prefix: str) -> None:
    submit(prefix, "j1", n=2, chunk_size=2)
    store = sync_store(prefix)
    for _ in range(3):
        assert isinstance(store.begin("j1", 0, 3), ChunkWork)  # e.g. its worker was SIGKILLed each time
    assert store.begin("j1", 0, 3) == ChunkSkip("poison", 4)


def test_the_first_chunk_marks_the_job_running(prefix: str) -> None:
    submit(prefix, "j1", n=4, chunk_size=2)
    store = sync_store(prefix)
    work = store.begin("j1", 1, 5)
    assert isinstance(work, ChunkWork)
    assert (work.model, work.target_domain, work.chunk.first) == ("tiny", "x", 2)
    assert work.options == {"unknown_items": "error"}
    assert store.record("j1").status == "running"


def test_an_idempotency_key_binds_one_job_under_concurrency(prefix: str) -> None:
    async def scenario(store: JobStore) -> list[str | None]:
        claims = [store.claim_idempotency("alice", "key-1", f"job{k}", 2**31) for k in range(20)]
        return await asyncio.gather(*claims)

    got = run(_with_store(prefix, scenario))
    winners = [k for k, existing in enumerate(got) if existing is None]
    assert len(winners) == 1
    assert {e for e in got if e is not None} == {f"job{winners[0]}"}
    # the same key from another caller is another binding
    assert run(_with_store(prefix, JobStore.claim_idempotency, "bob", "key-1", "jobB", 2**31)) is None


def test_a_discarded_upload_leaves_nothing(prefix: str) -> None:
    async def scenario(store: JobStore) -> None:
        writer = await store.open_job("j1", JobSpec("alice", "tiny", "x", {}), 2)
        for k in range(5):
            await writer.add(None, [str(k)])
        await writer.discard()

    run(_with_store(prefix, scenario))
    assert list(redis.Redis.from_url(REDIS_URL).scan_iter(f"{prefix}:*")) == []


def test_every_key_a_job_writes_expires(prefix: str) -> None:
    submit(prefix, "j1", n=4, chunk_size=2)
    run(_with_store(prefix, JobStore.claim_idempotency, "alice", "k", "j1", 2**31 - 1))
    store = sync_store(prefix)
    store.begin("j1", 0, 5)
    complete(store, "j1", 0)
    keys = list(store.r.scan_iter(f"{prefix}:*"))
    assert len(keys) >= 6  # meta, in:1, out:0, rb:0, tries, pending, idem
    for key in keys:
        assert store.r.ttl(key) > 0, key
