"""Latency of POST /regenerate for one sequence of 50 items: p50 / p90 / p99 over N calls.

Against a running server (item ids come from the bundle's manifest, or --items):

    python benchmarks/regenerate_latency.py --url http://localhost:8000 --bundle models_store/ml100k

or against an in-process uvicorn that this script starts on a free port:

    python benchmarks/regenerate_latency.py --model-dir models_store --device cpu

Calls go one at a time through the SDK over a kept-alive connection, so the numbers
are what one client sees end to end: HTTP, JSON, validation and decoding. Results are
printed and written as JSON (--out).
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import random
import socket
import statistics
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a plain script from a checkout

from taesar_client import TaesarClient  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--url", help="base URL of a running server")
    where.add_argument("--model-dir", type=Path, help="start an in-process server on this TAESAR_MODEL_DIR")
    p.add_argument("--bundle", type=Path, help="bundle folder whose catalogue gives the item ids (with --url)")
    p.add_argument("--items", help="space-separated item ids to sample from, instead of a bundle")
    p.add_argument("--model", help="model name (default: the first the server lists)")
    p.add_argument("--target", help="target domain (default: the model's first domain)")
    p.add_argument("--api-key")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="in-process server only")
    p.add_argument("--length", type=int, default=50, help="items per sequence")
    p.add_argument("-n", "--requests", type=int, default=200)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=ROOT / "runs" / "benchmarks" / "regenerate_latency.json")
    return p.parse_args(argv)


def catalogue_items(bundle: Path) -> list[str]:
    return [str(i) for i in json.loads((bundle / "manifest.json").read_text())["catalogue"]["item_ids"]]


def first_bundle(model_dir: Path) -> Path:
    bundles = sorted(p.parent for p in model_dir.glob("*/manifest.json"))
    if not bundles:
        sys.exit(f"error: no bundle folder (with manifest.json) under {model_dir}")
    return bundles[0]


@contextmanager
def in_process_server(model_dir: Path, device: str) -> Iterator[str]:
    """uvicorn in a thread on a socket bound here, so the port is ours from the start."""
    import uvicorn

    from app.main import create_app
    from core.settings import Settings

    settings = Settings(_env_file=None, model_dir=model_dir, device=device, log_level="WARNING")
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(create_app(settings), log_level="warning", access_log=False))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not server.started:
        if not thread.is_alive():
            sys.exit("error: the in-process server did not start")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def percentile(sorted_ms: list[float], q: float) -> float:
    """Nearest-rank percentile: the smallest value with at least q% of samples at or below it."""
    rank = max(1, math.ceil(q / 100 * len(sorted_ms)))
    return sorted_ms[rank - 1]


def measure(client: TaesarClient, args: argparse.Namespace, pool: list[str]) -> dict[str, Any]:
    models = {m.name: m for m in client.list_models()}
    model = args.model or next(iter(models))
    if model not in models:
        sys.exit(f"error: the server has no model {model!r}; it has {sorted(models)}")
    info = models[model]
    target = args.target or info.domains[0].name
    rng = random.Random(args.seed)

    def one_call() -> float:
        # a fresh mixed sequence each call; unknown ids (from --items) are dropped, not fatal
        items = [rng.choice(pool) for _ in range(args.length)]
        started = time.perf_counter()
        client.regenerate(target, [{"user_id": "bench", "items": items}], model=model, unknown_items="drop")
        return (time.perf_counter() - started) * 1000

    for _ in range(args.warmup):
        one_call()
    ms = sorted(one_call() for _ in range(args.requests))
    return {
        "model": model,
        "target_domain": target,
        "items_per_sequence": args.length,
        "requests": args.requests,
        "warmup": args.warmup,
        "p50_ms": round(percentile(ms, 50), 3),
        "p90_ms": round(percentile(ms, 90), 3),
        "p99_ms": round(percentile(ms, 99), 3),
        "mean_ms": round(statistics.fmean(ms), 3),
        "min_ms": round(ms[0], 3),
        "max_ms": round(ms[-1], 3),
        "requests_per_s": round(1000 * len(ms) / sum(ms), 2),
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    if args.items:
        pool = args.items.split()
    elif args.model_dir or args.bundle:
        pool = catalogue_items(args.bundle or first_bundle(args.model_dir))
    else:
        sys.exit("error: with --url, give --bundle (to read item ids) or --items")
    server = in_process_server(args.model_dir, args.device) if args.model_dir else _given(args.url)
    with server as url, TaesarClient(url, api_key=args.api_key, timeout=60) as client:
        result = measure(client, args, pool)
    result.update(
        server="in-process" if args.model_dir else args.url,
        device=args.device if args.model_dir else "server's",
        machine=f"{platform.machine()} {platform.processor() or ''}".strip(),
        python=platform.python_version(),
    )
    print(json.dumps(result, indent=2))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}", file=sys.stderr)
    return result


@contextmanager
def _given(url: str) -> Iterator[str]:
    yield url


if __name__ == "__main__":
    main()
