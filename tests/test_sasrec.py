"""SASRec behaviour the rest of the project relies on: causal, padding-invariant, trainable."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from models.sasrec import PAD, SASRec, SASRecConfig

TINY = SASRecConfig(n_items=30, max_len=12, hidden=16, n_layers=1, n_heads=2, inner=16, dropout=0.2)


def _model(cfg: SASRecConfig = TINY) -> SASRec:
    torch.manual_seed(0)
    return SASRec(cfg).eval()


@torch.inference_mode()
def test_a_later_item_does_not_change_earlier_outputs() -> None:
    model = _model()
    a = torch.tensor([[3, 7, 1, 9, 4, 2, 8]])
    b = a.clone()
    b[0, 4:] = torch.tensor([20, 21, 22])
    ha, hb = model(a), model(b)  # (1, L, H)
    torch.testing.assert_close(ha[:, :4], hb[:, :4])
    assert not torch.allclose(ha[:, 4:], hb[:, 4:])


@torch.inference_mode()
def test_right_padding_does_not_change_real_positions() -> None:
    model = _model()
    short = torch.tensor([[5, 6, 7]])
    batch = torch.tensor([[5, 6, 7, PAD, PAD, PAD, PAD], [1, 2, 3, 4, 5, 6, 7]])
    torch.testing.assert_close(model(short)[0], model(batch)[0, :3])


@torch.inference_mode()
def test_scores_columns_are_dense_ids_of_the_requested_range() -> None:
    model = _model()
    hidden = model(torch.tensor([[1, 2, 3]]))[:, -1]  # (1, H)
    full = model.scores(hidden)  # (1, V)
    assert full.shape == (1, TINY.n_items)
    torch.testing.assert_close(model.scores(hidden, 10, 20), full[:, 10:20])


def test_overfitting_one_small_batch_drives_the_loss_near_zero() -> None:
    cfg = SASRecConfig(n_items=40, max_len=12, hidden=32, n_layers=1, n_heads=2, inner=32, dropout=0.0)
    model = _model(cfg).train()
    # distinct items: no two rows share a prefix, so a perfect fit exists (loss -> 0)
    seqs = torch.randperm(cfg.n_items, generator=torch.Generator().manual_seed(1))[:36].reshape(4, 9)
    tokens, targets = seqs[:, :-1] + 1, seqs[:, 1:]  # token = dense id + 1
    opt = torch.optim.Adam(model.parameters(), lr=2e-2)
    for _ in range(60):
        logits = model.scores(model(tokens))  # (B, L, V)
        loss = F.cross_entropy(logits.reshape(-1, cfg.n_items), targets.reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.05
