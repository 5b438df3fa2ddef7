"""Readers that turn interaction logs into one frame: user_id, item_id, domain, timestamp.

Every mistake a user can make with an input file becomes a `DataError` whose
one-line message names the file and the problem, because that line is all the
CLI prints. Ids and domains are strings (leading zeros survive), held as pandas
categoricals: an int code per row and each distinct string once, in order of
first appearance, so a log of tens of millions of rows costs a few bytes per row
and no Python object per row. Timestamps are int64 when the input holds integers
and float64 seconds otherwise (datetimes become seconds since the epoch, naive
ones read as UTC). The frame keeps the input's row order, which later breaks ties
between equal timestamps. Files are read in blocks (Arrow), never whole as text.

MovieLens-100K comes either from the RecBole wheel on PyPI (read straight out
of the zip; RecBole is never imported) or from GroupLens' original u.data/u.item.
"""

from __future__ import annotations

import csv
import io
import subprocess
import sys
import zipfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import psutil
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from models.catalogue import MAX_DOMAINS, MIN_DOMAINS
from models.errors import DataError

COLUMNS = ("user_id", "item_id", "domain", "timestamp")
_FLAGS = {"user_id": "user-col", "item_id": "item-col", "domain": "domain-col", "timestamp": "time-col"}
_SEPARATORS = {".csv": ",", ".tsv": "\t"}
_PARQUET = {".parquet", ".pq"}
_COMPRESSION = {".gz", ".bz2", ".zip", ".xz", ".zst"}
_SNIFF_DELIMITERS = ",\t;|"

# -- MovieLens-100K ------------------------------------------------------------------

RECBOLE_VERSION = "1.2.1"
_RECBOLE_DIR = "recbole/dataset_example/ml-100k/"

ML100K_GENRES = (
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary", "Drama",
    "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller", "War", "Western",
)  # fmt: skip

# Genre -> domain. The dict order is the priority for multi-genre items: an item
# joins the first domain that owns one of its genres. The broad genres (Drama,
# Comedy) are tagged as a second genre on many films, so they come last. Of all 24
# orders this one balances interactions best (largest/smallest domain 1.69) and keeps
# >= 284 items per domain (docs/data.md has the counts). Items with no genre: drama.
ML100K_GENRE_DOMAINS: dict[str, tuple[str, ...]] = {
    "thriller": ("Thriller", "Crime", "Horror", "Mystery", "Film-Noir"),
    "action": ("Action", "Adventure", "Sci-Fi", "War", "Western", "Fantasy"),
    "comedy": ("Comedy", "Children's", "Animation", "Musical"),
    "drama": ("Drama", "Romance", "Documentary", "unknown"),
}
ML100K_DOMAINS: tuple[str, ...] = tuple(ML100K_GENRE_DOMAINS)
ML100K_FALLBACK_DOMAIN = "drama"
ML100K_MIN_DOMAIN_ITEMS = 150

assert sorted(g for gs in ML100K_GENRE_DOMAINS.values() for g in gs) == sorted(ML100K_GENRES)


# -- generic logs --------------------------------------------------------------------

# Peak memory of `taesar data import` (read, prepare, save) is the interpreter and libraries
# (~0.1 GiB) plus working memory, 160 MiB + 50 bytes per interaction: benchmarks/data_scale.py
# measured 0.23 GiB + 50 bytes in all from 1M to 50M rows (docs/data.md has the table). The
# refusal uses these figures without a safety margin, so it only stops logs that cannot fit.
IMPORT_WORK_BYTES = 160 * 2**20
IMPORT_BYTES_PER_ROW = 50
_TEXT_BLOCK_BYTES = 16 * 2**20  # text parsed at a time (Arrow's own streaming reader queues 32 blocks ahead)
_BATCH_ROWS = 1 << 20  # rows per step from Parquet or an in-memory frame
# block dictionaries are merged into the column's after this many values or rows
_MERGE_VALUES = 1 << 21
_MERGE_ROWS = 1 << 21
_SAMPLE_BYTES = 1 << 20  # of (decompressed) text, to estimate a log's row count
_ARROW_BLANKS = " \t"  # what Arrow's CSV reader ignores around a number
_ARROW_BOOLS = ("1", "0", "true", "false", "True", "False", "TRUE", "FALSE")

Columns = list[pa.Array]  # one block of the log: user, item, domain, time


@dataclass(frozen=True)
class _Source:
    blocks: Callable[[], Iterator[Columns]]  # a fresh pass over the whole log
    rows: int  # exact, or estimated from a sample of the text
    csv_times: bool  # text read by Arrow: time values are typed as Arrow's CSV reader infers them


def read_interactions(
    path: str | Path,
    *,
    user_col: str = "user_id",
    item_col: str = "item_id",
    domain_col: str = "domain",
    time_col: str = "timestamp",
    sep: str | None = None,
) -> pd.DataFrame:
    """Read a CSV/TSV/Parquet interaction log into the canonical four columns.

    The file is read block by block; ids and domains come back as categoricals (an
    integer code per row, each distinct value once), so memory grows by a few bytes
    per interaction and no Python object is made per row. A log whose import is
    estimated not to fit in the available memory is refused before it is read.
    """
    path = Path(path)
    names = {user_col: "user_id", item_col: "item_id", domain_col: "domain", time_col: "timestamp"}
    if len(names) != 4:
        raise DataError(f"{path}: two of the column options name the same column: {list(names)}")
    _check_file(path)
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


def _check_file(path: Path) -> None:
    if not path.exists():
        raise DataError(f"{path}: no such file")
    if path.is_dir():
        raise DataError(f"{path}: is a directory, expected a CSV, TSV or Parquet file")
    if path.stat().st_size == 0:
        raise DataError(f"{path}: the file is empty")


def _source(path: Path, wanted: list[str], sep: str | None) -> _Source:
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


def _text_source(path: Path, wanted: list[str], sep: str) -> _Source:
    try:
        header = pd.read_csv(path, sep=sep, nrows=0, encoding="utf-8").columns.tolist()
    except _TEXT_ERRORS as exc:
        raise _text_error(path, sep, exc) from None
    _check_columns(path, header, wanted)

    def blocks() -> Iterator[Columns]:
        # Arrow parses one-character separators only; pandas' parser takes the rest
        inner = _arrow_text(path, wanted, sep) if len(sep) == 1 else _pandas_text(path, wanted, sep)
        return _guarded(inner, _TEXT_ERRORS, lambda exc: _text_error(path, sep, exc))

    return _Source(blocks, _estimate_text_rows(path), csv_times=len(sep) == 1)


def _arrow_text(path: Path, wanted: list[str], sep: str) -> Iterator[Columns]:
    parse = pacsv.ParseOptions(delimiter=sep)
    # every column as text: ids stay strings ("007"), and times are typed block by block (_Times)
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
    yield from _frame_blocks(df[wanted])


def _frame_blocks(df: pd.DataFrame) -> Iterator[Columns]:
    for batch in pa.Table.from_pandas(df, preserve_index=False).to_batches(_BATCH_ROWS):
        yield batch.columns


def _text_error(path: Path, sep: str, exc: BaseException) -> DataError:
    if isinstance(exc, pd.errors.EmptyDataError):
        return DataError(f"{path}: the file is empty")
    if isinstance(exc, UnicodeDecodeError):
        return DataError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})")
    return DataError(f"{path}: cannot read as {_sep_name(sep)}-separated text: {_first_line(exc)}")


def _parquet_source(path: Path, wanted: list[str]) -> _Source:
    def error(exc: BaseException) -> DataError:
        return DataError(f"{path}: cannot read as Parquet: {_first_line(exc)}")

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

    return _Source(lambda: _guarded(blocks(), (Exception,), error), rows, csv_times=False)


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
    canon = dict(zip(wanted, COLUMNS, strict=True))
    flags = " / ".join(f"--{_FLAGS[canon[c]]}" for c in missing)
    raise DataError(
        f"{path}: missing column(s) {', '.join(map(repr, missing))}; the file has {', '.join(map(repr, header))}; "
        f"name the right columns with {flags}",
        {"missing": missing, "present": header},
    )


def _normalise(df: pd.DataFrame, where: str) -> pd.DataFrame:
    """The canonical frame of an in-memory frame, by the same rules as a file."""
    return _frame(_Source(lambda: _frame_blocks(df[list(COLUMNS)]), len(df), csv_times=False), where)


def _frame(source: _Source, where: str, *, empty: str | None = None) -> pd.DataFrame:
    """Strings for ids and domain, numbers for time, no blanks, 2..16 domains."""
    ids = [_Ids(source.rows) for _ in COLUMNS[:3]]
    times = _Times(source)
    for block in source.blocks():
        for acc, col in zip(ids, block, strict=False):
            acc.add(col)
        times.add(block[3])
    if empty is not None and not times.rows:
        raise DataError(empty)
    out: dict[str, Any] = {name: acc.finish(name, where) for name, acc in zip(COLUMNS, ids, strict=False)}
    out["timestamp"] = times.finish(where)
    del ids, times
    pa.default_memory_pool().release_unused()  # what Arrow's allocator keeps cached, the next steps can use
    _check_domain_count(list(out["domain"].categories), where)
    return pd.DataFrame(out, copy=False)


class _Column:
    """A numpy column filled block by block, in large segments sized from the expected
    row count. Appending never moves what is stored, and a large array goes back to the
    system when freed (a heap of small per-block arrays would stay resident); pages of
    a segment that are never written cost no memory."""

    def __init__(self, dtype: type, rows_hint: int) -> None:
        self.dtype = np.dtype(dtype)
        self.segments: list[np.ndarray] = []
        self.size = 0
        self._room = 0  # in the last segment
        self._next = max(rows_hint + rows_hint // 4, _BATCH_ROWS)

    def append(self, values: np.ndarray) -> None:
        while len(values):
            if not self._room:
                self.segments.append(np.empty(self._next, self.dtype))
                self._room, self._next = self._next, max(self._next, self.size)  # the estimate was low: grow
            last = self.segments[-1]
            n = min(self._room, len(values))
            start = len(last) - self._room
            last[start : start + n] = values[:n]
            values, self._room, self.size = values[n:], self._room - n, self.size + n

    def finish(self) -> np.ndarray:
        if self.segments:
            self.segments[-1] = self.segments[-1][: len(self.segments[-1]) - self._room]
        if len(self.segments) == 1:
            return self.segments.pop()
        return _concat(self.segments, self.dtype)


class _Ids:
    """One id column as int32 codes, block by block; each distinct raw value is kept once.

    Codes number the values in order of first appearance, as pd.factorize would.
    Each block is dictionary-encoded on its own; the block dictionaries are merged
    into the column's in groups, because each merge hashes all values seen so far.
    """

    def __init__(self, rows_hint: int) -> None:
        self._values: pa.Array | None = None
        self._codes = _Column(np.int32, rows_hint)  # into _values; -1 = null
        self._pending: list[tuple[np.ndarray, pa.Array]] = []  # per block: codes into its own dictionary
        self._pending_values = self._pending_rows = 0

    def add(self, col: pa.Array) -> None:
        if pa.types.is_null(col.type):
            col = col.cast(pa.string())
        enc = col if pa.types.is_dictionary(col.type) else pc.dictionary_encode(col)
        local = enc.dictionary
        if pa.types.is_string(local.type):
            local = local.cast(pa.large_string())  # the distinct ids of a huge log may pass 2 GiB
        self._pending.append((_codes(enc.indices), local))
        self._pending_values += len(local)
        self._pending_rows += len(col)
        if self._pending_values >= _MERGE_VALUES or self._pending_rows >= _MERGE_ROWS:
            self._merge()

    def _merge(self) -> None:
        if not self._pending:
            return
        # one dictionary for the pending blocks, then one lookup in the column's
        locals_ = [local for _, local in self._pending]
        enc = pc.dictionary_encode(pa.concat_arrays(locals_))
        new_values = enc.dictionary
        if self._values is None:
            to_global = np.arange(len(new_values), dtype=np.int32)
            self._values = new_values
        else:
            to_global = _codes(pc.index_in(new_values, value_set=self._values)).copy()  # Arrow's is read-only
            new = np.flatnonzero(to_global < 0)
            to_global[new] = len(self._values) + np.arange(len(new), dtype=np.int32)
            self._values = pa.concat_arrays([self._values, new_values.take(pa.array(new))])
        of_local = to_global[_codes(enc.indices)]
        start = 0
        for rows, local in self._pending:
            self._codes.append(np.append(of_local[start : start + len(local)], np.int32(-1))[rows])
            start += len(local)
        self._pending, self._pending_values, self._pending_rows = [], 0, 0

    def finish(self, name: str, where: str) -> pd.Categorical:
        self._merge()
        codes = self._codes.finish()
        raw = self._values.to_pandas() if self._values is not None else pd.Series([], dtype=object)
        text = raw.astype(str).str.strip()  # "Books " and "Books" are one domain
        blank_value = np.append((raw.isna() | (text == "")).to_numpy(dtype=bool), True)
        _check_blank(blank_value[codes], name, where)  # code -1 (null) picks the last entry
        merged, names = pd.factorize(text)
        if len(names) < len(text):  # stripping made two raw values one
            codes = merged.astype(np.int32)[codes]
        return pd.Categorical.from_codes(codes, categories=pd.Index(names))


def _codes(indices: pa.Array) -> np.ndarray:
    """int32 numpy codes of Arrow indices, -1 for null."""
    return indices.fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int32, copy=False)


def _concat(parts: list[np.ndarray], dtype: np.dtype) -> np.ndarray:
    """One array from pieces, emptying `parts` on the way so each piece is freed once copied."""
    out = np.empty(sum(len(p) for p in parts), dtype=dtype)
    pos = 0
    parts.reverse()
    while parts:
        part = parts.pop()
        out[pos : pos + len(part)] = part
        pos += len(part)
    return out


def _check_blank(blank: np.ndarray, name: str, where: str) -> None:
    n = int(np.count_nonzero(blank))
    if n:
        first = int(np.argmax(blank)) + 1
        raise DataError(f"{where}: {n} row(s) have an empty {name} (first at data row {first})", {"column": name})


class _Times:
    """The time column block by block, with the rules of the whole column.

    Integers stay int64, other numbers become float64, ISO dates float64 seconds
    since the epoch (naive ones as UTC); a column may not mix numbers and dates.
    Arrow types a CSV column from all of it (numbers when every value parses as
    one), but a block is typed on its own: a CSV whose blocks differ is read again
    as text. Text blocks of numbers are not parsed as dates unless a later block
    holds dates, which also means reading again. Both are rare and cost time only.
    Numbers are stored as 8-byte words (a float's bits) and settled at the end.
    """

    def __init__(self, source: _Source, *, as_text: bool = False, with_dates: bool = False) -> None:
        self.source = source
        self.as_text = as_text or not source.csv_times
        self.with_dates = with_dates
        self.rows = self.blank = self.first_blank = self.bad = 0
        self.kinds: set[str] = set()  # of the blocks: int, float, date, bool, text
        self.words: _Column | None = _Column(np.int64, source.rows)  # numbers, or epoch seconds of "date"
        self.floats: list[tuple[int, int, bool]] = []  # (start, stop, is float) of words
        self.ticks: _Column | None = _Column(np.int64, source.rows)  # text blocks' dates: UTC datetime64
        self.units: list[tuple[int, int, str]] = []  # (start, stop, unit) of ticks
        self.dates_parsed = True  # every text block was parsed as dates
        self.bools = True  # every text block of a CSV spells booleans, as Arrow reads them
        self.bad_example: str | None = None  # the first row that is neither a number nor a date
        self.text_example: str | None = None  # the first row that is not a number

    def add(self, col: pa.Array) -> None:
        blank = self._add(col)
        n = int(np.count_nonzero(blank))
        if n and not self.blank:
            self.first_blank = self.rows + int(np.argmax(blank))
            self.words = self.ticks = None  # the column fails on its blanks; nothing else matters
        self.blank += n
        self.rows += len(col)
        if self._mixed():
            self.words = self.ticks = None  # the column will be read again

    def _mixed(self) -> bool:
        return not self.as_text and "text" in self.kinds and len(self.kinds) > 1

    def _add(self, col: pa.Array) -> np.ndarray:
        """The block's blank rows, by its type's rules; stores its values while they can matter."""
        if self.as_text or not (pa.types.is_string(col.type) or pa.types.is_large_string(col.type)):
            return self._from_pandas(col.to_pandas())
        trimmed = pc.utf8_trim(col, characters=_ARROW_BLANKS)
        for kind, type_ in (("int", pa.int64()), ("float", pa.float64())):
            try:
                typed = pc.cast(trimmed, type_)
            except pa.ArrowInvalid:
                continue
            values = typed.fill_null(0).to_numpy()
            self._store(kind, values)
            blank = typed.is_null().to_numpy(zero_copy_only=False)
            return (blank | np.isnan(values)) if kind == "float" else blank
        return self._from_pandas(col.to_pandas())

    def _from_pandas(self, ts: pd.Series) -> np.ndarray:
        if pd.api.types.is_bool_dtype(ts):
            self.kinds.add("bool")
            return np.zeros(len(ts), dtype=bool)
        if pd.api.types.is_numeric_dtype(ts):
            self._store("int" if pd.api.types.is_integer_dtype(ts) else "float", ts.to_numpy())
            return ts.isna().to_numpy()
        if pd.api.types.is_datetime64_any_dtype(ts):
            self._store("date", _epoch_seconds(ts.dt.tz_localize("UTC") if ts.dt.tz is None else ts).to_numpy())
            return ts.isna().to_numpy()
        self.kinds.add("text")
        text = ts.astype(str).str.strip()
        blank = (ts.isna() | (text == "")).to_numpy(dtype=bool)
        if not (blank.any() or self.blank or self._mixed()):  # else the column fails or is read again
            self._text(text)
        return blank

    def _store(self, kind: str, values: np.ndarray) -> None:
        self.kinds.add(kind)
        if self.words is None:
            return
        is_float = values.dtype.kind == "f"
        start = self.words.size
        self.words.append(values.astype(np.float64).view(np.int64) if is_float else values.astype(np.int64))
        self.floats.append((start, self.words.size, is_float))

    def _text(self, text: pd.Series) -> None:
        if self.source.csv_times:
            self.bools &= bool(text.isin(_ARROW_BOOLS).all())
        num = pd.to_numeric(text, errors="coerce")
        is_num = num.notna().to_numpy()
        if is_num.all():
            self._store("text", num.to_numpy())
            if not self.with_dates:
                self.dates_parsed, self.ticks = False, None  # the dates column would lose its alignment
                return
        else:
            self.text_example = self.text_example or text[~is_num].iloc[0]
            self.words = None
        dates = pd.to_datetime(text, format="ISO8601", utc=True, errors="coerce")
        bad = ~is_num & dates.isna().to_numpy()
        if bad.any():
            self.bad_example = self.bad_example or text[bad].iloc[0]
            self.bad += int(bad.sum())
        if not dates.notna().all():
            self.ticks = None
        elif self.ticks is not None:
            values = dates.dt.tz_localize(None).to_numpy()
            start = self.ticks.size
            self.ticks.append(values.view(np.int64))
            self.units.append((start, self.ticks.size, np.datetime_data(values.dtype)[0]))

    def finish(self, where: str) -> np.ndarray:
        if self._mixed():
            return self._again(where, as_text=True)  # Arrow would have read the whole column as text
        if self.blank:
            raise DataError(
                f"{where}: {self.blank} row(s) have an empty timestamp (first at data row {self.first_blank + 1})",
                {"column": "timestamp"},
            )
        if "bool" in self.kinds or (self.kinds == {"text"} and self.source.csv_times and self.bools):
            raise DataError(f"{where}: timestamp column holds booleans, expected numbers or dates")
        if self.words is not None:
            return self._numbers()
        if self.bad:
            example, count, problem = self.bad_example, self.bad, "cannot be read as a number or an ISO-8601 date"
        elif not self.dates_parsed:
            return self._again(where, with_dates=True)  # whether the blocks of numbers are dates decides
        elif self.ticks is not None:
            return self._seconds()
        else:
            example, count, problem = self.text_example, 1, "mixes numbers and dates"
        raise DataError(
            f"{where}: {count} timestamp(s) {problem}, e.g. {example!r}", {"column": "timestamp", "example": example}
        )

    def _numbers(self) -> np.ndarray:
        assert self.words is not None
        words = self.words.finish()
        if not any(is_float for _, _, is_float in self.floats):
            return words
        for start, stop, is_float in self.floats:  # one block at a time, in place
            if not is_float:
                words[start:stop] = words[start:stop].astype(np.float64).view(np.int64)
        return words.view(np.float64)

    def _seconds(self) -> np.ndarray:
        assert self.ticks is not None
        ticks = self.ticks.finish()
        finest = np.datetime_data(np.result_type(*(np.dtype(f"M8[{u}]") for _, _, u in self.units)))[0]
        for start, stop, unit in self.units:  # one block at a time, in place; one unit, as one parse gives
            dates = pd.Series(ticks[start:stop].view(f"M8[{unit}]").astype(f"M8[{finest}]")).dt.tz_localize("UTC")
            ticks[start:stop] = _epoch_seconds(dates).to_numpy().view(np.int64)
        return ticks.view(np.float64)

    def _again(self, where: str, *, as_text: bool = False, with_dates: bool = False) -> np.ndarray:
        self.words = self.ticks = None
        times = _Times(self.source, as_text=as_text or self.as_text, with_dates=with_dates or self.with_dates)
        for block in self.source.blocks():
            times.add(block[3])
        return times.finish(where)


def _epoch_seconds(dates: pd.Series) -> pd.Series:
    return ((dates - pd.Timestamp(0, tz="UTC")) / pd.Timedelta(seconds=1)).astype("float64")


def _check_domain_count(names: list[str], where: str) -> None:
    if not MIN_DOMAINS <= len(names) <= MAX_DOMAINS:
        shown = ", ".join(map(repr, sorted(names)[:20])) + (" ..." if len(names) > 20 else "")
        raise DataError(
            f"{where}: found {len(names)} domain(s) ({shown}); Taesar needs {MIN_DOMAINS} to {MAX_DOMAINS}",
            {"domains": len(names)},
        )


def _sep_name(sep: str) -> str:
    return {"\t": "tab", ",": "comma", ";": "semicolon", "|": "pipe"}.get(sep, repr(sep))


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


# -- MovieLens-100K ------------------------------------------------------------------


def fetch_recbole_wheel(cache_dir: Path) -> Path:
    """The RecBole wheel (which ships ml-100k) in `cache_dir`, downloaded by pip if absent."""
    cache_dir = Path(cache_dir)
    found = cached_wheel(cache_dir)
    if found is not None:
        return found
    cache_dir.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", f"recbole=={RECBOLE_VERSION}", "--no-deps", "-d", str(cache_dir)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    except OSError as exc:
        raise DataError(f"cannot run pip to download recbole=={RECBOLE_VERSION}: {exc}") from None
    if proc.returncode != 0:
        last = next((ln for ln in reversed((proc.stderr or "").splitlines()) if ln.strip()), "no message")
        raise DataError(f"pip could not download recbole=={RECBOLE_VERSION} into {cache_dir}: {last.strip()}")
    found = cached_wheel(cache_dir)
    if found is None:
        raise DataError(f"pip finished but no recbole-{RECBOLE_VERSION} wheel is in {cache_dir}")
    return found


def cached_wheel(cache_dir: Path) -> Path | None:
    """The RecBole wheel already in `cache_dir`, or None."""
    cache_dir = Path(cache_dir)
    wheels = sorted(cache_dir.glob(f"recbole-{RECBOLE_VERSION}-*.whl")) if cache_dir.is_dir() else []
    return wheels[0] if wheels else None


def read_ml100k_recbole(wheel: Path, *, min_domain_items: int = ML100K_MIN_DOMAIN_ITEMS) -> pd.DataFrame:
    """ml-100k from RecBole's atomic files inside the wheel zip, mapped to genre domains."""
    wheel = Path(wheel)
    _check_file(wheel)
    try:
        with zipfile.ZipFile(wheel) as zf:
            inter_raw = _zip_member(zf, wheel, "ml-100k.inter")
            item_raw = _zip_member(zf, wheel, "ml-100k.item")
    except zipfile.BadZipFile:
        raise DataError(f"{wheel}: not a wheel (zip) file") from None
    inter = _read_atomic(inter_raw, wheel, ["user_id", "item_id", "timestamp"])
    items = _read_atomic(item_raw, wheel, ["item_id", "class"])
    genres = items.assign(genre=items["class"].fillna("").str.split()).explode("genre")[["item_id", "genre"]]
    return _ml100k_frame(inter, genres, str(wheel), min_domain_items)


def _zip_member(zf: zipfile.ZipFile, wheel: Path, name: str) -> bytes:
    try:
        return zf.read(_RECBOLE_DIR + name)
    except KeyError:
        raise DataError(f"{wheel}: has no {_RECBOLE_DIR}{name}; is this the recbole {RECBOLE_VERSION} wheel?") from None


def _read_atomic(raw: bytes, where: Path, wanted: list[str]) -> pd.DataFrame:
    # RecBole headers read "name:type"; titles contain quotes, so quoting is off
    df = pd.read_csv(io.BytesIO(raw), sep="\t", dtype=str, keep_default_na=False, quoting=csv.QUOTE_NONE)
    df.columns = [c.split(":")[0] for c in df.columns]
    missing = [c for c in wanted if c not in df.columns]
    if missing:
        raise DataError(f"{where}: RecBole file lacks column(s) {missing}; it has {list(df.columns)}")
    return df[wanted]


def read_ml100k_grouplens(folder: Path, *, min_domain_items: int = ML100K_MIN_DOMAIN_ITEMS) -> pd.DataFrame:
    """ml-100k from GroupLens' original u.data and u.item, mapped to genre domains."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{folder}: not a folder holding MovieLens-100K's u.data and u.item")
    data, item = folder / "u.data", folder / "u.item"
    for f in (data, item):
        _check_file(f)
    try:
        inter = pd.read_csv(data, sep="\t", header=None, dtype=str, usecols=[0, 1, 3])
        items = pd.read_csv(item, sep="|", header=None, dtype=str, encoding="latin-1", quoting=csv.QUOTE_NONE)
    except (pd.errors.ParserError, ValueError, UnicodeDecodeError) as exc:
        raise DataError(f"{folder}: cannot read u.data/u.item: {_first_line(exc)}") from None
    inter.columns = ["user_id", "item_id", "timestamp"]
    if items.shape[1] < len(ML100K_GENRES) + 1:
        raise DataError(f"{item}: expected an id and {len(ML100K_GENRES)} genre flags, got {items.shape[1]} columns")
    flags = items.iloc[:, -len(ML100K_GENRES) :].set_axis(list(ML100K_GENRES), axis=1)
    long = flags.assign(item_id=items[0]).melt(id_vars="item_id", var_name="genre", value_name="flag")
    genres = long[long["flag"].str.strip() == "1"][["item_id", "genre"]]
    no_genre = items.loc[~items[0].isin(genres["item_id"]), [0]].rename(columns={0: "item_id"})
    genres = pd.concat([genres, no_genre.assign(genre=None)])
    return _ml100k_frame(inter, genres, str(folder), min_domain_items)


def _ml100k_frame(inter: pd.DataFrame, genres: pd.DataFrame, where: str, min_items: int) -> pd.DataFrame:
    item_domain = ml100k_item_domains(genres)
    df = inter.assign(domain=inter["item_id"].str.strip().map(item_domain))
    unknown = df["domain"].isna()
    if unknown.any():
        example = df.loc[unknown, "item_id"].iloc[0]
        raise DataError(
            f"{where}: {int(unknown.sum())} rating(s) name items missing from the item file, e.g. {example}"
        )
    out = _normalise(df[list(COLUMNS)], where)
    _check_ml100k_domains(out, where, min_items)
    return out


def ml100k_item_domains(genres: pd.DataFrame) -> pd.Series:
    """{item_id: domain} from a long (item_id, genre) frame; genre None/NaN = no genre.

    Each item goes to the highest-priority domain among its genres (see
    ML100K_GENRE_DOMAINS), or to the fallback domain when it has none.
    """
    rank = {g: k for k, gs in enumerate(ML100K_GENRE_DOMAINS.values()) for g in gs}
    g = genres.assign(item_id=genres["item_id"].astype(str).str.strip())
    bad = sorted(set(g["genre"].dropna()) - set(rank))
    if bad:
        raise DataError(f"unknown MovieLens genre(s) {bad}; known: {', '.join(ML100K_GENRES)}")
    fallback = ML100K_DOMAINS.index(ML100K_FALLBACK_DOMAIN)
    best = g["genre"].map(rank).fillna(fallback).groupby(g["item_id"], sort=False).min().astype(int)
    return best.map(dict(enumerate(ML100K_DOMAINS)))


def _check_ml100k_domains(df: pd.DataFrame, where: str, min_items: int) -> None:
    counts = df.drop_duplicates("item_id")["domain"].value_counts().reindex(ML100K_DOMAINS, fill_value=0)
    small = {d: int(n) for d, n in counts.items() if n < min_items}
    if small:
        raise DataError(
            f"{where}: the genre mapping leaves domain(s) with fewer than {min_items} items: {small}; "
            f"all counts: {counts.to_dict()}"
        )


def domain_counts(df: pd.DataFrame, domains: Iterable[str] | None = None) -> pd.DataFrame:
    """Items and interactions per domain of a canonical frame (for docs and summaries)."""
    out = pd.DataFrame(
        {"items": df.groupby("domain")["item_id"].nunique(), "interactions": df.groupby("domain").size()}
    )
    return out.reindex(list(domains)) if domains is not None else out
