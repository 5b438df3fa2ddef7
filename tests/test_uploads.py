"""app.uploads: NDJSON line splitting in bounded slices, and the request digest."""

from __future__ import annotations

import gzip
import json
import random

import pytest

from app.errors import ApiError
from app.uploads import BOM, MAX_LINE_BYTES, SLICE_BYTES, LineSplitter, RequestDigest
from core.jobstore import ChunkEncoder, decode_chunk, encode_chunk


def split(data: bytes, piece: int, *, gzip_: bool = False) -> list[tuple[int, bytes]]:
    splitter = LineSplitter(gzip_, 1 << 40)
    out: list[tuple[int, bytes]] = []
    for start in range(0, len(data), piece):
        for lines in splitter.feed(data[start : start + piece]):
            out += lines
    for lines in splitter.finish():
        out += lines
    return out


def reference(text: bytes) -> list[tuple[int, bytes]]:
    if text.startswith(BOM):
        text = text[len(BOM) :]
    return [(n, line) for n, line in enumerate(text.split(b"\n"), 1) if line.strip()]


@pytest.mark.parametrize("piece", [1, 2, 3, 7, 64, 10_000])
def test_lines_and_their_numbers_do_not_depend_on_how_the_body_is_cut(piece: int) -> None:
    rng = random.Random(piece)
    lines = []
    for k in range(300):
        kind = rng.random()
        lines.append(b"" if kind < 0.3 else b" \r" if kind < 0.4 else json.dumps({"items": [str(k)] * 3}).encode())
    text = b"\n".join(lines) + (b"\n" if piece % 2 else b"")
    assert split(text, piece) == reference(text)
    assert split(gzip.compress(text), piece) == reference(text)  # gzip sniffed by its magic bytes


def test_a_byte_order_mark_is_dropped_before_the_first_line_only() -> None:
    text = BOM + b'{"items":["1"]}\n' + BOM + b'{"items":["2"]}\n'
    assert split(text, 1) == [(1, b'{"items":["1"]}'), (2, BOM + b'{"items":["2"]}')]
    assert split(gzip.compress(text), 5) == split(text, 1)


def test_work_comes_in_slices_of_at_most_one_mib_of_decompressed_bytes() -> None:
    text = (b"\n" * (3 * SLICE_BYTES)) + b'{"items":["1"]}\n' + b'{"items":["2"]}\n' * (SLICE_BYTES // 16)
    for gz, body in ((False, text), (True, gzip.compress(text))):
        splitter = LineSplitter(gz, 1 << 40)
        slices = list(splitter.feed(body))  # one message holding the whole body
        assert len(slices) >= len(text) // SLICE_BYTES
        assert sum(len(s) for s in slices) + sum(len(s) for s in splitter.finish()) == 1 + SLICE_BYTES // 16
        assert max(sum(len(line) + 1 for _, line in s) for s in slices) <= SLICE_BYTES + 16


def test_blank_lines_are_counted_without_being_split() -> None:
    text = b"\n" * 5_000_000 + b'{"items":["1"]}'
    assert split(text, SLICE_BYTES) == [(5_000_001, b'{"items":["1"]}')]


def test_a_line_longer_than_the_limit_is_refused_as_it_grows() -> None:
    splitter = LineSplitter(False, 1 << 40)
    with pytest.raises(ApiError) as err:
        for _ in range(MAX_LINE_BYTES // SLICE_BYTES + 2):
            list(splitter.feed(b"x" * SLICE_BYTES))
    assert err.value.code == "bad_upload" and "longer than" in err.value.message
    assert splitter.pending_bytes <= MAX_LINE_BYTES + SLICE_BYTES


def test_inflation_beyond_the_cap_is_refused_within_a_slice() -> None:
    body = gzip.compress(b"\n" * (8 * SLICE_BYTES))
    splitter = LineSplitter(True, 2 * SLICE_BYTES)
    with pytest.raises(ApiError) as err:
        list(splitter.feed(body))
    assert err.value.code == "payload_too_large"
    assert splitter.inflated <= 3 * SLICE_BYTES


def test_a_chunk_encoded_sequence_by_sequence_decodes_to_its_sequences() -> None:
    users = ["u1", None, "ü"]
    items = [["1", "2"], ["3"], ["é", "x" * 1000]]
    encoder = ChunkEncoder(40)
    sizes = []
    for u, s in zip(users, items, strict=True):
        encoder.add(u, s)
        sizes.append(encoder.size)
    chunk = decode_chunk(encoder.finish())
    assert (chunk.first, chunk.users, chunk.items) == (40, users, items)
    assert decode_chunk(encode_chunk(0, [], [])).items == []


def test_the_digest_depends_on_what_is_asked_not_on_how_it_is_written() -> None:
    def digest(model: str, target: str, options: dict, seqs: list[tuple[str | None, list[str]]]) -> str:
        d = RequestDigest(model, target, options)
        for u, s in seqs:
            d.add(u, s)
        return d.hexdigest()

    seqs: list[tuple[str | None, list[str]]] = [("u1", ["1", "2"]), (None, ["3"])]
    base = digest("m", "t", {"a": 1, "b": 2}, seqs)
    assert digest("m", "t", {"b": 2, "a": 1}, seqs) == base
    assert digest("m", "t", {"a": 1, "b": 3}, seqs) != base
    assert digest("m", "u", {"a": 1, "b": 2}, seqs) != base
    assert digest("m", "t", {"a": 1, "b": 2}, [("u1", ["1", "2"]), (None, ["4"])]) != base
    assert digest("m", "t", {"a": 1, "b": 2}, [("u1", ["1"]), (None, ["2", "3"])]) != base
    assert digest("m", "t", {"a": 1, "b": 2}, seqs[:1]) != base
