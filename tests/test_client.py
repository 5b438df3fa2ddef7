"""The SDK against httpx.MockTransport: import surface, error mapping, retries,
idempotency, request and answer shapes, jobs, and the async client. Streaming uploads
are in test_client_uploads.py, a real server in test_client_live.py."""

from __future__ import annotations

import asyncio
import gzip
import inspect
import json
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from email.utils import format_datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

import taesar_client as sdk
from app.errors import STATUS_BY_CODE
from taesar_client import AsyncTaesarClient, TaesarAPIError, TaesarClient
from taesar_client._base import RetryPolicy
from taesar_client.errors import ERROR_BY_CODE
from tests.sdk_support import BASE, Recorder, async_client_for, client_for, error, job_json, regenerated_json

# -- import surface -----------------------------------------------------------------


def test_sdk_imports_neither_the_service_nor_torch_nor_the_server_stack() -> None:
    code = (
        "import sys, taesar_client\n"
        "heavy = [m for m in sys.modules if m.split('.')[0] in "
        "('app', 'torch', 'models', 'fastapi', 'starlette', 'celery', 'redis', 'numpy', 'pandas', 'workers')]\n"
        "assert not heavy, heavy\n"
        "from taesar_client import TaesarClient, AsyncTaesarClient\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[1])


def test_app_client_re_exports_the_sdk() -> None:
    import app.client

    assert app.client.__all__ == sdk.__all__
    for name in sdk.__all__:
        assert getattr(app.client, name) is getattr(sdk, name), name


def test_sync_and_async_clients_have_the_same_public_methods() -> None:
    def public(cls: type) -> set[str]:
        return {n for n, _ in inspect.getmembers(cls, callable) if not n.startswith("_")}

    assert public(TaesarClient) - {"close"} == public(AsyncTaesarClient) - {"aclose"}
    for name in public(TaesarClient) - {"close"}:
        sync_params = inspect.signature(getattr(TaesarClient, name)).parameters
        async_params = inspect.signature(getattr(AsyncTaesarClient, name)).parameters
        assert list(sync_params) == list(async_params), name


def test_clients_have_a_default_timeout() -> None:
    with TaesarClient(BASE) as client:
        assert client._http.timeout == httpx.Timeout(30)


# -- errors -------------------------------------------------------------------------


def test_every_server_error_code_has_its_own_exception_class() -> None:
    for code, status in STATUS_BY_CODE.items():
        cls = ERROR_BY_CODE[code]
        assert cls.code == code and cls.status_code == status, code
        assert issubclass(cls, TaesarAPIError)
        assert cls.__name__ in sdk.__all__, f"{cls.__name__} is not exported"
    assert len({ERROR_BY_CODE[c] for c in STATUS_BY_CODE}) == len(STATUS_BY_CODE)


@pytest.mark.parametrize("code", sorted(STATUS_BY_CODE))
def test_error_answer_raises_the_class_of_its_code(code: str) -> None:
    client, _ = client_for(Recorder(error(STATUS_BY_CODE[code], code, "bad thing")), retries=0)
    with pytest.raises(ERROR_BY_CODE[code]) as info:
        client.get_job("j1")
    assert info.value.code == code
    assert info.value.status_code == STATUS_BY_CODE[code]
    assert info.value.message == "bad thing"
    assert info.value.details == {"why": code}


def test_specific_codes_can_be_caught_by_their_status_family() -> None:
    client, _ = client_for(Recorder(error(404, "unknown_model")), retries=0)
    with pytest.raises(sdk.NotFoundError):
        client.list_models()
    client, _ = client_for(Recorder(error(429, "queue_full")), retries=0)
    with pytest.raises(sdk.RateLimitedError):
        client.submit_job("drama", [["a"]])


def test_unknown_code_maps_to_its_status_family_and_keeps_its_name() -> None:
    client, _ = client_for(Recorder(error(409, "brand_new_conflict")), retries=0)
    with pytest.raises(sdk.ConflictError) as info:
        client.get_job("j1")
    assert type(info.value) is sdk.ConflictError
    assert info.value.code == "brand_new_conflict"


def test_unknown_status_without_error_body_maps_to_the_root() -> None:
    client, _ = client_for(Recorder(httpx.Response(502, text="<html>Bad Gateway</html>")), retries=0)
    with pytest.raises(TaesarAPIError) as info:
        client.health()
    assert type(info.value) is TaesarAPIError
    assert info.value.status_code == 502 and "Bad Gateway" in info.value.message


# -- retries ------------------------------------------------------------------------


def test_429_is_retried_after_the_seconds_in_retry_after() -> None:
    recorder = Recorder(error(429, "rate_limited", headers={"Retry-After": "2"}), httpx.Response(200, json=job_json()))
    client, sleeps = client_for(recorder)
    assert client.get_job("j1").id == "j1"
    assert sleeps == [2.0] and len(recorder.requests) == 2


def test_retry_after_as_an_http_date_is_honoured() -> None:
    when = format_datetime(datetime.now(timezone.utc) + timedelta(seconds=30), usegmt=True)
    recorder = Recorder(
        error(503, "model_not_ready", headers={"Retry-After": when}), httpx.Response(200, json=job_json())
    )
    client, sleeps = client_for(recorder)
    client.get_job("j1")
    assert 25 <= sleeps[0] <= 30


def test_503_backs_off_exponentially_with_jitter_then_gives_up_with_the_typed_error() -> None:
    recorder = Recorder(error(503, "redis_unavailable"))
    client, sleeps = client_for(recorder, retries=3, backoff=0.5)
    with pytest.raises(sdk.RedisUnavailableError):
        client.get_job("j1")
    assert len(recorder.requests) == 4
    for attempt, delay in enumerate(sleeps):
        step = 0.5 * 2**attempt
        assert step / 2 <= delay <= step


def test_jitter_spreads_clients_apart() -> None:
    delays = {RetryPolicy(backoff=1.0).delay(3) for _ in range(20)}
    assert len(delays) > 1


@pytest.mark.parametrize(("status", "code"), [(422, "unknown_item"), (500, "internal_error"), (409, "conflict")])
def test_deterministic_errors_are_not_retried(status: int, code: str) -> None:
    recorder = Recorder(error(status, code))
    client, sleeps = client_for(recorder)
    with pytest.raises(ERROR_BY_CODE[code]):
        client.get_job("j1")
    assert len(recorder.requests) == 1 and sleeps == []


def test_connection_errors_are_retried_then_raised_as_api_connection_error() -> None:
    recorder = Recorder(httpx.ConnectError("refused"))
    client, sleeps = client_for(recorder, retries=2)
    with pytest.raises(sdk.APIConnectionError) as info:
        client.list_models()
    assert isinstance(info.value.__cause__, httpx.ConnectError)
    assert len(recorder.requests) == 3 and len(sleeps) == 2


def test_timeouts_raise_api_timeout_error() -> None:
    client, _ = client_for(Recorder(httpx.ReadTimeout("slow")), retries=0)
    with pytest.raises(sdk.APITimeoutError):
        client.health()


def test_a_connection_error_is_recovered_from_transparently() -> None:
    recorder = Recorder(httpx.ConnectError("refused"), httpx.Response(200, json={"status": "ok"}))
    client, _ = client_for(recorder)
    assert client.health().status == "ok"


# -- idempotency --------------------------------------------------------------------


def test_submit_job_reuses_one_generated_idempotency_key_across_retries() -> None:
    recorder = Recorder(
        error(503, "redis_unavailable"), httpx.ConnectError("reset"), httpx.Response(202, json=job_json())
    )
    client, _ = client_for(recorder)
    assert client.submit_job("drama", [["a", "b"]]).id == "j1"
    keys = {r.headers["Idempotency-Key"] for r in recorder.requests}
    assert len(recorder.requests) == 3 and len(keys) == 1 and next(iter(keys))


def test_each_submission_gets_a_fresh_idempotency_key() -> None:
    recorder = Recorder(httpx.Response(202, json=job_json()))
    client, _ = client_for(recorder)
    client.submit_job("drama", [["a"]])
    client.submit_job("drama", [["a"]])
    assert recorder.requests[0].headers["Idempotency-Key"] != recorder.requests[1].headers["Idempotency-Key"]


def test_a_given_idempotency_key_is_sent_as_is() -> None:
    recorder = Recorder(httpx.Response(202, json=job_json()))
    client, _ = client_for(recorder)
    client.submit_job("drama", [["a"]], idempotency_key="batch-2026-01-01")
    assert recorder.requests[0].headers["Idempotency-Key"] == "batch-2026-01-01"


# -- request shapes -----------------------------------------------------------------


def test_regenerate_sends_the_documented_body_and_parses_the_answer() -> None:
    answer = {
        "model": "tiny",
        "target_domain": "drama",
        "results": [regenerated_json()],
        "stats": {"kept": 1, "replaced": 1, "discarded": 0},
    }
    recorder = Recorder(httpx.Response(200, json=answer))
    client, _ = client_for(recorder, api_key="s3cret")
    out = client.regenerate(
        "drama",
        [["a", "b"], {"user_id": "u9", "items": ["c"]}, sdk.SequenceIn(items=["d"])],
        model="tiny",
        explain=True,
        explain_top_k=2,
        unknown_items="drop",
        ablations=["no_global"],
    )
    assert out.results[0].decisions[1].replacement == "c"
    request = recorder.requests[0]
    assert request.url.path == "/regenerate"
    assert request.headers["Authorization"] == "Bearer s3cret"
    assert json.loads(recorder.bodies[0]) == {
        "model": "tiny",
        "target_domain": "drama",
        "sequences": [{"items": ["a", "b"]}, {"user_id": "u9", "items": ["c"]}, {"items": ["d"]}],
        "options": {"explain": True, "explain_top_k": 2, "unknown_items": "drop", "ablations": {"no_global": True}},
    }


def test_no_authorization_header_without_an_api_key() -> None:
    recorder = Recorder(httpx.Response(200, json={"status": "ok"}))
    client, _ = client_for(recorder)
    client.health()
    assert "Authorization" not in recorder.requests[0].headers


def test_a_bad_option_fails_before_anything_is_sent() -> None:
    recorder = Recorder(httpx.Response(200, json={}))
    client, _ = client_for(recorder)
    with pytest.raises(ValueError):
        client.regenerate("drama", [["a"]], ablations=["no_such_ablation"])
    assert recorder.requests == []


def test_submit_job_with_a_list_sends_one_json_body() -> None:
    recorder = Recorder(httpx.Response(202, json=job_json()))
    client, _ = client_for(recorder)
    job = client.submit_job("drama", [["a", "b"]], model="tiny")
    assert job.status == sdk.JobStatus.queued
    assert recorder.requests[0].headers["Content-Type"] == "application/json"
    assert json.loads(recorder.bodies[0])["sequences"] == [{"items": ["a", "b"]}]


# -- jobs: waiting, results, cancel -------------------------------------------------


def test_wait_for_job_reports_progress_until_it_succeeds() -> None:
    recorder = Recorder(
        httpx.Response(200, json=job_json("queued", 0)),
        httpx.Response(200, json=job_json("running", 2)),
        httpx.Response(200, json=job_json("succeeded", 4)),
    )
    client, sleeps = client_for(recorder)
    seen: list[tuple[str, int]] = []
    job = client.wait_for_job(
        "j1", poll_interval=0.25, on_progress=lambda j: seen.append((j.status.value, j.progress.done))
    )
    assert job.status == sdk.JobStatus.succeeded
    assert seen == [("queued", 0), ("running", 2), ("succeeded", 4)]
    assert sleeps == [0.25, 0.25]


def test_wait_for_job_raises_job_failed_error_with_the_job() -> None:
    failed = job_json("failed", error={"code": "bad_data", "message": "chunk 3: unknown item 'zz'", "details": {}})
    client, _ = client_for(Recorder(httpx.Response(200, json=failed)))
    with pytest.raises(sdk.JobFailedError) as info:
        client.wait_for_job("j1")
    assert info.value.job.status == sdk.JobStatus.failed
    assert info.value.code == "bad_data" and "unknown item" in info.value.message


def test_wait_for_job_raises_job_cancelled_error() -> None:
    client, _ = client_for(Recorder(httpx.Response(200, json=job_json("cancelled"))))
    with pytest.raises(sdk.JobCancelledError):
        client.wait_for_job("j1")


def test_wait_for_job_gives_up_after_its_timeout() -> None:
    client, _ = client_for(Recorder(httpx.Response(200, json=job_json("running"))))
    with pytest.raises(sdk.JobTimeoutError):
        client.wait_for_job("j1", poll_interval=10, timeout=5)


def test_iter_results_yields_typed_sequences_line_by_line() -> None:
    lines = [json.dumps(regenerated_json(f"u{i}")) for i in range(3)]
    body = ("\n".join(lines) + "\n").encode()
    recorder = Recorder(httpx.Response(200, content=body, headers={"Content-Type": "application/x-ndjson"}))
    client, _ = client_for(recorder)
    results = list(client.iter_results("j1"))
    assert [r.user_id for r in results] == ["u0", "u1", "u2"]
    assert recorder.requests[0].url.path == "/jobs/j1/results"
    assert recorder.requests[0].url.params["format"] == "jsonl"


def test_iter_results_in_recbole_format_yields_raw_lines() -> None:
    body = b"user_id:token\titem_id_list:token_seq\titem_id:token\nu1\ta\tc\n"
    client, _ = client_for(Recorder(httpx.Response(200, content=body)))
    assert list(client.iter_results("j1", format="recbole")) == [
        "user_id:token\titem_id_list:token_seq\titem_id:token",
        "u1\ta\tc",
    ]


def test_iter_results_of_an_unfinished_job_raises_job_not_finished() -> None:
    client, _ = client_for(Recorder(error(409, "job_not_finished")))
    with pytest.raises(sdk.JobNotFinishedError):
        list(client.iter_results("j1"))


def test_cancel_job_sends_delete_and_returns_the_job() -> None:
    recorder = Recorder(httpx.Response(200, json=job_json("cancelled")))
    client, _ = client_for(recorder)
    assert client.cancel_job("j/1").status == sdk.JobStatus.cancelled
    assert recorder.requests[0].method == "DELETE"
    assert recorder.requests[0].url.raw_path == b"/jobs/j%2F1"


def test_ready_returns_not_ready_instead_of_raising() -> None:
    readiness = {"status": "not_ready", "models": ["tiny"], "redis": False, "errors": []}
    body = {"error": {"code": "redis_unavailable", "message": "Redis does not answer", "details": readiness}}
    recorder = Recorder(httpx.Response(503, json=body, headers={"Retry-After": "5"}))
    client, _ = client_for(recorder)
    ready = client.ready()
    assert ready.status == "not_ready" and ready.models == ["tiny"] and not ready.redis
    assert len(recorder.requests) == 1  # a probe answers now; it does not retry


def test_ready_raises_other_503s() -> None:
    client, _ = client_for(Recorder(httpx.Response(503, text="upstream down")))
    with pytest.raises(sdk.ServiceUnavailableError):
        client.ready()


# -- async --------------------------------------------------------------------------


def test_async_client_retries_and_maps_errors_like_the_sync_one() -> None:
    recorder = Recorder(error(429, "queue_full", headers={"Retry-After": "1"}), error(422, "unknown_domain"))

    async def main() -> None:
        client, sleeps = async_client_for(recorder)
        async with client:
            with pytest.raises(sdk.UnknownDomainError):
                await client.regenerate("Toys", [["a"]])
        assert sleeps == [1.0]

    asyncio.run(main())


def test_async_client_streams_an_async_iterator_and_iterates_results() -> None:
    uploaded: list[bytes] = []

    async def handler(request: httpx.Request) -> httpx.Response:
        if request.method == "POST":
            uploaded.append(await request.aread())
            return httpx.Response(202, json=job_json())
        if request.url.path.endswith("/results"):
            return httpx.Response(200, content=(json.dumps(regenerated_json()) + "\n").encode())
        return httpx.Response(200, json=job_json("succeeded", 4))

    async def sequences() -> Any:
        for i in range(3):
            yield [f"i{i}"]

    async def main() -> None:
        client, _ = async_client_for(handler)
        async with client:
            job = await client.submit_job("drama", sequences())
            progress: list[int] = []
            await client.wait_for_job(job.id, on_progress=lambda j: progress.append(j.progress.done))
            results = [r async for r in client.iter_results(job.id)]
        assert progress == [4] and results[0].sequence == ["a", "c"]

    asyncio.run(main())
    assert gzip.decompress(uploaded[0]).splitlines() == [b'{"items":["i0"]}', b'{"items":["i1"]}', b'{"items":["i2"]}']


def test_a_submission_still_in_progress_under_the_same_key_is_waited_for() -> None:
    in_progress = error(409, "conflict", headers={"Retry-After": "1"})
    recorder = Recorder(in_progress, httpx.Response(200, json=job_json(), headers={"Idempotent-Replayed": "true"}))
    client, sleeps = client_for(recorder)
    assert client.submit_job("drama", [["a"]]).id == "j1"
    assert sleeps == [1.0]


def test_a_409_without_an_idempotency_key_is_not_retried() -> None:
    recorder = Recorder(error(409, "job_not_finished", headers={"Retry-After": "5"}))
    client, sleeps = client_for(recorder)
    with pytest.raises(sdk.JobNotFinishedError):
        list(client.iter_results("j1"))
    assert sleeps == []
