"""Several samples from one CodePrior in one pass: B rows share one batched KV cache.

On a CPU a one-token step is mostly per-call overhead, so stepping B rows as [B, H] products
costs little more than one row; the choice of each row's next code is vectorised too. Each row is
its own sample: its own random generator (so row b gives the codes a one-row run with that
generator gives), its own clip (a clip that ends starts that row afresh, at window position 0,
while the others go on) and its own retrieval state (`RetrievalState`, mixed by its own rule).

The stream layout and every rule are `CodePrior.generate`'s (see its docstring): a shared prompt,
then n_tokens new tokens per row; windows slide to their last ~3/4; clip ends are drawn before
each new time step. Besides, `forced` codes are taken instead of sampled (no random draw is spent
on them) and still pass through the model and the retrieval state, so the sampled codes around
them follow them: this is how a variation keeps its input's coarse levels.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from distill.models.retrieval import RetrievalState
from distill.models.stepping import BACKENDS, TorchStepper, default_backend


@dataclass
class BatchResult:
    tokens: torch.Tensor  # LongTensor[B, n_tokens]: the new tokens of each row
    clip_starts: list[list[int]]  # per row: indices into the new tokens where a fresh clip began
    # with trace=True, row 0's logits [n_tokens, K] before each token (before temperature and
    # filtering) and the stream index its window began at (LongTensor[n_tokens]), for tests
    logits: torch.Tensor | None = None
    window_starts: torch.Tensor | None = None


@torch.inference_mode()
def sample_rows(model, n_tokens: int, generators: list[torch.Generator], temperature: float = 1.0, top_k: int = 0,
                top_p: float = 1.0, prompt: torch.Tensor | None = None, forced: np.ndarray | None = None,
                clip_ends: bool = True, prompt_starts_clip: bool = True, retrieval=None,
                backend: str | None = None, trace: bool = False) -> BatchResult:
    """One row per generator (None: torch's global one); `prompt`: LongTensor[P] of flattened codes
    shared by every row; `forced`: int [B, n_tokens] (or [n_tokens], the same for all rows), a code
    >= 0 is taken at that place instead of sampling one, -1 is sampled. Forced codes fix the clip's
    length, so they go with clip_ends=False. `CodePrior.generate` is this with one row."""
    from distill.models.prior import sampling_threads

    b = len(generators)
    if b < 1 or n_tokens < 0:
        raise ValueError("need at least one row and n_tokens >= 0")
    if forced is not None:
        forced = np.broadcast_to(np.asarray(forced, dtype=np.int64), (b, n_tokens))
        if clip_ends:
            raise ValueError("forced codes fix the length: sample them with clip_ends=False")
        if int(forced.max(initial=-1)) >= model.codebook_size:
            raise ValueError(f"forced codes must lie in 0..{model.codebook_size - 1}")
    dev = model.head.weight.device
    backend = backend or default_backend(dev)
    if backend not in BACKENDS or (backend == "numpy" and dev.type != "cpu"):
        raise ValueError(f"backend must be one of {BACKENDS} ('numpy' on a CPU only), got {backend!r}")
    was_training, threads, wanted = model.training, torch.get_num_threads(), sampling_threads(model, b)
    on_cpu = dev.type == "cpu"
    model.eval()
    try:
        if on_cpu and threads != wanted:
            torch.set_num_threads(wanted)
        return _sample(model, n_tokens, generators, temperature, top_k, top_p, prompt, forced,
                       clip_ends and model.end_head is not None, prompt_starts_clip, retrieval, backend, trace)
    finally:
        if on_cpu and threads != wanted:
            torch.set_num_threads(threads)
        model.train(was_training)


def _sample(model, n_tokens, gens, temperature, top_k, top_p, prompt, forced, clip_ends, prompt_starts_clip,
            retrieval, backend, trace=False) -> BatchResult:
    dev = model.head.weight.device
    q, s, k_size = model.num_quantizers, model.seq_len, model.codebook_size
    b = len(gens)
    greedy = temperature <= 0 or top_k == 1
    top_k = 0 if top_k >= k_size else max(0, int(top_k))
    p_len = 0 if prompt is None else int(prompt.numel())
    if p_len and (int(prompt.min()) < 0 or int(prompt.max()) >= k_size):
        raise ValueError(f"prompt codes must lie in 0..{k_size - 1}")
    toks = np.zeros((b, p_len + n_tokens), np.int64)  # each row's stream: prompt, then its new tokens
    if p_len:
        toks[:, :p_len] = prompt.reshape(-1).cpu().numpy()
    starts: list[list[int]] = [[] for _ in range(b)]
    logits_out = np.zeros((n_tokens, k_size), np.float32) if trace else None
    starts_out = np.zeros(n_tokens, np.int64) if trace else None

    def result() -> BatchResult:
        traced = (torch.from_numpy(logits_out).to(dev), torch.from_numpy(starts_out)) if trace else (None, None)
        return BatchResult(torch.from_numpy(toks[:, p_len:].copy()).to(dev), starts, *traced)

    if n_tokens == 0:
        return result()

    if backend == "numpy":
        from distill.models.cpu_decode import CpuStepper

        steps = CpuStepper(model, batch=b)

        def step_all(tok, pos):
            return steps.step_rows(tok, pos)
    else:
        steps = TorchStepper(model, batch=b)

        def step_all(tok, pos):
            t = torch.from_numpy(tok).to(dev)
            return steps.step_rows(t, torch.from_numpy(pos).to(dev)).float().cpu().numpy()

    keep = max(q, ((3 * s) // 4) // q * q)  # context kept after a slide, as CodePrior.generate

    def prime(row: int, w0: int, n: int, resume: bool) -> np.ndarray:
        # row's window [start, stream[w0:n]] from position 0 -> logits [K] for its token n
        tokens = torch.from_numpy(toks[row, w0:n]).to(dev) if n > w0 else None
        return steps.prime_row(row, model.start_vector(resume), tokens).float().cpu().numpy()

    def prime_all(w0: int, n: int, resume: bool) -> np.ndarray:
        # every row's window [start, stream[w0:n]] in one pass (rows that share their window bounds)
        tokens = torch.from_numpy(toks[:, w0:n]).to(dev) if n > w0 else None
        return steps.prime_all(model.start_vector(resume), tokens).float().cpu().numpy()

    w0 = np.zeros(b, np.int64)
    if p_len > s - 1:  # a long prompt: start from its last part, on a level-0 token
        w0[:] = -(-(p_len - keep) // q) * q
    logits = prime_all(int(w0[0]), p_len, resume=bool(w0[0] > 0 or (p_len > 0 and not prompt_starts_clip)))
    clip_start = np.zeros(b, np.int64)
    recalls = None
    if retrieval is not None and retrieval.settings.weight > 0:
        begins = p_len == 0 or (prompt_starts_clip and p_len <= retrieval.max_len)
        recalls = [retrieval.start(begins_clip=begins, draw=float(torch.rand(1, generator=g))) for g in gens]
        for r in recalls:
            for t in toks[0, max(0, p_len - retrieval.max_len) : p_len]:
                r.push(int(t))
    draws = RowDraws.ahead(gens, forced, n_tokens, torch.float64 if recalls is not None else torch.float32) \
        if not clip_ends and not greedy else None
    n, end = p_len, p_len + n_tokens
    while True:
        if clip_ends and n % q == 0:
            if recalls is not None:
                RetrievalState.prefetch([recalls[r] for r in range(b) if n - clip_start[r] >= q])
            for r in range(b):
                if n - clip_start[r] < q:
                    continue
                p_end = recalls[r].material_end() if recalls is not None else None
                if p_end is None:
                    p_end = float(torch.sigmoid(torch.tensor(steps.end_logit_row(r))))
                if p_end > 0.5 if greedy else bool(torch.rand(1, generator=gens[r]) < p_end):
                    clip_start[r] = w0[r] = n  # the row's clip has ended: its next begins afresh
                    logits[r] = prime(r, n, n, resume=False)
                    starts[r].append(n - p_len)
                    if recalls is not None:
                        recalls[r] = retrieval.start(begins_clip=True, draw=float(torch.rand(1, generator=gens[r])))
        if trace:
            logits_out[n - p_len], starts_out[n - p_len] = logits[0], w0[0]
        want = forced[:, n - p_len] if forced is not None else None
        tok = pick_rows(logits, recalls, gens if draws is None else draws, greedy, temperature, top_k, top_p, want)
        if recalls is not None:
            for r in range(b):
                recalls[r].push(int(tok[r]))
        toks[:, n] = tok
        n += 1
        if n == end:
            break
        pos = n - w0
        full = np.flatnonzero(pos >= s)
        if len(full):  # window full: slide these rows
            # each new window is primed up to the last token, which then steps with the other rows
            new_w0 = -(-(n - keep) // q) * q
            w0[full] = new_w0
            if len(full) == b:  # all rows at once (their clips began together)
                prime_all(new_w0, n - 1, resume=True)
            else:
                for r in full:
                    prime(int(r), new_w0, n - 1, resume=True)
            pos[full] = n - new_w0
        logits = step_all(toks[:, n - 1], pos)
    return result()


class RowDraws:
    """Each row's uniform draws for its sampled codes, drawn from its generator ahead, in one call.

    Where nothing else draws from the generators while sampling (no clip ends), a row's draws are
    its sampled codes' draws, one each, in order; `torch.rand(n)` gives the same numbers as n calls of
    `torch.rand(1)` and leaves the generator where they would, so the codes are those of a draw per
    code, without a torch call (~2.5 us) per row and code."""

    def __init__(self, values: np.ndarray):
        self.values, self.used = values, np.zeros(len(values), np.int64)  # [B, most draws], per row

    @classmethod
    def ahead(cls, gens, forced: np.ndarray | None, n_tokens: int, dtype) -> "RowDraws | None":
        # rows sharing a generator (or torch's global one) draw in turn: their order is the sampler's
        if any(g is None for g in gens) or len({id(g) for g in gens}) < len(gens):
            return None
        counts = [n_tokens] * len(gens) if forced is None else [n_tokens - int((row >= 0).sum()) for row in forced]
        values = np.zeros((len(gens), max(counts)), np.float64)
        for r, (g, c) in enumerate(zip(gens, counts)):
            values[r, :c] = torch.rand(c, generator=g, dtype=dtype).numpy()
        return cls(values)

    def take(self, rows: np.ndarray) -> np.ndarray:
        """The next draw of each of these rows."""
        u = self.values[rows, self.used[rows]]
        self.used[rows] += 1
        return u


def pick_rows(logits: np.ndarray, recalls, gens, greedy: bool, temperature: float, top_k: int, top_p: float,
              forced: np.ndarray | None = None) -> np.ndarray:
    """Each row's next code from its logits [B, K] -> int [B]: as `CodePrior._pick` (no retrieval)
    or `_pick_mixed` (each row's distribution mixed by its own RetrievalState), vectorised over the
    rows, one uniform draw from each row's own generator (of the same dtype as there; `gens` may be
    their `RowDraws`). Rows with a forced code (>= 0) take it and draw nothing."""
    b = logits.shape[0]
    out = np.zeros(b, np.int64)
    todo = np.arange(b) if forced is None else np.flatnonzero(forced < 0)
    if forced is not None:
        out[forced >= 0] = forced[forced >= 0]
    if not len(todo):
        return out
    lg = logits[todo].astype(np.float64)
    if recalls is None:
        if greedy:
            out[todo] = lg.argmax(-1)
            return out
        if top_k > 0:
            kth = np.partition(lg, -top_k, axis=-1)[:, -top_k]
            lg = np.where(lg < kth[:, None], -np.inf, lg)
        probs = _softmax(lg / temperature)
        dtype = torch.float32
    else:
        probs = _softmax(lg)
        rows = [recalls[r] for r in todo]
        RetrievalState.prefetch(rows)  # every row's lookup in one go
        probs = RetrievalState.mix_rows(rows, probs)
        if greedy:
            out[todo] = probs.argmax(-1)
            return out
        if temperature != 1.0:
            probs = np.maximum(probs, 1e-300) ** (1.0 / temperature) * (probs > 0)
        if top_k > 0:
            kth = np.partition(probs, -top_k, axis=-1)[:, -top_k]
            probs = np.where(probs < kth[:, None], 0.0, probs)
        probs /= probs.sum(-1, keepdims=True)
        dtype = torch.float64
    if top_p < 1.0:
        probs = _nucleus(probs, top_p)
    cdf = np.cumsum(probs, -1)
    if isinstance(gens, RowDraws):
        u = gens.take(todo) * cdf[:, -1]
    else:
        u = np.array([float(torch.rand(1, generator=gens[r], dtype=dtype)) for r in todo]) * cdf[:, -1]
    # the first code whose cdf passes u (searchsorted right: never a zero-probability code)
    out[todo] = np.minimum((cdf <= u[:, None]).sum(-1), probs.shape[1] - 1)
    return out


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def _nucleus(probs: np.ndarray, top_p: float) -> np.ndarray:
    """`distill.models.prior.nucleus` over rows [B, K], in NumPy."""
    order = np.argsort(-probs, axis=-1, kind="stable")
    sorted_p = np.take_along_axis(probs, order, -1)
    before = np.cumsum(sorted_p, -1) - sorted_p
    sorted_p = np.where(before >= top_p, 0.0, sorted_p)
    kept = np.zeros_like(probs)
    np.put_along_axis(kept, order, sorted_p, -1)
    return kept / kept.sum(-1, keepdims=True)
