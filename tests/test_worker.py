"""The chunk task in-process, against the real Redis: redelivery, cancellation between
batches, deterministic failures, bounded retries, poison chunks; plus the Celery
configuration, the worker command line and `taesar worker --gpus` with real workers."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import uuid
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
import redis
from redis.exceptions import ConnectionError as RedisConnectionError

from core.jobstore import ChunkStore, JobSpec, JobStore
from core.queue import TASK_PROCESS_CHUNK, create_celery, queue_name
from core.settings import Settings
from tests.api_support import REDIS_URL, delete_prefix, model_dir_with, settings_for
from workers import loading, tasks
from workers.main import WorkerProcess, gpu_workers, parse_gpus, supervise, worker_argv


@pytest.fixture(scope="module")
def model_dir(tiny_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return model_dir_with(tiny_bundle, tmp_path_factory.mktemp("worker"))


@pytest.fixture(scope="module")
def engines_ctx(model_dir: Path) -> Iterator[loading.WorkerContext]:
    """One in-process worker context (engines loaded once); each test gets a fresh prefix."""
    settings = settings_for(model_dir, decode_batch_size=8)
    ctx = loading.make_context(settings)
    ctx.load()
    yield ctx
    loading.use_context(None)


@pytest.fixture
def ctx(engines_ctx: loading.WorkerContext) -> Iterator[loading.WorkerContext]:
    prefix = f"test-worker-{uuid.uuid4().hex[:8]}"
    settings = engines_ctx.settings.model_copy(update={"key_prefix": prefix})
    store = ChunkStore(engines_ctx.store.r, prefix, settings.job_ttl_s)
    context = loading.WorkerContext(settings, store, engines_ctx.engines)
    loading.use_context(context)
    yield context
    loading.use_context(None)
    keys = list(store.r.scan_iter(f"{prefix}:*", count=1000))
    if keys:
        store.r.delete(*keys)


def stage(
    ctx: loading.WorkerContext, seqs: list[list[str]], chunk_size: int = 40, model: str = "tiny", **options: Any
) -> str:
    """Write a committed job straight into the store, as POST /jobs would."""
    job_id = uuid.uuid4().hex

    async def write() -> None:
        client = redis.asyncio.Redis.from_url(REDIS_URL)
        store = JobStore(client, ctx.settings.key_prefix, ctx.settings.job_ttl_s)
        spec = JobSpec("alice", model, "x", {"unknown_items": "error", **options})
        writer = await store.open_job(job_id, spec, chunk_size)
        for k, s in enumerate(seqs):
            await writer.add(f"u{k}", s)
        assert (await writer.commit(10**6)).accepted
        await client.aclose()

    anyio.run(write)
    return job_id


def sequences(catalogue: dict[str, Any], n: int) -> list[list[str]]:
    items = catalogue["item_ids"]
    return [[items[(7 * k + j) % len(items)] for j in range(3 + k % 9)] for k in range(n)]


def test_a_redelivered_chunk_is_counted_once(ctx: loading.WorkerContext, catalogue: dict) -> None:
    job_id = stage(ctx, sequences(catalogue, 60))
    assert tasks.process_chunk(job_id, 0) == "stored"
    first = ctx.store.r.get(f"{ctx.settings.key_prefix}:job:{job_id}:out:0")
    assert tasks.process_chunk(job_id, 0) == "done"  # the same message again (visibility timeout, SIGKILL)
    job = ctx.store.record(job_id)
    assert (job.done, job.chunks_done, job.status) == (40, 1, "running")
    assert ctx.store.r.get(f"{ctx.settings.key_prefix}:job:{job_id}:out:0") == first
    assert tasks.process_chunk(job_id, 1) == "succeeded"
    assert tasks.process_chunk(job_id, 1) == "succeeded"  # skipped: the job is final (counters below)
    job = ctx.store.record(job_id)
    assert (job.done, job.total, job.chunks_done, job.status) == (60, 60, 2, "succeeded")
    lines = zlib.decompress(ctx.store.r.get(f"{ctx.settings.key_prefix}:job:{job_id}:out:1")).splitlines()
    assert [json.loads(x)["user_id"] for x in lines] == [f"u{k}" for k in range(40, 60)]


def test_a_running_chunk_stops_at_the_next_batch_once_cancelled(
    ctx: loading.WorkerContext, catalogue: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    job_id = stage(ctx, sequences(catalogue, 40))
    asked = []
    real_status = ctx.store.status

    def cancel_during_first_batch(jid: str) -> str | None:
        asked.append(jid)
        if len(asked) == 1:
            anyio.run(_cancel, ctx, jid)
        return real_status(jid)

    monkeypatch.setattr(ctx.store, "status", cancel_during_first_batch)
    assert tasks.process_chunk(job_id, 0) == "stopped"
    assert len(asked) == 1  # 40 sequences are 5 batches of 8: it stopped after the first
    job = ctx.store.record(job_id)
    assert (job.status, job.done) == ("cancelled", 0)
    assert ctx.store.r.get(f"{ctx.settings.key_prefix}:job:{job_id}:out:0") is None


async def _cancel(ctx: loading.WorkerContext, job_id: str) -> None:
    client = redis.asyncio.Redis.from_url(REDIS_URL)
    await JobStore(client, ctx.settings.key_prefix, 60).cancel(job_id)
    await client.aclose()


def test_a_chunk_of_a_cancelled_job_is_skipped(ctx: loading.WorkerContext, catalogue: dict) -> None:
    job_id = stage(ctx, sequences(catalogue, 80))
    anyio.run(_cancel, ctx, job_id)
    assert tasks.process_chunk(job_id, 1) == "cancelled"
    assert tasks.process_chunk("no-such-job", 0) == "gone"


@pytest.mark.parametrize(
    ("poison", "code"),
    [
        ("payload", "bad_data"),
        ("unknown_item", "unknown_item"),
        ("model", "unknown_model"),
        ("ablations", "validation_error"),
    ],
)
def test_a_deterministic_failure_fails_the_job_at_once(
    ctx: loading.WorkerContext, catalogue: dict, monkeypatch: pytest.MonkeyPatch, poison: str, code: str
) -> None:
    seqs = sequences(catalogue, 50)
    if poison == "unknown_item":
        seqs[45][1] = "no-such-item"
    options = {"ablations": {"no_global": True, "no_local": True}} if poison == "ablations" else {}
    job_id = stage(ctx, seqs, model="gone-model" if poison == "model" else "tiny", **options)
    if poison == "payload":
        ctx.store.r.set(f"{ctx.settings.key_prefix}:job:{job_id}:in:1", b"\x00garbage", keepttl=True)
    calls = []
    monkeypatch.setattr(tasks.process_chunk, "retry", lambda *a, **k: calls.append(1))
    assert tasks.process_chunk(job_id, 1) == "failed"
    assert calls == []  # no retry
    job = ctx.store.record(job_id)
    assert job.status == "failed" and job.error["code"] == code, job.error
    if poison == "unknown_item":
        assert job.error["details"] == {"sequence": 45, "position": 1, "item": "no-such-item"}
    # the other chunk is skipped, not decoded
    assert tasks.process_chunk(job_id, 0) == "failed"


def test_redis_errors_are_retried_with_backoff_then_fail_the_job(
    ctx: loading.WorkerContext, catalogue: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    job_id = stage(ctx, sequences(catalogue, 10))
    attempts = []

    def down(*args: Any, **kwargs: Any) -> None:
        attempts.append(1)
        raise RedisConnectionError("connection refused")

    countdowns: list[float] = []
    real_retry = tasks.process_chunk.retry

    def spy(*args: Any, **kwargs: Any) -> Any:
        countdowns.append(kwargs["countdown"])
        return real_retry(*args, **kwargs)

    monkeypatch.setattr(ctx.store, "begin", down)
    monkeypatch.setattr(tasks.process_chunk, "retry", spy)
    # eager mode runs each retry at once; the countdowns are what a real worker would wait
    assert tasks.process_chunk.apply(args=[job_id, 0]).get() == "failed"
    assert len(attempts) == tasks.MAX_RETRIES + 1
    assert countdowns == [tasks.BACKOFF_S * 2**k for k in range(tasks.MAX_RETRIES)]
    job = ctx.store.record(job_id)
    assert job.status == "failed" and job.error["code"] == "redis_unavailable"


def test_a_chunk_that_keeps_killing_its_worker_fails_the_job(ctx: loading.WorkerContext, catalogue: dict) -> None:
    job_id = stage(ctx, sequences(catalogue, 10))
    for _ in range(tasks.MAX_DELIVERIES):  # deliveries whose worker died before finishing
        ctx.store.begin(job_id, 0, tasks.MAX_DELIVERIES)
    assert tasks.process_chunk(job_id, 0) == "failed"
    job = ctx.store.record(job_id)
    assert job.status == "failed" and "delivered" in job.error["message"]


def test_chunk_results_are_the_cli_writers_lines(ctx: loading.WorkerContext, catalogue: dict, tmp_path: Path) -> None:
    from models.bundle import load_bundle
    from models.decoding import Regenerator, regenerate_external
    from models.output import to_output_line, write_jsonl, write_recbole

    seqs = sequences(catalogue, 30)
    job_id = stage(ctx, seqs, chunk_size=100)
    assert tasks.process_chunk(job_id, 0) == "succeeded"
    b = load_bundle(ctx.engines.get("tiny").path)
    engine = Regenerator(b.catalogue, b.mixed, b.experts, device="cpu")
    records = [
        to_output_line(r, b.catalogue, "x", f"u{k}") for k, r in enumerate(regenerate_external(engine, seqs, "x"))
    ]
    write_jsonl(tmp_path / "out.jsonl", records)
    write_recbole(tmp_path / "out.inter", records)
    key = f"{ctx.settings.key_prefix}:job:{job_id}"
    assert zlib.decompress(ctx.store.r.get(f"{key}:out:0")) == (tmp_path / "out.jsonl").read_bytes()
    assert zlib.decompress(ctx.store.r.get(f"{key}:rb:0")) == (tmp_path / "out.inter").read_bytes()


# -- configuration ----------------------------------------------------------------------


def test_the_celery_app_is_configured_for_at_least_once_delivery() -> None:
    settings = Settings(_env_file=None, key_prefix="p1", visibility_timeout_s=1234)  # type: ignore[call-arg]
    conf = create_celery(settings).conf
    assert conf.task_acks_late and conf.task_reject_on_worker_lost
    assert conf.worker_prefetch_multiplier == 1
    assert conf.broker_transport_options["visibility_timeout"] == 1234
    assert conf.broker_transport_options["global_keyprefix"] == "p1:celery:"
    assert conf.task_default_queue == queue_name(settings) == "p1.chunks"
    assert conf.accept_content == ["json"] and conf.task_serializer == "json"
    assert conf.result_backend is None and conf.task_ignore_result


def test_the_task_is_registered_under_its_stable_name() -> None:
    assert tasks.process_chunk.name == TASK_PROCESS_CHUNK
    assert tasks.process_chunk.max_retries == tasks.MAX_RETRIES


def test_the_api_side_imports_no_torch() -> None:
    code = (
        "import sys, core.jobstore, core.queue, app.main, app.routes.jobs; "
        "assert 'torch' not in sys.modules, 'torch imported'; "
        "assert not [m for m in sys.modules if m.split('.')[0] == 'workers'], 'workers imported'"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=Path(__file__).parents[1])
    assert done.returncode == 0, done.stderr


def test_the_worker_command_runs_one_solo_process_per_gpu_or_prefork_on_cpu() -> None:
    assert {"--pool=solo", "--concurrency=1"} <= set(worker_argv(1))
    argv = worker_argv(4, "DEBUG", "q1,q2")
    assert "--pool=prefork" in argv and "--concurrency=4" in argv and "--queues=q1,q2" in argv
    assert "--loglevel=DEBUG" in argv
    with pytest.raises(ValueError):
        worker_argv(0)


# -- one supervised solo worker per GPU -----------------------------------------------------


def test_gpu_ids_are_parsed_into_one_worker_each_with_its_device_and_node_name() -> None:
    assert parse_gpus("0, 1,GPU-8f2a-11") == ["0", "1", "GPU-8f2a-11"]
    for bad in ("", ",", "0,0", "0 1", "0@h", "%h"):
        with pytest.raises(ValueError):
            parse_gpus(bad)
    children = gpu_workers(["0", "3"], "DEBUG", "q1")
    assert [c.env for c in children] == [{"CUDA_VISIBLE_DEVICES": "0"}, {"CUDA_VISIBLE_DEVICES": "3"}]
    for child, gpu in zip(children, ["0", "3"], strict=True):
        assert child.argv[child.argv.index("-A") + 1 :][:1] == ["workers.celery_app"]
        assert child.argv[-2:] == ["-n", f"gpu{gpu}@%h"]
        assert worker_argv(1, "DEBUG", "q1") == child.argv[child.argv.index("worker") : -2]


def test_when_one_worker_exits_the_supervisor_stops_the_others_and_fails() -> None:
    sleeper = WorkerProcess("GPU 0", [sys.executable, "-c", "import time; time.sleep(120)"], {})
    crasher = WorkerProcess("GPU 1", [sys.executable, "-c", "import sys; sys.exit(3)"], {})
    started = time.monotonic()
    assert supervise([sleeper, crasher], poll_s=0.05) == 1
    assert time.monotonic() - started < 60  # it returns only once the sleeper is gone


def test_taesar_worker_gpus_starts_one_worker_per_gpu_and_sigterm_stops_them_all(
    model_dir: Path, tmp_path: Path
) -> None:
    """On CPU with made-up GPU ids: CUDA_VISIBLE_DEVICES is only an environment variable."""
    prefix = f"test-gpus-{uuid.uuid4().hex[:8]}"
    env = {
        **os.environ,
        "TAESAR_MODEL_DIR": str(model_dir),
        "TAESAR_KEY_PREFIX": prefix,
        "TAESAR_REDIS_URL": REDIS_URL,
        "TAESAR_DEVICE": "cpu",
        "OMP_NUM_THREADS": "1",
    }
    log = tmp_path / "workers.log"
    cmd = [sys.executable, "-m", "app.cli", "worker", "--gpus", "7,9", "--loglevel", "INFO"]
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=Path(__file__).parents[1])
    try:
        deadline = time.monotonic() + 120
        while not all(_ready(log, f"gpu{g}@") for g in (7, 9)):
            assert proc.poll() is None, f"the supervisor exited:\n{_tail(log)}"
            assert time.monotonic() < deadline, f"the workers did not get ready:\n{_tail(log)}"
            time.sleep(0.2)
        pids = {m[0]: int(m[1]) for m in re.findall(r"worker on GPU (\d+): pid (\d+)", log.read_text())}
        assert set(pids) == {"7", "9"}
        for gpu, pid in pids.items():
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
            assert f"CUDA_VISIBLE_DEVICES={gpu}".encode() in environ
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0, _tail(log)
        for pid in pids.values():
            with pytest.raises(ProcessLookupError):
                os.kill(pid, 0)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        delete_prefix(prefix)


def _ready(log: Path, node: str) -> bool:
    return any(node in line and "ready." in line for line in log.read_text(errors="replace").splitlines())


def _tail(log: Path) -> str:
    return log.read_text(errors="replace")[-4000:]
