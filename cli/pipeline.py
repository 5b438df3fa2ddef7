"""`taesar pipeline`: pretrain (or reuse a bundle), regenerate every chosen target, then
evaluate downstream models, into one run folder."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer

from cli.choices import value_of
from cli.common import (
    AdaptEpochs,
    Backbones,
    DataDir,
    Device,
    HoldoutEval,
    Jobs,
    Lr,
    MaxSteps,
    MemoryBudgetMb,
    Patience,
    Resume,
    Seeds,
    Variants,
    out,
    user_errors,
)
from cli.distributed import launch, other_rank_exits
from cli.evaluate import Downstream, run_evaluation
from cli.regenerate import Decoding, Output, Source, open_engine, print_counts, regenerate_to_file
from cli.settings import EngineOptions, GlobalOptions, Runtime, runtime
from cli.train import Training, run_pretrain


@dataclass(frozen=True)
class Plan:
    """What the run covers and where it goes."""

    data: Path
    run: Path
    targets: str | None = None  # comma-separated; None: every domain
    holdout: int | None = None  # None: the dataset's
    bundle: Path | None = None  # None: pretrain one into RUN/bundle
    evaluate: bool = True


@user_errors
def pipeline(
    ctx: typer.Context,
    data: DataDir,
    run: Annotated[Path, typer.Option("--out", help="run folder: bundle/, regenerated/, summary.json, report.*")],
    targets: Annotated[str | None, typer.Option(help="comma-separated target domains (default: all)")] = None,
    epochs: Annotated[int, typer.Option(min=1, help="max epochs of pretraining and of each downstream model")] = 200,
    adapt_epochs: AdaptEpochs = 20,
    seed: Annotated[int, typer.Option(help="pretraining seed; downstream seeds are seed, seed+1, ...")] = 42,
    device: Device = None,
    holdout: HoldoutEval = None,
    backbones: Backbones = "sasrec",
    variants: Variants = "sim,full,new,random",
    seeds: Seeds = 1,
    patience: Patience = 10,
    jobs: Jobs = 1,
    resume: Resume = False,
    lr: Lr = 3e-4,
    bundle: Annotated[
        Path | None,
        typer.Option(help="use this bundle (trained on --data with this holdout) instead of pretraining one"),
    ] = None,
    evaluate: Annotated[
        bool, typer.Option("--evaluate/--no-evaluate", help="train and compare downstream models")
    ] = True,
    memory_budget_mb: MemoryBudgetMb = None,
    max_steps: MaxSteps = None,
) -> None:
    """Pretrain, regenerate every chosen target, then evaluate downstream models (report.json/.md, figures).

    Under torchrun all ranks pretrain together; then rank 0 alone regenerates and
    evaluates while the others exit."""
    plan = Plan(data, run, targets, holdout, bundle, evaluate)
    training = Training(epochs=epochs, adapt_epochs=adapt_epochs, seed=seed, max_steps=max_steps)
    downstream = Downstream(backbones, variants, seeds, seed, epochs, patience, lr, jobs, resume)
    run_pipeline(
        plan,
        training,
        downstream,
        runtime(EngineOptions(value_of(device), memory_budget_mb, threads=GlobalOptions.of(ctx).threads)),
    )


def run_pipeline(plan: Plan, training: Training, downstream: Downstream, rt: Runtime) -> None:
    from models.data import load_dataset

    started = time.perf_counter()
    ranks = launch()
    if plan.bundle is not None and other_rank_exits("pipeline --bundle", ranks, "runs on rank 0 only"):
        return
    ds = load_dataset(plan.data)
    chosen = parse_targets(plan.targets, ds.catalogue)
    holdout = plan.holdout or ds.options["holdout"]
    eval_cfg = downstream.config(chosen, holdout, rt.device) if plan.evaluate else None
    bundle_dir = plan.bundle
    if bundle_dir is None:
        bundle_dir = run_pretrain(plan.data, plan.run / "bundle", training, rt, holdout)
        if other_rank_exits("pipeline", ranks, "pretrained; rank 0 regenerates and evaluates"):
            return
    engine = open_engine(bundle_dir, rt, leak_free_for=(ds, holdout))
    # the evaluation's variants that decode plainly (new, random_matched) reuse these rows
    decoded: dict[str, list] | None = {} if eval_cfg is not None and eval_cfg.needs_decoding else None
    counts = regenerate_targets(engine, Source(plan.data, holdout=holdout), chosen, plan.run, decoded)
    summary: dict[str, Any] = {"data": str(plan.data), "bundle": str(bundle_dir), "holdout": holdout, "targets": counts}
    if eval_cfg is not None:
        run_evaluation(ds, eval_cfg, engine, plan.run, downstream.resume, decoded)
        summary["report"] = "report.json"
    summary["wall_time_s"] = round(time.perf_counter() - started, 1)
    (plan.run / "summary.json").write_text(json.dumps(summary, indent=2, ensure_ascii=False) + "\n")
    out.print(f"run written to {plan.run} in {summary['wall_time_s']} s")


def regenerate_targets(
    engine: Any, source: Source, targets: list[str], run: Path, decoded: dict[str, list] | None
) -> dict[str, dict]:
    """RUN/regenerated/<domain>.jsonl for each target (one file per domain, named after
    it); decoded, when given, collects each target's rows."""
    from models.output import file_names

    rows = source.rows(engine.catalogue)
    names = file_names(engine.catalogue.domains)
    counts: dict[str, dict] = {}
    for target in targets:
        path = run / "regenerated" / f"{names[target]}.jsonl"
        keep = None if decoded is None else decoded.setdefault(target, [])
        counts[target] = regenerate_to_file(engine, target, rows, Output(path), Decoding(), keep)
        counts[target]["file"] = str(path.relative_to(run))
    print_counts(counts)
    return counts


def parse_targets(targets: str | None, catalogue: Any) -> list[str]:
    if not targets:
        return list(catalogue.domains)
    names = [t.strip() for t in targets.split(",") if t.strip()]
    for n in names:
        catalogue.domain_index(n)
    return names
