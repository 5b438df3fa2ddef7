"""The SDK's job uploads against httpx transports: a list over 1 MiB, iterators and
files go as gzip NDJSON, streamed, and are retried only when they can be replayed."""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

import taesar_client as sdk
from taesar_client import TaesarClient
from taesar_client._base import UPLOAD_CHUNK_BYTES
from tests.sdk_support import BASE, Handler, Recorder, client_for, error, job_json


def test_submit_job_with_a_list_over_one_mib_streams_gzip_ndjson_and_can_be_retried() -> None:
    seqs = [{"user_id": f"u{i}", "items": [f"item-{i}-{j}" for j in range(20)]} for i in range(5000)]
    assert len(json.dumps(seqs)) > 1 << 20
    recorder = Recorder(
        httpx.Response(503, json={"error": {"code": "redis_unavailable", "message": "m"}}),
        httpx.Response(202, json=job_json()),
    )
    client, _ = client_for(recorder)
    client.submit_job("drama", seqs, model="tiny", idempotency_key="k")
    assert len(recorder.requests) == 2  # the 503 was retried with the same body
    for request, body in zip(recorder.requests, recorder.bodies, strict=True):
        assert request.headers["Content-Type"] == "application/x-ndjson"
        assert request.headers["Content-Encoding"] == "gzip"
        assert request.url.params["target_domain"] == "drama" and request.url.params["model"] == "tiny"
        lines = gzip.decompress(body).decode().splitlines()
        assert [json.loads(x) for x in lines] == seqs


class LazyTransport(httpx.BaseTransport):
    """Like MockTransport, but hands the handler the body unread (MockTransport reads it first)."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        return self.handler(request)


def many_sequences(n: int, consumed: list[int]) -> Iterator[dict[str, Any]]:
    for i in range(n):
        consumed[0] = i + 1
        yield {"user_id": f"u{i}", "items": [f"i{i}", f"i{i + 1}", "x" * 20]}


def test_an_iterator_is_streamed_as_gzip_ndjson_without_being_held_in_memory() -> None:
    n, consumed, seen_when_first_chunk = 30_000, [0], []

    def handler(request: httpx.Request) -> httpx.Response:
        chunks = []
        for chunk in request.stream:  # type: ignore[union-attr]
            if not chunks:
                seen_when_first_chunk.append(consumed[0])
            chunks.append(chunk)
        lines = gzip.decompress(b"".join(chunks)).splitlines()
        assert len(lines) == n and json.loads(lines[-1])["user_id"] == f"u{n - 1}"
        return httpx.Response(202, json=job_json(total=n))

    recorder = Recorder(handler)
    client = TaesarClient(BASE, transport=LazyTransport(recorder))
    assert client.submit_job("drama", many_sequences(n, consumed), model="tiny").progress.total == n
    request = recorder.requests[0]
    assert request.headers["Content-Type"] == "application/x-ndjson"
    assert request.headers["Content-Encoding"] == "gzip"
    assert "content-length" not in request.headers  # chunked: the size is never known up front
    assert request.url.params["target_domain"] == "drama" and request.url.params["model"] == "tiny"
    assert seen_when_first_chunk[0] < n  # the first chunk left before the iterator was drained


def test_a_jsonl_file_is_compressed_on_the_fly(tmp_path: Path) -> None:
    path = tmp_path / "users.jsonl"
    text = "".join(json.dumps({"user_id": f"u{i}", "items": [str(i)]}) + "\n" for i in range(50_000))
    path.write_text(text)
    recorder = Recorder(httpx.Response(202, json=job_json()))
    client, _ = client_for(recorder)
    client.submit_job("drama", path)
    assert gzip.decompress(recorder.bodies[0]).decode() == text
    assert len(recorder.bodies[0]) < path.stat().st_size  # really compressed


def test_a_gzip_file_is_uploaded_byte_for_byte(tmp_path: Path) -> None:
    path = tmp_path / "users.jsonl.gz"
    path.write_bytes(gzip.compress(b'{"items": ["a"]}\n' * (UPLOAD_CHUNK_BYTES // 8)))
    recorder = Recorder(httpx.Response(202, json=job_json()))
    client, _ = client_for(recorder)
    client.submit_job("drama", str(path))
    assert recorder.bodies[0] == path.read_bytes()


def test_a_file_upload_is_replayed_in_full_on_retry(tmp_path: Path) -> None:
    path = tmp_path / "users.jsonl"
    path.write_text('{"items": ["a"]}\n{"items": ["b"]}\n')
    recorder = Recorder(error(503, "redis_unavailable"), httpx.Response(202, json=job_json()))
    client, _ = client_for(recorder)
    client.submit_job("drama", path)
    assert len(recorder.bodies) == 2
    assert gzip.decompress(recorder.bodies[0]) == gzip.decompress(recorder.bodies[1]) == path.read_bytes()


def test_a_consumed_iterator_is_not_retried_because_it_cannot_be_replayed() -> None:
    recorder = Recorder(error(429, "queue_full", headers={"Retry-After": "7"}), httpx.Response(202, json=job_json()))
    client, _ = client_for(recorder)
    with pytest.raises(sdk.QueueFullError) as info:
        client.submit_job("drama", iter([["a"], ["b"]]))
    assert len(recorder.requests) == 1
    assert info.value.retry_after == 7.0  # the caller can wait and resubmit from its source


def test_a_missing_file_fails_before_anything_is_sent(tmp_path: Path) -> None:
    recorder = Recorder(httpx.Response(202, json=job_json()))
    client, _ = client_for(recorder)
    with pytest.raises(FileNotFoundError):
        client.submit_job("drama", tmp_path / "nope.jsonl")
    assert recorder.requests == []
