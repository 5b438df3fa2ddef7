"""What decoding returns: the options it ran with, one decision per input item, and the
post-processing of METHOD.md §3 that turns raw choices into a target-domain sequence."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from models.tally import Tally

Action = Literal["keep", "replace", "discard"]


@dataclass(frozen=True)
class DecodeOptions:
    no_adaptation: bool = False  # experts := the mixed model
    no_source_experts: bool = False  # z^S := z^M
    no_global: bool = False  # always go local
    no_local: bool = False  # replace with the global argmax when it is a target item
    explain_top_k: int = 0  # > 0: attach top-k global/local candidates to every decided item
    # not in METHOD.md: discard a replacement that repeats any item already in the output
    # row (reason "repeat"), not only the previous one. Logs where a user meets an item
    # once (ratings, purchases) never repeat, but the rule often picks the same popular
    # target item for many positions of one row (docs/results/ml100k.md).
    drop_repeats: bool = False

    def __post_init__(self) -> None:
        if self.no_global and self.no_local:
            raise ValueError("no_global and no_local together leave no score to decide with")
        if self.explain_top_k < 0:
            raise ValueError("explain_top_k must be >= 0")


@dataclass(frozen=True)
class Decision:
    position: int  # in the input sequence
    item: int | str  # dense id; the raw external id when the item is unknown (domain None)
    domain: int | None  # domain index
    action: Action
    replacement: int | None  # dense id; kept on a "duplicate" discard for transparency
    reason: str | None  # "global_not_target" | "no_context" | "duplicate" | "repeat" | "unknown_item"
    explain: dict | None = None  # {"global": [(id, g), ...], "local": [(id, l), ...]}


@dataclass(frozen=True)
class Regenerated:
    sequence: list[int]  # dense ids of target items
    decisions: list[Decision]  # one per input item, in input order
    stats: Tally


NO_CONTEXT = -2  # raw code: a source item at position 0


def assemble(
    items: Sequence[int],
    domains: Sequence[int],
    raw: Sequence[int],
    target: int,
    explain: Mapping[int, dict] | None = None,
    *,
    drop_repeats: bool = False,
) -> Regenerated:
    """Post-processing of METHOD.md §3 for one sequence. raw[j] is the replacing dense
    id of a source item at j, -1 for a discard, NO_CONTEXT at position 0 (ignored for
    target items). Consecutive duplicates collapse; the later copy is discarded. With
    drop_repeats, a replacement already anywhere in the output is discarded too (target
    items are always kept)."""
    sequence: list[int] = []
    emitted: set[int] = set()
    decisions: list[Decision] = []
    for j, (item, dom, r) in enumerate(zip(items, domains, raw, strict=True)):
        item, dom, r = int(item), int(dom), int(r)
        if dom == target:
            action, out, reason, replacement = "keep", item, None, None
        elif r >= 0:
            action, out, reason, replacement = "replace", r, None, r
        else:
            reason = "no_context" if r == NO_CONTEXT else "global_not_target"
            action, out, replacement = "discard", None, None
        if out is not None and sequence and sequence[-1] == out:
            action, out, reason = "discard", None, "duplicate"
        elif drop_repeats and action == "replace" and out in emitted:
            action, out, reason = "discard", None, "repeat"
        if out is not None:
            sequence.append(out)
            emitted.add(out)
        decisions.append(Decision(j, item, dom, action, replacement, reason, explain.get(j) if explain else None))
    return Regenerated(sequence, decisions, decision_stats(decisions))


def decision_stats(decisions: Sequence[Decision]) -> Tally:
    return Tally.of_actions(d.action for d in decisions)
