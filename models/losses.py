"""Exact next-item cross-entropy without the (n, C) logits matrix.

For hidden states h (n, H), item weights W (C, H) and target columns y (n,), the
logits are z = h W^T (no bias: both backbones score by a dot product with the tied
item embeddings) and

    loss = 1/n * sum_i [ lse_i - z[i, y_i] ],   lse_i = log sum_c exp(z[i, c])
    dloss/dz[i, c] = (softmax(z_i)[c] - [c == y_i]) / n,   softmax(z_i) = exp(z_i - lse_i)
    dloss/dh = dz W,   dloss/dW = dz^T h

`linear_cross_entropy` computes this over tiles of (rows x cols) logits. The forward
pass keeps a running max and sum of exponentials per row (an online log-sum-exp) and
saves only h, W, y and lse; the backward pass recomputes each tile's logits and
accumulates the two gradients tile by tile. Tile logits are float32 (float64 when the
inputs are float64) even when the matmul runs in bf16 under CUDA autocast, as the
unchunked path's `logits.float()`.

Memory is bounded by a budget in MB: `chunk_shape` turns it into a tile shape, using
every item per tile when one row of logits fits and a square-ish tile otherwise.
"""

from __future__ import annotations

import math
from typing import Any

import torch

__all__ = [
    "DEFAULT_LOGITS_BUDGET_MB",
    "LOGIT_BYTES",
    "MIN_LOGITS_BUDGET_MB",
    "budget_bytes",
    "check_budget_mb",
    "chunk_shape",
    "linear_cross_entropy",
]

MB = 2**20
# Peak bytes per logit of the unchunked loss step: 12 measured on CPU in float32 (three
# float32 tensors of the logits' size alive at once, benchmarks/loss_memory.py), plus
# room for the bf16 copy under CUDA autocast. A tile of the tiled loss holds fewer
# (its logits and their exp), so it stays inside the same estimate.
LOGIT_BYTES = 16
# A full batch of the paper's sizes (128 windows x 128 positions) over 2,000 items fits
# (ml100k's 1,461 need 383 MB, so it keeps the plain path); on a CPU a larger budget
# only raised the peak (200k items: 3.7 GB at 1 GiB, 2.0 GB at 256 MB, same speed).
DEFAULT_LOGITS_BUDGET_MB = 512.0
MIN_LOGITS_BUDGET_MB = LOGIT_BYTES / MB  # one row x one item


def budget_bytes(budget_mb: float) -> int:
    return int(budget_mb * MB)


def check_budget_mb(name: str, budget_mb: float) -> None:
    """Raise a ValueError unless budget_mb is a finite number of MB holding at least one logit."""
    if not (isinstance(budget_mb, (int, float)) and math.isfinite(budget_mb) and budget_mb >= MIN_LOGITS_BUDGET_MB):
        raise ValueError(
            f"{name} must be a finite number of MB >= {MIN_LOGITS_BUDGET_MB:.3g} "
            f"(one {LOGIT_BYTES}-byte logit), got {budget_mb!r}"
        )


def chunk_shape(n: int, c: int, budget: int, elem_bytes: int) -> tuple[int, int]:
    """(rows, cols) of a tile of an (n, c) matrix whose elements cost elem_bytes each,
    within budget bytes. (rows, cols) >= (n, c) means the whole matrix fits."""
    cells = budget // elem_bytes
    if cells < 1:
        raise ValueError(f"a budget of {budget} bytes cannot hold one {elem_bytes}-byte element (row x item)")
    if cells >= n * c:
        return max(n, 1), max(c, 1)
    if cells >= c:
        return _even(n, cells // c), c
    # a whole row does not fit: square-ish tiles keep the matmuls efficient
    rows = _even(n, max(1, min(n, math.isqrt(cells))))
    return rows, _even(c, cells // rows)


def _even(total: int, most: int) -> int:
    """A tile size <= most that covers total in as few tiles as `most` does, as evenly as
    equal tiles can (299 + 1 becomes 150 + 150): a BLAS may round the matmul of a much
    smaller last tile differently (MKL does for one row)."""
    tiles = -(-total // most)
    return -(-total // tiles)


def linear_cross_entropy(
    hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, rows: int, cols: int
) -> torch.Tensor:
    """Mean of cross_entropy(hidden @ weight.T, targets) over tiles of at most (rows, cols) logits.

    hidden (n, H), weight (C, H), targets (n,) column indices in [0, C) -> scalar loss.
    """
    if rows < 1 or cols < 1:
        raise ValueError(f"tile shape must be positive, got ({rows}, {cols})")
    return _LinearCrossEntropy.apply(hidden, weight, targets, rows, cols)


def _tile_logits(h: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    z = h @ w.T  # (r, k), bf16 under CUDA autocast
    return z.to(torch.promote_types(z.dtype, torch.float32))


def _targets_in(t: torch.Tensor, lo: int, hi: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(rows of the tile whose target lies in columns [lo, hi), those targets' tile columns)."""
    inside = torch.nonzero((t >= lo) & (t < hi)).squeeze(1)  # (m,)
    return inside, t[inside] - lo


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    @torch.amp.custom_fwd(device_type="cuda")
    def forward(
        ctx: Any, hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, rows: int, cols: int
    ) -> torch.Tensor:
        n, c = hidden.shape[0], weight.shape[0]
        acc = torch.promote_types(torch.promote_types(hidden.dtype, weight.dtype), torch.float32)
        lse = torch.empty(n, dtype=acc, device=hidden.device)  # (n,)
        picked = torch.empty(n, dtype=acc, device=hidden.device)  # (n,) z[i, y_i]
        for a in range(0, n, rows):
            h, t = hidden[a : a + rows], targets[a : a + rows]  # (r, H), (r,)
            run_max = torch.full((len(h),), -math.inf, dtype=acc, device=hidden.device)  # (r,)
            run_sum = torch.zeros(len(h), dtype=acc, device=hidden.device)  # (r,)
            for b in range(0, c, cols):
                z = _tile_logits(h, weight[b : b + cols])  # (r, k)
                inside, col = _targets_in(t, b, b + z.shape[1])
                picked[a : a + rows][inside] = z[inside, col]
                new_max = torch.maximum(run_max, z.amax(dim=1))  # (r,)
                # rows whose logits so far are all -inf shift by 0, not by -inf (which gives NaN)
                shift = torch.where(new_max == -math.inf, 0.0, new_max)[:, None]  # (r, 1)
                run_sum = run_sum * torch.exp(run_max - shift[:, 0]) + z.sub_(shift).exp_().sum(dim=1)
                run_max = new_max
            finite_max = torch.where(run_max == -math.inf, 0.0, run_max)
            lse[a : a + rows] = finite_max + torch.log(run_sum)
        ctx.save_for_backward(hidden, weight, targets, lse)
        ctx.tile = (rows, cols)
        return (lse - picked).mean()

    @staticmethod
    @torch.amp.custom_bwd(device_type="cuda")
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        hidden, weight, targets, lse = ctx.saved_tensors
        rows, cols = ctx.tile
        n, c = hidden.shape[0], weight.shape[0]
        scale = grad_out.to(lse.dtype) / n
        want_h, want_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        grad_h = torch.zeros(hidden.shape, dtype=lse.dtype, device=hidden.device) if want_h else None  # (n, H)
        grad_w = torch.zeros(weight.shape, dtype=lse.dtype, device=weight.device) if want_w else None  # (C, H)
        for a in range(0, n, rows):
            h, t, row_lse = hidden[a : a + rows], targets[a : a + rows], lse[a : a + rows, None]  # (r, H), (r,), (r, 1)
            for b in range(0, c, cols):
                w = weight[b : b + cols]  # (k, H)
                dz = _tile_logits(h, w).sub_(row_lse).exp_()  # (r, k) softmax
                inside, col = _targets_in(t, b, b + w.shape[0])
                dz[inside, col] -= 1.0
                dz.mul_(scale)
                # casts to dz's dtype: a no-op for float32 weights, and under CUDA autocast
                # (restored by custom_bwd) the matmuls run in bf16 as the unchunked backward's do
                if grad_h is not None:
                    grad_h[a : a + rows] += dz @ w.to(dz.dtype)
                if grad_w is not None:
                    grad_w[b : b + cols] += dz.T @ h.to(dz.dtype)
        return (
            None if grad_h is None else grad_h.to(hidden.dtype),
            None if grad_w is None else grad_w.to(weight.dtype),
            None,
            None,
            None,
        )
