"""What the command modules share: the consoles, the error policy, option checks and the
options several commands take."""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console

from cli.choices import BACKBONES, VARIANTS, DeviceName
from models.errors import TaesarError

out = Console()
err = Console(stderr=True)
F = TypeVar("F", bound=Callable[..., Any])

DEFAULT_CACHE = Path.home() / ".cache" / "taesar"


def user_errors(fn: F) -> F:
    """Turn domain errors into one line and exit code 2 instead of a traceback."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except TaesarError as exc:
            err.print(f"[bold red]error:[/] {exc.message}", highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None

    return wrapper  # type: ignore[return-value]


# -- checks of option values (typer callbacks: a bad value is a usage error, exit code 2) --


def positive(value: float) -> float:
    if not (math.isfinite(value) and value > 0):
        raise typer.BadParameter(f"{value} is not a positive finite number.")
    return value


def memory_budget(value: str | None) -> str | None:
    """Accept 'auto' or a positive number of MB; the engine checks it against the catalogue."""
    if value is None:
        return None
    text = value.strip()
    try:
        number = float(text)
    except ValueError:
        number = math.nan
    if text != "auto" and not (math.isfinite(number) and number > 0):
        raise typer.BadParameter(f"{value!r} is neither 'auto' nor a positive number of MB.")
    return text


def split_list(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


def _comma_choices(kind: str, choices: tuple[str, ...], allow_all: bool) -> Callable[[str], str]:
    def check(value: str) -> str:
        if allow_all and value.strip() == "all":
            return value
        unknown = [v for v in split_list(value) if v not in choices]
        if unknown or not split_list(value):
            raise typer.BadParameter(f"unknown {kind}(s) {unknown}; choose from {', '.join(choices)}")
        return value

    return check


def chosen_variants(value: str) -> tuple[str, ...]:
    return VARIANTS if value.strip() == "all" else tuple(split_list(value))


# -- options several commands share -------------------------------------------------------

DataDir = Annotated[Path, typer.Option(help="prepared dataset folder")]
Target = Annotated[str, typer.Option(help="target domain name")]
Device = Annotated[
    DeviceName | None,
    typer.Option(help="auto picks CUDA when available", show_default="TAESAR_DEVICE, else auto"),
]
MemoryBudgetMb = Annotated[
    str | None,
    typer.Option(
        callback=memory_budget,
        metavar="auto|MB",
        help="MB for the rows x items score work of a decode; auto = half the GPU's free memory on CUDA, 256 on CPU",
        show_default="TAESAR_MEMORY_BUDGET_MB, else auto",
    ),
]
HoldoutEval = Annotated[
    int | None,
    typer.Option(min=1, help="leave-N-out: last N positions test, N before them valid (default: the dataset's)"),
]
AdaptEpochs = Annotated[int, typer.Option(min=0, help="epochs of domain adaptation per expert")]
MaxSteps = Annotated[
    int | None,
    typer.Option(
        min=1,
        help="stop the mixed model and each expert after this many optimiser steps (across epochs), "
        "then validate in full",
    ),
]
Backbones = Annotated[
    str,
    typer.Option(
        callback=_comma_choices("backbone", BACKBONES, allow_all=False), help=f"comma-separated: {', '.join(BACKBONES)}"
    ),
]
Variants = Annotated[
    str,
    typer.Option(
        callback=_comma_choices("variant", VARIANTS, allow_all=True),
        help=f"comma-separated: {', '.join(VARIANTS[:-2])}, and two outside METHOD.md: {', '.join(VARIANTS[-2:])} "
        "(docs/results/ml100k.md); 'all' for every one",
    ),
]
Seeds = Annotated[int, typer.Option(min=1, help="downstream seeds per variant")]
Patience = Annotated[int, typer.Option(min=1, help="downstream early stopping patience (validation NDCG@10)")]
Lr = Annotated[
    float, typer.Option(callback=positive, help="downstream Adam learning rate (the paper's 3e-4 by default)")
]
Resume = Annotated[
    bool,
    typer.Option(
        "--resume/--no-resume",
        help="reuse the trainings already in RUN/trainings.jsonl whose data, config, seed and threads match",
    ),
]
Jobs = Annotated[
    int,
    typer.Option(
        min=1,
        help="downstream trainings run at once, each in its own process with --threads / jobs torch threads "
        "(numbers depend on that thread count only)",
    ),
]
