"""Downstream single-domain recommenders that judge a training set (METHOD.md §4).

Two backbones, SASRec (models/sasrec.py) and GRU4Rec (below), trained the standard
way: sequence-to-sequence next-item cross-entropy with a full softmax over a span of
dense ids, Adam, early stopping on validation NDCG@10 with the best epoch restored.
Models keep the catalogue's dense ids (V embeddings) so that one code path serves
the target-only sets (softmax over the target's span) and the mixed `full` set
(softmax over all V items, scores restricted to the target's span at evaluation).

The loop is training.py's, shared with Stage I: rows bucketed by length, logits only at positions with
a target, evaluation under inference_mode. Everything is seeded, so the same
training set, config and seed give the same numbers.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from models.losses import DEFAULT_LOGITS_BUDGET_MB, LOGIT_BYTES, budget_bytes, check_budget_mb
from models.metrics import SCORE_BYTES, summarize
from models.sasrec import PAD, SASRec, SASRecConfig
from models.training import (
    SELECT_METRIC,
    EarlyStop,
    EvalSet,
    ProgressFn,
    Rows,
    build_rows,
    last_hidden,
    ranks_in_span,
    resolve_device,
    seed_everything,
    train_epoch,
)

__all__ = [
    "BACKBONES",
    "DownstreamConfig",
    "DownstreamResult",
    "GRU4Rec",
    "GRU4RecConfig",
    "build_model",
    "eval_set",
    "next_item_rows",
    "rank_points",
    "train_downstream",
]

Backbone = Literal["sasrec", "gru4rec"]
BACKBONES: tuple[str, ...] = ("sasrec", "gru4rec")


# -- GRU4Rec ---------------------------------------------------------------------------


@dataclass(frozen=True)
class GRU4RecConfig:
    """RecBole's GRU4Rec defaults: 64-d embeddings, one GRU layer of 128, dropout 0.3."""

    n_items: int
    max_len: int = 128
    hidden: int = 64  # embedding size; also the size of the output the scores are taken from
    gru_hidden: int = 128
    n_layers: int = 1
    dropout: float = 0.3


class GRU4Rec(nn.Module):
    """Embedding -> dropout -> GRU -> linear back to the embedding size; scores are dot
    products with the tied item embeddings. Same interface as SASRec: token = id + 1,
    right padding (a GRU is causal, so real positions never see the padding)."""

    def __init__(self, cfg: GRU4RecConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.item_emb = nn.Embedding(cfg.n_items + 1, cfg.hidden, padding_idx=PAD)
        self.drop = nn.Dropout(cfg.dropout)
        self.gru = nn.GRU(cfg.hidden, cfg.gru_hidden, cfg.n_layers, batch_first=True, bias=False)
        self.dense = nn.Linear(cfg.gru_hidden, cfg.hidden)
        nn.init.xavier_normal_(self.item_emb.weight)
        with torch.no_grad():
            self.item_emb.weight[PAD].zero_()
        for name, p in self.gru.named_parameters():
            if "weight" in name:
                nn.init.xavier_uniform_(p)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens (B, L) -> (B, L, H)."""
        x = self.drop(self.item_emb(tokens))  # (B, L, H)
        out, _ = self.gru(x)  # (B, L, G)
        return self.dense(out)  # (B, L, H)

    def item_weights(self) -> torch.Tensor:
        return self.item_emb.weight[1:]

    def scores(self, hidden: torch.Tensor, start: int = 0, end: int | None = None) -> torch.Tensor:
        return hidden @ self.item_weights()[start:end].T


# -- config and result -----------------------------------------------------------------


@dataclass(frozen=True)
class DownstreamConfig:
    """Paper hyper-parameters (METHOD.md §2) for SASRec; RecBole defaults for GRU4Rec."""

    epochs: int = 200
    patience: int = 10
    lr: float = 3e-4
    batch_size: int = 128
    eval_batch_size: int = 128
    max_len: int = 128
    device: str = "cpu"
    ks: tuple[int, ...] = (10, 20)
    # model size; None keeps the backbone's default (SASRec 128 / 2 layers, GRU4Rec 64 / 1 layer)
    hidden: int | None = None
    n_layers: int | None = None
    # MB for one batch's (positions x items) logits and one evaluation tile's scores
    logits_budget_mb: float = DEFAULT_LOGITS_BUDGET_MB

    def __post_init__(self) -> None:
        bad = [n for n in ("epochs", "patience", "batch_size", "eval_batch_size", "max_len") if getattr(self, n) < 1]
        if bad or not (math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"DownstreamConfig values out of range: {bad or ['lr']}")
        if 10 not in self.ks:
            raise ValueError("ks must include 10: model selection uses validation NDCG@10")
        check_budget_mb("logits_budget_mb", self.logits_budget_mb)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ks": list(self.ks)}

    def budget_matters(self, train_width: int, eval_scores: int) -> bool:
        """Whether logits_budget_mb can change a number of a training whose softmax spans
        train_width items and whose largest evaluation ranks eval_scores (points x items):
        only when a batch's logits or the evaluation's scores can exceed it, since then
        they are computed in tiles (whose float rounding may differ)."""
        budget = budget_bytes(self.logits_budget_mb)
        batch_logits = self.batch_size * self.max_len * train_width
        return batch_logits * LOGIT_BYTES > budget or eval_scores * SCORE_BYTES > budget

    def fingerprint_dict(self, train_width: int, eval_scores: int) -> dict[str, Any]:
        """to_dict() less logits_budget_mb where it cannot change a number (budget_matters)."""
        d = self.to_dict()
        if not self.budget_matters(train_width, eval_scores):
            del d["logits_budget_mb"]
        return d


@dataclass
class DownstreamResult:
    valid: dict[str, float]  # metrics of the restored (best) model
    test: dict[str, float]
    test_ranks: np.ndarray  # (N,) rank of every test point, in eval-set order (+inf = miss)
    best_epoch: int
    epochs_run: int
    train_rows: int
    train_positions: int
    seconds: float
    history: list[dict[str, float]] = field(default_factory=list)


def build_model(backbone: str, n_items: int, cfg: DownstreamConfig) -> nn.Module:
    size: dict[str, int] = {"n_layers": cfg.n_layers} if cfg.n_layers else {}
    if backbone == "sasrec":
        if cfg.hidden:
            size |= {"hidden": cfg.hidden, "inner": cfg.hidden}
        return SASRec(SASRecConfig(n_items=n_items, max_len=cfg.max_len, **size))
    if backbone == "gru4rec":
        if cfg.hidden:
            size |= {"hidden": cfg.hidden, "gru_hidden": 2 * cfg.hidden}
        return GRU4Rec(GRU4RecConfig(n_items=n_items, max_len=cfg.max_len, **size))
    raise ValueError(f"unknown backbone {backbone!r}; choose from {', '.join(BACKBONES)}")


# -- data ------------------------------------------------------------------------------


def next_item_rows(sequences: Sequence[np.ndarray], max_len: int, span: tuple[int, int]) -> Rows:
    """Sequence-to-sequence rows: position t predicts item t+1 as a column of the span's
    softmax (id - start). Items outside the span are inputs only (no loss on them)."""
    start, end = span

    def targets_of(seq: np.ndarray) -> np.ndarray:
        nxt = np.append(seq[1:], -1)
        return np.where((nxt >= start) & (nxt < end), nxt - start, -1)

    return build_rows(sequences, max_len, targets_of)


def eval_set(points: Sequence[Any], max_len: int) -> EvalSet:
    """EvalPoints (history, target) -> EvalSet; histories cut to the last max_len items."""
    return EvalSet(
        [np.asarray(p.history[-max_len:], dtype=np.int64) for p in points],
        np.array([int(p.target) for p in points], dtype=np.int64),
    )


# -- training --------------------------------------------------------------------------


@torch.inference_mode()
def rank_points(
    model: nn.Module,
    points: EvalSet,
    span: tuple[int, int],
    batch_size: int,
    device: torch.device,
    budget_mb: float = DEFAULT_LOGITS_BUDGET_MB,
) -> np.ndarray:
    """Full-ranking rank of each target among the span's items, (N,) float64."""
    if not len(points.targets):
        return np.zeros(0)
    hidden = last_hidden(model, points.histories, batch_size, device)  # (N, H)
    return ranks_in_span(model, hidden, points.targets, *span, budget_mb)


# past the data every argument is keyword-only and names one fact of the training, which
# reads better at the call than a bundle of them would
def train_downstream(  # noqa: PLR0913
    rows: Rows,
    valid: EvalSet,
    test: EvalSet,
    *,
    backbone: str,
    n_items: int,
    train_span: tuple[int, int],
    eval_span: tuple[int, int],
    cfg: DownstreamConfig,
    seed: int,
    phase: str = "train",
    progress: ProgressFn | None = None,
) -> DownstreamResult:
    """Train on rows (targets are columns of train_span), select on valid NDCG@10 over
    eval_span, and rank the test points with the restored best model."""
    started = time.perf_counter()
    device = resolve_device(cfg.device)
    seed_everything(seed)
    model = build_model(backbone, n_items, cfg).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    rng = np.random.default_rng([seed, 1])
    stop, history, epoch = EarlyStop(cfg.patience), [], 0
    for epoch in range(1, cfg.epochs + 1):
        loss = train_epoch(model, opt, rows, train_span, cfg, rng, device) if rows.inputs else float("nan")  # type: ignore[arg-type]
        ranks = rank_points(model, valid, eval_span, cfg.eval_batch_size, device, cfg.logits_budget_mb)
        score = summarize(ranks, cfg.ks)[SELECT_METRIC]
        done = stop.update(epoch, score, model)  # type: ignore[arg-type]
        history.append({"epoch": epoch, "loss": round(loss, 5), SELECT_METRIC: round(score, 5)})
        if progress:
            progress(
                phase, epoch, epoch if done else cfg.epochs, {"loss": loss, SELECT_METRIC: score, "best": stop.best}
            )
        if done:
            break
    assert stop.best_state is not None
    model.load_state_dict(stop.best_state)
    valid_ranks = rank_points(model, valid, eval_span, cfg.eval_batch_size, device, cfg.logits_budget_mb)
    test_ranks = rank_points(model, test, eval_span, cfg.eval_batch_size, device, cfg.logits_budget_mb)
    return DownstreamResult(
        valid=summarize(valid_ranks, cfg.ks),
        test=summarize(test_ranks, cfg.ks),
        test_ranks=test_ranks,
        best_epoch=stop.best_epoch,
        epochs_run=epoch,
        train_rows=len(rows.inputs),
        train_positions=int(sum(int((t >= 0).sum()) for t in rows.targets)),
        seconds=time.perf_counter() - started,
        history=history,
    )
