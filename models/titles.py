"""Item titles and genres: optional, human-readable names of catalogue items.

A catalogue may carry an `ItemInfo` (models/catalogue.py): a title per item (not every
item needs one) and, for MovieLens, its genres. They travel with the catalogue into the
dataset folder and the bundle manifest, and they are never part of a fingerprint: the
same data with or without titles prepares into the same dataset and trains the same
models, so the decisions do not change.

Importers hand titles to `prepare` through the interaction frame's `attrs`
(`FRAME_ATTR`), a {item id: title} and a {item id: [genre, ...]} mapping; `prepare`
keeps those of the items that survive preprocessing.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from models.errors import CatalogueError

FRAME_ATTR = "taesar_item_info"  # key of DataFrame.attrs: {"titles": {...}, "genres": {...}}
MAX_TITLE_CHARS = 500  # longer titles are cut: a title is a label, not a document
MAX_GENRES = 32


@dataclass(frozen=True)
class ItemInfo:
    """Titles ({item id: title}) and genres ({item id: (genre, ...)}) of some items."""

    titles: Mapping[str, str] = field(default_factory=dict)
    genres: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    _folded: dict[str, str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_folded", {item: fold(title) for item, title in self.titles.items()})

    @classmethod
    def build(cls, titles: Mapping[Any, Any] | None = None, genres: Mapping[Any, Any] | None = None) -> ItemInfo:
        """Clean mappings: ids and titles as stripped strings, blank titles left out,
        genres as tuples of distinct non-blank names."""
        clean_titles = {}
        for item, title in (titles or {}).items():
            text = _text(title)
            if text:
                clean_titles[str(item).strip()] = text[:MAX_TITLE_CHARS]
        clean_genres = {}
        for item, names in (genres or {}).items():
            kept = tuple(dict.fromkeys(g for g in (_text(n) for n in _as_list(names)) if g))[:MAX_GENRES]
            if kept:
                clean_genres[str(item).strip()] = kept
        return cls(clean_titles, clean_genres)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ItemInfo | None:
        """The info stored next to a catalogue (`titles`, `genres` keys), or None without any."""
        titles, genres = d.get("titles"), d.get("genres")
        if titles is None and genres is None:
            return None
        if not isinstance(titles or {}, Mapping) or not isinstance(genres or {}, Mapping):
            raise CatalogueError("malformed catalogue: 'titles' and 'genres' must map item ids")
        return cls.build(titles, genres)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.titles:
            out["titles"] = dict(self.titles)
        if self.genres:
            out["genres"] = {item: list(g) for item, g in self.genres.items()}
        return out

    def restrict(self, item_ids: Iterable[str]) -> ItemInfo | None:
        """Only these items' info; None when none of them has any."""
        keep = set(item_ids)
        titles = {i: t for i, t in self.titles.items() if i in keep}
        genres = {i: g for i, g in self.genres.items() if i in keep}
        return ItemInfo(titles, genres) if titles or genres else None

    def title(self, item: str) -> str | None:
        return self.titles.get(item)

    def titles_of(self, items: Iterable[str]) -> dict[str, str]:
        """{item: title} for those of `items` that have one."""
        return {i: t for i in items if (t := self.titles.get(i)) is not None}

    def find_title(self, text: str) -> list[str]:
        """Items whose title equals `text`, ignoring case and accents."""
        want = fold(text)
        return [item for item, folded in self._folded.items() if folded == want] if want else []

    def match_titles(self, query: str) -> tuple[list[str], list[str]]:
        """Items whose title starts with `query`, then those that contain it elsewhere
        (ignoring case and accents); each list in catalogue order of the mapping."""
        want = fold(query)
        if not want:
            return [], []
        first, rest = [], []
        for item, folded in self._folded.items():
            at = folded.find(want)
            if at == 0:
                first.append(item)
            elif at > 0:
                rest.append(item)
        return first, rest


def fold(text: str) -> str:
    """Lower case without accents and with single spaces: how titles are compared."""
    decomposed = unicodedata.normalize("NFKD", text)
    plain = "".join(c for c in decomposed if not unicodedata.combining(c))
    return " ".join(plain.casefold().split())


def _text(value: Any) -> str:
    if value is None or (isinstance(value, float) and value != value):  # None or NaN
        return ""
    return " ".join(str(value).split())


def _as_list(value: Any) -> list[Any]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, Iterable):
        return list(value)
    return [] if value is None else [value]


# -- searching a catalogue ------------------------------------------------------------------


def search_items(catalogue: Any, query: str, *, domain: int | None = None, limit: int = 20) -> tuple[list[int], int]:
    """Dense ids of the items that match `query`, best first, at most `limit`, and the
    number of matches in all. Order: the item whose id is the query, those whose title is
    it, then id prefixes, title prefixes, and titles that contain it elsewhere (titles
    compared ignoring case and accents); within a group, catalogue order. An empty query
    matches every item (of `domain`, when given)."""
    lo, hi = catalogue.domain_range(domain) if domain is not None else (0, catalogue.n_items)
    query = " ".join(query.split())
    if not query:
        return list(range(lo, min(hi, lo + limit))), hi - lo
    info: ItemInfo | None = catalogue.info
    groups: list[list[str]] = [[query] if catalogue.get(query) is not None else []]
    groups.append(info.find_title(query) if info is not None else [])
    groups.append([i for i in catalogue.item_ids[lo:hi] if i.startswith(query) and i != query])
    groups.extend(info.match_titles(query) if info is not None else ([], []))
    seen: dict[int, None] = {}
    for group in groups:
        dense = sorted(d for d in (catalogue.get(i) for i in group) if d is not None and lo <= d < hi)
        seen.update(dict.fromkeys(dense))
    found = list(seen)
    return found[:limit], len(found)


def lookup_item(catalogue: Any, term: str) -> int | None:
    """The dense id of the item whose id is `term`, else of the first (in catalogue order)
    whose title is `term` ignoring case and accents; None when there is neither."""
    term = term.strip()
    dense = catalogue.get(term)
    if dense is not None or catalogue.info is None:
        return dense
    hits = [d for d in (catalogue.get(i) for i in catalogue.info.find_title(term)) if d is not None]
    return min(hits) if hits else None
