"""TAESAR_TORCH_THREADS reaches torch in the API and in workers."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
from pydantic import ValidationError

from app.main import create_app
from core.engines import apply_torch_threads
from core.settings import Settings


@pytest.fixture
def restore_threads() -> Iterator[None]:
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_the_api_applies_the_thread_setting_when_it_is_built(restore_threads: None, monkeypatch) -> None:
    torch.set_num_threads(1)
    monkeypatch.setenv("TAESAR_TORCH_THREADS", "3")
    create_app(Settings())
    assert torch.get_num_threads() == 3


def test_no_setting_leaves_torch_alone(restore_threads: None) -> None:
    torch.set_num_threads(2)
    apply_torch_threads(Settings(torch_threads=None))
    assert torch.get_num_threads() == 2


def test_a_bad_thread_count_is_refused_at_start_up() -> None:
    with pytest.raises(ValidationError):
        Settings(torch_threads=0)
