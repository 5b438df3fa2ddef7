"""The keep / replace / discard tally of decoded items: one sequence's, a batch's or a
whole job's. Torch-free, so that the service core can add tallies up without loading
the ML stack."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Literal

TallyKey = Literal["kept", "replaced", "discarded"]
# the output format's names (models.output, the API's `stats`), in this order
KEYS: tuple[TallyKey, ...] = ("kept", "replaced", "discarded")
KEY_OF_ACTION: dict[str, TallyKey] = {"keep": "kept", "replace": "replaced", "discard": "discarded"}


@dataclass(frozen=True)
class Tally:
    """How many items were kept, replaced and discarded."""

    kept: int = 0
    replaced: int = 0
    discarded: int = 0

    @classmethod
    def of_actions(cls, actions: Iterable[str]) -> Tally:
        """The tally of decisions' actions ("keep", "replace", "discard")."""
        counts = dict.fromkeys(KEYS, 0)
        for action in actions:
            counts[KEY_OF_ACTION[action]] += 1
        return cls(**counts)

    @classmethod
    def total(cls, tallies: Iterable[Tally]) -> Tally:
        out = cls()
        for t in tallies:
            out += t
        return out

    @classmethod
    def from_dict(cls, counts: Mapping[str, int]) -> Tally:
        return cls(**{k: int(counts.get(k, 0)) for k in KEYS})

    def __add__(self, other: Tally) -> Tally:
        return Tally(self.kept + other.kept, self.replaced + other.replaced, self.discarded + other.discarded)

    def __getitem__(self, key: str) -> int:
        """`tally["kept"]`: the output format's names."""
        if key not in KEYS:
            raise KeyError(key)
        return int(getattr(self, key))

    @property
    def decided(self) -> int:
        """Decided items in all: kept + replaced + discarded."""
        return self.kept + self.replaced + self.discarded

    def as_dict(self) -> dict[str, int]:
        """{"kept", "replaced", "discarded"}: the `stats` object of the output format."""
        return {k: self[k] for k in KEYS}

    def by_action(self) -> dict[str, int]:
        """{"keep", "replace", "discard"}: the counts under the decision action names."""
        return {action: self[key] for action, key in KEY_OF_ACTION.items()}
