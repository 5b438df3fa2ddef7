"""Shared fixtures: a tiny 3-domain dataset and a bundle trained on it once per session."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

# The suite runs next to worker and server subprocesses on a 2-core machine: one torch
# thread per process avoids OpenMP oversubscription, which made decoding 10-30x slower.
# Set before torch is imported anywhere; subprocesses inherit it.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest

from tests.synthetic import make_log

TINY_DOMAINS = ["Böcher", "home & garden", "x"]


@pytest.fixture(scope="session")
def real_wheel() -> Path:
    """The RecBole wheel in the CLI's own cache, which `make test` fills before pytest runs.

    Without it the real-data tests skip with the command that fetches it; in CI
    (CI=true) a missing wheel is a failed setup step, never a silent skip.
    """
    from cli import DEFAULT_CACHE
    from models.importers import cached_wheel

    wheel = cached_wheel(DEFAULT_CACHE)
    if wheel is None:
        why = f"RecBole wheel not in {DEFAULT_CACHE}: run `make ml100k-wheel` (make test does) or `taesar data ml100k`"
        if os.environ.get("CI"):
            pytest.fail(why)
        pytest.skip(why)
    return wheel


@pytest.fixture(scope="session")
def tiny_log_csv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("log") / "log.csv"
    make_log(TINY_DOMAINS, n_users=60, seed=0).to_csv(path, index=False)
    return path


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory: pytest.TempPathFactory, tiny_log_csv: Path) -> Path:
    from models.data import PrepConfig, prepare, save_dataset
    from models.importers import read_interactions

    ds = prepare(read_interactions(tiny_log_csv), PrepConfig(max_len=16), source="tiny")
    return save_dataset(ds, tmp_path_factory.mktemp("data") / "tiny")


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory: pytest.TempPathFactory, tiny_data: Path) -> Path:
    """Small but really trained: max_len 16 so the sliding-context path is exercised."""
    from models.data import load_dataset
    from models.pretrain import TrainConfig, pretrain
    from models.sasrec import SASRecConfig

    ds = load_dataset(tiny_data)
    model = SASRecConfig(n_items=ds.catalogue.n_items, max_len=16, hidden=32, n_layers=1, n_heads=2, inner=32)
    cfg = TrainConfig(epochs=30, patience=5, adapt_epochs=5, lr=3e-3, batch_size=32, seed=7, device="cpu")
    result = pretrain(ds, cfg, model_config=model)
    return result.save(tmp_path_factory.mktemp("bundle") / "tiny", ds)


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread() -> Iterator[None]:
    """Tiny models gain nothing from intra-op threads; on a busy 2-core machine the
    OpenMP hand-offs of thousands of tiny ops cost ten times the arithmetic."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
def catalogue(tiny_bundle: Path) -> dict[str, Any]:
    """The tiny bundle's catalogue as its manifest stores it."""
    return json.loads((tiny_bundle / "manifest.json").read_text())["catalogue"]
