"""Full-ranking metrics over the rank of each evaluation target (METHOD.md §4).

A rank is computed once per evaluation point; every metric is then a small
function of the rank vector, as in RecBole's evaluator:

    rank(target) = 1 + #{candidates c : score(c) > score(target)}   (strictly higher)

Ties are resolved in the target's favour: candidates scoring *equal* to the
target do not push it down. A target whose own score is NaN or -inf cannot be
ranked by the model (e.g. it was masked out); its rank is +inf and it counts
as a miss for every metric. NaN candidate scores never outrank anything.
Ranks are float64 so that +inf can mark a miss.

`rank_of_dot_targets` ranks dot-product scores hidden @ weights.T tile by tile, so the
(N, C) score matrix never exists when it would not fit in memory. Its ranks equal the
full matrix's whenever each tile's matmul gives the same bits as the full one; BLAS
libraries choose kernels by shape (MKL scores a one-row tile, or a tile of a few
items, differently in the last bit), so a tiled score can differ by rounding, which
can only reorder items that score within rounding of each other. A target is never
compared with a score of its own from another matmul: its score is read out of the
tile that holds it, and that tile's matmul is repeated exactly to count.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch

DEFAULT_KS: tuple[int, ...] = (5, 10, 20, 50)
SCORE_BYTES = 5  # per score while ranking: the float32 score and its bool comparison


def rank_of_targets(scores: torch.Tensor, targets: torch.Tensor) -> np.ndarray:
    """scores (N, C), targets (N,) column indices -> ranks (N,) float64, +inf = unrankable."""
    scores = torch.as_tensor(scores)
    targets = torch.as_tensor(targets, device=scores.device).long()
    target_scores = scores.gather(1, targets[:, None])  # (N, 1)
    higher = (scores > target_scores).sum(dim=1)  # (N,) NaN compares False both ways
    ranks = (higher + 1).double().cpu().numpy()
    unrankable = torch.isnan(target_scores[:, 0]) | torch.isneginf(target_scores[:, 0])
    ranks[unrankable.cpu().numpy()] = np.inf
    return ranks


def rank_of_dot_targets(
    hidden: torch.Tensor, weights: torch.Tensor, targets: torch.Tensor, rows: int, cols: int
) -> np.ndarray:
    """rank_of_targets(hidden @ weights.T, targets) over tiles of at most (rows, cols) scores.

    hidden (N, H), weights (C, H), targets (N,) -> ranks (N,) float64. When a tile spans
    every item, each row's scores come from one matmul, as in the full matrix. Otherwise
    a first pass over the item tiles picks each target's score out of the tile that
    holds it (not a separate dot product, whose rounding could differ from the tile's),
    and a second pass counts the strictly higher scores tile by tile.
    """
    n, c = hidden.shape[0], weights.shape[0]
    targets = torch.as_tensor(targets, device=hidden.device).long()
    if rows >= n and cols >= c:
        return rank_of_targets(hidden @ weights.T, targets)
    if cols >= c:
        return np.concatenate(
            [rank_of_targets(hidden[a : a + rows] @ weights.T, targets[a : a + rows]) for a in range(0, n, rows)]
        )
    parts = [
        _rank_across_item_tiles(hidden[a : a + rows], weights, targets[a : a + rows], cols) for a in range(0, n, rows)
    ]
    return np.concatenate(parts) if parts else np.zeros(0)


def _rank_across_item_tiles(h: torch.Tensor, weights: torch.Tensor, t: torch.Tensor, cols: int) -> np.ndarray:
    """Ranks of one row tile h (r, H) whose score rows are split into item tiles of cols."""
    c = weights.shape[0]
    target_scores = torch.empty(len(h), dtype=torch.promote_types(h.dtype, weights.dtype), device=h.device)  # (r,)
    for b in range(0, c, cols):
        inside = torch.nonzero((t >= b) & (t < b + cols)).squeeze(1)  # (m,)
        if len(inside):
            # the very matmul the counting pass repeats, so the target's own entry never counts
            scores = h @ weights[b : b + cols].T  # (r, k)
            target_scores[inside] = scores[inside, t[inside] - b]
    higher = torch.zeros(len(h), dtype=torch.long, device=h.device)  # (r,)
    for b in range(0, c, cols):
        higher += (h @ weights[b : b + cols].T > target_scores[:, None]).sum(dim=1)  # NaN compares False
    ranks = (higher + 1).double().cpu().numpy()
    unrankable = torch.isnan(target_scores) | torch.isneginf(target_scores)
    ranks[unrankable.cpu().numpy()] = np.inf
    return ranks


def hit_at_k(ranks: np.ndarray, k: int) -> np.ndarray:
    """HR@k per point: 1 if rank <= k else 0."""
    return (np.asarray(ranks) <= k).astype(np.float64)


def ndcg_at_k(ranks: np.ndarray, k: int) -> np.ndarray:
    """NDCG@k per point with one relevant item: 1 / log2(rank + 1) if rank <= k else 0."""
    ranks = np.asarray(ranks, dtype=np.float64)
    out = np.zeros_like(ranks)
    hit = ranks <= k
    out[hit] = 1.0 / np.log2(ranks[hit] + 1.0)
    return out


def mrr_at_k(ranks: np.ndarray, k: int) -> np.ndarray:
    """MRR@k per point: 1 / rank if rank <= k else 0."""
    ranks = np.asarray(ranks, dtype=np.float64)
    out = np.zeros_like(ranks)
    hit = ranks <= k
    out[hit] = 1.0 / ranks[hit]
    return out


_METRICS = {"HR": hit_at_k, "NDCG": ndcg_at_k, "MRR": mrr_at_k}


def summarize(ranks: np.ndarray, ks: Iterable[int] = DEFAULT_KS) -> dict[str, float]:
    """Mean of every metric at every k, e.g. {"HR@10": .., "NDCG@10": .., "MRR@10": .., "n": N}.

    With no points every metric is 0.0 and "n" is 0, so callers can tell the two apart.
    """
    ranks = np.asarray(ranks, dtype=np.float64)
    out: dict[str, float] = {}
    for name, fn in _METRICS.items():
        for k in ks:
            out[f"{name}@{k}"] = float(fn(ranks, k).mean()) if ranks.size else 0.0
    out["n"] = int(ranks.size)
    return out
