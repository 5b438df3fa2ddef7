"""Decoding sequences of external ids: unknown items are refused or dropped, and the
decisions are reported at the positions of the input."""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from typing import Literal

from models.catalogue import Catalogue, check_known, unknown_item_error
from models.decoding.engine import ProgressFn, Regenerator
from models.decoding.results import Decision, DecodeOptions, Regenerated, decision_stats


def regenerate_external(
    regenerator: Regenerator,
    sequences: Sequence[Sequence[str | int]],
    target: str,
    *,
    unknown_items: Literal["error", "drop"] = "error",
    options: DecodeOptions = DecodeOptions(),
    on_progress: ProgressFn | None = None,
) -> list[Regenerated]:
    """Regenerates sequences of external ids. Unknown items raise UnknownItemError
    (checked for all sequences before any decoding) or, with unknown_items="drop",
    are discarded with reason "unknown_item" and take no part in decoding."""
    if unknown_items == "error":
        check_known(regenerator.catalogue, sequences)
    return list(
        iter_regenerate_external(
            regenerator, sequences, target, unknown_items=unknown_items, options=options, on_progress=on_progress
        )
    )


def iter_regenerate_external(
    regenerator: Regenerator,
    sequences: Iterable[Sequence[str | int]],
    target: str,
    *,
    unknown_items: Literal["error", "drop"] = "error",
    options: DecodeOptions = DecodeOptions(),
    on_progress: ProgressFn | None = None,
) -> Iterator[Regenerated]:
    """Streaming form of `regenerate_external` (errors surface when reached)."""
    if unknown_items not in ("error", "drop"):
        raise ValueError(f"unknown_items must be 'error' or 'drop', got {unknown_items!r}")
    pending: deque[tuple[Sequence[str | int], list[int]]] = deque()  # (raw sequence, known positions)

    def known_only() -> Iterator[list[int]]:
        for k, seq in enumerate(sequences):
            dense, positions = _encode(regenerator.catalogue, seq, k, strict=unknown_items == "error")
            pending.append((seq, positions))
            yield dense

    for result in regenerator.iter_regenerate(known_only(), target, options, on_progress):
        seq, positions = pending.popleft()
        yield _restore_unknown(result, seq, positions)


def _encode(catalogue: Catalogue, seq: Sequence[str | int], k: int, *, strict: bool) -> tuple[list[int], list[int]]:
    dense: list[int] = []
    positions: list[int] = []
    for j, item in enumerate(seq):
        d = catalogue.get(item)
        if d is None:
            if strict:
                raise unknown_item_error(item, j, k)
            continue
        dense.append(d)
        positions.append(j)
    return dense, positions


def _restore_unknown(result: Regenerated, seq: Sequence[str | int], positions: list[int]) -> Regenerated:
    """Maps decision positions back to the input and inserts the unknown items' discards."""
    if len(positions) == len(seq):
        return result
    by_pos = {positions[d.position]: d for d in result.decisions}
    decisions = [
        _moved(by_pos[j], j) if j in by_pos else Decision(j, str(item), None, "discard", None, "unknown_item")
        for j, item in enumerate(seq)
    ]
    return Regenerated(result.sequence, decisions, decision_stats(decisions))


def _moved(d: Decision, position: int) -> Decision:
    return Decision(position, d.item, d.domain, d.action, d.replacement, d.reason, d.explain)
