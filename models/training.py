"""The training loop shared by Stage I (pretrain.py) and the downstream trainers
(downstream.py), and the full-ranking evaluation both select their best epoch with.

The loop trains on "rows": (inputs, targets) pairs where targets[t] is the softmax
column that position t must predict, or -1 for no loss there. Speed on a CPU comes
from three choices: rows are bucketed by length so batches carry little padding, the
(n, V) logits are computed only for the n positions that have a target, and
evaluation runs under inference_mode.

Memory: the logits of a training batch (positions x items) and the scores of an
evaluation (users x items) are bounded by `logits_budget_mb`. A batch whose logits fit
takes the plain F.cross_entropy path; a larger one (with 128 windows of up to 128
positions, one over more than ~2,000 items per 512 MB of budget) takes
models/losses.py's tiled loss, which gives the same loss and gradients up to float
rounding. Evaluation scores that do not fit are ranked in tiles (metrics.py).

Sequences longer than max_len + 1 are cut into windows of max_len inputs taken
from the end, so every transition is trained exactly once; a window's first
positions then see less context than max_len, which is the price of using all data.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as F

from models.device import resolve_device
from models.distributed import Dist, all_sum, deal
from models.losses import DEFAULT_LOGITS_BUDGET_MB, LOGIT_BYTES, budget_bytes, chunk_shape, linear_cross_entropy
from models.metrics import SCORE_BYTES, rank_of_dot_targets
from models.sasrec import PAD, SASRec

__all__ = [
    "SELECT_METRIC",
    "EarlyStop",
    "EvalSet",
    "LoopConfig",
    "ProgressFn",
    "Rows",
    "batch_loss",
    "build_rows",
    "last_hidden",
    "length_buckets",
    "ranks_in_span",
    "resolve_device",
    "seed_everything",
    "train_epoch",
    "train_steps",
]

# (phase, step, total, info): pretrain's phase is "mixed" or "expert:<domain>" and its step
# counts epochs; the downstream trainers and the evaluation report the same way
ProgressFn = Callable[[str, int, int, dict], None]
SELECT_METRIC = "NDCG@10"


class LoopConfig(Protocol):
    """What the loop reads of a training config (TrainConfig, DownstreamConfig)."""

    @property
    def batch_size(self) -> int: ...

    @property
    def logits_budget_mb(self) -> float: ...


# -- rows: what the loop trains on ---------------------------------------------------


@dataclass(frozen=True)
class Rows:
    inputs: list[np.ndarray]  # dense ids
    targets: list[np.ndarray]  # softmax column per position, -1 = no loss
    lengths: np.ndarray  # (R,)


def _windows(inputs: np.ndarray, targets: np.ndarray, max_len: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Cut (inputs, targets) into windows of <= max_len from the end; skip windows without a target."""
    for end in range(len(inputs), 0, -max_len):
        start = max(0, end - max_len)
        tgt = targets[start:end]
        live = np.flatnonzero(tgt >= 0)
        if live.size:
            # positions after the last target cannot affect the loss (causal), so drop them
            stop = start + int(live[-1]) + 1
            yield inputs[start:stop], targets[start:stop]


def build_rows(train_seqs: Sequence[np.ndarray], max_len: int, targets_of: Callable[[np.ndarray], np.ndarray]) -> Rows:
    """targets_of(seq) -> (len(seq),) targets; the last item is never an input."""
    inputs, targets = [], []
    for seq in train_seqs:
        if len(seq) < 2:
            continue
        tgt = targets_of(seq)[:-1]
        for inp, t in _windows(seq[:-1], tgt, max_len):
            inputs.append(inp)
            targets.append(t)
    return Rows(inputs, targets, np.array([len(x) for x in inputs], dtype=np.int64))


# -- batching ------------------------------------------------------------------------


def _pad(arrays: Sequence[np.ndarray], fill: int, offset: int = 0) -> torch.Tensor:
    """Right-pad 1-D arrays into (B, L_max) int64."""
    out = np.full((len(arrays), max(len(a) for a in arrays)), fill, dtype=np.int64)
    for i, a in enumerate(arrays):
        out[i, : len(a)] = a + offset
    return torch.from_numpy(out)


def length_buckets(lengths: np.ndarray, batch_size: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Batches of row indices with similar lengths (little padding), in random order.

    Rows are shuffled before a stable sort by length, so rows of equal length meet
    different neighbours every epoch; then the batch order is shuffled.
    """
    order = rng.permutation(len(lengths))
    order = order[np.argsort(lengths[order], kind="stable")]
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    return [batches[i] for i in rng.permutation(len(batches))]


# -- training ------------------------------------------------------------------------


def _autocast(device: torch.device) -> torch.autocast:
    # bf16 only on CUDA: CPU bf16 matmuls are slower than fp32 on most CPUs
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA device


def batch_loss(
    model: SASRec,
    tokens: torch.Tensor,
    targets: torch.Tensor,
    start: int,
    end: int,
    budget_mb: float = DEFAULT_LOGITS_BUDGET_MB,
    forward: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> torch.Tensor:
    """Mean cross-entropy over the positions with a target; softmax over items [start, end).

    Logits that fit budget_mb are materialised; larger ones go through the tiled
    linear_cross_entropy, which relies on scores() being hidden @ item_weights().T
    with no bias (true of SASRec and GRU4Rec). forward, when given, replaces model's own
    (a DistributedDataParallel wrapper of it, whose forward arms the gradient all-reduce)."""
    hidden = (forward or model)(tokens)  # (B, L, H)
    live = targets >= 0  # (B, L)
    # gather first: the (n, V) logits matrix is the costliest tensor of the step
    hidden, targets = hidden[live], targets[live]  # (n, H), (n,)
    rows, cols = chunk_shape(len(hidden), end - start, budget_bytes(budget_mb), LOGIT_BYTES)
    if rows >= len(hidden) and cols >= end - start:
        logits = model.scores(hidden, start, end)  # (n, end - start)
        return F.cross_entropy(logits.float(), targets)
    return linear_cross_entropy(hidden, model.item_weights()[start:end], targets, rows, cols)


def train_epoch(
    model: SASRec,
    opt: torch.optim.Optimizer,
    rows: Rows,
    span: tuple[int, int],
    cfg: LoopConfig,
    rng: np.random.Generator,
    device: torch.device,
) -> float:
    """One pass over rows; returns the mean loss per target position."""
    return train_steps(model, opt, rows, span, cfg, rng, device)[0]


def train_steps(
    model: SASRec,
    opt: torch.optim.Optimizer,
    rows: Rows,
    span: tuple[int, int],
    cfg: LoopConfig,
    rng: np.random.Generator,
    device: torch.device,
    limit: int | None = None,
    dist: Dist | None = None,
    forward: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> tuple[float, int]:
    """One epoch over this rank's batches, stopping after `limit` optimiser steps when given;
    returns (mean loss per target position over all ranks, optimiser steps taken).

    The batch list is drawn whole before the cut, so the generator advances as a full
    epoch would."""
    model.train()
    total, count, steps = 0.0, 0, 0
    for idx in deal(length_buckets(rows.lengths, cfg.batch_size, rng), dist)[:limit]:
        tokens = _pad([rows.inputs[i] for i in idx], PAD, offset=1).to(device)  # (B, L) token = id + 1
        targets = _pad([rows.targets[i] for i in idx], -1).to(device)  # (B, L)
        with _autocast(device):
            loss = batch_loss(model, tokens, targets, *span, cfg.logits_budget_mb, forward)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        n = int((targets >= 0).sum())
        total += loss.item() * n
        count += n
        steps += 1
    total, count = all_sum([total, count], dist)
    return total / max(count, 1), steps


# -- evaluation ----------------------------------------------------------------------


@dataclass(frozen=True)
class EvalSet:
    histories: list[np.ndarray]  # last max_len items before the target
    targets: np.ndarray  # (N,) dense ids


@torch.inference_mode()
def last_hidden(model: SASRec, histories: Sequence[np.ndarray], batch_size: int, device: torch.device) -> torch.Tensor:
    """Hidden state after each history's last item, (N, H) float32, in input order."""
    model.eval()
    lengths = np.array([len(h) for h in histories], dtype=np.int64)
    order = np.argsort(lengths, kind="stable")  # similar lengths together: little padding
    out = torch.empty(len(histories), model.cfg.hidden, device=device)
    for i in range(0, len(order), batch_size):
        idx = order[i : i + batch_size]
        tokens = _pad([histories[j] for j in idx], PAD, offset=1).to(device)  # (B, L)
        with _autocast(device):
            hidden = model(tokens)  # (B, L, H)
        last = torch.as_tensor(lengths[idx] - 1, device=device)
        out[torch.as_tensor(idx, device=device)] = hidden[torch.arange(len(idx), device=device), last].float()
    return out


@torch.inference_mode()
def ranks_in_span(
    model: SASRec,
    hidden: torch.Tensor,
    targets: np.ndarray,
    start: int,
    end: int,
    budget_mb: float = DEFAULT_LOGITS_BUDGET_MB,
) -> np.ndarray:
    """Full-ranking rank of each target among items [start, end), (N,) float64, with
    at most budget_mb of scores alive at a time."""
    w = model.item_weights()[start:end].float()  # (C, H)
    rows, cols = chunk_shape(len(hidden), end - start, budget_bytes(budget_mb), SCORE_BYTES)
    return rank_of_dot_targets(hidden, w, torch.as_tensor(targets - start, device=hidden.device), rows, cols)


# -- early stopping ------------------------------------------------------------------


@dataclass
class EarlyStop:
    """Early stopping on a validation score that keeps the best epoch's weights."""

    patience: int
    best: float = float("-inf")
    best_epoch: int = 0
    best_state: dict[str, torch.Tensor] | None = None
    bad: int = 0

    def update(self, epoch: int, score: float, model: SASRec) -> bool:
        """Record an epoch's score; True when training should stop."""
        # strictly better, as RecBole: a tie does not reset patience; the first epoch is
        # always kept so that a NaN score (diverged model) still leaves weights to restore
        if score > self.best or self.best_state is None:
            self.best, self.best_epoch, self.bad = score, epoch, 0
            self.best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        else:
            self.bad += 1
        return self.bad >= self.patience
