"""Column accumulators: a log arrives in blocks of Arrow arrays, and each id column is
kept as int32 codes with every distinct value once, in order of first appearance."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from models.errors import DataError

# block dictionaries are merged into the column's after this many values or rows
_MERGE_VALUES = 1 << 21
_MERGE_ROWS = 1 << 21
_MIN_SEGMENT_ROWS = 1 << 20  # a column's first segment holds at least this many rows

Columns = list[pa.Array]  # one block of the log: user, item, domain, time


@dataclass(frozen=True)
class Source:
    """A log to read: fresh passes over its blocks, and what is known of it before reading."""

    blocks: Callable[[], Iterator[Columns]]  # a fresh pass over the whole log
    rows: int  # exact, or estimated from a sample of the text
    csv_times: bool  # text read by Arrow: time values are typed as Arrow's CSV reader infers them


class Column:
    """A numpy column filled block by block, in large segments sized from the expected
    row count. Appending never moves what is stored, and a large array goes back to the
    system when freed (a heap of small per-block arrays would stay resident); pages of
    a segment that are never written cost no memory."""

    def __init__(self, dtype: type, rows_hint: int) -> None:
        self.dtype = np.dtype(dtype)
        self.segments: list[np.ndarray] = []
        self.size = 0
        self._room = 0  # in the last segment
        self._next = max(rows_hint + rows_hint // 4, _MIN_SEGMENT_ROWS)

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


class Ids:
    """One id column as int32 codes, block by block; each distinct raw value is kept once.

    Codes number the values in order of first appearance, as pd.factorize would.
    Each block is dictionary-encoded on its own; the block dictionaries are merged
    into the column's in groups, because each merge hashes all values seen so far.
    """

    def __init__(self, rows_hint: int) -> None:
        self._values: pa.Array | None = None
        self._codes = Column(np.int32, rows_hint)  # into _values; -1 = null
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


class FirstTitles:
    """The first non-blank title of every item of a log, block by block: one string per
    distinct item, never one per row. Blocks deliver the item and the title column."""

    def __init__(self) -> None:
        self.titles: dict[str, str] = {}

    def add(self, items: pa.Array, titles: pa.Array) -> None:
        if pa.types.is_null(titles.type) or not len(items):
            return
        if not pa.types.is_string(titles.type) and not pa.types.is_large_string(titles.type):
            titles = titles.cast(pa.string())
        named = pc.and_(pc.is_valid(items), pc.not_equal(pc.utf8_trim_whitespace(titles), ""))
        items, titles = items.filter(named), titles.filter(named)
        if not len(items):
            return
        enc = items if pa.types.is_dictionary(items.type) else pc.dictionary_encode(items)
        _, first = np.unique(_codes(enc.indices), return_index=True)
        take = pa.array(first)
        for item, title in zip(items.take(take).to_pylist(), titles.take(take).to_pylist(), strict=True):
            self.titles.setdefault(str(item).strip(), title)
