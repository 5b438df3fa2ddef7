"""The batched engine around the decision rule: the `Regenerator` runs one causal forward
pass per needed model over each batch (teacher forcing: a decision never feeds back into
later prefixes), gathers the hidden state at j-1 for every source item at j, and decides
all those positions at once, chunked so the [n, V] score work stays inside a memory budget."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from models.catalogue import Catalogue
from models.decoding.budget import MemoryBudget, chunk_rows, resolve_memory_budget_mb
from models.decoding.results import NO_CONTEXT, DecodeOptions, Regenerated, assemble
from models.decoding.rule import Explained, TargetItems, compute_dtype, decide, decide_explained
from models.errors import UnknownItemError
from models.sasrec import SASRec

ProgressFn = Callable[[int], None]  # the number of sequences finished so far


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
            z = list(compute_dtype(*z))
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
        """(rows per logits chunk, rows per decide call) for V items (budget.chunk_rows)."""
        return chunk_rows(v, self.memory_budget_mb, self.device)


def _fields(e: Explained) -> tuple[torch.Tensor, ...]:
    return e.choice, e.global_ids, e.global_scores, e.local_ids, e.local_scores


def _explain_dicts(e: Explained) -> list[dict]:
    def pairs(ids: torch.Tensor, scores: torch.Tensor) -> list[list]:
        return [[i, s] for i, s in zip(ids.tolist(), scores.tolist(), strict=True) if i >= 0]

    return [
        {"global": pairs(e.global_ids[r], e.global_scores[r]), "local": pairs(e.local_ids[r], e.local_scores[r])}
        for r in range(len(e.choice))
    ]
