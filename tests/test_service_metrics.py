"""Every metric docs/service.md lists is declared in core/metrics.py, and moves after its
action: requests, /regenerate calls, a job submitted, run by the worker's task code
in-process, failed and cancelled, and the bundles loaded at start-up."""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from prometheus_client import REGISTRY

from core import metrics
from core.engines import Engine
from core.jobstore import JobSpec, JobStore
from tests.api_support import REDIS_URL, api_client, delete_prefix, model_dir_with, settings_for
from workers import loading, tasks

pytestmark = pytest.mark.anyio

ROOT = Path(__file__).resolve().parents[1]


def documented_metrics() -> set[str]:
    text = (ROOT / "docs" / "service.md").read_text()
    return set(re.findall(r"^\| `(taesar_[a-z_]+)` \|", text, flags=re.M))


def declared_metrics() -> set[str]:
    collectors = [v for v in vars(metrics).values() if hasattr(v, "_name") and hasattr(v, "_type")]
    return {c._name for c in collectors if c._name.startswith("taesar_")}  # counters drop their _total


def value(name: str, **labels: str) -> float:
    """The sample's value now; 0 when it does not exist yet."""
    return REGISTRY.get_sample_value(name, labels) or 0.0


class Moves:
    """Records, per metric, that a sample changed (or reached a value) after an action."""

    def __init__(self) -> None:
        self.seen: set[str] = set()

    def check(self, metric: str, moved: bool, what: str) -> None:
        assert moved, f"{metric} did not move after {what}"
        self.seen.add(metric)


@pytest.fixture(scope="module")
def model_dir(tiny_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = model_dir_with(tiny_bundle, tmp_path_factory.mktemp("metrics"))
    (folder / "broken").mkdir()  # a bundle folder that cannot load: taesar_model_load_errors
    return folder


@pytest.fixture
def prefix() -> Iterator[str]:
    name = f"test-metrics-{uuid.uuid4().hex[:8]}"
    yield name
    delete_prefix(name)


def test_the_documented_metrics_are_the_declared_ones() -> None:
    assert {n.removesuffix("_total") for n in documented_metrics()} == declared_metrics()


async def test_every_documented_metric_moves_after_its_action(
    model_dir: Path, catalogue: dict[str, Any], prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    moves = Moves()
    settings = settings_for(model_dir, key_prefix=prefix, chunk_size=2, decode_batch_size=2)
    target, items = catalogue["domains"][0], catalogue["item_ids"]
    sequences = [{"items": items[k : k + 4]} for k in range(3)]
    async with api_client(settings) as client:
        moves.check("taesar_models_loaded", value("taesar_models_loaded") == 1, "start-up")
        moves.check("taesar_model_load_errors", value("taesar_model_load_errors") == 1, "start-up")
        await _regenerate(client, moves, target, sequences, monkeypatch)
        job_id = await _submit(client, moves, target, sequences)
        cancelled = await _cancel(client, moves, target, sequences)
    _run_job(settings, moves, job_id, target)
    await _fail_a_job(settings)
    assert cancelled != job_id
    assert moves.seen == documented_metrics()


async def _regenerate(
    client: httpx.AsyncClient,
    moves: Moves,
    target: str,
    sequences: list[dict[str, Any]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    route = {"method": "POST", "route": "/regenerate"}
    sync = {"source": "sync", "model": "tiny", "target": target}
    before = {
        "requests": value("taesar_http_requests_total", **route, status="200"),
        "latency": value("taesar_http_request_duration_seconds_count", **route),
        "sequences": value("taesar_sequences_total", **sync),
        "decisions": sum(value("taesar_decisions_total", **sync, action=a) for a in ("keep", "replace", "discard")),
        "decode": value("taesar_decode_duration_seconds_count", model="tiny"),
        "calls": value("taesar_microbatch_calls_count", model="tiny"),
        "batch": value("taesar_microbatch_sequences_sum", model="tiny"),
    }
    inflight: list[float] = []
    real = Engine.regenerate

    def observed(self: Engine, *args: Any, **kwargs: Any) -> Any:
        inflight.append(value("taesar_decode_inflight"))  # read while this call decodes
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Engine, "regenerate", observed)
    r = await client.post("/regenerate", json={"target_domain": target, "sequences": sequences})
    assert r.status_code == 200, r.text
    items = sum(len(s["items"]) for s in sequences)
    what = "POST /regenerate"
    moves.check(
        "taesar_http_requests_total",
        value("taesar_http_requests_total", **route, status="200") > before["requests"],
        what,
    )
    moves.check(
        "taesar_http_request_duration_seconds",
        value("taesar_http_request_duration_seconds_count", **route) > before["latency"],
        what,
    )
    moves.check("taesar_sequences_total", value("taesar_sequences_total", **sync) == before["sequences"] + 3, what)
    decisions = sum(value("taesar_decisions_total", **sync, action=a) for a in ("keep", "replace", "discard"))
    moves.check("taesar_decisions_total", decisions == before["decisions"] + items, what)
    moves.check(
        "taesar_decode_duration_seconds",
        value("taesar_decode_duration_seconds_count", model="tiny") > before["decode"],
        what,
    )
    moves.check("taesar_microbatch_calls", value("taesar_microbatch_calls_count", model="tiny") > before["calls"], what)
    moves.check(
        "taesar_microbatch_sequences",
        value("taesar_microbatch_sequences_sum", model="tiny") == before["batch"] + 3,
        what,
    )
    moves.check("taesar_decode_inflight", inflight == [1.0] and value("taesar_decode_inflight") == 0, what)


async def _submit(client: httpx.AsyncClient, moves: Moves, target: str, sequences: list[dict[str, Any]]) -> str:
    submitted = value("taesar_jobs_total", event="submitted")
    r = await client.post("/jobs", json={"target_domain": target, "sequences": sequences})
    assert r.status_code == 202, r.text
    moves.check("taesar_queue_depth", value("taesar_queue_depth") >= 3, "POST /jobs")
    assert value("taesar_jobs_total", event="submitted") == submitted + 1
    return r.json()["id"]


async def _cancel(client: httpx.AsyncClient, moves: Moves, target: str, sequences: list[dict[str, Any]]) -> str:
    r = await client.post("/jobs", json={"target_domain": target, "sequences": sequences})
    job_id = r.json()["id"]
    cancelled = value("taesar_jobs_total", event="cancelled")
    durations = value("taesar_job_duration_seconds_count", status="cancelled")
    for _ in range(2):  # a second DELETE changes nothing: the job ended once
        assert (await client.delete(f"/jobs/{job_id}")).json()["status"] == "cancelled"
    assert value("taesar_jobs_total", event="cancelled") == cancelled + 1
    assert value("taesar_job_duration_seconds_count", status="cancelled") == durations + 1
    return job_id


def _run_job(settings: Any, moves: Moves, job_id: str, target: str) -> None:
    """What a worker does with the job's chunks, in this process."""
    job = {"source": "job", "model": "tiny", "target": target}
    before = (
        value("taesar_sequences_total", **job),
        value("taesar_jobs_total", event="succeeded"),
        value("taesar_job_duration_seconds_count", status="succeeded"),
    )
    ctx = loading.make_context(settings)
    try:
        outcomes = [tasks.run_chunk(ctx, job_id, i) for i in range(2)]  # 3 sequences, 2 per chunk
    finally:
        ctx.store.r.close()
    assert outcomes == ["stored", "succeeded"]
    what = "a job's chunks run by the worker"
    assert value("taesar_sequences_total", **job) == before[0] + 3, what
    moves.check("taesar_jobs_total", value("taesar_jobs_total", event="succeeded") == before[1] + 1, what)
    moves.check(
        "taesar_job_duration_seconds",
        value("taesar_job_duration_seconds_count", status="succeeded") == before[2] + 1,
        what,
    )


async def _fail_a_job(settings: Any) -> None:
    """A job whose model no worker has fails on its first chunk, and is counted as failed."""
    job_id = uuid.uuid4().hex
    client = redis.asyncio.Redis.from_url(REDIS_URL)
    writer = await JobStore(client, settings.key_prefix, 600).open_job(job_id, JobSpec("a", "nope", "x", {}), 10)
    await writer.add(None, ["1", "2"])
    assert (await writer.commit(10**6)).accepted
    await client.aclose()
    failed = value("taesar_jobs_total", event="failed"), value("taesar_job_duration_seconds_count", status="failed")
    ctx = loading.make_context(settings)
    try:
        assert tasks.run_chunk(ctx, job_id, 0) == "failed"
        record = ctx.store.record(job_id)
        assert record is not None and record.error is not None and record.error["code"] == "unknown_model"
    finally:
        ctx.store.r.close()
    assert value("taesar_jobs_total", event="failed") == failed[0] + 1
    assert value("taesar_job_duration_seconds_count", status="failed") == failed[1] + 1
