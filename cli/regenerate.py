"""`taesar regenerate`: Stage II, every sequence rewritten into one target domain."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from cli.choices import Ablation, OutputFormat, Split, UnknownItems, value_of
from cli.common import Device, MemoryBudgetMb, Target, out, user_errors
from cli.progress import ProgressCallback, progress_bars
from cli.settings import EngineOptions, GlobalOptions, Runtime, runtime
from models.errors import ConfigError, UnknownItemError
from models.tally import KEYS as TALLY_KEYS
from models.tally import Tally

Records = Callable[[], Iterator[tuple[str, list]]]


@dataclass(frozen=True)
class Rows:
    """A re-iterable source of (user id, external item ids) and its size when known."""

    read: Records
    total: int | None


@dataclass(frozen=True)
class Source:
    """Where the sequences come from: a prepared dataset (its train part or the full
    sequences) or a JSONL file; exactly one of data and input_file."""

    data: Path | None = None
    input_file: Path | None = None
    split: str = "train"  # train | full
    holdout: int | None = None  # None: the dataset's

    def rows(self, catalogue: Any) -> Rows:
        """A JSONL input is read lazily (twice when unknown items must be rejected up
        front), so a file of millions of sequences never sits in memory."""
        from models.data import load_dataset, train_part
        from models.errors import DataError
        from models.output import read_jsonl_input

        if (self.data is None) == (self.input_file is None):
            raise DataError("give exactly one of --data DIR or --input FILE.jsonl")
        if self.input_file is not None:
            path = self.input_file
            return Rows(lambda: ((r.user_id, r.items) for r in read_jsonl_input(path)), None)
        ds = load_dataset(self.data)
        if ds.catalogue != catalogue:
            raise DataError(
                f"dataset {self.data} was not prepared with this bundle's catalogue (different items or domains)"
            )
        holdout = self.holdout or ds.options["holdout"]
        rows = [
            (u, [catalogue.external(int(i)) for i in (s if self.split == "full" else train_part(s, holdout))])
            for u, s in zip(ds.user_ids, ds.sequences, strict=True)
        ]
        return Rows(lambda: iter(rows), len(rows))


@dataclass(frozen=True)
class Decoding:
    """How the rows are decoded: unknown items, ablations, repeats."""

    unknown_items: str = "error"  # error | drop
    ablations: tuple[str, ...] = ()  # Ablation values
    drop_repeats: bool = False

    def __post_init__(self) -> None:
        self.options()  # a refused combination fails before any work

    def options(self) -> Any:
        from models.decoding import DecodeOptions

        try:
            return DecodeOptions(drop_repeats=self.drop_repeats, **dict.fromkeys(self.ablations, True))
        except ValueError as exc:
            raise ConfigError(f"--ablation: {exc}") from None


@dataclass(frozen=True)
class Output:
    path: Path
    fmt: str = "jsonl"  # jsonl | recbole
    titles: bool = False  # each JSONL line names its items' titles (when the catalogue has them)


@user_errors
def regenerate(
    ctx: typer.Context,
    bundle: Annotated[Path, typer.Option(help="bundle folder written by `taesar pretrain`")],
    target: Target,
    out_file: Annotated[Path, typer.Option("--out", help="output file")],
    data: Annotated[Path | None, typer.Option(help="prepared dataset folder")] = None,
    input_file: Annotated[Path | None, typer.Option("--input", help='JSONL: {"user_id"?, "items": [...]}')] = None,
    fmt: Annotated[OutputFormat, typer.Option("--format", help="output file format")] = OutputFormat.jsonl,
    split: Annotated[Split, typer.Option(help="with --data: train (no valid/test items) or full")] = Split.train,
    unknown_items: Annotated[
        UnknownItems, typer.Option(help="refuse the input, or drop them (reason unknown_item)")
    ] = UnknownItems.error,
    ablation: Annotated[
        list[Ablation] | None,
        typer.Option(metavar="NAME", help=f"a decoding ablation, repeatable: {', '.join(a.value for a in Ablation)}"),
    ] = None,
    drop_repeats: Annotated[
        bool,
        typer.Option(
            "--drop-repeats/--keep-repeats",
            help="discard a replacement already anywhere in the row (not in METHOD.md; for logs without repeats)",
        ),
    ] = False,
    device: Device = None,
    batch_size: Annotated[
        int | None,
        typer.Option(min=1, help="sequences per decode batch", show_default="TAESAR_DECODE_BATCH_SIZE, else 256"),
    ] = None,
    memory_budget_mb: MemoryBudgetMb = None,
    include_titles: Annotated[
        bool, typer.Option("--include-titles", help="add the items' titles to each JSONL line (when known)")
    ] = False,
) -> None:
    """Stage II: rewrite every sequence into the target domain (keep / replace / discard)."""
    source = Source(data, input_file, split.value)
    decoding = Decoding(unknown_items.value, tuple(a.value for a in ablation or ()), drop_repeats)
    rt = runtime(EngineOptions(value_of(device), memory_budget_mb, batch_size, GlobalOptions.of(ctx).threads))
    regenerate_file(bundle, target, source, Output(out_file, fmt.value, include_titles), decoding, rt)


def regenerate_file(bundle: Path, target: str, source: Source, output: Output, decoding: Decoding, rt: Runtime) -> None:
    engine = open_engine(bundle, rt)
    engine.catalogue.domain_index(target)
    rows = source.rows(engine.catalogue)
    stats = regenerate_to_file(engine, target, rows, output, decoding)
    print_counts({target: stats})
    out.print(f"wrote {output.path}")


def open_engine(bundle: Path, rt: Runtime, leak_free_for: tuple[Any, int] | None = None) -> Any:
    """A Regenerator on a bundle; leak_free_for (dataset, holdout) checks that the bundle
    never saw those valid/test points."""
    from models.bundle import load_bundle
    from models.decoding import Regenerator
    from models.evaluation import check_bundle

    b = load_bundle(bundle, device=rt.device)
    if leak_free_for is not None:
        check_bundle(b.manifest, *leak_free_for)
    return Regenerator(
        b.catalogue, b.mixed, b.experts, device=rt.device, batch_size=rt.batch_size,
        memory_budget_mb=rt.memory_budget_mb,
    )  # fmt: skip


@dataclass
class Counted:
    """What one pass counted: sequences and their decisions, and the decoded rows when asked
    to keep them."""

    sequences: int = 0
    decisions: Tally = field(default_factory=Tally)
    keep: list | None = None

    def as_dict(self) -> dict[str, int]:
        """{"sequences", "kept", "replaced", "discarded"}: the summary's counts."""
        return {"sequences": self.sequences, **self.decisions.as_dict()}


def regenerate_to_file(
    engine: Any, target: str, rows: Rows, output: Output, decoding: Decoding, keep: list | None = None
) -> dict[str, int]:
    """Streams results into a temporary file renamed into place at the end, so a failure
    (e.g. an unknown item) never leaves a truncated output behind. keep, when given,
    collects every decoded row too."""
    from models.output import write_jsonl, write_recbole

    if decoding.unknown_items == "error":  # reject before decoding anything
        check_known(engine.catalogue, rows)
    counted = Counted(keep=keep)
    output.path.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.path.with_name(f".{output.path.name}.partial")
    try:
        with progress_bars() as bars:
            lines = _output_lines(engine, target, rows, decoding, counted, bars, titles=output.titles)
            (write_jsonl if output.fmt == "jsonl" else write_recbole)(tmp, lines)
        tmp.replace(output.path)
    finally:
        tmp.unlink(missing_ok=True)
    return counted.as_dict()


def check_known(catalogue: Any, rows: Rows) -> None:
    """The models' one unknown-item check (models.catalogue.check_known), with the option
    that lets the rows through."""
    from models.catalogue import check_known as check

    try:
        check(catalogue, (items for _, items in rows.read()))
    except UnknownItemError as exc:
        raise UnknownItemError(
            f"{exc.message} (use --unknown-items drop to discard unknown items)", exc.details
        ) from None


def _output_lines(
    engine: Any,
    target: str,
    rows: Rows,
    decoding: Decoding,
    counted: Counted,
    bars: ProgressCallback,
    *,
    titles: bool = False,
) -> Iterator[dict]:
    from models.decoding import iter_regenerate_external
    from models.output import to_output_line

    users: list[str] = []

    def items() -> Iterator[list]:
        for user, seq in rows.read():
            users.append(user)
            yield seq

    for result in iter_regenerate_external(
        engine,
        items(),
        target,
        unknown_items=decoding.unknown_items,
        options=decoding.options(),
        on_progress=lambda n: bars(f"regenerate {target}", n, rows.total or n, {}),
    ):
        counted.sequences += 1
        counted.decisions += result.stats
        if counted.keep is not None:
            counted.keep.append(result)
        yield to_output_line(result, engine.catalogue, target, users[counted.sequences - 1], titles=titles)


def print_counts(per_domain: dict[str, dict[str, int]]) -> None:
    table = Table(title="decisions per target domain")
    columns = ("sequences", *TALLY_KEYS)
    for col in ("target", *columns):
        table.add_column(col, justify="left" if col == "target" else "right")
    for name, s in per_domain.items():
        table.add_row(name, *(str(s[k]) for k in columns))
    out.print(table)
