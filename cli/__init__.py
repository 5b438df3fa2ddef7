"""The `taesar` command line: data preparation, pretraining, regeneration, evaluation, export, the service.

Every user mistake ends as one red line on stderr and exit code 2; progress goes to stderr, tables to stdout.

A flag beats its TAESAR_* variable, which beats the default.
"""

from __future__ import annotations

from typing import Annotated

import typer

from cli import data, evaluate, export, info, pipeline, regenerate, service, train
from cli.common import DEFAULT_CACHE
from cli.settings import GlobalOptions

__all__ = ["DEFAULT_CACHE", "app", "main"]

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)


@app.callback()
def _global_options(
    ctx: typer.Context,
    threads: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="torch CPU threads (use 1 when other processes share the cores)",
            show_default="TAESAR_TORCH_THREADS, else torch's choice",
        ),
    ] = None,
) -> None:
    ctx.obj = GlobalOptions(threads=threads)


app.command()(train.pretrain)
app.command()(regenerate.regenerate)
app.command()(pipeline.pipeline)
app.command()(evaluate.evaluate)
app.command()(info.info)
app.command()(service.serve)
app.command()(service.worker)
app.add_typer(data.data_app, name="data")
app.add_typer(export.export_app, name="export")


def main() -> None:
    app()
