"""The decision rule of METHOD.md §3 on logits: contrastive scores, the global test and
the local choice, with an explained form that also returns the top candidates."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

EPS = 1e-10


@dataclass(frozen=True)
class TargetItems:
    """The target domain's items among dense ids 0..V-1: a slice when they are
    contiguous (always, for a Catalogue), else an index tensor."""

    start: int
    end: int
    index: torch.Tensor | None = None  # (|T|,) dense ids, only when not contiguous
    mask: torch.Tensor | None = None  # (V,) bool, only when not contiguous

    @classmethod
    def of(cls, target: torch.Tensor | TargetItems) -> TargetItems:
        if isinstance(target, TargetItems):
            return target
        assert target.dtype == torch.bool and target.dim() == 1, "target_mask must be a bool vector [V]"
        index = target.nonzero().squeeze(1)
        assert index.numel() > 0, "target_mask selects no item"
        start, end = int(index[0]), int(index[-1]) + 1
        if end - start == index.numel():
            return cls(start, end)
        return cls(start, end, index, target)

    @property
    def size(self) -> int:
        return self.end - self.start if self.index is None else self.index.numel()

    def contains(self, ids: torch.Tensor) -> torch.Tensor:
        if self.mask is None:
            return (ids >= self.start) & (ids < self.end)
        return self.mask[ids]

    def columns(self, z: torch.Tensor) -> torch.Tensor:
        """z (N, V) -> (N, |T|), the target items' columns."""
        return z[:, self.start : self.end] if self.index is None else z[:, self.index]

    def dense_ids(self, local: torch.Tensor) -> torch.Tensor:
        """Column numbers in `columns(z)` -> dense ids."""
        return local + self.start if self.index is None else self.index[local]


def contrastive_score(z_mix: torch.Tensor, z_source: torch.Tensor, z_target: torch.Tensor) -> torch.Tensor:
    """g = (1 + alpha) * z^T - beta * z^S over the columns given, all (N, V') -> (N, V').

    alpha_i = (1 - e_i) / (1 - max e + eps), e_i = -p^T_i log(p^T_i + eps);
    beta_i = J_i / (max J + eps), J_i = 0.5 * (m_i log((m_i+eps)/(p^M_i+eps)) + m_i log((m_i+eps)/(p^S_i+eps))),
    m = (p^M + p^S) / 2. On CPU the cost is memory passes over V, not arithmetic, so
    this works in place on its own temporaries and merges the logs (~30% faster than
    the formula term by term); the inputs are not modified.
    """
    p_t = torch.softmax(z_target, dim=-1)  # (N, V)
    neg_e = p_t.add(EPS).log_().mul_(p_t)  # -e
    denominator = 1 + neg_e.amin(dim=-1, keepdim=True) + EPS  # 1 - max e + eps, (N, 1)
    # 1 + alpha = (denominator + 1 - e) / denominator
    g = neg_e.add_(denominator + 1).mul_(z_target).div_(denominator)  # (1 + alpha) z^T

    p_m = torch.softmax(z_mix, dim=-1)
    p_s = torch.softmax(z_source, dim=-1)
    m = p_m.add(p_s).mul_(0.5)
    # 2J = m log((m+eps)^2 / ((p^M+eps)(p^S+eps))); J/(max J + eps) = 2J/(max 2J + 2eps) exactly
    two_j = m.add(EPS).square_().div_(p_m.add_(EPS).mul_(p_s.add_(EPS))).log_().mul_(m)
    beta = two_j.div_(two_j.amax(dim=-1, keepdim=True) + 2 * EPS)
    return g.sub_(beta.mul_(z_source))


def decide(
    z_mix: torch.Tensor,
    z_source: torch.Tensor,
    z_target: torch.Tensor,
    target_mask: torch.Tensor | TargetItems,
    *,
    use_global: bool = True,
    use_local: bool = True,
) -> torch.Tensor:
    """The decision rule of METHOD.md §3 for N source positions.

    z_* are logits (N, V) of the mixed model, the source item's expert and the target
    expert; target_mask is a bool (V,) of target items. Returns a LongTensor (N,):
    the replacing dense id, or -1 to discard. Ablations: use_global=False always goes
    local; use_local=False replaces with the global argmax when it is a target item.
    """
    assert use_global or use_local, "at least one of the global and local scores is needed"
    targets = TargetItems.of(target_mask)
    z_mix, z_source, z_target = compute_dtype(z_mix, z_source, z_target)
    n = z_target.shape[0]
    choice = torch.full((n,), -1, dtype=torch.long, device=z_target.device)  # (N,)
    if use_global:
        best = contrastive_score(z_mix, z_source, z_target).argmax(dim=-1)  # (N,)
        go_local = targets.contains(best)  # (N,) bool
        if not use_local:
            return torch.where(go_local, best, choice)
    else:
        go_local = torch.ones(n, dtype=torch.bool, device=z_target.device)
    rows = go_local.nonzero().squeeze(1)
    if rows.numel():
        # the same formulas with each softmax renormalised over the target items alone
        local = contrastive_score(*(targets.columns(z)[rows] for z in (z_mix, z_source, z_target)))  # (n, |T|)
        choice[rows] = targets.dense_ids(local.argmax(dim=-1))
    return choice


@dataclass(frozen=True)
class Explained:
    """`decide` plus its top candidates: ids are dense ids, -1 (score nan) where a
    row had no such candidate (local scores exist only for rows that went local)."""

    choice: torch.Tensor  # (N,)
    global_ids: torch.Tensor  # (N, k)
    global_scores: torch.Tensor  # (N, k)
    local_ids: torch.Tensor  # (N, k)
    local_scores: torch.Tensor  # (N, k)


def decide_explained(
    z_mix: torch.Tensor,
    z_source: torch.Tensor,
    z_target: torch.Tensor,
    target_mask: torch.Tensor | TargetItems,
    *,
    top_k: int = 5,
    use_global: bool = True,
    use_local: bool = True,
) -> Explained:
    """`decide`, also returning the top-k global candidates (dense id, g) and the
    top-k local candidates (dense id, l). Same choices as `decide` by construction."""
    assert top_k >= 1
    targets = TargetItems.of(target_mask)
    z_mix, z_source, z_target = compute_dtype(z_mix, z_source, z_target)
    n, v = z_target.shape
    choice = decide(z_mix, z_source, z_target, targets, use_global=use_global, use_local=use_local)
    g_ids, g_scores = _empty_top(n, 0, z_target)
    if use_global:
        g_scores, g_ids = contrastive_score(z_mix, z_source, z_target).topk(min(top_k, v), dim=-1)
    l_ids, l_scores = _empty_top(n, min(top_k, targets.size), z_target)
    went_local = choice >= 0 if use_local else torch.zeros_like(choice, dtype=torch.bool)  # (N,)
    rows = went_local.nonzero().squeeze(1)
    if rows.numel():
        local = contrastive_score(*(targets.columns(z)[rows] for z in (z_mix, z_source, z_target)))
        scores, cols = local.topk(l_ids.shape[1], dim=-1)
        l_ids[rows], l_scores[rows] = targets.dense_ids(cols), scores
    return Explained(choice, g_ids, g_scores, l_ids, l_scores)


def _empty_top(n: int, k: int, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.full((n, k), -1, dtype=torch.long, device=like.device)
    return ids, torch.full((n, k), math.nan, dtype=like.dtype, device=like.device)


def compute_dtype(*zs: torch.Tensor) -> tuple[torch.Tensor, ...]:
    # float64 stays float64 (tests); everything else (e.g. bf16/fp16 logits) is scored in float32
    dtype = torch.float64 if any(z.dtype == torch.float64 for z in zs) else torch.float32
    return tuple(z.to(dtype) for z in zs)
