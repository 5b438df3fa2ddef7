"""A plain reference decoder, shaped like the paper's released code.

It walks the time steps one by one over the whole batch and every source domain, as
the released code does: at step t, for every source domain S, it runs the mixed model,
the target expert and S's expert on the prefixes (at most the last max_len items
before t), scores the whole batch with the same `decide` as the engine, and keeps the
decisions of the rows whose item at t is an S item. Slow on purpose (forward passes
and scoring per step and per domain, whatever the rows hold); tests and benchmarks
compare the engine to it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch

from models.catalogue import Catalogue
from models.decoding import NO_CONTEXT, DecodeOptions, Regenerated, assemble, decide
from models.sasrec import SASRec


@torch.inference_mode()
def reference_regenerate(
    catalogue: Catalogue,
    mixed: SASRec,
    experts: Mapping[str, SASRec],
    sequences: Sequence[Sequence[int]],
    target: str,
    options: DecodeOptions | None = None,
) -> list[Regenerated]:
    options = options or DecodeOptions()
    t_dom = catalogue.domain_index(target)
    for m in (mixed, *experts.values()):
        m.eval()
    expert = {d: mixed if options.no_adaptation else experts[name] for d, name in enumerate(catalogue.domains)}
    max_len = min(m.cfg.max_len for m in (mixed, *experts.values()))
    mask = torch.from_numpy(catalogue.item_domain == t_dom)  # (V,)

    b, length = len(sequences), max((len(s) for s in sequences), default=0)
    tokens = torch.zeros(b, length, dtype=torch.long)  # (B, L) dense id + 1, 0 = pad
    domain = np.full((b, length), -1)  # (B, L) domain index, -1 = pad
    for r, s in enumerate(sequences):
        tokens[r, : len(s)] = torch.tensor(list(s), dtype=torch.long) + 1
        domain[r, : len(s)] = catalogue.item_domain[list(s)]
    raw = np.full((b, length), -1)  # (B, L) replacement per position
    raw[:, 0] = NO_CONTEXT

    for t in range(1, length):
        prefix = tokens[:, max(0, t - max_len) : t]  # (B, <= max_len) the context of position t
        for s in range(catalogue.n_domains):
            if s == t_dom:
                continue
            rows = np.flatnonzero(domain[:, t] == s)
            source = mixed if options.no_source_experts else expert[s]
            z_mix, z_source, z_target = (m.scores(m(prefix)[:, -1]) for m in (mixed, source, expert[t_dom]))  # (B, V)
            choice = decide(
                z_mix, z_source, z_target, mask, use_global=not options.no_global, use_local=not options.no_local
            )  # (B,) the released code scores every row, then masks
            raw[rows, t] = choice[rows].numpy()

    return [
        assemble(s, domain[r, : len(s)], raw[r, : len(s)], t_dom, drop_repeats=options.drop_repeats)
        for r, s in enumerate(sequences)
    ]
