"""Scale: import, pretrain and regenerate on a generated log of a given catalogue size.

  python benchmarks/scale.py --items 200000 --users 12000 --max-steps 5 --device cpu --out scale.json
  python benchmarks/scale.py --items 1000000 --users 100000 --epochs 1 --device cuda --out scale-1m.json

The log has `--domains` domains of equal size; every user has `--per-user` interactions,
the same number in each domain, and every item occurs at least k-core times, so the
prepared catalogue has exactly `--items` items (checked). Item popularity within a
domain is part Zipf (head items dominate), part uniform. Stages run in this process
through the library, as `taesar data import`, `taesar pretrain` and `taesar regenerate`
do; a sampler thread records peak RSS of this process and its children per stage, and
on CUDA the peak allocated GPU memory. Prints a table and writes the JSON to --out.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import fields
from pathlib import Path

import numpy as np
import psutil
import pyarrow as pa
import pyarrow.parquet as pq
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from models.bundle import load_bundle
from models.data import PrepConfig, load_dataset, prepare, save_dataset, train_part
from models.decoding import Regenerator
from models.importers import read_interactions
from models.pretrain import TrainConfig, pretrain
from models.sasrec import SASRecConfig
from models.tally import Tally
from models.training import resolve_device

K_CORE = 3


# -- the log ---------------------------------------------------------------------------


def domain_slots(n_users: int, per_domain: int, n_items: int, zipf_share: float, rng: np.random.Generator):
    """(n_users, per_domain) local item ids: every item at least K_CORE times, the rest part Zipf."""
    slots = n_users * per_domain
    if slots < K_CORE * n_items:
        raise SystemExit(f"{slots} interactions per domain cannot give {n_items} items {K_CORE} each: raise --per-user")
    guaranteed = np.repeat(np.arange(n_items), K_CORE)
    rest = slots - len(guaranteed)
    ranks = np.arange(1, n_items + 1, dtype=np.float64)
    zipf = 1.0 / ranks**1.05
    probs = zipf_share * zipf / zipf.sum() + (1 - zipf_share) / n_items
    # head items are a random subset, not the lowest ids
    popular = rng.permutation(n_items)
    drawn = popular[rng.choice(n_items, size=rest, p=probs)]
    items = np.concatenate([guaranteed, drawn])
    rng.shuffle(items)
    return items.reshape(n_users, per_domain)


def write_log(path: Path, n_items: int, n_users: int, per_user: int, n_domains: int, seed: int) -> int:
    rng = np.random.default_rng(seed)
    per_domain = per_user // n_domains
    bounds = np.linspace(0, n_items, n_domains + 1).astype(np.int64)
    users = np.repeat(np.arange(n_users), per_domain)
    writer = None
    rows = 0
    for d in range(n_domains):
        local = domain_slots(n_users, per_domain, int(bounds[d + 1] - bounds[d]), 0.7, rng).ravel()
        table = pa.table(
            {
                "user_id": pa.array(np.char.add("u", users.astype(str))),
                "item_id": pa.array(np.char.add(f"d{d}-", local.astype(str))),
                "domain": pa.array(np.full(len(local), f"d{d}")),
                "timestamp": pa.array(rng.integers(0, 10**9, size=len(local))),
            }
        )
        writer = writer or pq.ParquetWriter(path, table.schema)
        writer.write_table(table)
        rows += len(local)
    assert writer is not None
    writer.close()
    return rows


# -- measuring -------------------------------------------------------------------------


class Peak:
    """Peak RSS (this process + its children) sampled every 50 ms, and peak GPU memory."""

    def __init__(self, device: torch.device) -> None:
        self.device, self.rss, self._stop = device, 0, threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _now(self) -> int:
        me = psutil.Process()
        total = me.memory_info().rss
        for child in me.children(recursive=True):
            with suppress(psutil.Error):
                total += child.memory_info().rss
        return total

    def _sample(self) -> None:
        while not self._stop.wait(0.05):
            self.rss = max(self.rss, self._now())

    def reset(self) -> None:
        self.rss = self._now()
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)

    def gpu_mb(self) -> float:
        return torch.cuda.max_memory_allocated(self.device) / 2**20 if self.device.type == "cuda" else 0.0

    def close(self) -> None:
        self._stop.set()
        self._thread.join()


@contextmanager
def stage(name: str, peak: Peak, out: dict) -> Iterator[dict]:
    peak.reset()
    record: dict = {}
    started = time.perf_counter()
    yield record
    if peak.device.type == "cuda":
        torch.cuda.synchronize(peak.device)
    record.update(wall_s=round(time.perf_counter() - started, 2), peak_rss_mb=round(peak.rss / 2**20, 1))
    record["peak_gpu_mb"] = round(peak.gpu_mb(), 1)
    out[name] = record
    print(f"{name:10} {record['wall_s']:9.1f} s  peak RSS {record['peak_rss_mb']:8.0f} MB", flush=True)


# -- the run ---------------------------------------------------------------------------


def train_config(args: argparse.Namespace) -> TrainConfig:
    wanted = {
        "epochs": args.epochs,
        "adapt_epochs": args.epochs,
        "patience": args.epochs,
        "device": args.device,
        "batch_size": args.batch_size,
        "max_steps": args.max_steps,
        "logits_budget_mb": args.logits_budget_mb,
    }
    known = {f.name for f in fields(TrainConfig)}
    if args.max_steps is not None and "max_steps" not in known:
        raise SystemExit("this TrainConfig has no max_steps")
    return TrainConfig(**{k: v for k, v in wanted.items() if k in known and v is not None})


def run(args: argparse.Namespace, work: Path) -> dict:
    device = resolve_device(args.device)
    peak = Peak(device)
    stages: dict = {}
    log = work / "log.parquet"
    with stage("generate", peak, stages) as rec:
        rec["interactions"] = write_log(log, args.items, args.users, args.per_user, args.domains, args.seed)
    with stage("import", peak, stages) as rec:
        cfg = PrepConfig(k_core=K_CORE, max_len=max(args.per_user, 2))
        ds = prepare(read_interactions(log), cfg, source=log.name)
        save_dataset(ds, work / "data")
    if ds.catalogue.n_items != args.items:
        raise SystemExit(f"the catalogue has {ds.catalogue.n_items} items, not {args.items}")
    with stage("pretrain", peak, stages) as rec:
        ds = load_dataset(work / "data")
        model = SASRecConfig(n_items=ds.catalogue.n_items, hidden=args.hidden, max_len=min(128, args.per_user))
        result = pretrain(ds, train_config(args), model_config=model)
        result.save(work / "bundle", ds)
        rec.update(timings_s={k: round(v, 2) for k, v in result.timings.items()}, epochs_run=result.epochs_run)
        rec["validation_ndcg10"] = round(result.metrics["mixed"]["NDCG@10"], 5)
    target = ds.catalogue.domains[0]
    with stage("regenerate", peak, stages) as rec:
        b = load_bundle(work / "bundle", device=str(device))
        engine = Regenerator(b.catalogue, b.mixed, b.experts, device=device, **budget(args))
        sequences = [train_part(s, 1) for s in ds.sequences[: args.decode_users]]
        started = time.perf_counter()
        counts = Tally.total(r.stats for r in engine.iter_regenerate(sequences, target)).as_dict()
        seconds = time.perf_counter() - started
        rec.update(target=target, sequences=len(sequences), sequences_per_s=round(len(sequences) / seconds, 2))
        rec.update(counts, memory_budget_mb=engine.memory_budget_mb)
    peak.close()
    stages["import"]["interactions_per_s"] = round(stages["generate"]["interactions"] / stages["import"]["wall_s"], 1)
    return {
        "catalogue_items": ds.catalogue.n_items,
        "users": len(ds.user_ids),
        "interactions": stages["generate"]["interactions"],
        "peak_rss_mb": max(s["peak_rss_mb"] for s in stages.values()),
        "peak_gpu_mb": max(s["peak_gpu_mb"] for s in stages.values()),
        "stages": stages,
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "machine": {"cpu": platform.processor() or platform.machine(), "cores": psutil.cpu_count(),
                    "torch": torch.__version__, "device": str(device),
                    "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None},
    }  # fmt: skip


def budget(args: argparse.Namespace) -> dict:
    return {} if args.memory_budget_mb is None else {"memory_budget_mb": args.memory_budget_mb}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--items", type=int, required=True, help="catalogue size after import (exact)")
    p.add_argument("--users", type=int, required=True)
    p.add_argument("--per-user", type=int, default=None, help="interactions per user (default: enough for k-core)")
    p.add_argument("--domains", type=int, default=4)
    p.add_argument("--epochs", type=int, default=1, help="max epochs of the mixed model and of each adaptation")
    p.add_argument("--max-steps", type=int, default=None, help="optimiser steps per training phase, then validate")
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--device", default="auto")
    p.add_argument("--logits-budget-mb", type=float, default=None, help="Stage I budget (default: TrainConfig's)")
    p.add_argument("--memory-budget-mb", default=None, help="Stage II budget (default: the engine's)")
    p.add_argument("--decode-users", type=int, default=2000, help="sequences regenerated into one target")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args()
    if args.per_user is None:  # every domain needs k-core x items slots; round up to whole domains
        need = math.ceil(1.2 * K_CORE * args.items / args.users)
        args.per_user = max(8 * args.domains, math.ceil(need / args.domains) * args.domains)
    if args.memory_budget_mb not in (None, "auto"):
        args.memory_budget_mb = float(args.memory_budget_mb)
    with tempfile.TemporaryDirectory(prefix="taesar-scale-") as tmp:
        report = run(args, Path(tmp))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\ncatalogue {report['catalogue_items']:,} items, {report['users']:,} users, "
          f"{report['interactions']:,} interactions; peak RSS {report['peak_rss_mb']:.0f} MB, "
          f"peak GPU {report['peak_gpu_mb']:.0f} MB")  # fmt: skip
    print("| stage | wall s | peak RSS MB | peak GPU MB | throughput |\n|---|---:|---:|---:|---|")
    for name, s in report["stages"].items():
        rate = s.get("interactions_per_s") or s.get("sequences_per_s") or ""
        unit = " interactions/s" if "interactions_per_s" in s else " seq/s" if "sequences_per_s" in s else ""
        print(f"| {name} | {s['wall_s']} | {s['peak_rss_mb']} | {s['peak_gpu_mb']} | {rate}{unit} |")
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
