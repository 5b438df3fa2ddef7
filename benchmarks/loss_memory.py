"""Peak memory and wall time of one SASRec training step: unchunked vs tiled cross-entropy.

    python benchmarks/loss_memory.py --out /tmp/loss_memory.json
    python benchmarks/loss_memory.py --items 500000 --compare-items 12500 25000 50000 --threads 1

One step = batch_loss (forward), backward, Adam step, on a batch of --batch sequences
x --length positions, every position with a target, so the loss sees n = batch x length
rows over a softmax of --items items (SASRec, --hidden, 2 layers). Each configuration
runs in a fresh child process; its peak resident memory is read from /proc (VmHWM,
reset once the model, optimiser and batch exist), so "step_peak_mb" is what the step
adds on top of them, and "peak_rss_mb" is the process's whole peak.

The unchunked path (the whole (n, C) logits) is run only where its estimated need,
n x C x LOGIT_BYTES, stays under --max-unchunked-gb; at the large catalogue it is
projected instead, from a least-squares line through the catalogues where it did run
(--compare-items), next to the estimate. The tiled path runs at the default
logits_budget_mb (--budget-mb). Printed as a table and written as JSON (--out).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a plain script from a checkout

MB = 2**20


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    from models.losses import DEFAULT_LOGITS_BUDGET_MB

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--items", type=int, default=500_000, help="catalogue size of the headline measurement")
    p.add_argument("--compare-items", type=int, nargs="*", default=[12_500, 25_000, 50_000])
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--length", type=int, default=50)
    p.add_argument("--budget-mb", type=float, default=DEFAULT_LOGITS_BUDGET_MB, help="tiled path's logits_budget_mb")
    p.add_argument("--max-unchunked-gb", type=float, default=16.0, help="skip the unchunked path above this estimate")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "loss_memory.json")
    p.add_argument("--child", nargs=2, metavar=("PATH", "ITEMS"), help=argparse.SUPPRESS)
    return p.parse_args(argv)


# -- one step, in a child process ---------------------------------------------------------


def _peak_rss_mb() -> float:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def _reset_peak_rss() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0); False where that is not possible."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def run_step(path: str, items: int, args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from models.losses import LOGIT_BYTES, budget_bytes, chunk_shape
    from models.sasrec import SASRec, SASRecConfig
    from models.training import batch_loss

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    cfg = SASRecConfig(n_items=items, max_len=args.length, hidden=args.hidden, inner=args.hidden, n_layers=2)
    model = SASRec(cfg)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    tokens = torch.randint(1, items + 1, (args.batch, args.length))  # (B, L)
    targets = torch.randint(0, items, (args.batch, args.length))  # (B, L), every position has a target
    budget = 1e12 if path == "unchunked" else args.budget_mb  # a budget every batch fits: the plain path
    before = _peak_rss_mb()
    reset = _reset_peak_rss()
    base = _peak_rss_mb()
    started = time.perf_counter()
    loss = batch_loss(model, tokens, targets, 0, items, budget)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    seconds = time.perf_counter() - started
    peak = _peak_rss_mb()
    n = args.batch * args.length
    rows, cols = chunk_shape(n, items, budget_bytes(budget), LOGIT_BYTES)
    return {
        "path": path,
        "items": items,
        "positions": n,
        "tile": None if rows >= n and cols >= items else [rows, cols],  # None: the whole logits at once
        "loss": round(loss.item(), 6),
        "seconds": round(seconds, 2),
        "peak_rss_mb": round(peak, 1),
        "step_peak_mb": round(peak - base, 1) if reset else None,
        "setup_rss_mb": round(base if reset else before, 1),
    }


def measure(path: str, items: int, args: argparse.Namespace) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--child", path, str(items), *_shared_flags(args)]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads)}
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if done.returncode:
        return {"path": path, "items": items, "error": (done.stderr or done.stdout).strip()[-500:]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def _shared_flags(args: argparse.Namespace) -> list[str]:
    return [
        *("--hidden", str(args.hidden), "--batch", str(args.batch), "--length", str(args.length)),
        *("--budget-mb", str(args.budget_mb), "--threads", str(args.threads), "--seed", str(args.seed)),
    ]


# -- the comparison -----------------------------------------------------------------------


def _line(xs: list[float], ys: list[float]) -> tuple[float, float]:
    """Least-squares (intercept, slope)."""
    n, mx, my = len(xs), sum(xs) / len(xs), sum(ys) / len(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sxx if n > 1 and sxx else 0.0
    return my - slope * mx, slope


def project_unchunked(runs: list[dict[str, Any]], items: int, positions: int) -> dict[str, Any]:
    from models.losses import LOGIT_BYTES

    ok = [r for r in runs if r["path"] == "unchunked" and r.get("step_peak_mb") is not None]
    out: dict[str, Any] = {"estimate_mb": round(positions * items * LOGIT_BYTES / MB, 1)}
    if len(ok) >= 2:
        xs = [float(r["items"]) for r in ok]
        a_mem, b_mem = _line(xs, [r["step_peak_mb"] for r in ok])
        a_t, b_t = _line(xs, [r["seconds"] for r in ok])
        out |= {
            "measured_bytes_per_logit": round(b_mem * MB / positions, 2),
            "projected_step_peak_mb": round(a_mem + b_mem * items, 1),
            "projected_seconds": round(a_t + b_t * items, 1),
            "from_items": [r["items"] for r in ok],
        }
    return out


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.child:
        print(json.dumps(run_step(args.child[0], int(args.child[1]), args)))
        return
    import torch

    from models.losses import LOGIT_BYTES

    positions = args.batch * args.length
    runs = []
    for items in [*args.compare_items, args.items]:
        for path in ("unchunked", "tiled"):
            need_gb = positions * items * LOGIT_BYTES / 2**30
            if path == "unchunked" and need_gb > args.max_unchunked_gb:
                runs.append({"path": path, "items": items, "skipped": f"estimated {need_gb:.1f} GB"})
                print(f"{path:>9} {items:>8} items: skipped, estimated {need_gb:.1f} GB", flush=True)
                continue
            runs.append(measure(path, items, args))
            print(_row(runs[-1]), flush=True)
    result = {
        "benchmark": "loss_memory",
        "model": {"backbone": "sasrec", "hidden": args.hidden, "n_layers": 2},
        "batch": args.batch,
        "length": args.length,
        "positions": positions,
        "budget_mb": args.budget_mb,
        "threads": args.threads,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "machine": platform.processor() or platform.machine(),
        "runs": runs,
        "unchunked_at_items": {"items": args.items, **project_unchunked(runs, args.items, positions)},
    }
    print(json.dumps(result["unchunked_at_items"], indent=2))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"written to {args.out}")


def _row(r: dict[str, Any]) -> str:
    if "error" in r:
        return f"{r['path']:>9} {r['items']:>8} items: failed: {r['error']}"
    return (
        f"{r['path']:>9} {r['items']:>8} items: {r['seconds']:>7.2f} s, step peak {r['step_peak_mb']} MB, "
        f"process peak {r['peak_rss_mb']} MB, tile {r['tile'] or 'none (whole logits)'}, loss {r['loss']}"
    )


if __name__ == "__main__":
    main()
