"""What one evaluation fixes: its configuration, each target's valid and test points
(leave-N-out, METHOD.md §4), and the check that a bundle never saw those points."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from models.catalogue import Catalogue
from models.data import Dataset, domain_eval_points
from models.downstream import BACKBONES, DownstreamConfig, eval_set
from models.errors import DataError
from models.evaluation.variants import DECODED, VARIANTS
from models.training import EvalSet


@dataclass(frozen=True)
class EvalConfig:
    targets: tuple[str, ...]
    backbones: tuple[str, ...] = ("sasrec",)
    variants: tuple[str, ...] = ("sim", "full", "new", "random")
    seeds: tuple[int, ...] = (0,)
    holdout: int = 1
    downstream: DownstreamConfig = field(default_factory=DownstreamConfig)
    min_test_points: int = 500  # comparisons on fewer test points are flagged
    n_boot: int = 2000
    data_seed: int = 0  # the random baselines' draws
    jobs: int = 1  # downstream trainings run at once, each in its own process when > 1
    job_threads: int = 1  # torch threads of each such process

    def __post_init__(self) -> None:
        unknown = [v for v in self.variants if v not in VARIANTS]
        if unknown:
            raise DataError(f"unknown variant(s) {unknown}; choose from {', '.join(VARIANTS)}")
        bad = [b for b in self.backbones if b not in BACKBONES]
        if bad:
            raise DataError(f"unknown backbone(s) {bad}; choose from {', '.join(BACKBONES)}")
        if not self.targets or not self.backbones or not self.variants or not self.seeds:
            raise DataError("choose at least one target, backbone, variant and seed")
        if self.holdout < 1 or self.n_boot < 100:
            raise DataError("holdout must be >= 1 and n_boot >= 100")
        if self.jobs < 1 or self.job_threads < 1:
            raise DataError("jobs and job_threads must be at least 1")

    @property
    def needs_decoding(self) -> bool:
        return any(v in DECODED for v in self.variants)


@dataclass(frozen=True)
class DomainSplit:
    target: str
    span: tuple[int, int]  # T's dense ids [start, end)
    valid: EvalSet
    test: EvalSet
    test_users: np.ndarray  # (N,) user index of each test point


def domain_split(sequences: Sequence[np.ndarray], catalogue: Catalogue, target: str, holdout: int, max_len: int):
    """T's valid and test points (METHOD.md §4, leave-N-out), histories cut to max_len."""
    test = domain_eval_points(list(sequences), catalogue, target, "test", holdout)
    valid = domain_eval_points(list(sequences), catalogue, target, "valid", holdout)
    return DomainSplit(
        target,
        catalogue.domain_range(target),
        eval_set(valid, max_len),
        eval_set(test, max_len),
        np.array([p.user for p in test], dtype=np.int64),
    )


def check_bundle(manifest: dict[str, Any], dataset: Dataset, holdout: int) -> None:
    """Refuse a bundle whose models saw this protocol's valid/test positions: a bundle
    trained with holdout h used s[:len-2h], which is leak-free for holdout N <= h only."""
    if manifest.get("data_fingerprint") != dataset.fingerprint:
        raise DataError("the bundle was not trained on this dataset (data fingerprints differ)")
    trained = int(manifest.get("training", {}).get("holdout", 0))
    if trained < holdout:
        raise DataError(
            f"the bundle was trained with holdout {trained}, so its models saw positions that holdout {holdout} "
            f"evaluates; train a bundle for it with `taesar pretrain --holdout {holdout}` (or prepare the data "
            f"with `taesar data ... --holdout {holdout}`, or let `taesar pipeline --holdout {holdout}` pretrain)"
        )
