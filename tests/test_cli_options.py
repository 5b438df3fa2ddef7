"""The CLI's closed choices: the sets models/ and the service define, listed in --help,
and any other value refused with exit code 2 before a command starts."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import typing
from pathlib import Path
from typing import Any

import pytest
import typer.main
from typer.testing import CliRunner

from cli import app
from cli.choices import BACKBONES, VARIANTS, Ablation, DeviceName, UnknownItems
from core.settings import Settings

runner = CliRunner()
ROOT = Path(__file__).parents[1]


def invoke(*args: str) -> tuple[int, str]:
    result = runner.invoke(app, [str(a) for a in args], env={"COLUMNS": "200"})
    return result.exit_code, result.output


def command_paths(cmd: Any = None, path: tuple[str, ...] = ()) -> list[tuple]:
    cmd = typer.main.get_command(app) if cmd is None else cmd
    if hasattr(cmd, "commands"):
        return [p for name, sub in cmd.commands.items() for p in command_paths(sub, (*path, name))]
    return [path]


def test_the_choices_are_the_sets_models_and_the_service_define() -> None:
    from models.decoding import DecodeOptions, regenerate_external
    from models.downstream import BACKBONES as MODEL_BACKBONES
    from models.evaluation import VARIANTS as MODEL_VARIANTS
    from models.evaluation.variants import ABLATIONS

    assert tuple(d.value for d in DeviceName) == typing.get_args(Settings.model_fields["device"].annotation)
    assert BACKBONES == MODEL_BACKBONES and VARIANTS == MODEL_VARIANTS
    assert [a.value for a in Ablation] == list(ABLATIONS)
    assert {a.value for a in Ablation} <= {f.name for f in dataclasses.fields(DecodeOptions)}
    hints = typing.get_type_hints(regenerate_external)
    assert typing.get_args(hints["unknown_items"]) == tuple(u.value for u in UnknownItems)


@pytest.mark.parametrize("path", command_paths(), ids=" ".join)
def test_every_command_has_help(path: tuple[str, ...]) -> None:
    assert len(command_paths()) == 10
    code, output = invoke(*path, "--help")
    assert code == 0 and "Usage:" in output, output


def test_help_lists_the_choices() -> None:
    _, regenerate = invoke("regenerate", "--help")
    for shown in ("jsonl|recbole", "train|full", "error|drop", "auto|cpu|cuda", *(a.value for a in Ablation)):
        assert shown in regenerate, shown
    _, evaluate = invoke("evaluate", "--help")
    assert all(v in evaluate for v in (*BACKBONES, *VARIANTS))
    _, worker = invoke("worker", "--help")
    assert "debug|info|warning|error|critical" in worker.lower()


REGENERATE = ["regenerate", "--bundle", "b", "--target", "z", "--out", "o", "--input", "i"]


@pytest.mark.parametrize(
    ("args", "option"),
    [
        ([*REGENERATE, "--format", "xml"], "--format"),
        ([*REGENERATE, "--split", "valid"], "--split"),
        ([*REGENERATE, "--unknown-items", "keep"], "--unknown-items"),
        ([*REGENERATE, "--ablation", "bogus"], "--ablation"),
        ([*REGENERATE, "--device", "gpu"], "--device"),
        (["pretrain", "--data", "d", "--out", "b", "--device", "CUDA"], "--device"),
        (["evaluate", "--data", "d", "--out", "r", "--target", "z", "--variants", "sim,bogus"], "--variants"),
        (["evaluate", "--data", "d", "--out", "r", "--target", "z", "--backbones", "bert4rec"], "--backbones"),
        (["pipeline", "--data", "d", "--out", "r", "--variants", ","], "--variants"),
        (["export", "recbole", "--data", "d", "--out", "r", "--target", "z", "--variants", "news"], "--variants"),
        (["serve", "--device", "tpu"], "--device"),
        (["worker", "--loglevel", "LOUD"], "--loglevel"),
    ],
)
def test_a_value_outside_a_closed_set_is_a_usage_error(args: list[str], option: str) -> None:
    code, output = invoke(*args)
    assert code == 2
    assert f"Invalid value for '{option}'" in output
    assert "Traceback" not in output


def test_choices_are_refused_with_the_values_to_choose_from() -> None:
    _, output = invoke(*REGENERATE, "--format", "xml")
    assert "'jsonl', 'recbole'" in output
    _, output = invoke("evaluate", "--data", "d", "--out", "r", "--target", "z", "--variants", "sim,bogus")
    assert "['bogus']" in output and "random_matched" in output


def test_worker_log_levels_take_either_case(monkeypatch: pytest.MonkeyPatch) -> None:
    import workers.main

    seen = {}
    monkeypatch.setattr(workers.main, "worker_command", lambda **kw: seen.update(kw))
    monkeypatch.setattr("cli.service.export_for_service", lambda **kw: None)
    code, output = invoke("worker", "--loglevel", "debug")
    assert code == 0, output
    assert seen["loglevel"] == "DEBUG"


def test_two_ablations_that_leave_no_score_are_one_error_line() -> None:
    code, output = invoke(*REGENERATE, "--ablation", "no_global", "--ablation", "no_local")
    assert code == 2 and output.startswith("error: --ablation:") and "no_global and no_local" in output
    assert "Traceback" not in output


def test_python_m_cli_is_the_taesar_command() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "cli", "--help"], capture_output=True, text=True, cwd=ROOT, check=False, timeout=60
    )
    assert done.returncode == 0 and "pretrain" in done.stdout and "regenerate" in done.stdout, done.stderr
