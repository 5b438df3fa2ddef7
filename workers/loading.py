"""The engine of a worker process: loaded once per process, lazily, never before a fork.

With `--pool solo` (one process per GPU) the engines load on `worker_ready`, in the
process that runs the tasks. With the prefork pool they load in each child on
`worker_process_init`, after the fork, because a CUDA context does not survive one.
Either way the first task loads them if the signal did not (e.g. a task called
directly in a test). Model discovery, device choice and the Regenerator settings
are the API's (`core.engines.load_engines`), so a worker decodes exactly as
/regenerate does.
"""

from __future__ import annotations

import io
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import redis
from celery.signals import worker_init, worker_process_init, worker_ready

from core.engines import Engine, Engines, apply_torch_threads, decode_options, load_engines
from core.jobstore import ChunkInput, ChunkStore
from core.logging import configure_logging, get_logger, log_event
from core.schemas import RegenerateOptions
from core.settings import Settings, get_settings
from models.tally import Tally

log = get_logger("worker")


@dataclass
class WorkerContext:
    settings: Settings
    store: ChunkStore
    engines: Engines | None = None

    def load(self) -> Engines:
        """Every bundle under settings.model_dir, loaded on the first call only."""
        if self.engines is None:
            # one chunk at a time per process: an "auto" GPU budget is not split
            self.engines = load_engines(self.settings, concurrent_decodes=1)
            log_event(log, "worker_models_loaded", models=self.engines.names, failures=len(self.engines.failures))
        return self.engines

    def engine(self, model: str) -> Engine:
        """The engine for `model`; UnknownModel or ModelNotReady (core.errors) if it has none."""
        return self.load().get(model)


_context: WorkerContext | None = None
_lock = threading.Lock()


def context() -> WorkerContext:
    """This process's context, created on first use from the environment's settings."""
    global _context
    with _lock:
        if _context is None:
            _context = make_context(get_settings())
        return _context


def make_context(settings: Settings) -> WorkerContext:
    # the worker is blocking code: plain redis-py, with timeouts so a dead Redis fails a
    # call (and the task retries) rather than hanging the worker
    client = redis.Redis.from_url(settings.redis_url, socket_connect_timeout=5, socket_timeout=30)
    return WorkerContext(settings, ChunkStore(client, settings.key_prefix, settings.job_ttl_s))


def use_context(ctx: WorkerContext | None) -> None:
    """Install a context (tests that run tasks in-process), or None to reset."""
    global _context
    with _lock:
        _context = ctx


def warm_up() -> None:
    ctx = context()
    apply_torch_threads(ctx.settings)  # in the process's main thread, before any decoding
    ctx.load()


@worker_init.connect
def _json_logs_and_metrics(**_: Any) -> None:
    # our events as one JSON object per line, like the API's; Celery keeps its own format
    settings = get_settings()  # what context() will use; no Redis client before a fork
    configure_logging(settings.log_level)
    if settings.worker_metrics_port:  # this process's job metrics (core.metrics), for Prometheus
        from prometheus_client import start_http_server

        start_http_server(settings.worker_metrics_port)
        log_event(log, "worker_metrics", port=settings.worker_metrics_port)


@worker_process_init.connect
def _load_in_child(**_: Any) -> None:
    warm_up()  # prefork: this runs in the child, after the fork


@worker_ready.connect
def _load_in_solo(sender: Any = None, **_: Any) -> None:
    pool = getattr(getattr(sender, "pool", None), "__module__", "")
    if pool.endswith(("solo", "threads")):  # no fork will follow: load now, not on the first task
        warm_up()


# -- decoding one chunk ------------------------------------------------------------------


class JobStopped(Exception):
    """The job was cancelled (or failed elsewhere) while this chunk was decoding."""


@dataclass
class ChunkOutput:
    jsonl: bytes
    recbole: bytes
    stats: Tally


def decode_chunk(
    engine: Engine,
    chunk: ChunkInput,
    target: str,
    options: dict[str, Any],
    *,
    with_recbole_header: bool,
    should_stop: Callable[[], bool],
) -> ChunkOutput:
    """Decode one chunk into its NDJSON and RecBole bytes, with the line writers of
    `taesar regenerate` (models.output). `should_stop` is asked between decode batches."""
    opts = RegenerateOptions.model_validate(options)
    if opts.unknown_items == "error":
        # named with the sequence's index in the whole job, not in this chunk
        engine.check_known(chunk.items, first=chunk.first)

    def progress(_: int) -> None:
        if should_stop():
            raise JobStopped

    results = engine.regenerate(
        chunk.items, target, unknown_items=opts.unknown_items, options=decode_options(opts), on_progress=progress
    )
    return _encode(engine, chunk, target, results, with_recbole_header, titles=opts.include_titles)


def _encode(
    engine: Engine, chunk: ChunkInput, target: str, results: list[Any], header: bool, *, titles: bool = False
) -> ChunkOutput:
    from models.output import JsonlWriter, RecboleWriter, to_output_line

    jsonl, recbole = io.StringIO(), io.StringIO()
    with JsonlWriter(jsonl) as lines, RecboleWriter(recbole) as rows:
        for k, (user, result) in enumerate(zip(chunk.users, results, strict=True)):
            record = to_output_line(result, engine.catalogue, target, user, titles=titles)
            lines.write(record)
            # RecBole needs a user token: a sequence without user_id gets its number in the job (from 1)
            rows.write(user if user is not None else str(chunk.first + k + 1), record["sequence"])
    text = recbole.getvalue()
    if not header:  # the writer always starts with the header; only chunk 0 keeps it
        text = text.split("\n", 1)[1]
    return ChunkOutput(jsonl.getvalue().encode(), text.encode(), Tally.total(r.stats for r in results))
