"""Downstream trainers: GRU4Rec's causality, next-item rows, span-restricted ranking,
learning a learnable pattern, and reproducibility under a seed."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from models.downstream import (
    DownstreamConfig,
    GRU4Rec,
    GRU4RecConfig,
    build_model,
    next_item_rows,
    rank_points,
    train_downstream,
)
from models.training import EvalSet

FAST = DownstreamConfig(epochs=8, patience=8, lr=1e-2, batch_size=16, max_len=12, hidden=16, n_layers=1)


def test_gru4rec_outputs_do_not_depend_on_later_items_or_padding() -> None:
    torch.manual_seed(0)
    model = GRU4Rec(GRU4RecConfig(n_items=10, max_len=8, hidden=8, gru_hidden=12)).eval()
    a = model(torch.tensor([[1, 2, 3, 4, 0, 0]]))
    b = model(torch.tensor([[1, 2, 3, 9, 7, 5]]))
    torch.testing.assert_close(a[:, :3], b[:, :3])
    torch.testing.assert_close(model(torch.tensor([[1, 2, 3, 4]])), a[:, :4])


def test_next_item_rows_train_only_on_targets_inside_the_span() -> None:
    # span [10, 20): item 50 is an input but never a target; targets are columns id - 10
    rows = next_item_rows([np.array([10, 50, 11, 12])], max_len=8, span=(10, 20))
    np.testing.assert_array_equal(rows.inputs[0], [10, 50, 11])
    np.testing.assert_array_equal(rows.targets[0], [-1, 1, 2])


def test_next_item_rows_window_long_sequences_from_the_end() -> None:
    rows = next_item_rows([np.arange(10, 20)], max_len=4, span=(10, 20))
    assert [r.tolist() for r in rows.inputs] == [[15, 16, 17, 18], [11, 12, 13, 14], [10]]
    assert sum(int((t >= 0).sum()) for t in rows.targets) == 9  # every transition once


class _Fixed(torch.nn.Module):
    """A model whose hidden state is constant and whose item scores are given."""

    def __init__(self, scores: list[float]) -> None:
        super().__init__()
        self.cfg = GRU4RecConfig(n_items=len(scores), hidden=1)
        self.w = torch.nn.Parameter(torch.tensor(scores)[:, None])

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return torch.ones(*tokens.shape, 1)

    def item_weights(self) -> torch.Tensor:
        return self.w


def test_ranking_is_restricted_to_the_target_span() -> None:
    # items 0-2 are another domain with higher scores; the span [3, 6) ranks alone
    model = _Fixed([9.0, 8.0, 7.0, 0.5, 0.9, 0.5])
    points = EvalSet([np.array([3]), np.array([4]), np.array([5])], np.array([3, 4, 5]))
    ranks = rank_points(model, points, (3, 6), batch_size=2, device=torch.device("cpu"))
    np.testing.assert_array_equal(ranks, [2.0, 1.0, 2.0])  # ties do not push a target down
    full = rank_points(model, points, (0, 6), batch_size=2, device=torch.device("cpu"))
    np.testing.assert_array_equal(full, [5.0, 4.0, 5.0])


def _cyclic_task(n_items: int = 8, start: int = 4) -> tuple:
    """Span [start, start + n_items); the next item is always the current one + 1 (mod n)."""
    rng = np.random.default_rng(0)
    seqs = [start + (int(rng.integers(n_items)) + np.arange(10)) % n_items for _ in range(40)]
    valid = EvalSet([s[:6] for s in seqs[:20]], np.array([s[6] for s in seqs[:20]]))
    test = EvalSet([s[:7] for s in seqs[20:]], np.array([s[7] for s in seqs[20:]]))
    span = (start, start + n_items)
    return next_item_rows([s[:6] for s in seqs], 12, span), valid, test, span


@pytest.mark.parametrize("backbone", ["sasrec", "gru4rec"])
def test_both_backbones_learn_a_deterministic_next_item_rule(backbone: str) -> None:
    rows, valid, test, span = _cyclic_task()
    res = train_downstream(
        rows, valid, test, backbone=backbone, n_items=16, train_span=span, eval_span=span, cfg=FAST, seed=1
    )
    assert res.test["HR@10"] == 1.0  # 8 items: every target is in the top 10 anyway
    assert res.test["MRR@10"] > 0.6  # random scores would give about 0.34
    assert 1 <= res.best_epoch <= res.epochs_run <= FAST.epochs
    assert res.test_ranks.shape == (20,) and res.train_positions == 40 * 5


@pytest.mark.parametrize("backbone", ["sasrec", "gru4rec"])
def test_the_same_seed_gives_the_same_numbers(backbone: str) -> None:
    rows, valid, test, span = _cyclic_task()
    cfg = DownstreamConfig(epochs=2, patience=2, lr=1e-2, batch_size=16, max_len=12, hidden=16, n_layers=1)
    kw = dict(backbone=backbone, n_items=16, train_span=span, eval_span=span, cfg=cfg)
    a = train_downstream(rows, valid, test, seed=5, **kw)
    b = train_downstream(rows, valid, test, seed=5, **kw)
    np.testing.assert_array_equal(a.test_ranks, b.test_ranks)
    assert a.test == b.test and a.history == b.history


def test_early_stopping_restores_the_best_validation_epoch() -> None:
    rows, valid, test, span = _cyclic_task()
    cfg = DownstreamConfig(epochs=6, patience=2, lr=1e-2, batch_size=16, max_len=12, hidden=16, n_layers=1)
    res = train_downstream(
        rows, valid, test, backbone="sasrec", n_items=16, train_span=span, eval_span=span, cfg=cfg, seed=0
    )
    best = max(h["NDCG@10"] for h in res.history)
    assert res.valid["NDCG@10"] == pytest.approx(best, abs=1e-5)


def test_unknown_backbones_and_bad_configs_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown backbone"):
        build_model("bert4rec", 5, FAST)
    with pytest.raises(ValueError, match="NDCG@10"):
        DownstreamConfig(ks=(20,))
    with pytest.raises(ValueError):
        DownstreamConfig(epochs=0)
    for lr in (0.0, -1e-3, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="lr"):
            DownstreamConfig(lr=lr)
