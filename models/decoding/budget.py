"""The memory budget of the score work: what "auto" resolves to on each device, the
smallest budget a catalogue needs, and how many rows a chunk of scoring holds."""

from __future__ import annotations

import math
from typing import Literal

import torch

from models.errors import ConfigError

# Live [rows, V] float32 tensors while scoring one chunk: 3 logits + ~7 temporaries in
# contrastive_score + the local copies. Sizes the chunk from the memory budget.
_LIVE_SCORE_TENSORS = 12
# On CPU, decide's ~30 elementwise passes are fastest when one chunk's temporaries stay
# cache-sized (measured: ~5x faster at 1-2 rows than at 16 for V=200k); the logits
# matmul prefers many rows (it reads the whole item table once per chunk), so logits are
# computed per budget-sized chunk and decided in cache-sized slices of it.
_CPU_DECIDE_BYTES = 2 << 20

MemoryBudget = float | Literal["auto"]
# "auto" on CPU: a fixed budget, because host RAM is shared with everything else on the
# machine (other processes, the page cache) and its free amount says little about what
# this process may take. At 200k items it still holds dozens of rows per chunk.
CPU_AUTO_BUDGET_MB = 256.0
# "auto" on CUDA: this share of the device's free memory when the engine is created. The
# rest is head-room for what the budget does not count: the forward passes' activations,
# the caching allocator's fragmentation, and models loaded after this one.
CUDA_AUTO_SHARE = 0.5


def resolve_memory_budget_mb(
    budget: MemoryBudget, device: str | torch.device, *, free_bytes: int | None = None, sharers: int = 1
) -> float:
    """The budget in MB for `budget` ("auto" or a number, which always wins) on `device`.

    On CUDA, "auto" is CUDA_AUTO_SHARE of the free memory (`free_bytes`, or what
    torch.cuda.mem_get_info reports now), split evenly between `sharers` decodes that
    can run at once in this process; elsewhere it is CPU_AUTO_BUDGET_MB.
    """
    if budget != "auto":
        if isinstance(budget, bool) or not isinstance(budget, int | float) or not math.isfinite(budget):
            raise ConfigError(f"memory budget must be a positive number of MB or 'auto', got {budget!r}")
        return float(budget)
    device = torch.device(device)
    if device.type != "cuda":
        return CPU_AUTO_BUDGET_MB
    if free_bytes is None:
        free_bytes, _total = torch.cuda.mem_get_info(device)
    return free_bytes * CUDA_AUTO_SHARE / max(1, sharers) / 2**20


def min_memory_budget_mb(n_items: int, device: str | torch.device) -> float:
    """The smallest budget that holds one row of the score work for n_items items."""
    return _min_budget_bytes(n_items, torch.device(device).type) / 2**20


def _min_budget_bytes(v: int, device_type: str) -> int:
    # CUDA scores each chunk at once; the CPU path also keeps the chunk's 3 logits rows
    # beside the temporaries of the slice being decided
    tensors = _LIVE_SCORE_TENSORS if device_type == "cuda" else 3 + _LIVE_SCORE_TENSORS
    return tensors * v * 4


def _round_up(x: float, digits: int = 2) -> float:
    """x rounded up to `digits` significant digits, so a printed minimum is enough."""
    if x <= 0:
        return x
    scale = 10.0 ** (math.floor(math.log10(x)) - digits + 1)
    return math.ceil(x / scale) * scale


def chunk_rows(v: int, budget_mb: float, device: torch.device) -> tuple[int, int]:
    """(rows per logits chunk, rows per decide call) for V items within budget_mb on
    device; ConfigError when the budget cannot hold one row."""
    row_bytes = v * 4
    budget = int(budget_mb * 2**20)
    if budget < _min_budget_bytes(v, device.type):
        raise ConfigError(
            f"memory budget {budget_mb:g} MB is too small for a catalogue of {v:,} items: "
            f"one row of the score work on {device.type} needs "
            f"{_round_up(min_memory_budget_mb(v, device)):g} MB; give at least that, or 'auto'",
            {"memory_budget_mb": budget_mb, "n_items": v},
        )
    if device.type == "cuda":
        rows = budget // (row_bytes * _LIVE_SCORE_TENSORS)
        return rows, rows
    # CPU: 3 logits buffers of `rows` rows + decide's temporaries for `step` rows; a
    # small budget gives the cache-sized slices at most half of itself
    step = max(1, min(_CPU_DECIDE_BYTES // row_bytes, budget // (2 * row_bytes * _LIVE_SCORE_TENSORS)))
    rows = (budget - step * row_bytes * _LIVE_SCORE_TENSORS) // (3 * row_bytes)
    return rows, min(step, rows)
