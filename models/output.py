"""Regeneration output (the contract README states) and the JSONL input reader.

Output line, one JSON object per regenerated sequence:
  {"user_id", "target_domain", "sequence": [item ids], "decisions": [{"position", "item",
   "domain", "action", "replacement"?, "reason"?}], "stats": {"kept", "replaced", "discarded"}}
with external item ids and domain names; with titles asked for and known, also
"titles": {item id: title} for every item the line names (its decisions, replacements,
explanation candidates). RecBole atomic export: one row per sequence of at least 2
items, history (all but the last, space separated) -> last item.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, TypeVar

from models.catalogue import Catalogue
from models.decoding import Decision, Regenerated
from models.errors import DataError

_W = TypeVar("_W", bound="_LineWriter")

RECBOLE_HEADER = "user_id:token\titem_id_list:token_seq\titem_id:token"


# -- file names -----------------------------------------------------------------------


def safe_file_name(name: str) -> str:
    """`name` with every character other than a letter, digit, '-' or '_' replaced by '_'."""
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in name) or "_"


def file_names(names: Sequence[str]) -> dict[str, str]:
    """A distinct safe file name per name, stable for a given list.

    Two names that only differ in characters replaced by '_' or in case ('a b' and 'a_b',
    'Books' and 'books' on a case-insensitive file system) would share a file: from the
    second one on, such names get their position in `names` as a suffix.
    """
    out: dict[str, str] = {}
    taken: set[str] = set()
    for i, name in enumerate(names):
        base = safe_file_name(name)
        candidate = base if base.lower() not in taken else f"{base}-{i}"
        while candidate.lower() in taken:
            candidate += "_"
        taken.add(candidate.lower())
        out[name] = candidate
    return out


# -- output lines ---------------------------------------------------------------------


def to_output_line(
    result: Regenerated, catalogue: Catalogue, target: str, user_id: str, *, titles: bool = False
) -> dict:
    """A Regenerated (dense ids) as the output object (external ids); `titles` adds the
    titles of the items it names, when the catalogue has titles."""
    line = {
        "user_id": user_id,
        "target_domain": target,
        "sequence": [catalogue.external(i) for i in result.sequence],
        "decisions": [_decision(d, catalogue) for d in result.decisions],
        "stats": result.stats.as_dict(),
    }
    if titles and catalogue.info is not None and catalogue.info.titles:
        line["titles"] = catalogue.info.titles_of(named_items(line))
    return line


def named_items(line: dict) -> list[str]:
    """Every item id an output line names, once each, in order of first mention."""
    found: dict[str, None] = {}
    for d in line["decisions"]:
        found[d["item"]] = None
        if "replacement" in d:
            found[d["replacement"]] = None
        for pairs in d.get("explain", {}).values():
            found.update((item, None) for item, _ in pairs)
    return list(found)


def _decision(d: Decision, catalogue: Catalogue) -> dict:
    # an unknown item (domain None) carries its raw external id already
    out = {
        "position": d.position,
        "item": catalogue.external(d.item) if d.domain is not None else str(d.item),
        "domain": catalogue.domains[d.domain] if d.domain is not None else None,
        "action": d.action,
    }
    if d.replacement is not None:
        out["replacement"] = catalogue.external(d.replacement)
    if d.reason is not None:
        out["reason"] = d.reason
    if d.explain is not None:
        out["explain"] = {
            key: [[catalogue.external(i), score] for i, score in pairs] for key, pairs in d.explain.items()
        }
    return out


class _LineWriter:
    """Writes to a path (opened and closed here) or to an open text stream (left open)."""

    def __init__(self, target: str | Path | IO[str]) -> None:
        self._owned = isinstance(target, (str, Path))
        if self._owned:
            Path(target).parent.mkdir(parents=True, exist_ok=True)
        self._f: IO[str] = open(target, "w", encoding="utf-8") if self._owned else target  # noqa: SIM115
        self.written = 0

    def close(self) -> None:
        if self._owned:
            self._f.close()

    def __enter__(self: _W) -> _W:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


class JsonlWriter(_LineWriter):
    """Streams output lines, one JSON object per line."""

    def write(self, line: dict) -> None:
        self._f.write(json.dumps(line, ensure_ascii=False, separators=(",", ":")) + "\n")
        self.written += 1


class RecboleWriter(_LineWriter):
    """Streams a RecBole atomic `.inter` file: user_id, history, last item."""

    def __init__(self, target: str | Path | IO[str]) -> None:
        super().__init__(target)
        self._f.write(RECBOLE_HEADER + "\n")
        self.skipped = 0

    def write(self, user_id: str, sequence: Sequence[str]) -> bool:
        """Writes one row; returns False (and writes nothing) below 2 items."""
        if len(sequence) < 2:
            self.skipped += 1
            return False
        tokens = [str(user_id), *map(str, sequence)]
        bad = [t for t in tokens if not t or any(c.isspace() for c in t)]
        if bad:
            # tab and space are the atomic format's separators: such an id would corrupt the row
            raise DataError(f"id {bad[0]!r} cannot be written to a RecBole atomic file (whitespace)", {"id": bad[0]})
        self._f.write(f"{tokens[0]}\t{' '.join(tokens[1:-1])}\t{tokens[-1]}\n")
        self.written += 1
        return True


def write_jsonl(target: str | Path | IO[str], lines: Iterable[dict]) -> int:
    with JsonlWriter(target) as w:
        for line in lines:
            w.write(line)
        return w.written


def write_recbole(target: str | Path | IO[str], lines: Iterable[dict]) -> int:
    """Writes output lines (their user_id and sequence) as RecBole rows; returns rows written."""
    with RecboleWriter(target) as w:
        for line in lines:
            w.write(line["user_id"], line["sequence"])
        return w.written


# -- input ----------------------------------------------------------------------------


@dataclass(frozen=True)
class InputRecord:
    user_id: str  # the line number when the line has none
    items: list[str | int]  # external ids, in order
    line: int  # 1-based line number in the file


def read_jsonl_input(path: str | Path) -> Iterator[InputRecord]:
    """Reads `{"user_id"?: str, "items": [...]}` lines lazily; blank lines are skipped.
    Raises DataError naming the file and line on anything malformed."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"input file not found: {path}", {"path": str(path)})
    with path.open(encoding="utf-8") as f:
        for n, text in enumerate(f, start=1):
            if text.strip():
                yield _parse_line(text, n, path)


def _parse_line(text: str, n: int, path: Path) -> InputRecord:
    def fail(why: str) -> DataError:
        return DataError(f"{path}:{n}: {why}", {"path": str(path), "line": n})

    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        raise fail(f"not valid JSON ({exc.msg})") from None
    if not isinstance(obj, dict):
        raise fail("expected a JSON object")
    if "items" not in obj:
        raise fail('missing "items"')
    items = obj["items"]
    if not isinstance(items, list):
        raise fail('"items" must be a list of item ids')
    for k, item in enumerate(items):
        if isinstance(item, bool) or not isinstance(item, (str, int)):
            raise fail(f'"items"[{k}] must be a string or an integer, got {type(item).__name__}')
    user_id = obj.get("user_id", str(n))
    if isinstance(user_id, bool) or not isinstance(user_id, (str, int)):
        raise fail(f'"user_id" must be a string, got {type(user_id).__name__}')
    return InputRecord(str(user_id), items, n)
