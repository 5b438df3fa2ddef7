"""Stage I on validation: how each domain expert scores after every adaptation epoch.

The bundle's experts are adapted for a fixed 20 epochs (METHOD.md §2, the released
code) and end *below* the mixed model they start from on their domain's validation
points. This replays the adaptation of a committed bundle, epoch by epoch, with the
bundle's own seeds and config, and scores the expert after each epoch on the domain's
validation points (target in the domain, ranked over the domain's items, the bundle's
own `validation_metrics`), split by the domain of the last history item: the expert's
loss only trains positions whose current item is in its domain, but decoding reads it
at every position. It then checks that epoch `adapt_epochs` reproduces the bundle's
expert bit for bit, so the curve is the bundle's own trajectory, not a look-alike.
Validation only; nothing here looks at test points. Run from the repository root with
one torch thread (as the bundle was trained):

    python docs/results/ml100k/tools/adaptation_curve.py DATA BUNDLE OUT.json
"""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path

import numpy as np
import torch

from models.bundle import load_bundle
from models.data import load_dataset, train_part
from models.pretrain import (
    SELECT_METRIC,
    EvalSet,
    TrainConfig,
    evaluate_domain,
    expert_rows,
    make_eval_set,
    train_epoch,
)


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


def main(data: Path, bundle_dir: Path, out: Path) -> None:
    torch.set_num_threads(1)
    ds, bundle = load_dataset(data), load_bundle(bundle_dir)
    if ds.fingerprint != bundle.manifest["data_fingerprint"]:
        sys.exit("the bundle was not trained on this data (fingerprints differ)")
    t = bundle.manifest["training"]
    fields = set(TrainConfig.__dataclass_fields__)
    cfg = TrainConfig(**{k: (tuple(v) if k == "ks" else v) for k, v in t.items() if k in fields} | {"device": "cpu"})
    cat, device = ds.catalogue, torch.device("cpu")
    train_seqs = [train_part(np.asarray(s, dtype=np.int64), cfg.holdout) for s in ds.sequences]
    valid = make_eval_set(ds.sequences, "valid", cfg.holdout, bundle.config.max_len)
    result: dict = {"bundle": str(bundle_dir), "adapt_epochs": cfg.adapt_epochs, "domains": {}}
    for k, name in enumerate(cat.domains):
        span = cat.domain_range(k)
        parts = _split(valid, span)
        rows = expert_rows(train_seqs, bundle.config.max_len, *span)
        expert = copy.deepcopy(bundle.mixed)
        # the same seeding as models.pretrain.adapt_expert; evaluating in between uses no RNG
        torch.manual_seed(int(np.random.SeedSequence([cfg.seed, k + 1]).generate_state(1)[0]))
        opt = torch.optim.Adam(expert.parameters(), lr=cfg.lr)
        rng = np.random.default_rng([cfg.seed, k + 1])
        curve = []
        for epoch in range(cfg.adapt_epochs + 1):
            loss = train_epoch(expert, opt, rows, span, cfg, rng, device) if epoch else None
            scores = {p: evaluate_domain(expert, s, span, cfg, device)[SELECT_METRIC] for p, s in parts.items()}
            curve.append({"epoch": epoch, "loss": loss, **scores})
            print(name, curve[-1], flush=True)
        mine, theirs = expert.state_dict(), bundle.experts[name].state_dict()
        same = mine.keys() == theirs.keys() and all(torch.equal(mine[k], theirs[k]) for k in mine)
        best = max(curve, key=lambda r: r["all"])
        result["domains"][name] = {
            "points": {p: len(s.targets) for p, s in parts.items()},
            "curve": curve,
            "best_epoch": best["epoch"],
            "reproduces_bundle_expert": same,
        }
        print(name, "best epoch", best["epoch"], "reproduces the bundle's expert:", same, flush=True)
    out.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    main(Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]))
