"""The /regenerate body parser (app/regenerate_body.py): same answers as a whole-body
parse, the sequence cap before the rest is decoded, and turns of the event loop."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from app.errors import ApiError
from app.regenerate_body import SLICE_CHARS, parse_regenerate_body
from core.schemas import RegenerateRequest

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


VALID = [
    {"target_domain": "x", "sequences": [{"items": ["a", 1]}]},
    {"model": "m", "target_domain": "x", "sequences": [{"user_id": "u", "items": ["a"]}, {"items": [2, 3]}]},
    {
        "sequences": [{"items": ["é", "a b"]}],
        "options": {"explain": True, "explain_top_k": 3, "ablations": {"no_global": True}},
        "target_domain": "drama",
    },
]


@pytest.mark.parametrize("body", VALID)
async def test_valid_bodies_parse_as_a_whole_body_parse_does(body: dict[str, Any]) -> None:
    for text in (json.dumps(body), json.dumps(body, indent=3), json.dumps(body, separators=(",", ":"))):
        parsed = await parse_regenerate_body(text.encode(), 10, 100)
        assert parsed == RegenerateRequest.model_validate_json(text)


@pytest.mark.parametrize(
    ("text", "code"),
    [
        ('{"target_domain": "x", "sequences": [{"items": ["a"]}', "bad_json"),
        ('{"target_domain": "x", "sequences": [{"items": ["a"]},]}', "bad_json"),
        ('{"target_domain": "x", "sequences": [{"items": ["a"}]}', "bad_json"),
        ('{"target_domain": "x"} {}', "bad_json"),
        ('{"target_domain" "x"}', "bad_json"),
        ("{'target_domain': 'x'}", "bad_json"),
        ("[1, 2]", "validation_error"),
        ('{"target_domain": "x", "sequences": []}', "validation_error"),
        ('{"target_domain": "x", "sequences": [{"items": [true]}], "extra": 1}', "validation_error"),
        ("", "validation_error"),
    ],
)
async def test_bad_bodies_answer_as_a_whole_body_parse_does(text: str, code: str) -> None:
    with pytest.raises(ApiError) as err:
        await parse_regenerate_body(text.encode(), 10, 100)
    assert err.value.code == code, err.value.message
    if code == "bad_json":  # json.loads names the same character
        with pytest.raises(json.JSONDecodeError) as expected:
            json.loads(text)
        assert err.value.details == {"position": expected.value.pos}
    if code == "validation_error" and text.startswith("{"):
        whole = RegenerateRequest.model_validate_json  # the same errors, located in the body
        with pytest.raises(Exception) as expected:
            whole(text)
        locs = [["body", *e["loc"]] for e in expected.value.errors()]  # type: ignore[attr-defined]
        assert [e["loc"] for e in err.value.details["errors"]] == locs


async def test_errors_of_several_members_come_in_field_order() -> None:
    text = '{"options": {"explain": 3}, "sequences": [{"items": [null]}], "model": 5}'
    with pytest.raises(ApiError) as err:
        await parse_regenerate_body(text.encode(), 10, 100)
    first = [e["loc"][1] for e in err.value.details["errors"]]
    assert first == sorted(first, key=["model", "target_domain", "sequences", "options"].index)


async def test_the_caps_answer_without_validating_what_they_refuse() -> None:
    body = {"target_domain": "x", "sequences": [{"items": ["a"]}] * 3 + [{"items": [None]}] * 10_000}
    with pytest.raises(ApiError) as err:
        await parse_regenerate_body(json.dumps(body).encode(), 3, 100)
    assert err.value.code == "payload_too_large" and err.value.details == {"at_least": 4, "max": 3}
    long = {"target_domain": "x", "sequences": [{"items": ["a"]}, {"items": [None] * 101}]}
    with pytest.raises(ApiError) as err:
        await parse_regenerate_body(json.dumps(long).encode(), 3, 100)
    assert err.value.code == "validation_error"
    assert err.value.details["errors"][0]["loc"] == ["body", "sequences", 1, "items"]
    assert err.value.details["errors"][0]["type"] == "too_long"


async def test_a_large_body_gives_the_event_loop_turns() -> None:
    sequences = [{"items": [f"item-{i}-{j}" for j in range(200)]} for i in range(1000)]
    text = json.dumps({"target_domain": "x", "sequences": sequences}).encode()
    assert len(text) > 8 * SLICE_CHARS
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0)

    task = asyncio.create_task(ticker())
    await asyncio.sleep(0)
    before = ticks
    parsed = await parse_regenerate_body(text, 1000, 1000)
    during = ticks - before
    task.cancel()
    assert len(parsed.sequences) == 1000
    assert during >= len(text) // SLICE_CHARS - 1
