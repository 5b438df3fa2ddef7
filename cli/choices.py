"""The closed sets of values options take. Typer lists them in --help and refuses any
other value with exit code 2, before a command starts.

Enums (not Literal types) so that every typer the project allows takes them, repeatable
options included. They are written out here so that `taesar --help` imports no torch;
tests/test_cli_options.py checks them against the sets models/ and core.settings define.
"""

from __future__ import annotations

from enum import Enum


class Choice(str, Enum):
    """An option's value; `.value` is the string the models and the settings take."""


class DeviceName(Choice):
    """Where models run; TAESAR_DEVICE takes the same values (core.settings.Settings.device)."""

    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"


class OutputFormat(Choice):
    jsonl = "jsonl"
    recbole = "recbole"


class Split(Choice):
    train = "train"
    full = "full"


class UnknownItems(Choice):
    error = "error"
    drop = "drop"


class LogLevel(Choice):
    """Celery's log levels (`taesar worker --loglevel`), in either case."""

    DEBUG = "DEBUG"
    INFO = "INFO"
    WARNING = "WARNING"
    ERROR = "ERROR"
    CRITICAL = "CRITICAL"


class Ablation(Choice):
    """A decoding ablation: the DecodeOptions switch of the same name."""

    no_adaptation = "no_adaptation"
    no_source_experts = "no_source_experts"
    no_global = "no_global"
    no_local = "no_local"


def value_of(choice: Choice | None) -> str | None:
    return None if choice is None else choice.value


# Comma-separated options (`--backbones sasrec,gru4rec`): each part must be one of these.
BACKBONES: tuple[str, ...] = ("sasrec", "gru4rec")  # models.downstream.BACKBONES
VARIANTS: tuple[str, ...] = (  # models.evaluation.VARIANTS
    "sim",
    "full",
    "new",
    "random",
    "random_matched",
    *(a.value for a in Ablation),
    "new_norepeat",
    "sim_x2",
)
