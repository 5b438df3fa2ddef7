"""The training sets and points of an evaluation as RecBole benchmark datasets."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from models.catalogue import Catalogue
from models.data import Dataset, domain_eval_points, train_part
from models.decoding import Regenerator
from models.evaluation.variants import build_training_sets
from models.output import RecboleWriter, safe_file_name
from models.training import ProgressFn


def export_recbole(
    dataset: Dataset,
    target: str,
    variants: Sequence[str],
    out_dir: str | Path,
    *,
    holdout: int,
    regenerator: Regenerator | None = None,
    max_len: int = 128,
    data_seed: int = 0,
    progress: ProgressFn | None = None,
) -> dict[str, dict[str, int]]:
    """One RecBole benchmark dataset per variant: `<out>/<name>/<name>.{train,valid,test}.inter`
    with name `<target>-<variant>`; valid/test are the same points for every variant.

    Training sequences are expanded into one row per next-item step (history -> item),
    so a RecBole model sees the same transitions as ours; histories keep the last max_len
    items. Returns rows written per variant and file."""
    cat = dataset.catalogue
    parts = [train_part(np.asarray(s, dtype=np.int64), holdout) for s in dataset.sequences]
    sets = build_training_sets(parts, cat, target, variants, regenerator, data_seed=data_seed, progress=progress)
    eval_rows = {
        split: [
            (dataset.user_ids[p.user], [*p.history[-max_len:].tolist(), p.target])
            for p in domain_eval_points(dataset.sequences, cat, target, split, holdout)  # type: ignore[arg-type]
        ]
        for split in ("valid", "test")
    }
    written: dict[str, dict[str, int]] = {}
    for variant, tset in sets.items():
        name = safe_file_name(f"{target}-{variant}")
        folder = Path(out_dir) / name
        rows = {
            "train": [
                (dataset.user_ids[u], seq[max(0, t + 1 - max_len - 1) : t + 1].tolist())
                for u, seq in zip(tset.users, tset.sequences, strict=True)
                for t in range(1, len(seq))
            ],
            **eval_rows,
        }
        written[variant] = {split: _write_inter(folder / f"{name}.{split}.inter", r, cat) for split, r in rows.items()}
    return written


def _write_inter(path: Path, rows: Sequence[tuple[str, list[int]]], cat: Catalogue) -> int:
    with RecboleWriter(path) as w:
        for user, seq in rows:
            w.write(user, [cat.external(int(i)) for i in seq])
        return w.written
