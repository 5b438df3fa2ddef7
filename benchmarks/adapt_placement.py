"""Expert adaptation on two ranks: all ranks per domain (what `taesar pretrain` does under
torchrun) against one domain per rank, each measured against one process.

  python benchmarks/adapt_placement.py --out adapt.json

One small generated log and one mixed model trained once; then the four experts'
adaptation is timed three ways, one torch thread per process:
  single         one process adapts the four domains in turn;
  domain-per-rank  two processes at once, each adapting two domains alone (no
                 communication; what one domain per rank would cost);
  ranks-per-domain `torchrun --nproc-per-node 2 taesar pretrain` with the same sizes,
                 whose manifest times each expert (both ranks train every domain).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SIZES = ["--hidden", "64", "--layers", "2", "--heads", "2", "--inner", "64", "--max-len", "64"]


def adapt_domains(data: Path, bundle: Path, domains: list[int], epochs: int) -> float:
    """Seconds to adapt these domains' experts from the bundle's mixed model, one thread."""
    import numpy as np
    import torch

    from models.bundle import load_bundle
    from models.data import load_dataset, train_part
    from models.pretrain import TrainConfig, adapt_expert, expert_rows

    torch.set_num_threads(1)
    ds, b = load_dataset(data), load_bundle(bundle, device="cpu")
    cfg = TrainConfig(adapt_epochs=epochs, device="cpu")
    seqs = [train_part(np.asarray(s, dtype=np.int64), cfg.holdout) for s in ds.sequences]
    started = time.perf_counter()
    for k in domains:
        span = ds.catalogue.domain_range(k)
        rows = expert_rows(seqs, b.mixed.cfg.max_len, *span)
        adapt_expert(b.mixed, rows, span, f"expert:{k}", (cfg.seed, k + 1), cfg, torch.device("cpu"), None)
    return time.perf_counter() - started


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--users", type=int, default=800)
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--worker", nargs=4, help=argparse.SUPPRESS)  # data bundle domains epochs
    args = p.parse_args()
    if args.worker:
        data, bundle, domains, epochs = args.worker
        print(adapt_domains(Path(data), Path(bundle), [int(d) for d in domains.split(",")], int(epochs)))
        return
    from benchmarks.scale import write_log

    taesar = str(Path(sys.executable).with_name("taesar"))
    with tempfile.TemporaryDirectory(prefix="taesar-adapt-") as tmp:
        work = Path(tmp)
        write_log(work / "log.parquet", 240, args.users, 56, 4, seed=0)
        run = lambda *a: subprocess.run([*a], check=True, capture_output=True, text=True)  # noqa: E731
        run(taesar, "data", "import", "--interactions", str(work / "log.parquet"), "--out", str(work / "data"))
        common = ["--data", str(work / "data"), "--epochs", str(args.epochs), "--device", "cpu", *SIZES]
        run(taesar, "--threads", "1", "pretrain", *common, "--out", str(work / "b"), "--adapt-epochs", "0")
        me = [sys.executable, str(Path(__file__).resolve()), "--out", "-", "--worker", str(work / "data"),
              str(work / "b")]  # fmt: skip
        single = float(run(*me, "0,1,2,3", str(args.epochs)).stdout)
        started = time.perf_counter()
        pair = [subprocess.Popen([*me, d, str(args.epochs)], stdout=subprocess.PIPE, text=True)
                for d in ("0,1", "2,3")]  # fmt: skip
        per_rank = [float(proc.communicate()[0]) for proc in pair]
        domain_per_rank = time.perf_counter() - started
        torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                    "--no-python", taesar, "--threads", "1", "pretrain"]  # fmt: skip
        # --batch-size 64 per rank: the same global batch and step count as the single process
        run(*torchrun, *common, "--out", str(work / "d"), "--adapt-epochs", str(args.epochs), "--batch-size", "64")
        timings = json.loads((work / "d" / "manifest.json").read_text())["training"]["timings_s"]
        ranks_per_domain = sum(v for k, v in timings.items() if k.startswith("expert:"))
    report = {
        "users": args.users,
        "adapt_epochs": args.epochs,
        "single_s": round(single, 2),
        "domain_per_rank_s": round(max(per_rank), 2),
        "domain_per_rank_wall_s": round(domain_per_rank, 2),
        "ranks_per_domain_s": round(ranks_per_domain, 2),
    }
    print(json.dumps(report, indent=2))
    args.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
