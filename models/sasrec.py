"""SASRec: a causal transformer decoder over item sequences (METHOD.md §2).

Token 0 is padding; dense item id i is token i + 1. Scores are returned over the
V real items only (dense ids 0..V-1), so a logit's column *is* the dense id.
Batches are right-padded: with causal attention a real position never sees a
padded one, so no key-padding mask is needed and outputs at real positions do
not depend on how much padding follows.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

PAD = 0


@dataclass(frozen=True)
class SASRecConfig:
    n_items: int
    max_len: int = 128
    hidden: int = 128
    n_layers: int = 2
    n_heads: int = 2
    inner: int = 128
    dropout: float = 0.2

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> SASRecConfig:
        return cls(**{k: d[k] for k in cls.__dataclass_fields__})


class SASRec(nn.Module):
    def __init__(self, cfg: SASRecConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.item_emb = nn.Embedding(cfg.n_items + 1, cfg.hidden, padding_idx=PAD)
        self.pos_emb = nn.Embedding(cfg.max_len, cfg.hidden)
        self.norm = nn.LayerNorm(cfg.hidden, eps=1e-12)
        self.drop = nn.Dropout(cfg.dropout)
        layer = nn.TransformerEncoderLayer(
            d_model=cfg.hidden,
            nhead=cfg.n_heads,
            dim_feedforward=cfg.inner,
            dropout=cfg.dropout,
            activation="gelu",
            batch_first=True,
            norm_first=False,
        )
        self.blocks = nn.TransformerEncoder(layer, cfg.n_layers, enable_nested_tensor=False)
        self.register_buffer("causal", nn.Transformer.generate_square_subsequent_mask(cfg.max_len), persistent=False)
        self.apply(self._init)

    @staticmethod
    def _init(m: nn.Module) -> None:
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, std=0.02)
            if isinstance(m, nn.Linear) and m.bias is not None:
                nn.init.zeros_(m.bias)
        if isinstance(m, nn.Embedding) and m.padding_idx is not None:
            with torch.no_grad():
                m.weight[m.padding_idx].zero_()

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens (B, L) right-padded with PAD, L <= max_len -> hidden states (B, L, H)."""
        length = tokens.shape[1]
        assert length <= self.cfg.max_len, "caller must window sequences longer than max_len"
        pos = torch.arange(length, device=tokens.device)
        x = self.item_emb(tokens) + self.pos_emb(pos)[None]  # (B, L, H)
        x = self.drop(self.norm(x))
        mask = self.causal[:length, :length]
        return self.blocks(x, mask=mask, is_causal=True)  # (B, L, H)

    def item_weights(self) -> torch.Tensor:
        """Tied output embeddings of the V real items, (V, H)."""
        return self.item_emb.weight[1:]

    def scores(self, hidden: torch.Tensor, start: int = 0, end: int | None = None) -> torch.Tensor:
        """Logits of hidden (..., H) against items [start, end) -> (..., end - start)."""
        w = self.item_weights()[start:end]
        return hidden @ w.T
