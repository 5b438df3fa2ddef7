"""`prepare`: an interaction frame (user_id, item_id, domain, timestamp) -> a `Dataset`,
filtered as METHOD.md §4 says. Every filter works on integer codes with numpy (int32
ids, int8 domains), so millions of rows take seconds and about 17 bytes a row; Python
objects exist per distinct user and item, never per interaction.

Item titles and genres that an importer put in the frame's `attrs` (models/titles.py)
go into the catalogue, for the items that remain; they change neither the fingerprint
nor anything else of the dataset."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field

import numpy as np
import pandas as pd

from models.catalogue import MAX_DOMAINS, MIN_DOMAINS, Catalogue
from models.errors import CatalogueError, DataError
from models.titles import FRAME_ATTR, ItemInfo


@dataclass(frozen=True)
class PrepConfig:
    require_all_domains: bool = True
    k_core: int = 3
    max_len: int = 128
    holdout: int = 1

    def __post_init__(self) -> None:
        if self.k_core < 1:
            raise DataError(f"k_core must be >= 1 (1 disables the filter), got {self.k_core}")
        if self.max_len < 2:
            raise DataError(f"max_len must be >= 2, got {self.max_len}")
        if self.holdout < 1:
            raise DataError(f"holdout must be >= 1, got {self.holdout}")

    @property
    def min_len(self) -> int:
        # N valid + N test targets, and a train part that still holds one input -> target pair
        return 2 * self.holdout + 2


@dataclass
class Dataset:
    catalogue: Catalogue
    user_ids: list[str]
    sequences: list[np.ndarray]  # int64 dense ids, chronological
    options: dict
    fingerprint: str
    source: str = ""
    stats: dict = field(default_factory=dict)  # rows/users/items after each step; not fingerprinted


@dataclass
class _Log:
    """Integer-coded interactions; row order = input order until `_sort` runs."""

    user: np.ndarray  # int32 codes
    item: np.ndarray  # int32 codes
    domain: np.ndarray  # int8, of each row
    time: np.ndarray | None  # None once sorted
    users: np.ndarray  # code -> external id (str objects, one per distinct user)
    items: np.ndarray
    domains: list[str]

    def select(self, rows: np.ndarray) -> None:
        """Keep `rows` (a mask or an order), one column at a time, so that only one
        new column exists next to the old ones at any moment."""
        self.user = self.user[rows]
        self.item = self.item[rows]
        self.domain = self.domain[rows]
        if self.time is not None:
            self.time = self.time[rows]

    def counts(self) -> dict:
        return {"rows": len(self.user), "users": _n_distinct(self.user), "items": _n_distinct(self.item)}


def prepare(df: pd.DataFrame, cfg: PrepConfig, *, domains: list[str] | None = None, source: str = "") -> Dataset:
    """METHOD.md §4: k-core per domain, users in every domain, chronological order,
    last `max_len` items, users long enough to split, then the catalogue."""
    log = _encode(df, domains)
    stats = {"input": log.counts()}
    _filter_core(log, cfg)
    stats["filtered"] = log.counts()
    _sort(log)
    log.select(_last_n(log.user, cfg.max_len))
    stats["truncated"] = log.counts()
    log.select(_at_least(log.user, cfg.min_len))
    stats["final"] = log.counts()
    catalogue = _build_catalogue(log, stats, cfg)
    dense = _dense_ids(log, catalogue)
    catalogue = catalogue.with_info(frame_item_info(df))
    user, users = log.user, log.users
    del log  # its item and domain columns are spent
    user_ids, sequences = _sequences(user, users, dense)
    options = {**asdict(cfg), "domains": list(catalogue.domains)}
    fp = fingerprint(catalogue, user_ids, sequences, options)
    return Dataset(catalogue, user_ids, sequences, options, fp, source, stats)


def frame_item_info(df: pd.DataFrame) -> ItemInfo | None:
    """The titles and genres an importer attached to `df` (None when it attached none)."""
    attached = df.attrs.get(FRAME_ATTR)
    if not attached:
        return None
    return ItemInfo.build(attached.get("titles"), attached.get("genres"))


def _encode(df: pd.DataFrame, domains: list[str] | None) -> _Log:
    missing = [c for c in ("user_id", "item_id", "domain", "timestamp") if c not in df.columns]
    if missing:
        raise DataError(f"interaction frame lacks column(s) {missing}; it has {list(df.columns)}")
    if not pd.api.types.is_numeric_dtype(df["timestamp"]) or pd.api.types.is_bool_dtype(df["timestamp"]):
        raise DataError(f"timestamp must be numeric, got {df['timestamp'].dtype} (read files with read_interactions)")
    if df.empty:
        raise DataError("the interaction frame has no rows")
    if df["timestamp"].isna().any():
        raise DataError(f"{int(df['timestamp'].isna().sum())} row(s) have no timestamp")
    user, users = _factorize(df["user_id"])
    item, items = _factorize(df["item_id"])
    dom, seen = _factorize(df["domain"])
    names = _domain_order(list(seen), domains)
    remap = np.array([names.index(d) for d in seen], dtype=np.int8)  # at most 16 domains
    domain = remap[dom]
    _check_one_domain_per_item(item, domain, items, names)
    time = df["timestamp"].to_numpy()  # native dtype: int64 epoch-ns would lose ties as float
    return _Log(user, item, domain, time, users, items, names)


def _factorize(col: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """(int32 code of each row, external id of each code as str): the codes and order of
    `pd.factorize(col.astype(str))`, without a string per row for categorical columns
    (what the importers return)."""
    if isinstance(col.dtype, pd.CategoricalDtype):
        codes = col.array.codes  # a view; Series.cat.codes would copy
        if not len(codes) or codes.min() >= 0:  # a missing value (-1) is the text "nan" to astype(str)
            categories = col.cat.categories
            if not _first_appearance_order(codes):
                codes, used = pd.factorize(codes)
                categories = categories.take(used)
            names = categories.astype(str)
            merged, uniques = pd.factorize(names)
            if len(uniques) < len(names):  # categories that are one text, e.g. 7 and "7"
                codes = merged[codes]
            return codes.astype(np.int32, copy=False), np.asarray(uniques, dtype=object)
    codes, uniques = pd.factorize(col.astype(str))
    return codes.astype(np.int32), np.asarray(uniques, dtype=object)


def _first_appearance_order(codes: np.ndarray, step: int = 1 << 20) -> bool:
    """Whether each code first appears right after all smaller ones (0, 1, 0, 2, ...)."""
    top = -1  # the largest code before the current piece; pieces keep the temporaries small
    for start in range(0, len(codes), step):
        piece = codes[start : start + step].astype(np.int64)
        before = np.maximum.accumulate(np.r_[top, piece[:-1]])
        if (piece > before + 1).any():
            return False
        top = max(top, int(piece.max()))
    return True


def _domain_order(seen: list[str], domains: list[str] | None) -> list[str]:
    names = [str(d) for d in domains] if domains is not None else sorted(seen)
    if len(set(names)) != len(names):
        raise DataError(f"domain order lists a domain twice: {names}")
    unlisted = sorted(set(seen) - set(names))
    if unlisted:
        raise DataError(f"the data has domain(s) {unlisted} that the domain order {names} does not list")
    if not MIN_DOMAINS <= len(names) <= MAX_DOMAINS:
        raise DataError(f"found {len(names)} domain(s) {names}; Taesar needs {MIN_DOMAINS} to {MAX_DOMAINS}")
    return names


def _check_one_domain_per_item(item: np.ndarray, dom: np.ndarray, items: np.ndarray, names: list[str]) -> None:
    seen = _presence(item, dom, len(items), len(names))
    twice = np.flatnonzero(seen.sum(axis=1) > 1)  # codes number items in order of first appearance
    if len(twice):
        examples = {str(items[i]): [names[d] for d in np.flatnonzero(seen[i])] for i in twice[:5]}
        raise DataError(f"{len(twice)} item(s) appear in more than one domain, e.g. {examples}")


def _presence(rows: np.ndarray, cols: np.ndarray, n_rows: int, n_cols: int) -> np.ndarray:
    """Bool matrix [n_rows, n_cols]: which (row, col) pairs occur. One pass, unlike np.unique."""
    seen = np.zeros((n_rows, n_cols), dtype=bool)
    seen[rows, cols] = True
    return seen


def _filter_core(log: _Log, cfg: PrepConfig) -> None:
    """Iterate k-core (per user and domain, per item) and the all-domains rule to a fixed point:
    each filter can break the other, and the paper's data satisfies both."""
    k, n_dom = cfg.k_core, len(log.domains)
    while True:
        keep = np.ones(len(log.user), dtype=bool)
        if k > 1:
            keep &= _at_least(log.user.astype(np.int64) * n_dom + log.domain, k)  # (user, domain) pairs
            keep &= _at_least(log.item, k)
        if cfg.require_all_domains:
            n_seen = _presence(log.user[keep], log.domain[keep], len(log.users), n_dom).sum(axis=1)
            keep &= (n_seen == n_dom)[log.user]
        if keep.all():
            return
        log.select(keep)


def _live_codes(codes: np.ndarray) -> np.ndarray:
    """Sorted distinct codes (np.unique is a sort; this is one pass)."""
    return np.flatnonzero(np.bincount(codes)) if len(codes) else np.zeros(0, dtype=np.int64)


def _n_distinct(codes: np.ndarray) -> int:
    return int(np.count_nonzero(np.bincount(codes))) if len(codes) else 0


def _at_least(codes: np.ndarray, k: int) -> np.ndarray:
    """For every row, whether at least k rows share its code."""
    return (np.bincount(codes) >= k)[codes] if len(codes) else np.zeros(0, dtype=bool)


def _row_index(n: int) -> type:
    """The smallest integer type that numbers n rows (permutations are 4 bytes a row, not 8)."""
    return np.int32 if n < 2**31 else np.int64


def _sort(log: _Log) -> None:
    """Group the rows by user, each user's in time order, and drop the times."""
    # stable: equal timestamps keep the input order; one lexsort needs less memory than two argsorts
    order = np.lexsort((log.time, log.user))
    log.time = None
    log.select(order)


def _last_n(user: np.ndarray, n: int) -> np.ndarray:
    """Mask of the last n rows of each user; rows must be grouped by user."""
    if not len(user):
        return np.zeros(0, dtype=bool)
    index = _row_index(len(user))
    ends = np.r_[np.flatnonzero(user[1:] != user[:-1]), len(user) - 1].astype(index)  # last row of each run
    run_end = np.repeat(ends, np.diff(np.r_[index(-1), ends]))
    run_end -= np.arange(len(user), dtype=index)  # rows after this one in its run
    return run_end < n


def _build_catalogue(log: _Log, stats: dict, cfg: PrepConfig) -> Catalogue:
    item_rows = np.bincount(log.domain, minlength=len(log.domains))
    empty = [d for d, n in zip(log.domains, item_rows, strict=True) if n == 0]
    if empty:
        per_domain = dict(zip(log.domains, item_rows.tolist(), strict=True))
        raise DataError(
            f"domain(s) {empty} have no interactions left after preprocessing "
            f"(k_core={cfg.k_core}, require_all_domains={cfg.require_all_domains}, min length {cfg.min_len}); "
            f"interactions per domain: {per_domain}; counts by step: {stats}"
        )
    codes = _live_codes(log.item)
    item_domain = np.zeros(len(log.items), dtype=np.int64)
    item_domain[log.item] = log.domain  # one domain per item, checked in _encode
    mapping = dict(zip(log.items[codes].tolist(), [log.domains[d] for d in item_domain[codes]], strict=True))
    try:
        return Catalogue.build(mapping, domains=log.domains)
    except CatalogueError as exc:
        raise DataError(f"cannot build the catalogue: {exc.message}") from exc


def _dense_ids(log: _Log, catalogue: Catalogue) -> np.ndarray:
    """The catalogue's dense id of every row's item (int64)."""
    dense_of_code = np.full(len(log.items), -1, dtype=np.int64)
    codes = _live_codes(log.item)
    dense_of_code[codes] = pd.Index(catalogue.item_ids).get_indexer(log.items[codes].astype(str))
    dense = dense_of_code[log.item]
    assert not len(dense) or dense.min() >= 0
    return dense


def _sequences(user: np.ndarray, users: np.ndarray, dense: np.ndarray) -> tuple[list[str], list[np.ndarray]]:
    """One dense-id array per user, users in natural id order ("2" before "10"); rows are
    grouped by user. The arrays are views of `dense` (a small header per user, no copy)."""
    starts = np.r_[0, np.flatnonzero(user[1:] != user[:-1]) + 1]
    bounds = np.r_[starts, len(dense)]
    ids = users[user[starts]].astype(str)
    order = _natural_order(ids)
    return [str(ids[i]) for i in order], [dense[bounds[i] : bounds[i + 1]] for i in order]


def _natural_order(ids: np.ndarray) -> np.ndarray:
    num = pd.to_numeric(pd.Series(ids), errors="coerce").to_numpy(dtype=np.float64)
    is_text = np.isnan(num)
    return np.lexsort((ids, np.where(is_text, 0.0, num), is_text))


def fingerprint(catalogue: Catalogue, user_ids: list[str], sequences: list[np.ndarray], options: dict) -> str:
    h = hashlib.sha256()
    h.update(catalogue.fingerprint().encode())
    h.update(json.dumps(user_ids, ensure_ascii=False).encode())
    h.update(json.dumps(options, sort_keys=True, ensure_ascii=False).encode())
    h.update(np.asarray([len(s) for s in sequences], dtype="<i8").tobytes())
    for s in sequences:
        h.update(np.asarray(s, dtype="<i8").tobytes())
    return h.hexdigest()
