"""`taesar pretrain`: Stage I, the mixed model and one expert per domain, into a bundle."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from cli.choices import value_of
from cli.common import AdaptEpochs, DataDir, Device, HoldoutEval, MaxSteps, out, positive, user_errors
from cli.distributed import process_group, write_on_rank_zero
from cli.progress import progress_bars
from cli.settings import EngineOptions, GlobalOptions, Runtime, runtime


@dataclass(frozen=True)
class ModelSizes:
    """SASRec sizes; the defaults are the paper's (models.sasrec.SASRecConfig)."""

    hidden: int = 128
    layers: int = 2
    heads: int = 2
    inner: int = 128
    dropout: float = 0.2
    max_len: int = 128

    def config(self, n_items: int) -> Any:
        from models.sasrec import SASRecConfig

        if self.hidden % self.heads:
            raise typer.BadParameter(f"--hidden {self.hidden} is not a multiple of --heads {self.heads}")
        return SASRecConfig(
            n_items=n_items, max_len=self.max_len, hidden=self.hidden, n_layers=self.layers, n_heads=self.heads,
            inner=self.inner, dropout=self.dropout,
        )  # fmt: skip


@dataclass(frozen=True)
class Training:
    """The optimisation of the mixed model and the experts (models.pretrain.TrainConfig)."""

    epochs: int = 200
    patience: int = 10
    adapt_epochs: int = 20
    seed: int = 42
    batch_size: int = 128
    lr: float = 3e-4
    max_steps: int | None = None
    logits_budget_mb: float | None = None  # None: TrainConfig's default

    def config(self, device: str, holdout: int) -> Any:
        from models.pretrain import TrainConfig

        budget = {} if self.logits_budget_mb is None else {"logits_budget_mb": self.logits_budget_mb}
        return TrainConfig(
            epochs=self.epochs, patience=self.patience, adapt_epochs=self.adapt_epochs, seed=self.seed,
            batch_size=self.batch_size, lr=self.lr, max_steps=self.max_steps, device=device, holdout=holdout, **budget,
        )  # fmt: skip


def _logits_budget(value: float | None) -> float | None:
    from models.losses import check_budget_mb

    if value is None:
        return None
    try:
        check_budget_mb("--logits-budget-mb", value)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    return value


@user_errors
def pretrain(
    ctx: typer.Context,
    data: DataDir,
    bundle: Annotated[Path, typer.Option("--out", help="bundle folder to write")],
    epochs: Annotated[int, typer.Option(min=1, help="max epochs of the mixed model (early stopping)")] = 200,
    patience: Annotated[
        int, typer.Option(min=1, help="epochs without a better validation NDCG@10 before the mixed model stops")
    ] = 10,
    adapt_epochs: AdaptEpochs = 20,
    seed: Annotated[int, typer.Option(help="seed of initialisation and batch order")] = 42,
    device: Device = None,
    holdout: HoldoutEval = None,
    hidden: Annotated[int, typer.Option(min=1, help="SASRec hidden size (item embedding width)")] = 128,
    layers: Annotated[int, typer.Option(min=1, help="transformer layers")] = 2,
    heads: Annotated[int, typer.Option(min=1, help="attention heads (must divide --hidden)")] = 2,
    inner: Annotated[int, typer.Option(min=1, help="feed-forward width of each layer")] = 128,
    dropout: Annotated[float, typer.Option(min=0.0, max=0.9, help="dropout of embeddings and layers")] = 0.2,
    max_len: Annotated[int, typer.Option(min=1, help="context: the last N items a model sees")] = 128,
    batch_size: Annotated[int, typer.Option(min=1, help="training sequences per optimiser step")] = 128,
    lr: Annotated[
        float, typer.Option(callback=positive, help="Adam learning rate of the mixed model and of adaptation")
    ] = 3e-4,
    max_steps: MaxSteps = None,
    logits_budget_mb: Annotated[
        float | None,
        typer.Option(
            callback=_logits_budget,
            help="MB for one training batch's positions x items logits (larger batches are tiled, same loss) "
            "and one validation tile's scores",
            show_default="DEFAULT_LOGITS_BUDGET_MB of models/losses.py",
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
    sizes = ModelSizes(hidden, layers, heads, inner, dropout, max_len)
    training = Training(epochs, patience, adapt_epochs, seed, batch_size, lr, max_steps, logits_budget_mb)
    run_pretrain(
        data,
        bundle,
        training,
        runtime(EngineOptions(device=value_of(device), threads=GlobalOptions.of(ctx).threads)),
        holdout,
        sizes,
    )


def run_pretrain(
    data: Path,
    bundle: Path,
    training: Training,
    rt: Runtime,
    holdout: int | None = None,
    sizes: ModelSizes = ModelSizes(),
) -> Path:
    """Pretrain and write a bundle; holdout None is the dataset's.

    Under torchrun every rank trains its share and rank 0 alone writes the bundle and
    prints; the other ranks return once it is written."""
    from models.data import load_dataset
    from models.pretrain import pretrain as train

    ds = load_dataset(data)
    cfg = training.config(rt.device_choice, holdout or ds.options["holdout"])
    model = sizes.config(ds.catalogue.n_items)
    started = time.perf_counter()
    with process_group(rt.device) as dist:
        is_main = dist is None or dist.rank == 0
        with progress_bars() if is_main else contextlib.nullcontext() as bars:  # bars on rank 0 only
            result = train(ds, cfg, model_config=model, progress=bars, dist=dist)
        path = write_on_rank_zero(result, bundle, ds, dist)
    if is_main:
        print_metrics(result.metrics)
        out.print(f"bundle written to {path} in {time.perf_counter() - started:.0f} s")
    return path


def print_metrics(metrics: dict) -> None:
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
