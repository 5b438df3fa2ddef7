"""The closed sets of values options take. Typer lists them in --help and refuses any
other value with exit code 2, before a command starts.

They are written out here so that `taesar --help` imports no torch;
tests/test_cli_options.py checks them against the sets models/ and app.settings define.
"""

from __future__ import annotations

from enum import Enum
from typing import Literal

# TAESAR_DEVICE takes the same values (app.settings.Settings.device)
DeviceName = Literal["auto", "cpu", "cuda"]
OutputFormat = Literal["jsonl", "recbole"]
Split = Literal["train", "full"]
UnknownItems = Literal["error", "drop"]
# Celery's log levels (`taesar worker --loglevel`), in either case
LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"]


class Ablation(str, Enum):
    """A decoding ablation: the DecodeOptions switch of the same name. An Enum rather than
    a Literal because --ablation repeats, and typer takes lists of Enums only."""

    no_adaptation = "no_adaptation"
    no_source_experts = "no_source_experts"
    no_global = "no_global"
    no_local = "no_local"


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
