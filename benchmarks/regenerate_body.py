"""How long parsing a POST /regenerate body holds the event loop, at the body cap.

    python benchmarks/regenerate_body.py --out regenerate_body.json

Four hostile or large 8 MiB bodies are parsed by `app.regenerate_body` while one
coroutine ticks on the same event loop; the longest gap between two ticks is the
longest hold. For comparison, the same body goes through the whole-body parse FastAPI
does for a declared body (`json.loads`, then pydantic validation), which holds the loop
from start to end. Printed as a table and written as JSON (--out).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import time
from collections.abc import Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pydantic import ValidationError

from app.errors import ApiError
from app.regenerate_body import parse_regenerate_body
from core.schemas import RegenerateRequest

CAP = 8 << 20  # the default /regenerate body cap: TAESAR_MAX_BODY_BYTES / 8


def bodies() -> Iterator[tuple[str, bytes]]:
    one = '{"items":[1]},'
    tiny = ('{"target_domain":"x","sequences":[' + one * (CAP // len(one) - 10))[:-1] + "]}"
    yield "600,000 one-item sequences", tiny.encode()
    rng = random.Random(0)
    sequences = [{"items": [str(rng.randrange(100_000)) for _ in range(1000)]} for _ in range(940)]
    yield "940 sequences of 1,000 items", json.dumps({"target_domain": "x", "sequences": sequences}).encode()
    long = '{"target_domain":"x","sequences":[{"items":[' + ("1," * (CAP // 2 - 40))[:-1] + "]}]}"
    yield "one 4M-item sequence", long.encode()
    nested = '{"target_domain":"x","sequences":[{"items":[1]}],"options":{"x":[' + ("{}," * (CAP // 3 - 30))[:-1]
    yield "8 MiB of objects in options", (nested + "]}}").encode()


async def sliced(body: bytes) -> tuple[str, float, float]:
    """(answer, total ms, longest hold ms) of app.regenerate_body on this event loop."""
    gaps: list[float] = []
    last = time.perf_counter()
    stop = False

    async def tick() -> None:
        nonlocal last
        while not stop:
            now = time.perf_counter()
            gaps.append(now - last)
            last = now
            await asyncio.sleep(0)

    ticker = asyncio.create_task(tick())
    await asyncio.sleep(0)
    started = time.perf_counter()
    try:
        await parse_regenerate_body(body, 1000, 10_000)
        answer = "ok"
    except ApiError as exc:
        answer = exc.code
    total = time.perf_counter() - started
    gaps.append(time.perf_counter() - last)
    stop = True
    await ticker
    return answer, total * 1000, max(gaps) * 1000


def whole(body: bytes) -> tuple[str, float]:
    started = time.perf_counter()
    try:
        RegenerateRequest.model_validate(json.loads(body))
        answer = "ok"
    except ValidationError:
        answer = "validation_error"
    return answer, (time.perf_counter() - started) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=None, help="write the figures as JSON here")
    args = parser.parse_args()
    rows = []
    for name, body in bodies():
        answer, total_ms, hold_ms = asyncio.run(sliced(body))
        whole_answer, whole_ms = whole(body)
        rows.append(
            {
                "body": name,
                "mib": round(len(body) / 2**20, 2),
                "answer": answer,
                "total_ms": round(total_ms, 1),
                "longest_hold_ms": round(hold_ms, 1),
                "whole_body_parse": whole_answer,
                "whole_body_parse_ms": round(whole_ms, 1),
            }
        )
        r = rows[-1]
        sliced_text = f"{answer:18} {r['total_ms']:8.1f} ms, longest hold {r['longest_hold_ms']:7.1f} ms"
        whole_text = f"{whole_answer} in {r['whole_body_parse_ms']:.1f} ms (one hold)"
        print(f"{name:30} {r['mib']:5} MiB  {sliced_text}  | whole-body parse: {whole_text}")
    if args.out:
        args.out.write_text(json.dumps({"bodies": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
