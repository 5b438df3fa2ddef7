"""The `taesar` command line: data preparation, pretraining, regeneration, evaluation and export.

Every user mistake ends as one red line on stderr and exit code 2; progress bars
go to stderr so stdout stays clean for tables and pipes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import math
import os
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from models.errors import TaesarError

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)
data_app = typer.Typer(no_args_is_help=True, help="Import interaction logs into prepared datasets.")
app.add_typer(data_app, name="data")


@app.callback()
def _global_options(
    threads: Annotated[
        int | None,
        typer.Option(
            min=1,
            envvar="TAESAR_TORCH_THREADS",
            help="torch CPU threads (default: torch's choice; use 1 when other processes share the cores)",
        ),
    ] = None,
) -> None:
    if threads is not None:
        import torch

        torch.set_num_threads(threads)


out = Console()
err = Console(stderr=True)
F = TypeVar("F", bound=Callable[..., Any])

DEFAULT_CACHE = Path.home() / ".cache" / "taesar"


def user_errors(fn: F) -> F:
    """Turn domain errors into one line and exit code 2 instead of a traceback."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except TaesarError as exc:
            err.print(f"[bold red]error:[/] {exc.message}", highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None

    return wrapper  # type: ignore[return-value]


@contextmanager
def progress_bars() -> Iterator[Callable[[str, int, int, dict], None]]:
    """A callback (phase, done, total, info) that drives one rich bar per phase.

    Without a terminal (CI logs, `| tee`) rich would only draw the final state, so
    progress becomes plain lines instead: one per phase step, at most every 5 s.
    """
    if not err.is_terminal:
        yield _line_progress()
        return
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[info]}"),
    )
    with Progress(*columns, console=err, transient=False) as bars:
        tasks: dict[str, int] = {}

        def update(phase: str, done: int, total: int, info: dict | None = None) -> None:
            if phase not in tasks:
                tasks[phase] = bars.add_task(phase, total=total, info="")
            bars.update(tasks[phase], completed=done, total=total, info=_info(info))

        yield update


def _line_progress() -> Callable[[str, int, int, dict], None]:
    started = time.perf_counter()
    last: dict[str, float] = {}

    def update(phase: str, done: int, total: int, info: dict | None = None) -> None:
        now = time.perf_counter()
        if done < total and now - last.get(phase, -1e9) < 5.0:
            return
        last[phase] = now
        err.print(f"[{now - started:7.1f}s] {phase} {done}/{total} {_info(info)}", highlight=False)

    return update


def _info(info: dict | None) -> str:
    return "  ".join(f"{k}={_fmt(v)}" for k, v in (info or {}).items())


def _fmt(v: Any) -> str:
    return f"{v:.4f}" if isinstance(v, float) else str(v)


# -- data ---------------------------------------------------------------------------


def _prep_config(require_all_domains: bool, k_core: int, max_len: int, holdout: int):
    from models.data import PrepConfig

    return PrepConfig(require_all_domains=require_all_domains, k_core=k_core, max_len=max_len, holdout=holdout)


AllDomains = Annotated[
    bool, typer.Option("--require-all-domains/--any-domains", help="keep only users active in every domain")
]
KCore = Annotated[int, typer.Option(help="k-core filter applied per domain (1 disables it)")]
MaxLen = Annotated[int, typer.Option(help="keep each user's last N interactions")]
Holdout = Annotated[int, typer.Option(min=1, help="leave-N-out: last N positions test, N before them valid")]


def _save_and_report(df: Any, cfg: Any, out_dir: Path, source: str, domains: list[str] | None = None) -> None:
    from models.data import prepare, save_dataset, summarize

    ds = prepare(df, cfg, domains=domains, source=source)
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


@data_app.command("ml100k")
@user_errors
def data_ml100k(
    out_dir: Annotated[Path, typer.Option("--out", help="dataset folder to write")],
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
    from models import importers

    if grouplens is not None:
        df, source = importers.read_ml100k_grouplens(grouplens), "ml-100k (GroupLens files)"
    else:
        wheel = importers.fetch_recbole_wheel(cache)
        df, source = importers.read_ml100k_recbole(wheel), "ml-100k (RecBole 1.2.1 wheel)"
    cfg = _prep_config(require_all_domains, k_core, max_len, holdout)
    _save_and_report(df, cfg, out_dir, source, domains=list(importers.ML100K_DOMAINS))


@data_app.command("import")
@user_errors
def data_import(
    interactions: Annotated[Path, typer.Option(help="CSV, TSV or Parquet interaction log")],
    out_dir: Annotated[Path, typer.Option("--out", help="dataset folder to write")],
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
    from models.importers import read_interactions

    df = read_interactions(
        interactions,
        user_col=user_col,
        item_col=item_col,
        domain_col=domain_col,
        time_col=time_col,
        title_col=title_col,
    )
    cfg = _prep_config(require_all_domains, k_core, max_len, holdout)
    _save_and_report(df, cfg, out_dir, source=interactions.name)


# -- pretrain -----------------------------------------------------------------------


def _positive(value: float) -> float:
    if not (math.isfinite(value) and value > 0):
        raise typer.BadParameter(f"{value} is not a positive finite number.")
    return value


Device = Annotated[str, typer.Option(help="auto picks CUDA when available")]


def _memory_budget(value: str) -> str:
    """Accept 'auto' or a positive number of MB; the engine checks it against the catalogue."""
    text = value.strip()
    try:
        number = float(text)
    except ValueError:
        number = math.nan
    if text != "auto" and not (math.isfinite(number) and number > 0):
        raise typer.BadParameter(f"{value!r} is neither 'auto' nor a positive number of MB.")
    return text


def _budget_value(value: str) -> float | str:
    return value if value == "auto" else float(value)


MemoryBudgetMb = Annotated[
    str,
    typer.Option(
        callback=_memory_budget,
        metavar="auto|MB",
        help="MB for the rows x items score work of a decode; auto = half the GPU's free memory on CUDA, 256 on CPU",
    ),
]
HoldoutEval = Annotated[
    int | None,
    typer.Option(min=1, help="leave-N-out: last N positions test, N before them valid (default: the dataset's)"),
]
AdaptEpochs = Annotated[int, typer.Option(min=0, help="epochs of domain adaptation per expert")]
MaxSteps = Annotated[
    int | None,
    typer.Option(
        min=1,
        help="stop the mixed model and each expert after this many optimiser steps (across epochs), "
        "then validate in full",
    ),
]


def _logits_budget(value: float | None) -> float | None:
    from models.losses import check_budget_mb

    if value is None:
        return None
    try:
        check_budget_mb("--logits-budget-mb", value)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    return value


def _run_pretrain(
    data: Path,
    bundle: Path,
    epochs: int,
    adapt_epochs: int,
    seed: int,
    device: str,
    holdout: int | None = None,
    patience: int = 10,
    options: dict[str, Any] | None = None,
) -> Path:
    """Pretrain and write a bundle. options holds model sizes (SASRecConfig fields) and
    further TrainConfig fields (lr, batch_size, max_steps, logits_budget_mb).

    Under torchrun every rank trains its share and rank 0 alone writes the bundle and
    prints; the other ranks return once it is written."""
    from models.data import load_dataset
    from models.pretrain import TrainConfig, pretrain
    from models.sasrec import SASRecConfig

    if device not in ("auto", "cpu", "cuda"):
        raise typer.BadParameter("--device must be auto, cpu or cuda")
    ds = load_dataset(data)
    holdout = holdout or ds.options["holdout"]
    sizes = dict(options or {})
    train = {k: sizes.pop(k) for k in list(sizes) if k in TrainConfig.__dataclass_fields__}
    cfg = TrainConfig(
        epochs=epochs, patience=patience, adapt_epochs=adapt_epochs, seed=seed, device=device, holdout=holdout,
        **train,
    )  # fmt: skip
    model = SASRecConfig(n_items=ds.catalogue.n_items, **sizes)
    if model.hidden % model.n_heads:
        raise typer.BadParameter(f"--hidden {model.hidden} is not a multiple of --heads {model.n_heads}")
    started = time.perf_counter()
    with _process_group(device) as dist:
        is_main = dist is None or dist.rank == 0
        with progress_bars() if is_main else contextlib.nullcontext() as bars:  # bars on rank 0 only
            result = pretrain(ds, cfg, model_config=model, progress=bars, dist=dist)
        path = _write_on_rank_zero(result, bundle, ds, dist)
    if is_main:
        _print_metrics(result.metrics)
        out.print(f"bundle written to {path} in {time.perf_counter() - started:.0f} s")
    return path


def _launch() -> tuple[int, int] | None:
    """(rank, world size) when torchrun started this process, else None."""
    import torch.distributed as tdist

    if not tdist.is_torchelastic_launched():
        return None
    return int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])


@contextmanager
def _process_group(device: str) -> Iterator[Any]:
    """The Dist of this rank with its process group up (gloo on CPU, NCCL on this rank's
    GPU), destroyed on the way out; None for a plain run, which starts nothing."""
    import torch
    import torch.distributed as tdist

    from models.distributed import Dist

    launch = _launch()
    if launch is None:
        yield None
        return
    rank, world = launch
    local = int(os.environ.get("LOCAL_RANK", "0"))
    on_gpu = _device(device) == "cuda"
    if on_gpu:
        if local >= torch.cuda.device_count():
            raise TaesarError(
                f"local rank {local} has no GPU: this node has {torch.cuda.device_count()}; "
                "give torchrun --nproc-per-node at most that many"
            )
        torch.cuda.set_device(local)
    dist = Dist(rank, world, "nccl" if on_gpu else "gloo", local)
    tdist.init_process_group(dist.backend, rank=rank, world_size=world, device_id=dist.comm_device if on_gpu else None)
    try:
        yield dist
    finally:
        tdist.destroy_process_group()


def _write_on_rank_zero(result: Any, bundle: Path, ds: Any, dist: Any) -> Path:
    """Rank 0 writes the bundle; the other ranks wait until it has, and fail with it if it
    could not, rather than return as if a bundle were there."""
    from models.distributed import broadcast_flag

    if dist is None:
        return result.save(bundle, ds)
    failure: Exception | None = None
    if dist.rank == 0:
        try:
            result.save(bundle, ds)
        except Exception as exc:  # every kind: the others are waiting for the outcome
            failure = exc
    written = broadcast_flag(failure is None, dist)
    if failure is not None:
        raise failure
    if not written:
        raise TaesarError(f"rank 0 could not write the bundle {bundle} (its error line says why)")
    return bundle


def _other_rank_exits(command: str, launch: tuple[int, int] | None, why: str) -> bool:
    """True (after one line on stderr) when this is a torchrun rank other than 0."""
    if launch is None or launch[0] == 0:
        return False
    err.print(f"rank {launch[0]} of {launch[1]}: {command} {why}; exiting", highlight=False)
    return True


def _print_metrics(metrics: dict) -> None:
    table = Table(title="validation metrics")
    table.add_column("model")
    keys = ["HR@10", "NDCG@10", "MRR@10"]
    for k in keys:
        table.add_column(k, justify="right")
    for name, m in _flat_metric_rows(metrics):
        table.add_row(name, *(f"{m[k]:.4f}" if k in m else "-" for k in keys))
    out.print(table)


def _flat_metric_rows(metrics: dict, prefix: str = "") -> Iterator[tuple[str, dict]]:
    for name, value in metrics.items():
        if isinstance(value, dict) and "NDCG@10" in value:
            yield prefix + name, value
        elif isinstance(value, dict):
            yield from _flat_metric_rows(value, prefix + name + "/")


@app.command()
@user_errors
def pretrain(
    data: Annotated[Path, typer.Option(help="prepared dataset folder")],
    bundle: Annotated[Path, typer.Option("--out", help="bundle folder to write")],
    epochs: Annotated[int, typer.Option(min=1, help="max epochs of the mixed model (early stopping)")] = 200,
    patience: Annotated[
        int, typer.Option(min=1, help="epochs without a better validation NDCG@10 before the mixed model stops")
    ] = 10,
    adapt_epochs: AdaptEpochs = 20,
    seed: Annotated[int, typer.Option(help="seed of initialisation and batch order")] = 42,
    device: Device = "auto",
    holdout: HoldoutEval = None,
    hidden: Annotated[int, typer.Option(min=1, help="SASRec hidden size (item embedding width)")] = 128,
    layers: Annotated[int, typer.Option(min=1, help="transformer layers")] = 2,
    heads: Annotated[int, typer.Option(min=1, help="attention heads (must divide --hidden)")] = 2,
    inner: Annotated[int, typer.Option(min=1, help="feed-forward width of each layer")] = 128,
    dropout: Annotated[float, typer.Option(min=0.0, max=0.9, help="dropout of embeddings and layers")] = 0.2,
    max_len: Annotated[int, typer.Option(min=1, help="context: the last N items a model sees")] = 128,
    batch_size: Annotated[int, typer.Option(min=1, help="training sequences per optimiser step")] = 128,
    lr: Annotated[
        float, typer.Option(callback=_positive, help="Adam learning rate of the mixed model and of adaptation")
    ] = 3e-4,
    max_steps: MaxSteps = None,
    logits_budget_mb: Annotated[
        float | None,
        typer.Option(
            callback=_logits_budget,
            help="MB for one training batch's positions x items logits (larger batches are tiled, same loss) "
            "and one validation tile's scores [default: DEFAULT_LOGITS_BUDGET_MB of models/losses.py]",
        ),
    ] = None,
) -> None:
    """Stage I: train the mixed model, then one expert per domain; write a bundle.

    Sizes default to the paper's; all of them are recorded in the bundle's manifest. The
    models never see the last 2 x holdout positions of a sequence, so the bundle can be
    evaluated or exported with that holdout or any smaller one. Under `torchrun ...
    --no-python taesar pretrain ...` each process trains its share with
    DistributedDataParallel (gloo on CPU, NCCL on GPU) and rank 0 writes the bundle.
    """
    options = {"hidden": hidden, "n_layers": layers, "n_heads": heads, "inner": inner, "dropout": dropout}
    options |= {"max_len": max_len, "batch_size": batch_size, "lr": lr}
    options |= {"max_steps": max_steps}
    if logits_budget_mb is not None:  # else TrainConfig's default
        options["logits_budget_mb"] = logits_budget_mb
    _run_pretrain(data, bundle, epochs, adapt_epochs, seed, device, holdout, patience, options)


# -- regenerate ---------------------------------------------------------------------


Ablation = Annotated[
    list[str] | None,
    typer.Option(
        "--ablation",
        help="no_adaptation | no_source_experts | no_global | no_local (repeatable)",
    ),
]


def _decode_options(ablations: list[str] | None):
    from models.decoding import DecodeOptions
    from models.errors import TaesarError

    names = {"no_adaptation", "no_source_experts", "no_global", "no_local"}
    chosen = set(ablations or [])
    if chosen - names:
        raise TaesarError(f"unknown ablation(s) {sorted(chosen - names)}; choose from {sorted(names)}")
    return DecodeOptions(**{n: True for n in chosen})


Records = Callable[[], Iterator[tuple[str, list]]]


def _records(
    data: Path | None, input_file: Path | None, split: str, catalogue: Any, holdout: int | None = None
) -> tuple[Records, int | None]:
    """A re-iterable source of (user id, external item ids) and its size when known.

    A JSONL input is read lazily (twice when unknown items must be rejected up front),
    so a file of millions of sequences never sits in memory.
    """
    from models.data import load_dataset, train_part
    from models.errors import DataError
    from models.output import read_jsonl_input

    if (data is None) == (input_file is None):
        raise DataError("give exactly one of --data DIR or --input FILE.jsonl")
    if input_file is not None:
        path = input_file
        return (lambda: ((r.user_id, r.items) for r in read_jsonl_input(path))), None
    ds = load_dataset(data)
    if ds.catalogue != catalogue:
        raise DataError(f"dataset {data} was not prepared with this bundle's catalogue (different items or domains)")
    holdout = holdout or ds.options["holdout"]
    rows = [
        (u, [catalogue.external(int(i)) for i in (s if split == "full" else train_part(s, holdout))])
        for u, s in zip(ds.user_ids, ds.sequences, strict=True)
    ]
    return (lambda: iter(rows)), len(rows)


@app.command()
@user_errors
def regenerate(
    bundle: Annotated[Path, typer.Option(help="bundle folder written by `taesar pretrain`")],
    target: Annotated[str, typer.Option(help="target domain name")],
    out_file: Annotated[Path, typer.Option("--out", help="output file")],
    data: Annotated[Path | None, typer.Option(help="prepared dataset folder")] = None,
    input_file: Annotated[Path | None, typer.Option("--input", help='JSONL: {"user_id"?, "items": [...]}')] = None,
    fmt: Annotated[str, typer.Option("--format", help="jsonl | recbole")] = "jsonl",
    split: Annotated[str, typer.Option(help="with --data: train (no valid/test items) | full")] = "train",
    unknown_items: Annotated[str, typer.Option(help="error | drop (reason unknown_item)")] = "error",
    ablation: Ablation = None,
    drop_repeats: Annotated[
        bool,
        typer.Option(
            "--drop-repeats/--keep-repeats",
            help="discard a replacement already anywhere in the row (not in METHOD.md; for logs without repeats)",
        ),
    ] = False,
    device: Device = "auto",
    batch_size: int = 256,
    memory_budget_mb: MemoryBudgetMb = "auto",
    include_titles: Annotated[
        bool, typer.Option("--include-titles", help="add the items' titles to each JSONL line (when known)")
    ] = False,
) -> None:
    """Stage II: rewrite every sequence into the target domain (keep / replace / discard)."""
    from models.bundle import load_bundle
    from models.decoding import Regenerator

    _check_choice("--format", fmt, ("jsonl", "recbole"))
    _check_choice("--split", split, ("train", "full"))
    _check_choice("--unknown-items", unknown_items, ("error", "drop"))
    options = dataclasses.replace(_decode_options(ablation), drop_repeats=drop_repeats)
    b = load_bundle(bundle, device=_device(device))
    b.catalogue.domain_index(target)
    records, total = _records(data, input_file, split, b.catalogue)
    engine = Regenerator(
        b.catalogue,
        b.mixed,
        b.experts,
        device=_device(device),
        batch_size=batch_size,
        memory_budget_mb=_budget_value(memory_budget_mb),
    )
    stats = _regenerate_to_file(
        engine, target, records, total, out_file, fmt, unknown_items, options, titles=include_titles
    )
    _print_counts({target: stats})
    out.print(f"wrote {out_file}")


def _check_choice(flag: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise TaesarError(f"{flag} must be one of {', '.join(choices)}, got {value!r}")


def _device(device: str) -> str:
    import torch

    _check_choice("--device", device, ("auto", "cpu", "cuda"))
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise TaesarError("--device cuda asked for, but torch sees no CUDA device")
    return device


def _regenerate_to_file(
    engine: Any,
    target: str,
    records: Records,
    total: int | None,
    out_file: Path,
    fmt: str,
    unknown_items: str,
    options: Any,
    keep: list | None = None,
    titles: bool = False,
) -> dict[str, int]:
    """Streams results into a temporary file renamed into place at the end, so a failure
    (e.g. an unknown item) never leaves a truncated output behind. keep, when given,
    collects every decoded row too."""
    from models.decoding import iter_regenerate_external
    from models.output import to_output_line, write_jsonl, write_recbole

    if unknown_items == "error":  # reject before decoding anything
        for k, (_, items) in enumerate(records()):
            for item in items:
                _known(engine.catalogue, item, k)
    totals = {"sequences": 0, "kept": 0, "replaced": 0, "discarded": 0}
    users: list[str] = []

    def lines() -> Iterator[dict]:
        for result in iter_regenerate_external(
            engine,
            (items for u, items in _remember_users(records(), users)),
            target,
            unknown_items=unknown_items,
            options=options,
            on_progress=lambda n: bars(f"regenerate {target}", n, total or n, {}),
        ):
            totals["sequences"] += 1
            if keep is not None:
                keep.append(result)
            for k in ("kept", "replaced", "discarded"):
                totals[k] += result.stats[k]
            yield to_output_line(result, engine.catalogue, target, users[totals["sequences"] - 1], titles=titles)

    out_file.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_file.with_name(f".{out_file.name}.partial")
    try:
        with progress_bars() as bars:
            (write_jsonl if fmt == "jsonl" else write_recbole)(tmp, lines())
        tmp.replace(out_file)
    finally:
        tmp.unlink(missing_ok=True)
    return totals


def _known(catalogue: Any, item: Any, k: int) -> int:
    from models.errors import UnknownItemError

    dense = catalogue.get(item)
    if dense is None:
        raise UnknownItemError(
            f"unknown item {item!r} in sequence {k} (use --unknown-items drop to discard unknown items)",
            {"item": str(item), "sequence": k},
        )
    return dense


def _remember_users(rows: Iterator[tuple[str, list]], users: list[str]) -> Iterator[tuple[str, list]]:
    for u, items in rows:
        users.append(u)
        yield u, items


def _print_counts(per_domain: dict[str, dict[str, int]]) -> None:
    table = Table(title="decisions per target domain")
    for col in ("target", "sequences", "kept", "replaced", "discarded"):
        table.add_column(col, justify="left" if col == "target" else "right")
    for name, s in per_domain.items():
        table.add_row(name, *(str(s[k]) for k in ("sequences", "kept", "replaced", "discarded")))
    out.print(table)


# -- evaluate and export ----------------------------------------------------------------

Backbones = Annotated[str, typer.Option(help="comma-separated: sasrec, gru4rec")]
Variants = Annotated[
    str,
    typer.Option(
        help="comma-separated: sim, full, new, random, random_matched, no_adaptation, no_source_experts, "
        "no_global, no_local, and two outside METHOD.md: new_norepeat, sim_x2 "
        "(docs/results/ml100k.md); 'all' for every one"
    ),
]
Seeds = Annotated[int, typer.Option(min=1, help="downstream seeds per variant")]
Patience = Annotated[int, typer.Option(min=1, help="downstream early stopping patience (validation NDCG@10)")]


Lr = Annotated[
    float, typer.Option(callback=_positive, help="downstream Adam learning rate (the paper's 3e-4 by default)")
]
Resume = Annotated[
    bool,
    typer.Option(
        "--resume/--no-resume",
        help="reuse the trainings already in RUN/trainings.jsonl whose data, config, seed and threads match",
    ),
]
Jobs = Annotated[
    int,
    typer.Option(
        min=1,
        help="downstream trainings run at once, each in its own process with --threads / jobs torch threads "
        "(numbers depend on that thread count only)",
    ),
]


def _split_list(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


def _eval_config(
    targets: list[str],
    backbones: str,
    variants: str,
    seeds: int,
    seed: int,
    holdout: int,
    epochs: int,
    patience: int,
    device: str,
    jobs: int = 1,
    lr: float = 3e-4,
) -> Any:
    import torch

    from models.downstream import DownstreamConfig
    from models.evaluation import VARIANTS, EvalConfig

    chosen = list(VARIANTS) if variants.strip() == "all" else _split_list(variants)
    return EvalConfig(
        targets=tuple(targets),
        backbones=tuple(_split_list(backbones)),
        variants=tuple(chosen),
        seeds=tuple(seed + i for i in range(seeds)),
        holdout=holdout,
        downstream=DownstreamConfig(epochs=epochs, patience=patience, lr=lr, device=_device(device)),
        jobs=jobs,
        job_threads=max(1, torch.get_num_threads() // jobs),
    )


def _command_line() -> str:
    return " ".join(["taesar", *sys.argv[1:]])


def _run_evaluation(
    ds: Any, cfg: Any, engine: Any, run: Path, extra: dict, resume: bool = False, predecoded: dict | None = None
) -> None:
    from models.evaluation import Finished, run_evaluation
    from models.report import write_report

    log = run / "trainings.jsonl"  # one line per finished training, as they finish
    finished = _read_run_log(log) if resume else {}
    log.parent.mkdir(parents=True, exist_ok=True)
    # rewritten with the readable lines only, so that a line cut short by a kill cannot
    # swallow the next one
    log.write_text("".join(json.dumps(d.to_json()) + "\n" for d in finished.values()), encoding="utf-8")

    def on_result(done: Finished) -> None:
        with log.open("a", encoding="utf-8") as f:
            f.write(json.dumps(done.to_json()) + "\n")

    with progress_bars() as bars:
        evaluation = run_evaluation(
            ds, cfg, engine, progress=bars, on_result=on_result, finished=finished, predecoded=predecoded
        )
    paths = write_report(evaluation, run, extra=extra)
    _print_summary(evaluation.report)
    out.print(f"report: {paths[2]}  ({len(paths) - 3} figures)")


def _read_run_log(path: Path) -> dict:
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


def _print_summary(report: dict) -> None:
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


def _engine_for(bundle: Path | None, ds: Any, holdout: int, device: str, memory_budget_mb: str = "auto") -> Any:
    """A Regenerator on a bundle that is leak-free for this holdout (or None without a bundle)."""
    from models.bundle import load_bundle
    from models.decoding import Regenerator
    from models.evaluation import check_bundle

    if bundle is None:
        return None
    b = load_bundle(bundle, device=_device(device))
    check_bundle(b.manifest, ds, holdout)
    return Regenerator(
        b.catalogue, b.mixed, b.experts, device=_device(device), memory_budget_mb=_budget_value(memory_budget_mb)
    )


# -- pipeline -----------------------------------------------------------------------


@app.command()
@user_errors
def pipeline(
    data: Annotated[Path, typer.Option(help="prepared dataset folder")],
    run: Annotated[Path, typer.Option("--out", help="run folder: bundle/, regenerated/, summary.json, report.*")],
    targets: Annotated[str | None, typer.Option(help="comma-separated target domains (default: all)")] = None,
    epochs: Annotated[int, typer.Option(min=1, help="max epochs of pretraining and of each downstream model")] = 200,
    adapt_epochs: AdaptEpochs = 20,
    seed: Annotated[int, typer.Option(help="pretraining seed; downstream seeds are seed, seed+1, ...")] = 42,
    device: Device = "auto",
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
    memory_budget_mb: MemoryBudgetMb = "auto",
    max_steps: MaxSteps = None,
) -> None:
    """Pretrain, regenerate every chosen target, then evaluate downstream models (report.json/.md, figures).

    Under torchrun all ranks pretrain together; then rank 0 alone regenerates and
    evaluates while the others exit."""
    from models.bundle import load_bundle
    from models.data import load_dataset
    from models.decoding import Regenerator
    from models.evaluation import check_bundle
    from models.output import file_names

    started = time.perf_counter()
    launch = _launch()
    if bundle is not None and _other_rank_exits("pipeline --bundle", launch, "runs on rank 0 only"):
        return
    ds = load_dataset(data)
    chosen = _parse_targets(targets, ds.catalogue)
    holdout = holdout or ds.options["holdout"]
    eval_cfg = (
        _eval_config(chosen, backbones, variants, seeds, seed, holdout, epochs, patience, device, jobs, lr)
        if evaluate
        else None
    )
    if bundle is None:
        options = {"max_steps": max_steps}
        bundle_dir = _run_pretrain(data, run / "bundle", epochs, adapt_epochs, seed, device, holdout, options=options)
        if _other_rank_exits("pipeline", launch, "pretrained; rank 0 regenerates and evaluates"):
            return
    else:
        bundle_dir = bundle
    b = load_bundle(bundle_dir, device=_device(device))
    check_bundle(b.manifest, ds, holdout)
    engine = Regenerator(
        b.catalogue, b.mixed, b.experts, device=_device(device), memory_budget_mb=_budget_value(memory_budget_mb)
    )
    records, total = _records(data, None, "train", b.catalogue, holdout)
    counts: dict[str, dict[str, int]] = {}
    # the evaluation's variants that decode plainly (new, random_matched) reuse these rows
    decoded: dict[str, list] | None = {} if eval_cfg is not None and eval_cfg.needs_decoding else None
    names = file_names(ds.catalogue.domains)  # one file per domain, named after it
    for target in chosen:
        path = run / "regenerated" / f"{names[target]}.jsonl"
        keep = None if decoded is None else decoded.setdefault(target, [])
        counts[target] = _regenerate_to_file(
            engine, target, records, total, path, "jsonl", "error", _decode_options(None), keep
        )
        counts[target]["file"] = str(path.relative_to(run))  # type: ignore[assignment]
    _print_counts(counts)
    summary: dict[str, Any] = {"data": str(data), "bundle": str(bundle_dir), "holdout": holdout, "targets": counts}
    if eval_cfg is not None:
        _run_evaluation(ds, eval_cfg, engine, run, {"command": _command_line()}, resume, decoded)
        summary["report"] = "report.json"
    summary["wall_time_s"] = round(time.perf_counter() - started, 1)
    (run / "summary.json").write_text(json.dumps(summary, indent=2, ensure_ascii=False) + "\n")
    out.print(f"run written to {run} in {summary['wall_time_s']} s")


def _parse_targets(targets: str | None, catalogue: Any) -> list[str]:
    if not targets:
        return list(catalogue.domains)
    names = [t.strip() for t in targets.split(",") if t.strip()]
    for n in names:
        catalogue.domain_index(n)
    return names


@app.command()
@user_errors
def evaluate(
    data: Annotated[Path, typer.Option(help="prepared dataset folder")],
    target: Annotated[str, typer.Option(help="target domain name")],
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
    device: Device = "auto",
    memory_budget_mb: MemoryBudgetMb = "auto",
) -> None:
    """Train downstream models on each training set of one target domain and compare them.

    Under torchrun only rank 0 evaluates (with --jobs processes of its own)."""
    from models.data import load_dataset
    from models.evaluation import EvalConfig

    if _other_rank_exits("evaluate", _launch(), "runs on rank 0 only"):
        return
    ds = load_dataset(data)
    ds.catalogue.domain_index(target)
    holdout = holdout or ds.options["holdout"]
    cfg: EvalConfig = _eval_config(
        [target], backbones, variants, seeds, seed, holdout, epochs, patience, device, jobs, lr
    )
    engine = _engine_for(bundle, ds, holdout, device, memory_budget_mb)
    _run_evaluation(ds, cfg, engine, run, {"command": _command_line()}, resume)


export_app = typer.Typer(no_args_is_help=True, help="Export training sets for other frameworks.")
app.add_typer(export_app, name="export")


@export_app.command("recbole")
@user_errors
def export_recbole(
    data: Annotated[Path, typer.Option(help="prepared dataset folder")],
    target: Annotated[str, typer.Option(help="target domain name")],
    out_dir: Annotated[Path, typer.Option("--out", help="folder to hold one RecBole dataset folder per variant")],
    bundle: Annotated[Path | None, typer.Option(help="bundle to decode with (for new and the ablations)")] = None,
    variants: Variants = "sim,full,new,random",
    holdout: HoldoutEval = None,
    max_len: Annotated[int, typer.Option(help="longest history written per row")] = 128,
    data_seed: Annotated[
        int, typer.Option(help="seed of the random baselines' draws (taesar evaluate draws with 0)")
    ] = 0,
    device: Device = "auto",
    memory_budget_mb: MemoryBudgetMb = "auto",
) -> None:
    """Write each training set with the shared valid/test points as RecBole atomic files (docs/recbole.md)."""
    from models.data import load_dataset
    from models.evaluation import VARIANTS, export_recbole

    ds = load_dataset(data)
    ds.catalogue.domain_index(target)
    holdout = holdout or ds.options["holdout"]
    chosen = list(VARIANTS) if variants.strip() == "all" else _split_list(variants)
    unknown = [v for v in chosen if v not in VARIANTS]
    if unknown:
        raise TaesarError(f"unknown variant(s) {unknown}; choose from {', '.join(VARIANTS)}")
    engine = _engine_for(bundle, ds, holdout, device, memory_budget_mb)
    with progress_bars() as bars:
        written = export_recbole(
            ds, target, chosen, out_dir, holdout=holdout, regenerator=engine, max_len=max_len, data_seed=data_seed,
            progress=bars,
        )  # fmt: skip
    table = Table(title=f"RecBole datasets in {out_dir}")
    for col in ("dataset", "train rows", "valid rows", "test rows"):
        table.add_column(col, justify="left" if col == "dataset" else "right")
    for variant, counts in written.items():
        table.add_row(f"{target}-{variant}", *(str(counts[s]) for s in ("train", "valid", "test")))
    out.print(table)


@app.command()
@user_errors
def info(bundle: Annotated[Path, typer.Argument(help="bundle folder")]) -> None:
    """Print a bundle's domains, sizes, hyper-parameters and validation metrics (no weights loaded)."""
    from models.bundle import read_manifest

    manifest = read_manifest(bundle)
    json.dump(_manifest_summary(manifest), sys.stdout, indent=2, ensure_ascii=False)
    sys.stdout.write("\n")


def _manifest_summary(manifest: dict) -> dict:
    cat = manifest["catalogue"]
    sizes = {d: b - a for d, a, b in zip(cat["domains"], cat["offsets"], cat["offsets"][1:], strict=False)}
    return {
        "format_version": manifest["format_version"],
        "domains": sizes,
        "model_config": manifest["model_config"],
        "training": manifest.get("training", {}),
        "metrics": manifest.get("metrics", {}),
        "data_fingerprint": manifest.get("data_fingerprint"),
    }


# -- service ------------------------------------------------------------------------


@app.command()
@user_errors
def serve(
    host: Annotated[str, typer.Option(help="interface to bind")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port")] = 8000,
    workers: Annotated[int, typer.Option(help="uvicorn processes (each loads every bundle)")] = 1,
) -> None:
    """Run the HTTP API (settings from TAESAR_* environment variables; see docs/service.md)."""
    from app.serve import serve_command

    serve_command(host=host, port=port, workers=workers)


def _gpu_list(value: str | None) -> str | None:
    from workers.main import parse_gpus

    if value is not None:
        try:
            parse_gpus(value)
        except ValueError as exc:
            raise typer.BadParameter(str(exc)) from None
    return value


@app.command()
@user_errors
def worker(
    concurrency: Annotated[
        int, typer.Option(min=1, help="1 = one solo process (one per GPU); N > 1 = prefork on CPU")
    ] = 1,
    loglevel: str = "INFO",
    queues: Annotated[str | None, typer.Option(help="comma-separated Celery queues (default: the API's queue)")] = None,
    gpus: Annotated[
        str | None,
        typer.Option(
            callback=_gpu_list,
            help="comma-separated GPU ids (CUDA_VISIBLE_DEVICES values): one solo worker process per GPU, "
            "supervised together; if one exits, all stop with a non-zero code",
        ),
    ] = None,
) -> None:
    """Run a Celery worker that decodes queued job chunks (same TAESAR_* settings as the API)."""
    from workers.main import gpu_worker_command, parse_gpus, worker_command

    if gpus is None:
        worker_command(concurrency=concurrency, loglevel=loglevel, queues=queues)
        return
    if concurrency != 1:
        raise TaesarError("--gpus runs one solo process per GPU; it cannot be combined with --concurrency")
    code = gpu_worker_command(parse_gpus(gpus), loglevel=loglevel, queues=queues)
    if code:
        raise typer.Exit(code)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
