"""Generated multi-domain interaction logs with learnable structure, for tests."""

from __future__ import annotations

import numpy as np
import pandas as pd


def make_log(
    domains: list[str],
    *,
    n_users: int = 60,
    items_per_domain: int = 12,
    length: tuple[int, int] = (14, 24),
    n_clusters: int = 3,
    seed: int = 0,
) -> pd.DataFrame:
    """Users prefer one cluster of items, and cluster c means the same taste in every
    domain, so a mixed sequence carries signal about the target domain. Item ids are
    `<domain index>-<n>` strings; every user touches every domain at least 3 times."""
    rng = np.random.default_rng(seed)
    rows = []
    for u in range(n_users):
        taste = int(rng.integers(n_clusters))
        n = int(rng.integers(length[0], length[1] + 1))
        doms = np.concatenate([np.repeat(np.arange(len(domains)), 3), rng.integers(len(domains), size=n)])
        rng.shuffle(doms)
        for t, d in enumerate(doms):
            if rng.random() < 0.8:
                item = taste + n_clusters * int(rng.integers(items_per_domain // n_clusters))
            else:
                item = int(rng.integers(items_per_domain))
            rows.append((f"u{u}", f"{d}-{item}", domains[d], 1_000_000 + 60 * t + u))
    return pd.DataFrame(rows, columns=["user_id", "item_id", "domain", "timestamp"])
