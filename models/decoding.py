"""Stage II of Taesar: adaptive contrastive decoding (METHOD.md §3).

`decide` is the whole decision rule on logits; everything else here is batching
around it. The `Regenerator` runs one causal forward pass per needed model over
each batch (teacher forcing: a decision never feeds back into later prefixes),
gathers the hidden state at j-1 for every source item at j, and decides all those
positions at once, chunked so the [n, V] score work stays inside a memory budget.
Decoding runs in float32 (float64 models stay float64) on every device.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from models.catalogue import Catalogue
from models.errors import ConfigError, UnknownItemError
from models.sasrec import SASRec

EPS = 1e-10

Action = Literal["keep", "replace", "discard"]
ProgressFn = Callable[[int], None]


# -- the decision rule ----------------------------------------------------------------


@dataclass(frozen=True)
class TargetItems:
    """The target domain's items among dense ids 0..V-1: a slice when they are
    contiguous (always, for a Catalogue), else an index tensor."""

    start: int
    end: int
    index: torch.Tensor | None = None  # (|T|,) dense ids, only when not contiguous
    mask: torch.Tensor | None = None  # (V,) bool, only when not contiguous

    @classmethod
    def of(cls, target: torch.Tensor | TargetItems) -> TargetItems:
        if isinstance(target, TargetItems):
            return target
        assert target.dtype == torch.bool and target.dim() == 1, "target_mask must be a bool vector [V]"
        index = target.nonzero().squeeze(1)
        assert index.numel() > 0, "target_mask selects no item"
        start, end = int(index[0]), int(index[-1]) + 1
        if end - start == index.numel():
            return cls(start, end)
        return cls(start, end, index, target)

    @property
    def size(self) -> int:
        return self.end - self.start if self.index is None else self.index.numel()

    def contains(self, ids: torch.Tensor) -> torch.Tensor:
        if self.mask is None:
            return (ids >= self.start) & (ids < self.end)
        return self.mask[ids]

    def columns(self, z: torch.Tensor) -> torch.Tensor:
        """z (N, V) -> (N, |T|), the target items' columns."""
        return z[:, self.start : self.end] if self.index is None else z[:, self.index]

    def dense_ids(self, local: torch.Tensor) -> torch.Tensor:
        """Column numbers in `columns(z)` -> dense ids."""
        return local + self.start if self.index is None else self.index[local]


def contrastive_score(z_mix: torch.Tensor, z_source: torch.Tensor, z_target: torch.Tensor) -> torch.Tensor:
    """g = (1 + alpha) * z^T - beta * z^S over the columns given, all (N, V') -> (N, V').

    alpha_i = (1 - e_i) / (1 - max e + eps), e_i = -p^T_i log(p^T_i + eps);
    beta_i = J_i / (max J + eps), J_i = 0.5 * (m_i log((m_i+eps)/(p^M_i+eps)) + m_i log((m_i+eps)/(p^S_i+eps))),
    m = (p^M + p^S) / 2. On CPU the cost is memory passes over V, not arithmetic, so
    this works in place on its own temporaries and merges the logs (~30% faster than
    the formula term by term); the inputs are not modified.
    """
    p_t = torch.softmax(z_target, dim=-1)  # (N, V)
    neg_e = p_t.add(EPS).log_().mul_(p_t)  # -e
    denominator = 1 + neg_e.amin(dim=-1, keepdim=True) + EPS  # 1 - max e + eps, (N, 1)
    # 1 + alpha = (denominator + 1 - e) / denominator
    g = neg_e.add_(denominator + 1).mul_(z_target).div_(denominator)  # (1 + alpha) z^T

    p_m = torch.softmax(z_mix, dim=-1)
    p_s = torch.softmax(z_source, dim=-1)
    m = p_m.add(p_s).mul_(0.5)
    # 2J = m log((m+eps)^2 / ((p^M+eps)(p^S+eps))); J/(max J + eps) = 2J/(max 2J + 2eps) exactly
    two_j = m.add(EPS).square_().div_(p_m.add_(EPS).mul_(p_s.add_(EPS))).log_().mul_(m)
    beta = two_j.div_(two_j.amax(dim=-1, keepdim=True) + 2 * EPS)
    return g.sub_(beta.mul_(z_source))


def decide(
    z_mix: torch.Tensor,
    z_source: torch.Tensor,
    z_target: torch.Tensor,
    target_mask: torch.Tensor | TargetItems,
    *,
    use_global: bool = True,
    use_local: bool = True,
) -> torch.Tensor:
    """The decision rule of METHOD.md §3 for N source positions.

    z_* are logits (N, V) of the mixed model, the source item's expert and the target
    expert; target_mask is a bool (V,) of target items. Returns a LongTensor (N,):
    the replacing dense id, or -1 to discard. Ablations: use_global=False always goes
    local; use_local=False replaces with the global argmax when it is a target item.
    """
    assert use_global or use_local, "at least one of the global and local scores is needed"
    targets = TargetItems.of(target_mask)
    z_mix, z_source, z_target = _compute_dtype(z_mix, z_source, z_target)
    n = z_target.shape[0]
    choice = torch.full((n,), -1, dtype=torch.long, device=z_target.device)  # (N,)
    if use_global:
        best = contrastive_score(z_mix, z_source, z_target).argmax(dim=-1)  # (N,)
        go_local = targets.contains(best)  # (N,) bool
        if not use_local:
            return torch.where(go_local, best, choice)
    else:
        go_local = torch.ones(n, dtype=torch.bool, device=z_target.device)
    rows = go_local.nonzero().squeeze(1)
    if rows.numel():
        # the same formulas with each softmax renormalised over the target items alone
        local = contrastive_score(*(targets.columns(z)[rows] for z in (z_mix, z_source, z_target)))  # (n, |T|)
        choice[rows] = targets.dense_ids(local.argmax(dim=-1))
    return choice


@dataclass(frozen=True)
class Explained:
    """`decide` plus its top candidates: ids are dense ids, -1 (score nan) where a
    row had no such candidate (local scores exist only for rows that went local)."""

    choice: torch.Tensor  # (N,)
    global_ids: torch.Tensor  # (N, k)
    global_scores: torch.Tensor  # (N, k)
    local_ids: torch.Tensor  # (N, k)
    local_scores: torch.Tensor  # (N, k)


def decide_explained(
    z_mix: torch.Tensor,
    z_source: torch.Tensor,
    z_target: torch.Tensor,
    target_mask: torch.Tensor | TargetItems,
    *,
    top_k: int = 5,
    use_global: bool = True,
    use_local: bool = True,
) -> Explained:
    """`decide`, also returning the top-k global candidates (dense id, g) and the
    top-k local candidates (dense id, l). Same choices as `decide` by construction."""
    assert top_k >= 1
    targets = TargetItems.of(target_mask)
    z_mix, z_source, z_target = _compute_dtype(z_mix, z_source, z_target)
    n, v = z_target.shape
    choice = decide(z_mix, z_source, z_target, targets, use_global=use_global, use_local=use_local)
    g_ids, g_scores = _empty_top(n, 0, z_target)
    if use_global:
        g_scores, g_ids = contrastive_score(z_mix, z_source, z_target).topk(min(top_k, v), dim=-1)
    l_ids, l_scores = _empty_top(n, min(top_k, targets.size), z_target)
    went_local = choice >= 0 if use_local else torch.zeros_like(choice, dtype=torch.bool)  # (N,)
    rows = went_local.nonzero().squeeze(1)
    if rows.numel():
        local = contrastive_score(*(targets.columns(z)[rows] for z in (z_mix, z_source, z_target)))
        scores, cols = local.topk(l_ids.shape[1], dim=-1)
        l_ids[rows], l_scores[rows] = targets.dense_ids(cols), scores
    return Explained(choice, g_ids, g_scores, l_ids, l_scores)


def _empty_top(n: int, k: int, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.full((n, k), -1, dtype=torch.long, device=like.device)
    return ids, torch.full((n, k), math.nan, dtype=like.dtype, device=like.device)


def _compute_dtype(*zs: torch.Tensor) -> tuple[torch.Tensor, ...]:
    # float64 stays float64 (tests); everything else (e.g. bf16/fp16 logits) is scored in float32
    dtype = torch.float64 if any(z.dtype == torch.float64 for z in zs) else torch.float32
    return tuple(z.to(dtype) for z in zs)


# -- results ------------------------------------------------------------------------


@dataclass(frozen=True)
class DecodeOptions:
    no_adaptation: bool = False  # experts := the mixed model
    no_source_experts: bool = False  # z^S := z^M
    no_global: bool = False  # always go local
    no_local: bool = False  # replace with the global argmax when it is a target item
    explain_top_k: int = 0  # > 0: attach top-k global/local candidates to every decided item
    # not in METHOD.md: discard a replacement that repeats any item already in the output
    # row (reason "repeat"), not only the previous one. Logs where a user meets an item
    # once (ratings, purchases) never repeat, but the rule often picks the same popular
    # target item for many positions of one row (docs/results/ml100k.md).
    drop_repeats: bool = False

    def __post_init__(self) -> None:
        if self.no_global and self.no_local:
            raise ValueError("no_global and no_local together leave no score to decide with")
        if self.explain_top_k < 0:
            raise ValueError("explain_top_k must be >= 0")


@dataclass(frozen=True)
class Decision:
    position: int  # in the input sequence
    item: int | str  # dense id; the raw external id when the item is unknown (domain None)
    domain: int | None  # domain index
    action: Action
    replacement: int | None  # dense id; kept on a "duplicate" discard for transparency
    reason: str | None  # "global_not_target" | "no_context" | "duplicate" | "repeat" | "unknown_item"
    explain: dict | None = None  # {"global": [(id, g), ...], "local": [(id, l), ...]}


@dataclass(frozen=True)
class Regenerated:
    sequence: list[int]  # dense ids of target items
    decisions: list[Decision]  # one per input item, in input order
    stats: dict[str, int]  # {"kept", "replaced", "discarded"}


NO_CONTEXT = -2  # raw code: a source item at position 0


def assemble(
    items: Sequence[int],
    domains: Sequence[int],
    raw: Sequence[int],
    target: int,
    explain: Mapping[int, dict] | None = None,
    *,
    drop_repeats: bool = False,
) -> Regenerated:
    """Post-processing of METHOD.md §3 for one sequence. raw[j] is the replacing dense
    id of a source item at j, -1 for a discard, NO_CONTEXT at position 0 (ignored for
    target items). Consecutive duplicates collapse; the later copy is discarded. With
    drop_repeats, a replacement already anywhere in the output is discarded too (target
    items are always kept)."""
    sequence: list[int] = []
    emitted: set[int] = set()
    decisions: list[Decision] = []
    for j, (item, dom, r) in enumerate(zip(items, domains, raw, strict=True)):
        item, dom, r = int(item), int(dom), int(r)
        if dom == target:
            action, out, reason, replacement = "keep", item, None, None
        elif r >= 0:
            action, out, reason, replacement = "replace", r, None, r
        else:
            reason = "no_context" if r == NO_CONTEXT else "global_not_target"
            action, out, replacement = "discard", None, None
        if out is not None and sequence and sequence[-1] == out:
            action, out, reason = "discard", None, "duplicate"
        elif drop_repeats and action == "replace" and out in emitted:
            action, out, reason = "discard", None, "repeat"
        if out is not None:
            sequence.append(out)
            emitted.add(out)
        decisions.append(Decision(j, item, dom, action, replacement, reason, explain.get(j) if explain else None))
    return Regenerated(sequence, decisions, _stats(decisions))


def _stats(decisions: Sequence[Decision]) -> dict[str, int]:
    counts = {"kept": 0, "replaced": 0, "discarded": 0}
    for d in decisions:
        counts[{"keep": "kept", "replace": "replaced", "discard": "discarded"}[d.action]] += 1
    return counts


# -- the batched engine ---------------------------------------------------------------

# Live [rows, V] float32 tensors while scoring one chunk: 3 logits + ~7 temporaries in
# contrastive_score + the local copies. Sizes the chunk from the memory budget.
_LIVE_SCORE_TENSORS = 12
# On CPU, decide's ~30 elementwise passes are fastest when one chunk's temporaries stay
# cache-sized (measured: ~5x faster at 1-2 rows than at 16 for V=200k); the logits
# matmul prefers many rows (it reads the whole item table once per chunk), so logits are
# computed per budget-sized chunk and decided in cache-sized slices of it.
_CPU_DECIDE_BYTES = 2 << 20

MemoryBudget = float | Literal["auto"]
# "auto" on CPU: a fixed budget, because host RAM is shared with everything else on the
# machine (other processes, the page cache) and its free amount says little about what
# this process may take. At 200k items it still holds dozens of rows per chunk.
CPU_AUTO_BUDGET_MB = 256.0
# "auto" on CUDA: this share of the device's free memory when the engine is created. The
# rest is head-room for what the budget does not count: the forward passes' activations,
# the caching allocator's fragmentation, and models loaded after this one.
CUDA_AUTO_SHARE = 0.5


def resolve_memory_budget_mb(
    budget: MemoryBudget, device: str | torch.device, *, free_bytes: int | None = None, sharers: int = 1
) -> float:
    """The budget in MB for `budget` ("auto" or a number, which always wins) on `device`.

    On CUDA, "auto" is CUDA_AUTO_SHARE of the free memory (`free_bytes`, or what
    torch.cuda.mem_get_info reports now), split evenly between `sharers` decodes that
    can run at once in this process; elsewhere it is CPU_AUTO_BUDGET_MB.
    """
    if budget != "auto":
        if isinstance(budget, bool) or not isinstance(budget, int | float) or not math.isfinite(budget):
            raise ConfigError(f"memory budget must be a positive number of MB or 'auto', got {budget!r}")
        return float(budget)
    device = torch.device(device)
    if device.type != "cuda":
        return CPU_AUTO_BUDGET_MB
    if free_bytes is None:
        free_bytes, _total = torch.cuda.mem_get_info(device)
    return free_bytes * CUDA_AUTO_SHARE / max(1, sharers) / 2**20


def min_memory_budget_mb(n_items: int, device: str | torch.device) -> float:
    """The smallest budget that holds one row of the score work for n_items items."""
    return _min_budget_bytes(n_items, torch.device(device).type) / 2**20


def _min_budget_bytes(v: int, device_type: str) -> int:
    # CUDA scores each chunk at once; the CPU path also keeps the chunk's 3 logits rows
    # beside the temporaries of the slice being decided
    tensors = _LIVE_SCORE_TENSORS if device_type == "cuda" else 3 + _LIVE_SCORE_TENSORS
    return tensors * v * 4


def _round_up(x: float, digits: int = 2) -> float:
    """x rounded up to `digits` significant digits, so a printed minimum is enough."""
    if x <= 0:
        return x
    scale = 10.0 ** (math.floor(math.log10(x)) - digits + 1)
    return math.ceil(x / scale) * scale


@dataclass
class _Batch:
    """A batch of sequences as model input rows and decoding queries.

    Rows are slices of `flat` (start, length), built only as views so that sliding
    windows for long sequences cost no memory until a forward pass needs them.
    A query is one source position j >= 1: read hidden state `col` of row `row`.
    """

    flat: np.ndarray  # (P,) dense ids of all sequences, concatenated
    domain: np.ndarray  # (P,) domain index of each
    seq_start: np.ndarray  # (S+1,) offsets into flat
    row_start: np.ndarray  # (R,)
    row_len: np.ndarray  # (R,)
    q_row: np.ndarray  # (Q,) non-decreasing
    q_col: np.ndarray  # (Q,)
    q_flat: np.ndarray  # (Q,) the query's position in flat


def _build_batch(
    seqs: Sequence[Sequence[int]], item_domain: np.ndarray, target: int, max_len: int, first_index: int = 0
) -> _Batch:
    lengths = np.fromiter((len(s) for s in seqs), dtype=np.int64, count=len(seqs))
    seq_start = np.concatenate([[0], np.cumsum(lengths)])
    flat = np.fromiter((i for s in seqs for i in s), dtype=np.int64, count=int(seq_start[-1]))
    _check_dense(flat, seq_start, len(item_domain), first_index)
    domain = item_domain[flat].astype(np.int64)  # (P,)
    pos = np.arange(len(flat)) - np.repeat(seq_start[:-1], lengths)  # (P,) position in its sequence
    seq_of = np.repeat(np.arange(len(seqs)), lengths)
    source = (domain != target) & (pos >= 1)
    head = source & (pos <= max_len)  # decided inside the first max_len items
    tail = source & (pos > max_len)  # needs its own window x[j-max_len:j]
    n_tail = int(tail.sum())
    head_q, tail_q = np.flatnonzero(head), np.flatnonzero(tail)
    return _Batch(
        flat=flat,
        domain=domain,
        seq_start=seq_start,
        row_start=np.concatenate([seq_start[:-1], tail_q - max_len]),
        row_len=np.concatenate([np.minimum(lengths, max_len), np.full(n_tail, max_len)]),
        q_row=np.concatenate([seq_of[head_q], len(seqs) + np.arange(n_tail)]),
        q_col=np.concatenate([pos[head_q] - 1, np.full(n_tail, max_len - 1)]),
        q_flat=np.concatenate([head_q, tail_q]),
    )


def _check_dense(flat: np.ndarray, seq_start: np.ndarray, v: int, first_index: int) -> None:
    bad = np.flatnonzero((flat < 0) | (flat >= v))
    if len(bad):
        k = int(np.searchsorted(seq_start, bad[0], side="right")) - 1
        raise UnknownItemError(
            f"sequence {first_index + k}: dense id {int(flat[bad[0]])} is outside 0..{v - 1}",
            {"sequence": first_index + k, "item": int(flat[bad[0]])},
        )


class Regenerator:
    """Regenerates mixed sequences of dense ids into target-domain sequences.

    One causal forward pass per needed model per batch: the mixed model and the target
    expert on rows having a source item, each source expert on rows holding its
    domain's items. Only source positions are scored. The models are moved to
    `device` and put in eval mode.
    """

    def __init__(
        self,
        catalogue: Catalogue,
        mixed: SASRec,
        experts: Mapping[str, SASRec],
        *,
        device: str | torch.device = "cpu",
        batch_size: int = 256,
        memory_budget_mb: MemoryBudget = "auto",
    ) -> None:
        missing = [d for d in catalogue.domains if d not in experts]
        if missing:
            raise ValueError(f"no expert for domains {missing}")
        if any(m.cfg.n_items != catalogue.n_items for m in (mixed, *experts.values())):
            raise ValueError("the models and the catalogue disagree on the number of items")
        self.catalogue = catalogue
        self.device = torch.device(device)
        self.mixed = mixed.to(self.device).eval()
        self.experts = {d: experts[d].to(self.device).eval() for d in catalogue.domains}
        self.batch_size = batch_size
        # resolved once: "auto" measures the device's free memory now, with the models on it
        self.memory_budget_mb = resolve_memory_budget_mb(memory_budget_mb, self.device)
        self._chunk_rows(catalogue.n_items)  # refuses a budget that holds no row
        self._item_domain = np.asarray(catalogue.item_domain)
        self._max_len = min(m.cfg.max_len for m in (mixed, *self.experts.values()))

    # -- public -------------------------------------------------------------------

    def regenerate(
        self,
        sequences: Sequence[Sequence[int]],
        target: str,
        options: DecodeOptions = DecodeOptions(),
        on_progress: ProgressFn | None = None,
    ) -> list[Regenerated]:
        return list(self.iter_regenerate(sequences, target, options, on_progress))

    def iter_regenerate(
        self,
        sequences: Iterable[Sequence[int]],
        target: str,
        options: DecodeOptions = DecodeOptions(),
        on_progress: ProgressFn | None = None,
    ) -> Iterator[Regenerated]:
        """Streams results in input order; memory is bounded by one batch.
        on_progress receives the number of sequences finished so far."""
        t = self.catalogue.domain_index(target)
        done = 0
        for seqs in self._batches(sequences):
            yield from self._regenerate_batch(seqs, t, options, done)
            done += len(seqs)
            if on_progress is not None:
                on_progress(done)

    # -- internals ----------------------------------------------------------------

    def _batches(self, sequences: Iterable[Sequence[int]]) -> Iterator[list[Sequence[int]]]:
        # cap items too, so a batch of very long sequences (many windows) stays bounded
        max_items = self.batch_size * self._max_len
        batch: list[Sequence[int]] = []
        n_items = 0
        for s in sequences:
            batch.append(s)
            n_items += len(s)
            if len(batch) >= self.batch_size or n_items >= max_items:
                yield batch
                batch, n_items = [], 0
        if batch:
            yield batch

    @torch.inference_mode()
    def _regenerate_batch(
        self, seqs: Sequence[Sequence[int]], target: int, options: DecodeOptions, first_index: int
    ) -> list[Regenerated]:
        b = _build_batch(seqs, self._item_domain, target, self._max_len, first_index)
        raw = np.full(len(b.flat), -1, dtype=np.int64)  # (P,) replacement per position
        starts = b.seq_start[:-1][np.diff(b.seq_start) > 0]
        raw[starts] = NO_CONTEXT  # a source item there is discarded; a target item ignores it
        explain: list[dict | None] = [None] * len(b.flat) if options.explain_top_k else []
        if len(b.q_flat):
            self._decide_queries(b, target, options, raw, explain)
        results = []
        for k in range(len(seqs)):
            lo, hi = int(b.seq_start[k]), int(b.seq_start[k + 1])
            ex = dict(enumerate(explain[lo:hi])) if explain else None
            results.append(
                assemble(b.flat[lo:hi], b.domain[lo:hi], raw[lo:hi], target, ex, drop_repeats=options.drop_repeats)
            )
        return results

    def _decide_queries(
        self, b: _Batch, target: int, options: DecodeOptions, raw: np.ndarray, explain: list[dict | None]
    ) -> None:
        mixed, target_model, source_model = self._models(target, options)
        q_dom = b.domain[b.q_flat]  # (Q,)
        all_q = np.arange(len(q_dom))
        hidden = {id(mixed): self._hidden(mixed, b, all_q)}  # model -> (Q, H) at every query
        if id(target_model) not in hidden:
            hidden[id(target_model)] = self._hidden(target_model, b, all_q)
        targets = self._target_items(target)
        for s in np.unique(q_dom):
            qs = np.flatnonzero(q_dom == s)
            model_s = source_model(int(s))
            h_s = hidden[id(model_s)][qs] if id(model_s) in hidden else self._hidden(model_s, b, qs)
            h = (hidden[id(mixed)][qs], h_s, hidden[id(target_model)][qs])
            out = self._score(h, (mixed, model_s, target_model), targets, options)
            raw[b.q_flat[qs]] = out.choice.cpu().numpy()
            if options.explain_top_k:
                for p, e in zip(b.q_flat[qs].tolist(), _explain_dicts(out), strict=True):
                    explain[p] = e

    def _models(self, target: int, options: DecodeOptions) -> tuple[SASRec, SASRec, Callable[[int], SASRec]]:
        def expert(d: int) -> SASRec:
            return self.mixed if options.no_adaptation else self.experts[self.catalogue.domains[d]]

        def source(d: int) -> SASRec:
            return self.mixed if options.no_source_experts else expert(d)

        return self.mixed, expert(target), source

    def _target_items(self, target: int) -> TargetItems:
        start, end = self.catalogue.domain_range(target)
        return TargetItems(start, end)

    def _hidden(self, model: SASRec, b: _Batch, qs: np.ndarray) -> torch.Tensor:
        """Hidden states (len(qs), H) at the queries qs (sorted), one forward per row."""
        q_row = b.q_row[qs]
        rows = np.unique(q_row)  # (R',) sorted
        dtype = model.item_emb.weight.dtype  # float64 models stay float64 (tests)
        out = torch.empty(len(qs), model.cfg.hidden, dtype=dtype, device=self.device)
        for lo in range(0, len(rows), self.batch_size):
            chunk = rows[lo : lo + self.batch_size]
            a, z = np.searchsorted(q_row, [chunk[0], chunk[-1] + 1])  # this chunk's queries
            tokens = self._tokens(b, chunk)  # (B, L)
            h = model(tokens)  # (B, L, H)
            local_row = torch.as_tensor(np.searchsorted(chunk, q_row[a:z]), device=self.device)
            col = torch.as_tensor(b.q_col[qs[a:z]], device=self.device)
            out[a:z] = h[local_row, col].to(out.dtype)
        return out

    def _tokens(self, b: _Batch, rows: np.ndarray) -> torch.Tensor:
        length = int(b.row_len[rows].max())
        offs = np.arange(length)
        idx = b.row_start[rows, None] + offs[None, :]  # (B, L)
        valid = offs[None, :] < b.row_len[rows, None]
        tokens = np.where(valid, b.flat[np.minimum(idx, len(b.flat) - 1)] + 1, 0)  # dense id + 1, 0 = pad
        return torch.as_tensor(tokens, device=self.device)

    def _score(
        self,
        hidden: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
        models: tuple[SASRec, SASRec, SASRec],
        targets: TargetItems,
        options: DecodeOptions,
    ) -> Explained:
        """Decide n queries from hidden states (n, H) of (mixed, source, target) models,
        in chunks whose [rows, V] logits fit the memory budget."""
        n, v = hidden[0].shape[0], self.catalogue.n_items
        rows, step = self._chunk_rows(v)
        parts: list[Explained] = []
        for lo in range(0, n, rows):
            z = [m.scores(h[lo : lo + rows]) for m, h in zip(models, hidden, strict=True)]  # 3 x (r, V)
            z = list(_compute_dtype(*z))
            for s in range(0, z[0].shape[0], step):
                parts.append(self._decide_chunk([x[s : s + step] for x in z], targets, options))
        return Explained(*(torch.cat(t) for t in zip(*(_fields(p) for p in parts), strict=True)))

    def _decide_chunk(self, z: list[torch.Tensor], targets: TargetItems, options: DecodeOptions) -> Explained:
        flags = {"use_global": not options.no_global, "use_local": not options.no_local}
        if options.explain_top_k:
            return decide_explained(*z, targets, top_k=options.explain_top_k, **flags)
        choice = decide(*z, targets, **flags)
        none = torch.empty(len(choice), 0)
        return Explained(choice, none, none, none, none)

    def _chunk_rows(self, v: int) -> tuple[int, int]:
        """(rows per logits chunk, rows per decide call) for V items, within the budget;
        ConfigError when the budget cannot hold one row."""
        row_bytes = v * 4
        budget = int(self.memory_budget_mb * 2**20)
        if budget < _min_budget_bytes(v, self.device.type):
            raise ConfigError(
                f"memory budget {self.memory_budget_mb:g} MB is too small for a catalogue of {v:,} items: "
                f"one row of the score work on {self.device.type} needs "
                f"{_round_up(min_memory_budget_mb(v, self.device)):g} MB; give at least that, or 'auto'",
                {"memory_budget_mb": self.memory_budget_mb, "n_items": v},
            )
        if self.device.type == "cuda":
            rows = budget // (row_bytes * _LIVE_SCORE_TENSORS)
            return rows, rows
        # CPU: 3 logits buffers of `rows` rows + decide's temporaries for `step` rows; a
        # small budget gives the cache-sized slices at most half of itself
        step = max(1, min(_CPU_DECIDE_BYTES // row_bytes, budget // (2 * row_bytes * _LIVE_SCORE_TENSORS)))
        rows = (budget - step * row_bytes * _LIVE_SCORE_TENSORS) // (3 * row_bytes)
        return rows, min(step, rows)


def _fields(e: Explained) -> tuple[torch.Tensor, ...]:
    return e.choice, e.global_ids, e.global_scores, e.local_ids, e.local_scores


def _explain_dicts(e: Explained) -> list[dict]:
    def pairs(ids: torch.Tensor, scores: torch.Tensor) -> list[list]:
        return [[i, s] for i, s in zip(ids.tolist(), scores.tolist(), strict=True) if i >= 0]

    return [
        {"global": pairs(e.global_ids[r], e.global_scores[r]), "local": pairs(e.local_ids[r], e.local_scores[r])}
        for r in range(len(e.choice))
    ]


# -- external ids ---------------------------------------------------------------------


def regenerate_external(
    regenerator: Regenerator,
    sequences: Sequence[Sequence[str | int]],
    target: str,
    *,
    unknown_items: Literal["error", "drop"] = "error",
    options: DecodeOptions = DecodeOptions(),
    on_progress: ProgressFn | None = None,
) -> list[Regenerated]:
    """Regenerates sequences of external ids. Unknown items raise UnknownItemError
    (checked for all sequences before any decoding) or, with unknown_items="drop",
    are discarded with reason "unknown_item" and take no part in decoding."""
    if unknown_items == "error":
        for k, seq in enumerate(sequences):
            _encode(regenerator.catalogue, seq, k, strict=True)
    return list(
        iter_regenerate_external(
            regenerator, sequences, target, unknown_items=unknown_items, options=options, on_progress=on_progress
        )
    )


def iter_regenerate_external(
    regenerator: Regenerator,
    sequences: Iterable[Sequence[str | int]],
    target: str,
    *,
    unknown_items: Literal["error", "drop"] = "error",
    options: DecodeOptions = DecodeOptions(),
    on_progress: ProgressFn | None = None,
) -> Iterator[Regenerated]:
    """Streaming form of `regenerate_external` (errors surface when reached)."""
    if unknown_items not in ("error", "drop"):
        raise ValueError(f"unknown_items must be 'error' or 'drop', got {unknown_items!r}")
    pending: deque[tuple[Sequence[str | int], list[int]]] = deque()  # (raw sequence, known positions)

    def known_only() -> Iterator[list[int]]:
        for k, seq in enumerate(sequences):
            dense, positions = _encode(regenerator.catalogue, seq, k, strict=unknown_items == "error")
            pending.append((seq, positions))
            yield dense

    for result in regenerator.iter_regenerate(known_only(), target, options, on_progress):
        seq, positions = pending.popleft()
        yield _restore_unknown(result, seq, positions)


def _encode(catalogue: Catalogue, seq: Sequence[str | int], k: int, *, strict: bool) -> tuple[list[int], list[int]]:
    dense: list[int] = []
    positions: list[int] = []
    for j, item in enumerate(seq):
        d = catalogue.get(item)
        if d is None:
            if strict:
                raise UnknownItemError(
                    f"unknown item {item!r} at position {j} of sequence {k}",
                    {"item": str(item), "sequence": k, "position": j},
                )
            continue
        dense.append(d)
        positions.append(j)
    return dense, positions


def _restore_unknown(result: Regenerated, seq: Sequence[str | int], positions: list[int]) -> Regenerated:
    """Maps decision positions back to the input and inserts the unknown items' discards."""
    if len(positions) == len(seq):
        return result
    by_pos = {positions[d.position]: d for d in result.decisions}
    decisions = [
        _moved(by_pos[j], j) if j in by_pos else Decision(j, str(item), None, "discard", None, "unknown_item")
        for j, item in enumerate(seq)
    ]
    return Regenerated(result.sequence, decisions, _stats(decisions))


def _moved(d: Decision, position: int) -> Decision:
    return Decision(position, d.item, d.domain, d.action, d.replacement, d.reason, d.explain)
