"""Detail levels for codes the sequence model made, taken from the material.

The codec has more residual levels than the sequence model learns (VQVAEConfig.detail_levels): the
first `num_quantizers` say which sound it is (the sequence model's job), the detail levels carry the
exact partials and texture that make a round trip sound like the file itself. A generated sound has
only the first kind. Its detail comes from the material: for every step, the place in the training
codes whose coarse sound over a few steps around it is nearest (the same level-0 code at the step,
as far down the levels as the material has them, then the smallest distance between the coarse
latents of the two windows), and that place's detail
codes are used. Where the place after the previous step's is nearly as good, the copy goes on
from there, so detail comes in stretches of real material rather than a new place every step (a
new place every step flickers).

Deterministic: the same codes and material give the same detail.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class DetailSettings:
    window: int = 2  # steps on each side whose coarse sound is compared
    # going on from where the previous step's detail came from is kept while it is at most this much
    # worse than the best place (distances are relative to the material's own spread: ~2 for two
    # unrelated steps, 0 for the same sound)
    stay: float = 0.5


class DetailBank:
    """The material's coarse latents and detail codes, searched by the coarse codes of a new sound."""

    def __init__(self, coarse_codes: list, detail_codes: list, level_embeds: list, settings: DetailSettings = DetailSettings()):
        """coarse_codes, detail_codes: per training file [T', Q] and [T', D] integer codes (the same
        files, the same lengths); level_embeds: the codec's Q coarse codebooks, each [K, dim]."""
        pairs = [(np.asarray(c, np.int64), np.asarray(d, np.int64)) for c, d in zip(coarse_codes, detail_codes) if len(c)]
        if not pairs:
            raise ValueError("no material to take detail from")
        self.settings = settings
        self.embeds = [np.asarray(e, np.float32) for e in level_embeds]
        self.q = len(self.embeds)
        coarse = np.concatenate([c for c, _ in pairs])
        self.detail = np.concatenate([d for _, d in pairs])  # [N, D]
        self.latent = self._latent(coarse)  # [N, dim]
        lengths = np.array([len(c) for c, _ in pairs])
        ends = np.cumsum(lengths)
        starts = ends - lengths
        self.first = np.repeat(starts, lengths)  # [N] the first position of each position's file
        self.last = np.repeat(ends - 1, lengths)  # [N] its last position
        centred = self.latent - self.latent.mean(0)
        self.scale = float((centred**2).sum(1).mean()) * (2 * settings.window + 1) or 1.0
        # positions by the codes of their first n levels (n = 1..Q), as sorted keys: a step's detail
        # comes from a place with the same coarse codes as far down as the material has them
        self.k = len(self.embeds[0])
        self.keys, self.order = [], []
        for n in range(1, self.q + 1):
            key = self._prefix_keys(coarse, n)
            order = np.argsort(key, kind="stable")
            self.keys.append(key[order])
            self.order.append(order)
        # a level-0 code the material never used borrows its nearest used code's places
        used = np.unique(coarse[:, 0])
        e0 = self.embeds[0]
        self.stand_in = used[((e0[:, None, :] - e0[None, used, :]) ** 2).sum(-1).argmin(1)]

    @classmethod
    def from_codec(cls, codec, coarse_codes: list, detail_codes: list, settings: DetailSettings = DetailSettings()) -> "DetailBank":
        levels = codec.quantizer.levels[: codec.coarse_levels]
        return cls(coarse_codes, detail_codes, [lvl.embed.detach().cpu().numpy() for lvl in levels], settings)

    @property
    def detail_levels(self) -> int:
        return self.detail.shape[1]

    def _prefix_keys(self, coarse: np.ndarray, n: int) -> np.ndarray:
        key = np.zeros(len(coarse), np.int64)
        for q in range(n):
            key = key * self.k + coarse[:, q]
        return key

    def candidates(self, step_codes: np.ndarray) -> np.ndarray:
        """The material's places whose coarse codes equal `step_codes` [Q] on as many levels as any do."""
        codes = np.asarray(step_codes, np.int64).copy()
        codes[0] = self.stand_in[codes[0]]
        for n in range(self.q, 0, -1):
            key = self._prefix_keys(codes[None, :n], n)[0]
            a, b = np.searchsorted(self.keys[n - 1], [key, key + 1])
            if b > a:
                return self.order[n - 1][a:b]
        raise AssertionError("level 0 always has places")  # stand_in maps every code to a used one

    def _latent(self, coarse: np.ndarray) -> np.ndarray:
        """[T, Q] coarse codes -> [T, dim]: the sum of their codebook vectors (what the decoder sees)."""
        return sum(self.embeds[q][coarse[:, q]] for q in range(self.q)).astype(np.float32)

    def fill(self, coarse: np.ndarray, known: np.ndarray | None = None) -> np.ndarray:
        """coarse [T, Q] codes -> their detail [T, D] from the material. `known` [T0, D] (T0 <= T):
        the detail of the first T0 steps, kept as it is (a continuation of a sound with its own)."""
        coarse = np.asarray(coarse, np.int64)
        t_len = len(coarse)
        out = np.zeros((t_len, self.detail_levels), np.int64)
        t0 = 0
        if known is not None and len(known):
            t0 = min(len(known), t_len)
            out[:t0] = np.asarray(known)[:t0]
        if t0 >= t_len:
            return out
        w = self.settings.window
        offsets = np.arange(-w, w + 1)
        gen = self._latent(coarse)
        prev = -1
        for t in range(t0, t_len):
            target = gen[np.clip(t + offsets, 0, t_len - 1)]  # [2w+1, dim]
            cand = self.candidates(coarse[t])
            cost = self._costs(cand, target)
            at = int(cost.argmin())
            best = int(cand[at])
            if prev >= 0 and prev < self.last[prev]:
                i = np.flatnonzero(cand == prev + 1)  # going on is a place with the same codes too
                if len(i) and float(cost[i[0]]) <= float(cost[at]) + self.settings.stay:
                    best = prev + 1
            out[t] = self.detail[best]
            prev = best
        return out

    def _costs(self, positions: np.ndarray, target: np.ndarray) -> np.ndarray:
        """Distance of the coarse windows around `positions` (clamped to their files) from `target`."""
        offsets = np.arange(-self.settings.window, self.settings.window + 1)
        idx = np.clip(positions[:, None] + offsets[None, :], self.first[positions, None], self.last[positions, None])
        diff = self.latent[idx] - target[None]
        return (diff * diff).sum(axis=(1, 2)) / self.scale
