"""Detail levels for codes the sequence model made, taken from the material.

The codec has more residual levels than the sequence model learns (VQVAEConfig.detail_levels): the
first `num_quantizers` say which sound it is (the sequence model's job), the detail levels carry the
exact partials and texture that make a round trip sound like the file itself. A generated sound has
only the first kind. Its detail comes from the material: for every step, a place in the training
codes with the same coarse codes at that step (as far down the levels as the material has them) and,
among those, the nearest coarse sound over a few steps around it (the distance between the coarse
latents of the two windows); that place's detail codes are used. Where the place after the previous
step's is nearly as good, the copy goes on from there, so detail comes in stretches of real material
rather than from a new place every step (which flickers). Detail copied from a place with other
coarse codes would not fit them: a detail level quantises what the levels above it left, so it only
means something on top of the codes it was made for. For the same reason a place whose detail carries
more than its coarse codes (the codec's coarse levels did not describe it) is never copied.

Deterministic: the same codes and material give the same detail. Memory stays small for long
collections: the detail codes as int16, the coarse codes and one sorted key per place, and coarse
latents computed for the places a step looks at.
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
    """The material's coarse codes and detail codes, searched by the coarse codes of a new sound."""

    def __init__(self, coarse_codes: list, detail_codes: list, level_embeds: list,
                 settings: DetailSettings = DetailSettings(), detail_embeds: list | None = None):
        """coarse_codes, detail_codes: per training file [T', Q] and [T', D] integer codes (the same
        files, the same lengths); level_embeds: the codec's Q coarse codebooks, each [K, dim];
        detail_embeds: its D detail codebooks (to leave out places whose detail outweighs their coarse
        codes)."""
        pairs = [(np.asarray(c), np.asarray(d)) for c, d in zip(coarse_codes, detail_codes) if len(c)]
        if not pairs:
            raise ValueError("no material to take detail from")
        self.settings = settings
        self.embeds = [np.asarray(e, np.float32) for e in level_embeds]
        self.q, self.k = len(self.embeds), len(self.embeds[0])
        self.coarse = np.concatenate([c for c, _ in pairs]).astype(np.int32)  # [N, Q]
        self.detail = np.concatenate([d for _, d in pairs]).astype(np.int16)  # [N, D]
        lengths = np.array([len(c) for c, _ in pairs])
        ends = np.cumsum(lengths)
        self.file_first, self.file_last = ends - lengths, ends - 1
        self.file_of = np.repeat(np.arange(len(pairs), dtype=np.int32), lengths)  # [N]
        mean = sum(e[self.coarse[:, q]].mean(0) for q, e in enumerate(self.embeds))
        spread = float(np.mean([((self._latent(self.coarse[i:i + 4096]) - mean) ** 2).sum(1).mean()
                                for i in range(0, len(self.coarse), 4096)]))
        self.scale = spread * (2 * settings.window + 1) or 1.0
        self.usable = self._usable_places(detail_embeds)
        # every place's coarse codes as one key, sorted: the places that share the first n levels'
        # codes with a step are then one contiguous run of the order, for every n
        self.key_levels = max(n for n in range(1, self.q + 1) if self.k ** n < 2**62)  # levels a key holds
        self.keys = self._prefix_keys(self.coarse, self.key_levels)
        self.order = np.argsort(self.keys, kind="stable").astype(np.int32)
        self.keys = self.keys[self.order]
        # a level-0 code the material never used borrows its nearest used code's places
        used = np.unique(self.coarse[self.usable, 0])
        e0 = self.embeds[0]
        self.stand_in = used[((e0[:, None, :] - e0[None, used, :]) ** 2).sum(-1).argmin(1)]

    @classmethod
    def from_codec(cls, codec, coarse_codes: list, detail_codes: list,
                   settings: DetailSettings = DetailSettings()) -> "DetailBank":
        embeds = [lvl.embed.detach().cpu().numpy() for lvl in codec.quantizer.levels]
        q = codec.coarse_levels
        return cls(coarse_codes, detail_codes, embeds[:q], settings, detail_embeds=embeds[q:])

    def _usable_places(self, detail_embeds: list | None) -> np.ndarray:
        """[N] bool: places whose detail may be copied. Where the detail levels carry more than the
        coarse codes (a latent the coarse codes do not describe, such as a file's hard first step),
        the detail fits no other coarse codes: on top of a new sound's it decoded to a blast."""
        usable = np.ones(len(self.coarse), bool)
        if detail_embeds is None:
            return usable
        embeds = [np.asarray(e, np.float32) for e in detail_embeds]
        for i in range(0, len(self.coarse), 4096):
            coarse = self._latent(self.coarse[i:i + 4096])
            detail = sum(e[self.detail[i:i + 4096, d]] for d, e in enumerate(embeds))
            usable[i:i + 4096] = (detail * detail).sum(1) <= (coarse * coarse).sum(1)
        return usable if usable.any() else np.ones_like(usable)

    @property
    def detail_levels(self) -> int:
        return self.detail.shape[1]

    def _prefix_keys(self, coarse: np.ndarray, n: int) -> np.ndarray:
        """[T, >= n] codes -> [T] int64: the first n levels' codes as one number (K^n < 2^62)."""
        key = np.zeros(len(coarse), np.int64)
        for q in range(n):
            key = key * self.k + coarse[:, q]
        return key

    def candidates(self, step_codes: np.ndarray) -> np.ndarray:
        """The material's places whose coarse codes equal `step_codes` [Q] on as many levels as any do."""
        codes = np.asarray(step_codes, np.int64).copy()
        codes[0] = self.stand_in[codes[0]]
        for n in range(self.key_levels, 0, -1):
            span = self.k ** (self.key_levels - n)  # the full keys that begin with this n-level prefix
            low = int(self._prefix_keys(codes[None, :n], n)[0]) * span
            a, b = np.searchsorted(self.keys, [low, low + span])
            places = self.order[a:b]
            places = places[self.usable[places]]
            if len(places):
                return places
        raise AssertionError("level 0 always has places")  # stand_in maps every code to a usable one

    def _latent(self, coarse: np.ndarray) -> np.ndarray:
        """[..., Q] coarse codes -> [..., dim]: the sum of their codebook vectors (what the decoder sees)."""
        return sum(self.embeds[q][coarse[..., q]] for q in range(self.q)).astype(np.float32)

    def fill(self, coarse: np.ndarray, known: np.ndarray | None = None) -> np.ndarray:
        """coarse [T, Q] codes -> their detail [T, D] (int64) from the material. `known` [T0, D]: the
        detail of the first T0 steps, kept as it is (a continuation of a sound with its own)."""
        coarse = np.asarray(coarse, np.int64)
        t_len = len(coarse)
        out = np.zeros((t_len, self.detail_levels), np.int64)
        t0 = 0
        if known is not None and len(known):
            t0 = min(len(known), t_len)
            out[:t0] = np.asarray(known)[:t0]
        if t0 >= t_len:
            return out
        offsets = np.arange(-self.settings.window, self.settings.window + 1)
        gen = self._latent(coarse)
        prev = -1
        for t in range(t0, t_len):
            target = gen[np.clip(t + offsets, 0, t_len - 1)]  # [2w+1, dim]
            cand = self.candidates(coarse[t])
            cost = self._costs(cand, target)
            at = int(cost.argmin())
            best = int(cand[at])
            if prev >= 0 and prev < self.file_last[self.file_of[prev]]:
                i = np.flatnonzero(cand == prev + 1)  # going on is a place with the same codes too
                if len(i) and float(cost[i[0]]) <= float(cost[at]) + self.settings.stay:
                    best = prev + 1
            out[t] = self.detail[best]
            prev = best
        return out

    def _costs(self, positions: np.ndarray, target: np.ndarray) -> np.ndarray:
        """Distance of the coarse windows around `positions` (clamped to their files) from `target`."""
        offsets = np.arange(-self.settings.window, self.settings.window + 1)
        files = self.file_of[positions]
        idx = np.clip(positions[:, None] + offsets[None, :], self.file_first[files, None], self.file_last[files, None])
        diff = self._latent(self.coarse[idx]) - target[None]
        return (diff * diff).sum(axis=(1, 2)) / self.scale
