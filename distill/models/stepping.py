"""One-token sampling steps of a CodePrior: the torch reference (`TorchStepper`, built on
`Block.step` and its `KVCache`) and which backend runs them. The NumPy fast path for CPUs
(distill/models/cpu_decode.py) has the same interface and shares these caches.

Both steppers also hold B rows at once (`batch=B`): one cache with a batch dimension, stepped
for every row in one pass (`step_rows`), each row primed on its own (`prime_row`) where its clip
began afresh or its window slid. Several variations then cost little more than one
(distill/models/batch_sampling.py)."""
from __future__ import annotations

from dataclasses import dataclass

import torch

BACKENDS = ("numpy", "torch")  # how sampling runs its one-token steps: see CodePrior.generate


def default_backend(device: torch.device) -> str:
    """NumPy steps on a CPU, where each torch op's dispatch cost is a large part of a one-row step
    (distill/models/cpu_decode.py); torch (`Block.step`) on any other device."""
    return "numpy" if torch.device(device).type == "cpu" else "torch"


@dataclass
class KVCache:
    """One layer's keys and values for window positions 0..S-1: kv [2 (k, v), B, heads, S, head_dim]
    (4-D k and v keep attention on SDPA's fused kernel; one tensor takes both in one copy). B is 1
    except in batched sampling."""

    kv: torch.Tensor

    @classmethod
    def empty(cls, heads: int, seq_len: int, head_dim: int, device=None, batch: int = 1) -> "KVCache":
        return cls(torch.zeros(2, batch, heads, seq_len, head_dim, device=device))

    def row(self, b: int) -> "KVCache":
        """Row b's cache as a view (writes land in this one)."""
        return KVCache(self.kv[:, b : b + 1])


class TorchStepper:
    """A CodePrior's sampling state in torch: a KVCache per layer, filled by `Block.step`, and the
    last stepped position's final hidden state, which the clip-end head reads when asked."""

    def __init__(self, model, caches: list[KVCache] | None = None, batch: int = 1, pe: torch.Tensor | None = None):
        self.model = model
        hd = model.hidden_size // model.num_heads
        dev = model.head.weight.device
        self.caches = caches or [KVCache.empty(model.num_heads, model.seq_len, hd, dev, batch) for _ in model.blocks]
        self.batch = self.caches[0].kv.shape[1]
        self.pe = model._position_table(model.seq_len) if pe is None else pe  # [S, H]: position + level embedding
        self._final = None  # [1, H]
        self._rows: dict[int, TorchStepper] = {}
        self._row_final: list = [None] * self.batch  # per row: [H] after its own prime, else None

    def prime(self, first: torch.Tensor, tokens: torch.Tensor | None) -> torch.Tensor:
        """Window positions 0..t-1 from [first (the start or resume vector [H]), tokens[:t-1]]
        -> logits [K] for the token after them."""
        x = first.view(1, -1) if tokens is None else torch.cat([first.view(1, -1), self.model.token_emb(tokens)])
        return self._run((x + self.pe[: x.shape[0]]).unsqueeze(0), 0)

    def step(self, token: torch.Tensor, pos: int) -> torch.Tensor:
        """Input token (LongTensor[1]) at window position pos (>= 1) -> logits [K] for the next token."""
        return self._run((self.model.token_emb.weight[token] + self.pe[pos]).unsqueeze(0), pos)

    def _blocks(self, x: torch.Tensor, pos: int) -> torch.Tensor:
        # every block over x [B, t, H] from window position pos; the last one only where its output
        # is read (the last position: the others' keys and values are all the cache needs)
        last = len(self.model.blocks) - 1
        for i, (blk, cache) in enumerate(zip(self.model.blocks, self.caches)):
            x = blk.step(x, cache, pos, last_only=i == last)
        return x

    def _run(self, x: torch.Tensor, pos: int) -> torch.Tensor:
        x = self._blocks(x, pos)
        self._final = self.model.ln_f(x[0, -1:])
        return self.model.head(self._final)[0]

    def end_logit(self) -> float:
        """The clip-end logit after the last position stepped (models with an end head)."""
        if self.model.end_head is None:
            raise ValueError("this model has no clip-end head")
        return float(self.model.end_head(self._final)[0, 0])

    # --- B rows ------------------------------------------------------------------------------

    def row(self, b: int) -> "TorchStepper":
        """A one-row stepper over row b's part of the caches (views: its writes land here)."""
        if b not in self._rows:
            self._rows[b] = TorchStepper(self.model, [c.row(b) for c in self.caches], pe=self.pe)
        return self._rows[b]

    def prime_row(self, b: int, first: torch.Tensor, tokens: torch.Tensor | None) -> torch.Tensor:
        """`prime` for row b alone -> logits [K]."""
        one = self.row(b)
        logits = one.prime(first, tokens)
        self._row_final[b] = one._final[0]
        return logits

    def prime_all(self, first: torch.Tensor, tokens: torch.Tensor | None) -> torch.Tensor:
        """`prime` for every row at once, one window each: tokens LongTensor[B, t] (or None) -> logits [B, K].
        Rows with the same window (a shared prompt, a start from nothing) are primed once, as one row,
        and that row's keys and values copied to the others: B times less work, and the very numbers
        a one-row pass gives."""
        b = self.batch
        if b > 1 and (tokens is None or bool((tokens == tokens[:1]).all())):
            logits = self.prime_row(0, first, None if tokens is None else tokens[0])
            t = 1 if tokens is None else 1 + tokens.shape[1]
            for cache in self.caches:
                cache.kv[:, 1:, :, :t] = cache.kv[:, :1, :, :t]
            self._row_final = [self._row_final[0]] * b
            return logits[None].repeat(b, 1)
        x = first.view(1, 1, -1).expand(b, 1, -1)
        if tokens is not None:
            x = torch.cat([x, self.model.token_emb(tokens)], dim=1)
        x = self._blocks(x + self.pe[: x.shape[1]], 0)
        final = self.model.ln_f(x[:, -1])
        self._row_final = list(final)
        return self.model.head(final)

    def step_rows(self, tokens: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        """Every row's next input token (LongTensor[B]) at its window position (LongTensor[B], each
        >= 1) -> logits [B, K] (`Block.step_rows`)."""
        x = (self.model.token_emb.weight[tokens] + self.pe[pos]).unsqueeze(1)
        for blk, cache in zip(self.model.blocks, self.caches):
            x = blk.step_rows(x, cache, pos)
        self._final = self.model.ln_f(x[:, 0])
        self._row_final = [None] * self.batch
        return self.model.head(self._final)

    def end_logit_row(self, b: int) -> float:
        """Row b's clip-end logit after its last position (stepped with the others or primed alone)."""
        if self.model.end_head is None:
            raise ValueError("this model has no clip-end head")
        final = self._row_final[b] if self._row_final[b] is not None else self._final[b]
        return float(self.model.end_head(final.view(1, -1))[0, 0])
