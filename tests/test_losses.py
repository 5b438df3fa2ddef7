"""The tiled cross-entropy and the tiled ranking against their materialised versions,
the logits budget that chooses between them, and its place in the configs."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from models.bundle import read_manifest
from models.catalogue import Catalogue
from models.data import Dataset
from models.downstream import DownstreamConfig, GRU4Rec, GRU4RecConfig
from models.losses import (
    DEFAULT_LOGITS_BUDGET_MB,
    LOGIT_BYTES,
    MIN_LOGITS_BUDGET_MB,
    chunk_shape,
    linear_cross_entropy,
)
from models.metrics import rank_of_dot_targets, rank_of_targets
from models.pretrain import PretrainResult, TrainConfig
from models.sasrec import SASRec, SASRecConfig
from models.training import batch_loss, ranks_in_span

TINY_MODEL = {"max_len": 8, "hidden": 16, "n_layers": 1, "n_heads": 2, "inner": 16}
F64_TOL = {"rtol": 1e-10, "atol": 1e-12}  # float64: the tiles only reorder sums
F32_TOL = {"rtol": 1e-5, "atol": 1e-6}  # float32: the same reordering at float32 rounding


def _problem(n: int, c: int, h: int, dtype: torch.dtype, seed: int) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(n, h, generator=g, dtype=dtype).requires_grad_()
    weight = torch.randn(c, h, generator=g, dtype=dtype).requires_grad_()
    targets = torch.randint(c, (n,), generator=g)
    return hidden, weight, targets


def _loss_and_grads(
    fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], hidden: torch.Tensor, weight: torch.Tensor
) -> tuple[torch.Tensor, ...]:
    loss = fn(hidden, weight)
    return (loss.detach(), *torch.autograd.grad(loss, (hidden, weight)))


def _assert_matches_full(
    hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, rows: int, cols: int, tol: dict
) -> None:
    want = _loss_and_grads(lambda h, w: F.cross_entropy(h @ w.T, targets), hidden, weight)
    got = _loss_and_grads(lambda h, w: linear_cross_entropy(h, w, targets, rows, cols), hidden, weight)
    for name, a, b in zip(("loss", "grad hidden", "grad weight"), got, want, strict=True):
        torch.testing.assert_close(a, b, **tol, msg=lambda m, name=name: f"{name}: {m}")


# -- the tiled loss ---------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(1, 40),
    c=st.integers(1, 60),
    h=st.integers(1, 8),
    rows=st.integers(1, 45),
    cols=st.integers(1, 65),
    seed=st.integers(0, 2**16),
)
def test_tiled_loss_and_gradients_equal_cross_entropy_in_float64(
    n: int, c: int, h: int, rows: int, cols: int, seed: int
) -> None:
    _assert_matches_full(*_problem(n, c, h, torch.float64, seed), rows, cols, F64_TOL)


@pytest.mark.parametrize(("rows", "cols"), [(7, 11), (1, 1), (50, 3), (3, 97), (64, 97)])
def test_tiled_loss_and_gradients_equal_cross_entropy_in_float32(rows: int, cols: int) -> None:
    _assert_matches_full(*_problem(50, 97, 16, torch.float32, seed=1), rows, cols, F32_TOL)


def test_a_target_at_every_position_of_a_tile() -> None:
    """Every column is some row's target, with tiles that divide neither n nor C, so
    targets fall on each tile's first, last and inner columns and on its last rows."""
    c = 23
    hidden, weight, _ = _problem(2 * c, c, 5, torch.float64, seed=2)
    targets = torch.cat([torch.arange(c), torch.arange(c).flip(0)])
    for rows, cols in [(5, 4), (1, 7), (46, 1), (9, 23)]:
        _assert_matches_full(hidden, weight, targets, rows, cols, F64_TOL)


def test_tiled_loss_passes_gradcheck() -> None:
    hidden, weight, targets = _problem(9, 13, 3, torch.float64, seed=3)
    assert torch.autograd.gradcheck(lambda h, w: linear_cross_entropy(h, w, targets, 4, 5), (hidden, weight))


def test_extreme_logits_stay_finite() -> None:
    """Logits of +-1000 would overflow a naive exp; the running max keeps them finite."""
    hidden, weight, targets = _problem(12, 30, 4, torch.float64, seed=4)
    with torch.no_grad():
        weight.mul_(300.0)
    _assert_matches_full(hidden, weight, targets, 5, 7, F64_TOL)
    assert torch.isfinite(linear_cross_entropy(hidden, weight, targets, 5, 7))


def test_bf16_hidden_states_under_autocast_give_float32_tile_logits() -> None:
    """As on CUDA, where the hidden states reach the loss in bf16 and the matmuls run
    in bf16: the tiled loss matches the unchunked one to bf16 precision, and each input
    gets a gradient of its own dtype."""
    hidden, weight, targets = _problem(40, 50, 16, torch.float32, seed=7)
    half = hidden.detach().bfloat16().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        want = _loss_and_grads(lambda h, w: F.cross_entropy((h @ w.T).float(), targets), half, weight)
        got = _loss_and_grads(lambda h, w: linear_cross_entropy(h, w, targets, 7, 9), half, weight)
    assert got[0].dtype == torch.float32 and got[1].dtype == torch.bfloat16 and got[2].dtype == torch.float32
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a.float(), b.float(), rtol=2e-2, atol=2e-3)


def test_only_the_inputs_that_need_a_gradient_get_one() -> None:
    hidden, weight, targets = _problem(6, 8, 3, torch.float64, seed=5)
    frozen = weight.detach()
    loss = linear_cross_entropy(hidden, frozen, targets, 4, 3)
    (grad,) = torch.autograd.grad(loss, hidden)
    want = torch.autograd.grad(F.cross_entropy(hidden @ frozen.T, targets), hidden)[0]
    torch.testing.assert_close(grad, want, **F64_TOL)


# -- the budget -------------------------------------------------------------------------


def test_chunk_shape_fits_the_whole_matrix_then_row_tiles_then_square_tiles() -> None:
    assert chunk_shape(10, 20, 10 * 20 * 16, 16) == (10, 20)  # exactly fits
    assert chunk_shape(10, 20, 10 * 20 * 16 - 1, 16) == (5, 20)  # whole rows, in even tiles (not 9 + 1)
    assert chunk_shape(10, 20, 3 * 20 * 16 + 15, 16) == (3, 20)  # 3 + 3 + 3 + 1: no split is more even
    assert chunk_shape(11, 20, 4 * 20 * 16, 16) == (4, 20)  # 4 + 4 + 3
    assert chunk_shape(10, 20, 19 * 16, 16) == (4, 4)  # not one row: square-ish tiles of <= 19 cells
    assert chunk_shape(300, 20, 299 * 20 * 16, 16) == (150, 20)  # not 299 rows + 1
    assert chunk_shape(1, 30, 29 * 16, 16) == (1, 15)  # not 29 items + 1
    assert chunk_shape(10, 20, 16, 16) == (1, 1)
    assert chunk_shape(0, 20, 16, 16) == (1, 20)  # nothing to tile: counts as fitting


def test_a_budget_below_one_logit_is_refused() -> None:
    with pytest.raises(ValueError, match="cannot hold one 16-byte element"):
        chunk_shape(10, 20, 15, 16)
    too_small = MIN_LOGITS_BUDGET_MB / 2
    for bad in (0.0, -1.0, too_small, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="logits_budget_mb must be a finite number of MB"):
            TrainConfig(logits_budget_mb=bad)
        with pytest.raises(ValueError, match="logits_budget_mb must be a finite number of MB"):
            DownstreamConfig(logits_budget_mb=bad)
    TrainConfig(logits_budget_mb=MIN_LOGITS_BUDGET_MB)  # the minimum itself: one logit per tile


def _tiny_step(model: torch.nn.Module, batch: tuple[torch.Tensor, torch.Tensor], budget_mb: float) -> torch.nn.Module:
    """One SGD step on span [3, V). SGD, not Adam: Adam's first step is lr * sign(grad),
    which turns rounding noise in a near-zero gradient into a full-size step."""
    model = copy.deepcopy(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    batch_loss(model, *batch, 3, model.cfg.n_items, budget_mb).backward()
    opt.step()
    return model


@pytest.mark.parametrize("backbone", ["sasrec", "gru4rec"])
@pytest.mark.parametrize("cells", [100, 20])  # logits in a tile: rows of all 37 items; square tiles
def test_a_training_step_is_the_same_under_a_tiny_and_a_huge_budget(backbone: str, cells: int) -> None:
    n_items = 40
    torch.manual_seed(1)
    if backbone == "sasrec":
        model: torch.nn.Module = SASRec(SASRecConfig(n_items=n_items, **TINY_MODEL, dropout=0.0))
    else:
        model = GRU4Rec(GRU4RecConfig(n_items=n_items, max_len=8, hidden=8, gru_hidden=12, dropout=0.0))
    tokens = torch.randint(1, n_items + 1, (4, 6))
    targets = torch.randint(-1, n_items - 3, (4, 6))  # -1: no loss at that position
    tiny = cells * LOGIT_BYTES / 2**20
    n, c = int((targets >= 0).sum()), n_items - 3
    rows, cols = chunk_shape(n, c, int(tiny * 2**20), LOGIT_BYTES)
    assert rows < n  # several row tiles
    assert cols == c if cells >= c else cols < c  # whole rows, or square tiles
    a = _tiny_step(model, (tokens, targets), 1e6).state_dict()
    b = _tiny_step(model, (tokens, targets), tiny).state_dict()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6, msg=lambda m, k=k: f"{k}: {m}")
    assert not torch.equal(a["item_emb.weight"], model.state_dict()["item_emb.weight"])  # it did move


def test_a_batch_that_fits_takes_the_plain_cross_entropy_bit_for_bit() -> None:
    torch.manual_seed(2)
    model = SASRec(SASRecConfig(n_items=30, **TINY_MODEL, dropout=0.0))
    tokens, targets = torch.randint(1, 31, (3, 5)), torch.randint(-1, 30, (3, 5))
    live = targets >= 0
    want = F.cross_entropy(model.scores(model(tokens)[live]).float(), targets[live])
    assert torch.equal(batch_loss(model, tokens, targets, 0, 30), want)
    n = int(live.sum())
    exact = n * 30 * LOGIT_BYTES / 2**20
    assert torch.equal(batch_loss(model, tokens, targets, 0, 30, exact), want)


def test_an_absurdly_small_budget_fails_the_step_with_a_clear_error() -> None:
    model = SASRec(SASRecConfig(n_items=10, **TINY_MODEL))
    with pytest.raises(ValueError, match="cannot hold one"):
        batch_loss(model, torch.ones(1, 3, dtype=torch.long), torch.zeros(1, 3, dtype=torch.long), 0, 10, 1e-9)


# -- the configs ------------------------------------------------------------------------


def test_the_budget_round_trips_through_a_bundle_manifest(tmp_path: Path) -> None:
    cat = Catalogue.build({f"{d}-{i}": d for d in ("a", "b") for i in range(3)}, ("a", "b"))
    ds = Dataset(cat, ["u0"], [np.arange(6, dtype=np.int64)], {"holdout": 1}, "fp", "hand-made")
    mcfg = SASRecConfig(n_items=ds.catalogue.n_items, **TINY_MODEL)
    model = SASRec(mcfg)
    cfg = TrainConfig(epochs=1, logits_budget_mb=12.5)
    result = PretrainResult(model, dict.fromkeys(ds.catalogue.domains, model), {}, mcfg, cfg, 1, 1, {"total": 0.0})
    training = read_manifest(result.save(tmp_path / "b", ds))["training"]
    assert training["logits_budget_mb"] == 12.5
    assert TrainConfig.from_dict(training) == cfg
    old = {k: v for k, v in training.items() if k != "logits_budget_mb"}  # written before the field existed
    assert TrainConfig.from_dict(old).logits_budget_mb == DEFAULT_LOGITS_BUDGET_MB
    assert TrainConfig.from_dict(json.loads(json.dumps(asdict(cfg)))) == cfg


def test_downstream_fingerprints_ignore_the_budget_where_it_cannot_change_a_number() -> None:
    """Run logs fingerprinted before the budget existed must still match: a training whose
    batches and rankings all fit the budget leaves it out; one that can be tiled keeps it."""
    cfg = DownstreamConfig()  # batch 128 x 128 positions at 16 B per logit
    fits = int(DEFAULT_LOGITS_BUDGET_MB * 2**20) // (128 * 128 * 16)  # items whose batch logits fit
    assert fits >= 1682  # every ml100k training keeps the plain path
    before = {k: v for k, v in cfg.to_dict().items() if k != "logits_budget_mb"}
    assert cfg.to_dict()["logits_budget_mb"] == DEFAULT_LOGITS_BUDGET_MB
    assert cfg.fingerprint_dict(fits, eval_scores=1000 * 1682) == before
    assert cfg.fingerprint_dict(fits + 1, 1000 * 1682)["logits_budget_mb"] == DEFAULT_LOGITS_BUDGET_MB
    tiled_eval = int(DEFAULT_LOGITS_BUDGET_MB * 2**20) // 5 + 1
    assert "logits_budget_mb" in cfg.fingerprint_dict(1682, eval_scores=tiled_eval)  # ranked in tiles
    small = DownstreamConfig(logits_budget_mb=1.0)
    assert small.fingerprint_dict(1682, 100) != cfg.fingerprint_dict(1682, 100)
    assert DownstreamConfig(logits_budget_mb=4096.0).fingerprint_dict(1682, 100) == before


# -- the tiled ranking ------------------------------------------------------------------


def _integer_scores_problem(n: int, c: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Small-integer vectors, so every tile and the full matmul give identical scores and
    ties are common; one item scores -inf, +inf or NaN (0 * -inf) depending on the user,
    one user scores NaN everywhere, and some targets are those odd items."""
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randint(-2, 3, (n, 4), generator=g).float()
    weights = torch.randint(-2, 3, (c, 4), generator=g).float()
    weights[c // 2] = torch.tensor([-np.inf, 0.0, 0.0, 0.0])
    weights[-1] = torch.nan
    hidden[n // 3] = torch.nan
    targets = torch.randint(c, (n,), generator=g)
    targets[::5] = c // 2
    targets[1::7] = c - 1
    return hidden, weights, targets


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(1, 30),
    c=st.integers(2, 40),
    rows=st.integers(1, 33),
    cols=st.integers(1, 43),
    seed=st.integers(0, 2**16),
)
def test_tiled_ranks_equal_full_ranks_with_ties_nan_and_inf(n: int, c: int, rows: int, cols: int, seed: int) -> None:
    hidden, weights, targets = _integer_scores_problem(n, c, seed)
    want = rank_of_targets(hidden @ weights.T, targets)
    np.testing.assert_array_equal(rank_of_dot_targets(hidden, weights, targets, rows, cols), want)


def test_integer_problem_has_ties_and_every_kind_of_unrankable_target() -> None:
    hidden, weights, targets = _integer_scores_problem(30, 20, seed=0)
    scores = hidden @ weights.T
    target_scores = scores.gather(1, targets[:, None])[:, 0]
    assert ((scores == target_scores[:, None]).sum(1) > 1).any()  # ties
    assert target_scores.isnan().any() and target_scores.isneginf().any() and target_scores.isposinf().any()


def _float_problem() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Real-valued scores with exact ties: item c + 150 duplicates item c."""
    g = torch.Generator().manual_seed(6)
    hidden = torch.randn(300, 24, generator=g)
    weights = torch.randn(211, 24, generator=g)
    weights[150:] = weights[:61]
    return hidden, weights, torch.randint(211, (300,), generator=g)


@pytest.mark.parametrize("rows", [7, 64, 150])
def test_row_tiles_rank_float_scores_as_the_full_matrix(rows: int) -> None:
    """With every item in a tile, each row's scores come from one matmul: the ranks are
    the full matrix's wherever the BLAS gives a row tile the full matrix's bits."""
    hidden, weights, targets = _float_problem()
    full = hidden @ weights.T
    assert torch.equal(full[:, 150:], full[:, :61])  # the reference has the exact ties
    if not all(torch.equal(hidden[a : a + rows] @ weights.T, full[a : a + rows]) for a in range(0, 300, rows)):
        pytest.skip(f"this BLAS rounds a {rows}-row matmul differently from the full one")
    np.testing.assert_array_equal(
        rank_of_dot_targets(hidden, weights, targets, rows, 211), rank_of_targets(full, targets)
    )


@pytest.mark.parametrize(("rows", "cols"), [(1, 1), (1, 13), (7, 13), (64, 100), (300, 16)])
def test_item_tiles_read_each_target_score_out_of_its_own_tile(rows: int, cols: int) -> None:
    """The ranks are exactly those of the tiles' own scores: a target's score is the entry
    of the matmul that scored its tile, never a separately rounded dot product, so the
    target's own column never counts as higher than itself."""
    hidden, weights, targets = _float_problem()
    tiles = [
        torch.cat([hidden[a : a + rows] @ weights[b : b + cols].T for b in range(0, 211, cols)], dim=1)
        for a in range(0, 300, rows)
    ]
    want = rank_of_targets(torch.cat(tiles), targets)
    np.testing.assert_array_equal(rank_of_dot_targets(hidden, weights, targets, rows, cols), want)
    assert (want >= 1).all()


def test_ranks_in_span_is_the_same_under_any_budget() -> None:
    torch.manual_seed(3)
    model = SASRec(SASRecConfig(n_items=50, **TINY_MODEL)).eval()
    hidden = torch.randn(37, TINY_MODEL["hidden"])
    targets = np.random.default_rng(0).integers(10, 45, size=37)
    want = ranks_in_span(model, hidden, targets, 10, 45)
    for budget_mb in (1e6, 200 * 5 / 2**20, 20 * 5 / 2**20, 5 / 2**20):  # whole, row tiles, square tiles, 1 x 1
        np.testing.assert_array_equal(ranks_in_span(model, hidden, targets, 10, 45, budget_mb), want)
