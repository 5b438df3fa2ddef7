"""The engine registry: every bundle under `settings.model_dir`, loaded once per process.

The API (its lifespan) and each worker process load their engines with `load_engines`,
so a worker decodes exactly as /regenerate does. A bundle that fails to load (corrupt
weights, checksum mismatch, ...) is recorded as a `LoadFailure` that /readyz and
/models report; it never stops the process, so one bad upload cannot take down the
models that did load.

Torch and `models/` are imported inside the functions that load or decode, never at
import time: the API process imports this module before its lifespan loads anything.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.errors import InvalidRequest, ModelNotReady, UnknownModel, clip
from core.logging import get_logger, log_event
from core.schemas import RegenerateOptions
from core.settings import Settings

log = get_logger("engines")


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

    def regenerate(
        self,
        sequences: Sequence[Sequence[str | int]],
        target: str,
        *,
        unknown_items: str,
        options: Any,
        on_progress: Callable[[int], None] | None = None,
    ) -> list[Any]:
        """Decode on the calling thread; returns the engine's `Regenerated` objects.

        With unknown_items="error" the engine checks every sequence before decoding
        anything and names the sequence and position of the first unknown item.
        `on_progress` is called between decode batches (it may raise to stop).
        """
        from models.decoding import regenerate_external

        return regenerate_external(
            self.regenerator,
            sequences,
            target,
            unknown_items=unknown_items,  # type: ignore[arg-type]
            options=options,
            on_progress=on_progress,
        )

    def check_known(self, sequences: Sequence[Sequence[str | int]], *, first: int = 0, unit: str = "sequence") -> None:
        """Raise the UnknownItemError that `regenerate(..., unknown_items="error")` would
        raise for these sequences (same message and details), without decoding."""
        from models.catalogue import check_known

        check_known(self.catalogue, sequences, first=first, unit=unit)


@dataclass
class Engines:
    engines: dict[str, Engine]
    failures: list[LoadFailure] = field(default_factory=list)

    @property
    def names(self) -> list[str]:
        return sorted(self.engines)

    def get(self, name: str | None) -> Engine:
        """The engine for `name`, or the only one when `name` is None; raises
        InvalidRequest, UnknownModel or ModelNotReady."""
        if name is None:
            if len(self.engines) == 1:
                return next(iter(self.engines.values()))
            if not self.engines:
                raise self._not_ready()
            raise InvalidRequest(
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
            raise ModelNotReady(f"model {clip(name)!r} failed to load; see GET /models", {"model": name})
        if not self.engines:
            raise self._not_ready()
        raise UnknownModel(
            f"unknown model {clip(name)!r}; loaded: {', '.join(self.names)}",
            {"model": clip(name), "known": self.names},
        )

    def _not_ready(self) -> ModelNotReady:
        return ModelNotReady("no model is loaded", {"failures": [f.name for f in self.failures]}, retry_after_s=30)


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
        from models.device import set_torch_threads

        set_torch_threads(settings.torch_threads)


def load_engines(settings: Settings, *, concurrent_decodes: int | None = None) -> Engines:
    """Load every bundle; blocking (checksums, weights), so call it from a thread.

    `concurrent_decodes` is how many decodes this process may run at once, over all
    models (default: the API's, `decode_threads` per model); an "auto" memory budget on
    CUDA is split between them, as they share the device.
    """
    from models.device import resolve_device
    from models.errors import DeviceError

    engines: dict[str, Engine] = {}
    failures: list[LoadFailure] = []
    folders = bundle_folders(settings.model_dir)
    if not folders:
        failures.append(LoadFailure("", "model_not_ready", f"no bundle folder under {settings.model_dir}"))
    try:
        device = str(resolve_device(settings.device))
    except DeviceError as exc:
        failures += [LoadFailure(p.name, "model_not_ready", f"TAESAR_DEVICE: {exc.message}") for p in folders]
        folders = []
    sharers = concurrent_decodes or len(folders) * settings.decode_threads
    for path in folders:
        loaded = _load_one(path, device, settings, sharers)
        if isinstance(loaded, LoadFailure):
            failures.append(loaded)
        else:
            engines[path.name] = loaded
    return Engines(engines, failures)


def _load_one(path: Path, device: str, settings: Settings, sharers: int) -> Engine | LoadFailure:
    """One bundle as an engine, warmed up; or why it could not load."""
    from models.bundle import load_bundle
    from models.decoding import Regenerator, resolve_memory_budget_mb
    from models.errors import TaesarError

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
        log_event(log, "model_load_failed", level=30, model=path.name, code=exc.code, error=exc.message)
        return LoadFailure(path.name, exc.code, exc.message)
    except Exception as exc:  # a bug or an OOM in one bundle must not hide the others
        log_event(log, "model_load_failed", level=40, model=path.name, code="internal_error", exc_info=exc)
        return LoadFailure(path.name, "internal_error", f"{type(exc).__name__}: {exc}")
    log_event(
        log,
        "model_loaded",
        model=path.name,
        device=device,
        memory_budget_mb=round(regenerator.memory_budget_mb, 1),
        seconds=round(time.perf_counter() - started, 3),
    )
    return Engine(path.name, path, b.manifest, b.catalogue, regenerator, device)


def warm_up(regenerator: Any, catalogue: Any) -> None:
    """Decode one two-item sequence, so that the first real request does not pay for
    torch's lazy initialisation (hundreds of ms), and a bundle that cannot decode
    fails at load time rather than on a caller's request."""
    from models.decoding import regenerate_external

    start_1 = catalogue.domain_range(1)[0]
    sequence = [catalogue.external(0), catalogue.external(start_1)]  # a target item, then a source item
    regenerate_external(regenerator, [sequence], catalogue.domains[0])


def decode_options(options: RegenerateOptions) -> Any:
    """The request options as the engine's `models.decoding.DecodeOptions`: the one place
    they are built for /regenerate, /jobs and the workers; InvalidRequest for ablations
    that exclude each other."""
    from models.decoding import DecodeOptions

    a = options.ablations
    if a.no_global and a.no_local:
        raise InvalidRequest(
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
