"""The training sets an evaluation compares, all built from the users' training parts alone
(`build_training_sets` receives nothing else, which is what the leakage test pins).

  sim     T's rows (the train part filtered to T, >= 2 items)
  full    the mixed train parts; softmax over all items, scores restricted to T at evaluation
  new     sim + Taesar's regenerated rows (those repeating an earlier row exactly are dropped)
  random  sim + rows where every source item is replaced by a T item drawn by
          T's training popularity instead of by decoding (same post-processing)
  random_matched  like random, but only where Taesar replaced (its discards kept),
          which isolates the quality of the chosen replacements
  no_adaptation | no_source_experts | no_global | no_local  `new` with one decoding ablation
  new_norepeat  `new` without replacements that repeat an item already in the row (not
          in METHOD.md; DecodeOptions.drop_repeats)
  sim_x2  every `sim` row twice (not in METHOD.md)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

from models.catalogue import Catalogue
from models.decoding import NO_CONTEXT, DecodeOptions, Regenerated, Regenerator, assemble
from models.errors import DataError
from models.training import ProgressFn

ABLATIONS: dict[str, DecodeOptions] = {
    "no_adaptation": DecodeOptions(no_adaptation=True),
    "no_source_experts": DecodeOptions(no_source_experts=True),
    "no_global": DecodeOptions(no_global=True),
    "no_local": DecodeOptions(no_local=True),
}
# Not in METHOD.md, both explained in docs/results/ml100k.md: new_norepeat is `new` whose
# replacements never repeat an item already in the row (DecodeOptions.drop_repeats);
# sim_x2 is every `sim` row twice, a control for `new` showing each user's target items
# twice per epoch (its regenerated row keeps them) and taking twice the steps per epoch.
VARIANTS: tuple[str, ...] = (
    "sim",
    "full",
    "new",
    "random",
    "random_matched",
    *ABLATIONS,
    "new_norepeat",
    "sim_x2",
)
DECODED = {
    "new": DecodeOptions(),
    "random_matched": DecodeOptions(),
    **ABLATIONS,
    "new_norepeat": DecodeOptions(drop_repeats=True),
}  # variant -> decoding used


@dataclass
class TrainingSet:
    variant: str
    sequences: list[np.ndarray]  # dense ids
    users: list[int]  # the user (index into Dataset.user_ids) whose training part each row comes from
    mixed: bool = False  # softmax over the whole catalogue (the `full` set)
    regenerated: list[Regenerated] | None = None  # decoded variants: one per training part


def _rows(pairs: Sequence[tuple[int, np.ndarray]]) -> tuple[list[np.ndarray], list[int]]:
    """(user, row) pairs -> the rows of >= 2 items and their users."""
    kept = [(u, np.asarray(r, dtype=np.int64)) for u, r in pairs if len(r) >= 2]
    return [r for _, r in kept], [u for u, _ in kept]


def _append(
    base: Sequence[tuple[int, np.ndarray]], extra: Sequence[tuple[int, np.ndarray]]
) -> tuple[list[np.ndarray], list[int]]:
    """base rows, then the extra rows that repeat no row before them (METHOD.md §3: exact
    duplicate rows are dropped). Users' own rows are never dropped, even when two agree."""
    seqs, users = _rows(base)
    seen = {r.tobytes() for r in seqs}
    for u, r in _rows_pairs(extra):
        if r.tobytes() not in seen:
            seen.add(r.tobytes())
            seqs.append(r)
            users.append(u)
    return seqs, users


def _rows_pairs(pairs: Sequence[tuple[int, np.ndarray]]) -> list[tuple[int, np.ndarray]]:
    seqs, users = _rows(pairs)
    return list(zip(users, seqs, strict=True))


def _popularity(train_parts: Sequence[np.ndarray], span: tuple[int, int]) -> np.ndarray:
    a, b = span
    flat = np.concatenate(train_parts) if train_parts else np.zeros(0, np.int64)
    counts = np.bincount(flat[(flat >= a) & (flat < b)] - a, minlength=b - a).astype(np.float64)
    return counts / counts.sum() if counts.sum() else np.full(b - a, 1.0 / (b - a))


def _random_rows(
    train_parts: Sequence[np.ndarray],
    catalogue: Catalogue,
    target: str,
    rng: np.random.Generator,
    where: Sequence[np.ndarray] | None = None,
) -> list[np.ndarray]:
    """Source items -> popularity-drawn T items (all of them, or only the positions in
    `where`, dropping the other source items); consecutive duplicates collapse."""
    t = catalogue.domain_index(target)
    a, _ = span = catalogue.domain_range(t)
    p = _popularity(train_parts, span)
    item_domain = np.asarray(catalogue.item_domain, dtype=np.int64)
    out = []
    for k, seq in enumerate(train_parts):
        source = item_domain[seq] != t
        raw = np.full(len(seq), -1, dtype=np.int64)
        chosen = np.flatnonzero(source) if where is None else where[k]
        raw[chosen] = a + rng.choice(len(p), size=len(chosen), p=p)
        out.append(np.array(assemble(seq, item_domain[seq], raw, t).sequence, dtype=np.int64))
    return out


def build_training_sets(
    train_parts: Sequence[np.ndarray],
    catalogue: Catalogue,
    target: str,
    variants: Sequence[str],
    regenerator: Regenerator | None = None,
    *,
    data_seed: int = 0,
    progress: ProgressFn | None = None,
    predecoded: Sequence[Regenerated] | None = None,
) -> dict[str, TrainingSet]:
    """Every requested training set for T, from the users' training parts alone.

    predecoded is the plain decode (DecodeOptions()) of these parts when the caller already
    has it (the pipeline writes it to regenerated/ first); it stands in for that decode."""
    parts = [np.asarray(s, dtype=np.int64) for s in train_parts]
    sim = list(enumerate(_domain_only(parts, catalogue, target)))
    decoded = _decode(parts, catalogue, target, variants, regenerator, progress, predecoded)
    drawn = _draw(parts, catalogue, target, variants, decoded, data_seed)
    out: dict[str, TrainingSet] = {}
    for v in variants:
        regen = decoded.get(DECODED.get(v))  # type: ignore[arg-type]
        if v == "sim":
            out[v] = TrainingSet(v, *_rows(sim))
        elif v == "sim_x2":  # no duplicate dropping: the repetition is the point
            out[v] = TrainingSet(v, *_rows(sim + sim))
        elif v == "full":
            out[v] = TrainingSet(v, *_rows(list(enumerate(parts))), mixed=True)
        elif v in drawn:
            out[v] = TrainingSet(v, *_append(sim, list(enumerate(drawn[v]))))
        else:
            extra = [np.array(r.sequence, dtype=np.int64) for r in regen or []]
            out[v] = TrainingSet(v, *_append(sim, list(enumerate(extra))), regenerated=regen)
    return out


def _decode(
    parts: list[np.ndarray],
    catalogue: Catalogue,
    target: str,
    variants: Sequence[str],
    regenerator: Regenerator | None,
    progress: ProgressFn | None,
    predecoded: Sequence[Regenerated] | None,
) -> dict[DecodeOptions, list[Regenerated]]:
    """The decodes the decoded variants need, each run once: DecodeOptions -> one
    Regenerated per training part."""
    decoded: dict[DecodeOptions, list[Regenerated]] = {}
    if predecoded is not None:
        if len(predecoded) != len(parts) or any(
            len(r.decisions) != len(p) for r, p in zip(predecoded, parts, strict=True)
        ):
            raise ValueError("predecoded rows are not a decode of these training parts")
        decoded[DecodeOptions()] = list(predecoded)
    for v in variants:
        opts = DECODED.get(v)
        if opts is None or opts in decoded:
            continue
        if regenerator is None:
            raise DataError(f"variant {v!r} needs a bundle to decode with")
        # drop_repeats is post-processing only: decode once without it, reassemble with it
        base = replace(opts, drop_repeats=False)
        if base not in decoded:
            decoded[base] = _regenerate(regenerator, parts, target, base, "new" if opts != base else v, progress)
        if opts.drop_repeats:
            t = catalogue.domain_index(target)
            decoded[opts] = [_reassemble(r, t, drop_repeats=True) for r in decoded[base]]
    return decoded


def _draw(
    parts: list[np.ndarray],
    catalogue: Catalogue,
    target: str,
    variants: Sequence[str],
    decoded: dict[DecodeOptions, list[Regenerated]],
    data_seed: int,
) -> dict[str, list[np.ndarray]]:
    """The rows of the random baselines that were asked for.

    One stream of popularity draws in a fixed order, random's (every source position)
    then random_matched's, whichever of the two were asked for and in whatever order, so
    a training set never depends on which other variants were requested."""
    rng = np.random.default_rng([data_seed, catalogue.domain_index(target)])
    drawn: dict[str, list[np.ndarray]] = {}
    if "random" in variants or "random_matched" in variants:
        drawn["random"] = _random_rows(parts, catalogue, target, rng)
    if "random_matched" in variants:
        where = [
            np.array([d.position for d in r.decisions if d.action == "replace"], np.int64)
            for r in decoded[DECODED["random_matched"]]
        ]
        drawn["random_matched"] = _random_rows(parts, catalogue, target, rng, where)
    return drawn


def _reassemble(regenerated: Regenerated, target: int, *, drop_repeats: bool) -> Regenerated:
    """Run METHOD.md's post-processing again on one decoded row from its decisions: a
    decision keeps the replacement it chose (also when it was discarded as a duplicate),
    so the raw codes that `assemble` needs are all there."""
    decisions = regenerated.decisions
    raw = [
        d.replacement if d.replacement is not None else NO_CONTEXT if d.reason == "no_context" else -1
        for d in decisions
    ]
    return assemble([d.item for d in decisions], [d.domain for d in decisions], raw, target, drop_repeats=drop_repeats)


def _domain_only(parts: Sequence[np.ndarray], catalogue: Catalogue, target: str) -> list[np.ndarray]:
    a, b = catalogue.domain_range(target)
    return [s[(s >= a) & (s < b)] for s in parts]


def _regenerate(
    regenerator: Regenerator,
    parts: Sequence[np.ndarray],
    target: str,
    options: DecodeOptions,
    label: str,
    progress: ProgressFn | None,
) -> list[Regenerated]:
    phase = f"regenerate {target} ({'taesar' if label in ('new', 'random_matched') else label})"

    def on_progress(n: int) -> None:
        if progress:
            progress(phase, n, len(parts), {})

    return regenerator.regenerate([s.tolist() for s in parts], target, options, on_progress)
