"""CodePrior: a GPT-style causal transformer over flattened residual-VQ codes, with fast sampling.

Codes `[T, Q]` (time steps x residual levels) are flattened position-major into one token stream
`[t0q0, t0q1, ..., t0q(Q-1), t1q0, ...]`, so token `n` sits at time step `n // Q` on level `n % Q`.

Input/output contract (one window, positions 0..T-1, T <= seq_len):
    logits[:, t] predicts token x[:, t] from tokens x[:, :t] only.
    The input vector at position t is
        (start embedding if t == 0 else token_embedding(x[:, t - 1]))
        + position_embedding(t) + level_embedding(t % Q)
    i.e. the sequence is shifted right by one behind a learned start token, and the position/level
    embeddings name the token being *predicted*. So the first code of a window is predicted too,
    x[:, T-1] never influences any logit, and the training loss is simply CE(logits, x).
Windows always begin on level 0 (a multiple of Q into the stream), so `t % Q` is the true level.

Clips (optional, `learn_ends=True`): a second one-number head reads the same final hidden state.
At a level-0 position t (t >= Q), sigmoid(end_logits[:, t]) is the probability that the clip (the
file the codes came from) has already ended, i.e. has exactly t tokens. Collections of short sounds
(one-shots, spoken prompts) then generate as a run of clip-length sounds, each begun afresh from the
start token, instead of one sound stretched past any length the model was trained on.
Such a model also has a second start vector, the resume token, for windows that begin inside a
file (`resume=True`): the start token then only ever precedes a file's real beginning, so a fresh
clip starts the way files start (without it, long files, whose windows begin anywhere, would make
every start look like a random moment of a long file).
"""
from __future__ import annotations

import math
import os

import torch
import torch.nn as nn
import torch.nn.functional as F

from distill.models.stepping import BACKENDS, KVCache, TorchStepper, default_backend  # noqa: F401  (re-exported)

# One CPU thread while sampling: each token is a chain of tiny ops, where a second thread costs more
# in synchronisation than it saves (on a busy 2-core machine, over 10x more).
SAMPLING_THREADS = 1
# From 512 wide (tier 3) a step streams ~75 MB of weights and is bound by memory bandwidth, which a
# second core adds to. One row's products run in NumPy, whose OpenBLAS takes both cores of a 2-core
# machine for them on its own (4 one-row variations of 3 s: 3.24 s on one thread, 2.02 s as it runs);
# torch then stays on one thread (on two, its idle threads compete with OpenBLAS's: 2.02 -> 2.20 s).
# Several rows' products run in torch (cpu_decode.TORCH_PRODUCTS_FROM), which gets the two cores
# itself (4 rows in one pass: 1.69 -> 0.99 s).
WIDE_SAMPLING_THREADS = 2
WIDE_SAMPLING_FROM = 512


def sampling_threads(model, rows: int = 1) -> int:
    """CPU threads torch samples `rows` rows of this prior on at once (SAMPLING_THREADS; for several
    rows from WIDE_SAMPLING_FROM wide, WIDE_SAMPLING_THREADS as far as the machine has cores)."""
    if rows > 1 and model.hidden_size >= WIDE_SAMPLING_FROM:
        return max(1, min(WIDE_SAMPLING_THREADS, os.cpu_count() or 1))
    return SAMPLING_THREADS

# --- code layout -----------------------------------------------------------------------------


def flatten_codes(indices: torch.Tensor) -> torch.Tensor:
    """[B, T, Q] -> [B, T*Q], position-major (all levels of step 0, then step 1, ...)."""
    if indices.dim() != 3:
        raise ValueError(f"flatten_codes expects [B, T, Q], got shape {tuple(indices.shape)}")
    b, t, q = indices.shape
    return indices.reshape(b, t * q)


def unflatten_codes(flat: torch.Tensor, num_quantizers: int) -> torch.Tensor:
    """[B, N] -> [B, N // Q, Q]; exact inverse of `flatten_codes`. N must be a multiple of Q."""
    if flat.dim() != 2:
        raise ValueError(f"unflatten_codes expects [B, N], got shape {tuple(flat.shape)}")
    b, n = flat.shape
    if n % num_quantizers:
        raise ValueError(f"{n} tokens is not a whole number of steps of {num_quantizers} levels")
    return flat.reshape(b, n // num_quantizers, num_quantizers)


def extract_code_sequences(*args, **kwargs):
    """The seed's API name; the implementation lives in `distill.codes` (run data through the frozen
    VQ-VAE, return one LongTensor[T', Q] per file)."""
    from distill.codes import extract_code_sequences as impl

    return impl(*args, **kwargs)


# --- model -----------------------------------------------------------------------------------


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(ln(x)), then x + mlp(ln(x)). Fused q/k/v projection.
    `forward` is the training path over whole windows; `step` is the same maths for sampling, with
    the keys and values of earlier positions kept in a KVCache."""

    def __init__(self, hidden: int, heads: int, dropout: float):
        super().__init__()
        if hidden % heads:
            raise ValueError(f"hidden_size {hidden} must be divisible by num_heads {heads}")
        self.heads = heads
        self.ln1 = nn.LayerNorm(hidden)
        self.qkv = nn.Linear(hidden, 3 * hidden)
        self.proj = nn.Linear(hidden, hidden)
        self.ln2 = nn.LayerNorm(hidden)
        self.fc = nn.Linear(hidden, 4 * hidden)
        self.out = nn.Linear(4 * hidden, hidden)
        self.dropout = dropout

    def _qkv(self, x: torch.Tensor) -> torch.Tensor:
        # x: [B, T, H] -> q, k, v stacked: [3, B, heads, T, D]
        b, t, h = x.shape
        ln = F.layer_norm(x, (h,), self.ln1.weight, self.ln1.bias, self.ln1.eps)
        qkv = F.linear(ln, self.qkv.weight, self.qkv.bias).view(b, t, 3, self.heads, h // self.heads)
        return qkv.permute(2, 0, 3, 1, 4)

    def _finish(self, x: torch.Tensor, a: torch.Tensor, training: bool) -> torch.Tensor:
        # the attention output (a: [B, heads, T, D]) projected into the residual, then the MLP
        b, t, h = x.shape
        a = a.transpose(1, 2).reshape(b, t, h)
        x = x + self._drop(F.linear(a, self.proj.weight, self.proj.bias), training)
        m = F.layer_norm(x, (h,), self.ln2.weight, self.ln2.bias, self.ln2.eps)
        m = F.linear(F.gelu(F.linear(m, self.fc.weight, self.fc.bias)), self.out.weight, self.out.bias)
        return x + self._drop(m, training)

    def _drop(self, y: torch.Tensor, training: bool) -> torch.Tensor:
        # residual dropout (at p = 0 or in eval mode F.dropout is the identity, so skip the call)
        return F.dropout(y, self.dropout, True) if training and self.dropout else y

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: [B, T, H]
        q, k, v = self._qkv(x).unbind(0)
        # No dropout on the attention weights: it would push CPU SDPA off its fused causal kernel;
        # residual dropout does the regularising.
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self._finish(x, a, self.training)

    def step(self, x: torch.Tensor, cache: KVCache, pos: int, last_only: bool = False) -> torch.Tensor:
        """x: [B, t, H], the inputs at window positions pos..pos+t-1 -> outputs [B, t, H] (eval mode).
        Their keys and values go into `cache`; each attends to every cached position up to its own.
        Several positions at once only from position 0 (feeding a window's start and prompt).
        last_only: the output at the last position only, [B, 1, H] (the last block of a window pass,
        whose other outputs nothing reads: their keys and values are all the cache needs)."""
        t = x.shape[1]
        if t > 1 and pos:
            raise ValueError("several positions are stepped at once only from window position 0")
        qkv = self._qkv(x)
        cache.kv[:, :, :, pos : pos + t] = qkv[1:]
        if pos == 0 and t > 1 and last_only:  # the last query sees every position
            a = F.scaled_dot_product_attention(qkv[0][:, :, -1:], qkv[1], qkv[2])
            return self._finish(x[:, -1:], a, False)
        if pos == 0:  # the inputs are the whole context so far
            a = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2], is_causal=True)
        else:
            kv = cache.kv[:, :, :, : pos + 1]
            a = F.scaled_dot_product_attention(qkv[0], kv[0], kv[1])
        return self._finish(x, a, False)

    def step_rows(self, x: torch.Tensor, cache: KVCache, pos: torch.Tensor) -> torch.Tensor:
        """`step` for B rows at once, one token each: x [B, 1, H], row b at window position pos[b]
        (LongTensor[B], each >= 1) -> [B, 1, H]. Rows may stand at different positions (their clips
        began at different times): each attends to its own cached positions 0..pos[b] only."""
        b = x.shape[0]
        qkv = self._qkv(x)  # [3, B, heads, 1, D]
        rows = torch.arange(b, device=x.device)
        cache.kv[:, rows, :, pos] = qkv[1:, :, :, 0].transpose(0, 1)  # the indexed view is [B, 2, heads, D]
        p = int(pos.max()) + 1
        kv = cache.kv[:, :, :, :p]
        mask = (torch.arange(p, device=x.device)[None, :] <= pos[:, None]).view(b, 1, 1, p)
        a = F.scaled_dot_product_attention(qkv[0], kv[0], kv[1], attn_mask=mask)
        return self._finish(x, a, False)


class CodePrior(nn.Module):
    """Autoregressive prior over flattened codes. See the module docstring for the exact contract."""

    def __init__(
        self,
        codebook_size: int,
        seq_len: int,
        num_quantizers: int,
        hidden_size: int = 256,
        num_layers: int = 4,
        num_heads: int = 4,
        dropout: float = 0.2,
        learn_ends: bool = False,
    ):
        super().__init__()
        if seq_len < num_quantizers or seq_len % num_quantizers:
            raise ValueError(f"seq_len {seq_len} must be a positive multiple of num_quantizers {num_quantizers}")
        self.codebook_size = codebook_size
        self.seq_len = seq_len
        self.num_quantizers = num_quantizers
        self.hidden_size = hidden_size
        self.num_layers = num_layers
        self.num_heads = num_heads
        self.dropout = dropout
        self.learn_ends = learn_ends
        self.token_emb = nn.Embedding(codebook_size, hidden_size)
        self.start_emb = nn.Parameter(torch.zeros(hidden_size))
        self.pos_emb = nn.Embedding(seq_len, hidden_size)
        self.level_emb = nn.Embedding(num_quantizers, hidden_size)
        self.blocks = nn.ModuleList(Block(hidden_size, num_heads, dropout) for _ in range(num_layers))
        self.ln_f = nn.LayerNorm(hidden_size)
        self.head = nn.Linear(hidden_size, codebook_size)
        self.end_head = nn.Linear(hidden_size, 1) if learn_ends else None
        self.resume_emb = nn.Parameter(torch.zeros(hidden_size)) if learn_ends else None
        self.apply(self._init_weights)
        nn.init.normal_(self.start_emb, std=0.02)
        if self.resume_emb is not None:
            nn.init.normal_(self.resume_emb, std=0.02)
        # GPT-2: scale residual output projections by depth so the stream does not grow with layers
        for blk in self.blocks:
            for lin in (blk.proj, blk.out):
                nn.init.normal_(lin.weight, std=0.02 / math.sqrt(2 * num_layers))

    @classmethod
    def from_config(cls, config, codebook_size: int, num_quantizers: int) -> "CodePrior":
        """The CodePrior a PriorConfig describes over codes of `codebook_size` x `num_quantizers`
        levels (its window: config.context_steps time steps); `prior_param_count` counts it."""
        return cls(
            codebook_size=codebook_size, seq_len=config.seq_len(num_quantizers), num_quantizers=num_quantizers,
            hidden_size=config.hidden_size, num_layers=config.num_layers, num_heads=config.num_heads,
            dropout=config.dropout, learn_ends=config.learn_clip_ends,
        )

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, std=0.02)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Embedding):
            nn.init.normal_(m.weight, std=0.02)

    def settings(self) -> dict:
        """Constructor arguments (JSON-ready), so a saved model rebuilds as CodePrior(**settings)."""
        return {
            "codebook_size": self.codebook_size,
            "seq_len": self.seq_len,
            "num_quantizers": self.num_quantizers,
            "hidden_size": self.hidden_size,
            "num_layers": self.num_layers,
            "num_heads": self.num_heads,
            "dropout": self.dropout,
            "learn_ends": self.learn_ends,
        }

    def _position_table(self, n: int) -> torch.Tensor:
        # [n, H]: position + level embedding for positions 0..n-1
        pos = torch.arange(n, device=self.pos_emb.weight.device)
        return self.pos_emb.weight[:n] + self.level_emb.weight[pos % self.num_quantizers]

    def start_vector(self, resume: bool = False) -> torch.Tensor:
        """[H]: what stands before a window's first token (the resume token for a window that begins
        inside a file, where the model has one)."""
        return self.resume_emb if resume and self.resume_emb is not None else self.start_emb

    def _embed(self, x: torch.Tensor, resume=None) -> torch.Tensor:
        # x: [B, T] -> [B, T, H], shifted right behind the start (or resume) token
        b, t = x.shape
        tok = self.token_emb(x[:, : t - 1])  # [B, T-1, H]
        start = self.start_emb.expand(b, 1, -1)
        if resume is not None and self.resume_emb is not None:
            rows = torch.as_tensor(resume, device=x.device).expand(b).view(b, 1, 1)
            start = torch.where(rows, self.resume_emb.view(1, 1, -1), start)
        return torch.cat([start, tok], dim=1) + self._position_table(t)

    def _hidden(self, x: torch.Tensor, resume=None) -> torch.Tensor:
        b, t = x.shape
        if t > self.seq_len:
            raise ValueError(f"sequence of {t} tokens is longer than the model's window ({self.seq_len})")
        h = F.dropout(self._embed(x, resume), self.dropout, self.training)
        for blk in self.blocks:
            h = blk(h)
        return self.ln_f(h)

    def forward(self, x: torch.Tensor, resume=None) -> torch.Tensor:
        """x: LongTensor[B, T], T <= seq_len, a window starting on level 0 -> logits [B, T, K].
        resume (models with clip ends): True, or BoolTensor[B] per window, for windows that begin
        inside a file rather than at its start."""
        return self.head(self._hidden(x, resume))

    def forward_with_ends(self, x: torch.Tensor, resume=None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(logits [B, T, K], end logits [B, T] or None without an end head): see the module docstring."""
        h = self._hidden(x, resume)
        return self.head(h), (self.end_head(h).squeeze(-1) if self.end_head is not None else None)

    # --- sampling ----------------------------------------------------------------------------

    @torch.inference_mode()
    def generate(
        self,
        n_tokens: int,
        temperature: float = 1.0,
        top_k: int = 0,
        top_p: float = 1.0,
        prompt: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        return_logits: bool = False,
        clip_ends: bool = True,
        prompt_starts_clip: bool = True,
        retrieval=None,
        backend: str | None = None,
    ):
        """Sample `n_tokens` new flattened codes -> LongTensor[1, n_tokens] (only the new tokens).

        Stream layout: the prompt (LongTensor[1, P] of flattened codes, starting on level 0; any P)
        followed by the new tokens, so new token i sits on level (P + i) % Q.
        temperature <= 0 or top_k == 1: greedy. top_k > 0 keeps the k most likely codes; top_p < 1
        keeps the smallest set whose probability reaches top_p (always at least one code).
        Each new token runs one cached step (on one CPU thread: `sampling_threads`). When the window
        (seq_len positions, the first being the start token) is full, it slides: the cache is
        rebuilt from the most recent ~3/4 window, starting on a level-0 token with positions
        restarting at 0, exactly like a training window.
        clip_ends (models with an end head): before each new time step, draw whether the clip has
        ended (greedy: whether its probability passes 1/2); if so, the next clip begins afresh from
        the start token, at window position 0 with no context, as a file does in training.
        Windows that begin inside a clip (after a slide; a prompt cut to fit, or one that is not the
        beginning of a sound, prompt_starts_clip=False) begin with the resume token where the model has one.
        retrieval (a `distill.models.retrieval.CodeRetrieval` over the training codes, or None): each
        next-code distribution is mixed with what followed the clip's recent codes in the material.
        backend: how the one-token steps run, "torch" (`Block.step`) or "numpy" (`CpuStepper`, CPU
        only); None: `default_backend` for the model's device.
        With return_logits=True also returns (logits[n_tokens, K] used for each token, before
        temperature/filtering, and window_starts LongTensor[n_tokens]: the stream index each
        token's window began at) so tests can compare against `forward`.
        """
        if n_tokens < 0:
            raise ValueError("n_tokens must be >= 0")
        from distill.models.batch_sampling import sample_rows  # here: it imports this module

        if prompt is not None:
            prompt = prompt.reshape(-1)
        res = sample_rows(self, n_tokens, [generator], temperature, top_k, top_p, prompt=prompt, clip_ends=clip_ends,
                          prompt_starts_clip=prompt_starts_clip, retrieval=retrieval, backend=backend,
                          trace=return_logits)
        return (res.tokens, res.logits, res.window_starts) if return_logits else res.tokens


def nucleus(probs: torch.Tensor, top_p: float) -> torch.Tensor:
    """Zero every code outside the smallest most-likely set whose total reaches top_p (>= 1 code
    kept); the result is renormalised. probs: [..., K]."""
    sorted_p, order = torch.sort(probs, dim=-1, descending=True)
    before = sorted_p.cumsum(-1) - sorted_p  # mass strictly above each code
    sorted_p = sorted_p.masked_fill(before >= top_p, 0.0)
    kept = torch.zeros_like(probs).scatter_(-1, order, sorted_p)
    return kept / kept.sum(-1, keepdim=True)


# --- sizing ----------------------------------------------------------------------------------


def prior_param_count(config, codebook_size: int, num_quantizers: int) -> int:
    """Parameters of the CodePrior a PriorConfig builds (closed form, no torch allocation)."""
    h, n_layers = config.hidden_size, config.num_layers
    seq_len = config.seq_len(num_quantizers)
    per_block = 2 * 2 * h + (3 * h * h + 3 * h) + (h * h + h) + (4 * h * h + 4 * h) + (4 * h * h + h)
    emb = codebook_size * h + h + seq_len * h + num_quantizers * h
    clips = (h + 1) + h if config.learn_clip_ends else 0  # end head + resume token
    return emb + n_layers * per_block + 2 * h + (h * codebook_size + codebook_size) + clips


def estimate_prior_memory_bytes(config, codebook_size: int, num_quantizers: int) -> int:
    """Rough peak training memory (float32): weights + grads + AdamW moments, plus activations
    kept for backward. Meant for 'will this fit' messages, not exact accounting."""
    params = prior_param_count(config, codebook_size, num_quantizers)
    b, t, h = config.batch_size, config.seq_len(num_quantizers), config.hidden_size
    # per layer and token: ~ln, qkv(3h), attn out, proj, ln, fc(4h), gelu(4h), out, dropout masks
    act_per_layer = b * t * h * 18
    attn = b * config.num_heads * t * t  # in case the backend falls back to the explicit matrix
    logits = 3 * b * t * codebook_size
    return 4 * (4 * params + config.num_layers * (act_per_layer + attn) + logits + b * t * h * 4)
