"""Faults with real processes: a worker SIGKILLed mid-job, the API process restarted
mid-job, Redis killed and restarted, and a poisoned chunk.

Workers and API servers run as the production commands (`python -m app.cli worker`,
`python -m app.cli serve`) in subprocesses. Every test uses its own key prefix (which
also names its Celery queue) on the shared Redis, and deletes only its own keys; the
Redis-down test runs a private `redis-server` on a free port, never the shared one.

Timing: a worker or API process needs ~5-8 s to start (torch import, bundle load), and a
SIGKILLed worker's chunk comes back after the visibility timeout (see docs/reliability.md).
"""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from tests.api_support import REDIS_URL, api_client, delete_prefix, model_dir_with, settings_for

pytestmark = pytest.mark.anyio

ROOT = Path(__file__).resolve().parents[1]
KEY = "fault-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
NDJSON = {"Content-Type": "application/x-ndjson"}
START_TIMEOUT_S = 90
# The redelivery test's visibility timeout: production's minimum is 60 s, which alone would
# make the test wait over a minute for the killed chunk to come back. The transport's
# restore path is the same at any value, so the test uses a short one (see the settings
# comment and docs/reliability.md for why a short value is safe, only wasteful).
VISIBILITY_TIMEOUT_S = 5


# -- processes ------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.1) -> Any:
    """Poll `predicate` until it returns something other than None or False; fail with
    `what` after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        got = predicate()
        if got is not None and got is not False:
            return got
        assert time.monotonic() < deadline, f"timed out after {timeout}s waiting for {what}"
        time.sleep(interval)


class Proc:
    """A subprocess whose output goes to a log file that failures print."""

    def __init__(self, cmd: list[str], env: dict[str, str], log: Path) -> None:
        self.log = log
        with log.open("ab") as out:
            self.proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def tail(self) -> str:
        return self.text()[-4000:]

    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self) -> None:
        if self.alive():
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.alive():
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.kill()


def service_env(model_dir: Path, prefix: str, redis_url: str = REDIS_URL, **extra: str) -> dict[str, str]:
    return {
        **os.environ,
        "TAESAR_MODEL_DIR": str(model_dir),
        "TAESAR_KEY_PREFIX": prefix,
        "TAESAR_REDIS_URL": redis_url,
        "TAESAR_DEVICE": "cpu",
        "TAESAR_API_KEYS": KEY,
        "TAESAR_LOG_LEVEL": "INFO",
        "OMP_NUM_THREADS": "1",  # several processes share 2 cores: no OpenMP spinning
        **extra,
    }


@contextmanager
def worker_process(env: dict[str, str], log: Path) -> Iterator[Proc]:
    """`taesar worker` (Celery, --pool solo); yields once it consumes and its model is loaded."""
    w = Proc([sys.executable, "-m", "app.cli", "worker"], env, log)
    try:
        wait_until(lambda: _check_alive(w) and "worker_models_loaded" in w.text(), START_TIMEOUT_S, "worker start")
        yield w
    finally:
        w.stop()


@contextmanager
def api_process(env: dict[str, str], port: int, log: Path) -> Iterator[Proc]:
    """`taesar serve` on `port`; yields once /readyz answers."""
    api = Proc([sys.executable, "-m", "app.cli", "serve", "--port", str(port)], env, log)
    try:
        wait_until(lambda: _check_alive(api) and _ready(port), START_TIMEOUT_S, "API start")
        yield api
    finally:
        api.stop()


def _check_alive(p: Proc) -> bool:
    assert p.alive(), f"process exited:\n{p.tail()}"
    return True


def _ready(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def start_redis(port: int, log: Path) -> Proc:
    cmd = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    server = Proc(cmd, dict(os.environ), log)
    client = redis.Redis(port=port, socket_connect_timeout=0.5)
    wait_until(lambda: _check_alive(server) and _pings(client), 20, "private redis-server")
    client.close()
    return server


def _pings(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False


# -- data and polling ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def model_dir(tiny_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return model_dir_with(tiny_bundle, tmp_path_factory.mktemp("faults"))


@pytest.fixture
def prefix() -> Iterator[str]:
    p = f"test-faults-{uuid.uuid4().hex[:8]}"
    yield p
    delete_prefix(p)


def make_sequences(catalogue: dict[str, Any], n: int, seed: int = 0) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    items = catalogue["item_ids"]
    return [{"user_id": f"u{k}", "items": [rng.choice(items) for _ in range(rng.randint(4, 16))]} for k in range(n)]


def ndjson(seqs: list[dict[str, Any]]) -> bytes:
    return "".join(json.dumps(s) + "\n" for s in seqs).encode()


def job_of(client: httpx.Client, job_id: str) -> dict[str, Any]:
    r = client.get(f"/jobs/{job_id}", headers=AUTH)
    assert r.status_code == 200, r.text
    return r.json()


def wait_final(get: Callable[[], dict[str, Any]], timeout: float, watch: list[Proc]) -> dict[str, Any]:
    def final() -> dict[str, Any] | None:
        for p in watch:
            assert p.alive(), f"a process died:\n{p.tail()}"
        job = get()
        return job if job["status"] in ("succeeded", "failed", "cancelled") else None

    return wait_until(final, timeout, "the job to finish", interval=0.2)


def assert_every_sequence_once_in_order(lines: list[str], seqs: list[dict[str, Any]]) -> None:
    results = [json.loads(x) for x in lines if x]
    assert len(results) == len(seqs)
    assert [r["user_id"] for r in results] == [s["user_id"] for s in seqs]
    for r, s in zip(results, seqs, strict=True):
        assert [d["item"] for d in r["decisions"]] == [str(i) for i in s["items"]]


# -- a worker killed mid-job ------------------------------------------------------------------


def test_a_job_survives_its_worker_being_sigkilled_mid_chunk(
    model_dir: Path, prefix: str, catalogue: dict, tmp_path: Path
) -> None:
    """At-least-once delivery: the killed worker's unacked chunk goes back to the queue after
    the visibility timeout and a second worker finishes the job; the results hold every
    sequence exactly once, in input order."""
    env = service_env(model_dir, prefix, TAESAR_VISIBILITY_TIMEOUT_S=str(VISIBILITY_TIMEOUT_S))
    n, chunk = 6000, 100  # ~60 chunks of ~0.1 s: a job of several seconds
    seqs = make_sequences(catalogue, n)
    broker = redis.Redis.from_url(REDIS_URL)
    unacked = f"{prefix}:celery:unacked"
    started = time.monotonic()
    with worker_process(env, tmp_path / "worker-a.log") as first:
        job_id, store = _submit_direct(model_dir, prefix, seqs, catalogue["domains"][1], chunk_size=chunk)
        wait_until(lambda: store.chunks_done(job_id) >= 3, 60, "the first chunks")
        killed = wait_until(lambda: _kill_mid_chunk(first, store, job_id), 30, "a moment mid-chunk", interval=0.01)
        killed_at = time.monotonic()
        assert broker.hlen(unacked) == 1
    with worker_process(env, tmp_path / "worker-b.log") as second:
        job = wait_final(lambda: store.job(job_id), 120, [second])
        recovered_s = time.monotonic() - killed_at
    assert job["status"] == "succeeded", job
    assert (job["done"], job["total"], job["n_chunks"]) == (n, n, n // chunk)  # counted once
    assert_every_sequence_once_in_order(store.results(job_id), seqs)
    assert broker.hlen(unacked) == 0 and broker.llen(f"{prefix}:celery:{prefix}.chunks") == 0
    tries = {int(k): int(v) for k, v in broker.hgetall(f"{prefix}:job:{job_id}:tries").items()}
    # the chunk that was decoding when the worker died ran twice, every other chunk once
    assert tries == {i: 2 if i == killed else 1 for i in range(n // chunk)}
    broker.close()
    _report("sigkill", total_s=time.monotonic() - started, recovered_s=recovered_s, chunk_killed=killed)


def _kill_mid_chunk(worker: Proc, store: DirectStore, job_id: str) -> int | None:
    """Freeze the worker; if it is inside a chunk (begun, not completed), SIGKILL it and
    return that chunk's index, else let it run on. SIGSTOP makes the check and the kill
    one instant, so the test never kills between two chunks by bad luck."""
    worker.proc.send_signal(signal.SIGSTOP)
    begun = {int(k) for k in store.r.hkeys(f"{store.prefix}:job:{job_id}:tries")}
    completed = {i for i in begun if store.r.exists(f"{store.prefix}:job:{job_id}:out:{i}")}
    in_flight = begun - completed
    if len(in_flight) == 1:
        worker.kill()
        return in_flight.pop()
    worker.proc.send_signal(signal.SIGCONT)
    return None


class DirectStore:
    """Reads a job straight from Redis (the API's own view is tested elsewhere)."""

    def __init__(self, prefix: str) -> None:
        self.r = redis.Redis.from_url(REDIS_URL)
        self.prefix = prefix

    def job(self, job_id: str) -> dict[str, Any]:
        h = {k.decode(): v.decode() for k, v in self.r.hgetall(f"{self.prefix}:job:{job_id}").items()}
        return {k: int(h[k]) if k in ("done", "total", "n_chunks", "chunks_done") else v for k, v in h.items()}

    def chunks_done(self, job_id: str) -> int:
        return int(self.r.hget(f"{self.prefix}:job:{job_id}", "chunks_done") or 0)

    def results(self, job_id: str) -> list[str]:
        import zlib

        n = int(self.r.hget(f"{self.prefix}:job:{job_id}", "n_chunks"))
        return [
            line
            for i in range(n)
            for line in zlib.decompress(self.r.get(f"{self.prefix}:job:{job_id}:out:{i}")).decode().splitlines()
        ]


def _submit_direct(
    model_dir: Path, prefix: str, seqs: list[dict[str, Any]], target: str, chunk_size: int
) -> tuple[str, DirectStore]:
    """POST /jobs through the in-process app (real Redis, real queue)."""
    import anyio

    settings = settings_for(model_dir, key_prefix=prefix, chunk_size=chunk_size, api_keys=[KEY], job_ttl_s=3600)

    async def submit() -> str:
        async with api_client(settings) as client:
            r = await client.post(
                "/jobs", params={"target_domain": target}, content=ndjson(seqs), headers=NDJSON | AUTH
            )
            assert r.status_code == 202, r.text
            return r.json()["id"]

    return anyio.run(submit), DirectStore(prefix)


FIGURES = Path(os.environ.get("TAESAR_FAULT_FIGURES", "")) if os.environ.get("TAESAR_FAULT_FIGURES") else None


def _report(name: str, **figures: float) -> None:
    """Append this test's timings to $TAESAR_FAULT_FIGURES (for docs/reliability.md), if set."""
    line = json.dumps({"test": name, **{k: round(v, 2) if isinstance(v, float) else v for k, v in figures.items()}})
    print(line)
    if FIGURES is not None:
        with FIGURES.open("a") as f:
            f.write(line + "\n")


# -- the API process restarted mid-job ---------------------------------------------------------


class LazyWorker:
    """One worker for the module's tests on the shared Redis, started on first use (a test
    may first need to stage work that no worker must see yet)."""

    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.env, self.log = env, log
        self.proc: Proc | None = None

    def start(self) -> None:
        """Start the process without waiting for it (overlap its start-up with other work)."""
        if self.proc is None:
            self.proc = Proc([sys.executable, "-m", "app.cli", "worker"], self.env, self.log)

    def ensure(self) -> Proc:
        self.start()
        assert self.proc is not None
        proc = self.proc
        wait_until(lambda: _check_alive(proc) and "worker_models_loaded" in proc.text(), START_TIMEOUT_S, "worker")
        return proc

    def close(self) -> None:
        if self.proc is not None:
            self.proc.stop()


@pytest.fixture(scope="module")
def shared_prefix() -> Iterator[str]:
    p = f"test-faults-{uuid.uuid4().hex[:8]}"
    yield p
    delete_prefix(p)


@pytest.fixture(scope="module")
def shared_worker(
    model_dir: Path, shared_prefix: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LazyWorker]:
    w = LazyWorker(service_env(model_dir, shared_prefix), tmp_path_factory.mktemp("shared") / "worker.log")
    yield w
    w.close()


def test_job_status_and_results_survive_an_api_restart_mid_job(
    model_dir: Path, shared_prefix: str, shared_worker: LazyWorker, catalogue: dict, tmp_path: Path
) -> None:
    """Job state lives in Redis, not in the API process: a second API process (SIGKILL, then
    a fresh start on the same port) serves the same job, its progress and its results."""
    port = free_port()
    env = service_env(model_dir, shared_prefix, TAESAR_CHUNK_SIZE="20")
    seqs = make_sequences(catalogue, 2400, seed=3)
    idem = {"Idempotency-Key": f"restart-{uuid.uuid4().hex}"}
    started = time.monotonic()
    shared_worker.start()  # both start at once: each needs seconds to import torch and load the bundle
    with api_process(env, port, tmp_path / "api-1.log") as first:
        worker = shared_worker.ensure()
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
            r = client.post(
                "/jobs",
                params={"target_domain": catalogue["domains"][2]},
                content=ndjson(seqs),
                headers=NDJSON | AUTH | idem,
            )
            assert r.status_code == 202, r.text
            job_id = r.json()["id"]
            before = wait_until(
                lambda: (j := job_of(client, job_id))["progress"]["done"] > 0 and j, 60, "the job to start"
            )
        first.kill()
    assert before["status"] in ("running", "succeeded")
    with api_process(env, port, tmp_path / "api-2.log") as second:
        restarted_s = time.monotonic() - started
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
            after = job_of(client, job_id)
            assert after["id"] == job_id and after["created_at"] == before["created_at"]
            assert after["progress"]["done"] >= before["progress"]["done"]
            assert after["progress"]["total"] == len(seqs)
            # the idempotency record survived too: a client retrying its submission gets the job
            again = client.post(
                "/jobs",
                params={"target_domain": catalogue["domains"][2]},
                content=ndjson(seqs),
                headers=NDJSON | AUTH | idem,
            )
            assert again.status_code == 200 and again.json()["id"] == job_id, again.text
            job = wait_final(lambda: job_of(client, job_id), 120, [second, worker])
            assert job["status"] == "succeeded", job
            results = client.get(f"/jobs/{job_id}/results", headers=AUTH)
    assert results.status_code == 200 and results.headers["x-taesar-sequences"] == str(len(seqs))
    assert_every_sequence_once_in_order(results.text.splitlines(), seqs)
    assert job["progress"] == {"done": len(seqs), "total": len(seqs)}
    _report("api_restart", total_s=time.monotonic() - started, restart_done_s=restarted_s)


# -- poisoned chunks ----------------------------------------------------------------------------


POISONS = {
    "garbage bytes": b"\x00not zlib at all",
    "zlib of a wrong shape": __import__("zlib").compress(b'{"first": 0, "users": ["u"], "items": [[1, 2]]}'),
}


@pytest.mark.parametrize("poison", list(POISONS))
def test_a_poisoned_chunk_fails_its_job_at_once_with_a_clear_error(
    model_dir: Path, shared_prefix: str, shared_worker: LazyWorker, catalogue: dict, poison: str
) -> None:
    """A chunk whose stored input cannot be decoded fails the job on its first delivery:
    no retry, no redelivery loop, and the owner reads why."""
    import anyio

    from core.jobstore import JobSpec, JobStore
    from core.queue import TASK_PROCESS_CHUNK, create_celery

    settings = settings_for(model_dir, key_prefix=shared_prefix, api_keys=[KEY], job_ttl_s=3600)
    from app.deps import caller_id

    job_id = uuid.uuid4().hex
    seqs = make_sequences(catalogue, 100, seed=5)

    async def stage_poisoned() -> None:
        # what POST /jobs does, with the poison slipped in between staging and enqueueing
        client = redis.asyncio.Redis.from_url(REDIS_URL)
        store = JobStore(client, shared_prefix, 3600)
        writer = await store.open_job(job_id, JobSpec(caller_id(KEY), "tiny", catalogue["domains"][0], {}), 20)
        for s in seqs:
            await writer.add(s["user_id"], s["items"])
        assert (await writer.commit(10**6)).accepted
        await client.set(store.keys(job_id).input(2), POISONS[poison], keepttl=True)
        await client.aclose()

    anyio.run(stage_poisoned)
    producer = create_celery(settings)
    with producer.producer_or_acquire() as p:
        for i in range(5):
            producer.send_task(TASK_PROCESS_CHUNK, args=[job_id, i], producer=p)
    worker = shared_worker.ensure()

    async def read_job() -> httpx.Response:
        async with api_client(settings) as client:
            return await client.get(f"/jobs/{job_id}", headers=AUTH)

    broker = redis.Redis.from_url(REDIS_URL)
    started = time.monotonic()
    wait_until(
        lambda: broker.hget(f"{shared_prefix}:job:{job_id}", "status") == b"failed" and worker.alive(),
        60,
        "the poisoned job to fail",
    )
    failed_s = time.monotonic() - started
    job = anyio.run(read_job)
    assert job.status_code == 200
    error = job.json()["error"]
    assert job.json()["status"] == "failed"
    assert error["code"] == "bad_data" and error["message"].startswith("chunk 2: stored chunk is not valid"), error
    # every message was acked: nothing waits for redelivery, and the poisoned chunk ran once
    queue = f"{shared_prefix}:celery:{shared_prefix}.chunks"
    wait_until(lambda: broker.llen(queue) == 0 and broker.hlen(f"{shared_prefix}:celery:unacked") == 0, 30, "acks")
    assert int(broker.hget(f"{shared_prefix}:job:{job_id}:tries", "2")) == 1
    # and the job's inputs are freed: it will never run again
    assert not list(broker.scan_iter(f"{shared_prefix}:job:{job_id}:in:*"))
    broker.close()
    _report(f"poison ({poison})", failed_s=failed_s)


# -- Redis down, then back ----------------------------------------------------------------------


def test_redis_down_degrades_to_503s_and_recovers_without_restarts(
    model_dir: Path, catalogue: dict, tmp_path: Path
) -> None:
    """With Redis gone: /readyz 503, /regenerate still 200 (it needs no Redis), every /jobs
    call 503 + Retry-After, never a 500. With Redis back (empty, on the same port), new
    jobs run through the same API and worker processes."""
    import anyio

    port = free_port()
    url = f"redis://127.0.0.1:{port}/0"
    prefix = f"test-faults-{uuid.uuid4().hex[:8]}"
    server = start_redis(port, tmp_path / "redis-1.log")
    settings = settings_for(model_dir, key_prefix=prefix, redis_url=url, api_keys=[KEY], chunk_size=20)
    target = catalogue["domains"][0]
    body = {"target_domain": target, "sequences": make_sequences(catalogue, 60, seed=7)}
    figures: dict[str, float] = {}
    try:
        with worker_process(service_env(model_dir, prefix, redis_url=url), tmp_path / "worker.log") as worker:

            async def scenario() -> None:
                nonlocal server
                async with api_client(settings) as client:
                    first = await client.post("/jobs", json=body, headers=AUTH)
                    assert first.status_code == 202, first.text
                    job_id = first.json()["id"]
                    assert (await _wait_job(client, job_id, worker))["status"] == "succeeded"

                    server.kill()
                    down_at = time.monotonic()
                    answers = await _while_redis_is_down(client, job_id, body)
                    figures["down_answers_s"] = time.monotonic() - down_at
                    for name, r in answers.items():
                        assert r.status_code != 500, (name, r.text)
                    assert answers["readyz"].status_code == 503
                    assert answers["readyz"].json()["error"]["code"] == "redis_unavailable"
                    assert answers["regenerate"].status_code == 200, answers["regenerate"].text
                    assert len(answers["regenerate"].json()["results"]) == 60
                    assert answers["healthz"].status_code == answers["models"].status_code == 200
                    for name in ("post_json", "post_ndjson", "get", "results", "delete"):
                        r = answers[name]
                        assert r.status_code == 503, (name, r.text)
                        assert r.json()["error"]["code"] == "redis_unavailable", (name, r.text)
                        assert int(r.headers["retry-after"]) > 0, name

                    # back, empty (no persistence), on the same port; nothing else is restarted
                    server = await anyio.to_thread.run_sync(start_redis, port, tmp_path / "redis-2.log")
                    back_at = time.monotonic()
                    ready = await client.get("/readyz")
                    assert ready.status_code == 200, ready.text
                    again = await client.post("/jobs", json=body, headers=AUTH)
                    assert again.status_code == 202, again.text
                    job = await _wait_job(client, again.json()["id"], worker)
                    assert job["status"] == "succeeded", job
                    figures["recovered_s"] = time.monotonic() - back_at
                    results = await client.get(f"/jobs/{job['id']}/results", headers=AUTH)
                    assert_every_sequence_once_in_order(results.text.splitlines(), body["sequences"])
                    # the job from before the outage is gone with Redis' memory: an honest 404
                    gone = await client.get(f"/jobs/{job_id}", headers=AUTH)
                    assert gone.status_code == 404

            anyio.run(scenario)
    finally:
        server.kill()
    _report("redis_down", **figures)


async def _wait_job(client: httpx.AsyncClient, job_id: str, worker: Proc, timeout: float = 60) -> dict[str, Any]:
    import anyio

    deadline = time.monotonic() + timeout
    while True:
        r = await client.get(f"/jobs/{job_id}", headers=AUTH)
        assert r.status_code == 200, r.text
        if r.json()["status"] in ("succeeded", "failed", "cancelled"):
            return r.json()
        assert worker.alive(), worker.tail()
        assert time.monotonic() < deadline, f"job stuck: {r.json()}\n{worker.tail()}"
        await anyio.sleep(0.1)


async def _while_redis_is_down(
    client: httpx.AsyncClient, job_id: str, body: dict[str, Any]
) -> dict[str, httpx.Response]:
    return {
        "readyz": await client.get("/readyz"),
        "healthz": await client.get("/healthz"),
        "models": await client.get("/models", headers=AUTH),
        "regenerate": await client.post("/regenerate", json=body, headers=AUTH),
        "post_json": await client.post("/jobs", json=body, headers=AUTH),
        "post_ndjson": await client.post(
            "/jobs",
            params={"target_domain": body["target_domain"]},
            content=ndjson(body["sequences"]),
            headers=NDJSON | AUTH,
        ),
        "get": await client.get(f"/jobs/{job_id}", headers=AUTH),
        "results": await client.get(f"/jobs/{job_id}/results", headers=AUTH),
        "delete": await client.delete(f"/jobs/{job_id}", headers=AUTH),
    }


def test_retry_countdowns_stay_under_half_the_visibility_timeout(model_dir: Path) -> None:
    """A countdown message the worker holds past the visibility timeout would be redelivered
    to a second worker: with a short timeout the backoff is capped below it."""
    from workers import loading, tasks

    long = loading.make_context(settings_for(model_dir, visibility_timeout_s=3600))
    short = loading.make_context(settings_for(model_dir, visibility_timeout_s=VISIBILITY_TIMEOUT_S))
    assert [tasks.retry_countdown(n, long) for n in range(5)] == [2.0, 4.0, 8.0, 16.0, 32.0]
    assert [tasks.retry_countdown(n, short) for n in range(5)] == [2.0, 2.5, 2.5, 2.5, 2.5]
    assert create_celery_options(VISIBILITY_TIMEOUT_S)["unacked_restore_interval"] == VISIBILITY_TIMEOUT_S


def create_celery_options(visibility_timeout_s: int) -> dict[str, Any]:
    from core.queue import create_celery
    from core.settings import Settings

    settings = Settings(_env_file=None, visibility_timeout_s=visibility_timeout_s)  # type: ignore[call-arg]
    return create_celery(settings).conf.broker_transport_options
