"""Turn a committed report (report.json + ranks.npz) back into a run log (trainings.jsonl).

The seed-42 leave-4-out grid was run before run logs were committed. This rebuilds its
log so that `taesar pipeline --resume` can add seeds to it instead of retraining seed 42:
it plans the same evaluation (same data, bundle, config) to get each training's
fingerprint, checks that every planned training set has the reported size, and writes
one log line per training with the reported row and test ranks. Trainings that would
not match are refused, not guessed; a variant whose decisions differ here (a float
near-tie decided the other way on another CPU) is left out, so that it is retrained.

A fingerprint includes the torch thread count the training ran with: the report's
`config.threads` (reports written since 2026-12-03), or for an older report `job_threads`
when it ran with `--jobs` above 1, otherwise the `--threads N` of its command (give
THREADS when the command has none). Run from the repository root:

    python docs/results/ml100k/tools/carry_over.py REPORT_DIR DATA BUNDLE OUT/trainings.jsonl [THREADS]
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import numpy as np
import torch

from models.bundle import load_bundle
from models.data import load_dataset
from models.decoding import Regenerator
from models.downstream import DownstreamConfig
from models.evaluation import EvalConfig, Finished, check_bundle, plan_evaluation


def report_threads(report: dict, given: int | None = None) -> int:
    """The torch thread count of the report's trainings (part of every fingerprint)."""
    c = report["config"]
    if c.get("threads") is not None:
        return c["threads"]
    if c["jobs"] > 1:
        return c["job_threads"]
    if given is not None:
        return given
    m = re.search(r"--threads[ =](\d+)", report["command"])
    if m is None:
        sys.exit("the report's command does not say --threads: give THREADS")
    return int(m.group(1))


def main(report_dir: Path, data: Path, bundle: Path, out: Path, threads: int | None = None) -> None:
    report = json.loads((report_dir / "report.json").read_text())
    # plan_evaluation fingerprints a --jobs 1 run with this process's torch thread count
    torch.set_num_threads(report_threads(report, threads))
    ranks = np.load(report_dir / "ranks.npz")
    ds = load_dataset(data)
    if ds.fingerprint != report["data"]["fingerprint"]:
        sys.exit("the data is not the report's (fingerprints differ)")
    c = report["config"]
    down = {**c["downstream"], "ks": tuple(c["downstream"]["ks"])}
    cfg = EvalConfig(
        targets=tuple(c["targets"]),
        backbones=tuple(c["backbones"]),
        variants=tuple(c["variants"]),
        seeds=tuple(c["seeds"]),
        holdout=report["protocol"]["holdout"],
        downstream=DownstreamConfig(**down),
        data_seed=c["data_seed"],
        jobs=c["jobs"],
        job_threads=c["job_threads"] or 1,
    )
    b = load_bundle(bundle, device="cpu")
    check_bundle(b.manifest, ds, cfg.holdout)
    plan = plan_evaluation(ds, cfg, Regenerator(b.catalogue, b.mixed, b.experts, device="cpu"))
    differ = set()  # (target, variant) whose decoding here is not the report's: rerun them
    for target, info in plan.targets.items():
        reported = report["targets"][target].get("decisions", {})
        for variant, counts in info.get("decisions", {}).items():
            if counts != reported.get(variant):
                differ.add((target, variant))
                print(f"{target} {variant}: decodes differently here than in the report; not carried over")
    rows = {(r["target"], r["backbone"], r["variant"], r["seed"]): r for r in report["results"]}
    lines = []
    for task, fp in zip(plan.tasks, plan.fingerprints, strict=True):
        key = (task.split.target, task.backbone, task.tset.variant, task.seed)
        if key[:1] + key[2:3] in differ:
            continue
        row = rows[key]
        if row["train_rows"] != len(task.tset.sequences) or row["n_test"] != len(task.split.test.targets):
            sys.exit(f"{key}: planned training set differs from the reported one")
        r = ranks["|".join(map(str, key))]
        lines.append(json.dumps(Finished(fp, row, r).to_json()))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n", encoding="utf-8")
    print(f"{len(lines)} trainings written to {out}")


if __name__ == "__main__":
    main(*map(Path, sys.argv[1:5]), *(int(a) for a in sys.argv[5:6]))
