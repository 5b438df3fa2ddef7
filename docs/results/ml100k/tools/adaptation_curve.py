"""Stage I on validation: how each domain expert scores after every adaptation epoch.

The bundle's experts are adapted for a fixed 20 epochs (METHOD.md §2, the released
code) and end *below* the mixed model they start from on their domain's validation
points. This reruns the adaptation of a committed bundle (`adapt_expert`, with the
bundle's own seeds and config), and scores the expert after each epoch on the domain's
validation points (target in the domain, ranked over the domain's items, the bundle's
own `validation_metrics`), split by the domain of the last history item: the expert's
loss only trains positions whose current item is in its domain, but decoding reads it
at every position. It then checks that epoch `adapt_epochs` reproduces the bundle's
expert bit for bit, so the curve is the bundle's own trajectory, not a look-alike.
Validation only; nothing here looks at test points. Run from the repository root with
one torch thread (as the bundle was trained):

    python docs/results/ml100k/tools/adaptation_curve.py DATA BUNDLE OUT.json [ADAPT_LR]

ADAPT_LR replays the adaptation with another learning rate (the bundle's is its
TrainConfig.lr, the mixed model's); the curve is then a candidate's, not the bundle's
own, and the bit-for-bit check is reported as null.
"""

from __future__ import annotations

import json
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from models.bundle import Bundle, load_bundle
from models.data import load_dataset, train_part
from models.pretrain import TrainConfig, adapt_expert, evaluate_domain, expert_rows, make_eval_set
from models.training import SELECT_METRIC, EvalSet


def _split(valid: EvalSet, span: tuple[int, int]) -> dict[str, EvalSet]:
    """The domain's points (target in the domain), all of them and by whether the last
    history item is itself in the domain."""
    a, b = span
    ours = (valid.targets >= a) & (valid.targets < b)
    last = np.array([int(h[-1]) for h in valid.histories])
    in_d = (last >= a) & (last < b)
    out = {}
    for name, mask in (("all", ours), ("last_in_domain", ours & in_d), ("last_elsewhere", ours & ~in_d)):
        idx = np.flatnonzero(mask)
        out[name] = EvalSet([valid.histories[i] for i in idx], valid.targets[idx])
    return out


def _domain_curve(bundle: Bundle, k: int, train_seqs: list, valid: EvalSet, cfg: TrainConfig) -> dict:
    """Domain k's expert adapted again (the bundle's own `adapt_expert`, seed and config),
    scored on validation before the first epoch and after each one."""
    name, span, device = bundle.catalogue.domains[k], bundle.catalogue.domain_range(k), torch.device("cpu")
    parts = _split(valid, span)
    curve: list[dict] = []

    def score(epoch: int, loss: float | None, model: torch.nn.Module) -> None:
        scores = {p: evaluate_domain(model, s, span, cfg, device)[SELECT_METRIC] for p, s in parts.items()}
        curve.append({"epoch": epoch, "loss": loss, **scores})
        print(name, curve[-1], flush=True)

    score(0, None, bundle.mixed)  # every expert starts as the mixed model
    rows = expert_rows(train_seqs, bundle.config.max_len, *span)
    expert = adapt_expert(bundle.mixed, rows, span, name, (cfg.seed, k + 1), cfg, device, None, on_epoch=score)
    same = None
    if cfg.lr == bundle.manifest["training"]["lr"]:
        mine, theirs = expert.state_dict(), bundle.experts[name].state_dict()
        same = mine.keys() == theirs.keys() and all(torch.equal(mine[key], theirs[key]) for key in mine)
    best = max(curve, key=lambda r: r["all"])
    print(name, "best epoch", best["epoch"], "reproduces the bundle's expert:", same, flush=True)
    return {
        "points": {p: len(s.targets) for p, s in parts.items()},
        "curve": curve,
        "best_epoch": best["epoch"],
        "reproduces_bundle_expert": same,
    }


def main(data: Path, bundle_dir: Path, out: Path, adapt_lr: float | None = None) -> None:
    torch.set_num_threads(1)
    ds, bundle = load_dataset(data), load_bundle(bundle_dir)
    if ds.fingerprint != bundle.manifest["data_fingerprint"]:
        sys.exit("the bundle was not trained on this data (fingerprints differ)")
    cfg = replace(TrainConfig.from_dict(bundle.manifest["training"]), device="cpu")
    if adapt_lr is not None:
        cfg = replace(cfg, lr=adapt_lr)
    train_seqs = [train_part(np.asarray(s, dtype=np.int64), cfg.holdout) for s in ds.sequences]
    valid = make_eval_set(ds.sequences, "valid", cfg.holdout, bundle.config.max_len)
    domains = {d: _domain_curve(bundle, k, train_seqs, valid, cfg) for k, d in enumerate(bundle.catalogue.domains)}
    result = {"bundle": str(bundle_dir), "adapt_epochs": cfg.adapt_epochs, "adapt_lr": cfg.lr, "domains": domains}
    out.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    if len(sys.argv) not in (4, 5):
        sys.exit(__doc__)
    main(Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]), float(sys.argv[4]) if len(sys.argv) == 5 else None)
