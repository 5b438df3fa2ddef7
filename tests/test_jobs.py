"""/jobs end to end: the API in-process, the real Redis, and a real Celery worker process.

The worker is started once for this module (`celery -A workers.celery_app worker
--pool solo`) with its own TAESAR_KEY_PREFIX, which also names its queue, so parallel
test sessions never take each other's chunks. Tests that need a job to stay queued use
a second prefix that no worker listens to.
"""

from __future__ import annotations

import gzip
import json
import os
import random
import re
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
import redis

from core.settings import Settings
from tests.api_support import REDIS_URL, api_client, closed_port_url, delete_prefix, model_dir_with, settings_for
from workers.main import worker_argv

pytestmark = pytest.mark.anyio

KEY_A = {"Authorization": "Bearer key-a"}
KEY_B = {"X-API-Key": "key-b"}
NDJSON = {"Content-Type": "application/x-ndjson"}
CHUNK = 500
JOB_TIMEOUT_S = 90


@pytest.fixture(scope="module")
def model_dir(tiny_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return model_dir_with(tiny_bundle, tmp_path_factory.mktemp("jobs"))


class Worker:
    def __init__(self, proc: subprocess.Popen, log: Path, prefix: str, metrics_port: int) -> None:
        self.proc, self.log, self.prefix, self.metrics_port = proc, log, prefix, metrics_port

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]


@pytest.fixture(scope="module")
def worker(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Worker]:
    prefix = f"test-jobs-{uuid.uuid4().hex[:8]}"
    log = tmp_path_factory.mktemp("worker") / "worker.log"
    metrics_port = free_port()
    env = {
        **os.environ,
        "TAESAR_MODEL_DIR": str(model_dir),
        "TAESAR_KEY_PREFIX": prefix,
        "TAESAR_REDIS_URL": REDIS_URL,
        "TAESAR_DEVICE": "cpu",
        "TAESAR_LOG_LEVEL": "INFO",
        "TAESAR_WORKER_METRICS_PORT": str(metrics_port),
        # the worker shares the CPUs with this process (and its /regenerate calls): one
        # torch thread each, or OpenMP threads spin against each other
        "OMP_NUM_THREADS": "1",
    }
    cmd = [sys.executable, "-m", "celery", "-A", "workers.celery_app", *worker_argv(1, "INFO"), "-n", f"{prefix}@%h"]
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=Path(__file__).parents[1])
    w = Worker(proc, log, prefix, metrics_port)
    try:
        deadline = time.monotonic() + 60
        while "ready." not in log.read_text(errors="replace"):
            assert proc.poll() is None, f"the worker exited:\n{w.tail()}"
            assert time.monotonic() < deadline, f"the worker did not get ready:\n{w.tail()}"
            time.sleep(0.2)
        yield w
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        delete_prefix(prefix)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def idle_prefix() -> Iterator[str]:
    """A prefix no worker listens to: its jobs stay queued."""
    prefix = f"test-idle-{uuid.uuid4().hex[:8]}"
    yield prefix
    delete_prefix(prefix)


def job_settings(model_dir: Path, prefix: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {"key_prefix": prefix, "chunk_size": CHUNK, "api_keys": ["key-a", "key-b"]}
    return settings_for(model_dir, **{"job_ttl_s": 3600, **values, **overrides})


def make_sequences(catalogue: dict[str, Any], n: int, seed: int = 0) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    items = catalogue["item_ids"]
    return [{"user_id": f"u{k}", "items": [rng.choice(items) for _ in range(rng.randint(1, 24))]} for k in range(n)]


def ndjson(seqs: list[dict[str, Any]]) -> bytes:
    return "".join(json.dumps(s) + "\n" for s in seqs).encode()


async def wait_for(client: httpx.AsyncClient, job_id: str, worker: Worker | None = None) -> dict[str, Any]:
    deadline = time.monotonic() + JOB_TIMEOUT_S
    while True:
        r = await client.get(f"/jobs/{job_id}", headers=KEY_A)
        assert r.status_code == 200, r.text
        job = r.json()
        if job["status"] in ("succeeded", "failed", "cancelled"):
            return job
        if worker is not None:
            assert worker.proc.poll() is None, f"the worker died:\n{worker.tail()}"
        assert time.monotonic() < deadline, f"job stuck in {job}" + (f"\n{worker.tail()}" if worker else "")
        await anyio.sleep(0.1)


def job_keys(prefix: str) -> set[str]:
    r = redis.Redis.from_url(REDIS_URL)
    keys = {k.decode() for k in r.scan_iter(f"{prefix}:job:*", count=1000)}
    r.close()
    return keys


# -- through the real worker ---------------------------------------------------------------


async def test_a_5000_sequence_job_returns_every_result_in_input_order_equal_to_regenerate(
    worker: Worker, model_dir: Path, catalogue: dict
) -> None:
    target = catalogue["domains"][1]
    seqs = make_sequences(catalogue, 5000)
    async with api_client(job_settings(model_dir, worker.prefix)) as client:
        r = await client.post("/jobs", params={"target_domain": target}, content=ndjson(seqs), headers=NDJSON | KEY_A)
        assert r.status_code == 202, r.text
        info = r.json()
        assert info["progress"]["total"] == 5000 and info["status"] in ("queued", "running")
        assert r.headers["location"] == info["links"]["self"] == f"/jobs/{info['id']}"
        job = await wait_for(client, info["id"], worker)
        assert job["status"] == "succeeded", job
        assert job["progress"] == {"done": 5000, "total": 5000}
        async with client.stream("GET", info["links"]["results"], headers=KEY_A) as resp:
            assert resp.status_code == 200
            assert resp.headers["x-taesar-sequences"] == "5000"
            lines = [json.loads(line) async for line in resp.aiter_lines() if line]
        recbole = (await client.get(info["links"]["results"], params={"format": "recbole"}, headers=KEY_A)).text
        expected = []
        for start in range(0, 5000, 1000):
            body = {"target_domain": target, "sequences": seqs[start : start + 1000]}
            sync = await client.post("/regenerate", json=body, headers=KEY_A)
            assert sync.status_code == 200, sync.text
            expected += sync.json()["results"]
    assert len(lines) == 5000
    assert [x["user_id"] for x in lines] == [s["user_id"] for s in seqs]
    assert lines == expected
    assert job["decisions"] == {k: sum(x["stats"][k] for x in lines) for k in ("kept", "replaced", "discarded")}
    rows = recbole.splitlines()
    assert rows[0] == "user_id:token\titem_id_list:token_seq\titem_id:token"
    want = [(x["user_id"], " ".join(x["sequence"][:-1]), x["sequence"][-1]) for x in lines if len(x["sequence"]) >= 2]
    assert [tuple(row.split("\t")) for row in rows[1:]] == want
    # every key the job wrote expires; the inputs went when their results were stored
    keys = job_keys(worker.prefix)
    assert not any(":in:" in k for k in keys)
    r = redis.Redis.from_url(REDIS_URL)
    assert all(0 < r.ttl(k) <= 3600 for k in keys)
    r.close()


async def test_the_worker_serves_the_metrics_of_the_jobs_it_ends(
    worker: Worker, model_dir: Path, catalogue: dict
) -> None:
    def scrape() -> dict[str, float]:
        text = httpx.get(f"http://127.0.0.1:{worker.metrics_port}/metrics", timeout=5).text
        wanted = {
            "succeeded": r'^taesar_jobs_total\{event="succeeded"\} (\S+)$',
            "durations": r'^taesar_job_duration_seconds_count\{status="succeeded"\} (\S+)$',
            "sequences": r'^taesar_sequences_total\{model="tiny",source="job",target="[^"]*"\} (\S+)$',
        }
        found = {k: re.findall(pattern, text, flags=re.M) for k, pattern in wanted.items()}
        return {k: sum(float(v) for v in values) for k, values in found.items()}

    before = scrape()
    seqs = make_sequences(catalogue, 7, seed=3)
    async with api_client(job_settings(model_dir, worker.prefix, chunk_size=3)) as client:
        r = await client.post(
            "/jobs", json={"target_domain": catalogue["domains"][0], "sequences": seqs}, headers=KEY_A
        )
        assert r.status_code == 202, r.text
        assert (await wait_for(client, r.json()["id"], worker))["status"] == "succeeded"
    after = scrape()
    assert after["succeeded"] == before["succeeded"] + 1
    assert after["durations"] == before["durations"] + 1
    assert after["sequences"] == before["sequences"] + 7


async def test_gzip_uploads_are_accepted_with_or_without_content_encoding(
    worker: Worker, model_dir: Path, catalogue: dict
) -> None:
    seqs = make_sequences(catalogue, 700, seed=1)
    # two gzip members, as `cat a.gz b.gz` or pigz produce
    two_members = gzip.compress(ndjson(seqs[:400])) + gzip.compress(ndjson(seqs[400:]))
    target = catalogue["domains"][0]
    async with api_client(job_settings(model_dir, worker.prefix)) as client:
        encoded = await client.post(
            "/jobs",
            params={"target_domain": target, "model": "tiny"},
            content=two_members,
            headers=NDJSON | KEY_A | {"Content-Encoding": "gzip"},
        )
        # a .gz file sent as it is, without Content-Encoding: recognised by its magic bytes
        sniffed = await client.post(
            "/jobs",
            params={"target_domain": target, "options": json.dumps({"unknown_items": "drop"})},
            content=two_members,
            headers=NDJSON | KEY_A,
        )
        for r in (encoded, sniffed):
            assert r.status_code == 202, r.text
            assert r.json()["progress"]["total"] == 700
            job = await wait_for(client, r.json()["id"], worker)
            assert job["status"] == "succeeded", job
            results = await client.get(f"/jobs/{job['id']}/results", headers=KEY_A)
            assert [json.loads(x)["user_id"] for x in results.text.splitlines()] == [s["user_id"] for s in seqs]


async def test_an_idempotency_key_returns_the_same_job(worker: Worker, model_dir: Path, catalogue: dict) -> None:
    body = {"target_domain": catalogue["domains"][2], "sequences": make_sequences(catalogue, 20)}
    headers = KEY_A | {"Idempotency-Key": f"k-{uuid.uuid4().hex}"}
    async with api_client(job_settings(model_dir, worker.prefix)) as client:
        first = await client.post("/jobs", json=body, headers=headers)
        again = await client.post("/jobs", json=body, headers=headers)
        other_key = await client.post("/jobs", json=body, headers=KEY_A | {"Idempotency-Key": "another"})
        same_key_b = KEY_B | {"Idempotency-Key": headers["Idempotency-Key"]}
        other_caller = await client.post("/jobs", json=body, headers=same_key_b)
    assert first.status_code == 202, first.text
    assert again.status_code == 200 and again.headers["idempotent-replayed"] == "true"
    assert again.json()["id"] == first.json()["id"]
    assert other_key.json()["id"] != first.json()["id"]
    assert other_caller.status_code == 202 and other_caller.json()["id"] != first.json()["id"]


async def test_concurrent_submissions_with_one_idempotency_key_create_one_job(
    idle_prefix: str, model_dir: Path, catalogue: dict
) -> None:
    body = ndjson(make_sequences(catalogue, 1500))
    params = {"target_domain": catalogue["domains"][0]}
    headers = NDJSON | KEY_A | {"Idempotency-Key": "same"}
    async with api_client(job_settings(model_dir, idle_prefix)) as client:
        answers: list[httpx.Response] = []

        async def submit() -> None:
            answers.append(await client.post("/jobs", params=params, content=body, headers=headers))

        async with anyio.create_task_group() as tg:
            for _ in range(6):
                tg.start_soon(submit)
        settled = await client.post("/jobs", params=params, content=body, headers=headers)
    created = [a for a in answers if a.status_code == 202]
    assert len(created) == 1, [a.status_code for a in answers]
    # the others saw the job (200) or, while it was still uploading, a retryable 409
    assert all(a.status_code in (200, 409) for a in answers if a is not created[0])
    assert settled.status_code == 200 and settled.json()["id"] == created[0].json()["id"]
    assert len({k.split(":")[2] for k in job_keys(idle_prefix)}) == 1


async def test_an_idempotency_key_reused_for_another_request_answers_422(
    idle_prefix: str, model_dir: Path, catalogue: dict
) -> None:
    seqs = make_sequences(catalogue, 30, seed=4)
    target = catalogue["domains"][0]
    key = KEY_A | {"Idempotency-Key": f"k-{uuid.uuid4().hex}"}
    changed = [*seqs[:-1], {**seqs[-1], "items": [*seqs[-1]["items"], catalogue["item_ids"][0]]}]

    def upload(sequences: list[dict[str, Any]], **options: Any) -> dict[str, Any]:
        params = {"target_domain": target, **({"options": json.dumps(options)} if options else {})}
        return {"params": params, "content": ndjson(sequences), "headers": NDJSON | key}

    async with api_client(job_settings(model_dir, idle_prefix)) as client:
        first = await client.post("/jobs", **upload(seqs))
        assert first.status_code == 202, first.text
        job_id = first.json()["id"]
        # the same request however it is written: gzip (another mtime), a JSON body, spaces
        same = [
            await client.post(
                "/jobs",
                params={"target_domain": target},
                content=gzip.compress(ndjson(seqs), mtime=12345),
                headers=NDJSON | key | {"Content-Encoding": "gzip"},
            ),
            await client.post("/jobs", json={"target_domain": target, "sequences": seqs}, headers=key),
            await client.post(
                "/jobs",
                params={"target_domain": target},
                content=b"\n".join(json.dumps(x, indent=1).replace("\n", "").encode() for x in seqs) + b"\n\n",
                headers=NDJSON | key,
            ),
        ]
        for r in same:
            assert r.status_code == 200, r.text
            assert r.json()["id"] == job_id and r.headers["idempotent-replayed"] == "true"
        # another request under the same key: sequences, options or target differ
        other = [
            await client.post("/jobs", **upload(changed)),
            await client.post("/jobs", **upload(seqs[:-1])),
            await client.post("/jobs", **upload(seqs, unknown_items="drop")),
            await client.post("/jobs", json={"target_domain": catalogue["domains"][1], "sequences": seqs}, headers=key),
        ]
        for r in other:
            assert r.status_code == 422, r.text
            error = r.json()["error"]
            assert error["code"] == "idempotency_mismatch" and error["details"] == {"job_id": job_id}
            assert "use a new key" in error["message"]
        # an empty key is not a key
        for empty in ("", "   "):
            r = await client.post("/jobs", **{**upload(seqs), "headers": NDJSON | KEY_A | {"Idempotency-Key": empty}})
            assert r.status_code == 400, r.text
            assert r.json()["error"]["code"] == "bad_request" and "Idempotency-Key" in r.json()["error"]["message"]
    assert len({k.split(":")[2] for k in job_keys(idle_prefix)}) == 1


async def test_a_byte_order_mark_before_the_first_line_is_accepted(
    idle_prefix: str, model_dir: Path, catalogue: dict
) -> None:
    body = b"\xef\xbb\xbf" + ndjson(make_sequences(catalogue, 12, seed=5))
    params = {"target_domain": catalogue["domains"][0]}
    async with api_client(job_settings(model_dir, idle_prefix)) as client:
        plain = await client.post("/jobs", params=params, content=body, headers=NDJSON | KEY_A)
        zipped = await client.post(
            "/jobs", params=params, content=gzip.compress(body), headers=NDJSON | KEY_A | {"Content-Encoding": "gzip"}
        )
    for r in (plain, zipped):
        assert r.status_code == 202, r.text
        assert r.json()["progress"]["total"] == 12


async def test_a_json_job_body_above_its_cap_points_to_ndjson(
    idle_prefix: str, model_dir: Path, catalogue: dict
) -> None:
    body = {"target_domain": catalogue["domains"][0], "sequences": make_sequences(catalogue, 400, seed=6)}
    encoded = json.dumps(body).encode()
    settings = job_settings(model_dir, idle_prefix, max_json_job_bytes=len(encoded) - 1)
    async with api_client(settings) as client:
        announced = await client.post("/jobs", content=encoded, headers=KEY_A | {"Content-Type": "application/json"})

        async def stream() -> Any:
            for start in range(0, len(encoded), 1000):
                yield encoded[start : start + 1000]

        streamed = await client.post("/jobs", content=stream(), headers=KEY_A | {"Content-Type": "application/json"})
        as_ndjson = await client.post(
            "/jobs",
            params={"target_domain": body["target_domain"]},
            content=ndjson(body["sequences"]),
            headers=NDJSON | KEY_A,
        )
    for r in (announced, streamed):
        assert r.status_code == 413, r.text
        error = r.json()["error"]
        assert error["code"] == "payload_too_large" and "NDJSON" in error["message"]
        assert error["details"]["max_bytes"] == len(encoded) - 1
    assert announced.json()["error"]["details"]["content_length"] == len(encoded)
    assert as_ndjson.status_code == 202 and as_ndjson.json()["progress"]["total"] == 400
    assert len({k.split(":")[2] for k in job_keys(idle_prefix)}) == 1


async def test_another_callers_job_is_not_found(worker: Worker, model_dir: Path, catalogue: dict) -> None:
    body = {"target_domain": catalogue["domains"][0], "sequences": make_sequences(catalogue, 3)}
    async with api_client(job_settings(model_dir, worker.prefix)) as client:
        job_id = (await client.post("/jobs", json=body, headers=KEY_A)).json()["id"]
        await wait_for(client, job_id, worker)
        answers = [
            await client.get(f"/jobs/{job_id}", headers=KEY_B),
            await client.get(f"/jobs/{job_id}/results", headers=KEY_B),
            await client.delete(f"/jobs/{job_id}", headers=KEY_B),
            await client.get("/jobs/no-such-job", headers=KEY_A),
        ]
        mine = await client.get(f"/jobs/{job_id}/results", headers=KEY_A)
    for r in answers:
        assert r.status_code == 404 and r.json()["error"]["code"] == "job_not_found", r.text
    assert mine.status_code == 200 and len(mine.text.splitlines()) == 3


# -- without a worker: jobs stay queued -----------------------------------------------------


async def test_a_bad_ndjson_line_is_a_400_naming_it_and_leaves_nothing_in_redis(
    idle_prefix: str, model_dir: Path, catalogue: dict
) -> None:
    good = ndjson(make_sequences(catalogue, 1500)).splitlines(keepends=True)
    cases = {
        1234: b'{"items": ["a", ]}\n',  # not JSON
        1235: b'{"items": []}\n',  # empty sequence
        1236: b'{"user": "u1", "items": ["x"]}\n',  # unknown field
    }
    async with api_client(job_settings(model_dir, idle_prefix)) as client:
        for line, bad in cases.items():
            body = b"".join(good[: line - 1]) + bad + b"".join(good[line - 1 :])
            r = await client.post(
                "/jobs", params={"target_domain": catalogue["domains"][0]}, content=body, headers=NDJSON | KEY_A
            )
            assert r.status_code == 400, r.text
            err = r.json()["error"]
            assert err["code"] == "bad_upload" and err["details"]["line"] == line
            assert f"line {line}" in err["message"]
        unknown = b"".join(good[:1100]) + b'{"items": ["no-such-item"]}\n'
        r = await client.post(
            "/jobs", params={"target_domain": catalogue["domains"][0]}, content=unknown, headers=NDJSON | KEY_A
        )
        assert r.status_code == 422 and r.json()["error"]["details"] == {
            "line": 1101,
            "position": 0,
            "item": "no-such-item",
        }
        broken = gzip.compress(b"".join(good))[:-20]
        r = await client.post(
            "/jobs",
            params={"target_domain": catalogue["domains"][0]},
            content=broken,
            headers=NDJSON | KEY_A | {"Content-Encoding": "gzip"},
        )
        assert r.status_code == 400 and r.json()["error"]["code"] == "bad_upload"
    # chunks 0 and 1 had been stored before each bad line: all of it is gone again
    assert job_keys(idle_prefix) == set()


async def test_a_job_is_validated_before_it_is_accepted(idle_prefix: str, model_dir: Path, catalogue: dict) -> None:
    seqs = ndjson(make_sequences(catalogue, 3))
    async with api_client(job_settings(model_dir, idle_prefix)) as client:
        domain = await client.post("/jobs", params={"target_domain": "Toys"}, content=seqs, headers=NDJSON | KEY_A)
        model = await client.post(
            "/jobs", params={"target_domain": "x", "model": "nope"}, content=seqs, headers=NDJSON | KEY_A
        )
        no_target = await client.post("/jobs", content=seqs, headers=NDJSON | KEY_A)
        options = await client.post(
            "/jobs",
            params={"target_domain": "x", "options": '{"unknown_items": "keep"}'},
            content=seqs,
            headers=NDJSON | KEY_A,
        )
        media = await client.post("/jobs", content=seqs, headers={"Content-Type": "text/csv"} | KEY_A)
        empty = await client.post("/jobs", params={"target_domain": "x"}, content=b"\n\n", headers=NDJSON | KEY_A)
    assert (domain.status_code, domain.json()["error"]["code"]) == (422, "unknown_domain")
    assert (model.status_code, model.json()["error"]["code"]) == (404, "unknown_model")
    assert (no_target.status_code, no_target.json()["error"]["code"]) == (422, "validation_error")
    assert (options.status_code, options.json()["error"]["code"]) == (422, "validation_error")
    assert (media.status_code, media.json()["error"]["code"]) == (415, "unsupported_media_type")
    assert (empty.status_code, empty.json()["error"]["code"]) == (400, "bad_upload")
    assert job_keys(idle_prefix) == set()


async def test_a_full_queue_answers_429_with_retry_after(idle_prefix: str, model_dir: Path, catalogue: dict) -> None:
    settings = job_settings(model_dir, idle_prefix, max_pending_sequences=1000)
    target = catalogue["domains"][0]
    async with api_client(settings) as client:
        first = await client.post(
            "/jobs",
            params={"target_domain": target},
            content=ndjson(make_sequences(catalogue, 800)),
            headers=NDJSON | KEY_A,
        )
        full = await client.post(
            "/jobs",
            params={"target_domain": target},
            content=ndjson(make_sequences(catalogue, 300)),
            headers=NDJSON | KEY_B,
        )
        too_big = await client.post(
            "/jobs", json={"target_domain": target, "sequences": make_sequences(catalogue, 1001)}, headers=KEY_A
        )
        # cancelling the first job frees its capacity
        await client.delete(f"/jobs/{first.json()['id']}", headers=KEY_A)
        fits = await client.post(
            "/jobs",
            params={"target_domain": target},
            content=ndjson(make_sequences(catalogue, 300)),
            headers=NDJSON | KEY_B,
        )
    assert first.status_code == 202
    assert full.status_code == 429 and full.json()["error"]["code"] == "queue_full", full.text
    assert int(full.headers["retry-after"]) > 0
    assert full.json()["error"]["details"] == {"pending": 800, "max_pending": 1000}
    assert too_big.status_code == 413 and too_big.json()["error"]["code"] == "payload_too_large"
    assert fits.status_code == 202, fits.text
    assert len({k.split(":")[2] for k in job_keys(idle_prefix)}) == 2  # the refused ones left nothing


async def test_cancel_stops_a_queued_job_and_results_are_refused_until_success(
    idle_prefix: str, model_dir: Path, catalogue: dict
) -> None:
    body = {"target_domain": catalogue["domains"][0], "sequences": make_sequences(catalogue, 1200)}
    async with api_client(job_settings(model_dir, idle_prefix)) as client:
        job_id = (await client.post("/jobs", json=body, headers=KEY_A)).json()["id"]
        early = await client.get(f"/jobs/{job_id}/results", headers=KEY_A)
        cancelled = await client.delete(f"/jobs/{job_id}", headers=KEY_A)
        again = await client.delete(f"/jobs/{job_id}", headers=KEY_A)
        after = await client.get(f"/jobs/{job_id}/results", headers=KEY_A)
    assert early.status_code == 409 and early.json()["error"]["code"] == "job_not_finished"
    assert early.json()["error"]["details"] == {"status": "queued", "done": 0, "total": 1200}
    assert early.headers["retry-after"]
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
    assert cancelled.json()["finished_at"] is not None
    assert again.status_code == 200 and again.json()["status"] == "cancelled"
    assert after.status_code == 409
    # the inputs of chunks that will never run are freed at once
    assert not any(":in:" in k for k in job_keys(idle_prefix))


async def test_every_key_of_a_queued_job_expires(idle_prefix: str, model_dir: Path, catalogue: dict) -> None:
    body = {"target_domain": catalogue["domains"][0], "sequences": make_sequences(catalogue, 1100)}
    async with api_client(job_settings(model_dir, idle_prefix, job_ttl_s=600)) as client:
        r = await client.post("/jobs", json=body, headers=KEY_A | {"Idempotency-Key": "ttl"})
    assert r.status_code == 202
    client = redis.Redis.from_url(REDIS_URL)
    keys = [k.decode() for k in client.scan_iter(f"{idle_prefix}:*", count=1000) if b":celery:" not in k]
    assert {k.split(":", 1)[1].split(":")[0] for k in keys} == {"job", "idem", "pending", "owner"}
    assert sum(":in:" in k for k in keys) == 3
    for key in keys:
        assert 0 < client.ttl(key) <= 600, key
    client.close()


async def test_redis_down_answers_503_with_retry_after(model_dir: Path, catalogue: dict) -> None:
    settings = job_settings(model_dir, "unused", redis_url=closed_port_url())
    body = {"target_domain": catalogue["domains"][0], "sequences": make_sequences(catalogue, 2)}
    async with api_client(settings) as client:
        answers = [
            await client.post("/jobs", json=body, headers=KEY_A),
            await client.post(
                "/jobs",
                params={"target_domain": catalogue["domains"][0]},
                content=ndjson(body["sequences"]),
                headers=NDJSON | KEY_A,
            ),
            await client.get("/jobs/abc", headers=KEY_A),
            await client.get("/jobs/abc/results", headers=KEY_A),
            await client.delete("/jobs/abc", headers=KEY_A),
        ]
    for r in answers:
        assert r.status_code == 503, r.text
        assert r.json()["error"]["code"] == "redis_unavailable"
        assert int(r.headers["retry-after"]) > 0
