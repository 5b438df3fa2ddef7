"""The report's numbers beyond the raw metrics: 95% percentile-bootstrap CIs over test
points, paired bootstraps of one variant against another per point (fixed seeds, so
reports repeat), and statistics of the regenerated data itself."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from models.catalogue import Catalogue
from models.decoding import Regenerated
from models.metrics import hit_at_k, mrr_at_k, ndcg_at_k

METRICS: tuple[str, ...] = ("HR@10", "NDCG@10", "MRR@10", "HR@20", "NDCG@20", "MRR@20")
_PER_POINT = {"HR": hit_at_k, "NDCG": ndcg_at_k, "MRR": mrr_at_k}


def point_metric(ranks: np.ndarray, metric: str) -> np.ndarray:
    """'NDCG@10' -> the per-point values (N,) of that metric for these ranks."""
    name, k = metric.split("@")
    return _PER_POINT[name](np.asarray(ranks, dtype=np.float64), int(k))


def _boot_index(n: int, n_boot: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, n, size=(n_boot, n))  # (B, n)


def mean_ci(values: np.ndarray, n_boot: int = 2000, seed: int = 0) -> tuple[float, float]:
    """95% percentile-bootstrap CI of the mean of per-point values."""
    values = np.asarray(values, dtype=np.float64)
    if values.size == 0:
        return (math.nan, math.nan)
    means = values[_boot_index(values.size, n_boot, seed)].mean(axis=1)  # (B,)
    lo, hi = np.quantile(means, [0.025, 0.975])
    return float(lo), float(hi)


def paired_bootstrap(a: np.ndarray, b: np.ndarray, n_boot: int = 2000, seed: int = 0) -> dict[str, Any]:
    """Paired bootstrap over points of mean(a - b): the difference, its 95% CI and a
    two-sided p-value (twice the smaller tail share of resampled means beyond 0,
    with the +1 correction so that p is never 0)."""
    d = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    if d.size == 0:
        return {"delta": math.nan, "ci95": [math.nan, math.nan], "p": math.nan}
    means = d[_boot_index(d.size, n_boot, seed)].mean(axis=1)  # (B,)
    tail = min((means <= 0).sum(), (means >= 0).sum())
    p = min(1.0, 2 * (tail + 1) / (n_boot + 1))
    lo, hi = np.quantile(means, [0.025, 0.975])
    return {"delta": float(d.mean()), "ci95": [float(lo), float(hi)], "p": float(p)}


def summarize_results(
    results: Sequence[dict[str, Any]],
    ranks: dict[tuple[str, str, str, int], np.ndarray],
    *,
    n_boot: int = 2000,
    min_test_points: int = 500,
) -> list[dict[str, Any]]:
    """One entry per (target, backbone, variant): mean ± std over seeds, a bootstrap CI of
    the seed-averaged per-point metric, relative change and a paired test vs `sim`, and
    (for every variant but sim and new) vs `new`."""
    groups: dict[tuple[str, str, str], list[dict]] = {}
    for r in results:
        groups.setdefault((r["target"], r["backbone"], r["variant"]), []).append(r)
    out = []
    for (target, backbone, variant), rows in groups.items():
        seeds = sorted(r["seed"] for r in rows)
        per_point = {m: _seed_mean(ranks, (target, backbone, variant), seeds, m) for m in METRICS}
        entry: dict[str, Any] = {
            "target": target,
            "backbone": backbone,
            "variant": variant,
            "seeds": seeds,
            "n_test": int(rows[0]["n_test"]),
            "small_test_set": int(rows[0]["n_test"]) < min_test_points,
            "mean": {m: float(np.mean([r["metrics"][m] for r in rows])) for m in METRICS},
            "std": {m: _std([r["metrics"][m] for r in rows]) for m in METRICS},
            "ci95": {m: list(mean_ci(per_point[m], n_boot)) for m in METRICS},
        }
        # against sim (does the data help?) and against new (does a part of the method, or a
        # control, do better or worse than the whole?)
        for baseline in ("sim", "new"):
            base_rows = groups.get((target, backbone, baseline))
            if base_rows is not None and variant not in ("sim", baseline):
                entry[f"vs_{baseline}"] = _versus(
                    ranks, (target, backbone), variant, entry, baseline, base_rows, n_boot
                )
        out.append(entry)
    return out


def _versus(
    ranks: dict, where: tuple[str, str], variant: str, entry: dict, baseline: str, base_rows: list[dict], n_boot: int
) -> dict[str, dict[str, Any]]:
    """Per metric: relative change of the seed means, and a paired bootstrap of the
    seed-averaged per-point metric on the seeds both have."""
    base_seeds = {r["seed"] for r in base_rows}
    common = [s for s in entry["seeds"] if s in base_seeds]  # pair on the same seeds
    out: dict[str, dict[str, Any]] = {}
    if not common:  # nothing to pair on
        return out
    for m in METRICS:
        base = float(np.mean([r["metrics"][m] for r in base_rows]))
        test = paired_bootstrap(
            _seed_mean(ranks, (*where, variant), common, m), _seed_mean(ranks, (*where, baseline), common, m), n_boot
        )
        test["rel"] = (entry["mean"][m] - base) / base if base else math.nan
        out[m] = test
    return out


def _seed_mean(ranks: dict, key: tuple[str, str, str], seeds: Sequence[int], metric: str) -> np.ndarray:
    return np.mean([point_metric(ranks[(*key, s)], metric) for s in seeds], axis=0)


def _std(values: Sequence[float]) -> float:
    return float(np.std(values, ddof=1)) if len(values) > 1 else 0.0


# -- data statistics for the report ---------------------------------------------------------


def decision_breakdown(
    regenerated: Sequence[Regenerated], catalogue: Catalogue, target: str
) -> dict[str, dict[str, int]]:
    """Per source domain: how many items were replaced, and discarded for each reason
    (a source item whose replacement repeated the previous item counts as `duplicate`)."""
    t = catalogue.domain_index(target)
    out: dict[str, dict[str, int]] = {}
    for r in regenerated:
        for d in r.decisions:
            if d.domain is None or d.domain == t:
                continue
            row = out.setdefault(catalogue.domains[d.domain], {"replaced": 0})
            key = "replaced" if d.action == "replace" else f"discarded:{d.reason}"
            row[key] = row.get(key, 0) + 1
    return out


def target_data_stats(
    original: Sequence[np.ndarray], regenerated: Sequence[np.ndarray], span: tuple[int, int]
) -> dict[str, Any]:
    """The paper's Figure 5 statistics: item frequency by rank, interaction share of the
    top 10% / mid 40% / tail 50% items (groups by popularity in the *original* data),
    and the sequence length distribution."""
    a, b = span
    n_items = b - a
    orig_counts = _counts(original, a, n_items)
    order = np.argsort(-orig_counts, kind="stable")  # original popularity rank
    groups = {
        "top10": order[: math.ceil(0.1 * n_items)],
        "mid40": order[math.ceil(0.1 * n_items) : math.ceil(0.5 * n_items)],
    }
    groups["tail50"] = order[math.ceil(0.5 * n_items) :]
    out = {}
    for name, seqs in (("original", original), ("regenerated", regenerated)):
        counts = _counts(seqs, a, n_items)
        total = max(int(counts.sum()), 1)
        lengths = np.array([len(s) for s in seqs], dtype=np.int64)
        out[name] = {
            "rows": len(seqs),
            "interactions": int(counts.sum()),
            "items_covered": int((counts > 0).sum()),
            "frequency_by_rank": np.sort(counts)[::-1].astype(int).tolist(),
            "share": {g: float(counts[idx].sum() / total) for g, idx in groups.items()},
            "lengths": np.bincount(lengths).tolist() if len(lengths) else [],
            "mean_length": float(lengths.mean()) if len(lengths) else 0.0,
        }
    return out


def _counts(seqs: Sequence[np.ndarray], start: int, n_items: int) -> np.ndarray:
    flat = np.concatenate([np.asarray(s, dtype=np.int64) for s in seqs]) if len(seqs) else np.zeros(0, np.int64)
    flat = flat[(flat >= start) & (flat < start + n_items)] - start
    return np.bincount(flat, minlength=n_items)
