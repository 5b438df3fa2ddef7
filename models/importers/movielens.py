"""MovieLens-100K, either from the RecBole wheel on PyPI (read straight out of the zip;
RecBole is never imported) or from GroupLens' original u.data/u.item, with its genres
mapped to four domains. The films' titles ("Toy Story (1995)") and genres come along in
the frame's attrs (models/titles.py)."""

from __future__ import annotations

import csv
import io
import subprocess
import sys
import zipfile
from pathlib import Path

import pandas as pd

from models.errors import DataError
from models.importers.files import COLUMNS, check_file, first_line, normalise
from models.titles import FRAME_ATTR

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
    check_file(wheel)
    try:
        with zipfile.ZipFile(wheel) as zf:
            inter_raw = _zip_member(zf, wheel, "ml-100k.inter")
            item_raw = _zip_member(zf, wheel, "ml-100k.item")
    except zipfile.BadZipFile:
        raise DataError(f"{wheel}: not a wheel (zip) file") from None
    inter = _read_atomic(inter_raw, wheel, ["user_id", "item_id", "timestamp"])
    items = _read_atomic(item_raw, wheel, ["item_id", "class", "movie_title", "release_year"])
    genres = items.assign(genre=items["class"].fillna("").str.split()).explode("genre")[["item_id", "genre"]]
    year = items["release_year"].str.strip()
    titles = items["movie_title"].str.strip().where(year == "", items["movie_title"].str.strip() + " (" + year + ")")
    out = _ml100k_frame(inter, genres, str(wheel), min_domain_items)
    return _with_titles(out, items["item_id"], titles, genres)


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
        check_file(f)
    try:
        inter = pd.read_csv(data, sep="\t", header=None, dtype=str, usecols=[0, 1, 3])
        items = pd.read_csv(item, sep="|", header=None, dtype=str, encoding="latin-1", quoting=csv.QUOTE_NONE)
    except (pd.errors.ParserError, ValueError, UnicodeDecodeError) as exc:
        raise DataError(f"{folder}: cannot read u.data/u.item: {first_line(exc)}") from None
    inter.columns = ["user_id", "item_id", "timestamp"]
    if items.shape[1] < len(ML100K_GENRES) + 1:
        raise DataError(f"{item}: expected an id and {len(ML100K_GENRES)} genre flags, got {items.shape[1]} columns")
    flags = items.iloc[:, -len(ML100K_GENRES) :].set_axis(list(ML100K_GENRES), axis=1)
    long = flags.assign(item_id=items[0]).melt(id_vars="item_id", var_name="genre", value_name="flag")
    genres = long[long["flag"].str.strip() == "1"][["item_id", "genre"]]
    no_genre = items.loc[~items[0].isin(genres["item_id"]), [0]].rename(columns={0: "item_id"})
    genres = pd.concat([genres, no_genre.assign(genre=None)])
    out = _ml100k_frame(inter, genres, str(folder), min_domain_items)
    return _with_titles(out, items[0], items[1], genres)


def _with_titles(df: pd.DataFrame, item_ids: pd.Series, titles: pd.Series, genres: pd.DataFrame) -> pd.DataFrame:
    """`df` with the films' titles and genres in its attrs, for `prepare`."""
    ids = item_ids.astype(str).str.strip()
    named = genres.dropna(subset=["genre"])
    by_item = named.groupby(named["item_id"].astype(str).str.strip(), sort=False)["genre"].agg(list)
    df.attrs[FRAME_ATTR] = {"titles": dict(zip(ids, titles.fillna(""), strict=True)), "genres": by_item.to_dict()}
    return df


def _ml100k_frame(inter: pd.DataFrame, genres: pd.DataFrame, where: str, min_items: int) -> pd.DataFrame:
    item_domain = ml100k_item_domains(genres)
    df = inter.assign(domain=inter["item_id"].str.strip().map(item_domain))
    unknown = df["domain"].isna()
    if unknown.any():
        example = df.loc[unknown, "item_id"].iloc[0]
        raise DataError(
            f"{where}: {int(unknown.sum())} rating(s) name items missing from the item file, e.g. {example}"
        )
    out = normalise(df[list(COLUMNS)], where)
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
