"""`taesar evaluate`: downstream models trained on each training set of a target domain,
compared in report.json, report.md and figures."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from cli.choices import value_of
from cli.common import (
    Backbones,
    DataDir,
    Device,
    HoldoutEval,
    Jobs,
    Lr,
    MemoryBudgetMb,
    Patience,
    Resume,
    Seeds,
    Target,
    Variants,
    chosen_variants,
    out,
    split_list,
    user_errors,
)
from cli.distributed import launch, other_rank_exits
from cli.progress import progress_bars
from cli.regenerate import open_engine
from cli.settings import EngineOptions, GlobalOptions, Runtime, runtime


@dataclass(frozen=True)
class Downstream:
    """The downstream trainings to run and compare (models.evaluation.EvalConfig)."""

    backbones: str = "sasrec"
    variants: str = "sim,full,new,random"
    seeds: int = 1
    seed: int = 42  # the first seed; the next ones are seed+1, ...
    epochs: int = 200
    patience: int = 10
    lr: float = 3e-4
    jobs: int = 1
    resume: bool = False

    def config(self, targets: list[str], holdout: int, device: str) -> Any:
        import torch

        from models.downstream import DownstreamConfig
        from models.evaluation import EvalConfig

        return EvalConfig(
            targets=tuple(targets),
            backbones=tuple(split_list(self.backbones)),
            variants=chosen_variants(self.variants),
            seeds=tuple(self.seed + i for i in range(self.seeds)),
            holdout=holdout,
            downstream=DownstreamConfig(epochs=self.epochs, patience=self.patience, lr=self.lr, device=device),
            jobs=self.jobs,
            job_threads=max(1, torch.get_num_threads() // self.jobs),
        )


@user_errors
def evaluate(
    ctx: typer.Context,
    data: DataDir,
    target: Target,
    run: Annotated[Path, typer.Option("--out", help="folder for report.json, report.md, figures/")],
    bundle: Annotated[
        Path | None, typer.Option(help="bundle to decode with (needed by new, random_matched and the ablations)")
    ] = None,
    backbones: Backbones = "sasrec",
    variants: Variants = "sim,full,new,random",
    seeds: Seeds = 1,
    seed: Annotated[int, typer.Option(help="first downstream seed; the next ones are seed+1, ...")] = 42,
    holdout: HoldoutEval = None,
    epochs: Annotated[int, typer.Option(min=1, help="max epochs per downstream model (early stopping)")] = 200,
    patience: Patience = 10,
    jobs: Jobs = 1,
    resume: Resume = False,
    lr: Lr = 3e-4,
    device: Device = None,
    memory_budget_mb: MemoryBudgetMb = None,
) -> None:
    """Train downstream models on each training set of one target domain and compare them.

    Under torchrun only rank 0 evaluates (with --jobs processes of its own)."""
    if other_rank_exits("evaluate", launch(), "runs on rank 0 only"):
        return
    downstream = Downstream(backbones, variants, seeds, seed, epochs, patience, lr, jobs, resume)
    rt = runtime(EngineOptions(value_of(device), memory_budget_mb, threads=GlobalOptions.of(ctx).threads))
    evaluate_target(data, target, run, bundle, downstream, rt, holdout)


def evaluate_target(
    data: Path, target: str, run: Path, bundle: Path | None, downstream: Downstream, rt: Runtime, holdout: int | None
) -> None:
    from models.data import load_dataset

    ds = load_dataset(data)
    ds.catalogue.domain_index(target)
    holdout = holdout or ds.options["holdout"]
    cfg = downstream.config([target], holdout, rt.device)
    engine = None if bundle is None else open_engine(bundle, rt, leak_free_for=(ds, holdout))
    run_evaluation(ds, cfg, engine, run, resume=downstream.resume)


def command_line() -> str:
    return " ".join(["taesar", *sys.argv[1:]])


def run_evaluation(
    ds: Any, cfg: Any, engine: Any, run: Path, resume: bool = False, predecoded: dict | None = None
) -> None:
    """Run (or resume) the trainings, logging each as it finishes, and write the report."""
    from models.evaluation import Finished
    from models.evaluation import run_evaluation as run_all
    from models.report import write_report

    log = run / "trainings.jsonl"  # one line per finished training, as they finish
    finished = read_run_log(log) if resume else {}
    log.parent.mkdir(parents=True, exist_ok=True)
    # rewritten with the readable lines only, so that a line cut short by a kill cannot
    # swallow the next one
    log.write_text("".join(json.dumps(d.to_json()) + "\n" for d in finished.values()), encoding="utf-8")

    def on_result(done: Finished) -> None:
        with log.open("a", encoding="utf-8") as f:
            f.write(json.dumps(done.to_json()) + "\n")

    with progress_bars() as bars:
        evaluation = run_all(
            ds, cfg, engine, progress=bars, on_result=on_result, finished=finished, predecoded=predecoded
        )
    paths = write_report(evaluation, run, extra={"command": command_line()})
    print_summary(evaluation.report)
    out.print(f"report: {paths[2]}  ({len(paths) - 3} figures)")


def read_run_log(path: Path) -> dict:
    """fingerprint -> Finished from an earlier run's trainings.jsonl; a line cut short by a
    killed run (or any line that does not parse) is skipped, and that training reruns."""
    from models.evaluation import Finished

    if not path.is_file():
        return {}
    finished = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            done = Finished.from_json(json.loads(line))
        except (ValueError, KeyError, TypeError):
            continue
        finished[done.fingerprint] = done
    return finished


def print_summary(report: dict) -> None:
    table = Table(title=f"test metrics (leave-{report['protocol']['holdout']}-out), mean over seeds")
    for col in ("target", "backbone", "variant", "n_test", "HR@10", "NDCG@10", "NDCG@10 vs sim", "p"):
        table.add_column(col, justify="left" if col in ("target", "backbone", "variant") else "right")
    for e in report["summary"]:
        vs = e.get("vs_sim", {}).get("NDCG@10")
        n = f"{e['n_test']}{' !' if e['small_test_set'] else ''}"
        change = f"{100 * vs['rel']:+.1f}%" if vs and vs["rel"] == vs["rel"] else "-"
        table.add_row(
            e["target"], e["backbone"], e["variant"], n, f"{e['mean']['HR@10']:.4f}",
            f"{e['mean']['NDCG@10']:.4f}", change, f"{vs['p']:.3f}" if vs else "-",
        )  # fmt: skip
    out.print(table)
