"""`taesar serve` and `taesar worker`: the HTTP API and the Celery workers behind it.

Both read their settings from TAESAR_* (docs/service.md); the flags here that name a
setting are checked with all of them and then put in place of their variables, so the
service's own processes see them too."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cli.choices import LogLevel, value_of
from cli.common import Device, user_errors
from cli.settings import GlobalOptions, export_for_service
from models.errors import TaesarError

ModelDir = Annotated[
    Path | None,
    typer.Option(
        help="folder of bundle folders (folder name = model name)", show_default="TAESAR_MODEL_DIR, else models_store"
    ),
]
RedisUrl = Annotated[
    str | None,
    typer.Option(
        help="job state, results and the Celery broker",
        show_default="TAESAR_REDIS_URL, else redis://127.0.0.1:6379/0",
    ),
]


@user_errors
def serve(
    ctx: typer.Context,
    host: Annotated[str, typer.Option(help="interface to bind")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port")] = 8000,
    workers: Annotated[int, typer.Option(help="uvicorn processes (each loads every bundle)")] = 1,
    model_dir: ModelDir = None,
    redis_url: RedisUrl = None,
    device: Device = None,
) -> None:
    """Run the HTTP API (settings from TAESAR_* environment variables; see docs/service.md)."""
    from app.serve import serve_command

    export_for_service(
        torch_threads=GlobalOptions.of(ctx).threads, model_dir=model_dir, redis_url=redis_url, device=value_of(device)
    )
    serve_command(host=host, port=port, workers=workers)


def _gpu_list(value: str | None) -> str | None:
    from workers.main import parse_gpus

    if value is not None:
        try:
            parse_gpus(value)
        except ValueError as exc:
            raise typer.BadParameter(str(exc)) from None
    return value


@user_errors
def worker(
    ctx: typer.Context,
    concurrency: Annotated[
        int, typer.Option(min=1, help="1 = one solo process (one per GPU); N > 1 = prefork on CPU")
    ] = 1,
    loglevel: Annotated[LogLevel, typer.Option(case_sensitive=False, help="Celery's log level")] = LogLevel.INFO,
    queues: Annotated[str | None, typer.Option(help="comma-separated Celery queues (default: the API's queue)")] = None,
    gpus: Annotated[
        str | None,
        typer.Option(
            callback=_gpu_list,
            help="comma-separated GPU ids (CUDA_VISIBLE_DEVICES values): one solo worker process per GPU, "
            "supervised together; if one exits, all stop with a non-zero code",
        ),
    ] = None,
    model_dir: ModelDir = None,
    redis_url: RedisUrl = None,
    device: Device = None,
) -> None:
    """Run a Celery worker that decodes queued job chunks (same TAESAR_* settings as the API)."""
    from workers.main import gpu_worker_command, parse_gpus, worker_command

    if gpus is not None and concurrency != 1:
        raise TaesarError("--gpus runs one solo process per GPU; it cannot be combined with --concurrency")
    export_for_service(
        torch_threads=GlobalOptions.of(ctx).threads, model_dir=model_dir, redis_url=redis_url, device=value_of(device)
    )
    if gpus is None:
        worker_command(concurrency=concurrency, loglevel=loglevel.value, queues=queues)
        return
    code = gpu_worker_command(parse_gpus(gpus), loglevel=loglevel.value, queues=queues)
    if code:
        raise typer.Exit(code)
