"""The whole evaluation: plan every (target, backbone, variant, seed) training, run them
(in this process or a pool), reuse the trainings of an earlier run whose fingerprints
match, and collect the report's data."""

from __future__ import annotations

import hashlib
import json
import math
import multiprocessing
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from models.catalogue import Catalogue
from models.data import Dataset, domain_train_sequences, train_part
from models.decoding import Regenerated, Regenerator
from models.downstream import DownstreamConfig, next_item_rows, train_downstream
from models.errors import DataError
from models.evaluation.protocol import DomainSplit, EvalConfig, domain_split
from models.evaluation.statistics import METRICS, decision_breakdown, summarize_results, target_data_stats
from models.evaluation.variants import DECODED, TrainingSet, build_training_sets
from models.training import ProgressFn


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
        raise DataError(f"variants {[v for v in cfg.variants if v in DECODED]} need a bundle to decode with")
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
        **_settings(dataset, cfg),
        "targets": per_target,
        "results": results,
        "reused_trainings": len(reuse),
        "summary": summary,
        "wall_time_s": round(time.perf_counter() - started, 1),
    }
    return Evaluation(report, ranks)


def _settings(dataset: Dataset, cfg: EvalConfig) -> dict[str, Any]:
    """The report's "protocol" and "config" entries: what the numbers were measured under."""
    return {
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
    }


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
