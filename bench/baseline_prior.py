"""The seed's CodePrior design, kept as the benchmark reference (not used by the app).

nn.TransformerEncoder (batch_first, pre-norm) with an explicit boolean causal mask, the same sizes
as `distill.models.prior.CodePrior`, token + position + level embeddings, and sampling that re-runs
the whole prefix for every new token. Its forward is the seed's: logits[:, t] predicts x[:, t + 1].
"""
from __future__ import annotations

import torch
import torch.nn as nn


class BaselinePrior(nn.Module):
    def __init__(self, codebook_size, seq_len, num_quantizers, hidden_size=256, num_layers=4, num_heads=4, dropout=0.2):
        super().__init__()
        self.codebook_size = codebook_size
        self.seq_len = seq_len
        self.num_quantizers = num_quantizers
        self.token_emb = nn.Embedding(codebook_size, hidden_size)
        self.pos_emb = nn.Embedding(seq_len, hidden_size)
        self.level_emb = nn.Embedding(num_quantizers, hidden_size)
        self.drop = nn.Dropout(dropout)
        layer = nn.TransformerEncoderLayer(
            d_model=hidden_size,
            nhead=num_heads,
            dim_feedforward=4 * hidden_size,
            dropout=dropout,
            activation="gelu",
            batch_first=True,
            norm_first=True,
        )
        self.transformer = nn.TransformerEncoder(layer, num_layers=num_layers, enable_nested_tensor=False)
        self.ln_f = nn.LayerNorm(hidden_size)
        self.head = nn.Linear(hidden_size, codebook_size)
        # True above the diagonal = "may not attend" (the seed's explicit mask buffer)
        mask = torch.triu(torch.ones(seq_len, seq_len, dtype=torch.bool), diagonal=1)
        self.register_buffer("causal_mask", mask, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: [B, T] -> logits [B, T, K]
        b, t = x.shape
        pos = torch.arange(t, device=x.device)
        h = self.token_emb(x) + self.pos_emb(pos) + self.level_emb(pos % self.num_quantizers)
        h = self.drop(h)
        h = self.transformer(h, mask=self.causal_mask[:t, :t])
        return self.head(self.ln_f(h))

    @torch.no_grad()
    def generate(self, n_tokens: int, temperature: float = 1.0, first_token: int = 0, generator=None) -> torch.Tensor:
        """Seed-style sampling: start from one given token, re-run the whole (windowed) prefix per token."""
        self.eval()
        seq = torch.tensor([[first_token]], dtype=torch.long)
        for _ in range(n_tokens):
            window = seq[:, -self.seq_len :]
            # keep the window on level 0 so the level embedding stays right
            drop = (seq.shape[1] - window.shape[1]) % self.num_quantizers
            window = window[:, (self.num_quantizers - drop) % self.num_quantizers :] if drop else window
            logits = self.forward(window)[:, -1] / temperature
            probs = torch.softmax(logits, -1)
            nxt = torch.multinomial(probs, 1, generator=generator)
            seq = torch.cat([seq, nxt], dim=1)
        return seq[:, 1:]
