"""Readers that turn interaction logs into one frame: user_id, item_id, domain, timestamp.

Every mistake a user can make with an input file becomes a `DataError` whose
one-line message names the file and the problem, because that line is all the
CLI prints. Ids and domains are strings (leading zeros survive); timestamps are
int64 when the input holds integers and float64 seconds otherwise (datetimes
become seconds since the epoch, naive ones read as UTC). The frame keeps the
input's row order, which later breaks ties between equal timestamps.

MovieLens-100K comes either from the RecBole wheel on PyPI (read straight out
of the zip; RecBole is never imported) or from GroupLens' original u.data/u.item.
"""

from __future__ import annotations

import csv
import io
import subprocess
import sys
import zipfile
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
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


def read_interactions(
    path: str | Path,
    *,
    user_col: str = "user_id",
    item_col: str = "item_id",
    domain_col: str = "domain",
    time_col: str = "timestamp",
    sep: str | None = None,
) -> pd.DataFrame:
    """Read a CSV/TSV/Parquet interaction log into the canonical four columns."""
    path = Path(path)
    names = {user_col: "user_id", item_col: "item_id", domain_col: "domain", time_col: "timestamp"}
    if len(names) != 4:
        raise DataError(f"{path}: two of the column options name the same column: {list(names)}")
    _check_file(path)
    raw = _read_table(path, list(names), sep)
    if raw.empty:
        raise DataError(f"{path}: has a header but no rows")
    df = raw[list(names)].rename(columns=names)
    return _normalise(df, str(path))


def _check_file(path: Path) -> None:
    if not path.exists():
        raise DataError(f"{path}: no such file")
    if path.is_dir():
        raise DataError(f"{path}: is a directory, expected a CSV, TSV or Parquet file")
    if path.stat().st_size == 0:
        raise DataError(f"{path}: the file is empty")


def _read_table(path: Path, wanted: list[str], sep: str | None) -> pd.DataFrame:
    suffixes = [s.lower() for s in path.suffixes]
    ext = suffixes[-2] if len(suffixes) > 1 and suffixes[-1] in _COMPRESSION else (suffixes[-1:] or [""])[0]
    if ext in _PARQUET or (sep is None and ext not in _SEPARATORS and _is_parquet(path)):
        return _read_parquet(path, wanted)
    if sep is None:
        sep = _SEPARATORS.get(ext) or _sniff_separator(path)
    return _read_text(path, wanted, sep)


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


def _read_text(path: Path, wanted: list[str], sep: str) -> pd.DataFrame:
    try:
        header = pd.read_csv(path, sep=sep, nrows=0, encoding="utf-8").columns.tolist()
        _check_columns(path, header, wanted)
        # ids as strings so "007" survives; pyarrow infers the time column (numbers or
        # ISO dates) and parses millions of rows several times faster than pandas' parser
        if len(sep) != 1:
            return pd.read_csv(path, sep=sep, usecols=wanted, dtype=str, keep_default_na=False, na_values=[""])
        convert = pacsv.ConvertOptions(
            column_types=dict.fromkeys(wanted[:3], pa.string()), include_columns=wanted, null_values=[""]
        )
        return pacsv.read_csv(
            path, parse_options=pacsv.ParseOptions(delimiter=sep), convert_options=convert
        ).to_pandas()
    except DataError:
        raise
    except pa.ArrowInvalid as exc:
        raise DataError(f"{path}: cannot read as {_sep_name(sep)}-separated text: {_first_line(exc)}") from None
    except pd.errors.EmptyDataError:
        raise DataError(f"{path}: the file is empty") from None
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except (pd.errors.ParserError, ValueError, OSError) as exc:
        raise DataError(f"{path}: cannot read as {_sep_name(sep)}-separated text: {_first_line(exc)}") from None


def _read_parquet(path: Path, wanted: list[str]) -> pd.DataFrame:
    try:
        header = pq.read_schema(path).names
        _check_columns(path, header, wanted)
        return pq.read_table(path, columns=wanted).to_pandas()
    except DataError:
        raise
    except Exception as exc:  # pyarrow raises many unrelated types for a corrupt file
        raise DataError(f"{path}: cannot read as Parquet: {_first_line(exc)}") from None


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
    """Strings for ids and domain, numbers for time, no blanks, 2..16 domains."""
    out = pd.DataFrame(index=pd.RangeIndex(len(df)))
    for col in ("user_id", "item_id", "domain"):
        out[col] = _as_text(df[col], col, where)
    ts = df["timestamp"]
    blank = ts.isna() if pd.api.types.is_numeric_dtype(ts) else ts.isna() | (ts.astype(str).str.strip() == "")
    _check_blank(blank, "timestamp", where)
    out["timestamp"] = _parse_timestamps(df["timestamp"].reset_index(drop=True), where)
    _check_domain_count(out["domain"], where)
    return out


def _as_text(col: pd.Series, name: str, where: str) -> pd.Series:
    values = col.reset_index(drop=True)
    text = values.astype(str).str.strip()  # "Books " and "Books" are one domain
    _check_blank(values.isna() | (text == ""), name, where)
    return text


def _check_blank(blank: pd.Series, name: str, where: str) -> None:
    n = int(blank.sum())
    if n:
        first = int(np.flatnonzero(blank.to_numpy())[0]) + 1
        raise DataError(f"{where}: {n} row(s) have an empty {name} (first at data row {first})", {"column": name})


def _parse_timestamps(ts: pd.Series, where: str) -> pd.Series:
    if pd.api.types.is_bool_dtype(ts):
        raise DataError(f"{where}: timestamp column holds booleans, expected numbers or dates")
    if pd.api.types.is_numeric_dtype(ts):
        return ts.astype("int64" if pd.api.types.is_integer_dtype(ts) else "float64")
    if pd.api.types.is_datetime64_any_dtype(ts):
        return _epoch_seconds(ts.dt.tz_localize("UTC") if ts.dt.tz is None else ts)
    text = ts.astype(str).str.strip()
    num = pd.to_numeric(text, errors="coerce")
    if num.notna().all():
        return num.astype("int64" if pd.api.types.is_integer_dtype(num) else "float64")
    dates = pd.to_datetime(text, format="ISO8601", utc=True, errors="coerce")
    if dates.notna().all():
        return _epoch_seconds(dates)
    bad = num.isna() & dates.isna()
    example = text[bad].iloc[0] if bad.any() else text[num.isna()].iloc[0]
    problem = "cannot be read as a number or an ISO-8601 date" if bad.any() else "mixes numbers and dates"
    raise DataError(
        f"{where}: {int(max(bad.sum(), 1))} timestamp(s) {problem}, e.g. {example!r}",
        {"column": "timestamp", "example": example},
    )


def _epoch_seconds(dates: pd.Series) -> pd.Series:
    return ((dates - pd.Timestamp(0, tz="UTC")) / pd.Timedelta(seconds=1)).astype("float64")


def _check_domain_count(domains: pd.Series, where: str) -> None:
    names = domains.unique()
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
