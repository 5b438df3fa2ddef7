"""Peak memory and wall time of `taesar data import` on generated logs of growing size.

    python benchmarks/data_scale.py --sizes 1000000 5000000 20000000 50000000 --out /tmp/data_scale.json
    python benchmarks/data_scale.py --sizes 1000000 --format parquet --code /tmp/old-checkout

Each log has --domains domains, about 25 interactions per user and 100 per item
(2M users and 500k items at 50M rows). Every user has at least 3 interactions in
every domain, and half of the item draws follow a power law, half are uniform, so
the default 3-core and all-domains filters keep nearly every row while popular
items still dominate. Logs are written in chunks with numpy and pyarrow, so the
generator's own memory stays small; they are kept in --workdir and reused.

Each size runs in a fresh child process that does what `taesar data import` does
(read_interactions, prepare, save_dataset, summarize), timing every step and
reading the peak resident memory (VmHWM) after each; the child's whole peak comes
from wait4. A second child loads the saved dataset as `taesar pretrain` does
first; with --batches it goes on to build pretrain's training rows and pad one
epoch of batches (the data side of models/pretrain.py and models/training.py, without
a model). `--code DIR`
puts DIR first on the children's import path, to measure another checkout of the
same code. Printed as a table ("B/row": peak above the child's size after its
imports, per input row) and written as JSON (--out), with least-squares lines
peak = a + b x interactions.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]
MB = 2**20
DOMAIN_NAMES = ("Books", "Electronics", "Movies & TV", "Home & Kitchen", "Toys", "Sports", "Music", "Garden")
ROWS_PER_USER = 25
ROWS_PER_ITEM = 100
MIN_PER_DOMAIN = 3  # the default k-core


# -- the generated log ---------------------------------------------------------------------


def generate(path: Path, n_rows: int, *, n_domains: int = 4, seed: int = 0, chunk_rows: int = 1_000_000) -> dict:
    """Write about `n_rows` interactions to `path` (.csv or .parquet), one block of users at a time."""
    rng = np.random.default_rng(seed)
    n_items = max(n_rows // ROWS_PER_ITEM, 10 * n_domains)
    per_domain = n_items // n_domains
    item_names = _ids("i", n_domains * per_domain)
    domain_names = pa.array(DOMAIN_NAMES[:n_domains])
    tmp = path.with_name(path.name + ".part")
    writer = _Writer(tmp)
    written, first_user = 0, 0
    while written < n_rows:
        lengths = _user_lengths(rng, max(chunk_rows // ROWS_PER_USER, 1), n_domains)
        lengths = lengths[: np.searchsorted(np.cumsum(lengths), n_rows - written) + 1]
        user, pos = _positions(lengths)
        domain = np.where(pos < MIN_PER_DOMAIN * n_domains, pos % n_domains, rng.integers(n_domains, size=len(pos)))
        item = domain * per_domain + _item_ranks(rng, len(pos), per_domain)
        start = 1_600_000_000 + (3_600 * (first_user + user)) % 86_400_000  # users start over ~1000 days
        time_ = start + 60 * pos + rng.integers(30, size=len(pos))
        shuffle = rng.permutation(len(pos))  # a log is not grouped by user
        table = pa.table(
            {
                "user_id": _ids("u", len(lengths), start=first_user).take(pa.array(user[shuffle])),
                "item_id": item_names.take(pa.array(item[shuffle])),
                "domain": domain_names.take(pa.array(domain[shuffle])),
                "timestamp": pa.array(time_[shuffle].astype(np.int64)),
            }
        )
        writer.write(table)
        written += len(pos)
        first_user += len(lengths)
    writer.close()
    tmp.replace(path)
    return {"rows": written, "users": first_user, "items": n_domains * per_domain, "domains": n_domains}


def _ids(prefix: str, n: int, start: int = 0) -> pa.Array:
    numbers = pc.cast(pa.array(np.arange(start, start + n, dtype=np.int64)), pa.string())
    return pc.binary_join_element_wise(prefix, numbers, "")


def _user_lengths(rng: np.random.Generator, n_users: int, n_domains: int) -> np.ndarray:
    base = MIN_PER_DOMAIN * n_domains
    return base + rng.geometric(1 / (ROWS_PER_USER - base + 1), size=n_users) - 1


def _positions(lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(user index, position within the user) of every row of a block of users."""
    user = np.repeat(np.arange(len(lengths)), lengths)
    starts = np.cumsum(lengths) - lengths
    return user, np.arange(len(user)) - starts[user]


def _item_ranks(rng: np.random.Generator, n: int, per_domain: int) -> np.ndarray:
    # half power law (rank ~ u^3: the top 1% of items get ~22% of those draws), half uniform
    skewed = (per_domain * rng.random(n) ** 3).astype(np.int64)
    uniform = rng.integers(per_domain, size=n)
    return np.where(rng.random(n) < 0.5, skewed, uniform)


class _Writer:
    def __init__(self, path: Path) -> None:
        self.path, self._writer = path, None

    def write(self, table: pa.Table) -> None:
        if self._writer is None:
            parquet = self.path.name.removesuffix(".part").endswith(".parquet")
            self._writer = (
                pq.ParquetWriter(self.path, table.schema) if parquet else pacsv.CSVWriter(self.path, table.schema)
            )
        self._writer.write_table(table)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()


# -- one measurement, in a child process ---------------------------------------------------


def _peak_mb() -> float:
    """This process's peak resident memory so far (VmHWM)."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def child_import(log: Path, out_dir: Path) -> dict[str, Any]:
    """What `taesar data import --interactions LOG --out OUT` does, step by step."""
    from models.data import PrepConfig, prepare, save_dataset, summarize
    from models.importers import read_interactions

    steps: list[dict[str, Any]] = [{"step": "start", "seconds": 0.0, "peak_mb": _peak_mb()}]

    def step(name: str, started: float) -> None:
        steps.append({"step": name, "seconds": time.perf_counter() - started, "peak_mb": _peak_mb()})

    t = time.perf_counter()
    df = read_interactions(log)
    step("read", t)
    t = time.perf_counter()
    ds = prepare(df, PrepConfig(), source=log.name)  # the CLI keeps the frame alive meanwhile, so do we
    step("prepare", t)
    t = time.perf_counter()
    save_dataset(ds, out_dir)
    summary = summarize(ds)
    step("save", t)
    return {
        "steps": steps,
        "rows": len(df),
        **{k: summary[k] for k in ("users", "items", "interactions")},
        "fingerprint": ds.fingerprint,
    }


def child_load(data_dir: Path, batches: bool) -> dict[str, Any]:
    """What `taesar pretrain` does first: load the dataset and cut every user's training part;
    with `batches`, also build the mixed model's rows and pad one epoch of batches."""
    from models.data import load_dataset, train_part

    steps: list[dict[str, Any]] = [{"step": "start", "seconds": 0.0, "peak_mb": _peak_mb()}]
    t = time.perf_counter()
    ds = load_dataset(data_dir)
    train = [train_part(s, ds.options["holdout"]) for s in ds.sequences]
    steps.append({"step": "load", "seconds": time.perf_counter() - t, "peak_mb": _peak_mb()})
    if batches:
        steps.append(_batches(train, ds.options["max_len"]))
    return {"steps": steps, "interactions": int(sum(len(s) for s in ds.sequences)), "train": int(sum(map(len, train)))}


def _batches(train: list[np.ndarray], max_len: int, batch_size: int = 128) -> dict[str, Any]:
    """pretrain's data side without the model: rows, length buckets, one epoch of padded batches."""
    from models.pretrain import mixed_rows
    from models.training import length_buckets

    t = time.perf_counter()
    rows = mixed_rows(train, max_len)
    padded = 0
    for batch in length_buckets(rows.lengths, batch_size, np.random.default_rng(0)):
        out = np.zeros((len(batch), int(rows.lengths[batch].max())), dtype=np.int64)
        for i, r in enumerate(batch):
            out[i, : rows.lengths[r]] = rows.inputs[r]
        padded += out.size
    seconds = time.perf_counter() - t
    return {"step": "batch", "seconds": seconds, "peak_mb": _peak_mb(), "rows": len(rows.lengths), "cells": padded}


def run_child(args: list[str], code: Path) -> dict[str, Any]:
    """Run this script's child mode with `code` first on the import path; its peak RSS from wait4."""
    env = {**os.environ, "PYTHONPATH": str(code), "OMP_NUM_THREADS": "1"}
    started = time.perf_counter()
    proc = subprocess.Popen([sys.executable, __file__, "--child", *args], env=env, cwd=code, stdout=subprocess.PIPE)
    out = proc.stdout.read() if proc.stdout else b""
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        return {"error": f"exit code {proc.returncode}", "wall_s": wall, "peak_mb": usage.ru_maxrss / 1024}
    result = json.loads(out.decode().strip().splitlines()[-1])
    return {**result, "wall_s": wall, "peak_mb": usage.ru_maxrss / 1024}


# -- driver --------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[1_000_000, 5_000_000, 20_000_000, 50_000_000])
    p.add_argument("--format", choices=["csv", "parquet"], default="csv")
    p.add_argument("--domains", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workdir", type=Path, default=Path("/tmp/taesar-data-scale"), help="generated logs and outputs")
    p.add_argument("--code", type=Path, default=ROOT, help="checkout whose models/ is measured")
    p.add_argument("--label", default="", help="names this run in the JSON (e.g. before/after)")
    p.add_argument("--no-load", action="store_true", help="skip the load_dataset measurement")
    p.add_argument("--batches", action="store_true", help="after loading, build pretrain's rows and batches")
    p.add_argument("--out", type=Path, default=None, help="JSON file to write")
    p.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def measure(args: argparse.Namespace) -> list[dict[str, Any]]:
    args.workdir.mkdir(parents=True, exist_ok=True)
    results = []
    for n in args.sizes:
        log = args.workdir / f"log_{n}_{args.domains}d_s{args.seed}.{args.format}"
        row: dict[str, Any] = {"size": n, "format": args.format, "log": str(log)}
        if not log.exists():
            t = time.perf_counter()
            row["generated"] = generate(log, n, n_domains=args.domains, seed=args.seed)
            row["generate_s"] = time.perf_counter() - t
        row["log_mb"] = log.stat().st_size / MB
        out_dir = args.workdir / f"data_{n}_{args.label or 'run'}"
        row["import"] = run_child(["import", str(log), str(out_dir)], args.code.resolve())
        if (args.batches or not args.no_load) and "error" not in row["import"]:
            row["load"] = run_child(["load", str(out_dir), *(["batches"] if args.batches else [])], args.code.resolve())
        results.append(row)
        print(_line(row), flush=True)
    return results


def fit(results: list[dict[str, Any]], key: str = "import", step: str | None = None) -> dict[str, float] | None:
    """Least-squares peak_mb = a + b x input interactions over the sizes that ran: the child's
    whole peak, or its peak after `step`."""
    pts = [
        (r["import"]["rows"], _step_peak(r[key], step))
        for r in results
        if "error" not in r.get(key, {"error": 1}) and not np.isnan(_step_peak(r[key], step))
    ]
    if len(pts) < 2:
        return None
    x, y = np.array(pts, dtype=float).T
    b, a = np.polyfit(x, y, 1)
    return {"base_mb": float(a), "bytes_per_interaction": float(b * MB)}


def _step_peak(result: dict[str, Any], step: str | None) -> float:
    if step is None:
        return result["peak_mb"]
    return next((s["peak_mb"] for s in result.get("steps", []) if s["step"] == step), float("nan"))


_COLUMNS = {
    "size": 11, "rows": 11, "users": 9, "items": 8, "read s": 7, "prep s": 7, "save s": 7, "wall s": 7,
    "peak MB": 8, "B/row": 6, "load s": 7, "load MB": 8, "batch s": 7, "batch MB": 8,
}  # fmt: skip
HEADER = " ".join(f"{name:>{width}}" for name, width in _COLUMNS.items())


def _line(r: dict[str, Any]) -> str:
    imp = r["import"]
    if "error" in imp:
        return f"{r['size']:>11,} {imp['error']:>40} {imp['wall_s']:7.1f} {imp['peak_mb']:8.0f}"
    secs = {s["step"]: s["seconds"] for s in imp["steps"]}
    load = {s["step"]: s for s in r.get("load", {}).get("steps", [])}
    nan = {"seconds": float("nan"), "peak_mb": float("nan")}
    load_s, batch = load.get("load", nan)["seconds"], load.get("batch", nan)
    return (
        f"{r['size']:>11,} {imp['rows']:>11,} {imp['users']:>9,} {imp['items']:>8,} {secs['read']:7.1f} "
        f"{secs['prepare']:7.1f} {secs['save']:7.1f} {imp['wall_s']:7.1f} {imp['peak_mb']:8.0f} "
        f"{(imp['peak_mb'] - imp['steps'][0]['peak_mb']) * MB / imp['rows']:6.0f} "
        f"{load_s:7.1f} {load.get('load', nan)['peak_mb']:8.0f} {batch['seconds']:7.1f} {batch['peak_mb']:8.0f}"
    )


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.child:
        kind, *paths = args.child
        if kind == "import":
            result = child_import(Path(paths[0]), Path(paths[1]))
        else:
            result = child_load(Path(paths[0]), batches="batches" in paths[1:])
        print(json.dumps(result))
        return
    print(f"{args.label or 'run'}: {args.format} logs, {args.domains} domains, code {args.code}")
    print(HEADER, flush=True)
    results = measure(args)
    model = {"import": fit(results), "load": fit(results, "load", "load"), "batch": fit(results, "load", "batch")}
    for key, f in model.items():
        if f:
            print(f"{key}: peak RSS ~= {f['base_mb']:.0f} MB + {f['bytes_per_interaction']:.1f} bytes x interactions")
    if args.out:
        report = {
            "label": args.label,
            "machine": {
                "platform": platform.platform(),
                "cpus": os.cpu_count(),
                "memory_gb": os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30,
                "python": platform.python_version(),
            },
            "settings": {k: str(v) for k, v in vars(args).items() if k not in ("child", "out")},
            "results": results,
            "fit": model,
        }
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2))
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
