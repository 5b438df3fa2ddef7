"""Throughput and latency of POST /regenerate with micro-batching on vs off, at 1, 8 and 32 clients.

    python benchmarks/microbatch.py --bundle /tmp/run1/bundle
    python benchmarks/microbatch.py --bundle /tmp/run1/bundle --clients 1 8 32 --duration 10 --repeat 3

Two in-process uvicorn servers on free loopback ports load the same bundle, one with
TAESAR_MICROBATCH_MAX_WAIT_MS=0 (every call decoded alone) and one with batching on.
N closed-loop httpx async clients each send one sequence of --length items per request
for --duration seconds, against one server, then the other; configurations are
interleaved and repeated (--repeat) so a noisy neighbour hits both alike, and the
order of the two flips every round. Without --bundle, /tmp/run1/bundle is used when it
exists, else a small bundle is trained first.

Reported per configuration: requests/s (= sequences/s: one sequence per request, the
median over rounds), p50/p99 latency (over every request of every round), errors, the
mean number of calls per engine batch, and the server process's CPU milliseconds per
answer. The clients run in a child process: in the server's process they would fight
its event loop and decoder for the GIL, which no real deployment does. Printed as a table and
written as JSON (--out). What to look for: throughput gain at 8 and 32 clients,
p50 latency at 1 client no more than 10% above the unbatched path.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import multiprocessing
import os
import platform
import random
import resource
import socket
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import Executor, ProcessPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a plain script from a checkout

DEFAULT_BUNDLE = Path("/tmp/run1/bundle")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--bundle", type=Path, help=f"bundle folder (default: {DEFAULT_BUNDLE} if present, else train one)")
    p.add_argument("--clients", type=int, nargs="+", default=[1, 8, 32])
    p.add_argument("--duration", type=float, default=5.0, help="seconds per configuration and round")
    p.add_argument("--warmup", type=float, default=1.0, help="seconds of unrecorded load before each run")
    p.add_argument("--repeat", type=int, default=3, help="rounds over every configuration")
    p.add_argument("--length", type=int, default=50, help="items per sequence")
    p.add_argument("--target", help="target domain (default: the bundle's first domain)")
    p.add_argument("--max-wait-ms", type=float, default=2.0, help="TAESAR_MICROBATCH_MAX_WAIT_MS when on")
    p.add_argument("--max-sequences", type=int, default=64, help="TAESAR_MICROBATCH_MAX_SEQUENCES when on")
    p.add_argument("--client", default="raw", choices=sorted(CLIENTS), help="load generator (see RawClient)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (the clients share this process)")
    p.add_argument("--switch-interval", type=float, help="sys.setswitchinterval for the servers' process (seconds)")
    p.add_argument("--device", default="cpu", choices=["auto", "cpu", "cuda"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "microbatch.json")
    return p.parse_args(argv)


# -- servers ----------------------------------------------------------------------------


@contextmanager
def serve(model_dir: Path, device: str = "cpu", **settings: Any) -> Iterator[tuple[str, Any]]:
    """An in-process uvicorn on a free loopback port: yields (base URL, the FastAPI app)."""
    import uvicorn

    from app.main import create_app
    from core.settings import Settings

    values: dict[str, Any] = {"key_prefix": f"bench-{uuid.uuid4().hex[:8]}", "log_level": "WARNING", **settings}
    app = create_app(Settings(_env_file=None, model_dir=model_dir, device=device, **values))  # type: ignore[call-arg]
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))  # bound here and handed over: the port is ours from the start
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 300
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            sys.exit("error: the in-process server did not start")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}", app
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()


def find_or_train_bundle(given: Path | None, work: Path) -> Path:
    if given is not None:
        if not (given / "manifest.json").is_file():
            sys.exit(f"error: {given} is not a bundle folder (no manifest.json)")
        return given
    if (DEFAULT_BUNDLE / "manifest.json").is_file():
        return DEFAULT_BUNDLE
    print("no bundle given and none at /tmp/run1/bundle: training a small one", file=sys.stderr)
    from models.data import PrepConfig, prepare
    from models.pretrain import TrainConfig, pretrain
    from models.sasrec import SASRecConfig
    from tests.synthetic import make_log

    log = make_log(["a", "b", "c", "d"], n_users=400, items_per_domain=300, length=(30, 60), seed=0)
    ds = prepare(log, PrepConfig(max_len=64), source="synthetic")
    model = SASRecConfig(n_items=ds.catalogue.n_items, max_len=64, hidden=64, n_layers=2, n_heads=2, inner=64)
    result = pretrain(ds, TrainConfig(epochs=3, adapt_epochs=1, batch_size=64, device="cpu"), model_config=model)
    return result.save(work / "synthetic", ds)


# -- load -------------------------------------------------------------------------------


@dataclass
class Run:
    latencies_ms: list[float] = field(default_factory=list)
    errors: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    cpu_s: float = 0.0  # the server process's
    client_cpu_s: float = 0.0
    calls: int = 0  # /regenerate calls the batcher saw, and its engine batches
    batches: int = 0

    def error(self, what: str) -> None:
        self.errors[what] = self.errors.get(what, 0) + 1


def cpu_seconds() -> float:
    """CPU time of this process, every thread: the servers' event loops and decoders
    (the clients run in a child process and are not counted)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class RawClient:
    """One keep-alive HTTP/1.1 connection that POSTs JSON and reads Content-Length answers.

    The default load generator: it costs ~0.1 ms of CPU per request, where an httpx
    AsyncClient costs 2 ms at 1 connection and 6 ms at 32 (measured on this 2-core
    machine), CPU the server under test would otherwise lose to its own clients.
    """

    def __init__(self, url: str, timeout: float) -> None:
        host, port = url.removeprefix("http://").rstrip("/").split(":")
        self.host, self.port, self.timeout = host, int(port), timeout
        self._conn: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None

    async def post(self, path: str, body: bytes) -> tuple[int, bytes]:
        head = (
            f"POST {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        ).encode()
        try:
            return await asyncio.wait_for(self._exchange(head + body), self.timeout)
        except BaseException:
            await self.aclose()  # the connection's state is unknown now
            raise

    async def _exchange(self, request: bytes) -> tuple[int, bytes]:
        if self._conn is None:
            self._conn = await asyncio.open_connection(self.host, self.port)
        reader, writer = self._conn
        writer.write(request)
        await writer.drain()
        lines = (await reader.readuntil(b"\r\n\r\n")).split(b"\r\n")
        status = int(lines[0].split()[1])
        headers = dict(line.split(b":", 1) for line in lines[1:] if b":" in line)
        headers = {k.strip().lower(): v.strip() for k, v in headers.items()}
        if b"content-length" not in headers:
            raise ConnectionError(f"answer without Content-Length (status {status})")
        content = await reader.readexactly(int(headers[b"content-length"]))
        if headers.get(b"connection", b"").lower() == b"close":
            await self.aclose()
        return status, content

    async def aclose(self) -> None:
        if self._conn is not None:
            self._conn[1].close()
            self._conn = None


class HttpxClient:
    """The same interface over httpx (--client httpx): one AsyncClient per simulated user."""

    def __init__(self, url: str, timeout: float) -> None:
        import httpx

        self._client = httpx.AsyncClient(base_url=url, timeout=timeout)

    async def post(self, path: str, body: bytes) -> tuple[int, bytes]:
        r = await self._client.post(path, content=body, headers={"Content-Type": "application/json"})
        return r.status_code, r.content

    async def aclose(self) -> None:
        await self._client.aclose()


CLIENTS = {"raw": RawClient, "httpx": HttpxClient}


async def closed_loop(
    url: str,
    clients: int,
    seconds: float,
    bodies: list[bytes],
    run: Run | None,
    kind: str = "raw",
    timeout: float = 120.0,
) -> None:
    """`clients` users, each on its own connection, sending the next request as soon as
    the last one is answered, until `seconds` have passed."""
    deadline = time.perf_counter() + seconds

    async def one_client(k: int) -> None:
        client = CLIENTS[kind](url, timeout)
        n = k * 7919
        try:
            while time.perf_counter() < deadline:
                body = bodies[n % len(bodies)]
                n += 1
                started = time.perf_counter()
                try:
                    status, _ = await client.post("/regenerate", body)
                except Exception as exc:  # refused, reset, timed out, malformed: counted, never fatal
                    if run is not None:
                        run.error(type(exc).__name__)
                    await asyncio.sleep(0.01)  # a refused connection must not spin
                    continue
                if run is None:
                    continue
                if status == 200:
                    run.latencies_ms.append((time.perf_counter() - started) * 1000)
                else:
                    run.error(str(status))
        finally:
            await client.aclose()

    await asyncio.gather(*(one_client(k) for k in range(clients)))


def client_process(
    url: str, clients: int, warmup: float, seconds: float, bodies: list[bytes], kind: str = "raw"
) -> Run:
    """The load of one run, in a child process so that clients do not compete with the
    server for this process's GIL (real clients are other machines)."""
    asyncio.run(closed_loop(url, clients, warmup, bodies, None, kind))
    run = Run()
    usage = resource.getrusage(resource.RUSAGE_SELF)
    started = time.perf_counter()
    asyncio.run(closed_loop(url, clients, seconds, bodies, run, kind))
    run.seconds = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_SELF)
    run.client_cpu_s = (after.ru_utime + after.ru_stime) - (usage.ru_utime + usage.ru_stime)
    return run


def request_bodies(items: list[str], target: str, length: int, seed: int, n: int = 1024) -> list[bytes]:
    """Pre-encoded request bodies, one sequence of `length` random catalogue items each."""
    rng = random.Random(seed)
    return [
        json.dumps(
            {
                "target_domain": target,
                "sequences": [{"user_id": f"u{k}", "items": [rng.choice(items) for _ in range(length)]}],
            }
        ).encode()
        for k in range(n)
    ]


def measure(pool: Executor, url: str, app: Any, clients: int, args: argparse.Namespace, bodies: list[bytes]) -> Run:
    engines = app.state.engines

    def batch_counts() -> tuple[int, int]:
        batcher = engines.batcher(engines.names[0])
        return (batcher.calls, batcher.batches) if batcher is not None else (0, 0)

    calls_before, batches_before = batch_counts()
    cpu_before = cpu_seconds()
    run = pool.submit(client_process, url, clients, args.warmup, args.duration, bodies, args.client).result()
    run.cpu_s = (cpu_seconds() - cpu_before) * args.duration / (args.duration + args.warmup)  # warm-up excluded
    calls_after, batches_after = batch_counts()
    run.calls, run.batches = calls_after - calls_before, batches_after - batches_before  # warm-up included
    return run


# -- report -----------------------------------------------------------------------------


def percentile(values: list[float], q: float) -> float:
    """Nearest rank: the smallest value with at least q% of the samples at or below it."""
    ordered = sorted(values)
    return ordered[max(1, math.ceil(q / 100 * len(ordered))) - 1] if ordered else float("nan")


def summarize(runs: list[Run], batching: bool) -> dict[str, Any]:
    latencies = [x for r in runs for x in r.latencies_ms]
    answered = sum(len(r.latencies_ms) for r in runs)
    rates = [len(r.latencies_ms) / r.seconds for r in runs]
    errors: dict[str, int] = {}
    for r in runs:
        for k, v in r.errors.items():
            errors[k] = errors.get(k, 0) + v
    out = {
        "requests_per_s": round(statistics.median(rates), 2),
        "sequences_per_s": round(statistics.median(rates), 2),  # one sequence per request
        "requests_per_s_rounds": [round(x, 2) for x in rates],
        "p50_ms": round(percentile(latencies, 50), 2),
        "p99_ms": round(percentile(latencies, 99), 2),
        "mean_ms": round(statistics.fmean(latencies), 2) if latencies else None,
        "requests": answered,
        "errors": errors,
        "cpu_ms_per_request": round(1000 * sum(r.cpu_s for r in runs) / max(1, answered), 2),
        "client_cpu_ms_per_request": round(1000 * sum(r.client_cpu_s for r in runs) / max(1, answered), 2),
    }
    if batching:
        batches = sum(r.batches for r in runs)
        out["calls_per_batch"] = round(sum(r.calls for r in runs) / batches, 2) if batches else None
    return out


def table(results: dict[str, Any]) -> str:
    head = (
        f"{'clients':>7} {'mode':>4} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'cpu ms/req':>10} {'calls/batch':>11} "
        f"{'err':>4}"
    )
    lines = [head, "-" * len(head)]
    for row in results["configurations"]:
        for mode in ("off", "on"):
            m = row[mode]
            lines.append(
                f"{row['clients']:>7} {mode:>4} {m['requests_per_s']:>8.1f} {m['p50_ms']:>8.1f} {m['p99_ms']:>8.1f} "
                f"{m['cpu_ms_per_request']:>10.1f} {m.get('calls_per_batch') or '':>11} {sum(m['errors'].values()):>4}"
            )
        lines.append(
            f"{'':>7} {'':>4} throughput x{row['throughput_gain']:.2f}, p50 latency x{row['p50_latency_ratio']:.2f}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    import torch

    torch.set_num_threads(args.threads)
    if args.switch_interval:
        sys.setswitchinterval(args.switch_interval)
    with tempfile.TemporaryDirectory(prefix="microbatch-") as tmp, ExitStack() as stack:
        bundle = find_or_train_bundle(args.bundle, Path(tmp))
        catalogue = json.loads((bundle / "manifest.json").read_text())["catalogue"]
        target = args.target or catalogue["domains"][0]
        bodies = request_bodies([str(i) for i in catalogue["item_ids"]], target, args.length, args.seed)
        pool = stack.enter_context(ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")))
        servers = {
            "off": stack.enter_context(serve(bundle, args.device, microbatch_max_wait_ms=0)),
            "on": stack.enter_context(
                serve(
                    bundle,
                    args.device,
                    microbatch_max_wait_ms=args.max_wait_ms,
                    microbatch_max_sequences=args.max_sequences,
                )
            ),
        }
        runs: dict[tuple[str, int], list[Run]] = {}
        for round_ in range(args.repeat):
            for clients in args.clients:
                modes = ("off", "on") if (round_ + clients) % 2 == 0 else ("on", "off")
                for mode in modes:
                    url, app = servers[mode]
                    run = measure(pool, url, app, clients, args, bodies)
                    runs.setdefault((mode, clients), []).append(run)
                    rate = len(run.latencies_ms) / run.seconds
                    print(f"round {round_ + 1} clients {clients:>2} {mode:>3}: {rate:7.1f} req/s", file=sys.stderr)

    result = summarize_configurations(args, bundle, target, runs)
    print(table(result))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}", file=sys.stderr)
    return result


def summarize_configurations(
    args: argparse.Namespace, bundle: Path, target: str, runs: dict[tuple[str, int], list[Run]]
) -> dict[str, Any]:
    """Each client count's off/on figures over its rounds, the gains, and the settings."""
    configurations = []
    for clients in args.clients:
        off, on = summarize(runs[("off", clients)], False), summarize(runs[("on", clients)], True)
        configurations.append(
            {
                "clients": clients,
                "off": off,
                "on": on,
                "throughput_gain": round(on["requests_per_s"] / off["requests_per_s"], 3),
                "p50_latency_ratio": round(on["p50_ms"] / off["p50_ms"], 3),
            }
        )
    by_clients = {c["clients"]: c for c in configurations}
    return {
        "bundle": str(bundle),
        "model": json.loads((bundle / "manifest.json").read_text()).get("model_config"),
        "target_domain": target,
        "items_per_sequence": args.length,
        "duration_s": args.duration,
        "warmup_s": args.warmup,
        "repeat": args.repeat,
        "microbatch": {"max_wait_ms": args.max_wait_ms, "max_sequences": args.max_sequences},
        "torch_threads": args.threads,
        "client": args.client,
        "device": args.device,
        "configurations": configurations,
        "acceptance": {
            "gain_at_8_and_32": all(by_clients[c]["throughput_gain"] > 1 for c in (8, 32) if c in by_clients),
            "one_client_p50_within_10pct": by_clients[1]["p50_latency_ratio"] <= 1.10 if 1 in by_clients else None,
        },
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "notes": "clients run in a child process; cpu_ms_per_request is the server process's CPU time per answer "
        "(the warm-up's share removed pro rata)",
    }


if __name__ == "__main__":
    main()
