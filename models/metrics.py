"""Full-ranking metrics over the rank of each evaluation target (METHOD.md §4).

A rank is computed once per evaluation point; every metric is then a small
function of the rank vector, as in RecBole's evaluator:

    rank(target) = 1 + #{candidates c : score(c) > score(target)}   (strictly higher)

Ties are resolved in the target's favour: candidates scoring *equal* to the
target do not push it down. A target whose own score is NaN or -inf cannot be
ranked by the model (e.g. it was masked out); its rank is +inf and it counts
as a miss for every metric. NaN candidate scores never outrank anything.
Ranks are float64 so that +inf can mark a miss.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch

DEFAULT_KS: tuple[int, ...] = (5, 10, 20, 50)


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
