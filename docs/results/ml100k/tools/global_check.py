"""Why a bundle replaces many or few items: at the source positions that `new` decodes,
how often each model's top item over all items is a target item.

The global check of METHOD.md §3 replaces a source item only when the argmax of the
global score g over all items is a target item. This decodes `new` for every target on
the pipeline's training parts, as `taesar pipeline` does, and reports, per target, the
share of decided source positions whose argmax is a target item for the mixed model
(z^M), the target expert (z^T), the source item's expert (z^S) and g. Run from the
repository root:

    python docs/results/ml100k/tools/global_check.py DATA BUNDLE [HOLDOUT]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from models.bundle import load_bundle
from models.data import load_dataset
from models.decoding import Explained, Regenerator, TargetItems, contrastive_score
from models.evaluation import EvalConfig, check_bundle, plan_evaluation

MODELS = ("mixed", "target_expert", "source_expert", "global_score")


class CountingRegenerator(Regenerator):
    """A Regenerator that also counts, per decided chunk, whose argmax is a target item."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.counts = torch.zeros(len(MODELS) + 1, dtype=torch.long)

    def _decide_chunk(self, z: list[torch.Tensor], targets: TargetItems, options) -> Explained:
        z_mix, z_source, z_target = z
        g = contrastive_score(z_mix, z_source, z_target)
        tops = [targets.contains(x.argmax(dim=-1)).sum() for x in (z_mix, z_target, z_source, g)]
        self.counts += torch.tensor([*tops, len(z_mix)])
        return super()._decide_chunk(z, targets, options)


def main(data: Path, bundle: Path, holdout: int = 1) -> None:
    ds = load_dataset(data)
    b = load_bundle(bundle, device="cpu")
    check_bundle(b.manifest, ds, holdout)
    out = {}
    for target in b.catalogue.domains:
        regen = CountingRegenerator(b.catalogue, b.mixed, b.experts, device="cpu")
        cfg = EvalConfig(targets=(target,), variants=("new",), seeds=(0,), holdout=holdout)
        plan_evaluation(ds, cfg, regen)
        *tops, n = regen.counts.tolist()
        out[target] = {"source_positions": n, **{m: round(t / n, 4) for m, t in zip(MODELS, tops, strict=True)}}
    print(json.dumps({"bundle": str(bundle), "top_item_is_target": out}, indent=1))


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]), *(int(a) for a in sys.argv[3:4]))
