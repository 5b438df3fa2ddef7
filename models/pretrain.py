"""Stage I of Taesar: tri-model pretraining (METHOD.md §2).

1. The mixed model: sequence-to-sequence next-item cross-entropy over the whole
   catalogue on every user's train part, Adam, early stopping on validation
   NDCG@10 (full ranking) with the best epoch's weights restored.
2. One expert per domain d: a copy of the best mixed model, adapted for a fixed
   number of epochs on the same mixed inputs with d's loss: at each d-item except
   the user's last one the target is the next d-item (possibly several positions
   ahead), softmax over d's items only.

Both phases run training.py's loop: rows bucketed by length, logits only at the
positions with a target, within `logits_budget_mb`, and evaluation under inference_mode.

`max_steps` caps each phase (the mixed model, each expert) at that many optimiser steps
across epochs; the epoch in which the cap is reached still ends with a full validation.
Given a `Dist`, every phase trains with DistributedDataParallel on this rank's share of
the batches and validates on its share of the points (models/distributed.py); without
one nothing distributed runs.
"""

from __future__ import annotations

import copy
import inspect
import math
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from models.bundle import save_bundle
from models.data import Dataset, eval_points, train_part
from models.distributed import Dist, check_same_data, gather_ranks, rank_seed, shard
from models.losses import DEFAULT_LOGITS_BUDGET_MB, check_budget_mb
from models.metrics import DEFAULT_KS, summarize
from models.sasrec import SASRec, SASRecConfig
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
    train_steps,
)

__all__ = ["PretrainResult", "TrainConfig", "next_in_domain", "pretrain"]


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 200  # max epochs of the mixed model; early stopping usually ends sooner
    patience: int = 10  # epochs without a better validation NDCG@10 before stopping
    adapt_epochs: int = 20  # fixed, as in the released code
    lr: float = 3e-4
    batch_size: int = 128
    eval_batch_size: int = 128  # measured: 512 is 2.5x slower on CPU (attention scores fall out of cache)
    seed: int = 42
    device: str = "auto"  # auto | cpu | cuda
    holdout: int = 1
    ks: tuple[int, ...] = DEFAULT_KS
    # MB for one batch's (positions x items) logits and one evaluation tile's scores
    logits_budget_mb: float = DEFAULT_LOGITS_BUDGET_MB
    max_steps: int | None = None  # optimiser steps per phase (mixed, each expert); None = no cap

    def __post_init__(self) -> None:
        if self.device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"device must be auto, cpu or cuda, got {self.device!r}")
        check_budget_mb("logits_budget_mb", self.logits_budget_mb)
        positive = ("epochs", "patience", "batch_size", "eval_batch_size", "holdout")
        bad = [n for n in positive if getattr(self, n) < 1] + (["adapt_epochs"] if self.adapt_epochs < 0 else [])
        if self.max_steps is not None and not (isinstance(self.max_steps, int) and self.max_steps >= 1):
            bad.append("max_steps")
        if bad or not (math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"TrainConfig values out of range: {bad or ['lr']}")

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> TrainConfig:
        """The config a bundle's manifest records under "training" (which also holds the
        run's history and timings: keys that are not fields are ignored)."""
        fields = {k: d[k] for k in cls.__dataclass_fields__ if k in d}
        if "ks" in fields:
            fields["ks"] = tuple(fields["ks"])
        return cls(**fields)


SAMPLE_USERS = 100  # users whose training parts a bundle keeps as samples


def sample_users(dataset: Dataset, holdout: int, n: int = SAMPLE_USERS) -> list[tuple[str, list[str]]]:
    """Up to `n` users spread evenly over the dataset's user order, each with the training
    part of its sequence (no validation or test item) in external ids; users whose
    training part has fewer than 2 items are skipped."""
    cat = dataset.catalogue
    step = max(len(dataset.user_ids) / n, 1.0)
    picked = sorted({int(k * step) for k in range(n) if int(k * step) < len(dataset.user_ids)})
    out = []
    for u in picked:
        part = train_part(np.asarray(dataset.sequences[u]), holdout)
        if len(part) >= 2:
            out.append((dataset.user_ids[u], [cat.external(int(i)) for i in part]))
    return out


@dataclass
class PretrainResult:
    mixed: SASRec
    experts: dict[str, SASRec]
    metrics: dict[str, Any]  # {"mixed": {...}, "domains": {d: {"mixed": {...}, "expert": {...}}}}
    model_config: SASRecConfig
    config: TrainConfig
    epochs_run: int
    best_epoch: int
    timings: dict[str, float]  # seconds per phase
    history: list[dict[str, float]] = field(default_factory=list)  # one entry per mixed epoch
    steps: dict[str, int] = field(default_factory=dict)  # optimiser steps per phase
    dist: Dist | None = None  # the process group that trained these models, if any

    def save(self, path: str | Path, dataset: Dataset) -> Path:
        """Write these models as a bundle for `dataset` (its catalogue and fingerprint, and
        the training parts of up to SAMPLE_USERS of its users as samples)."""
        return save_bundle(
            path,
            catalogue=dataset.catalogue,
            model_config=self.model_config,
            mixed=self.mixed,
            experts=self.experts,
            data_fingerprint=dataset.fingerprint,
            metrics=self.metrics,
            training=self.training,
            samples=sample_users(dataset, self.config.holdout),
        )

    @property
    def training(self) -> dict[str, Any]:
        """What a bundle records about how its models were trained."""
        record: dict[str, Any] = {
            **asdict(self.config),
            "ks": list(self.config.ks),
            "epochs_run": self.epochs_run,
            "best_epoch": self.best_epoch,
            "timings_s": {k: round(v, 2) for k, v in self.timings.items()},
            "history": self.history,
        }
        # added only where they say something, so a plain run records what it always did
        if self.config.max_steps is not None:
            record["steps"] = dict(self.steps)
        if self.dist is not None:
            record |= {"world_size": self.dist.world_size, "backend": self.dist.backend}
        return record


# -- rows: the mixed model's and the experts' targets ---------------------------------


def next_in_domain(seq: np.ndarray, in_domain: np.ndarray) -> np.ndarray:
    """Expert targets of one sequence: at each d-item, the next d-item of the sequence.

    in_domain (L,) bool marks d-items. Returns (L,) with -1 where seq[t] is not in d
    and at the last d-item (nothing left to predict). Vectorised: consecutive
    d-positions p_i < p_{i+1} give target[p_i] = seq[p_{i+1}].
    """
    out = np.full(len(seq), -1, dtype=np.int64)
    pos = np.flatnonzero(in_domain)
    out[pos[:-1]] = seq[pos[1:]]
    return out


def mixed_rows(train_seqs: Sequence[np.ndarray], max_len: int) -> Rows:
    return build_rows(train_seqs, max_len, lambda s: np.append(s[1:], -1))


def expert_rows(train_seqs: Sequence[np.ndarray], max_len: int, start: int, end: int) -> Rows:
    """Domain [start, end)'s rows: next-d-item targets as columns of d's own softmax (id - start)."""

    def targets_of(seq: np.ndarray) -> np.ndarray:
        tgt = next_in_domain(seq, (seq >= start) & (seq < end))
        return np.where(tgt >= 0, tgt - start, -1)

    return build_rows(train_seqs, max_len, targets_of)


# -- how a phase trains: through DDP or not, within the step cap ----------------------


def _wrap(model: SASRec, device: torch.device, dist: Dist | None) -> Callable[[torch.Tensor], torch.Tensor]:
    """The forward to train through: model itself, or a DDP wrapper that averages gradients.

    The causal-mask buffer is a constant, so DDP need not broadcast buffers every step
    (newer torch calls the flag forward_sync_buffers, older torch only broadcast_buffers)."""
    if dist is None:
        return model
    from torch.nn.parallel import DistributedDataParallel

    ids = [device.index] if device.type == "cuda" else None
    params = inspect.signature(DistributedDataParallel).parameters
    no_sync = {"forward_sync_buffers" if "forward_sync_buffers" in params else "broadcast_buffers": False}
    return DistributedDataParallel(model, device_ids=ids, **no_sync)


def _steps_left(cap: int | None, taken: int) -> int | None:
    return None if cap is None else cap - taken


# -- evaluation ----------------------------------------------------------------------


def make_eval_set(sequences: Sequence[np.ndarray], split: str, holdout: int, max_len: int) -> EvalSet:
    # a point with an empty history cannot be scored by a causal model: leave it out
    points = [p for p in eval_points(sequences, split=split, holdout=holdout) if len(p.history)]
    return EvalSet(
        [np.asarray(p.history[-max_len:], dtype=np.int64) for p in points],
        np.array([int(p.target) for p in points], dtype=np.int64),
    )


def _shared_ranks(
    model: SASRec,
    histories: Sequence[np.ndarray],
    targets: np.ndarray,
    span: tuple[int, int],
    cfg: TrainConfig,
    device: torch.device,
    dist: Dist | None,
) -> np.ndarray:
    """Ranks of all points, (N,) float64 in point order, this rank scoring its shard only."""
    mine = shard(len(targets), dist)
    hidden = last_hidden(model, [histories[i] for i in mine], cfg.eval_batch_size, device)  # (n, H)
    ranks = ranks_in_span(model, hidden, targets[mine], *span, cfg.logits_budget_mb)  # (n,)
    return gather_ranks(ranks, len(targets), dist)


def evaluate_mixed(
    model: SASRec, valid: EvalSet, cfg: TrainConfig, device: torch.device, dist: Dist | None = None
) -> dict[str, float]:
    ranks = _shared_ranks(model, valid.histories, valid.targets, (0, model.cfg.n_items), cfg, device, dist)
    return summarize(ranks, cfg.ks)


def evaluate_domain(
    model: SASRec,
    valid: EvalSet,
    span: tuple[int, int],
    cfg: TrainConfig,
    device: torch.device,
    dist: Dist | None = None,
) -> dict[str, float]:
    """Points whose target lies in the domain, ranked over the domain's items only."""
    start, end = span
    keep = np.flatnonzero((valid.targets >= start) & (valid.targets < end))
    histories = [valid.histories[i] for i in keep]
    return summarize(_shared_ranks(model, histories, valid.targets[keep], span, cfg, device, dist), cfg.ks)


# -- the two phases ------------------------------------------------------------------


def fit_mixed(
    model: SASRec,
    rows: Rows,
    valid: EvalSet,
    cfg: TrainConfig,
    device: torch.device,
    progress: ProgressFn | None,
    dist: Dist | None = None,
) -> tuple[int, int, list[dict[str, float]], int]:
    """Train with early stopping, restore the best weights; returns (epochs run, best epoch,
    history, optimiser steps). Reaching cfg.max_steps ends training after that epoch's validation."""
    forward = _wrap(model, device, dist)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    rng = np.random.default_rng([cfg.seed, 0])
    stop, history, epoch, steps = EarlyStop(cfg.patience), [], 0, 0
    span = (0, model.cfg.n_items)
    for epoch in range(1, cfg.epochs + 1):
        left = _steps_left(cfg.max_steps, steps)
        loss, taken = train_steps(model, opt, rows, span, cfg, rng, device, left, dist, forward)
        steps += taken
        # every rank gets the same score (gathered ranks), hence the same decision
        score = evaluate_mixed(model, valid, cfg, device, dist)[SELECT_METRIC]
        done = stop.update(epoch, score, model) or _steps_left(cfg.max_steps, steps) == 0
        history.append({"epoch": epoch, "loss": round(loss, 5), SELECT_METRIC: round(score, 5)})
        if progress:
            info = {"loss": loss, SELECT_METRIC: score, "best": stop.best, "best_epoch": stop.best_epoch}
            progress("mixed", epoch, epoch if done else cfg.epochs, info)
        if done:
            break
    assert stop.best_state is not None
    model.load_state_dict(stop.best_state)
    return epoch, stop.best_epoch, history, steps


def adapt_expert(
    mixed: SASRec,
    rows: Rows,
    span: tuple[int, int],
    phase: str,
    seed: tuple[int, int],
    cfg: TrainConfig,
    device: torch.device,
    progress: ProgressFn | None,
    on_epoch: Callable[[int, float, SASRec], None] | None = None,
    dist: Dist | None = None,
) -> SASRec:
    """Copy the mixed model and train it adapt_epochs on one domain's loss (no early stopping).

    on_epoch(epoch, loss, expert) sees the expert after every epoch, e.g. to score it on
    validation (docs/results/ml100k/tools/adaptation_curve.py); scoring under
    inference_mode draws no random numbers, so it leaves the trajectory unchanged."""
    return _adapt(mixed, rows, span, phase, seed, cfg, device, progress, on_epoch, dist)[0]


def _adapt(
    mixed: SASRec,
    rows: Rows,
    span: tuple[int, int],
    phase: str,
    seed: tuple[int, int],
    cfg: TrainConfig,
    device: torch.device,
    progress: ProgressFn | None,
    on_epoch: Callable[[int, float, SASRec], None] | None,
    dist: Dist | None,
) -> tuple[SASRec, int]:
    """adapt_expert, also returning the optimiser steps taken (at most cfg.max_steps)."""
    expert = copy.deepcopy(mixed)
    # dropout masks depend on (seed, domain) only, not on the order experts are trained in
    torch.manual_seed(rank_seed(seed, dist))
    forward = _wrap(expert, device, dist) if rows.inputs else expert
    opt = torch.optim.Adam(expert.parameters(), lr=cfg.lr)
    rng = np.random.default_rng(list(seed))
    steps = 0
    for epoch in range(1, cfg.adapt_epochs + 1):
        loss = float("nan")
        if rows.inputs:
            left = _steps_left(cfg.max_steps, steps)
            loss, taken = train_steps(expert, opt, rows, span, cfg, rng, device, left, dist, forward)
            steps += taken
        done = _steps_left(cfg.max_steps, steps) == 0
        if progress:
            progress(phase, epoch, epoch if done else cfg.adapt_epochs, {"loss": loss})
        if on_epoch:
            on_epoch(epoch, loss, expert)
        if done:
            break
    return expert.eval(), steps


def pretrain(
    dataset: Dataset,
    config: TrainConfig | None = None,
    *,
    model_config: SASRecConfig | None = None,
    progress: ProgressFn | None = None,
    dist: Dist | None = None,
) -> PretrainResult:
    """Stage I: the mixed model, then one expert per domain, with validation metrics.

    With dist, this process is one rank of an initialised process group and every rank
    must call pretrain with the same dataset and configs; every rank returns the same
    models and metrics."""
    cfg = config or TrainConfig()
    cat = dataset.catalogue
    mcfg = model_config or SASRecConfig(n_items=cat.n_items)
    if mcfg.n_items != cat.n_items:
        raise ValueError(f"model_config.n_items={mcfg.n_items} but the catalogue has {cat.n_items} items")
    device, timings = resolve_device(cfg.device, dist), {}
    check_same_data(dataset.fingerprint, dist)
    with _timed(timings, "prepare"):
        train_seqs = [train_part(np.asarray(s, dtype=np.int64), cfg.holdout) for s in dataset.sequences]
        valid = make_eval_set(dataset.sequences, "valid", cfg.holdout, mcfg.max_len)
        rows = mixed_rows(train_seqs, mcfg.max_len)
    seed_everything(cfg.seed)
    mixed = SASRec(mcfg).to(device)
    if dist is not None and dist.rank > 0:
        torch.manual_seed(rank_seed((cfg.seed, 0), dist))
    with _timed(timings, "mixed"):
        epochs_run, best_epoch, history, steps = fit_mixed(mixed, rows, valid, cfg, device, progress, dist)
    experts, phase_steps = {}, {"mixed": steps}
    for k, name in enumerate(cat.domains):
        phase = f"expert:{name}"
        with _timed(timings, phase):
            span = cat.domain_range(k)
            d_rows = expert_rows(train_seqs, mcfg.max_len, *span)
            experts[name], phase_steps[phase] = _adapt(
                mixed, d_rows, span, phase, (cfg.seed, k + 1), cfg, device, progress, None, dist
            )
    with _timed(timings, "evaluate"):
        metrics = validation_metrics(mixed, experts, valid, cat, cfg, device, dist)
    timings["total"] = sum(timings.values())
    return PretrainResult(
        mixed.eval(), experts, metrics, mcfg, cfg, epochs_run, best_epoch, timings, history, phase_steps, dist
    )


@contextmanager
def _timed(timings: dict[str, float], key: str) -> Iterator[None]:
    started = time.perf_counter()
    yield
    timings[key] = time.perf_counter() - started


def validation_metrics(
    mixed: SASRec,
    experts: dict[str, SASRec],
    valid: EvalSet,
    catalogue: Any,
    cfg: TrainConfig,
    device: torch.device,
    dist: Dist | None = None,
) -> dict[str, Any]:
    """Mixed on all valid points; per domain, the mixed model and the expert on the same
    points (target in d, ranked over d's items), so the effect of adaptation is visible."""
    domains = {}
    for k, name in enumerate(catalogue.domains):
        span = catalogue.domain_range(k)
        domains[name] = {
            "mixed": evaluate_domain(mixed, valid, span, cfg, device, dist),
            "expert": evaluate_domain(experts[name], valid, span, cfg, device, dist),
        }
    return {"split": "valid", "mixed": evaluate_mixed(mixed, valid, cfg, device, dist), "domains": domains}
