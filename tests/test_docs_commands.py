"""Every command the docs show names things that exist (tests/docs_check.py runs them)."""

from __future__ import annotations

import subprocess

import pytest

from tests.docs_check import (
    ROOT,
    RUNNABLE,
    blocks,
    doc_files,
    make_targets,
    shell_commands,
    taesar_calls,
    unknown_options,
)

ALL_BLOCKS = [b for path in doc_files() for b in blocks(path)]


def test_the_docs_show_taesar_commands_and_each_is_found() -> None:
    calls = taesar_calls()
    assert len(calls) > 30
    subcommands = {" ".join(t[1:3]) for _, t in calls}
    assert {"data ml100k", "pretrain --data", "export recbole", "serve --port"} <= subcommands


@pytest.mark.parametrize(("where", "tokens"), taesar_calls(), ids=lambda v: v if isinstance(v, str) else "")
def test_every_taesar_command_in_the_docs_uses_options_that_exist(where: str, tokens: list[str]) -> None:
    assert unknown_options(tokens) == [], f"{where}: {' '.join(tokens)}"


def test_an_option_that_does_not_exist_is_caught() -> None:
    assert unknown_options(["taesar", "pretrain", "--data", "d", "--hold-out", "4"]) == ["--hold-out"]
    assert unknown_options(["taesar", "data", "ml100k", "[--holdout", "1]"]) == []
    assert unknown_options(["taesar", "nosuch"]) == ["no subcommand nosuch of taesar"]


@pytest.mark.parametrize("block", [b for b in ALL_BLOCKS if b.lang == "bash"], ids=lambda b: b.where)
def test_every_shell_block_parses_and_names_existing_make_targets_and_scripts(block) -> None:
    done = subprocess.run(["bash", "-n"], input=block.text, capture_output=True, text=True, check=False)
    assert done.returncode == 0, f"{block.where}: {done.stderr}"
    for cmd in shell_commands(block.text):
        if cmd[0] == "make":
            assert set(a for a in cmd[1:] if "=" not in a) <= make_targets(), f"{block.where}: {cmd}"
        if cmd[0] in ("python", "python3") and cmd[1].endswith(".py"):
            assert (ROOT / cmd[1]).is_file(), f"{block.where}: {cmd[1]}"


def test_every_block_not_run_says_why() -> None:
    for b in ALL_BLOCKS:
        if b.mark:
            assert b.lang in RUNNABLE and len(b.reason) > 15, b.where
    # the newcomer path starts with README's two commands
    first = next(b for b in ALL_BLOCKS if b.lang == "bash")
    assert first.path.name == "README.md" and not first.mark
    assert [c[:2] for c in shell_commands(first.text)] == [["make", "demo"], ["make", "test"]]
