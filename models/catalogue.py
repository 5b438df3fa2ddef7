"""The item catalogue: external item id <-> dense id, and the domain of every item.

Dense ids are grouped by domain, so each domain owns one contiguous range
[start, end). Models score dense ids 0..V-1 directly; this is what lets the
decoder restrict a softmax to one domain with a slice instead of a gather.

A catalogue may also carry item titles and genres (`info`, models/titles.py). They are
stored with it but take no part in equality or the fingerprint.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from models.errors import CatalogueError, UnknownDomainError, UnknownItemError
from models.titles import ItemInfo

MIN_DOMAINS = 2
MAX_DOMAINS = 16


@dataclass(frozen=True)
class Catalogue:
    domains: tuple[str, ...]
    item_ids: tuple[str, ...]  # dense id -> external id
    offsets: tuple[int, ...]  # len K+1; domain k owns dense ids [offsets[k], offsets[k+1])
    info: ItemInfo | None = field(default=None, compare=False, repr=False)  # titles, genres
    _index: dict[str, int] = field(init=False, repr=False, compare=False)
    _item_domain: np.ndarray = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        k = len(self.domains)
        if not MIN_DOMAINS <= k <= MAX_DOMAINS:
            raise CatalogueError(
                f"a catalogue needs {MIN_DOMAINS} to {MAX_DOMAINS} domains, got {k}",
                {"domains": list(self.domains)},
            )
        if len(set(self.domains)) != k or any(not str(d).strip() for d in self.domains):
            raise CatalogueError("domain names must be unique and non-empty", {"domains": list(self.domains)})
        if len(self.offsets) != k + 1 or self.offsets[0] != 0 or self.offsets[-1] != len(self.item_ids):
            raise CatalogueError("domain offsets do not cover the item list")
        empty = [d for d, a, b in zip(self.domains, self.offsets, self.offsets[1:], strict=False) if b <= a]
        if empty:
            raise CatalogueError(f"domains without items: {empty}", {"domains": empty})
        index = {item: i for i, item in enumerate(self.item_ids)}
        if len(index) != len(self.item_ids):
            raise CatalogueError("an item id appears more than once in the catalogue")
        item_domain = np.repeat(np.arange(k, dtype=np.int16), np.diff(np.asarray(self.offsets)))
        object.__setattr__(self, "_index", index)
        object.__setattr__(self, "_item_domain", item_domain)

    # -- construction -------------------------------------------------------------

    @classmethod
    def build(cls, item_domain: Mapping[str, str], domains: Sequence[str] | None = None) -> Catalogue:
        """Build from {external item id: domain}. Domains keep the given order (default:
        sorted by name); items are sorted by id inside their domain, so the result does
        not depend on the order of the mapping."""
        names = list(domains) if domains is not None else sorted({str(d) for d in item_domain.values()})
        pos = {d: k for k, d in enumerate(names)}
        unknown = sorted({str(d) for d in item_domain.values()} - set(pos))
        if unknown:
            raise CatalogueError(f"items belong to domains not listed: {unknown}")
        groups: list[list[str]] = [[] for _ in names]
        for item, dom in item_domain.items():
            groups[pos[str(dom)]].append(str(item))
        item_ids: list[str] = []
        offsets = [0]
        for g in groups:
            item_ids.extend(sorted(g, key=_natural_key))
            offsets.append(len(item_ids))
        return cls(tuple(names), tuple(item_ids), tuple(offsets))

    def to_dict(self) -> dict:
        """The stored form: domains, item ids, offsets, and `titles` / `genres` when known."""
        return {**self._core(), **(self.info.to_dict() if self.info is not None else {})}

    def _core(self) -> dict:
        return {"domains": list(self.domains), "item_ids": list(self.item_ids), "offsets": list(self.offsets)}

    @classmethod
    def from_dict(cls, d: Mapping) -> Catalogue:
        try:
            info = ItemInfo.from_dict(d)
            return cls(
                tuple(d["domains"]), tuple(str(i) for i in d["item_ids"]), tuple(int(o) for o in d["offsets"]), info
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise CatalogueError(f"malformed catalogue: {exc}") from exc

    def with_info(self, info: ItemInfo | None) -> Catalogue:
        """The same catalogue with `info` restricted to its own items (None: without info)."""
        kept = info.restrict(self.item_ids) if info is not None else None
        return Catalogue(self.domains, self.item_ids, self.offsets, kept)

    def fingerprint(self) -> str:
        """Of the items and domains only: titles and genres do not change it."""
        blob = json.dumps(self._core(), separators=(",", ":")).encode()
        return hashlib.sha256(blob).hexdigest()

    # -- queries ------------------------------------------------------------------

    @property
    def n_items(self) -> int:
        return len(self.item_ids)

    @property
    def n_domains(self) -> int:
        return len(self.domains)

    @property
    def item_domain(self) -> np.ndarray:
        """Domain index of every dense id, shape [V], int16 (read-only view)."""
        view = self._item_domain.view()
        view.flags.writeable = False
        return view

    def domain_index(self, name: str) -> int:
        try:
            return self.domains.index(name)
        except ValueError:
            raise UnknownDomainError(
                f"unknown domain {name!r}; known domains: {', '.join(self.domains)}",
                {"domain": name, "known": list(self.domains)},
            ) from None

    def domain_range(self, domain: str | int) -> tuple[int, int]:
        k = self.domain_index(domain) if isinstance(domain, str) else int(domain)
        return self.offsets[k], self.offsets[k + 1]

    def domain_size(self, domain: str | int) -> int:
        a, b = self.domain_range(domain)
        return b - a

    def dense(self, item: str | int) -> int:
        try:
            return self._index[str(item)]
        except KeyError:
            raise UnknownItemError(f"unknown item {item!r}", {"item": str(item)}) from None

    def get(self, item: str | int) -> int | None:
        return self._index.get(str(item))

    def encode(self, items: Iterable[str | int]) -> list[int]:
        return [self.dense(i) for i in items]

    def external(self, dense_id: int) -> str:
        return self.item_ids[dense_id]

    def domain_of(self, dense_id: int) -> str:
        return self.domains[int(self._item_domain[dense_id])]

    def title(self, item: str) -> str | None:
        """The title of external id `item`, when the catalogue knows one."""
        return self.info.title(str(item)) if self.info is not None else None


# -- the unknown-item check ----------------------------------------------------------

ECHO_CHARS = 100  # of an unknown item id quoted back in the error


def check_known(
    catalogue: Catalogue, sequences: Iterable[Sequence[str | int]], *, first: int = 0, unit: str = "sequence"
) -> None:
    """Raise `unknown_item_error` for the first item of `sequences` that is not in the
    catalogue, or nothing. The sequences are numbered from `first` as `unit`s (the
    index in a whole job, a line number of an upload)."""
    for k, seq in enumerate(sequences):
        position = first_unknown(catalogue, seq)
        if position is not None:
            raise unknown_item_error(seq[position], position, first + k, unit)


def first_unknown(catalogue: Catalogue, sequence: Sequence[str | int]) -> int | None:
    """The position of the first item of `sequence` that is not in the catalogue."""
    get = catalogue.get
    return next((j for j, item in enumerate(sequence) if get(item) is None), None)


def unknown_item_error(item: str | int, position: int, number: int, unit: str = "sequence") -> UnknownItemError:
    """The one error for an unknown item: where it is, and (at most `ECHO_CHARS` of) its id."""
    shown = str(item)[:ECHO_CHARS]
    return UnknownItemError(
        f"unknown item {shown!r} at position {position} of {unit} {number}",
        {"item": shown, unit: number, "position": position},
    )


def _natural_key(item: str) -> tuple[int, int | str]:
    # numeric ids sort numerically ("2" < "10"), others lexically, numbers first
    return (0, int(item)) if item.isdigit() else (1, item)
