"""Leave-N-out splits (METHOD.md §4): each user's last N positions are test points, the N
before them valid points, and the prefix before those the training part."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from models.catalogue import Catalogue
from models.errors import DataError

Split = Literal["valid", "test"]


@dataclass(frozen=True)
class EvalPoint:
    user: int  # index into Dataset.user_ids
    history: np.ndarray
    target: int


def train_part(seq: np.ndarray, holdout: int = 1) -> np.ndarray:
    """The prefix left for training: s[:len - 2N] (N valid and N test targets held out)."""
    return seq[: max(len(seq) - 2 * holdout, 0)]


def _positions(n: int, split: Split, holdout: int) -> range:
    if split == "test":
        return range(max(n - holdout, 1), n)
    if split == "valid":
        return range(max(n - 2 * holdout, 1), max(n - holdout, 1))
    raise DataError(f"unknown split {split!r}; use 'valid' or 'test'")


def eval_points(sequences: list[np.ndarray], split: Split, holdout: int = 1) -> list[EvalPoint]:
    """Mixed-sequence points: history s[:p] -> target s[p] for the split's N positions."""
    return [
        EvalPoint(u, seq[:p], int(seq[p]))
        for u, seq in enumerate(sequences)
        for p in _positions(len(seq), split, holdout)
    ]


def domain_eval_points(
    sequences: list[np.ndarray], catalogue: Catalogue, domain: str, split: Split, holdout: int = 1
) -> list[EvalPoint]:
    """Points whose target is a `domain` item; the history keeps only that domain's items."""
    a, b = catalogue.domain_range(domain)
    points = []
    for u, seq in enumerate(sequences):
        for p in _positions(len(seq), split, holdout):
            if a <= seq[p] < b:
                hist = seq[:p]
                hist = hist[(hist >= a) & (hist < b)]
                if len(hist):
                    points.append(EvalPoint(u, hist, int(seq[p])))
    return points


def domain_train_sequences(
    sequences: list[np.ndarray], catalogue: Catalogue, domain: str, holdout: int = 1
) -> list[np.ndarray]:
    """Each user's train part filtered to `domain`, kept when at least 2 items remain."""
    a, b = catalogue.domain_range(domain)
    out = []
    for seq in sequences:
        part = train_part(seq, holdout)
        part = part[(part >= a) & (part < b)]
        if len(part) >= 2:
            out.append(part)
    return out
