"""Cached CodePrior steps, one token per row, on a CPU, in NumPy.

Sampling runs one token at a time: a chain of one-row matrix products and small vector ops. Each torch
op costs several microseconds of dispatch on a CPU, which at Distill's sizes is a large part of the
step; the same maths through NumPy (OpenBLAS gemv), with the constants folded into the weights,
takes about 0.5 ms instead of 0.9 ms per token at 4 layers x 256 (`bench/bench_prior.py`).
The full-window passes (prompt, slides) stay in torch (`Block.step` over many positions at once),
writing their keys and values straight into this cache. `backend=...` of `CodePrior.generate` and
`sample_rows` picks between this and the torch steps.

Same maths as `Block.forward` in eval mode (pre-norm, exact erf GELU, softmax attention); tests hold
its logits to the full forward's within 1e-4.
"""
from __future__ import annotations

import math
import weakref

import numpy as np
import torch
from scipy.special import erf as _special_erf

from distill.models.prior import sampling_threads
from distill.models.stepping import KVCache, TorchStepper

LN_EPS = 1e-5  # nn.LayerNorm's default
INV_SQRT2 = 1.0 / math.sqrt(2.0)
# Three or more rows' weight products go through torch (MKL) from this hidden size, two rows' from 512:
# there NumPy's OpenBLAS packs the weights again for every [B, H] product, and 4 rows cost 2.3x one
# row's (tier 2, 256 wide: 1,056 against 455 us a step's products; tier 3 9.0 against 3.3 ms) where
# torch's cost 1.4x (639 us, 4.9 ms); 2 rows at tier 3 8.7 against 4.6 ms. At tier 1 (128 wide, the
# weights in cache) NumPy's are the faster (40 against 55 us for 4 rows), and at tier 2 for 2 rows
# (0.55 against 0.60 ms).
TORCH_PRODUCTS_FROM = 256


class CpuStepper:
    """Cached one-token steps of B rows in NumPy (the batched part of the `TorchStepper` interface:
    prime_row, prime_all, step_rows, end_logit_row): folded float32 weights (see `_folded_weights`)
    and key/value caches [layers, B, heads, seq_len, head_dim] that a TorchStepper shares (as tensor
    views), so window passes fill them through `Block.step`; `step_rows` steps every row in one pass
    of [B, H] products. One sample is one row (`CodePrior.generate`)."""

    def __init__(self, model, batch: int = 1):
        self.nh = model.num_heads
        self.hd = model.hidden_size // model.num_heads
        self.n_inv = 1.0 / model.hidden_size
        self.layers, self.head, self.end, self.tok, self.pe = _folded_weights(model)
        n = model.seq_len
        kv = np.zeros((model.num_layers, 2, batch, self.nh, n, self.hd), np.float32)
        self.kb, self.vb = kv[:, 0], kv[:, 1]  # [layers, B, heads, seq_len, head_dim] views
        self.window = TorchStepper(model, [KVCache(torch.from_numpy(layer)) for layer in kv])
        self._rows = np.arange(batch)
        # the weights of each layer's [B, H] products and the head's, and what multiplies them (TORCH_PRODUCTS_FROM)
        on_torch = model.hidden_size >= TORCH_PRODUCTS_FROM and batch >= (2 if model.hidden_size >= 512 else 3)
        self._mm = _torch_mm if on_torch else np.matmul
        weights = torch.from_numpy if on_torch else (lambda m: m)
        self._mats = [tuple(weights(m) for m in (w[0], w[2], w[4], w[6])) for w in self.layers]
        self._head_w = weights(self.head[0])
        # several rows on several threads (prior.sampling_threads): their attention through torch, whose
        # products use the threads (tier 3, 4 rows: 137 against 206 us a layer in NumPy on one)
        self._torch_kv = [(c.kv[0], c.kv[1]) for c in self.window.caches] \
            if batch > 1 and sampling_threads(model, batch) > 1 else None
        self._final_rows = None  # the last step_rows' centred final states [B, H] and 1/std [B]
        self._primed = np.zeros(batch, bool)  # rows whose last position came from their own prime

    def prime_row(self, b: int, first: torch.Tensor, tokens: torch.Tensor | None) -> torch.Tensor:
        """`prime` for row b alone (in torch, into row b's caches) -> logits [K]."""
        self._primed[b] = True
        return self.window.prime_row(b, first, tokens)

    def prime_all(self, first: torch.Tensor, tokens: torch.Tensor | None) -> torch.Tensor:
        """`prime` for every row at once (tokens LongTensor[B, t] or None) -> logits [B, K]."""
        self._primed[:] = True
        return self.window.prime_all(first, tokens)

    def step_rows(self, tokens: np.ndarray, pos: np.ndarray) -> np.ndarray:
        """Every row's next input token (int [B]) at its window position (int [B], each >= 1) ->
        logits float32 [B, K]. The same maths as `_step`, as [B, H] products; a row attends to its
        own positions 0..pos[b] only (rows whose clips began later stand at earlier positions)."""
        if len(tokens) == 1:  # one sample (CodePrior.generate): plain vectors, ~25 % faster a step
            return self._step_one(int(tokens[0]), int(pos[0]))[None]
        nh, hd, n_inv = self.nh, self.hd, self.n_inv
        hh, b = nh * hd, len(tokens)
        rows = self._rows
        x = self.tok[tokens] + self.pe[pos]  # [B, H]
        at_rows = pos.tolist()  # (Python's min and max of a few ints: cheaper than two array reductions)
        p_len = max(at_rows) + 1
        bias, at = None, p_len - 1  # at: the one position every row stands at (None: they differ)
        if min(at_rows) != p_len - 1:  # positions past a row's own are masked out
            bias = np.where(np.arange(p_len)[None, :] > pos[:, None], -np.inf, 0.0).astype(np.float32)[:, None, None]
            at = None

        def rstd(xc):  # each row's 1/std: vecdot and one power, a third of einsum + sqrt + divide
            return (np.vecdot(xc, xc) * n_inv + LN_EPS) ** -0.5

        mm, mats = self._mm, self._mats
        for li, (_, bqkv, _, bp, _, bfc, _, bout) in enumerate(self.layers):
            wqkv, wp, wfc, wout = mats[li]
            xc = x - x.sum(-1, keepdims=True) * n_inv
            qkv = mm(xc, wqkv)
            qkv *= rstd(xc)[:, None]
            qkv += bqkv
            kb, vb = self.kb[li], self.vb[li]
            if at is not None:  # plain slicing: several times cheaper than indexing by arrays
                kb[:, :, at] = qkv[:, hh : 2 * hh].reshape(b, nh, hd)
                vb[:, :, at] = qkv[:, 2 * hh :].reshape(b, nh, hd)
            else:
                kb[rows, :, pos] = qkv[:, hh : 2 * hh].reshape(b, nh, hd)  # [B, heads, head_dim] at each row's pos
                vb[rows, :, pos] = qkv[:, 2 * hh :].reshape(b, nh, hd)
            q = np.ascontiguousarray(qkv[:, :hh]).reshape(b, nh, 1, hd)  # a strided q takes matmul's slow loop
            if self._torch_kv is not None:
                a = _torch_attention(q, *self._torch_kv[li], p_len, bias)
            else:
                s = np.matmul(q, kb[:, :, :p_len].transpose(0, 1, 3, 2))  # [B, nh, 1, P], pre-scaled
                if bias is not None:
                    s += bias
                s -= s.max(axis=-1, keepdims=True)
                np.exp(s, out=s)
                a = np.matmul(s, vb[:, :, :p_len])  # [B, nh, 1, hd], not yet normalised
                a /= s.sum(axis=-1, keepdims=True)
            x = x + mm(a.reshape(b, hh), wp) + bp
            xc = x - x.sum(-1, keepdims=True) * n_inv
            z = mm(xc, wfc)
            z *= rstd(xc)[:, None]
            z += bfc
            e = _erf_rows(z)
            e += 1.0
            e *= z
            x = x + mm(e, wout) + bout
        xc = x - x.sum(-1, keepdims=True) * n_inv
        r = rstd(xc)
        out = mm(xc, self._head_w)
        out *= r[:, None]
        out += self.head[1]
        self._final_rows = (xc, r)
        self._primed[:] = False
        return out

    def _step_one(self, token: int, pos: int) -> np.ndarray:
        """`step_rows` for one row: the same maths on vectors (scalar norms, no row masks)."""
        nh, hd, n_inv = self.nh, self.hd, self.n_inv
        hh = nh * hd
        x = self.tok[token] + self.pe[pos]
        for li, (wqkv, bqkv, wp, bp, wfc, bfc, wout, bout) in enumerate(self.layers):
            xc = x - x.sum() * n_inv
            qkv = xc @ wqkv
            qkv *= 1.0 / math.sqrt(float(xc @ xc) * n_inv + LN_EPS)
            qkv += bqkv
            kc, vc = self.kb[li, 0, :, : pos + 1], self.vb[li, 0, :, : pos + 1]
            kc[:, pos] = qkv[hh : 2 * hh].reshape(nh, hd)
            vc[:, pos] = qkv[2 * hh :].reshape(nh, hd)
            s = np.matmul(qkv[:hh].reshape(nh, 1, hd), kc.transpose(0, 2, 1))  # [nh, 1, pos+1], pre-scaled
            s -= s.max(axis=-1, keepdims=True)
            np.exp(s, out=s)
            a = np.matmul(s, vc)  # [nh, 1, hd], not yet normalised
            a /= s.sum(axis=-1, keepdims=True)
            x = x + a.reshape(hh) @ wp + bp
            xc = x - x.sum() * n_inv
            z = xc @ wfc
            z *= 1.0 / math.sqrt(float(xc @ xc) * n_inv + LN_EPS)
            z += bfc
            e = _erf(z)
            e += 1.0
            e *= z
            x = x + e @ wout + bout
        xc = x - x.sum() * n_inv
        out = xc @ self.head[0]
        rstd = 1.0 / math.sqrt(float(xc @ xc) * n_inv + LN_EPS)
        out *= rstd
        out += self.head[1]
        self._final_rows = (xc[None], np.array([rstd], np.float32))
        self._primed[:] = False
        return out

    def end_logit_row(self, b: int) -> float:
        """Row b's clip-end logit after its last position (stepped with the others or primed alone)."""
        if self.end is None:
            raise ValueError("this model has no clip-end head")
        if self._primed[b] or self._final_rows is None:
            return self.window.end_logit_row(b)
        xc, r = self._final_rows
        return float(xc[b] @ self.end[0]) * float(r[b]) + self.end[1]


# GELU's erf: scipy's makes a whole one-row generation ~6 % faster than torch.erf (tier 1: 957 -> 897 ms
# for 4 x 10 s; tier 2: 727 -> 686 ms for 10 s), the batched one unchanged, though torch.erf alone is
# faster on a [4, 512] array (2 against 14 us): between NumPy calls each torch call costs far more than
# in a loop of its own. Within 1 ulp of torch.erf.
_erf = _special_erf


def _erf_rows(z: np.ndarray) -> np.ndarray:
    """erf of several rows [B, 4H], through torch: 4 rows of 1,024 (tier 2) 38 -> ~10 us in a step
    (scipy's takes ~9 ns a value there); within 1 ulp of scipy's."""
    return torch.erf(torch.from_numpy(z)).numpy()


def _torch_attention(q: np.ndarray, k: torch.Tensor, v: torch.Tensor, p_len: int, bias: np.ndarray | None) -> np.ndarray:
    """Each row's attention over its first p_len cached positions in torch: q [B, heads, 1, head_dim]
    (pre-scaled), k and v tensor views of the caches [B, heads, S, head_dim], bias [B, 1, 1, P] or None
    -> [B, heads, 1, head_dim]."""
    s = torch.matmul(torch.from_numpy(q), k[:, :, :p_len].transpose(2, 3))
    if bias is not None:
        s += torch.from_numpy(bias)
    return torch.matmul(torch.softmax(s, -1), v[:, :, :p_len]).numpy()


def _torch_mm(a: np.ndarray, w: torch.Tensor) -> np.ndarray:
    """a @ w through torch's product (TORCH_PRODUCTS_FROM), a [B, n] NumPy array, w a tensor view of
    NumPy weights."""
    return torch.mm(torch.from_numpy(a), w).numpy()


# Folded weights per model, reused while its parameters are unchanged (each parameter's storage and
# in-place version counter): repeated generation from a loaded run skips the ~20-40 ms of folding.
_FOLDED: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def _folded_weights(model):
    """Constants folded into the weights once, so each step runs as few NumPy calls as possible:
    every LayerNorm's gain and bias go into the product that follows it (LN(x) @ W + b ==
    (x - mean) @ (g·W) / std + (beta @ W + b)), the attention scale into the query weights, GELU's
    1/√2 into the MLP's input weights and the remaining 1/√2 into the output weights
    (gelu(u) = z·(1 + erf(z))/√2 with z = u/√2)."""
    key = tuple((p.data_ptr(), p._version) for p in model.parameters())
    hit = _FOLDED.get(model)
    if hit is not None and hit[0] == key:
        return hit[1]

    def arr(t):
        return t.detach().to("cpu", torch.float64).numpy()

    def f32(a):
        return np.ascontiguousarray(a, dtype=np.float32)

    h = model.hidden_size
    scale = 1.0 / math.sqrt(h // model.num_heads)
    layers = []
    for b in model.blocks:
        g1, b1 = arr(b.ln1.weight), arr(b.ln1.bias)
        wqkv, bqkv = arr(b.qkv.weight).T, arr(b.qkv.bias)  # [H, 3H], [3H]
        wqkv_f, bqkv_f = g1[:, None] * wqkv, b1 @ wqkv + bqkv
        wqkv_f[:, :h] *= scale
        bqkv_f[:h] *= scale
        g2, b2 = arr(b.ln2.weight), arr(b.ln2.bias)
        wfc, bfc = arr(b.fc.weight).T, arr(b.fc.bias)
        wfc_f, bfc_f = g2[:, None] * wfc * INV_SQRT2, (b2 @ wfc + bfc) * INV_SQRT2
        wout = arr(b.out.weight).T * INV_SQRT2
        layers.append((f32(wqkv_f), f32(bqkv_f), f32(arr(b.proj.weight).T), f32(arr(b.proj.bias)),
                       f32(wfc_f), f32(bfc_f), f32(wout), f32(arr(b.out.bias))))
    gf, bf = arr(model.ln_f.weight), arr(model.ln_f.bias)
    wh, bh = arr(model.head.weight).T, arr(model.head.bias)
    head = (f32(gf[:, None] * wh), f32(bf @ wh + bh))
    end = None
    if model.end_head is not None:
        we, be = arr(model.end_head.weight)[0], arr(model.end_head.bias)[0]
        end = (f32(gf * we), float(bf @ we + be))
    with torch.no_grad():
        tok = f32(arr(model.token_emb.weight))
        pe = f32(arr(model._position_table(model.seq_len)))
    folded = (layers, head, end, tok, pe)
    _FOLDED[model] = (key, folded)
    return folded
