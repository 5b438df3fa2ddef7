"""Dynamic micro-batching of concurrent /regenerate calls: one `MicroBatcher` per model.

Decoding costs roughly one forward pass per model and one scoring pass per batch,
whatever its size, so one 50-item sequence decoded alone costs about three times what
it costs inside a batch of 32 (benchmarks/microbatch.py). Concurrent calls that ask the
same model the same thing are therefore decoded together:

- A call queues under its key, (target domain, DecodeOptions); only calls with equal
  keys share an engine batch, so every batch is one ordinary engine call.
- An idle decoder takes a call at once: a client alone never waits for company.
  Calls that arrive while the decoder is busy accumulate, and the next batch takes
  the queue of the oldest call, up to `max_sequences` sequences.
- Lingering: when the previous batch joined several calls (clients are concurrent), an
  idle decoder waits up to `max_wait_s` (from the oldest call's arrival, or from the end
  of the previous batch if later) for as many calls as that batch had. Without it, N
  closed-loop clients split into batches of 1 and N-1.
- Per-call work runs in the decode thread, one call at a time, so a failure stays with
  its call: the unknown-item check of unknown_items="error" (done before the batch is
  joined: a bad call fails alone) and the rendering of each answer. An exception of the
  joined decode goes to every call of that batch.
- A cancelled caller (the route cancels a call whose client disconnected) leaves the
  queue, or, when its batch is already decoding, its answer is dropped and nobody waits
  for that decode; no other call notices.
- Fair share between callers (API keys): the next batch starts with the oldest call of
  the caller served longest ago, so a caller with many queued calls takes turns with
  the others instead of making them wait behind its backlog. Calls of other callers
  that ask the same thing still join that batch.
- Admission by cost: a call costs its items, plus `explain_top_k / EXPLAIN_K_PER_UNIT`
  per item when it asks for explanations (the candidates rendered per item). At most
  `max_queued_cost` units and `max_queued_sequences` sequences wait per model, and one
  caller's calls at most `key_share` of `max_queued_cost`; beyond that: 429 queue_full
  with a Retry-After estimated from the decode rate measured so far. A call arriving at
  an empty queue (or a caller's first) is taken whatever its cost, so a call above
  the bounds is never refused forever.

Answers equal those of decoding each call alone: decisions do not depend on batch
composition (tests/test_engine.py). Explain scores do in their last float bits, so
calls that ask for them are never joined with others.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import anyio.to_thread

from app.errors import ApiError
from core import metrics

Key = tuple[str, Any]  # (target domain, models.decoding.DecodeOptions)
# candidates of `explain_top_k` that cost as much as decoding one item: rendering 2k
# (item, score) pairs per item against one forward and scoring pass (measured on a
# 1,800-item catalogue: k=50 adds 58% to a 1,000-item sequence; on a 36-item one, k=36 300%)
EXPLAIN_K_PER_UNIT = 32
Finish = Callable[[list[Any]], Any]  # one call's engine results -> its answer (runs in the decode thread)
Outcome = tuple[bool, Any]  # (True, answer) or (False, exception)


@dataclass(frozen=True)
class BatchPolicy:
    max_wait_s: float = 0.002
    max_sequences: int = 64
    max_queued_sequences: int = 10_000
    max_queued_cost: int = 50_000  # cost units (see `call_cost`) waiting per model
    key_share: float = 0.5  # of max_queued_cost, one caller at most
    decoders: int = 1  # batches of one model decoding at once


def call_cost(sequences: Sequence[Sequence[object]], options: Any) -> int:
    """Cost units of a call: its items, each weighted up by the explanations it asks for."""
    items = sum(len(s) for s in sequences)
    k = getattr(options, "explain_top_k", 0) or 0
    return max(1, items + items * k // EXPLAIN_K_PER_UNIT)


@dataclass(eq=False)  # identity: a queue removes exactly this call
class _Call:
    sequences: Sequence[Sequence[str | int]]
    unknown_items: str
    finish: Finish
    future: asyncio.Future[Any]
    arrived: float
    key: Key
    owner: str
    cost: int

    @property
    def size(self) -> int:
        return len(self.sequences)


class MicroBatcher:
    """Queues of calls per key and the tasks that drain them; lives in one event loop.

    `engine` is a `core.engines.Engine` (anything with `name`, `check_known` and
    `regenerate` will do). Runner tasks exist only while calls are queued or decoding.
    """

    def __init__(self, engine: Any, policy: BatchPolicy) -> None:
        self.engine = engine
        self.policy = policy
        self.batches = 0  # engine batches decoded so far
        self.calls = 0  # calls in those batches
        self._queues: dict[Key, deque[_Call]] = {}  # per key, in arrival order
        self._owners: dict[str, deque[_Call]] = {}  # per caller, in arrival order
        self._served: dict[str, int] = {}  # caller -> batch count when last served
        self._queued_sequences = 0
        self._queued_cost = 0
        self._owner_cost: dict[str, int] = {}
        self._seconds_per_unit = 0.0  # moving average of decode time per cost unit
        self._runners: set[asyncio.Task[None]] = set()
        self._idle_runners = 0  # runners lingering or picking a batch, not decoding
        self._arrival = asyncio.Event()
        self._last_batch_calls = 1
        self._free_since = 0.0  # when the last batch finished (monotonic)

    @property
    def queued_calls(self) -> int:
        return sum(len(q) for q in self._queues.values())

    @property
    def queued_cost(self) -> int:
        return self._queued_cost

    async def submit(
        self,
        target: str,
        options: Any,
        sequences: Sequence[Sequence[str | int]],
        *,
        unknown_items: str,
        finish: Finish,
        owner: str = "",
    ) -> Any:
        """Decode `sequences` (external ids) with others' and return `finish(results)`."""
        cost = call_cost(sequences, options)
        self._admit(owner, len(sequences), cost)
        loop = asyncio.get_running_loop()
        key = (target, options)
        call = _Call(sequences, unknown_items, finish, loop.create_future(), time.monotonic(), key, owner, cost)
        self._queues.setdefault(key, deque()).append(call)
        self._owners.setdefault(owner, deque()).append(call)
        self._queued_sequences += call.size
        self._queued_cost += cost
        self._owner_cost[owner] = self._owner_cost.get(owner, 0) + cost
        self._arrival.set()
        if not self._idle_runners and len(self._runners) < self.policy.decoders:
            self._start_runner(loop)
        try:
            return await call.future
        except asyncio.CancelledError:
            self._forget(call)
            raise

    def _admit(self, owner: str, n: int, cost: int) -> None:
        """Raise 429 queue_full when this call would pass a bound (see the module docstring)."""
        p = self.policy
        mine = self._owner_cost.get(owner, 0)
        share = int(p.max_queued_cost * p.key_share)
        if self._queued_sequences and self._queued_sequences + n > p.max_queued_sequences:
            what, details = f"{self._queued_sequences} sequences are", {"queued": self._queued_sequences}
            details["max"] = p.max_queued_sequences
        elif self._queued_cost and self._queued_cost + cost > p.max_queued_cost:
            what, details = f"{self._queued_cost} cost units are", {"queued_cost": self._queued_cost}
            details["max_cost"] = p.max_queued_cost
        elif mine and mine + cost > share:
            what = f"{mine} cost units of this API key are"
            details = {"queued_cost": mine, "max_cost": share, "scope": "api_key"}
        else:
            return
        wait = max(1, min(60, math.ceil(self._queued_cost * self._seconds_per_unit)))
        raise ApiError(
            "queue_full",
            f"{what} waiting for model {self.engine.name!r} and this call costs {cost} more; retry in {wait} s",
            {**details, "cost": cost},
            headers={"Retry-After": str(wait)},
        )

    # -- dispatch -----------------------------------------------------------------

    def _start_runner(self, loop: asyncio.AbstractEventLoop) -> None:
        self._idle_runners += 1  # counted from now, so a burst of calls starts one runner, not many
        task = loop.create_task(self._run())
        self._runners.add(task)
        task.add_done_callback(self._runners.discard)

    async def _run(self) -> None:
        try:
            while (batch := await self._next_batch()) is not None:
                self._idle_runners -= 1
                try:
                    await self._decode(*batch)
                finally:
                    self._idle_runners += 1
        finally:
            self._idle_runners -= 1
            # now, not in the done callback (scheduled later): a call arriving in between
            # must see that no runner will pick it up, and start one
            self._runners.discard(asyncio.current_task())  # type: ignore[arg-type]
            if not self._runners:  # stopped with calls queued (shutdown): fail them, never hang
                self._fail_queued(RuntimeError("the decoder was stopped"))

    def _fail_queued(self, exc: Exception) -> None:
        calls = [c for q in self._queues.values() for c in q]
        for call in calls:
            self._forget(call)
        _deliver(calls, [(False, exc)] * len(calls))

    async def _next_batch(self) -> tuple[Key, list[_Call]] | None:
        while (lead := self._lead()) is not None:
            await self._linger(lead.key)
            if self._lead() is lead:  # else it was cancelled, or another caller's turn came: look again
                calls = self._take(lead)
                if calls:
                    return lead.key, calls
        return None

    def _lead(self) -> _Call | None:
        """The oldest call of the caller served longest ago (never served: first)."""
        if not self._owners:
            return None
        owner = min(self._owners, key=lambda o: (self._served.get(o, -1), self._owners[o][0].arrived))
        return self._owners[owner][0]

    async def _linger(self, key: Key) -> None:
        queue = self._queues[key]
        want = self._last_batch_calls
        if self.policy.max_wait_s <= 0 or want <= 1 or _alone(key):
            return
        deadline = max(queue[0].arrived, self._free_since) + self.policy.max_wait_s
        while self._queues.get(key) is queue and len(queue) < want:
            if sum(c.size for c in queue) >= self.policy.max_sequences:
                return
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            self._arrival.clear()
            try:
                await asyncio.wait_for(self._arrival.wait(), remaining)
            except asyncio.TimeoutError:
                return

    def _take(self, lead: _Call) -> list[_Call]:
        """Remove the calls of the next batch: `lead` first, then the oldest calls with its
        key as long as they fit `max_sequences`."""
        taken = [lead]
        n = lead.size
        if not _alone(lead.key):
            for call in self._queues[lead.key]:
                if call is not lead:
                    if n + call.size > self.policy.max_sequences:
                        break
                    taken.append(call)
                    n += call.size
        for call in taken:
            self._forget(call)
            self._served[call.owner] = self.batches
        # a caller cancelled a moment ago may not have run its `_forget` yet
        return [c for c in taken if not c.future.done()]

    def _forget(self, call: _Call) -> None:
        """Take `call` out of the queues and counts (if still there)."""
        queue = self._queues.get(call.key)
        if queue is None or call not in queue:
            return
        queue.remove(call)
        if not queue:
            del self._queues[call.key]
        mine = self._owners[call.owner]
        mine.remove(call)
        self._queued_sequences -= call.size
        self._queued_cost -= call.cost
        self._owner_cost[call.owner] -= call.cost
        if not mine:  # `_served` stays: callers are API keys, a bounded set
            del self._owners[call.owner], self._owner_cost[call.owner]

    async def _decode(self, key: Key, calls: list[_Call]) -> None:
        self._last_batch_calls = len(calls)
        self.batches += 1
        self.calls += len(calls)
        target, options = key
        work = [(c.sequences, c.unknown_items, c.finish) for c in calls]  # the thread never touches futures
        started = time.monotonic()
        try:
            outcomes = await anyio.to_thread.run_sync(decode_batch, self.engine, target, options, work)
        except Exception as exc:  # a bug in decode_batch: its callers get it, the runner goes on
            outcomes = [(False, exc)] * len(calls)
        except BaseException:  # cancelled (shutdown): no caller may hang
            _deliver(calls, [(False, RuntimeError("the decoder was stopped"))] * len(calls))
            raise
        finally:
            self._free_since = time.monotonic()
        per_unit = (self._free_since - started) / sum(c.cost for c in calls)
        self._seconds_per_unit = (
            per_unit if not self._seconds_per_unit else 0.8 * self._seconds_per_unit + 0.2 * per_unit
        )
        _deliver(calls, outcomes)


def _alone(key: Key) -> bool:
    return bool(getattr(key[1], "explain_top_k", 0))


def _deliver(calls: list[_Call], outcomes: list[Outcome]) -> None:
    for call, (ok, value) in zip(calls, outcomes, strict=True):
        if call.future.done():  # its caller is gone
            continue
        if ok:
            call.future.set_result(value)
        else:
            call.future.set_exception(value)


def decode_batch(
    engine: Any, target: str, options: Any, calls: list[tuple[Sequence[Sequence[str | int]], str, Finish]]
) -> list[Outcome]:
    """Decode several calls as one engine batch (in a worker thread); one outcome per call."""
    outcomes: list[Outcome] = [(False, RuntimeError("not decoded"))] * len(calls)
    live: list[tuple[int, list[list[str]]]] = []
    for k, (sequences, unknown_items, _) in enumerate(calls):
        try:
            strings = [[str(i) for i in s] for s in sequences]
            if unknown_items == "error":
                engine.check_known(strings)
        except Exception as exc:
            outcomes[k] = (False, exc)
            continue
        live.append((k, strings))
    if not live:
        return outcomes
    joined = [s for _, strings in live for s in strings]
    started = time.perf_counter()
    try:
        # every sequence of an "error" call is known by now: "drop" decodes it identically
        results = engine.regenerate(joined, target, unknown_items="drop", options=options)
    except Exception as exc:
        for k, _ in live:
            outcomes[k] = (False, exc)
        return outcomes
    metrics.observe_decode(engine.name, time.perf_counter() - started)
    metrics.observe_batch(engine.name, len(live), len(joined))
    at = 0
    for k, strings in live:
        part = results[at : at + len(strings)]
        at += len(strings)
        try:
            outcomes[k] = (True, calls[k][2](part))
        except Exception as exc:
            outcomes[k] = (False, exc)
    return outcomes
