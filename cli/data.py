"""`taesar data ...`: interaction logs into prepared datasets."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from cli.common import DEFAULT_CACHE, out, user_errors

data_app = typer.Typer(no_args_is_help=True, help="Import interaction logs into prepared datasets.")

OutDir = Annotated[Path, typer.Option("--out", help="dataset folder to write")]
AllDomains = Annotated[
    bool, typer.Option("--require-all-domains/--any-domains", help="keep only users active in every domain")
]
KCore = Annotated[int, typer.Option(help="k-core filter applied per domain (1 disables it)")]
MaxLen = Annotated[int, typer.Option(help="keep each user's last N interactions")]
Holdout = Annotated[int, typer.Option(min=1, help="leave-N-out: last N positions test, N before them valid")]


@dataclass(frozen=True)
class Columns:
    """The log's column names (`--*-col`)."""

    user: str = "user_id"
    item: str = "item_id"
    domain: str = "domain"
    time: str = "timestamp"
    title: str | None = None  # optional: item titles


@dataclass(frozen=True)
class Preparation:
    """The preprocessing options (models.data.PrepConfig)."""

    require_all_domains: bool = True
    k_core: int = 3
    max_len: int = 128
    holdout: int = 1

    def config(self) -> Any:
        from models.data import PrepConfig

        return PrepConfig(
            require_all_domains=self.require_all_domains, k_core=self.k_core, max_len=self.max_len, holdout=self.holdout
        )


@data_app.command("ml100k")
@user_errors
def data_ml100k(
    out_dir: OutDir,
    grouplens: Annotated[
        Path | None, typer.Option(help="folder with GroupLens u.data/u.item instead of the RecBole wheel")
    ] = None,
    cache: Annotated[Path, typer.Option(help="where the RecBole wheel is cached")] = DEFAULT_CACHE,
    require_all_domains: AllDomains = True,
    k_core: KCore = 3,
    max_len: MaxLen = 128,
    holdout: Holdout = 1,
) -> None:
    """MovieLens-100K, genres mapped to 4 domains (docs/data.md), read from the RecBole 1.2.1 wheel."""
    prepare_ml100k(out_dir, grouplens, cache, Preparation(require_all_domains, k_core, max_len, holdout))


@data_app.command("import")
@user_errors
def data_import(
    interactions: Annotated[Path, typer.Option(help="CSV, TSV or Parquet interaction log")],
    out_dir: OutDir,
    user_col: str = "user_id",
    item_col: str = "item_id",
    domain_col: str = "domain",
    time_col: str = "timestamp",
    title_col: Annotated[
        str | None, typer.Option(help="column of item titles (optional; the first non-blank title of each item)")
    ] = None,
    require_all_domains: AllDomains = True,
    k_core: KCore = 3,
    max_len: MaxLen = 128,
    holdout: Holdout = 1,
) -> None:
    """A generic log with columns user_id,item_id,domain,timestamp (names configurable)."""
    columns = Columns(user_col, item_col, domain_col, time_col, title_col)
    prepare_log(interactions, out_dir, columns, Preparation(require_all_domains, k_core, max_len, holdout))


def prepare_ml100k(out_dir: Path, grouplens: Path | None, cache: Path, prep: Preparation) -> None:
    from models import importers

    if grouplens is not None:
        df, source = importers.read_ml100k_grouplens(grouplens), "ml-100k (GroupLens files)"
    else:
        wheel = importers.fetch_recbole_wheel(cache)
        df, source = importers.read_ml100k_recbole(wheel), "ml-100k (RecBole 1.2.1 wheel)"
    save_and_report(df, prep, out_dir, source, domains=list(importers.ML100K_DOMAINS))


def prepare_log(interactions: Path, out_dir: Path, columns: Columns, prep: Preparation) -> None:
    from models.importers import read_interactions

    df = read_interactions(
        interactions,
        user_col=columns.user,
        item_col=columns.item,
        domain_col=columns.domain,
        time_col=columns.time,
        title_col=columns.title,
    )
    save_and_report(df, prep, out_dir, source=interactions.name)


def save_and_report(df: Any, prep: Preparation, out_dir: Path, source: str, domains: list[str] | None = None) -> None:
    from models.data import prepare, save_dataset, summarize

    ds = prepare(df, prep.config(), domains=domains, source=source)
    save_dataset(ds, out_dir)
    s = summarize(ds)
    table = Table(title=f"prepared {source} -> {out_dir}")
    table.add_column("domain")
    table.add_column("items", justify="right")
    table.add_column("interactions", justify="right")
    for name, row in s["domains"].items():
        table.add_row(name, str(row["items"]), str(row["interactions"]))
    out.print(table)
    out.print(f"users {s['users']}  interactions {s['interactions']}  fingerprint {ds.fingerprint[:12]}")
