"""Stage I pretraining: expert targets, rows and batching, early stopping, reproducibility."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.optim.optimizer import register_optimizer_step_post_hook

from models import pretrain as pt
from models.catalogue import Catalogue
from models.data import Dataset, train_part
from models.pretrain import (
    TrainConfig,
    expert_rows,
    fit_mixed,
    make_eval_set,
    mixed_rows,
    next_in_domain,
    pretrain,
)
from models.sasrec import SASRec, SASRecConfig
from models.training import batch_loss, length_buckets

DOMAINS = ("Böcher", "home & garden", "x")


def _tiny_dataset(n_users: int = 24, seed: int = 0) -> Dataset:
    """3 domains x 6 items; each user prefers items with the same parity in every domain."""
    cat = Catalogue.build({f"{d}-{i}": name for d, name in enumerate(DOMAINS) for i in range(6)}, DOMAINS)
    rng = np.random.default_rng(seed)
    seqs = []
    for u in range(n_users):
        n = int(rng.integers(8, 14))
        items = [f"{rng.integers(3)}-{2 * rng.integers(3) + u % 2}" for _ in range(n)]
        seqs.append(np.array(cat.encode(items), dtype=np.int64))
    return Dataset(cat, [f"u{u}" for u in range(n_users)], seqs, {"holdout": 1}, "fp-tiny", "hand-made")


TINY_MODEL = dict(max_len=8, hidden=16, n_layers=1, n_heads=2, inner=16)


def _fast(**kw: object) -> TrainConfig:
    base = dict(epochs=3, patience=2, adapt_epochs=2, lr=1e-2, batch_size=8, seed=3, device="cpu")
    return TrainConfig(**{**base, **kw})


# -- targets and rows ----------------------------------------------------------------


def test_expert_target_is_the_next_item_of_the_same_domain_even_several_steps_ahead() -> None:
    seq = np.array([10, 50, 11, 51, 52, 12, 53])  # domain d = [10, 20)
    targets = next_in_domain(seq, (seq >= 10) & (seq < 20))
    np.testing.assert_array_equal(targets, [11, -1, 12, -1, -1, -1, -1])


def test_expert_rows_use_columns_of_the_domain_softmax_and_skip_the_last_domain_item() -> None:
    seq = np.array([10, 50, 11, 51, 52, 12, 53, 13])  # last item is never an input
    rows = expert_rows([seq], max_len=16, start=10, end=20)
    # targets after the last supervised position are trimmed (causal: they cannot matter)
    np.testing.assert_array_equal(rows.inputs[0], [10, 50, 11, 51, 52, 12])
    np.testing.assert_array_equal(rows.targets[0], [1, -1, 2, -1, -1, 3])


def test_mixed_rows_predict_every_next_item() -> None:
    rows = mixed_rows([np.array([4, 5, 6, 7])], max_len=8)
    np.testing.assert_array_equal(rows.inputs[0], [4, 5, 6])
    np.testing.assert_array_equal(rows.targets[0], [5, 6, 7])


def test_long_sequences_are_windowed_so_every_transition_is_trained_once() -> None:
    seq = np.arange(100, 120)  # 19 transitions, max_len 8 -> windows of 8, 8, 3
    rows = mixed_rows([seq], max_len=8)
    assert sorted(rows.lengths.tolist()) == [3, 8, 8]
    pairs = {
        (int(i), int(t))
        for inp, tgt in zip(rows.inputs, rows.targets, strict=True)
        for i, t in zip(inp, tgt, strict=True)
    }
    assert pairs == {(i, i + 1) for i in range(100, 119)}
    assert all(len(inp) <= 8 for inp in rows.inputs)


def test_length_buckets_cover_every_row_once_with_similar_lengths() -> None:
    lengths = np.array([1, 9, 2, 8, 3, 7, 4, 6, 5, 10])
    batches = length_buckets(lengths, 3, np.random.default_rng(0))
    flat = np.concatenate(batches)
    assert sorted(flat.tolist()) == list(range(10))
    assert all(np.ptp(lengths[b]) <= 2 for b in batches)


def test_validation_points_keep_the_last_max_len_items_of_the_mixed_history() -> None:
    seqs = [np.arange(20), np.array([1, 2, 3])]
    valid = make_eval_set(seqs, "valid", holdout=1, max_len=8)
    np.testing.assert_array_equal(valid.targets, [18, 2])
    np.testing.assert_array_equal(valid.histories[0], np.arange(10, 18))
    np.testing.assert_array_equal(valid.histories[1], [1])


# -- training ------------------------------------------------------------------------


def test_mixed_training_is_reproducible_with_the_same_seed() -> None:
    ds = _tiny_dataset()
    mcfg = SASRecConfig(n_items=ds.catalogue.n_items, **TINY_MODEL)
    a = pretrain(ds, _fast(adapt_epochs=1), model_config=mcfg)
    b = pretrain(ds, _fast(adapt_epochs=1), model_config=mcfg)
    for name, tensor in a.mixed.state_dict().items():
        assert torch.equal(tensor, b.mixed.state_dict()[name]), name
    for d in DOMAINS:
        for name, tensor in a.experts[d].state_dict().items():
            assert torch.equal(tensor, b.experts[d].state_dict()[name]), (d, name)
    c = pretrain(ds, _fast(adapt_epochs=1, seed=4), model_config=mcfg)
    assert not torch.equal(a.mixed.item_emb.weight, c.mixed.item_emb.weight)


def test_early_stopping_restores_the_best_epoch(monkeypatch: pytest.MonkeyPatch) -> None:
    ds = _tiny_dataset()
    mcfg = SASRecConfig(n_items=ds.catalogue.n_items, **TINY_MODEL)
    scripted = iter([0.1, 0.3, 0.2, 0.25, 0.9])  # best at epoch 2, patience 2 -> stops after epoch 4
    snapshots: list[dict[str, torch.Tensor]] = []

    def fake_eval(model: SASRec, *_: object) -> dict[str, float]:
        snapshots.append({k: v.clone() for k, v in model.state_dict().items()})
        return {"NDCG@10": next(scripted)}

    monkeypatch.setattr(pt, "evaluate_mixed", fake_eval)
    torch.manual_seed(0)
    model = SASRec(mcfg)
    rows = mixed_rows([train_part(s) for s in ds.sequences], mcfg.max_len)
    calls: list[tuple] = []
    epochs_run, best_epoch, history, _ = fit_mixed(
        model, rows, None, _fast(epochs=10), torch.device("cpu"), lambda *a: calls.append(a)
    )
    assert (epochs_run, best_epoch) == (4, 2)
    assert [h["epoch"] for h in history] == [1, 2, 3, 4]
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, snapshots[1][name]), name
    assert not torch.equal(model.item_emb.weight, snapshots[3]["item_emb.weight"])
    assert calls[-1][:3] == ("mixed", 4, 4)  # the bar is completed when training stops early


def test_pretrain_returns_one_expert_per_domain_and_validation_metrics() -> None:
    ds = _tiny_dataset()
    mcfg = SASRecConfig(n_items=ds.catalogue.n_items, **TINY_MODEL)
    phases: set[str] = set()
    result = pretrain(ds, _fast(), model_config=mcfg, progress=lambda p, *_: phases.add(p))
    assert set(result.experts) == set(DOMAINS)
    assert phases == {"mixed", *(f"expert:{d}" for d in DOMAINS)}
    assert not result.mixed.training and all(not e.training for e in result.experts.values())
    assert not torch.equal(result.experts[DOMAINS[0]].item_emb.weight, result.mixed.item_emb.weight)
    m = result.metrics
    assert m["mixed"]["n"] == len(ds.sequences)
    per_domain = [m["domains"][d]["expert"]["n"] for d in DOMAINS]
    assert sum(per_domain) == len(ds.sequences)  # every valid target lies in exactly one domain
    assert all(m["domains"][d]["mixed"]["n"] == m["domains"][d]["expert"]["n"] for d in DOMAINS)
    assert 0.0 <= m["mixed"]["NDCG@10"] <= 1.0
    assert result.training["epochs_run"] == result.epochs_run <= 3
    assert {"prepare", "mixed", "evaluate", "total"} <= set(result.timings)


def test_expert_training_only_sees_the_domain_softmax() -> None:
    """An item outside d gets no gradient through the output layer, so its embedding
    only moves as an input; an item of d that never occurs still moves as a softmax column."""
    ds = _tiny_dataset()
    mcfg = SASRecConfig(n_items=ds.catalogue.n_items, **TINY_MODEL, dropout=0.0)
    start, end = ds.catalogue.domain_range(0)
    torch.manual_seed(0)
    model = SASRec(mcfg)
    tokens = torch.tensor([[start + 1, end + 1, start + 2]])  # inputs: d, other, d (tokens = id + 1)
    targets = torch.tensor([[1, -1, -1]])  # column 1 of d's softmax
    batch_loss(model, tokens, targets, start, end).backward()
    grad = model.item_emb.weight.grad  # (V + 1, H)
    unseen_other = end + 3  # token of an item outside d that is not an input
    assert grad[unseen_other].abs().sum() == 0
    assert grad[start + 5 + 1].abs().sum() > 0  # unseen d item: still a softmax column


def test_scoring_an_expert_after_every_adaptation_epoch_leaves_it_unchanged() -> None:
    """adapt_expert's on_epoch hook (used to choose adaptation epochs on validation) may
    evaluate the expert; that must not move the trajectory the bundle's expert follows."""
    ds = _tiny_dataset()
    cfg = _fast(adapt_epochs=3)
    mcfg = SASRecConfig(n_items=ds.catalogue.n_items, **TINY_MODEL)  # dropout on: masks use the RNG
    torch.manual_seed(0)
    mixed = SASRec(mcfg)
    span = ds.catalogue.domain_range(1)
    rows = expert_rows([train_part(s, 1) for s in ds.sequences], mcfg.max_len, *span)
    valid = make_eval_set(ds.sequences, "valid", 1, mcfg.max_len)
    device = torch.device("cpu")
    seen: list[tuple[int, float]] = []

    def score(epoch: int, loss: float, expert: SASRec) -> None:
        seen.append((epoch, pt.evaluate_domain(expert, valid, span, cfg, device)["NDCG@10"]))

    plain = pt.adapt_expert(mixed, rows, span, "x", (3, 2), cfg, device, None)
    scored = pt.adapt_expert(mixed, rows, span, "x", (3, 2), cfg, device, None, on_epoch=score)
    assert [e for e, _ in seen] == [1, 2, 3]
    a, b = plain.state_dict(), scored.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(plain.item_emb.weight, mixed.item_emb.weight)  # it did adapt


def test_model_config_must_match_the_catalogue() -> None:
    ds = _tiny_dataset()
    with pytest.raises(ValueError, match="n_items"):
        pretrain(ds, _fast(), model_config=SASRecConfig(n_items=3, **TINY_MODEL))


def test_train_config_rejects_bad_values() -> None:
    with pytest.raises(ValueError, match="device"):
        TrainConfig(device="tpu")
    with pytest.raises(ValueError, match="patience"):
        TrainConfig(patience=0)
    for lr in (0.0, -1e-3, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="lr"):
            TrainConfig(lr=lr)


def test_max_steps_caps_each_phase_across_epochs_and_still_validates_in_full() -> None:
    ds = _tiny_dataset()
    mcfg = SASRecConfig(n_items=ds.catalogue.n_items, **TINY_MODEL)
    train = [train_part(s, 1) for s in ds.sequences]
    per_epoch = -(-len(mixed_rows(train, mcfg.max_len).inputs) // 8)  # batches of 8 rows
    cap = per_epoch + 1  # one step into the second epoch
    taken: list[int] = []
    hook = register_optimizer_step_post_hook(lambda *_: taken.append(1))
    try:
        result = pretrain(ds, _fast(epochs=10, patience=10, adapt_epochs=5, max_steps=cap), model_config=mcfg)
    finally:
        hook.remove()
    assert result.epochs_run == len(result.history) == 2  # the cut epoch still counts and is validated
    expert_steps = {
        f"expert:{d}": min(
            cap, 5 * -(-len(expert_rows(train, mcfg.max_len, *ds.catalogue.domain_range(k)).inputs) // 8)
        )
        for k, d in enumerate(DOMAINS)
    }
    assert result.steps == {"mixed": cap, **expert_steps}
    assert len(taken) == sum(result.steps.values())  # counted by the optimisers themselves
    assert result.training["steps"] == result.steps and result.training["max_steps"] == cap
    assert result.metrics["mixed"]["n"] == len(ds.sequences)


def test_a_plain_run_records_no_step_count_and_no_launch() -> None:
    ds = _tiny_dataset()
    result = pretrain(ds, _fast(adapt_epochs=1), model_config=SASRecConfig(n_items=ds.catalogue.n_items, **TINY_MODEL))
    assert result.training["max_steps"] is None
    assert not {"steps", "world_size", "backend"} & result.training.keys()
    assert TrainConfig.from_dict(result.training) == result.config


def test_max_steps_must_be_a_positive_integer() -> None:
    for bad in (0, -3, 2.5):
        with pytest.raises(ValueError, match="max_steps"):
            TrainConfig(max_steps=bad)  # type: ignore[arg-type]
    assert TrainConfig(max_steps=1).max_steps == 1
