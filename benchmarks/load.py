"""Load test: 32 clients on POST /regenerate for 60 s while a bulk job runs through a worker.

    python benchmarks/load.py --bundle /tmp/run1/bundle
    python benchmarks/load.py --bundle /tmp/run1/bundle --clients 32 --duration 60 --job-sequences 5000

Everything runs on this machine, on loopback: an in-process uvicorn API (micro-batching
as configured by the TAESAR_MICROBATCH_* settings, default on), one
`celery -A workers.celery_app worker --pool solo` subprocess with the same TAESAR_*
settings (its own key prefix, so its queue and keys are this run's alone), and the
Redis at --redis-url. After a warm-up (a small job that loads the worker's models, and
--warmup seconds of /regenerate load), the closed-loop clients (a child process, as in
benchmarks/microbatch.py) send one sequence of --length items per request for
--duration seconds while the job of --job-sequences sequences is submitted through
the SDK and waited for.

Reported: requests, requests/s, p50/p95/p99 latency, every error by kind and the
5xx count; the job's status, completion time (submission to final state), sequences/s
and result line count; the CPU seconds of the API process and of the worker. Printed
and written as JSON (--out). The run passes when no request failed, the job
succeeded and returned one line per input sequence (exit status 0; else 1).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import random
import resource
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a plain script from a checkout

from benchmarks.job_throughput import delete_prefix  # noqa: E402
from benchmarks.microbatch import (  # noqa: E402
    CLIENTS,
    Run,
    client_process,
    find_or_train_bundle,
    percentile,
    request_bodies,
    serve,
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--bundle", type=Path, help="bundle folder (default: /tmp/run1/bundle if present, else train one)")
    p.add_argument("--clients", type=int, default=32)
    p.add_argument("--duration", type=float, default=60.0, help="seconds of /regenerate load")
    p.add_argument("--warmup", type=float, default=2.0, help="seconds of unrecorded load first")
    p.add_argument("--length", type=int, default=50, help="items per /regenerate sequence")
    p.add_argument("--job-sequences", type=int, default=5000)
    p.add_argument("--job-timeout", type=float, default=1800.0, help="seconds to wait for the job at most")
    p.add_argument("--target", help="target domain (default: the bundle's first domain)")
    p.add_argument("--client", default="raw", choices=sorted(CLIENTS), help="load generator (microbatch.RawClient)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads of the API and of the worker")
    p.add_argument("--device", default="cpu", choices=["auto", "cpu", "cuda"])
    p.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "load.json")
    return p.parse_args(argv)


def write_job_input(items: list[str], n: int, seed: int, path: Path) -> None:
    rng = random.Random(seed)
    with path.open("w") as f:
        for k in range(n):
            sequence = [rng.choice(items) for _ in range(rng.randint(5, 60))]
            f.write(json.dumps({"user_id": f"job-{k}", "items": sequence}) + "\n")


def start_worker(env: dict[str, str], queue: str, log: Path) -> subprocess.Popen[bytes]:
    cmd = [
        sys.executable, "-m", "celery", "-A", "workers.celery_app", "worker",
        "--pool", "solo", "-Q", queue, "--loglevel", "WARNING",
        "--without-gossip", "--without-mingle", "--without-heartbeat", "-n", f"load.{queue}@%h",
    ]  # fmt: skip
    with log.open("wb") as out:
        return subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, **env}, stdout=out, stderr=subprocess.STDOUT)


def stop_worker(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()  # warm shutdown
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)


def process_cpu_s(pid: int) -> float | None:
    """utime + stime of a live process, from /proc (Linux)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def own_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def run_job(client: Any, url: str, target: str, src: Path, timeout: float) -> dict[str, Any]:
    """Submit, wait, and count the result lines; times from the first upload byte."""
    import httpx

    started = time.perf_counter()
    job = client.submit_job(target, src)
    deadline = time.monotonic() + timeout
    while job.status.value not in ("succeeded", "failed", "cancelled") and time.monotonic() < deadline:
        time.sleep(0.25)
        job = client.get_job(job.id)
    seconds = time.perf_counter() - started
    out: dict[str, Any] = {"id": job.id, "status": job.status.value, "seconds": round(seconds, 2)}
    if job.error is not None:
        out["error"] = job.error.model_dump()
    if job.status.value == "succeeded":
        with httpx.stream("GET", f"{url}{job.links.results}", timeout=300) as r:
            r.raise_for_status()
            out["result_lines"] = sum(1 for line in r.iter_lines() if line.strip())
    return out


def summarize(run: Run, clients: int) -> dict[str, Any]:
    ms = run.latencies_ms
    errors = sum(run.errors.values())
    return {
        "clients": clients,
        "duration_s": round(run.seconds, 2),
        "requests": len(ms),
        "requests_per_s": round(len(ms) / run.seconds, 2),
        "p50_ms": round(percentile(ms, 50), 2),
        "p95_ms": round(percentile(ms, 95), 2),
        "p99_ms": round(percentile(ms, 99), 2),
        "max_ms": round(max(ms), 2) if ms else None,
        "errors": errors,
        "errors_by_kind": run.errors,
        "status_5xx": sum(v for k, v in run.errors.items() if k.isdigit() and k.startswith("5")),
        "client_cpu_s": round(run.client_cpu_s, 2),
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # SIGTERM (e.g. `timeout`) must still run the finally blocks: stop the worker, delete the keys
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    import torch

    torch.set_num_threads(args.threads)
    result = measure(args)
    report(result, args)
    return 0 if result["ok"] else 1


def measure(args: argparse.Namespace) -> dict[str, Any]:
    """Start the worker and the API on a bundle, warm both up, then run the /regenerate
    load and the bulk job at once; the figures as `report` prints them."""
    from core.queue import queue_name
    from core.settings import Settings

    prefix = args.prefix = f"load-{uuid.uuid4().hex[:8]}"
    with tempfile.TemporaryDirectory(prefix="load-") as tmp:
        work = Path(tmp)
        bundle = find_or_train_bundle(args.bundle, work)
        catalogue = json.loads((bundle / "manifest.json").read_text())["catalogue"]
        target = args.target or catalogue["domains"][0]
        items = [str(i) for i in catalogue["item_ids"]]
        write_job_input(items, args.job_sequences, args.seed, work / "job.jsonl")
        write_job_input(items, 4, args.seed + 1, work / "warm.jsonl")
        settings = {"model_dir": str(bundle), "key_prefix": prefix, "redis_url": args.redis_url, "device": args.device}
        env = {f"TAESAR_{k.upper()}": v for k, v in settings.items()}
        env |= {"TAESAR_LOG_LEVEL": "WARNING", "OMP_NUM_THREADS": str(args.threads)}
        queue = queue_name(Settings(_env_file=None, key_prefix=prefix))  # type: ignore[call-arg]
        worker = start_worker(env, queue, work / "worker.log")
        try:
            bodies = request_bodies(items, target, args.length, args.seed)
            figures = load_while_job_runs(args, bundle, target, bodies, work, worker.pid)
        finally:
            stop_worker(worker)
            delete_prefix(args.redis_url, prefix)
    job = figures["job"]
    job["sequences"] = args.job_sequences
    job["sequences_per_s"] = round(args.job_sequences / job["seconds"], 1)
    job["finished_within_load"] = job["seconds"] <= args.duration
    regenerate = figures["regenerate"]
    ok = regenerate["errors"] == 0 and job["status"] == "succeeded" and job.get("result_lines") == args.job_sequences
    return {
        "ok": ok,
        **figures,
        "settings": {
            "bundle": str(bundle),
            "target_domain": target,
            "items_per_sequence": args.length,
            "client": args.client,
            "torch_threads": args.threads,
            "device": args.device,
        },
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
    }


def load_while_job_runs(
    args: argparse.Namespace, bundle: Path, target: str, bodies: list[bytes], work: Path, worker_pid: int
) -> dict[str, Any]:
    """With the worker running: serve the API, warm the worker up with a small job, then
    run the closed-loop clients and the measured job at once."""
    from taesar_client import TaesarClient

    with (
        serve(bundle, args.device, key_prefix=args.prefix, redis_url=args.redis_url) as (url, app),
        TaesarClient(url, timeout=120) as sdk,
        ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool,
    ):
        warm_job = run_job(sdk, url, target, work / "warm.jsonl", timeout=600)  # the worker loads its models
        if warm_job["status"] != "succeeded":
            log = (work / "worker.log").read_text()[-3000:]
            sys.exit(f"error: the warm-up job did not succeed: {warm_job}\n{log}")
        api_cpu, worker_cpu = own_cpu_s(), process_cpu_s(worker_pid)
        load = pool.submit(client_process, url, args.clients, args.warmup, args.duration, bodies, args.client)
        time.sleep(args.warmup)  # the job starts with the measured window
        job = run_job(sdk, url, target, work / "job.jsonl", args.job_timeout)
        run = load.result(timeout=args.duration + args.warmup + 600)
        api_cpu = own_cpu_s() - api_cpu
        worker_after = process_cpu_s(worker_pid)
        engines = app.state.engines
        batcher = engines.batcher(engines.names[0])
    return {
        "regenerate": summarize(run, args.clients),
        "job": job,
        "cpu_s": {
            "api_process": round(api_cpu, 2),  # the API's threads (and the SDK calls of this script)
            "worker": round(worker_after - worker_cpu, 2) if worker_after is not None and worker_cpu else None,
        },
        "microbatch": {"calls": batcher.calls, "batches": batcher.batches} if batcher is not None else None,
    }


def report(result: dict[str, Any], args: argparse.Namespace) -> None:
    print(json.dumps(result, indent=2))
    r, job = result["regenerate"], result["job"]
    print(
        f"\n/regenerate: {r['requests']} requests in {r['duration_s']} s = {r['requests_per_s']} req/s, "
        f"p50 {r['p50_ms']} ms, p95 {r['p95_ms']} ms, p99 {r['p99_ms']} ms, errors {r['errors']} "
        f"(5xx {r['status_5xx']})\njob: {job['status']}, {args.job_sequences} sequences in {job['seconds']} s "
        f"({job['sequences_per_s']} seq/s), {job.get('result_lines')} result lines\n"
        f"{'PASS' if result['ok'] else 'FAIL'}",
        file=sys.stderr,
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
