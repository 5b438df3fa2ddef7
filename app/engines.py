"""The API's in-process engines: every bundle under `settings.model_dir`, loaded once.

This registry is the one piece of global state of the API (created in the app's
lifespan, reached through `EnginesDep`). A bundle that fails to load (corrupt
weights, checksum mismatch, ...) is recorded as a failure that /readyz and /models
report; it never stops the process, so one bad upload cannot take down the models
that did load.

Decoding is CPU/GPU-bound: `Engines.regenerate` sends it to a worker thread, so the
event loop keeps answering health checks and other requests meanwhile. Every call to
a model goes through its `MicroBatcher` (app/batching.py: fair turns between API keys,
admission by cost, abandoned calls dropped); calls that arrive while a decoder is busy
are decoded together, except with TAESAR_MICROBATCH_MAX_WAIT_MS=0, where each call is
decoded alone, at most `decode_threads` at a time.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from app.batching import BatchPolicy, Finish, MicroBatcher
from app.errors import ApiError
from app.logging import get_logger, log_event
from app.schemas import RegenerateOptions
from app.settings import Settings

log = get_logger("engines")
T = TypeVar("T")


@dataclass(frozen=True)
class LoadFailure:
    name: str
    code: str
    message: str


@dataclass
class Engine:
    """One loaded bundle and the decoder built on it."""

    name: str
    path: Path
    manifest: dict[str, Any]
    catalogue: Any  # models.catalogue.Catalogue
    regenerator: Any  # models.decoding.Regenerator
    device: str

    def regenerate(self, sequences: list[list[str]], target: str, *, unknown_items: str, options: Any) -> list[Any]:
        """Decode on the calling thread; returns the engine's `Regenerated` objects.

        With unknown_items="error" the engine checks every sequence before decoding
        anything and names the sequence and position of the first unknown item.
        """
        from models.decoding import regenerate_external

        return regenerate_external(self.regenerator, sequences, target, unknown_items=unknown_items, options=options)

    def check_known(self, sequences: list[list[str]]) -> None:
        """Raise the UnknownItemError that `regenerate(..., unknown_items="error")` would
        raise for these sequences (same message and details), without decoding."""
        from models.errors import UnknownItemError

        get = self.catalogue.get
        for k, seq in enumerate(sequences):
            for j, item in enumerate(seq):
                if get(item) is None:
                    raise UnknownItemError(
                        f"unknown item {item!r} at position {j} of sequence {k}",
                        {"item": str(item), "sequence": k, "position": j},
                    )


@dataclass
class Engines:
    engines: dict[str, Engine]
    failures: list[LoadFailure] = field(default_factory=list)
    batch_policy: BatchPolicy = field(default_factory=BatchPolicy)
    # created lazily: a batcher's event belongs to the running event loop
    _batchers: dict[str, MicroBatcher] = field(default_factory=dict, repr=False)

    @property
    def names(self) -> list[str]:
        return sorted(self.engines)

    def get(self, name: str | None) -> Engine:
        """The engine for `name`, or the only one when `name` is None; raises ApiError."""
        if name is None:
            if len(self.engines) == 1:
                return next(iter(self.engines.values()))
            if not self.engines:
                raise self._not_ready()
            raise ApiError(
                "validation_error",
                f"several models are loaded ({', '.join(self.names)}); name one in 'model'",
                {
                    "errors": [
                        {"loc": ["body", "model"], "msg": "required when several models are loaded", "type": "missing"}
                    ],
                    "models": self.names,
                },
            )
        if name in self.engines:
            return self.engines[name]
        if any(f.name == name for f in self.failures):
            raise ApiError("model_not_ready", f"model {_clip(name)!r} failed to load; see GET /models", {"model": name})
        if not self.engines:
            raise self._not_ready()
        raise ApiError(
            "unknown_model",
            f"unknown model {_clip(name)!r}; loaded: {', '.join(self.names)}",
            {"model": _clip(name), "known": self.names},
        )

    def _not_ready(self) -> ApiError:
        return ApiError(
            "model_not_ready",
            "no model is loaded",
            {"failures": [f.name for f in self.failures]},
            headers={"Retry-After": "30"},
        )

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


def resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("TAESAR_DEVICE=cuda, but torch sees no CUDA device")
    return device


def bundle_folders(model_dir: Path) -> list[Path]:
    """Bundle folders under `model_dir`; `model_dir` itself when it is one bundle.

    Hidden folders are skipped: `save_bundle` writes `.name.*.tmp` siblings while it works.
    """
    if (model_dir / "manifest.json").is_file():
        return [model_dir]
    if not model_dir.is_dir():
        return []
    return sorted(p for p in model_dir.iterdir() if p.is_dir() and not p.name.startswith("."))


def apply_torch_threads(settings: Settings) -> None:
    """Set torch's CPU threads from TAESAR_TORCH_THREADS. Call it from the process's main
    thread before any decoding: OpenMP threads read the setting when they start."""
    if settings.torch_threads:
        import torch

        torch.set_num_threads(settings.torch_threads)


def load_engines(settings: Settings, *, concurrent_decodes: int | None = None) -> Engines:
    """Load every bundle; blocking (checksums, weights), so call it from a thread.

    `concurrent_decodes` is how many decodes this process may run at once, over all
    models (default: the API's, `decode_threads` per model); an "auto" memory budget on
    CUDA is split between them, as they share the device.
    """
    from models.bundle import load_bundle
    from models.decoding import Regenerator, resolve_memory_budget_mb
    from models.errors import TaesarError

    engines: dict[str, Engine] = {}
    failures: list[LoadFailure] = []
    folders = bundle_folders(settings.model_dir)
    if not folders:
        failures.append(LoadFailure("", "model_not_ready", f"no bundle folder under {settings.model_dir}"))
    try:
        device = resolve_device(settings.device)
    except RuntimeError as exc:
        failures += [LoadFailure(p.name, "model_not_ready", str(exc)) for p in folders]
        folders = []
    sharers = concurrent_decodes or len(folders) * settings.decode_threads
    for path in folders:
        started = time.perf_counter()
        try:
            b = load_bundle(path, device=device)
            regenerator = Regenerator(
                b.catalogue,
                b.mixed,
                b.experts,
                device=device,
                batch_size=settings.decode_batch_size,
                # resolved after this bundle is on the device, so its weights are not counted as free
                memory_budget_mb=resolve_memory_budget_mb(settings.memory_budget_mb, device, sharers=sharers),
            )
            warm_up(regenerator, b.catalogue)
        except TaesarError as exc:
            failures.append(LoadFailure(path.name, exc.code, exc.message))
            log_event(log, "model_load_failed", level=30, model=path.name, code=exc.code, error=exc.message)
            continue
        except Exception as exc:  # a bug or an OOM in one bundle must not hide the others
            failures.append(LoadFailure(path.name, "internal_error", f"{type(exc).__name__}: {exc}"))
            log_event(log, "model_load_failed", level=40, model=path.name, code="internal_error", exc_info=exc)
            continue
        engines[path.name] = Engine(path.name, path, b.manifest, b.catalogue, regenerator, device)
        log_event(
            log,
            "model_loaded",
            model=path.name,
            device=device,
            memory_budget_mb=round(regenerator.memory_budget_mb, 1),
            seconds=round(time.perf_counter() - started, 3),
        )
    return Engines(engines, failures, batch_policy=batch_policy(settings))


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


def warm_up(regenerator: Any, catalogue: Any) -> None:
    """Decode one two-item sequence, so that the first real request does not pay for
    torch's lazy initialisation (hundreds of ms), and a bundle that cannot decode
    fails at load time rather than on a caller's request."""
    from models.decoding import regenerate_external

    start_1 = catalogue.domain_range(1)[0]
    sequence = [catalogue.external(0), catalogue.external(start_1)]  # a target item, then a source item
    regenerate_external(regenerator, [sequence], catalogue.domains[0])


def _clip(text: str, limit: int = 200) -> str:
    """Echo at most `limit` characters of caller input in messages."""
    return text if len(text) <= limit else text[:limit] + "…"


def decode_options(options: RegenerateOptions) -> Any:
    """The request options as the engine's DecodeOptions (shared by /regenerate, /jobs and workers)."""
    from models.decoding import DecodeOptions

    a = options.ablations
    if a.no_global and a.no_local:
        raise ApiError(
            "validation_error",
            "ablations no_global and no_local together leave no score to decide with",
            {
                "errors": [
                    {
                        "loc": ["body", "options", "ablations"],
                        "msg": "no_global and no_local exclude each other",
                        "type": "value_error",
                    }
                ],
                "count": 1,
            },
        )
    return DecodeOptions(
        no_adaptation=a.no_adaptation,
        no_source_experts=a.no_source_experts,
        no_global=a.no_global,
        no_local=a.no_local,
        explain_top_k=options.explain_top_k if options.explain else 0,
    )
