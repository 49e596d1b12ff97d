"""How good is the prior, and is it copying? Pure functions over code sequences.

Codes are one integer array [T, Q] per file (torch or numpy). Bits are base-2 cross-entropies per
token, so they compare directly with log2(codebook_size) (a model that knows nothing).
"""
from __future__ import annotations

import math
from typing import Iterable, Sequence

import numpy as np

# --- helpers ---------------------------------------------------------------------------------


def _np(codes) -> np.ndarray:
    if hasattr(codes, "detach"):
        codes = codes.detach().cpu().numpy()
    return np.asarray(codes).astype(np.int64, copy=False)


def _as_list(codes) -> list[np.ndarray]:
    """One [T, Q] array, or a list of them -> list of [T, Q] int64 arrays."""
    if isinstance(codes, (list, tuple)):
        return [_np(c) for c in codes]
    return [_np(codes)]


def _level_counts(codes_list: Sequence[np.ndarray], codebook_size: int, q: int) -> np.ndarray:
    """[Q, K] float64 code counts per level (`distill.codes.level_histograms`); zeros for no codes."""
    from distill.codes import level_histograms

    codes_list = [c for c in codes_list if c.size]
    if not codes_list:
        return np.zeros((q, codebook_size), dtype=np.float64)
    return level_histograms(codes_list, codebook_size).numpy().astype(np.float64)


def _num_levels(*lists: Sequence[np.ndarray]) -> int:
    for lst in lists:
        for c in lst:
            if c.ndim == 2:
                return c.shape[1]
    raise ValueError("no [T, Q] code arrays given")


# --- baselines -------------------------------------------------------------------------------


def unigram_bits(train_codes, eval_codes, codebook_size: int) -> float:
    """Bits/token of the per-level unigram (add-one smoothed counts of the training codes), on the
    evaluation tokens. The floor any sequence model has to beat."""
    train, ev = _as_list(train_codes), _as_list(eval_codes)
    q = _num_levels(train, ev)
    probs = _level_counts(train, codebook_size, q) + 1.0
    probs /= probs.sum(1, keepdims=True)
    logp = np.log2(probs)
    total, n = 0.0, 0
    for c in ev:
        for lvl in range(q):
            total -= logp[lvl, c[:, lvl]].sum()
        n += c.size
    return float(total / max(1, n))


def bigram_bits(train_codes, eval_codes, codebook_size: int, strength: float = 8.0) -> float:
    """Bits/token of a within-level bigram P(code at t | same level's code at t-1), from the
    training codes, smoothed towards the (add-one) level unigram with `strength` pseudo-counts.
    The first step of each file is scored by the unigram."""
    train, ev = _as_list(train_codes), _as_list(eval_codes)
    q, k = _num_levels(train, ev), codebook_size
    uni = _level_counts(train, k, q) + 1.0
    uni /= uni.sum(1, keepdims=True)  # [Q, K]
    pair = np.zeros((q, k, k), dtype=np.float64)
    for c in train:
        for lvl in range(q):
            if len(c) > 1:
                np.add.at(pair[lvl], (c[:-1, lvl], c[1:, lvl]), 1.0)
    cond = (pair + strength * uni[:, None, :]) / (pair.sum(2, keepdims=True) + strength)
    logc, logu = np.log2(cond), np.log2(uni)
    total, n = 0.0, 0
    for c in ev:
        if not c.size:
            continue
        for lvl in range(q):
            total -= logu[lvl, c[0, lvl]]
            total -= logc[lvl, c[:-1, lvl], c[1:, lvl]].sum()
        n += c.size
    return float(total / max(1, n))


# --- the prior ---------------------------------------------------------------------------------


def nll_bits(model, codes_list, batch_size: int = 16, device=None) -> float:
    """Held-out bits/token of a CodePrior: each file's flattened codes tiled from its start into
    windows of the model's length (each window starts on level 0, as in training), every token scored."""
    import torch
    import torch.nn.functional as F

    dev = device or next(model.parameters()).device
    seq_len = model.seq_len
    windows = []
    for c in _as_list(codes_list):
        flat = torch.from_numpy(np.ascontiguousarray(c.reshape(-1)))
        windows += [(flat[s : s + seq_len], s > 0) for s in range(0, len(flat), seq_len)]  # (codes, resumes)
    if not windows:
        raise ValueError("no codes to score")
    windows.sort(key=lambda w: len(w[0]), reverse=True)  # similar lengths batch together
    was_training = model.training
    model.eval()
    total, n = 0.0, 0
    try:
        with torch.no_grad():
            for i in range(0, len(windows), batch_size):
                chunk = windows[i : i + batch_size]
                width = len(chunk[0][0])
                x = torch.zeros(len(chunk), width, dtype=torch.long)
                y = torch.full((len(chunk), width), -100, dtype=torch.long)
                for r, (w, _) in enumerate(chunk):
                    x[r, : len(w)] = w
                    y[r, : len(w)] = w
                resume = torch.tensor([inside for _, inside in chunk], device=dev)
                logits = model(x.to(dev), resume=resume)
                total += float(F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.to(dev).reshape(-1),
                                               ignore_index=-100, reduction="sum"))
                n += int((y != -100).sum())
    finally:
        model.train(was_training)
    return total / n / math.log(2)


# --- histograms --------------------------------------------------------------------------------


def histogram_jsd(codes_a, codes_b, codebook_size: int) -> list[float]:
    """Per-level Jensen-Shannon divergence (bits, 0..1) between the code histograms of two sets of
    codes (each one [T, Q] array or a list of them). 0 = same usage, 1 = no code in common."""
    a, b = _as_list(codes_a), _as_list(codes_b)
    q = _num_levels(a, b)
    pa, pb = _level_counts(a, codebook_size, q), _level_counts(b, codebook_size, q)
    return [distribution_jsd(pa[lvl], pb[lvl]) for lvl in range(q)]


def distribution_jsd(counts_a: np.ndarray, counts_b: np.ndarray) -> float:
    """Jensen-Shannon divergence (bits, 0..1) between two histograms or unnormalised distributions
    over the same codes."""
    p = counts_a / max(counts_a.sum(), 1e-12)
    r = counts_b / max(counts_b.sum(), 1e-12)
    m = 0.5 * (p + r)
    return float(max(0.0, 0.5 * _kl_bits(p, m) + 0.5 * _kl_bits(r, m)))


def _kl_bits(p: np.ndarray, m: np.ndarray) -> float:
    nz = p > 0
    return float((p[nz] * np.log2(p[nz] / m[nz])).sum())


# --- copying -----------------------------------------------------------------------------------

_P1, _P2 = 2_147_483_647, 2_147_483_629  # two primes < 2**31: products fit in uint64
_B1, _B2 = 1_000_003, 999_983


def _powers(base: int, mod: int, n: int) -> np.ndarray:
    """[base**i % mod for i in 0..n-1], by doubling (vectorised)."""
    out = np.ones(max(n, 1), dtype=np.uint64)
    size, step = 1, base % mod
    while size < n:
        take = min(size, n - size)
        out[size : size + take] = (out[:take] * np.uint64(step)) % np.uint64(mod)
        size += take
        step = step * step % mod  # base**size for the next doubling
    return out[:n]


class _RollingHash:
    """Polynomial hashes of every window of a token array, two moduli combined into one uint64."""

    def __init__(self, tokens: np.ndarray):
        n = len(tokens)
        t = tokens.astype(np.uint64) + np.uint64(1)
        self.n = n
        self.parts = []
        for base, mod in ((_B1, _P1), (_B2, _P2)):
            pw = _powers(base, mod, n + 1)
            inv = _powers(pow(base, mod - 2, mod), mod, n + 1)  # base**-i
            terms = (t * pw[:n]) % np.uint64(mod)
            prefix = np.zeros(n + 1, dtype=np.uint64)
            # cumulative sums of values < 2**31 stay below 2**64 for n < 2**33; reduce at the end
            prefix[1:] = np.cumsum(terms) % np.uint64(mod)
            self.parts.append((prefix, inv[:n], mod))

    def windows(self, length: int) -> np.ndarray:
        """Hash of tokens[i:i+length] for every i in 0..n-length (uint64 keys)."""
        m = self.n - length + 1
        keys = []
        for prefix, inv, mod in self.parts:
            diff = (prefix[length : length + m] + np.uint64(mod) - prefix[:m]) % np.uint64(mod)
            keys.append((diff * inv[:m]) % np.uint64(mod))  # normalise to start at power 0
        return (keys[0] << np.uint64(32)) | keys[1]


def longest_common_run(generated: np.ndarray, references: Sequence[np.ndarray]) -> int:
    """Length of the longest run of consecutive `generated` tokens that appears verbatim inside one
    of `references` (1-D token arrays). Rolling hashes + binary search on the length:
    O((n + m) log n) numpy work; a double 31-bit-prime hash makes a false match vanishingly rare."""
    gen = np.asarray(generated, dtype=np.int64).reshape(-1)
    refs = [np.asarray(r, dtype=np.int64).reshape(-1) for r in references]
    refs = [r for r in refs if r.size]
    if not gen.size or not refs:
        return 0
    cat = np.concatenate(refs)
    file_id = np.repeat(np.arange(len(refs)), [len(r) for r in refs])
    gh, rh = _RollingHash(gen), _RollingHash(cat)

    def found(length: int) -> bool:
        if length > len(cat):
            return False
        starts_ok = file_id[: len(cat) - length + 1] == file_id[length - 1 :]  # not across files
        ref_keys = rh.windows(length)[starts_ok]
        gen_keys = np.sort(gh.windows(length))  # the small side sorted; the big side only searched
        pos = np.searchsorted(gen_keys, ref_keys).clip(max=len(gen_keys) - 1)
        return bool((gen_keys[pos] == ref_keys).any())

    lo, hi = 0, min(len(gen), max(len(r) for r in refs))  # lo: known found; find max
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if found(mid):
            lo = mid
        else:
            hi = mid - 1
    return lo


def copy_fraction(generated, training_codes: Iterable) -> float:
    """Longest run of consecutive generated (flattened) codes found verbatim in any one training
    file's flattened codes, over the generated length. 1.0 = the whole sample is a copy.
    generated: [T, Q] (or already-flat [N]); training_codes: list of [T', Q]."""
    gen = _np(generated).reshape(-1)
    if not gen.size:
        return 0.0
    refs = [_np(c).reshape(-1) for c in training_codes]
    return longest_common_run(gen, refs) / gen.size
