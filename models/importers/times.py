"""The time column of a log: read block by block, settled by the rules of the whole column."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from models.errors import DataError
from models.importers.columns import Column, Source

_ARROW_BLANKS = " \t"  # what Arrow's CSV reader ignores around a number
_ARROW_BOOLS = ("1", "0", "true", "false", "True", "False", "TRUE", "FALSE")


class Times:
    """The time column block by block, with the rules of the whole column.

    Integers stay int64, other numbers become float64, ISO dates float64 seconds
    since the epoch (naive ones as UTC); a column may not mix numbers and dates.
    Arrow types a CSV column from all of it (numbers when every value parses as
    one), but a block is typed on its own: a CSV whose blocks differ is read again
    as text. Text blocks of numbers are not parsed as dates unless a later block
    holds dates, which also means reading again. Both are rare and cost time only.
    Numbers are stored as 8-byte words (a float's bits) and settled at the end.
    """

    def __init__(self, source: Source, *, as_text: bool = False, with_dates: bool = False) -> None:
        self.source = source
        self.as_text = as_text or not source.csv_times
        self.with_dates = with_dates
        self.rows = self.blank = self.first_blank = self.bad = 0
        self.kinds: set[str] = set()  # of the blocks: int, float, date, bool, text
        self.words: Column | None = Column(np.int64, source.rows)  # numbers, or epoch seconds of "date"
        self.floats: list[tuple[int, int, bool]] = []  # (start, stop, is float) of words
        self.ticks: Column | None = Column(np.int64, source.rows)  # text blocks' dates: UTC datetime64
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
        times = Times(self.source, as_text=as_text or self.as_text, with_dates=with_dates or self.with_dates)
        for block in self.source.blocks():
            times.add(block[3])
        return times.finish(where)


def _epoch_seconds(dates: pd.Series) -> pd.Series:
    return ((dates - pd.Timestamp(0, tz="UTC")) / pd.Timedelta(seconds=1)).astype("float64")
