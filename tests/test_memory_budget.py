"""TAESAR_MEMORY_BUDGET_MB: parsed as "auto" or a number, resolved per engine in the API
and in workers, and a budget too small for a catalogue reported as that model's load
failure. (The engine's own resolution and chunking are tested in test_engine.py.)"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

import models.decoding
from core.engines import load_engines
from core.settings import Settings
from tests.api_support import api_client, model_dir_with, settings_for
from workers import loading


@pytest.mark.parametrize(("env", "expected"), [("auto", "auto"), ("512", 512), ("16", 16)])
def test_the_setting_takes_auto_or_a_whole_number_of_mb(monkeypatch, env: str, expected: Any) -> None:
    monkeypatch.setenv("TAESAR_MEMORY_BUDGET_MB", env)
    assert Settings(_env_file=None).memory_budget_mb == expected  # type: ignore[call-arg]


def test_the_setting_defaults_to_auto(monkeypatch) -> None:
    monkeypatch.delenv("TAESAR_MEMORY_BUDGET_MB", raising=False)
    assert Settings(_env_file=None).memory_budget_mb == "auto"  # type: ignore[call-arg]


@pytest.mark.parametrize("env", ["8", "0", "-1", "garbage", "AUTO", "512.5", ""])
def test_anything_else_is_refused_at_start_up(monkeypatch, env: str) -> None:
    monkeypatch.setenv("TAESAR_MEMORY_BUDGET_MB", env)
    with pytest.raises(ValidationError, match="memory_budget_mb"):
        Settings(_env_file=None)  # type: ignore[call-arg]


def test_an_unknown_taesar_variable_does_not_stop_the_start_up(monkeypatch) -> None:
    monkeypatch.setenv("TAESAR_AUTOCAST_DTYPE", "bfloat16")  # no such setting: ignored
    assert not hasattr(Settings(_env_file=None), "autocast_dtype")  # type: ignore[call-arg]


@pytest.fixture
def spy_budget(monkeypatch) -> list[dict[str, Any]]:
    """Record how load_engines resolves the budget (it imports the function when loading)."""
    calls: list[dict[str, Any]] = []
    real = models.decoding.resolve_memory_budget_mb

    def spy(budget: Any, device: Any, **kw: Any) -> float:
        if "sharers" in kw:  # load_engines' call; the engine then resolves the number it got
            calls.append({"budget": budget, "device": str(device), **kw})
        return real(budget, device, **kw)

    monkeypatch.setattr(models.decoding, "resolve_memory_budget_mb", spy)
    return calls


def test_the_api_splits_an_auto_budget_between_its_concurrent_decodes(
    tiny_bundle: Path, tmp_path: Path, spy_budget: list[dict[str, Any]]
) -> None:
    folder = model_dir_with(tiny_bundle, tmp_path, "a")
    shutil.copytree(tiny_bundle, folder / "b")
    engines = load_engines(settings_for(folder, decode_threads=3))
    assert sorted(engines.engines) == ["a", "b"] and not engines.failures
    # two models, each with up to 3 decoders (app.batching), may share one GPU at once
    assert [c["sharers"] for c in spy_budget] == [6, 6] and {c["budget"] for c in spy_budget} == {"auto"}
    assert {e.regenerator.memory_budget_mb for e in engines.engines.values()} == {256.0}  # auto on CPU


def test_a_worker_decodes_one_chunk_at_a_time_so_it_does_not_split_the_budget(
    tiny_bundle: Path, tmp_path: Path, spy_budget: list[dict[str, Any]]
) -> None:
    settings = settings_for(model_dir_with(tiny_bundle, tmp_path), decode_threads=3, memory_budget_mb=64)
    engines = loading.make_context(settings).load()
    assert [(c["budget"], c["sharers"]) for c in spy_budget] == [(64, 1)]
    assert engines.engines["tiny"].regenerator.memory_budget_mb == 64.0  # a number wins


@pytest.mark.anyio
async def test_the_api_logs_the_resolved_budget(tiny_bundle: Path, tmp_path: Path, capsys) -> None:
    async with api_client(settings_for(model_dir_with(tiny_bundle, tmp_path), log_level="INFO")) as client:
        assert (await client.get("/readyz")).status_code == 200
    lines = [json.loads(x) for x in capsys.readouterr().err.splitlines() if x.startswith("{")]
    loaded = [x for x in lines if x.get("event") == "model_loaded"]
    assert [(x["model"], x["device"], x["memory_budget_mb"]) for x in loaded] == [("tiny", "cpu", 256.0)]


@pytest.mark.anyio
async def test_a_budget_too_small_for_the_catalogue_is_that_models_load_failure(
    tiny_bundle: Path, tmp_path: Path, catalogue: dict
) -> None:
    # the setting's floor of 16 MB holds a row of any catalogue under ~280k items; this
    # reaches the engine's own check on the tiny one
    settings = settings_for(model_dir_with(tiny_bundle, tmp_path)).model_copy(update={"memory_budget_mb": 1e-5})
    async with api_client(settings) as client:
        ready = await client.get("/readyz")
        listed = (await client.get("/models")).json()
    assert ready.status_code == 503
    assert [(e["model"], e["code"]) for e in ready.json()["error"]["details"]["errors"]] == [("tiny", "bad_config")]
    (error,) = listed["errors"]
    n = len(catalogue["item_ids"])
    assert error["code"] == "bad_config" and f"catalogue of {n:,} items" in error["message"]
    assert "needs" in error["message"] and "MB" in error["message"]
