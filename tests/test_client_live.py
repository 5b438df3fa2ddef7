"""The SDK end to end against a real uvicorn server, Redis and a Celery worker, running
the examples of docs/service.md as written."""

from __future__ import annotations

import asyncio
import gzip
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import taesar_client as sdk
from taesar_client import AsyncTaesarClient, TaesarClient

# -- end to end: real server, real Redis, real worker -------------------------------

REDIS_URL = "redis://127.0.0.1:6379/0"
API_KEY = "sdk-e2e-key"
SERVICE_DOC = Path(__file__).resolve().parents[1] / "docs" / "service.md"


def documented_examples() -> list[str]:
    """The ```python blocks of docs/service.md: [online example, bulk example]."""
    import re

    blocks = re.findall(r"^```python\n(.*?)^```", SERVICE_DOC.read_text(), flags=re.S | re.M)
    assert len(blocks) == 2, f"docs/service.md should hold 2 python examples, found {len(blocks)}"
    return blocks


def redis_answers() -> bool:
    import redis

    try:
        return bool(redis.Redis.from_url(REDIS_URL, socket_connect_timeout=1, socket_timeout=1).ping())
    except redis.RedisError:
        return False


class LiveApi:
    def __init__(self, url: str, env: dict[str, str], target: str, items: list[str]) -> None:
        self.url, self.env, self.target, self.items = url, env, target, items
        self.queue = f"{env['TAESAR_KEY_PREFIX']}.chunks"


@pytest.fixture(scope="module")
def live_api(tiny_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveApi]:
    import shutil
    import uuid

    from app.main import create_app
    from core.settings import Settings
    from tests.live_server import catalogue_sample, live_server

    model_dir = tmp_path_factory.mktemp("sdk-e2e") / "models"
    shutil.copytree(tiny_bundle, model_dir / "tiny")
    prefix = f"test-sdk-{uuid.uuid4().hex[:8]}"
    env = {
        "TAESAR_MODEL_DIR": str(model_dir),
        "TAESAR_REDIS_URL": REDIS_URL,
        "TAESAR_KEY_PREFIX": prefix,
        "TAESAR_DEVICE": "cpu",
        "TAESAR_API_KEYS": API_KEY,
        "TAESAR_CHUNK_SIZE": "200",
        "TAESAR_LOG_LEVEL": "WARNING",
    }
    settings = Settings(_env_file=None, **{k.removeprefix("TAESAR_").lower(): v for k, v in env.items()})
    target, items = catalogue_sample(tiny_bundle)
    try:
        with live_server(create_app(settings)) as url:
            yield LiveApi(url, env, target=target, items=items)
    finally:
        if redis_answers():
            import redis

            r = redis.Redis.from_url(REDIS_URL)
            for key in r.scan_iter(f"{prefix}*", count=1000):
                r.delete(key)


@pytest.fixture(scope="module")
def worker(live_api: LiveApi) -> Iterator[Any]:
    if not redis_answers():
        pytest.skip(f"no Redis answers at {REDIS_URL}: jobs need one (.ci/run starts it)")
    from tests.live_server import celery_worker

    with celery_worker(live_api.env, live_api.queue) as proc:
        yield proc


@pytest.fixture
def docs_env(live_api: LiveApi, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TAESAR_URL", live_api.url)
    monkeypatch.setenv("TAESAR_API_KEY", API_KEY)
    monkeypatch.setenv("TAESAR_TARGET", live_api.target)
    monkeypatch.setenv("TAESAR_ITEMS", " ".join(live_api.items))


@pytest.mark.slow
def test_documented_online_example_runs_as_written(docs_env: None, capsys: pytest.CaptureFixture[str]) -> None:
    exec(compile(documented_examples()[0], str(SERVICE_DOC), "exec"), {"__name__": "__docs__"})
    out = capsys.readouterr().out
    assert "tiny [" in out and "regenerated:" in out
    assert "refused: unknown_item" in out


@pytest.mark.slow
def test_documented_bulk_example_runs_through_redis_and_a_worker(
    docs_env: None, worker: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    exec(compile(documented_examples()[1], str(SERVICE_DOC), "exec"), {"__name__": "__docs__"})
    out = capsys.readouterr().out
    assert "done: 1000 sequences" in out and "kept items:" in out
    assert worker.poll() is None, "the worker died"


@pytest.mark.slow
def test_sdk_against_a_real_server_returns_typed_results_and_typed_errors(live_api: LiveApi) -> None:
    with TaesarClient(live_api.url, api_key=API_KEY) as client:
        assert client.health().status == "ok"
        assert client.ready().models == ["tiny"]
        assert [m.name for m in client.list_models()] == ["tiny"]
        out = client.regenerate(live_api.target, [live_api.items, {"user_id": "u7", "items": live_api.items}])
        assert isinstance(out, sdk.RegenerateResponse) and out.model == "tiny"
        assert [len(r.decisions) for r in out.results] == [len(live_api.items)] * 2
        assert out.results[1].user_id == "u7"
        with pytest.raises(sdk.UnknownDomainError):
            client.regenerate("no such domain", [live_api.items])
        with pytest.raises(sdk.UnknownModelError):
            client.regenerate(live_api.target, [live_api.items], model="nope")
        with pytest.raises(sdk.JobNotFoundError):
            client.get_job("no-such-job")
    with TaesarClient(live_api.url, api_key="wrong") as client, pytest.raises(sdk.UnauthorizedError):
        client.list_models()


@pytest.mark.slow
def test_async_sdk_against_a_real_server(live_api: LiveApi) -> None:
    async def main() -> sdk.RegenerateResponse:
        async with AsyncTaesarClient(live_api.url, api_key=API_KEY) as client:
            assert [m.name for m in await client.list_models()] == ["tiny"]
            return await client.regenerate(live_api.target, [live_api.items], explain=True)

    out = asyncio.run(main())
    # the first item has no context to score it; later ones carry their candidates
    assert any(d.explain is not None for d in out.results[0].decisions)


@pytest.mark.slow
def test_a_gzip_file_job_is_deduplicated_and_its_results_stream_back_in_order(
    live_api: LiveApi, worker: Any, tmp_path: Path
) -> None:
    n = 450  # three chunks of 200, the last one short
    path = tmp_path / "users.jsonl.gz"
    with gzip.open(path, "wt") as f:
        for i in range(n):
            f.write(json.dumps({"user_id": f"u{i:04d}", "items": live_api.items[i % 4 :]}) + "\n")
    with TaesarClient(live_api.url, api_key=API_KEY) as client:
        job = client.submit_job(live_api.target, path, idempotency_key=f"file-{path.stat().st_mtime_ns}")
        again = client.submit_job(live_api.target, path, idempotency_key=f"file-{path.stat().st_mtime_ns}")
        assert again.id == job.id and job.progress.total == n
        seen: list[int] = []
        done = client.wait_for_job(
            job.id, poll_interval=0.2, timeout=180, on_progress=lambda j: seen.append(j.progress.done)
        )
        assert done.status == sdk.JobStatus.succeeded and seen[-1] == n
        assert seen == sorted(seen)
        results = list(client.iter_results(job.id))
        assert [r.user_id for r in results] == [f"u{i:04d}" for i in range(n)]
        assert sum(r.stats.kept + r.stats.replaced + r.stats.discarded for r in results) == sum(
            len(live_api.items[i % 4 :]) for i in range(n)
        )
        recbole = list(client.iter_results(job.id, format="recbole"))
        assert recbole[0] == "user_id:token\titem_id_list:token_seq\titem_id:token"
        assert client.cancel_job(job.id).status == sdk.JobStatus.succeeded


def test_the_readme_carries_the_executed_sdk_example_verbatim() -> None:
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    assert f"```python\n{documented_examples()[0]}```" in readme
