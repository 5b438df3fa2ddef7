"""Micro-batching of concurrent /regenerate calls (app/batching.py).

Most tests hold the first engine call on a gate until the other requests have queued
behind it, so what is batched with what is decided by the test, not by the scheduler.
They run through real HTTP (httpx's ASGI transport) on the tiny bundle, except those
that need an engine with controlled behaviour.
"""

from __future__ import annotations

import asyncio
import random
import threading
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.batching import BatchPolicy, MicroBatcher
from app.engines import ServedEngines
from app.main import create_app
from core.settings import Settings
from tests.api_support import model_dir_with, settings_for

pytestmark = pytest.mark.anyio
MODEL = "tiny"


@pytest.fixture
def model_dir(tiny_bundle: Path, tmp_path: Path) -> Path:
    return model_dir_with(tiny_bundle, tmp_path, MODEL)


@asynccontextmanager
async def served(settings: Settings) -> AsyncIterator[tuple[httpx.AsyncClient, ServedEngines]]:
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)  # a 500 is an answer here
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver", timeout=30) as client:
            yield client, app.state.engines


class Gate:
    """Wraps an engine's `regenerate`: counts the sequences of every call, holds the
    first call until `release()`, and raises `fail_with` from the calls numbered in `fail_calls`."""

    def __init__(self, engine: Any, *, fail_calls: tuple[int, ...] = (), fail_with: Exception | None = None) -> None:
        self.calls: list[int] = []
        self._open = threading.Event()
        self._inner = engine.regenerate
        self._fail_calls, self._fail_with = fail_calls, fail_with
        engine.regenerate = self

    def release(self) -> None:
        self._open.set()

    def __call__(self, sequences: list[list[str]], target: str, **kwargs: Any) -> Any:
        self.calls.append(len(sequences))
        number = len(self.calls)
        if number == 1:
            assert self._open.wait(20), "the gate was never released"
        if number in self._fail_calls and self._fail_with is not None:
            raise self._fail_with
        return self._inner(sequences, target, **kwargs)


async def eventually(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.002)


def queued(engines: ServedEngines) -> int:
    batcher = engines.batcher(MODEL)
    return batcher.queued_calls if batcher is not None else 0


async def post_behind_a_held_call(
    client: httpx.AsyncClient, engines: ServedEngines, gate: Gate, bodies: list[dict[str, Any]]
) -> list[httpx.Response]:
    """Send bodies[0] (its engine call held by the gate), queue the others behind it, release."""
    tasks = [asyncio.create_task(client.post("/regenerate", json=bodies[0]))]
    await eventually(lambda: len(gate.calls) == 1)
    tasks += [asyncio.create_task(client.post("/regenerate", json=b)) for b in bodies[1:]]
    await eventually(lambda: queued(engines) == len(bodies) - 1)
    gate.release()
    return list(await asyncio.wait_for(asyncio.gather(*tasks), 30))


def request(target: str, sequences: list[list[str]], **options: Any) -> dict[str, Any]:
    return {
        "target_domain": target,
        "sequences": [{"user_id": f"u{k}", "items": s} for k, s in enumerate(sequences)],
        "options": options,
    }


def mixed_requests(catalogue: dict[str, Any], n: int, seed: int = 0) -> list[dict[str, Any]]:
    """Requests over every target, with ablations, dropped unknown items, explain, 1-3 sequences."""
    rng = random.Random(seed)
    items = catalogue["item_ids"]
    option_sets: list[dict[str, Any]] = [
        {},
        {"ablations": {"no_global": True}},
        {"ablations": {"no_source_experts": True}},
        {"unknown_items": "drop"},
        {"explain": True, "explain_top_k": 2},
    ]
    out = []
    for k in range(n):
        options = option_sets[k % len(option_sets)]
        seqs = [[rng.choice(items) for _ in range(rng.randint(1, 40))] for _ in range(rng.randint(1, 3))]
        if options.get("unknown_items") == "drop":
            seqs[0].insert(rng.randint(0, len(seqs[0])), "no-such-item")
        out.append(request(rng.choice(catalogue["domains"]), seqs, **options))
    return out


async def answers_one_at_a_time(model_dir: Path, bodies: list[dict[str, Any]]) -> list[httpx.Response]:
    async with served(settings_for(model_dir, microbatch_max_wait_ms=0)) as (client, _):
        return [await client.post("/regenerate", json=b) for b in bodies]


# -- equality with the unbatched path ---------------------------------------------------


async def test_batched_answers_equal_unbatched_answers_for_mixed_concurrent_requests(
    model_dir: Path, catalogue: dict[str, Any]
) -> None:
    bodies = mixed_requests(catalogue, 40)
    settings = settings_for(model_dir, microbatch_max_sequences=12)
    async with served(settings) as (client, engines):
        gate = Gate(engines.get(MODEL))
        batched = await post_behind_a_held_call(client, engines, gate, bodies)
    alone = await answers_one_at_a_time(model_dir, bodies)

    for k, (b, a) in enumerate(zip(batched, alone, strict=True)):
        assert b.status_code == a.status_code == 200, (k, b.text)
        assert b.json() == a.json(), f"request {k} answered differently when batched"
    assert len(gate.calls) < len(bodies) // 2, gate.calls  # they really were batched
    assert max(gate.calls) <= 12  # the sequence budget


async def test_concurrent_requests_cause_fewer_engine_calls_than_requests(
    model_dir: Path, catalogue: dict[str, Any]
) -> None:
    target = catalogue["domains"][0]
    bodies = [request(target, [catalogue["item_ids"][k : k + 20]]) for k in range(24)]
    async with served(settings_for(model_dir)) as (client, engines):
        engine = engines.get(MODEL)
        gate = Gate(engine)
        gate.release()  # no gate: only the scheduler decides what joins what
        inner = gate._inner

        def slow(sequences: list[list[str]], target: str, **kwargs: Any) -> Any:
            time.sleep(0.02)  # a decoder that is busy long enough for calls to accumulate
            return inner(sequences, target, **kwargs)

        gate._inner = slow
        answers = await asyncio.wait_for(
            asyncio.gather(*(client.post("/regenerate", json=b) for b in bodies)), timeout=30
        )
    assert all(r.status_code == 200 for r in answers)
    assert sum(gate.calls) == len(bodies)  # every sequence decoded exactly once
    assert len(gate.calls) < len(bodies) / 2, gate.calls


async def test_a_lone_client_is_not_held_back_by_the_batching_window(model_dir: Path, catalogue: dict) -> None:
    body = request(catalogue["domains"][1], [catalogue["item_ids"][:30]])
    async with served(settings_for(model_dir, microbatch_max_wait_ms=1000)) as (client, engines):
        for _ in range(2):  # the first call may pay for lazy initialisation
            await client.post("/regenerate", json=body)
        started = time.perf_counter()
        for _ in range(5):
            assert (await client.post("/regenerate", json=body)).status_code == 200
        elapsed = time.perf_counter() - started
        batcher = engines.batcher(MODEL)
        assert batcher is not None and batcher.batches == 7
    assert elapsed < 2.5, f"5 sequential calls took {elapsed:.2f}s with a 1 s window: something waited for company"


# -- failures stay where they belong ----------------------------------------------------


async def test_a_request_with_an_unknown_item_fails_alone_in_its_batch(
    model_dir: Path, catalogue: dict[str, Any]
) -> None:
    target = catalogue["domains"][2]
    items = catalogue["item_ids"]
    good = [request(target, [items[k : k + 10], items[k + 30 : k + 35]]) for k in range(5)]
    bad = request(target, [items[:5], [items[7], "no-such-item", items[8]]])
    bodies = [good[0], good[1], bad, *good[2:]]
    async with served(settings_for(model_dir)) as (client, engines):
        gate = Gate(engines.get(MODEL))
        batched = await post_behind_a_held_call(client, engines, gate, bodies)
    alone = await answers_one_at_a_time(model_dir, bodies)

    assert batched[2].status_code == 422
    assert batched[2].json() == alone[2].json()
    error = batched[2].json()["error"]
    assert error["code"] == "unknown_item"
    assert error["details"] == {"item": "no-such-item", "sequence": 1, "position": 1}
    for k in (0, 1, 3, 4, 5):
        assert batched[k].status_code == 200 and batched[k].json() == alone[k].json()
    assert gate.calls == [2, 8]  # the held call, then the four other good ones together


async def test_an_engine_error_reaches_every_caller_of_its_batch_and_no_other(
    model_dir: Path, catalogue: dict[str, Any]
) -> None:
    target = catalogue["domains"][0]
    bodies = [request(target, [catalogue["item_ids"][k : k + 8]]) for k in range(6)]
    async with served(settings_for(model_dir)) as (client, engines):
        gate = Gate(engines.get(MODEL), fail_calls=(2,), fail_with=RuntimeError("out of memory, say"))
        answers = await post_behind_a_held_call(client, engines, gate, bodies)
        after = await client.post("/regenerate", json=bodies[0])

    assert gate.calls[:2] == [1, 5]
    assert answers[0].status_code == 200
    for r in answers[1:]:
        assert r.status_code == 500 and r.json()["error"]["code"] == "internal_error"
    assert after.status_code == 200 and after.json() == answers[0].json()  # the batcher carries on


async def test_a_cancelled_caller_does_not_break_the_others_or_hang(model_dir: Path, catalogue: dict) -> None:
    target = catalogue["domains"][1]
    bodies = [request(target, [catalogue["item_ids"][k : k + 12]]) for k in range(6)]
    async with served(settings_for(model_dir)) as (client, engines):
        gate = Gate(engines.get(MODEL))
        tasks = [asyncio.create_task(client.post("/regenerate", json=bodies[0]))]
        await eventually(lambda: len(gate.calls) == 1)
        tasks += [asyncio.create_task(client.post("/regenerate", json=b)) for b in bodies[1:]]
        await eventually(lambda: queued(engines) == 5)
        for k in (0, 2):  # one whose batch is decoding, one still queued (a client that went away)
            tasks[k].cancel()
        await eventually(lambda: queued(engines) == 4)
        gate.release()
        done = await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 30)
        later = await asyncio.wait_for(client.post("/regenerate", json=bodies[2]), 30)
        batcher = engines.batcher(MODEL)
        assert batcher is not None
        await eventually(lambda: not batcher._runners)
        assert batcher._queued_sequences == 0

    assert isinstance(done[0], asyncio.CancelledError) and isinstance(done[2], asyncio.CancelledError)
    for k in (1, 3, 4, 5):
        assert isinstance(done[k], httpx.Response) and done[k].status_code == 200
    assert later.status_code == 200
    assert gate.calls == [1, 4, 1]  # the cancelled queued call was never decoded


async def test_a_full_queue_answers_429_with_retry_after(model_dir: Path, catalogue: dict[str, Any]) -> None:
    target = catalogue["domains"][0]
    bodies = [request(target, [catalogue["item_ids"][:6]] * 2) for _ in range(4)]
    async with served(settings_for(model_dir, microbatch_max_queued_sequences=4)) as (client, engines):
        gate = Gate(engines.get(MODEL))
        tasks = [asyncio.create_task(client.post("/regenerate", json=bodies[0]))]
        await eventually(lambda: len(gate.calls) == 1)
        tasks += [asyncio.create_task(client.post("/regenerate", json=b)) for b in bodies[1:3]]
        await eventually(lambda: queued(engines) == 2)  # 4 sequences wait: the queue is full
        refused = await client.post("/regenerate", json=bodies[3])
        gate.release()
        answers = await asyncio.wait_for(asyncio.gather(*tasks), 30)
        accepted_again = await client.post("/regenerate", json=bodies[3])

    assert refused.status_code == 429 and refused.headers["retry-after"] == "1"
    assert refused.json()["error"]["code"] == "queue_full"
    assert all(r.status_code == 200 for r in answers) and accepted_again.status_code == 200


# -- the batcher alone, on an engine that records what it is asked ----------------------


class RecordingEngine:
    name = "fake"

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any, list[list[str]]]] = []
        self.gate = threading.Event()

    def check_known(self, sequences: list[list[str]]) -> None:
        pass

    def regenerate(self, sequences: list[list[str]], target: str, *, unknown_items: str, options: Any) -> list[str]:
        if not self.calls:
            assert self.gate.wait(10)
        self.calls.append((target, options, sequences))
        return [f"{target}:{options}:{'-'.join(s)}" for s in sequences]


async def test_different_targets_and_options_are_decoded_in_separate_batches() -> None:
    from models.decoding import DecodeOptions

    engine = RecordingEngine()
    batcher = MicroBatcher(engine, BatchPolicy(max_wait_s=0.05))
    keys = [("a", DecodeOptions()), ("b", DecodeOptions()), ("a", DecodeOptions(no_global=True))]
    explain = ("a", DecodeOptions(explain_top_k=3))

    async def call(target: str, options: Any, k: int) -> Any:
        return await batcher.submit(target, options, [[str(k)]], unknown_items="error", finish=list)

    first = asyncio.create_task(call("a", DecodeOptions(), 0))
    await eventually(lambda: batcher.queued_calls == 0 and batcher.batches == 1)
    rest = [asyncio.create_task(call(*keys[k % 3], k)) for k in range(1, 10)]
    rest += [asyncio.create_task(call(*explain, k)) for k in (10, 11)]
    await eventually(lambda: batcher.queued_calls == 11)
    engine.gate.set()
    results = await asyncio.wait_for(asyncio.gather(first, *rest), 10)

    assert results[0] == ["a:" + str(DecodeOptions()) + ":0"]
    for k, r in enumerate(results[1:10], start=1):
        target, options = keys[k % 3]
        assert r == [f"{target}:{options}:{k}"]  # each caller got its own sequence back
    batches = [(t, o, [s[0] for s in seqs]) for t, o, seqs in engine.calls[1:]]
    # one batch per key, taken in the order of each key's oldest call; explain calls never joined
    assert batches == [
        (*keys[1], ["1", "4", "7"]),
        (*keys[2], ["2", "5", "8"]),
        (*keys[0], ["3", "6", "9"]),
        (*explain, ["10"]),
        (*explain, ["11"]),
    ]


async def test_after_a_joined_batch_an_idle_decoder_lingers_for_as_many_calls() -> None:
    from models.decoding import DecodeOptions

    engine = RecordingEngine()
    batcher = MicroBatcher(engine, BatchPolicy(max_wait_s=0.5))
    key = ("a", DecodeOptions())

    async def call(k: int) -> Any:
        return await batcher.submit(*key, [[str(k)]], unknown_items="error", finish=list)

    held = [asyncio.create_task(call(0))]
    await eventually(lambda: batcher.batches == 1)
    held += [asyncio.create_task(call(k)) for k in (1, 2, 3)]
    await eventually(lambda: batcher.queued_calls == 3)
    engine.gate.set()
    await asyncio.wait_for(asyncio.gather(*held), 10)  # batches [0], [1, 2, 3]: the last joined 3 calls

    started = time.monotonic()
    spaced = []
    for k in (4, 5, 6):  # arrive one by one at an idle decoder
        spaced.append(asyncio.create_task(call(k)))
        await asyncio.sleep(0.02)
    await asyncio.wait_for(asyncio.gather(*spaced), 10)
    assert [[s[0] for s in seqs] for _, _, seqs in engine.calls] == [["0"], ["1", "2", "3"], ["4", "5", "6"]]
    assert time.monotonic() - started < 0.4  # it stopped waiting once 3 calls were there, not at 0.5 s

    await asyncio.wait_for(call(7), 10)  # a lone call after that waits out the window once...
    started = time.monotonic()
    await asyncio.wait_for(call(8), 10)  # ...and the next one not at all
    assert time.monotonic() - started < 0.25


async def test_callers_take_turns_whatever_their_backlog() -> None:
    from models.decoding import DecodeOptions

    engine = RecordingEngine()
    batcher = MicroBatcher(engine, BatchPolicy(max_wait_s=0))
    explain = ("a", DecodeOptions(explain_top_k=3))  # never joined: one call per batch

    async def call(owner: str, k: int) -> Any:
        return await batcher.submit(*explain, [[f"{owner}{k}"]], unknown_items="error", finish=list, owner=owner)

    held = [asyncio.create_task(call("a", 0))]
    await eventually(lambda: batcher.batches == 1)
    held += [asyncio.create_task(call("a", k)) for k in range(1, 5)]  # a's backlog first...
    await eventually(lambda: batcher.queued_calls == 4)
    held += [asyncio.create_task(call("b", k)) for k in range(2)]  # ...then b's calls
    await eventually(lambda: batcher.queued_calls == 6)
    engine.gate.set()
    await asyncio.wait_for(asyncio.gather(*held), 10)
    order = [seqs[0][0] for _, _, seqs in engine.calls]
    assert order == ["a0", "b0", "a1", "b1", "a2", "a3", "a4"]


async def test_admission_counts_cost_and_each_callers_share() -> None:
    from app.batching import call_cost
    from app.errors import ApiError
    from models.decoding import DecodeOptions

    plain, explain = DecodeOptions(), DecodeOptions(explain_top_k=32)
    assert call_cost([["x"] * 100, ["y"] * 50], plain) == 150
    assert call_cost([["x"] * 100], explain) == 200  # k=32: one more unit per item
    engine = RecordingEngine()
    batcher = MicroBatcher(engine, BatchPolicy(max_wait_s=0, max_queued_cost=1_000, key_share=0.5))

    def call(owner: str, items: int, options: Any = plain) -> asyncio.Task[Any]:
        sequences = [[str(i) for i in range(items)]]
        return asyncio.create_task(
            batcher.submit("a", options, sequences, unknown_items="error", finish=list, owner=owner)
        )

    held = [call("a", 10)]  # decoding, held at the gate: no longer queued
    await eventually(lambda: batcher.batches == 1)
    held += [call("a", 200, explain), call("a", 100)]  # 400 + 100: a's share of 500 is full
    await eventually(lambda: batcher.queued_cost == 500)
    with pytest.raises(ApiError) as refused:
        await call("a", 1)
    assert refused.value.code == "queue_full" and refused.value.details["scope"] == "api_key"
    assert int(refused.value.headers["Retry-After"]) >= 1
    held += [call("b", 450)]  # another caller still gets in, up to the whole budget
    await eventually(lambda: batcher.queued_cost == 950)
    with pytest.raises(ApiError) as full:
        await call("c", 60)
    assert full.value.code == "queue_full" and full.value.details == {"queued_cost": 950, "max_cost": 1_000, "cost": 60}
    held[1].cancel()  # a caller gone: its cost leaves the queue at once
    await eventually(lambda: batcher.queued_cost == 550)
    held += [call("c", 60)]
    engine.gate.set()
    results = await asyncio.wait_for(asyncio.gather(*held, return_exceptions=True), 10)
    assert isinstance(results[1], asyncio.CancelledError)
    assert sum(isinstance(r, list) for r in results) == len(held) - 1
    assert batcher.queued_cost == 0 and not batcher._owners and not batcher._owner_cost
