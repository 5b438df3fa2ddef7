"""Does the regenerated data help? The downstream protocol of issue 5 (METHOD.md §4).

For one target domain T and leave-N-out holdout N:

- test points: each user's last N positions whose item is a T item, history = the
  items before it filtered to T (at least one); valid points likewise on the N
  positions before those. Train < valid < test in time for every user.
- training sets, all built from each user's *training part* s[:len-2N] only
  (`build_training_sets` receives nothing else, which is what the leakage test pins):
  sim     T's rows (the train part filtered to T, >= 2 items)
  full    the mixed train parts; softmax over all items, scores restricted to T at evaluation
  new     sim + Taesar's regenerated rows (those repeating an earlier row exactly are dropped)
  random  sim + rows where every source item is replaced by a T item drawn by
          T's training popularity instead of by decoding (same post-processing)
  random_matched  like random, but only where Taesar replaced (its discards kept),
          which isolates the quality of the chosen replacements
  no_adaptation | no_source_experts | no_global | no_local  `new` with one decoding ablation
  new_norepeat  `new` without replacements that repeat an item already in the row (not
          in METHOD.md; DecodeOptions.drop_repeats)
- every variant is evaluated on the same points, so comparisons are paired per point.

Uncertainty: a 95% percentile-bootstrap CI over test points for every metric, and a
paired bootstrap of (variant - sim) per point. Both use fixed seeds, so reports repeat.
"""

from __future__ import annotations

import hashlib
import json
import math
import multiprocessing
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from models.catalogue import Catalogue
from models.data import Dataset, domain_eval_points, domain_train_sequences, train_part
from models.decoding import NO_CONTEXT, DecodeOptions, Regenerated, Regenerator, assemble
from models.downstream import BACKBONES, DownstreamConfig, eval_set, next_item_rows, train_downstream
from models.errors import DataError
from models.metrics import hit_at_k, mrr_at_k, ndcg_at_k
from models.output import RecboleWriter, safe_file_name
from models.training import EvalSet

__all__ = [
    "ABLATIONS",
    "METRICS",
    "VARIANTS",
    "DomainSplit",
    "EvalConfig",
    "Evaluation",
    "Finished",
    "Plan",
    "TrainingSet",
    "build_training_sets",
    "check_bundle",
    "decision_breakdown",
    "domain_split",
    "export_recbole",
    "mean_ci",
    "paired_bootstrap",
    "plan_evaluation",
    "point_metric",
    "run_evaluation",
    "summarize_results",
    "target_data_stats",
]

METRICS: tuple[str, ...] = ("HR@10", "NDCG@10", "MRR@10", "HR@20", "NDCG@20", "MRR@20")
ABLATIONS: dict[str, DecodeOptions] = {
    "no_adaptation": DecodeOptions(no_adaptation=True),
    "no_source_experts": DecodeOptions(no_source_experts=True),
    "no_global": DecodeOptions(no_global=True),
    "no_local": DecodeOptions(no_local=True),
}
# Not in METHOD.md, both explained in docs/results/ml100k.md: new_norepeat is `new` whose
# replacements never repeat an item already in the row (DecodeOptions.drop_repeats);
# sim_x2 is every `sim` row twice, a control for `new` showing each user's target items
# twice per epoch (its regenerated row keeps them) and taking twice the steps per epoch.
VARIANTS: tuple[str, ...] = (
    "sim",
    "full",
    "new",
    "random",
    "random_matched",
    *ABLATIONS,
    "new_norepeat",
    "sim_x2",
)
_DECODED = {
    "new": DecodeOptions(),
    "random_matched": DecodeOptions(),
    **ABLATIONS,
    "new_norepeat": DecodeOptions(drop_repeats=True),
}  # variant -> decoding used
# (phase, step, total, info), as pretrain.ProgressFn
ProgressFn = Callable[[str, int, int, dict], None]


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
        return any(v in _DECODED for v in self.variants)


# -- points and training sets ------------------------------------------------------------


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


@dataclass
class TrainingSet:
    variant: str
    sequences: list[np.ndarray]  # dense ids
    users: list[int]  # the user (index into Dataset.user_ids) whose training part each row comes from
    mixed: bool = False  # softmax over the whole catalogue (the `full` set)
    regenerated: list[Regenerated] | None = None  # decoded variants: one per training part


def _rows(pairs: Sequence[tuple[int, np.ndarray]]) -> tuple[list[np.ndarray], list[int]]:
    """(user, row) pairs -> the rows of >= 2 items and their users."""
    kept = [(u, np.asarray(r, dtype=np.int64)) for u, r in pairs if len(r) >= 2]
    return [r for _, r in kept], [u for u, _ in kept]


def _append(
    base: Sequence[tuple[int, np.ndarray]], extra: Sequence[tuple[int, np.ndarray]]
) -> tuple[list[np.ndarray], list[int]]:
    """base rows, then the extra rows that repeat no row before them (METHOD.md §3: exact
    duplicate rows are dropped). Users' own rows are never dropped, even when two agree."""
    seqs, users = _rows(base)
    seen = {r.tobytes() for r in seqs}
    for u, r in _rows_pairs(extra):
        if r.tobytes() not in seen:
            seen.add(r.tobytes())
            seqs.append(r)
            users.append(u)
    return seqs, users


def _rows_pairs(pairs: Sequence[tuple[int, np.ndarray]]) -> list[tuple[int, np.ndarray]]:
    seqs, users = _rows(pairs)
    return list(zip(users, seqs, strict=True))


def _popularity(train_parts: Sequence[np.ndarray], span: tuple[int, int]) -> np.ndarray:
    a, b = span
    flat = np.concatenate(train_parts) if train_parts else np.zeros(0, np.int64)
    counts = np.bincount(flat[(flat >= a) & (flat < b)] - a, minlength=b - a).astype(np.float64)
    return counts / counts.sum() if counts.sum() else np.full(b - a, 1.0 / (b - a))


def _random_rows(
    train_parts: Sequence[np.ndarray],
    catalogue: Catalogue,
    target: str,
    rng: np.random.Generator,
    where: Sequence[np.ndarray] | None = None,
) -> list[np.ndarray]:
    """Source items -> popularity-drawn T items (all of them, or only the positions in
    `where`, dropping the other source items); consecutive duplicates collapse."""
    t = catalogue.domain_index(target)
    a, _ = span = catalogue.domain_range(t)
    p = _popularity(train_parts, span)
    item_domain = np.asarray(catalogue.item_domain, dtype=np.int64)
    out = []
    for k, seq in enumerate(train_parts):
        source = item_domain[seq] != t
        raw = np.full(len(seq), -1, dtype=np.int64)
        chosen = np.flatnonzero(source) if where is None else where[k]
        raw[chosen] = a + rng.choice(len(p), size=len(chosen), p=p)
        out.append(np.array(assemble(seq, item_domain[seq], raw, t).sequence, dtype=np.int64))
    return out


def build_training_sets(
    train_parts: Sequence[np.ndarray],
    catalogue: Catalogue,
    target: str,
    variants: Sequence[str],
    regenerator: Regenerator | None = None,
    *,
    data_seed: int = 0,
    progress: ProgressFn | None = None,
    predecoded: Sequence[Regenerated] | None = None,
) -> dict[str, TrainingSet]:
    """Every requested training set for T, from the users' training parts alone.

    predecoded is the plain decode (DecodeOptions()) of these parts when the caller already
    has it (the pipeline writes it to regenerated/ first); it stands in for that decode."""
    parts = [np.asarray(s, dtype=np.int64) for s in train_parts]
    sim = list(enumerate(_domain_only(parts, catalogue, target)))
    decoded: dict[DecodeOptions, list[Regenerated]] = {}
    if predecoded is not None:
        if len(predecoded) != len(parts) or any(
            len(r.decisions) != len(p) for r, p in zip(predecoded, parts, strict=True)
        ):
            raise ValueError("predecoded rows are not a decode of these training parts")
        decoded[DecodeOptions()] = list(predecoded)
    for v in variants:
        opts = _DECODED.get(v)
        if opts is None or opts in decoded:
            continue
        if regenerator is None:
            raise DataError(f"variant {v!r} needs a bundle to decode with")
        # drop_repeats is post-processing only: decode once without it, reassemble with it
        base = replace(opts, drop_repeats=False)
        if base not in decoded:
            decoded[base] = _regenerate(regenerator, parts, target, base, "new" if opts != base else v, progress)
        if opts.drop_repeats:
            t = catalogue.domain_index(target)
            decoded[opts] = [_reassemble(r, t, drop_repeats=True) for r in decoded[base]]
    # One stream of popularity draws in a fixed order, random's (every source position)
    # then random_matched's, whichever of the two were asked for and in whatever order, so
    # a training set never depends on which other variants were requested.
    rng = np.random.default_rng([data_seed, catalogue.domain_index(target)])
    drawn: dict[str, list[np.ndarray]] = {}
    if "random" in variants or "random_matched" in variants:
        drawn["random"] = _random_rows(parts, catalogue, target, rng)
    if "random_matched" in variants:
        where = [
            np.array([d.position for d in r.decisions if d.action == "replace"], np.int64)
            for r in decoded[_DECODED["random_matched"]]
        ]
        drawn["random_matched"] = _random_rows(parts, catalogue, target, rng, where)
    out: dict[str, TrainingSet] = {}
    for v in variants:
        regen = decoded.get(_DECODED.get(v))  # type: ignore[arg-type]
        if v == "sim":
            out[v] = TrainingSet(v, *_rows(sim))
        elif v == "sim_x2":  # no duplicate dropping: the repetition is the point
            out[v] = TrainingSet(v, *_rows(sim + sim))
        elif v == "full":
            out[v] = TrainingSet(v, *_rows(list(enumerate(parts))), mixed=True)
        elif v in drawn:
            out[v] = TrainingSet(v, *_append(sim, list(enumerate(drawn[v]))))
        else:
            extra = [np.array(r.sequence, dtype=np.int64) for r in regen or []]
            out[v] = TrainingSet(v, *_append(sim, list(enumerate(extra))), regenerated=regen)
    return out


def _reassemble(regenerated: Regenerated, target: int, *, drop_repeats: bool) -> Regenerated:
    """Run METHOD.md's post-processing again on one decoded row from its decisions: a
    decision keeps the replacement it chose (also when it was discarded as a duplicate),
    so the raw codes that `assemble` needs are all there."""
    decisions = regenerated.decisions
    raw = [
        d.replacement if d.replacement is not None else NO_CONTEXT if d.reason == "no_context" else -1
        for d in decisions
    ]
    return assemble([d.item for d in decisions], [d.domain for d in decisions], raw, target, drop_repeats=drop_repeats)


def _domain_only(parts: Sequence[np.ndarray], catalogue: Catalogue, target: str) -> list[np.ndarray]:
    a, b = catalogue.domain_range(target)
    return [s[(s >= a) & (s < b)] for s in parts]


def _regenerate(
    regenerator: Regenerator,
    parts: Sequence[np.ndarray],
    target: str,
    options: DecodeOptions,
    label: str,
    progress: ProgressFn | None,
) -> list[Regenerated]:
    phase = f"regenerate {target} ({'taesar' if label in ('new', 'random_matched') else label})"

    def on_progress(n: int) -> None:
        if progress:
            progress(phase, n, len(parts), {})

    return regenerator.regenerate([s.tolist() for s in parts], target, options, on_progress)


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


# -- statistics ---------------------------------------------------------------------------

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


# -- the whole evaluation -----------------------------------------------------------------


@dataclass
class Evaluation:
    report: dict[str, Any]  # report.json
    ranks: dict[tuple[str, str, str, int], np.ndarray]  # test ranks per (target, backbone, variant, seed)


@dataclass
class Plan:
    """Every training an evaluation runs, with its fingerprint, and the per-target info."""

    tasks: list[_Task]
    fingerprints: list[str]
    targets: dict[str, Any]


def plan_evaluation(
    dataset: Dataset,
    cfg: EvalConfig,
    regenerator: Regenerator | None = None,
    progress: ProgressFn | None = None,
    predecoded: Mapping[str, Sequence[Regenerated]] | None = None,
) -> Plan:
    """Build every training set (decoding where a variant needs it) and the list of
    (target, backbone, variant, seed) trainings, in report order, with fingerprints.
    predecoded: target -> the plain decode of every user's training part, already done."""
    cat = dataset.catalogue
    for t in cfg.targets:
        cat.domain_index(t)
    if cfg.needs_decoding and regenerator is None:
        raise DataError(f"variants {[v for v in cfg.variants if v in _DECODED]} need a bundle to decode with")
    parts = [train_part(np.asarray(s, dtype=np.int64), cfg.holdout) for s in dataset.sequences]
    tasks: list[_Task] = []
    per_target: dict[str, Any] = {}
    for target in cfg.targets:
        split = domain_split(dataset.sequences, cat, target, cfg.holdout, cfg.downstream.max_len)
        sets = build_training_sets(
            parts,
            cat,
            target,
            cfg.variants,
            regenerator,
            data_seed=cfg.data_seed,
            progress=progress,
            predecoded=(predecoded or {}).get(target),
        )
        original = domain_train_sequences(dataset.sequences, cat, target, cfg.holdout)
        per_target[target] = _target_info(split, sets, original, cat, cfg)
        light = {v: replace(t, regenerated=None) for v, t in sets.items()}  # what a training needs
        tasks += [
            _Task(split, light[variant], cat.n_items, backbone, seed)
            for backbone in cfg.backbones
            for variant in cfg.variants
            for seed in cfg.seeds
        ]
    threads = _training_threads(cfg)
    return Plan(tasks, [t.fingerprint(cfg.downstream, threads) for t in tasks], per_target)


def run_evaluation(
    dataset: Dataset,
    cfg: EvalConfig,
    regenerator: Regenerator | None = None,
    progress: ProgressFn | None = None,
    on_result: Callable[[Finished], None] | None = None,
    finished: Mapping[str, Finished] | None = None,
    predecoded: Mapping[str, Sequence[Regenerated]] | None = None,
) -> Evaluation:
    """Train every (target, backbone, variant, seed) and collect the report's data.

    on_result gets each training as soon as it finishes (a long run's log); `finished`
    holds trainings of an earlier run by fingerprint, which are reused instead of rerun
    when their fingerprint (training data, points, config, seed, threads) matches.
    predecoded: as plan_evaluation's."""
    started = time.perf_counter()
    plan = plan_evaluation(dataset, cfg, regenerator, progress, predecoded)
    tasks, prints, per_target = plan.tasks, plan.fingerprints, plan.targets
    reuse = {k: finished[fp] for k, fp in enumerate(prints) if finished and fp in finished}
    todo = [k for k in range(len(tasks)) if k not in reuse]
    if reuse and progress:
        progress("reused from the run log", len(reuse), len(tasks), {})

    def done(k: int, row: dict[str, Any], r: np.ndarray) -> None:
        if on_result:
            on_result(Finished(prints[todo[k]], row, r))

    ran = dict(zip(todo, _run_tasks([tasks[k] for k in todo], cfg, progress, done), strict=True))
    outcomes = [(reuse[k].row, reuse[k].ranks) if k in reuse else ran[k] for k in range(len(tasks))]
    results = [row for row, _ in outcomes]  # in task order, whatever order they finished in
    ranks = {(r["target"], r["backbone"], r["variant"], r["seed"]): rk for r, rk in outcomes}
    summary = summarize_results(results, ranks, n_boot=cfg.n_boot, min_test_points=cfg.min_test_points)
    report = {
        "format": "taesar-report",
        "version": 1,
        "data": {"source": dataset.source, "fingerprint": dataset.fingerprint, "users": len(dataset.user_ids)},
        "protocol": {
            "holdout": cfg.holdout,
            "require_all_domains": bool(dataset.options.get("require_all_domains", True)),
            "min_test_points": cfg.min_test_points,
            "n_boot": cfg.n_boot,
            "selection": "validation NDCG@10",
            "metrics": list(METRICS),
        },
        "config": {
            "targets": list(cfg.targets),
            "backbones": list(cfg.backbones),
            "variants": list(cfg.variants),
            "seeds": list(cfg.seeds),
            "data_seed": cfg.data_seed,
            "jobs": cfg.jobs,
            "job_threads": cfg.job_threads if cfg.jobs > 1 else None,
            "threads": _training_threads(cfg),  # each training's torch threads, as fingerprinted
            "downstream": cfg.downstream.to_dict(),
        },
        "targets": per_target,
        "results": results,
        "reused_trainings": len(reuse),
        "summary": summary,
        "wall_time_s": round(time.perf_counter() - started, 1),
    }
    return Evaluation(report, ranks)


def _target_info(
    split: DomainSplit, sets: dict[str, TrainingSet], original: list[np.ndarray], cat: Catalogue, cfg: EvalConfig
) -> dict[str, Any]:
    info: dict[str, Any] = {
        "n_valid": len(split.valid.targets),
        "n_test": len(split.test.targets),
        "n_items": split.span[1] - split.span[0],
        "small_test_set": len(split.test.targets) < cfg.min_test_points,
        "train_rows": {v: len(s.sequences) for v, s in sets.items()},
    }
    decoded = {v: s for v, s in sets.items() if s.regenerated is not None}
    if decoded:
        info["decisions"] = {v: decision_breakdown(s.regenerated or [], cat, split.target) for v, s in decoded.items()}
        main = decoded.get("new") or next(iter(decoded.values()))
        regen_rows = [np.array(r.sequence, dtype=np.int64) for r in main.regenerated or [] if len(r.sequence) >= 2]
        info["data_stats"] = target_data_stats(original, regen_rows, split.span)
        info["data_stats_variant"] = main.variant
    return info


@dataclass(frozen=True)
class _Task:
    """One downstream training: everything it needs, and nothing heavy (no decisions)."""

    split: DomainSplit
    tset: TrainingSet
    n_items: int
    backbone: str
    seed: int

    @property
    def width(self) -> int:
        """Items in the training softmax."""
        return self.n_items if self.tset.mixed else self.split.span[1] - self.split.span[0]

    @property
    def eval_scores(self) -> int:
        """Scores of the larger of the valid and test rankings (points x the target's items)."""
        points = max(len(self.split.valid.targets), len(self.split.test.targets))
        return points * (self.split.span[1] - self.split.span[0])

    @property
    def cost(self) -> int:
        """Rough relative cost (training positions x softmax width), to start long ones first."""
        return sum(len(s) for s in self.tset.sequences) * (self.width + 256)

    def fingerprint(self, downstream: DownstreamConfig, threads: int) -> str:
        """sha256 of everything the training's numbers depend on: its rows, the valid and
        test points, the model and training config, the seed, and torch's version and
        thread count (float sums differ across thread counts)."""
        import torch

        h = hashlib.sha256()
        meta = {
            "v": 1,
            "backbone": self.backbone,
            "seed": self.seed,
            "n_items": self.n_items,
            "mixed": self.tset.mixed,
            "span": list(self.split.span),
            "downstream": downstream.fingerprint_dict(self.width, self.eval_scores),
            "torch": torch.__version__,
            "threads": threads,
        }
        h.update(json.dumps(meta, sort_keys=True).encode())
        for group in (self.tset.sequences, self.split.valid.histories, self.split.test.histories):
            h.update(len(group).to_bytes(8, "little"))
            for seq in group:
                a = np.ascontiguousarray(seq, dtype=np.int64)
                h.update(len(a).to_bytes(8, "little") + a.tobytes())
        for targets in (self.split.valid.targets, self.split.test.targets):
            h.update(np.ascontiguousarray(targets, dtype=np.int64).tobytes())
        return h.hexdigest()


@dataclass(frozen=True)
class Finished:
    """One finished training as the run log keeps it: its fingerprint, report row and
    test ranks (JSON: a miss, rank +inf, is written as null)."""

    fingerprint: str
    row: dict[str, Any]
    ranks: np.ndarray

    def to_json(self) -> dict[str, Any]:
        ranks = [None if not math.isfinite(r) else float(r) for r in self.ranks.tolist()]
        return {"fingerprint": self.fingerprint, "row": self.row, "test_ranks": ranks}

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> Finished:
        ranks = np.array([math.inf if r is None else float(r) for r in obj["test_ranks"]], dtype=np.float64)
        return cls(str(obj["fingerprint"]), dict(obj["row"]), ranks)


def _training_threads(cfg: EvalConfig) -> int:
    """The torch thread count each training runs with: its pool process's, or this one's."""
    import torch

    return cfg.job_threads if cfg.jobs > 1 else torch.get_num_threads()


def _run_tasks(
    tasks: Sequence[_Task],
    cfg: EvalConfig,
    progress: ProgressFn | None,
    on_result: Callable[[int, dict[str, Any], np.ndarray], None] | None = None,
) -> list[tuple[dict[str, Any], np.ndarray]]:
    """Run every training, in this process (jobs=1, epoch-level progress) or in a pool of
    `jobs` processes with `job_threads` torch threads each. Each training is seeded on its
    own, so the numbers depend on the thread count of the process that ran it, never on
    which process or in what order: jobs=1 under --threads 1 equals jobs=N with 1 thread each.
    The pool starts its processes with `spawn` (a forked child of a process whose OpenMP
    threads already ran can hang)."""
    report = on_result or (lambda k, row, ranks: None)
    if cfg.jobs == 1:
        serial = []
        for k, t in enumerate(tasks):
            serial.append(_train_task(t, cfg, progress))
            report(k, *serial[-1])
        return serial
    out: list[tuple[dict[str, Any], np.ndarray] | None] = [None] * len(tasks)
    order = sorted(range(len(tasks)), key=lambda k: -tasks[k].cost)  # longest first: less idle tail
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(cfg.jobs, mp_context=ctx, initializer=_job_init, initargs=(cfg.job_threads,)) as pool:
        futures = {pool.submit(_train_task, tasks[k], cfg, None): k for k in order}
        for done, fut in enumerate(as_completed(futures), 1):
            row, ranks = fut.result()
            out[futures[fut]] = (row, ranks)
            report(futures[fut], row, ranks)
            if progress:
                label = f"{row['target']}/{row['backbone']}/{row['variant']}/seed {row['seed']}"
                progress(
                    f"train ({cfg.jobs} jobs)",
                    done,
                    len(tasks),
                    {"done": label, "NDCG@10": row["metrics"]["NDCG@10"], "s": row["seconds"]},
                )
    return [o for o in out if o is not None]


def _job_init(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


def _train_task(task: _Task, cfg: EvalConfig, progress: ProgressFn | None) -> tuple[dict[str, Any], np.ndarray]:
    split, tset, n_items, backbone, seed = task.split, task.tset, task.n_items, task.backbone, task.seed
    train_span = (0, n_items) if tset.mixed else split.span
    rows = next_item_rows(tset.sequences, cfg.downstream.max_len, train_span)
    res = train_downstream(
        rows,
        split.valid,
        split.test,
        backbone=backbone,
        n_items=n_items,
        train_span=train_span,
        eval_span=split.span,
        cfg=cfg.downstream,
        seed=seed,
        phase=f"train {split.target}/{backbone}/{tset.variant}/seed {seed}",
        progress=progress,
    )
    row = {
        "target": split.target,
        "backbone": backbone,
        "variant": tset.variant,
        "seed": seed,
        "metrics": {m: res.test[m] for m in METRICS},
        "valid": {m: res.valid[m] for m in METRICS},
        "n_test": len(split.test.targets),
        "n_valid": len(split.valid.targets),
        "train_rows": res.train_rows,
        "train_positions": res.train_positions,
        "best_epoch": res.best_epoch,
        "epochs_run": res.epochs_run,
        "seconds": round(res.seconds, 1),
    }
    return row, res.test_ranks


# -- RecBole export ------------------------------------------------------------------------


def export_recbole(
    dataset: Dataset,
    target: str,
    variants: Sequence[str],
    out_dir: str | Path,
    *,
    holdout: int,
    regenerator: Regenerator | None = None,
    max_len: int = 128,
    data_seed: int = 0,
    progress: ProgressFn | None = None,
) -> dict[str, dict[str, int]]:
    """One RecBole benchmark dataset per variant: `<out>/<name>/<name>.{train,valid,test}.inter`
    with name `<target>-<variant>`; valid/test are the same points for every variant.

    Training sequences are expanded into one row per next-item step (history -> item),
    so a RecBole model sees the same transitions as ours; histories keep the last max_len
    items. Returns rows written per variant and file."""
    cat = dataset.catalogue
    parts = [train_part(np.asarray(s, dtype=np.int64), holdout) for s in dataset.sequences]
    sets = build_training_sets(parts, cat, target, variants, regenerator, data_seed=data_seed, progress=progress)
    eval_rows = {
        split: [
            (dataset.user_ids[p.user], [*p.history[-max_len:].tolist(), p.target])
            for p in domain_eval_points(dataset.sequences, cat, target, split, holdout)  # type: ignore[arg-type]
        ]
        for split in ("valid", "test")
    }
    written: dict[str, dict[str, int]] = {}
    for variant, tset in sets.items():
        name = safe_file_name(f"{target}-{variant}")
        folder = Path(out_dir) / name
        rows = {
            "train": [
                (dataset.user_ids[u], seq[max(0, t + 1 - max_len - 1) : t + 1].tolist())
                for u, seq in zip(tset.users, tset.sequences, strict=True)
                for t in range(1, len(seq))
            ],
            **eval_rows,
        }
        written[variant] = {split: _write_inter(folder / f"{name}.{split}.inter", r, cat) for split, r in rows.items()}
    return written


def _write_inter(path: Path, rows: Sequence[tuple[str, list[int]]], cat: Catalogue) -> int:
    with RecboleWriter(path) as w:
        for user, seq in rows:
            w.write(user, [cat.external(int(i)) for i in seq])
        return w.written
