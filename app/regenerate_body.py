"""The POST /regenerate body, parsed without holding the event loop for long.

Handed to `json.loads` and pydantic in one piece, 8 MiB of one-item sequences (600,000
objects) holds the event loop for 3.2 s before the sequence cap can answer 413. Here
the top-level object is walked by hand and its `sequences` array is decoded one
element at a time (each element by the C decoder), with a turn of the event loop every
`SLICE_CHARS` characters:

- the sequence cap answers 413 at the first sequence beyond it, the rest unread;
- a sequence longer than the item cap is counted (422 `too_long`, up to 20 of them
  listed), not validated item by item;
- each sequence is validated on its own, with the error locations a whole-body
  validation gives (`body.sequences.<k>...`).

The other members (model, target_domain, options) are decoded whole: in a valid
request they are a few bytes, and the body cap bounds what a hostile one can hold.
Accepted bodies and error answers are those of FastAPI's own body parsing: the same
JSON (NaN included), the same Python-mode validation, `bad_json` with the character
position, 415 for a non-JSON content type, `Field required` for an empty body.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

import anyio.lowlevel
from pydantic import ValidationError

from app.errors import ApiError, bad_json, validation_failure
from core.schemas import RegenerateRequest, SequenceIn

SLICE_CHARS = 256 * 1024  # characters decoded between two turns of the event loop
_DECODER = json.JSONDecoder()
_SPACE = re.compile(r"[ \t\n\r]*")
_FIELD_ORDER = {name: i for i, name in enumerate(RegenerateRequest.model_fields)}
_PLACEHOLDER = SequenceIn(items=["placeholder"])  # stands in for sequences reported on their own


class _Text:
    """A cursor over the body text."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.at = 0

    def peek(self) -> str:
        self.at = _SPACE.match(self.text, self.at).end()  # type: ignore[union-attr]
        return self.text[self.at : self.at + 1]

    def expect(self, chars: str) -> str:
        found = self.peek()
        if not found or found not in chars:
            raise bad_json(f"Expecting {' or '.join(repr(c) for c in chars)}", position=self.at)
        self.at += 1
        return found

    def value(self) -> Any:
        self.peek()
        try:
            value, self.at = _DECODER.raw_decode(self.text, self.at)
        except json.JSONDecodeError as exc:
            raise bad_json(exc.msg, position=exc.pos) from None
        except (ValueError, RecursionError) as exc:  # absurd numbers, nesting deeper than the recursion limit
            raise bad_json(str(exc) or type(exc).__name__, position=self.at) from None
        return value


async def parse_regenerate_body(body: bytes, max_sequences: int, max_items: int) -> RegenerateRequest:
    """The request, or ApiError: bad_json 400, payload_too_large 413, validation_error 422."""
    if not body:
        raise validation_failure([{"loc": ("body",), "msg": "Field required", "type": "missing"}])
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise bad_json(f"not UTF-8 ({exc.reason})", position=exc.start) from None
    t = _Text(text)
    if t.peek() != "{":  # not an object: whatever it is, validation says so
        whole = t.value()
        if t.peek():
            raise bad_json("Extra data", position=t.at)
        return _validate(whole, _Checked())
    fields, checked = await _members(t, max_sequences, max_items)
    if t.peek():
        raise bad_json("Extra data", position=t.at)
    return _validate(fields, checked, max_items)


async def _members(t: _Text, max_sequences: int, max_items: int) -> tuple[dict[str, Any], _Checked]:
    """Decode the body object's members; `sequences` element by element (`_sequences`)."""
    t.at += 1  # the "{"
    fields: dict[str, Any] = {}
    checked = _Checked()
    if t.peek() == "}":
        t.at += 1
        return fields, checked
    while True:
        if t.peek() != '"':
            raise bad_json("Expecting property name enclosed in double quotes", position=t.at)
        key = t.value()
        t.expect(":")
        if key == "sequences" and t.peek() == "[":
            checked = await _sequences(t, max_sequences, max_items)
            fields[key] = checked.sequences
        else:
            fields[key] = t.value()
        if t.expect(",}") == "}":
            return fields, checked


@dataclass
class _Checked:
    """The `sequences` array, validated element by element."""

    sequences: list[SequenceIn] = field(default_factory=list)
    errors: list[dict[str, Any]] = field(default_factory=list)  # pydantic's, located in the body
    too_long: list[tuple[int, int]] = field(default_factory=list)  # (sequence, items) above the cap


async def _sequences(t: _Text, max_sequences: int, max_items: int) -> _Checked:
    """Decode and validate the `sequences` array element by element."""
    t.at += 1  # the "["
    checked = _Checked()
    mark = t.at
    if t.peek() == "]":
        t.at += 1
        return checked
    k = 0
    while True:
        if k >= max_sequences:
            raise ApiError(
                "payload_too_large",
                f"more than {max_sequences} sequences in one request; the limit is {max_sequences} "
                "(use POST /jobs for more)",
                {"at_least": max_sequences + 1, "max": max_sequences},
            )
        raw = t.value()
        items = raw.get("items") if isinstance(raw, dict) else None
        if isinstance(items, list) and len(items) > max_items:
            checked.too_long.append((k, len(items)))
        else:
            try:
                checked.sequences.append(SequenceIn.model_validate(raw))
            except ValidationError as exc:
                checked.errors.extend({**e, "loc": ("body", "sequences", k, *e["loc"])} for e in exc.errors())
        k += 1
        if t.at - mark >= SLICE_CHARS:
            await anyio.lowlevel.checkpoint()
            mark = t.at
        if t.expect(",]") == "]":
            break
    if checked.too_long or checked.errors:
        checked.sequences = [_PLACEHOLDER]  # reported on their own: only the other members are validated
    return checked


def _too_long(too_long: list[tuple[int, int]], max_items: int) -> ApiError:
    """422 for sequences above the item cap: that sequence is bad, not the request too big."""
    return validation_failure(
        [
            {
                "loc": ("body", "sequences", i, "items"),
                "msg": f"{n} items; at most {max_items} are allowed",
                "type": "too_long",
            }
            for i, n in too_long
        ]
    )


def _validate(fields: Any, checked: _Checked, max_items: int = 0) -> RegenerateRequest:
    """Validate the members, then report every error in field order, as a whole-body
    validation would; sequences above the item cap only when nothing else is wrong."""
    try:
        request = RegenerateRequest.model_validate(fields)
        errors: list[dict[str, Any]] = []
    except ValidationError as exc:
        errors = [{**e, "loc": ("body", *e["loc"])} for e in exc.errors()]
    errors = sorted(errors + checked.errors, key=_field_rank)
    if errors:
        raise validation_failure(errors)
    if checked.too_long:
        raise _too_long(checked.too_long, max_items)
    return request


def _field_rank(error: dict[str, Any]) -> int:
    loc = error["loc"]
    return _FIELD_ORDER.get(loc[1], len(_FIELD_ORDER)) if len(loc) > 1 else -1
