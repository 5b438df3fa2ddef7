"""Output lines (the contract README states), the JSONL and RecBole writers, the JSONL reader."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from models.catalogue import Catalogue
from models.decoding import Decision, Regenerated
from models.errors import DataError
from models.output import (
    RECBOLE_HEADER,
    JsonlWriter,
    RecboleWriter,
    read_jsonl_input,
    to_output_line,
    write_jsonl,
    write_recbole,
)
from models.tally import Tally

CAT = Catalogue.build({"b1": "books", "b2": "books", "e1": "elec", "e2": "elec", "s1": "sport"})
B1, B2, E1, E2, S1 = (CAT.dense(i) for i in ("b1", "b2", "e1", "e2", "s1"))
BOOKS, ELEC = CAT.domain_index("books"), CAT.domain_index("elec")


def sample_result() -> Regenerated:
    decisions = [
        Decision(0, E1, ELEC, "discard", None, "no_context"),
        Decision(1, B1, BOOKS, "keep", None, None),
        Decision(2, "ghost", None, "discard", None, "unknown_item"),
        Decision(3, E2, ELEC, "replace", B2, None, {"global": [[B2, 1.5], [E1, 0.5]], "local": [[B2, 2.0]]}),
        Decision(4, E1, ELEC, "discard", B2, "duplicate"),
    ]
    return Regenerated([B1, B2], decisions, Tally(kept=1, replaced=1, discarded=3))


def test_output_line_uses_external_ids_and_domain_names_and_omits_empty_keys() -> None:
    line = to_output_line(sample_result(), CAT, "books", "u7")
    assert line["user_id"] == "u7" and line["target_domain"] == "books"
    assert line["sequence"] == ["b1", "b2"]
    assert line["stats"] == {"kept": 1, "replaced": 1, "discarded": 3}
    d = line["decisions"]
    assert d[0] == {"position": 0, "item": "e1", "domain": "elec", "action": "discard", "reason": "no_context"}
    assert d[1] == {"position": 1, "item": "b1", "domain": "books", "action": "keep"}
    assert d[2] == {"position": 2, "item": "ghost", "domain": None, "action": "discard", "reason": "unknown_item"}
    assert d[3]["replacement"] == "b2" and "reason" not in d[3]
    assert d[3]["explain"] == {"global": [["b2", 1.5], ["e1", 0.5]], "local": [["b2", 2.0]]}
    assert d[4]["replacement"] == "b2" and d[4]["reason"] == "duplicate"


def test_jsonl_writer_streams_one_object_per_line(tmp_path: Path) -> None:
    line = to_output_line(sample_result(), CAT, "books", "ü-1")
    path = tmp_path / "out" / "regen.jsonl"
    assert write_jsonl(path, [line, line]) == 2
    rows = [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines()]
    assert rows == [line, line]
    buf = io.StringIO()
    with JsonlWriter(buf) as w:
        w.write(line)
        assert buf.getvalue().count("\n") == 1  # written before the writer closes
    assert not buf.closed  # a stream passed in is left open


def test_recbole_writer_splits_history_and_last_item_and_skips_short_sequences(tmp_path: Path) -> None:
    lines = [
        {"user_id": "u1", "sequence": ["b1", "b2", "b3"]},
        {"user_id": "u2", "sequence": ["b1"]},
        {"user_id": "u3", "sequence": []},
        {"user_id": "u4", "sequence": ["b2", "b1"]},
    ]
    path = tmp_path / "target.inter"
    assert write_recbole(path, lines) == 2
    assert path.read_text().splitlines() == [RECBOLE_HEADER, "u1\tb1 b2\tb3", "u4\tb2\tb1"]


def test_recbole_writer_refuses_ids_with_separators() -> None:
    w = RecboleWriter(io.StringIO())
    with pytest.raises(DataError, match="whitespace"):
        w.write("u1", ["a b", "c"])
    assert w.write("u1", ["a"]) is False and w.skipped == 1


def write_lines(tmp_path: Path, *lines: str) -> Path:
    path = tmp_path / "in.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_reader_yields_records_skips_blank_lines_and_defaults_user_to_line_number(tmp_path: Path) -> None:
    path = write_lines(
        tmp_path, '{"user_id": "a", "items": ["x", 3]}', "", '{"items": []}', '{"user_id": 9, "items": [1]}'
    )
    records = list(read_jsonl_input(path))
    assert [(r.user_id, r.items, r.line) for r in records] == [("a", ["x", 3], 1), ("3", [], 3), ("9", [1], 4)]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{not json", "not valid JSON"),
        ("[1, 2]", "expected a JSON object"),
        ('{"user_id": "a"}', 'missing "items"'),
        ('{"items": "abc"}', "must be a list"),
        ('{"items": [1.5]}', r'"items"\[0\] must be a string or an integer, got float'),
        ('{"items": ["a", true]}', r'"items"\[1\] must be a string or an integer, got bool'),
        ('{"items": [], "user_id": ["u"]}', '"user_id" must be a string'),
    ],
)
def test_reader_reports_bad_lines_with_their_line_number(tmp_path: Path, text: str, message: str) -> None:
    path = write_lines(tmp_path, '{"items": ["ok"]}', text)
    with pytest.raises(DataError, match=message) as err:
        list(read_jsonl_input(path))
    assert f"{path}:2:" in str(err.value) and err.value.details["line"] == 2


def test_reader_reports_a_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="not found"):
        list(read_jsonl_input(tmp_path / "nope.jsonl"))


def test_file_names_are_safe_and_distinct_even_when_names_differ_only_in_replaced_characters() -> None:
    from models.output import file_names

    names = ["Books", "home & garden", "home_&_garden", "books", "日本", "../etc", ""]
    out = file_names(names)
    assert out["Books"] == "Books" and out["home & garden"] == "home___garden" and out["日本"] == "日本"
    assert out["home_&_garden"] == "home___garden-2" and out["books"] == "books-3"  # case-insensitive file systems
    assert out["../etc"] == "___etc" and out[""] == "_"
    assert len({v.lower() for v in out.values()}) == len(names)
    assert all("/" not in v and v not in (".", "..") for v in out.values())
