"""Detail levels for codes the sequence model made, taken from the material.

The codec has more residual levels than the sequence model learns (VQVAEConfig.detail_levels): the
first `num_quantizers` say which sound it is (the sequence model's job), the detail levels carry the
exact partials and texture that make a round trip sound like the file itself. A generated sound has
only the first kind. Its detail comes from the material: every step takes a place in the training
codes, and that place's detail codes.

Places are chosen for the whole sound at once (a Viterbi search over the material, `places`). A step's
cost at a place is how far the coarse sound over a few steps around it is from the place's (the
distance between the coarse latents of the two windows); going on to the place after the previous
step's costs nothing more, and any other place costs `stay` more. So detail comes in stretches of real
material rather than from a new place every step, which flickers. A step may go on to the next place
wherever that place has the step's level-0 code, and then it takes that place's finer coarse codes too
(`realise`): the step then is the material's own latent, coarse codes and detail together, and the
stretch plays as the material did. Level 0, which says which sound it is, stays the sequence model's.
Otherwise a step takes a place with the same coarse codes (as far down the levels as the material has
them), since a detail level quantises what the levels above it left and only means something on top
of the codes it was made for. Chosen step by step, and going on only where the next place had all of
the step's coarse codes, 83 % of a generated drascula clip's steps took their detail from a new place:
its spectra jumped from step to step (README). A variation that keeps a sound's shape asks for new
finer codes, so there nothing goes on to places with other finer codes (`new_fine_codes`). A place
whose detail carries more than its coarse codes (the codec's coarse levels did not describe it) is
never copied. The codec's spectral detail (the log-mel its decoder leaves out) is copied only well
inside those stretches (`spectral_context`), where the decoded sound is the material's own; elsewhere
its codes are 0 (no change).

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
    # what a jump to another place of the material costs, against going on from the previous step's
    # place (distances are relative to the material's own spread: ~2 for two unrelated steps, 0 for
    # the same sound)
    stay: float = 0.5
    beam: int = 32  # places kept per step in the search (the cheapest paths so far)
    # the most steps a stretch of the material goes on for with finer codes other than the sound's own
    # (~1 s; 0: no limit): past it the detail stage would be replaying a file rather than recombining
    # the material (steps with the sound's own codes do not count: that is the sequence model's doing)
    longest: int = 24
    # Spectral detail (the log-mel the codec's decoder leaves out) is the material's only at steps whose
    # neighbours this many steps each side go on along the material too: the decoder's output at a step
    # depends on its neighbours, so only there is the decoded sound the one the residual was taken from.
    spectral_context: int = 2


class DetailBank:
    """The material's coarse codes and detail codes, searched by the coarse codes of a new sound."""

    def __init__(self, coarse_codes: list, detail_codes: list, level_embeds: list,
                 settings: DetailSettings = DetailSettings(), detail_embeds: list | None = None,
                 spectral_from: int | None = None):
        """coarse_codes, detail_codes: per training file [T', Q] and [T', D] integer codes (the same
        files, the same lengths); level_embeds: the codec's Q coarse codebooks, each [K, dim];
        detail_embeds: its D detail codebooks (to leave out places whose detail outweighs their coarse
        codes)."""
        pairs = [(np.asarray(c), np.asarray(d)) for c, d in zip(coarse_codes, detail_codes) if len(c)]
        if not pairs:
            raise ValueError("no material to take detail from")
        self.settings = settings
        # detail columns from this one on are spectral detail (distill/models/spectral_detail.py)
        self.spectral_from = spectral_from
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
        spectral_from = codec.detail_levels if getattr(codec, "spectral", None) is not None else None
        return cls(coarse_codes, detail_codes, embeds[:q], settings, detail_embeds=embeds[q:], spectral_from=spectral_from)

    def _usable_places(self, detail_embeds: list | None) -> np.ndarray:
        """[N] bool: places whose detail may be copied. Where the detail levels carry more than the
        coarse codes (a latent the coarse codes do not describe, such as a file's hard first step),
        the detail fits no other coarse codes: on top of a new sound's it decoded to a blast."""
        usable = np.ones(len(self.coarse), bool)
        if not detail_embeds:
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

    def realise(self, coarse: np.ndarray, known: np.ndarray | None = None, new_fine_codes: bool = False) -> np.ndarray:
        """coarse [T, Q] codes -> the codes the sound is heard with [T, Q + D] (int64): each step's detail
        from the material, and, where a step goes on along a stretch of the material with its level-0
        code, that stretch's finer coarse codes too. `known` [T0, D]: the detail of the first T0 steps,
        kept as it is with their codes (a continuation of a sound with its own). new_fine_codes: the
        finer coarse codes are kept everywhere (a variation made to have new ones). Spectral detail
        columns (`spectral_from` on) are the place's only well inside a stretch (`_plays_as_material`), else 0."""
        coarse = np.asarray(coarse, np.int64)
        t_len, q = len(coarse), self.q
        out = np.zeros((t_len, q + self.detail_levels), np.int64)
        out[:, :q] = coarse
        t0 = 0
        if known is not None and len(known):
            t0 = min(len(known), t_len)
            out[:t0, q:] = np.asarray(known)[:t0]
        if t0 < t_len and (self.detail_levels or not new_fine_codes):  # (else nothing would change)
            places = self.places(coarse, t0, go_on=not new_fine_codes)
            out[t0:, q:] = self.detail[places]
            same = np.zeros(len(places), bool)
            if not new_fine_codes:
                same = self.coarse[places, 0] == coarse[t0:, 0]
                out[t0:, 1:q][same] = self.coarse[places[same], 1:]
            if self.spectral_from is not None:
                # the material's spectral detail only where the decoded sound is the material's own:
                # elsewhere it is the residual of another sound
                out[t0:, q + self.spectral_from :][~self._plays_as_material(places, same)] = 0
        return out

    def _plays_as_material(self, places: np.ndarray, same: np.ndarray) -> np.ndarray:
        """[n] bool: steps that, with `spectral_context` neighbours on each side, go on along one file
        of the material, each the place after the previous step's, with that place's coarse codes."""
        n, w = len(places), self.settings.spectral_context
        link = np.zeros(n, bool)  # link[t]: step t goes on from step t - 1
        link[1:] = (places[1:] == places[:-1] + 1) & same[1:] & same[:-1] \
            & (self.file_of[places[1:]] == self.file_of[places[:-1]])
        broken = np.concatenate([[0], np.cumsum(~link[1:])])  # broken[t]: broken links among steps 1..t
        t = np.arange(n)
        lo, hi = np.clip(t - w, 0, n - 1), np.clip(t + w, 0, n - 1)
        return same & (broken[hi] == broken[lo])

    def places(self, coarse: np.ndarray, t0: int = 0, go_on: bool = True) -> np.ndarray:
        """The material's place each step t0.. of coarse [T, Q] takes: the path of places with the least
        cost, a step's cost being its coarse window's distance (`_costs`) and every jump (a place other
        than the one after the previous step's) costing `stay` more. A step's places are those with its
        coarse codes (`candidates`) and, with go_on, the next place after any kept one that has its
        level-0 code."""
        t_len, beam, jump = len(coarse), self.settings.beam, self.settings.stay
        offsets = np.arange(-self.settings.window, self.settings.window + 1)
        gen = self._latent(coarse)
        cap = self.settings.longest or t_len + 1
        states, backs = [], []  # per step: its places (sorted), and each one's best previous state
        prev = prev_cost = prev_run = None
        for t in range(t0, t_len):
            cand = np.unique(self.candidates(coarse[t]))  # in place order, for the search below
            if go_on and prev is not None:  # on from any kept place, where its next one has this level-0 code
                nxt = prev[prev < self.file_last[self.file_of[prev]]] + 1
                nxt = nxt[self.usable[nxt] & (self.coarse[nxt, 0] == coarse[t, 0])]
                cand = np.union1d(cand, nxt)
            cost = self._costs(cand, gen[np.clip(t + offsets, 0, t_len - 1)])
            other = (self.coarse[cand, 1:] != coarse[t, 1:]).any(1).astype(np.int64)  # finer codes not the step's
            if prev is None:
                back, run = np.full(len(cand), -1), other
            else:
                i = np.minimum(np.searchsorted(prev, cand - 1), len(prev) - 1)
                after = prev[i] == cand - 1  # the place after a kept one
                on = np.where(after & (prev_run[i] + other <= cap), prev_cost[i], np.inf)  # going on costs nothing more
                # a jump comes from the cheapest state, or the next cheapest where that one would go on past the cap
                order = np.argsort(prev_cost, kind="stable")[:2]
                src = np.full(len(cand), order[0])
                capped = (prev[order[0]] == cand - 1) & (prev_run[order[0]] + other > cap)
                src[capped] = order[1] if len(order) > 1 else -1
                jumped = np.where(src >= 0, prev_cost[np.maximum(src, 0)] + jump, np.inf)
                back = np.where(on <= jumped, i, src)
                cost = cost + np.minimum(on, jumped)
                b = np.maximum(back, 0)
                run = np.where((back >= 0) & (prev[b] == cand - 1), prev_run[b] + other, other)
            if len(cand) > beam:  # the cheapest paths only, kept in place order
                keep = np.sort(np.argpartition(cost, beam)[:beam])
                cand, cost, back, run = cand[keep], cost[keep], back[keep], run[keep]
            states.append(cand)
            backs.append(back)
            prev, prev_cost, prev_run = cand, cost, run
        path = np.zeros(len(states), np.int64)
        i = int(prev_cost.argmin())
        for j in range(len(states) - 1, -1, -1):
            path[j] = states[j][i]
            i = int(backs[j][i])
        return path

    def _costs(self, positions: np.ndarray, target: np.ndarray) -> np.ndarray:
        """Distance of the coarse windows around `positions` (clamped to their files) from `target`."""
        offsets = np.arange(-self.settings.window, self.settings.window + 1)
        files = self.file_of[positions]
        idx = np.clip(positions[:, None] + offsets[None, :], self.file_first[files, None], self.file_last[files, None])
        diff = self._latent(self.coarse[idx]) - target[None]
        return (diff * diff).sum(axis=(1, 2)) / self.scale
