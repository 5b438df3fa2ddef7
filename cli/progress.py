"""Progress on stderr, so that stdout stays clean for tables and pipes."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from cli.common import err

ProgressCallback = Callable[[str, int, int, dict], None]


@contextmanager
def progress_bars() -> Iterator[ProgressCallback]:
    """A callback (phase, done, total, info) that drives one rich bar per phase.

    Without a terminal (CI logs, `| tee`) rich would only draw the final state, so
    progress becomes plain lines instead: one per phase step, at most every 5 s.
    """
    if not err.is_terminal:
        yield _line_progress()
        return
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[info]}"),
    )
    with Progress(*columns, console=err, transient=False) as bars:
        tasks: dict[str, int] = {}

        def update(phase: str, done: int, total: int, info: dict | None = None) -> None:
            if phase not in tasks:
                tasks[phase] = bars.add_task(phase, total=total, info="")
            bars.update(tasks[phase], completed=done, total=total, info=_info(info))

        yield update


def _line_progress() -> ProgressCallback:
    started = time.perf_counter()
    last: dict[str, float] = {}

    def update(phase: str, done: int, total: int, info: dict | None = None) -> None:
        now = time.perf_counter()
        if done < total and now - last.get(phase, -1e9) < 5.0:
            return
        last[phase] = now
        err.print(f"[{now - started:7.1f}s] {phase} {done}/{total} {_info(info)}", highlight=False)

    return update


def _info(info: dict | None) -> str:
    return "  ".join(f"{k}={_fmt(v)}" for k, v in (info or {}).items())


def _fmt(v: Any) -> str:
    return f"{v:.4f}" if isinstance(v, float) else str(v)
