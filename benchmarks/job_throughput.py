"""Bulk-job throughput through Redis + Celery workers vs the CLI engine, on the same sequences.

    python benchmarks/job_throughput.py --model-dir models_store -n 20000
    python benchmarks/job_throughput.py --model-dir models_store -n 20000 --workers 2 --device cpu

Both sides decode the same N sequences (drawn from the bundle's catalogue, or read
from --input JSONL) into the target domain and write the output JSONL lines:

- CLI: `taesar regenerate --input in.jsonl --out out.jsonl` as a subprocess, timed
  end to end (start-up and bundle loading included), and the same engine call plus
  writer in this process with the bundle already loaded ("cli_engine": the strictest
  baseline, what a warm worker competes with).
- Job: an in-process uvicorn API, a Redis at --redis-url and --workers `taesar worker`
  processes (started here, warmed up by a small job first), driven by the SDK: upload
  a gzip NDJSON file, wait for success, stream every result line back to a file. Timed
  from the first upload byte to the last result line.

The job path is checked to return exactly the CLI's lines. Each side runs --repeat
times, interleaved, and its best time counts (shared machines are noisy). Numbers are
printed and written as JSON (--out). Target from the product brief: job >= 75% of the CLI.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import platform
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a plain script from a checkout

import httpx  # noqa: E402

from benchmarks.regenerate_latency import first_bundle, in_process_server  # noqa: E402
from taesar_client import TaesarClient  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model-dir", type=Path, required=True, help="TAESAR_MODEL_DIR (its first bundle is used)")
    p.add_argument("--input", type=Path, help='JSONL {"user_id"?, "items"} (default: random catalogue sequences)')
    p.add_argument("-n", "--sequences", type=int, default=20_000)
    p.add_argument("--min-len", type=int, default=5)
    p.add_argument("--max-len", type=int, default=60)
    p.add_argument("--target", help="target domain (default: the bundle's first domain)")
    p.add_argument("--workers", type=int, default=1, help="worker processes (one --pool solo each)")
    p.add_argument("--chunk-size", type=int, default=500)
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--threads", type=int, help="torch CPU threads per process, both sides (default: torch's)")
    p.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    p.add_argument("--repeat", type=int, default=2, help="rounds; the best of each side is reported")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=ROOT / "runs" / "benchmarks" / "job_throughput.json")
    return p.parse_args(argv)


def write_input(args: argparse.Namespace, bundle: Path, path: Path) -> int:
    if args.input:
        shutil.copyfile(args.input, path)
        return sum(1 for line in path.open() if line.strip())
    items = [str(i) for i in json.loads((bundle / "manifest.json").read_text())["catalogue"]["item_ids"]]
    rng = random.Random(args.seed)
    with path.open("w") as f:
        for k in range(args.sequences):
            seq = [rng.choice(items) for _ in range(rng.randint(args.min_len, args.max_len))]
            f.write(json.dumps({"user_id": f"u{k}", "items": seq}) + "\n")
    return args.sequences


def run_cli(bundle: Path, target: str, device: str, src: Path, out: Path) -> float | str:
    """Seconds, or the CLI's error output when it failed (reported, not fatal)."""
    cli = [sys.executable, "-c", "from cli import main; main()"]  # `taesar`, without needing it on PATH
    cmd = [*cli, "regenerate", "--bundle", str(bundle), "--target", target, "--input", str(src), "--out", str(out),
           "--device", device]  # fmt: skip
    started = time.perf_counter()
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        return (done.stdout + done.stderr)[-2000:]
    return seconds


def run_cli_engine(bundle: Path, target: str, device: str, src: Path, out: Path) -> float:
    """What `taesar regenerate` does after loading the bundle: decode + write JSONL."""
    from models.bundle import load_bundle
    from models.decoding import Regenerator, regenerate_external
    from models.device import resolve_device
    from models.output import read_jsonl_input, to_output_line, write_jsonl

    dev = str(resolve_device(device))
    b = load_bundle(bundle, device=dev)
    engine = Regenerator(b.catalogue, b.mixed, b.experts, device=dev)
    records = list(read_jsonl_input(src))
    started = time.perf_counter()
    results = regenerate_external(engine, [r.items for r in records], target)
    write_jsonl(
        out, (to_output_line(res, b.catalogue, target, r.user_id) for r, res in zip(records, results, strict=True))
    )
    return time.perf_counter() - started


def start_workers(args: argparse.Namespace, prefix: str, logs: Path) -> list[subprocess.Popen]:
    from workers.main import worker_argv

    env = {**os.environ, "TAESAR_MODEL_DIR": str(args.model_dir), "TAESAR_KEY_PREFIX": prefix,
           "TAESAR_REDIS_URL": args.redis_url, "TAESAR_DEVICE": args.device, "TAESAR_LOG_LEVEL": "WARNING"}  # fmt: skip
    procs = []
    for k in range(args.workers):
        cmd = [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "workers.celery_app",
            *worker_argv(1, "INFO"),
            "-n",
            f"w{k}.{prefix}@%h",
        ]
        with (logs / f"worker{k}.log").open("wb") as log:
            procs.append(subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT))
    return procs


def run_job(client: TaesarClient, url: str, target: str, src: Path, out: Path) -> dict[str, float]:
    started = time.perf_counter()
    job = client.submit_job(target, src)
    uploaded = time.perf_counter()
    client.wait_for_job(job.id, poll_interval=0.2, timeout=3600)
    finished = time.perf_counter()
    # raw bytes to a file, as a bulk consumer (or curl) would; the SDK's iter_results would
    # add a pydantic parse per line on the client side
    with out.open("wb") as f, httpx.stream("GET", f"{url}{job.links.results}", timeout=300) as r:
        r.raise_for_status()
        for part in r.iter_bytes():
            f.write(part)
    done = time.perf_counter()
    return {"seconds": done - started, "upload_s": uploaded - started, "queue_and_decode_s": finished - uploaded,
            "download_s": done - finished}  # fmt: skip


def same_lines(a: Path, b: Path) -> bool:
    with a.open() as fa, b.open() as fb:
        return all(json.loads(x) == json.loads(y) for x, y in zip(fa, fb, strict=True))


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    # SIGTERM (e.g. `timeout`) must still run the finally below: stop the workers, delete the keys
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    bundle = first_bundle(args.model_dir)
    target = args.target or json.loads((bundle / "manifest.json").read_text())["catalogue"]["domains"][0]
    prefix = f"bench-{uuid.uuid4().hex[:8]}"
    if args.threads:  # inherited by the CLI and worker subprocesses; this process sets torch directly
        os.environ["OMP_NUM_THREADS"] = str(args.threads)
        import torch

        torch.set_num_threads(args.threads)
    # the in-process API reads these too: it must send to the workers' queue, in chunks of this size
    os.environ["TAESAR_KEY_PREFIX"] = prefix
    os.environ["TAESAR_CHUNK_SIZE"] = str(args.chunk_size)
    with tempfile.TemporaryDirectory(prefix="job-throughput-") as tmp:
        work = Path(tmp)
        src = work / "in.jsonl"
        n = write_input(args, bundle, src)
        gz = work / "in.jsonl.gz"
        gz.write_bytes(gzip.compress(src.read_bytes(), 6))

        procs = start_workers(args, prefix, work)
        cli_runs: list[float | str] = []
        engine_runs: list[float] = []
        job_runs: list[dict[str, float]] = []
        try:
            with in_process_server(args.model_dir, args.device) as url, TaesarClient(url, timeout=300) as client:
                warm = work / "warm.jsonl"
                warm.write_text("".join(src.open().readlines()[: max(1, args.workers) * 2]))
                run_job(client, url, target, warm, work / "warm.out")  # loads every worker's models
                # rounds interleave the three, so a noisy neighbour hits all of them alike
                for _ in range(args.repeat):
                    cli_runs.append(run_cli(bundle, target, args.device, src, work / "cli.jsonl"))
                    engine_runs.append(run_cli_engine(bundle, target, args.device, src, work / "engine.jsonl"))
                    job_runs.append(run_job(client, url, target, gz, work / "job.jsonl"))
        finally:
            for p in procs:
                p.terminate()
            for p in procs:
                p.wait(timeout=60)
            delete_prefix(args.redis_url, prefix)
        identical = same_lines(work / "engine.jsonl", work / "job.jsonl")
        if any(isinstance(c, float) for c in cli_runs):
            identical = identical and same_lines(work / "cli.jsonl", work / "job.jsonl")
    result = summarize_runs(args, n, bundle.name, target, (cli_runs, engine_runs, job_runs), identical)
    print(json.dumps(result, indent=2))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    return result


def summarize_runs(
    args: argparse.Namespace,
    n: int,
    bundle: str,
    target: str,
    runs: tuple[list[float | str], list[float], list[dict[str, float]]],
    identical: bool,
) -> dict[str, Any]:
    """The best of each kind of run (CLI subprocess, CLI engine, job) and every run."""
    cli_runs, engine_runs, job_runs = runs
    cli_ok = [c for c in cli_runs if isinstance(c, float)]
    cli_s: float | str = min(cli_ok) if cli_ok else str(cli_runs[-1])
    engine_s = min(engine_runs)
    job = min(job_runs, key=lambda j: j["seconds"])
    return {
        "sequences": n,
        "workers": args.workers,
        "chunk_size": args.chunk_size,
        "device": args.device,
        "threads": args.threads,
        "bundle": bundle,
        "target_domain": target,
        "cli_subprocess": {"seconds": round(cli_s, 3), "sequences_per_s": round(n / cli_s, 1)}
        if isinstance(cli_s, float)
        else {"error": cli_s},
        "cli_engine": {"seconds": round(engine_s, 3), "sequences_per_s": round(n / engine_s, 1)},
        "job": {**{k: round(v, 3) for k, v in job.items()}, "sequences_per_s": round(n / job["seconds"], 1)},
        "job_vs_cli_subprocess": round(cli_s / job["seconds"], 3) if isinstance(cli_s, float) else None,
        "job_vs_cli_engine": round(engine_s / job["seconds"], 3),
        "job_results_equal_cli": identical,
        "runs": {
            "repeat": args.repeat,
            "cli_subprocess_s": [round(c, 3) if isinstance(c, float) else "error" for c in cli_runs],
            "cli_engine_s": [round(e, 3) for e in engine_runs],
            "job_s": [round(j["seconds"], 3) for j in job_runs],
        },
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count(), "platform": platform.platform()},
    }


def delete_prefix(url: str, prefix: str) -> None:
    """This run's keys only: the job store's and kombu's, all under `prefix:`."""
    import redis

    r = redis.Redis.from_url(url)
    keys = list(r.scan_iter(f"{prefix}:*", count=1000))
    for start in range(0, len(keys), 1000):
        r.delete(*keys[start : start + 1000])


if __name__ == "__main__":
    main()
