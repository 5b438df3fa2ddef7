"""Full-ranking metrics on hand-computed rankings."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from models.metrics import hit_at_k, mrr_at_k, ndcg_at_k, rank_of_targets, summarize


def test_rank_counts_only_strictly_higher_candidates() -> None:
    scores = torch.tensor([[0.1, 0.5, 0.3, 0.9], [4.0, 3.0, 2.0, 1.0]])
    ranks = rank_of_targets(scores, torch.tensor([2, 3]))
    np.testing.assert_array_equal(ranks, [3.0, 4.0])


def test_ties_do_not_push_the_target_down() -> None:
    scores = torch.tensor([[1.0, 1.0, 1.0], [2.0, 1.0, 1.0]])
    np.testing.assert_array_equal(rank_of_targets(scores, torch.tensor([1, 2])), [1.0, 2.0])


def test_unrankable_targets_are_misses() -> None:
    scores = torch.tensor([[0.0, -math.inf, 1.0], [0.0, math.nan, 1.0]])
    ranks = rank_of_targets(scores, torch.tensor([1, 1]))
    assert np.isinf(ranks).all()
    assert summarize(ranks, ks=(10,)) == {"HR@10": 0.0, "NDCG@10": 0.0, "MRR@10": 0.0, "n": 2}


def test_nan_candidates_never_outrank_the_target() -> None:
    scores = torch.tensor([[math.nan, 0.2, 0.1]])
    np.testing.assert_array_equal(rank_of_targets(scores, torch.tensor([2])), [2.0])


def test_accepts_numpy_inputs() -> None:
    np.testing.assert_array_equal(rank_of_targets(np.array([[0.3, 0.2]]), np.array([1])), [2.0])


def test_per_point_metrics_follow_their_formulas() -> None:
    ranks = np.array([1.0, 3.0, 10.0, 11.0, np.inf])
    np.testing.assert_array_equal(hit_at_k(ranks, 10), [1, 1, 1, 0, 0])
    np.testing.assert_allclose(ndcg_at_k(ranks, 10), [1.0, 0.5, 1 / math.log2(11), 0.0, 0.0])
    np.testing.assert_allclose(mrr_at_k(ranks, 10), [1.0, 1 / 3, 0.1, 0.0, 0.0])
    np.testing.assert_array_equal(hit_at_k(ranks, 5), [1, 1, 0, 0, 0])


def test_summary_averages_every_metric_at_every_k() -> None:
    ranks = np.array([1.0, 3.0, 7.0, 25.0])
    out = summarize(ranks, ks=(5, 20))
    assert set(out) == {"HR@5", "HR@20", "NDCG@5", "NDCG@20", "MRR@5", "MRR@20", "n"}
    assert out["HR@5"] == pytest.approx(0.5)
    assert out["HR@20"] == pytest.approx(0.75)
    assert out["NDCG@20"] == pytest.approx((1 + 0.5 + 1 / 3) / 4)
    assert out["MRR@5"] == pytest.approx((1 + 1 / 3) / 4)
    assert out["n"] == 4


def test_summary_of_no_points_is_zero_with_n_zero() -> None:
    out = summarize(np.zeros(0))
    assert out["n"] == 0
    assert out["NDCG@10"] == 0.0
    assert {"HR@5", "HR@10", "HR@20", "HR@50"} <= set(out)
