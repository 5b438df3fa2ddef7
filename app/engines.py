"""The API's engines: the registry of `core.engines`, plus one `MicroBatcher` per model.

The registry is the one piece of global state of the API (created in the app's
lifespan, reached through `EnginesDep`). Decoding is CPU/GPU-bound: `regenerate`
sends it to a worker thread, so the event loop keeps answering health checks and other
requests meanwhile. Every call to a model goes through its `MicroBatcher`
(app/batching.py: fair turns between API keys, admission by cost, abandoned calls
dropped); calls that arrive while a decoder is busy are decoded together, except with
TAESAR_MICROBATCH_MAX_WAIT_MS=0, where each call is decoded alone, at most
`decode_threads` at a time.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from app.batching import BatchPolicy, Finish, MicroBatcher
from core.engines import Engine, Engines, load_engines
from core.settings import Settings


@dataclass
class ServedEngines(Engines):
    """The loaded engines as the API serves them: each model's calls micro-batched."""

    batch_policy: BatchPolicy = field(default_factory=BatchPolicy)
    # created lazily: a batcher's event belongs to the running event loop
    _batchers: dict[str, MicroBatcher] = field(default_factory=dict, repr=False)

    @classmethod
    def serve(cls, loaded: Engines, policy: BatchPolicy) -> ServedEngines:
        return cls(loaded.engines, loaded.failures, batch_policy=policy)

    async def regenerate(
        self,
        engine: Engine,
        target: str,
        options: Any,
        sequences: list[list[str | int]],
        *,
        unknown_items: str,
        finish: Finish,
        owner: str = "",
    ) -> Any:
        """Decode `sequences` (external ids) off the event loop for caller `owner`; return
        `finish(results)`, which also runs in the decode thread (rendering a large answer
        is work too). Cancelling the awaiting task drops the call."""
        batcher = self._batchers.get(engine.name)
        if batcher is None:
            batcher = self._batchers[engine.name] = MicroBatcher(engine, self.batch_policy)
        return await batcher.submit(target, options, sequences, unknown_items=unknown_items, finish=finish, owner=owner)

    def batcher(self, name: str) -> MicroBatcher | None:
        """The micro-batcher of model `name`, once it has had a call (tests, diagnostics)."""
        return self._batchers.get(name)


def batch_policy(settings: Settings) -> BatchPolicy:
    """TAESAR_MICROBATCH_MAX_WAIT_MS=0 turns joining off (one call per batch); the queue
    bounds and fair turns hold either way."""
    joining = settings.microbatch_max_wait_ms > 0
    return BatchPolicy(
        max_wait_s=settings.microbatch_max_wait_ms / 1000,
        max_sequences=settings.microbatch_max_sequences if joining else 1,
        max_queued_sequences=settings.microbatch_max_queued_sequences,
        max_queued_cost=settings.microbatch_max_queued_cost,
        key_share=settings.microbatch_key_share,
        decoders=settings.decode_threads,
    )


def load_served_engines(settings: Settings) -> ServedEngines:
    """Every bundle of `settings.model_dir`, served with the settings' batch policy
    (blocking: call it from a thread)."""
    return ServedEngines.serve(load_engines(settings), batch_policy(settings))
