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

import torch
import torch.nn as nn
import torch.nn.functional as F

from distill.models.cpu_decode import CpuStepper

# One CPU thread while sampling: each token is a chain of tiny ops, where a second thread costs more
# in synchronisation than it saves (on a busy 2-core machine, over 10x more).
SAMPLING_THREADS = 1

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
    """Pre-norm transformer block: x + attn(ln(x)), then x + mlp(ln(x)). Fused q/k/v projection."""

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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: [B, T, H]
        b, t, h = x.shape
        p = self.dropout if self.training else 0.0
        qkv = self.qkv(self.ln1(x)).view(b, t, 3, self.heads, h // self.heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each [B, heads, T, D]
        # No dropout on the attention weights: it would push CPU SDPA off its fused causal kernel;
        # residual dropout below does the regularising.
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        a = a.transpose(1, 2).reshape(b, t, h)
        x = x + F.dropout(self.proj(a), p, self.training)
        x = x + F.dropout(self.out(F.gelu(self.fc(self.ln2(x)))), p, self.training)
        return x


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

    def _head_weights(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Code head, with the end head as one extra output when there is one: ([H, K(+1)], [K(+1)])."""
        w, b = self.head.weight, self.head.bias
        if self.end_head is not None:
            w, b = torch.cat([w, self.end_head.weight]), torch.cat([b, self.end_head.bias])
        return w.t().contiguous(), b

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
    ):
        """Sample `n_tokens` new flattened codes -> LongTensor[1, n_tokens] (only the new tokens).

        Stream layout: the prompt (LongTensor[1, P] of flattened codes, starting on level 0; any P)
        followed by the new tokens, so new token i sits on level (P + i) % Q.
        temperature <= 0 or top_k == 1: greedy. top_k > 0 keeps the k most likely codes; top_p < 1
        keeps the smallest set whose probability reaches top_p (always at least one code).
        Each new token runs one cached step (on one CPU thread, SAMPLING_THREADS). When the window
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
        With return_logits=True also returns (logits[n_tokens, K] used for each token, before
        temperature/filtering, and window_starts LongTensor[n_tokens]: the stream index each
        token's window began at) so tests can compare against `forward`.
        """
        if n_tokens < 0:
            raise ValueError("n_tokens must be >= 0")
        was_training = self.training
        threads = torch.get_num_threads()
        on_cpu = self.head.weight.device.type == "cpu"
        self.eval()
        try:
            if on_cpu and threads != SAMPLING_THREADS:
                torch.set_num_threads(SAMPLING_THREADS)  # per calling thread under OpenMP
            return self._generate(n_tokens, temperature, top_k, top_p, prompt, generator, return_logits,
                                  clip_ends and self.end_head is not None, prompt_starts_clip, retrieval)
        finally:
            if on_cpu and threads != SAMPLING_THREADS:
                torch.set_num_threads(threads)
            self.train(was_training)

    def _generate(self, n_tokens, temperature, top_k, top_p, prompt, generator, return_logits, clip_ends,
                  prompt_starts_clip, retrieval):
        dev = self.head.weight.device
        q_levels, s, k_size = self.num_quantizers, self.seq_len, self.codebook_size
        nh = self.num_heads
        hd = self.hidden_size // nh
        greedy = temperature <= 0 or top_k == 1
        top_k = 0 if top_k >= k_size else max(0, int(top_k))

        p_len = 0 if prompt is None else int(prompt.shape[-1])
        # the stream (prompt + new tokens) as a list of LongTensor[1]: appending costs no torch op
        if p_len:
            prompt = prompt.reshape(-1, 1).to(dev, torch.long)
            if int(prompt.min()) < 0 or int(prompt.max()) >= k_size:
                raise ValueError(f"prompt codes must lie in 0..{k_size - 1}")
        toks = list(prompt.unbind(0)) if p_len else []
        logits_out = torch.empty(n_tokens, k_size, device=dev) if return_logits else None
        starts_out = torch.empty(n_tokens, dtype=torch.long) if return_logits else None
        if n_tokens == 0:
            out = torch.empty(1, 0, dtype=torch.long, device=dev)
            return (out, logits_out, starts_out) if return_logits else out

        # On a CPU the one-token steps run in NumPy (CpuStepper, cheaper per step: see its module);
        # elsewhere in torch with a preallocated cache: per layer [2 (k, v), 1, heads, S, D] (4-D k/v
        # keep SDPA on its fused kernel) and weights pre-transposed to [in, out] for one-row matmuls.
        stepper = CpuStepper(self) if dev.type == "cpu" else None
        cache = torch.zeros(self.num_layers, 2, 1, nh, s, hd, device=dev) if stepper is None else None
        pe = self._position_table(s).unbind(0)  # S x [H]: position + level embedding
        tok_w = self.token_emb.weight
        keep = max(q_levels, ((3 * s) // 4) // q_levels * q_levels)  # context kept after a slide
        layers = [
            (
                b.ln1.weight, b.ln1.bias, b.qkv.weight.t().contiguous(), b.qkv.bias,
                b.proj.weight.t().contiguous(), b.proj.bias, b.ln2.weight, b.ln2.bias,
                b.fc.weight.t().contiguous(), b.fc.bias, b.out.weight.t().contiguous(), b.out.bias,
                cache[li], cache[li, 0], cache[li, 1],
            )
            for li, b in enumerate(self.blocks)
        ] if stepper is None else []
        hsz = (self.hidden_size,)
        lnf_w, lnf_b = self.ln_f.weight, self.ln_f.bias
        head_wt, head_b = self._head_weights()  # [H, K(+1)]: the end logit rides along as output K
        layer_norm, addmm, sdpa = F.layer_norm, torch.addmm, F.scaled_dot_product_attention

        def prime(w0: int, n: int, resume: bool) -> torch.Tensor:
            # Fill cache positions 0..n-w0 from [start, stream[w0:n]]; return outputs [K(+1)] for token n.
            t = n - w0 + 1
            prev = self.token_emb(torch.cat(toks[w0:n])) if n > w0 else tok_w[:0]
            x = (torch.cat([self.start_vector(resume).view(1, -1), prev]) + torch.stack(pe[:t])).unsqueeze(0)
            for li, blk in enumerate(self.blocks):
                qkv = blk.qkv(blk.ln1(x)).view(1, t, 3, nh, hd).permute(2, 0, 3, 1, 4)  # [3, 1, nh, t, hd]
                if stepper is not None:
                    stepper.load(li, qkv[1, 0].numpy(), qkv[2, 0].numpy())
                else:
                    cache[li, :, :, :, :t] = qkv[1:]
                a = sdpa(qkv[0], qkv[1], qkv[2], is_causal=True)  # [1, nh, t, hd]
                x = x + blk.proj(a.transpose(1, 2).reshape(1, t, -1))
                x = x + blk.out(F.gelu(blk.fc(blk.ln2(x))))
            return addmm(head_b, self.ln_f(x[0, -1:]), head_wt)[0]

        w0 = 0
        if p_len > s - 1:  # a long prompt: start from its last part, on a level-0 token
            w0 = -(-(p_len - keep) // q_levels) * q_levels
        out = prime(w0, p_len, resume=w0 > 0 or (p_len > 0 and not prompt_starts_clip))
        n, end = p_len, p_len + n_tokens
        clip_start = 0  # stream index where the current clip began (a prompt is the clip so far)
        recall = None
        if retrieval is not None and retrieval.settings.weight > 0:
            # the file-start symbol only where the whole clip so far is in the retrieval's history
            recall = retrieval.start(begins_clip=p_len == 0 or (prompt_starts_clip and p_len <= retrieval.max_len))
            for t in toks[-retrieval.max_len:]:
                recall.push(int(t))
        while True:
            if clip_ends and n % q_levels == 0 and n - clip_start >= q_levels:
                # torch paths return the end logit as output K; the NumPy stepper computes it on request
                p_end = torch.sigmoid(out[k_size] if out.shape[0] > k_size else torch.tensor(stepper.end_logit()))
                if recall is not None:
                    p_end = torch.tensor(recall.end_mix(float(p_end)))
                if bool(p_end > 0.5) if greedy else bool(torch.rand(1, generator=generator, device=dev) < p_end):
                    clip_start = w0 = n  # the clip has ended: the next begins afresh
                    out = prime(w0, n, resume=False)
                    if recall is not None:
                        recall = retrieval.start(begins_clip=True)
            logits = out[:k_size]
            if return_logits:
                logits_out[n - p_len] = logits
                starts_out[n - p_len] = w0
            if recall is None:
                tok = self._pick(logits, greedy, temperature, top_k, top_p, generator)  # LongTensor[1]
            else:
                tok = _pick_mixed(logits, recall, greedy, temperature, top_k, top_p, generator)
                recall.push(int(tok))
            toks.append(tok)
            n += 1
            if n == end:
                break
            pos = n - w0
            if pos >= s:  # window full: slide and rebuild the cache
                w0 = -(-(n - keep) // q_levels) * q_levels
                out = prime(w0, n, resume=True)
                continue
            # one cached step: input token stream[n-1] at window position `pos`
            if stepper is not None:
                out = torch.from_numpy(stepper.step(int(tok), pos))
                continue
            x = tok_w[tok] + pe[pos]  # [1, H]
            for l1w, l1b, qw, qb, pw, pb, l2w, l2b, fw, fb, ow, ob, kv, kc, vc in layers:
                qkv = addmm(qb, layer_norm(x, hsz, l1w, l1b), qw).view(3, 1, nh, 1, hd)
                kv.narrow(3, pos, 1).copy_(qkv[1:])
                a = sdpa(qkv[0], kc.narrow(2, 0, pos + 1), vc.narrow(2, 0, pos + 1))  # [1, nh, 1, hd]
                x = x + addmm(pb, a.view(1, -1), pw)
                x = x + addmm(ob, F.gelu(addmm(fb, layer_norm(x, hsz, l2w, l2b), fw)), ow)
            out = addmm(head_b, layer_norm(x, hsz, lnf_w, lnf_b), head_wt)[0]
        codes = torch.cat(toks[p_len:]).unsqueeze(0)
        return (codes, logits_out, starts_out) if return_logits else codes

    @staticmethod
    def _pick(logits, greedy, temperature, top_k, top_p, generator) -> torch.Tensor:
        # logits: [K] -> LongTensor[1]
        if greedy:
            return logits.argmax().view(1)
        if top_k > 0:
            kth = torch.topk(logits, top_k).values[-1]
            logits = logits.masked_fill(logits < kth, float("-inf"))
        probs = torch.softmax(logits / temperature, -1)
        if top_p < 1.0:
            probs = nucleus(probs, top_p)
        # inverse-CDF draw (cheaper per token than torch.multinomial); side="right" never lands
        # on a zero-probability code
        cdf = probs.cumsum(0)
        u = torch.rand(1, generator=generator, device=probs.device) * cdf[-1]
        return torch.searchsorted(cdf, u, right=True).clamp_(max=probs.shape[0] - 1)


def _pick_mixed(logits, recall, greedy, temperature, top_k, top_p, generator) -> torch.Tensor:
    """Like CodePrior._pick, on the mix of the model's distribution (temperature 1) and the retrieved
    one; temperature, top-k and top-p then shape the mix."""
    probs = torch.softmax(logits.double(), -1).numpy()
    probs = torch.from_numpy(recall.mix(probs))
    if greedy:
        return probs.argmax().view(1)
    if temperature != 1.0:
        probs = probs.clamp_min(1e-300) ** (1.0 / temperature) * (probs > 0)
    if top_k > 0:
        kth = torch.topk(probs, top_k).values[-1]
        probs = probs.masked_fill(probs < kth, 0.0)
    probs = probs / probs.sum()
    if top_p < 1.0:
        probs = nucleus(probs, top_p)
    cdf = probs.cumsum(0)
    u = torch.rand(1, generator=generator, device=probs.device, dtype=torch.float64) * cdf[-1]
    return torch.searchsorted(cdf, u, right=True).clamp_(max=probs.shape[0] - 1)


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
    seq_len = config.context_steps * num_quantizers
    per_block = 2 * 2 * h + (3 * h * h + 3 * h) + (h * h + h) + (4 * h * h + 4 * h) + (4 * h * h + h)
    emb = codebook_size * h + h + seq_len * h + num_quantizers * h
    clips = (h + 1) + h if config.learn_clip_ends else 0  # end head + resume token
    return emb + n_layers * per_block + 2 * h + (h * codebook_size + codebook_size) + clips


def estimate_prior_memory_bytes(config, codebook_size: int, num_quantizers: int) -> int:
    """Rough peak training memory (float32): weights + grads + AdamW moments, plus activations
    kept for backward. Meant for 'will this fit' messages, not exact accounting."""
    params = prior_param_count(config, codebook_size, num_quantizers)
    b, t, h = config.batch_size, config.context_steps * num_quantizers, config.hidden_size
    # per layer and token: ~ln, qkv(3h), attn out, proj, ln, fc(4h), gelu(4h), out, dropout masks
    act_per_layer = b * t * h * 18
    attn = b * config.num_heads * t * t  # in case the backend falls back to the explicit matrix
    logits = 3 * b * t * codebook_size
    return 4 * (4 * params + config.num_layers * (act_per_layer + attn) + logits + b * t * h * 4)
