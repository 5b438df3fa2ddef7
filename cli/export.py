"""`taesar export ...`: the training sets of the evaluation, for other frameworks."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from cli.choices import value_of
from cli.common import DataDir, Device, HoldoutEval, MemoryBudgetMb, Target, Variants, chosen_variants, out, user_errors
from cli.progress import progress_bars
from cli.regenerate import open_engine
from cli.settings import EngineOptions, GlobalOptions, Runtime, runtime

export_app = typer.Typer(no_args_is_help=True, help="Export training sets for other frameworks.")


@dataclass(frozen=True)
class RecBoleExport:
    """What to write: which variants, rows how long, the random baselines' seed."""

    variants: str = "sim,full,new,random"
    holdout: int | None = None  # None: the dataset's
    max_len: int = 128
    data_seed: int = 0


@export_app.command("recbole")
@user_errors
def export_recbole(
    ctx: typer.Context,
    data: DataDir,
    target: Target,
    out_dir: Annotated[Path, typer.Option("--out", help="folder to hold one RecBole dataset folder per variant")],
    bundle: Annotated[Path | None, typer.Option(help="bundle to decode with (for new and the ablations)")] = None,
    variants: Variants = "sim,full,new,random",
    holdout: HoldoutEval = None,
    max_len: Annotated[int, typer.Option(help="longest history written per row")] = 128,
    data_seed: Annotated[
        int, typer.Option(help="seed of the random baselines' draws (taesar evaluate draws with 0)")
    ] = 0,
    device: Device = None,
    memory_budget_mb: MemoryBudgetMb = None,
) -> None:
    """Write each training set with the shared valid/test points as RecBole atomic files (docs/recbole.md)."""
    what = RecBoleExport(variants, holdout, max_len, data_seed)
    write_recbole_sets(
        data,
        target,
        out_dir,
        bundle,
        what,
        runtime(EngineOptions(value_of(device), memory_budget_mb, threads=GlobalOptions.of(ctx).threads)),
    )


def write_recbole_sets(
    data: Path, target: str, out_dir: Path, bundle: Path | None, what: RecBoleExport, rt: Runtime
) -> None:
    from models.data import load_dataset
    from models.evaluation import export_recbole

    ds = load_dataset(data)
    ds.catalogue.domain_index(target)
    holdout = what.holdout or ds.options["holdout"]
    engine = None if bundle is None else open_engine(bundle, rt, leak_free_for=(ds, holdout))
    with progress_bars() as bars:
        written = export_recbole(
            ds, target, list(chosen_variants(what.variants)), out_dir, holdout=holdout, regenerator=engine,
            max_len=what.max_len, data_seed=what.data_seed, progress=bars,
        )  # fmt: skip
    table = Table(title=f"RecBole datasets in {out_dir}")
    for col in ("dataset", "train rows", "valid rows", "test rows"):
        table.add_column(col, justify="left" if col == "dataset" else "right")
    for variant, counts in written.items():
        table.add_row(f"{target}-{variant}", *(str(counts[s]) for s in ("train", "valid", "test")))
    out.print(table)
