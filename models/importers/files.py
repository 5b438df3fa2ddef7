"""Reading an interaction log file (CSV, TSV, Parquet, compressed or not) block by block
into the canonical frame: user_id, item_id, domain, timestamp."""

from __future__ import annotations

import csv
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import psutil
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from models.catalogue import MAX_DOMAINS, MIN_DOMAINS
from models.errors import DataError
from models.importers.columns import Columns, FirstTitles, Ids, Source
from models.importers.times import Times
from models.titles import FRAME_ATTR

COLUMNS = ("user_id", "item_id", "domain", "timestamp")
_FLAGS = {
    "user_id": "user-col",
    "item_id": "item-col",
    "domain": "domain-col",
    "timestamp": "time-col",
    "title": "title-col",
}
_SEPARATORS = {".csv": ",", ".tsv": "\t"}
_PARQUET = {".parquet", ".pq"}
_COMPRESSION = {".gz", ".bz2", ".zip", ".xz", ".zst"}
_SNIFF_DELIMITERS = ",\t;|"

# Peak memory of `taesar data import` (read, prepare, save) is the interpreter and libraries
# (~0.1 GiB) plus working memory, 160 MiB + 50 bytes per interaction: benchmarks/data_scale.py
# measured 0.23 GiB + 50 bytes in all from 1M to 50M rows (docs/data.md has the table). The
# refusal uses these figures without a safety margin, so it only stops logs that cannot fit.
IMPORT_WORK_BYTES = 160 * 2**20
IMPORT_BYTES_PER_ROW = 50
_TEXT_BLOCK_BYTES = 16 * 2**20  # text parsed at a time (Arrow's own streaming reader queues 32 blocks ahead)
_BATCH_ROWS = 1 << 20  # rows per step from Parquet or an in-memory frame
_SAMPLE_BYTES = 1 << 20  # of (decompressed) text, to estimate a log's row count


def read_interactions(
    path: str | Path,
    *,
    user_col: str = "user_id",
    item_col: str = "item_id",
    domain_col: str = "domain",
    time_col: str = "timestamp",
    sep: str | None = None,
    title_col: str | None = None,
) -> pd.DataFrame:
    """Read a CSV/TSV/Parquet interaction log into the canonical four columns.

    The file is read block by block; ids and domains come back as categoricals (an
    integer code per row, each distinct value once), so memory grows by a few bytes
    per interaction and no Python object is made per row. A log whose import is
    estimated not to fit in the available memory is refused before it is read.
    With `title_col`, each item's first non-blank title goes into the frame's attrs
    (models/titles.py), for the catalogue.
    """
    path = Path(path)
    names = {user_col: "user_id", item_col: "item_id", domain_col: "domain", time_col: "timestamp"}
    if title_col is not None:
        names[title_col] = "title"
    if len(names) != 4 + (title_col is not None):
        raise DataError(f"{path}: two of the column options name the same column: {list(names)}")
    check_file(path)
    source = _source(path, list(names), sep)
    check_import_memory(path, source.rows)
    return _frame(source, str(path), empty=f"{path}: has a header but no rows")


def check_import_memory(path: str | Path, rows: int) -> None:
    """Refuse a log of about `rows` interactions whose import needs more memory than is available
    now, before any work starts (a process that runs out of memory is killed without a message)."""
    need = IMPORT_WORK_BYTES + IMPORT_BYTES_PER_ROW * rows
    available = _available_memory()
    if need > available:
        raise DataError(
            f"{path}: about {rows:,} interactions need about {_size(need)} of memory to import "
            f"({IMPORT_BYTES_PER_ROW} bytes each + {_size(IMPORT_WORK_BYTES)}) but {_size(available)} is available; "
            "split the log by user into parts that fit, or use a machine with more memory",
            {"rows": rows, "need_bytes": need, "available_bytes": available},
        )


def _available_memory() -> int:
    return int(psutil.virtual_memory().available)


def _size(n: float) -> str:
    return f"{n / 2**30:.1f} GiB" if n >= 2**30 else f"{n / 2**20:.0f} MiB"


def check_file(path: Path) -> None:
    if not path.exists():
        raise DataError(f"{path}: no such file")
    if path.is_dir():
        raise DataError(f"{path}: is a directory, expected a CSV, TSV or Parquet file")
    if path.stat().st_size == 0:
        raise DataError(f"{path}: the file is empty")


def _source(path: Path, wanted: list[str], sep: str | None) -> Source:
    suffixes = [s.lower() for s in path.suffixes]
    ext = suffixes[-2] if len(suffixes) > 1 and suffixes[-1] in _COMPRESSION else (suffixes[-1:] or [""])[0]
    if ext in _PARQUET or (sep is None and ext not in _SEPARATORS and _is_parquet(path)):
        return _parquet_source(path, wanted)
    if sep is None:
        sep = _SEPARATORS.get(ext) or _sniff_separator(path)
    return _text_source(path, wanted, sep)


def _is_parquet(path: Path) -> bool:
    with path.open("rb") as fh:
        return fh.read(4) == b"PAR1"


def _sniff_separator(path: Path) -> str:
    try:
        with path.open("r", encoding="utf-8", newline="") as fh:
            sample = fh.read(65536)
        return csv.Sniffer().sniff(sample, delimiters=_SNIFF_DELIMITERS).delimiter
    except UnicodeDecodeError:
        raise DataError(f"{path}: unknown format (not UTF-8 text, not Parquet); use .csv, .tsv or .parquet") from None
    except csv.Error:
        raise DataError(
            f"{path}: cannot tell the column separator (tried , tab ; |); name the file .csv/.tsv or pass the separator"
        ) from None


# Arrow's and pandas' parse errors, EmptyDataError and UnicodeDecodeError are all ValueErrors
_TEXT_ERRORS = (ValueError, OSError)


def _text_source(path: Path, wanted: list[str], sep: str) -> Source:
    try:
        header = pd.read_csv(path, sep=sep, nrows=0, encoding="utf-8").columns.tolist()
    except _TEXT_ERRORS as exc:
        raise _text_error(path, sep, exc) from None
    _check_columns(path, header, wanted)

    def blocks() -> Iterator[Columns]:
        # Arrow parses one-character separators only; pandas' parser takes the rest
        inner = _arrow_text(path, wanted, sep) if len(sep) == 1 else _pandas_text(path, wanted, sep)
        return _guarded(inner, _TEXT_ERRORS, lambda exc: _text_error(path, sep, exc))

    return Source(blocks, _estimate_text_rows(path), csv_times=len(sep) == 1)


def _arrow_text(path: Path, wanted: list[str], sep: str) -> Iterator[Columns]:
    parse = pacsv.ParseOptions(delimiter=sep)
    # every column as text: ids stay strings ("007"), and times are typed block by block (Times)
    convert = pacsv.ConvertOptions(
        column_types=dict.fromkeys(wanted, pa.string()),
        include_columns=wanted,
        strings_can_be_null=True,
        null_values=[""],
    )
    with pa.input_stream(str(path), compression="detect") as stream:  # .gz, .bz2, ... decompressed
        blocks = _line_blocks(stream, _TEXT_BLOCK_BYTES)
        header = next(blocks, b"")
        names = pacsv.read_csv(pa.py_buffer(header), parse_options=parse).column_names
        read = pacsv.ReadOptions(column_names=names)
        for block in blocks:
            table = pacsv.read_csv(pa.py_buffer(block), read_options=read, parse_options=parse, convert_options=convert)
            for batch in table.to_batches():
                yield batch.columns


def _line_blocks(stream: pa.NativeFile, size: int) -> Iterator[memoryview]:
    """The first line, then the rest in pieces of about `size` bytes, each ending at a line end
    (\n or \r, as for Arrow; the \n of a \r\n cut in two starts the next piece as an empty line)."""
    tail, first = b"", True
    while data := stream.read(size):
        block = tail + data if tail else data
        start = 0
        if first:
            ends = [i for i in (block.find(b"\n"), block.find(b"\r")) if i >= 0]
            if not ends:
                tail = block
                continue
            start, first = min(ends) + 1, False
            yield memoryview(block)[:start]
        cut = max(block.rfind(b"\n"), block.rfind(b"\r")) + 1
        if cut > start:
            yield memoryview(block)[start:cut]
        tail = block[max(cut, start) :]
    if tail:
        yield memoryview(tail)


def _pandas_text(path: Path, wanted: list[str], sep: str) -> Iterator[Columns]:
    df = pd.read_csv(path, sep=sep, usecols=wanted, dtype=str, keep_default_na=False, na_values=[""])
    yield from frame_blocks(df[wanted])


def frame_blocks(df: pd.DataFrame) -> Iterator[Columns]:
    for batch in pa.Table.from_pandas(df, preserve_index=False).to_batches(_BATCH_ROWS):
        yield batch.columns


def _text_error(path: Path, sep: str, exc: BaseException) -> DataError:
    if isinstance(exc, pd.errors.EmptyDataError):
        return DataError(f"{path}: the file is empty")
    if isinstance(exc, UnicodeDecodeError):
        return DataError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})")
    return DataError(f"{path}: cannot read as {_sep_name(sep)}-separated text: {first_line(exc)}")


def _parquet_source(path: Path, wanted: list[str]) -> Source:
    def error(exc: BaseException) -> DataError:
        return DataError(f"{path}: cannot read as Parquet: {first_line(exc)}")

    try:
        with pq.ParquetFile(path) as pf:
            header, rows = pf.schema_arrow.names, pf.metadata.num_rows
    except Exception as exc:  # pyarrow raises many unrelated types for a corrupt file
        raise error(exc) from None
    _check_columns(path, header, wanted)

    def blocks() -> Iterator[Columns]:
        with pq.ParquetFile(path) as pf:
            for batch in pf.iter_batches(batch_size=_BATCH_ROWS, columns=wanted):
                yield [batch.column(name) for name in wanted]

    return Source(lambda: _guarded(blocks(), (Exception,), error), rows, csv_times=False)


def _guarded(
    blocks: Iterator[Columns], errors: tuple[type[BaseException], ...], error: Callable[[BaseException], DataError]
) -> Iterator[Columns]:
    try:
        yield from blocks
    except DataError:
        raise
    except errors as exc:
        raise error(exc) from None


def _estimate_text_rows(path: Path) -> int:
    """Data rows of a text log, from the lines in its first megabyte (decompressed); 0 if unknown."""
    try:
        codec = pa.Codec.detect(str(path)).name
    except (TypeError, ValueError, pa.ArrowException):
        codec = None  # not compressed, or a compression Arrow does not know
    try:
        with pa.OSFile(str(path)) as raw:
            stream = pa.CompressedInputStream(raw, codec) if codec else raw  # closing it closes `raw`
            sample = stream.read(_SAMPLE_BYTES)
            consumed = raw.tell()
    except (OSError, ValueError, pa.ArrowException):
        return 0  # unknown; reading reports the problem
    lines = sample.count(b"\n") + (not sample.endswith(b"\n"))
    if len(sample) < _SAMPLE_BYTES:
        return max(lines - 1, 0)  # the whole file, less its header
    return int(path.stat().st_size / max(consumed, 1) * lines)


def _check_columns(path: Path, header: list[str], wanted: list[str]) -> None:
    missing = [c for c in wanted if c not in header]
    if not missing:
        return
    canon = dict(zip(wanted, (*COLUMNS, "title"), strict=False))
    flags = " / ".join(f"--{_FLAGS[canon[c]]}" for c in missing)
    raise DataError(
        f"{path}: missing column(s) {', '.join(map(repr, missing))}; the file has {', '.join(map(repr, header))}; "
        f"name the right columns with {flags}",
        {"missing": missing, "present": header},
    )


def normalise(df: pd.DataFrame, where: str) -> pd.DataFrame:
    """The canonical frame of an in-memory frame, by the same rules as a file."""
    return _frame(Source(lambda: frame_blocks(df[list(COLUMNS)]), len(df), csv_times=False), where)


def _frame(source: Source, where: str, *, empty: str | None = None) -> pd.DataFrame:
    """Strings for ids and domain, numbers for time, no blanks, 2..16 domains."""
    ids = [Ids(source.rows) for _ in COLUMNS[:3]]
    times = Times(source)
    titles = FirstTitles()
    for block in source.blocks():
        for acc, col in zip(ids, block[:3], strict=True):
            acc.add(col)
        times.add(block[3])
        if len(block) > len(COLUMNS):  # the title column
            titles.add(block[1], block[4])
    if empty is not None and not times.rows:
        raise DataError(empty)
    out: dict[str, Any] = {name: acc.finish(name, where) for name, acc in zip(COLUMNS, ids, strict=False)}
    out["timestamp"] = times.finish(where)
    del ids, times
    pa.default_memory_pool().release_unused()  # what Arrow's allocator keeps cached, the next steps can use
    _check_domain_count(list(out["domain"].categories), where)
    df = pd.DataFrame(out, copy=False)
    if titles.titles:
        df.attrs[FRAME_ATTR] = {"titles": titles.titles}
    return df


def _check_domain_count(names: list[str], where: str) -> None:
    if not MIN_DOMAINS <= len(names) <= MAX_DOMAINS:
        shown = ", ".join(map(repr, sorted(names)[:20])) + (" ..." if len(names) > 20 else "")
        raise DataError(
            f"{where}: found {len(names)} domain(s) ({shown}); Taesar needs {MIN_DOMAINS} to {MAX_DOMAINS}",
            {"domains": len(names)},
        )


def _sep_name(sep: str) -> str:
    return {"\t": "tab", ",": "comma", ";": "semicolon", "|": "pipe"}.get(sep, repr(sep))


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def domain_counts(df: pd.DataFrame, domains: Iterable[str] | None = None) -> pd.DataFrame:
    """Items and interactions per domain of a canonical frame (for docs and summaries)."""
    out = pd.DataFrame(
        {"items": df.groupby("domain")["item_id"].nunique(), "interactions": df.groupby("domain").size()}
    )
    return out.reindex(list(domains)) if domains is not None else out
