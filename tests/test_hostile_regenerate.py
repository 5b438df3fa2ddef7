"""Expensive and abandoned /regenerate calls against a real `taesar serve` process.

One API process with two API keys and a queue budget of 300,000 cost units (150,000 per
key) serves the module:

- 30 expensive calls (1,800 items, explain_top_k 50) whose clients give up after 1 s,
  then one ordinary call: it must not wait for the abandoned work;
- one key floods the model with connected expensive calls (10,000 items each): the
  other key's ordinary call still answers within about one of them, and the flood gets
  429 queue_full with Retry-After beyond its key's share.

The figures each test measures are printed (`pytest -s`) and quoted in docs/reliability.md.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.api_support import delete_prefix, metric_total, model_dir_with, print_figures
from tests.test_faults import KEY, api_process, free_port, service_env

OTHER_KEY = "regenerate-other-key"
MAX_QUEUED_COST = 300_000
ABANDONED = 30


@pytest.fixture(scope="module")
def service(
    tiny_bundle: Path, catalogue: dict[str, Any], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Any]]:
    root = tmp_path_factory.mktemp("hostile-regenerate")
    prefix = f"test-hregen-{uuid.uuid4().hex[:8]}"
    env = service_env(
        model_dir_with(tiny_bundle, root),
        prefix,
        TAESAR_API_KEYS=f"{KEY},{OTHER_KEY}",
        TAESAR_MICROBATCH_MAX_QUEUED_COST=str(MAX_QUEUED_COST),
        TAESAR_TORCH_THREADS="1",
    )
    port = free_port()
    try:
        with api_process(env, port, root / "api.log") as api:
            yield {"url": f"http://127.0.0.1:{port}", "api": api, "items": catalogue["item_ids"]}
    finally:
        delete_prefix(prefix)


def _auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def _body(items: list[str], length: int, explain: bool) -> dict[str, Any]:
    sequence = [items[i % len(items)] for i in range(length)]
    options = {"explain": True, "explain_top_k": 50} if explain else {}
    return {"target_domain": "x", "sequences": [{"items": sequence}], "options": options}


def _timed_call(url: str, key: str, body: dict[str, Any], timeout: float) -> tuple[float, httpx.Response | None]:
    started = time.perf_counter()
    try:
        r = httpx.post(f"{url}/regenerate", json=body, headers=_auth(key), timeout=timeout)
    except httpx.TimeoutException:
        r = None
    return time.perf_counter() - started, r


def _decodes(url: str) -> tuple[float, float]:
    """(engine batches decoded, their seconds) so far."""
    return metric_total(url, "taesar_decode_duration_seconds_count"), metric_total(
        url, "taesar_decode_duration_seconds_sum"
    )


def _wait_idle(url: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while metric_total(url, "taesar_decode_inflight") > 0:
        assert time.monotonic() < deadline, "calls still in flight"
        time.sleep(0.2)


def test_abandoned_expensive_calls_are_not_decoded(service: dict[str, Any]) -> None:
    url, items = service["url"], service["items"]
    expensive = _body(items, 1_800, explain=True)
    decodes_before, seconds_before = _decodes(url)
    aborts_before = metric_total(url, "taesar_http_requests_total", route="/regenerate", status="499")
    with ThreadPoolExecutor(ABANDONED) as pool:
        outcomes = list(pool.map(lambda _: _timed_call(url, KEY, expensive, 1.0), range(ABANDONED)))
    assert sum(r is None for _, r in outcomes) >= ABANDONED - 2, "the clients were meant to give up"
    seconds, r = _timed_call(url, KEY, _body(items, 5, explain=False), 60)
    assert r is not None and r.status_code == 200, r.text if r is not None else "timed out"
    _wait_idle(url)
    decodes, decode_s = (
        now - before for now, before in zip(_decodes(url), (decodes_before, seconds_before), strict=True)
    )
    decoded = decodes - 1  # the last one is the 5-item call
    one = decode_s / decodes  # about one abandoned call's decode: the 5-item one costs nothing beside them
    aborted = metric_total(url, "taesar_http_requests_total", route="/regenerate", status="499") - aborts_before
    print_figures("abandoned", next_call_s=seconds, abandoned_decoded=decoded, one_decode_s=one, client_aborts=aborted)
    # it may wait for the one decode in progress, not for the other abandoned calls (the
    # machine's speed sets how many were decoded before their clients gave up after 1 s)
    assert seconds < max(3.0, 3 * one), f"the call after {ABANDONED} abandoned ones took {seconds:.1f} s"
    assert decoded <= ABANDONED // 3, f"{decoded:.0f} abandoned calls were decoded anyway"
    assert aborted >= ABANDONED - 2
    assert metric_total(url, "taesar_http_requests_total", route="/regenerate", status="500") == 0


def test_one_key_cannot_starve_another(service: dict[str, Any]) -> None:
    url, items = service["url"], service["items"]
    flood = _body(items, 10_000, explain=True)  # 25,625 cost units each: 5 fit one key's share
    answers: list[tuple[float, httpx.Response | None]] = []

    def flooder() -> None:
        answers.append(_timed_call(url, KEY, flood, 6.0))

    decodes_before, seconds_before = _decodes(url)
    threads = [threading.Thread(target=flooder) for _ in range(8)]
    for t in threads:
        t.start()
    time.sleep(1.0)  # the flood is queued
    seconds, r = _timed_call(url, OTHER_KEY, _body(items, 5, explain=False), 60)
    for t in threads:
        t.join()
    _wait_idle(url)
    decodes, decode_s = (
        now - before for now, before in zip(_decodes(url), (decodes_before, seconds_before), strict=True)
    )
    one = decode_s / max(1, decodes - 1)  # one flood call's decode
    refused = [a for _, a in answers if a is not None and a.status_code == 429]
    print_figures("fair share", other_key_s=seconds, one_flood_decode_s=one, flood_refused=len(refused))
    assert r is not None and r.status_code == 200, r.text if r is not None else "timed out"
    # it may wait for the flood call decoding when it arrives, not for the flood's backlog
    assert seconds < 2.5 * one, f"the other key's call waited {seconds:.1f} s behind the flood ({one:.1f} s each)"
    assert refused, "the flood beyond its key's share was not refused"
    error = refused[0].json()["error"]
    assert error["code"] == "queue_full" and error["details"]["scope"] == "api_key", error
    assert int(refused[0].headers["Retry-After"]) >= 1
