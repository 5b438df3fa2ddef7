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
- A cancelled caller (client gone) leaves the queue, or, when its batch is already
  decoding, its answer is dropped; no other call notices.
- At most `max_queued_sequences` sequences wait per model; beyond that: 429 queue_full.

Answers equal those of decoding each call alone: decisions do not depend on batch
composition (tests/test_engine.py). Explain scores do in their last float bits, so
calls that ask for them are never joined with others.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import anyio.to_thread

from app import metrics
from app.errors import ApiError

Key = tuple[str, Any]  # (target domain, models.decoding.DecodeOptions)
Finish = Callable[[list[Any]], Any]  # one call's engine results -> its answer (runs in the decode thread)
Outcome = tuple[bool, Any]  # (True, answer) or (False, exception)


@dataclass(frozen=True)
class BatchPolicy:
    max_wait_s: float = 0.002
    max_sequences: int = 64
    max_queued_sequences: int = 10_000
    decoders: int = 1  # batches of one model decoding at once


@dataclass(eq=False)  # identity: a queue removes exactly this call
class _Call:
    sequences: Sequence[Sequence[str | int]]
    unknown_items: str
    finish: Finish
    future: asyncio.Future[Any]
    arrived: float

    @property
    def size(self) -> int:
        return len(self.sequences)


class MicroBatcher:
    """Queues of calls per key and the tasks that drain them; lives in one event loop.

    `engine` is an `app.engines.Engine` (anything with `name`, `check_known` and
    `regenerate` will do). Runner tasks exist only while calls are queued or decoding.
    """

    def __init__(self, engine: Any, policy: BatchPolicy) -> None:
        self.engine = engine
        self.policy = policy
        self.batches = 0  # engine batches decoded so far
        self.calls = 0  # calls in those batches
        self._queues: dict[Key, deque[_Call]] = {}
        self._queued_sequences = 0
        self._runners: set[asyncio.Task[None]] = set()
        self._idle_runners = 0  # runners lingering or picking a batch, not decoding
        self._arrival = asyncio.Event()
        self._last_batch_calls = 1
        self._free_since = 0.0  # when the last batch finished (monotonic)

    @property
    def queued_calls(self) -> int:
        return sum(len(q) for q in self._queues.values())

    async def submit(
        self,
        target: str,
        options: Any,
        sequences: Sequence[Sequence[str | int]],
        *,
        unknown_items: str,
        finish: Finish,
    ) -> Any:
        """Decode `sequences` (external ids) with others' and return `finish(results)`."""
        n = len(sequences)
        if self._queued_sequences and self._queued_sequences + n > self.policy.max_queued_sequences:
            # an empty queue takes any call, so one request above the bound is not refused forever
            raise ApiError(
                "queue_full",
                f"{self._queued_sequences} sequences are waiting for model {self.engine.name!r}; retry shortly",
                {"queued": self._queued_sequences, "max": self.policy.max_queued_sequences},
                headers={"Retry-After": "1"},
            )
        loop = asyncio.get_running_loop()
        call = _Call(sequences, unknown_items, finish, loop.create_future(), time.monotonic())
        key = (target, options)
        self._queues.setdefault(key, deque()).append(call)
        self._queued_sequences += n
        self._arrival.set()
        if not self._idle_runners and len(self._runners) < self.policy.decoders:
            self._start_runner(loop)
        try:
            return await call.future
        except asyncio.CancelledError:
            self._forget(key, call)
            raise

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
        self._queues.clear()
        self._queued_sequences = 0
        _deliver(calls, [(False, exc)] * len(calls))

    async def _next_batch(self) -> tuple[Key, list[_Call]] | None:
        while (key := self._oldest_key()) is not None:
            await self._linger(key)
            if self._oldest_key() == key:  # else its calls were cancelled meanwhile: look again
                calls = self._take(key)
                if calls:
                    return key, calls
        return None

    def _oldest_key(self) -> Key | None:
        if not self._queues:
            return None
        return min(self._queues, key=lambda k: self._queues[k][0].arrived)

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

    def _take(self, key: Key) -> list[_Call]:
        """Pop the calls of the next batch: the oldest first, then as many as fit the budget."""
        queue = self._queues[key]
        taken = [queue.popleft()]
        n = taken[0].size
        while queue and not _alone(key) and n + queue[0].size <= self.policy.max_sequences:
            taken.append(queue.popleft())
            n += taken[-1].size
        if not queue:
            del self._queues[key]
        self._queued_sequences -= n
        # a caller cancelled a moment ago may not have run its `_forget` yet
        return [c for c in taken if not c.future.done()]

    def _forget(self, key: Key, call: _Call) -> None:
        queue = self._queues.get(key)
        if queue is not None and call in queue:
            queue.remove(call)
            self._queued_sequences -= call.size
            if not queue:
                del self._queues[key]

    async def _decode(self, key: Key, calls: list[_Call]) -> None:
        self._last_batch_calls = len(calls)
        self.batches += 1
        self.calls += len(calls)
        target, options = key
        work = [(c.sequences, c.unknown_items, c.finish) for c in calls]  # the thread never touches futures
        try:
            outcomes = await anyio.to_thread.run_sync(decode_batch, self.engine, target, options, work)
        except Exception as exc:  # a bug in decode_batch: its callers get it, the runner goes on
            outcomes = [(False, exc)] * len(calls)
        except BaseException:  # cancelled (shutdown): no caller may hang
            _deliver(calls, [(False, RuntimeError("the decoder was stopped"))] * len(calls))
            raise
        finally:
            self._free_since = time.monotonic()
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
