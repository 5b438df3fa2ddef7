"""Decoding speed: the batched engine vs the per-step reference (not run by CI).

Scenarios
  (a) a trained bundle (--bundle) with sequences from a JSONL file (--sequences, lines
      {"items": [external ids]}) or random ones over its catalogue;
  (b) a synthetic catalogue (default 200k items over 4 domains) with random weights.
For each: the reference on a subset, the engine on the same subset (decisions must be
identical) and on a larger set. Then a memory check: the streaming engine on growing
numbers of sequences, whose peak RSS should not grow with the count.

  python benchmarks/decode_speed.py                      # scenario (b) + memory check
  python benchmarks/decode_speed.py --bundle runs/ml100k/bundle --data data/ml100k --target comedy

Wall time on a shared machine is noisy, so process CPU time is reported too; the
ratio is given for both.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import psutil
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from models.catalogue import Catalogue
from models.decoding import Regenerated, Regenerator
from models.decoding_reference import reference_regenerate
from models.sasrec import SASRec, SASRecConfig
from models.tally import Tally


@dataclass
class World:
    name: str
    catalogue: Catalogue
    mixed: SASRec
    experts: dict[str, SASRec]
    target: str


# -- worlds ---------------------------------------------------------------------------


def synthetic_world(n_items: int, n_domains: int, hidden: int, max_len: int, seed: int) -> World:
    offsets = np.linspace(0, n_items, n_domains + 1).astype(int)
    domains = tuple(f"d{k}" for k in range(n_domains))
    catalogue = Catalogue(domains, tuple(str(i) for i in range(n_items)), tuple(int(o) for o in offsets))
    torch.manual_seed(seed)

    def model() -> SASRec:
        cfg = SASRecConfig(n_items=n_items, max_len=max_len, hidden=hidden, n_heads=2, inner=hidden, n_layers=2)
        m = SASRec(cfg)
        with torch.no_grad():
            m.item_emb.weight.mul_(3)  # less flat softmaxes: replacements happen as well as discards
        return m.eval()

    name = f"synthetic {n_items} items / {n_domains} domains"
    return World(name, catalogue, model(), {d: model() for d in domains}, domains[0])


def bundle_world(path: str, target: str | None) -> World:
    try:
        from models.bundle import load_bundle
    except ImportError as exc:  # written in parallel; scenario (b) must work without it
        raise SystemExit(f"models.bundle is not available: {exc}") from None
    b = load_bundle(path)
    return World(f"bundle {path}", b.catalogue, b.mixed, dict(b.experts), target or b.catalogue.domains[0])


def random_sequences(catalogue: Catalogue, n: int, length: int, seed: int) -> Iterator[list[int]]:
    rng = np.random.default_rng(seed)
    for _ in range(n):
        yield rng.integers(0, catalogue.n_items, size=length).tolist()


def dataset_sequences(catalogue: Catalogue, path: str) -> list[list[int]]:
    """The training part of every user of a prepared dataset (what `taesar regenerate --data` decodes)."""
    from models.data import load_dataset, train_part

    ds = load_dataset(path)
    if ds.catalogue != catalogue:
        raise SystemExit(f"{path} is not the dataset of this bundle (catalogues differ)")
    return [train_part(np.asarray(s, dtype=np.int64), ds.options["holdout"]).tolist() for s in ds.sequences]


def file_sequences(catalogue: Catalogue, path: str) -> list[list[int]]:
    out = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        if line.strip():
            items = [catalogue.get(i) for i in json.loads(line)["items"]]
            out.append([i for i in items if i is not None])
    return out


# -- measuring ------------------------------------------------------------------------


class PeakRss:
    """Samples this process's RSS every 5 ms while active (ru_maxrss only ever grows)."""

    def __init__(self) -> None:
        self.peak = 0
        self._stop = threading.Event()
        self._proc = psutil.Process()

    def __enter__(self) -> PeakRss:
        self.peak = self._proc.memory_info().rss
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, self._proc.memory_info().rss)

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._proc.memory_info().rss)


def timed(fn: Callable[[], object]) -> tuple[object, float, float, int]:
    """(result, wall s, process cpu s, peak rss bytes)."""
    with PeakRss() as rss:
        wall, cpu = time.perf_counter(), time.process_time()
        out = fn()
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return out, wall, cpu, rss.peak


def decisions_of(results: list[Regenerated]) -> list:
    return [[(d.position, d.action, d.replacement, d.reason) for d in r.decisions] for r in results]


def compare(world: World, seqs: list[list[int]], engine_n: list[int], batch_size: int, budget: float) -> dict:
    reg = Regenerator(world.catalogue, world.mixed, world.experts, batch_size=batch_size, memory_budget_mb=budget)
    ref, ref_wall, ref_cpu, ref_rss = timed(
        lambda: reference_regenerate(world.catalogue, world.mixed, world.experts, seqs, world.target)
    )
    eng, eng_wall, eng_cpu, eng_rss = timed(lambda: reg.regenerate(seqs, world.target))
    a, b = decisions_of(eng), decisions_of(ref)
    mismatched = sum(x != y for ea, eb in zip(a, b, strict=True) for x, y in zip(ea, eb, strict=True))
    n_decided = sum(len(x) for x in a)
    n = len(seqs)
    row = {
        "scenario": world.name,
        "items": world.catalogue.n_items,
        "target": world.target,
        "subset_sequences": n,
        "decisions": n_decided,
        "mismatched_decisions": mismatched,
        "identical": mismatched == 0,
        "reference": {"seq_per_s": n / ref_wall, "wall_s": ref_wall, "cpu_s": ref_cpu, "peak_rss_mb": ref_rss / 2**20},
        "engine_subset": {
            "seq_per_s": n / eng_wall,
            "wall_s": eng_wall,
            "cpu_s": eng_cpu,
            "peak_rss_mb": eng_rss / 2**20,
        },
        "speedup_wall": ref_wall / eng_wall,
        "speedup_cpu": ref_cpu / eng_cpu,
        "actions": _actions(eng),
        "engine_larger": [],
    }
    row["floor"] = exact_work_floor(world, eng, ref_wall, ref_cpu, n)
    _print_compare(row)
    length = max(len(s) for s in seqs)
    for big in engine_n:
        if big <= n:
            continue
        more = list(random_sequences(world.catalogue, big, length, seed=1))
        _, wall, cpu, rss = timed(lambda more=more: reg.regenerate(more, world.target))
        entry = {"sequences": big, "seq_per_s": big / wall, "wall_s": wall, "cpu_s": cpu, "peak_rss_mb": rss / 2**20}
        row["engine_larger"].append(entry)
        print(f"  engine on {big} sequences: {big / wall:8.2f} seq/s  (wall {wall:.1f}s, cpu {cpu:.1f}s)")
    return row


@torch.inference_mode()
def exact_work_floor(world: World, results: list[Regenerated], ref_wall: float, ref_cpu: float, n: int) -> dict:
    """The work no exact engine can skip, timed alone: for each decided source position,
    the three logit vectors over all V items (z = h W^T for the mixed model, the source
    expert and the target expert) and their softmax normalisers (logsumexp), since every
    p_i, alpha_i and beta_i depends on every logit. Transformer forwards and the rest of
    the rule are left out, so this is a lower bound on the engine's time and
    reference / floor an upper bound on any exact engine's speedup."""
    q = sum(1 for r in results for d in r.decisions if d.domain != world.catalogue.domain_index(world.target))
    # the source expert has the same shapes as the mixed model, so the mixed weights stand in for it
    weights = [m.item_weights() for m in (world.mixed, world.experts[world.target], world.mixed)]
    hidden = torch.randn(256, weights[0].shape[1])

    def work(normalise: bool) -> None:
        for lo in range(0, q, 256):
            h = hidden[: min(256, q - lo)]
            for w in weights:
                z = h @ w.T  # (r, V)
                if normalise:
                    torch.logsumexp(z, dim=-1)

    out: dict = {"source_positions": q}
    for name, normalise in (("logits", False), ("logits_logsumexp", True)):
        _, wall, cpu, _ = timed(lambda normalise=normalise: work(normalise))
        out[name] = {
            "wall_s": wall,
            "cpu_s": cpu,
            "seq_per_s": n / wall,
            "max_speedup_wall": ref_wall / wall,
            "max_speedup_cpu": ref_cpu / cpu,
        }
    return out


def _actions(results: list[Regenerated]) -> dict[str, int]:
    return Tally.total(r.stats for r in results).as_dict()


def _print_compare(row: dict) -> None:
    r, e = row["reference"], row["engine_subset"]
    print(f"\n== {row['scenario']} (target {row['target']}), {row['subset_sequences']} sequences")
    print(f"  reference: {r['seq_per_s']:8.2f} seq/s  (wall {r['wall_s']:.1f}s, cpu {r['cpu_s']:.1f}s)")
    print(f"  engine   : {e['seq_per_s']:8.2f} seq/s  (wall {e['wall_s']:.1f}s, cpu {e['cpu_s']:.1f}s)")
    print(f"  speedup  : {row['speedup_wall']:.1f}x wall, {row['speedup_cpu']:.1f}x cpu")
    f = row["floor"]
    for name, label in (("logits", "3 logit vectors"), ("logits_logsumexp", "+ their logsumexp")):
        print(
            f"  floor    : {f[name]['seq_per_s']:8.2f} seq/s, {label} of {f['source_positions']} source positions "
            f"alone: an exact engine stays under {f[name]['max_speedup_wall']:.1f}x wall, "
            f"{f[name]['max_speedup_cpu']:.1f}x cpu"
        )
    same = "identical" if row["identical"] else f"{row['mismatched_decisions']} MISMATCHED"
    print(f"  decisions: {row['decisions']} ({same}); {row['actions']}")


def memory_check(world: World, counts: list[int], length: int, batch_size: int, budget: float) -> list[dict]:
    """Streams n sequences through the engine, keeping only running totals."""
    reg = Regenerator(world.catalogue, world.mixed, world.experts, batch_size=batch_size, memory_budget_mb=budget)
    rows = []
    print(f"\n== memory: streaming engine, {world.name}, length {length}, budget {budget} MB")
    for n in counts:

        def run(n: int = n) -> int:
            kept = 0
            for r in reg.iter_regenerate(random_sequences(world.catalogue, n, length, seed=2), world.target):
                kept += len(r.sequence)
            return kept

        _, wall, _cpu, rss = timed(run)
        maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
        rows.append({"sequences": n, "seq_per_s": n / wall, "peak_rss_mb": rss / 2**20, "ru_maxrss_mb": maxrss})
        print(f"  {n:>7} sequences: {n / wall:8.1f} seq/s, peak RSS during run {rss / 2**20:7.1f} MB")
    return rows


# -- main -----------------------------------------------------------------------------


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bundle", help="scenario (a): a bundle folder")
    p.add_argument("--sequences", help="JSONL of {'items': [external ids]} for the bundle scenario")
    p.add_argument("--data", help="prepared dataset: its users' training parts for the bundle scenario")
    p.add_argument("--target", help="target domain for the bundle scenario (default: its first domain)")
    p.add_argument("--skip-synthetic", action="store_true", help="skip scenario (b)")
    p.add_argument("--items", type=int, default=200_000)
    p.add_argument("--domains", type=int, default=4)
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--max-len", type=int, default=128)
    p.add_argument("--length", type=int, default=50, help="length of synthetic sequences")
    p.add_argument("--ref-n", type=int, default=64, help="sequences for the reference (and the engine)")
    p.add_argument("--engine-n", type=int, nargs="*", default=[256], help="larger sets for the engine alone")
    p.add_argument("--mem-n", type=int, nargs="*", default=[1000, 10000], help="sequence counts for the memory check")
    p.add_argument("--mem-items", type=int, default=20_000, help="catalogue size for the memory check")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--budget-mb", type=float, default=256)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--out", default="benchmarks/results/decode_speed.json")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    report: dict = {
        "machine": {
            "cpu": platform.processor() or platform.machine(),
            "cores": psutil.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "load_avg_at_start": list(psutil.getloadavg()),
            "torch": torch.__version__,
        },
        "args": vars(args),
        "scenarios": [],
    }
    if args.bundle:
        world = bundle_world(args.bundle, args.target)
        if args.data:
            seqs = dataset_sequences(world.catalogue, args.data)
        elif args.sequences:
            seqs = file_sequences(world.catalogue, args.sequences)
        else:
            seqs = list(random_sequences(world.catalogue, args.ref_n, args.length, seed=0))
        report["scenarios"].append(compare(world, seqs[: args.ref_n], args.engine_n, args.batch_size, args.budget_mb))
    if not args.skip_synthetic:
        world = synthetic_world(args.items, args.domains, args.hidden, args.max_len, seed=0)
        seqs = list(random_sequences(world.catalogue, args.ref_n, args.length, seed=0))
        report["scenarios"].append(compare(world, seqs, args.engine_n, args.batch_size, args.budget_mb))
    if args.mem_n:
        world = synthetic_world(args.mem_items, args.domains, args.hidden, args.max_len, seed=0)
        report["memory"] = memory_check(world, args.mem_n, args.length, args.batch_size, args.budget_mb)
    report["machine"]["load_avg_at_end"] = list(psutil.getloadavg())

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
