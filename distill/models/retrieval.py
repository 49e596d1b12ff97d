"""Retrieval from the training codes while sampling (kNN-LM style, over exact contexts).

A prior trained for minutes on a few files learns little more than which codes are common: sampled
on its own it gives the right sounds in no order (clicks, noise bursts). The training codes
themselves know what follows what. So while sampling, the clip's recent codes are looked up in the
training codes, and what followed them there gives a second next-code distribution, mixed with the
model's:

    p(next) = s * p_model + (1 - s) * counts_after_context / total,
    s = (1 - weight) * min(1, exp(H(retrieved) - H(model)))

The model's share s is `1 - weight` where the model is at least as sure as the material, and shrinks
where it is flatter: a near-uniform prior's share would otherwise drop a random code into a held
tone or a silence every few steps (a click), and the context that follows no longer matches
anything, so the sound breaks off.

The context of the code at step t, level q is the coarse path that led there: the level-0 codes of
the previous m steps, and the codes of levels 0..q-1 at step t itself. The longest m (up to
`max_context_steps`) whose context occurs at least `min_count` times in the material is used.
Coarse codes carry what a listener follows (pitch, loudness, which sound it is); the finer levels'
own history would make every context unique after a step or two, and a back-off that then drops
the oldest codes first would keep only the least informative ones. `min_count` >= 2 (3 by default) means the
retrieved distribution pools at least two places in the material, so a sample recombines the
material instead of replaying one file.
Each file's level-0 path begins with a file-start symbol and ends with a file-end symbol: a new
clip begins the way files begin, and how often the material ended after the longest context it has
seen decides whether the clip has ended. The end head is not mixed in there: trained for
minutes it says "maybe" everywhere, and even a tenth of that is a ~5 % chance per step of cutting a
sound short, so clips came out a fraction of the material's lengths (README).
A held sound (the same level-0 code step after step) looks the same to the lookup from its 13th step
to its 130th, and the longest holds, having the most steps, decide what follows: music froze into
drones. Past the context the lookup sees, a held code goes on as often as the material's holds of
that code that reached the same length did (`hold_guard`); so it does inside that context wherever the
context matched is the hold itself, for the same reason (`hold_guard_inside`). Where the match reaches
back before the hold began, its lead-in (a beat, a phrase) decides.
Contexts are matched by polynomial hashes, two 31-bit moduli (as in `distill.analysis`), kept to 58 bits
beside the context length.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from distill.analysis import _B1, _B2, _P1, _P2

_MODS = ((_B1, _P1), (_B2, _P2))


@dataclass(frozen=True)
class RetrievalSettings:
    weight: float = 0.9  # share of the retrieved distribution in the mix (0: the model alone)
    max_context_steps: int = 12  # longest level-0 history looked up, in time steps (~0.5 s)
    # a context must occur this often in the material to be used (3 measured better than 2 on small
    # collections: a context met twice often stands for one sound's two takes, README)
    min_count: int = 3
    # A clip that begins afresh is given the length of a file drawn from the material, and ends by
    # this many times that length at the latest (0: only where the material ends). Inside a sound that
    # repeats itself (a ringing, a ticking) every context recurs mid-file and the material almost
    # never ends after it, so without this a clip can loop there for far longer than the sounds of
    # the collection do (README).
    max_clip_factor: float = 0.75  # (0.75 measured better than 1.0 on small collections, README)
    # A sound held (the same level-0 code, step after step) beyond the context the lookup sees goes on
    # as often as the material's holds of that code of at least that length did: the context alone
    # cannot tell a hold's 13th step from its 130th, and the long holds, with the most steps, decide
    # what follows it, so music froze into drones for seconds (README).
    hold_guard: bool = True
    # The guard also acts inside the context the lookup sees, wherever the context it matched is the hold
    # itself (only the held code, repeated): a context's counts are occurrences, and a hold of 85 steps
    # holds 70-odd occurrences of "this code, 12 times" against one for each short hold of the code, so
    # one long hold decided that every hold went on to 12 steps, and from there (its holds that reached
    # 12 steps being that one) to 85. Counting each hold once, as the guard does, gives the material's
    # hold lengths (README).
    hold_guard_inside: bool = True


class CodeRetrieval:
    """Every (level, coarse context) in the training codes -> the codes that followed it."""

    def __init__(self, train_codes, codebook_size: int, num_quantizers: int, settings: RetrievalSettings):
        self.k, self.q, self.settings = codebook_size, num_quantizers, settings
        self.bos, self.eos = codebook_size, codebook_size + 1  # file-start and file-end symbols
        self.max_len = (settings.max_context_steps + 1) * num_quantizers  # tokens of history worth keeping
        files = [np.asarray(c, dtype=np.int64) for c in train_codes if len(c)]
        if not files:
            raise ValueError("no training codes to retrieve from")
        self.file_steps = np.sort([len(c) for c in files])  # the lengths a fresh clip is given
        self.holds = _hold_lengths(files, codebook_size)  # code -> sorted lengths of its level-0 holds
        m_max = settings.max_context_steps
        if not 0 <= m_max < 1 << (64 - _M_SHIFT):
            raise ValueError(f"max_context_steps must lie in 0..{(1 << (64 - _M_SHIFT)) - 1}")
        # tables[level] = (sorted keys, the codes that followed, in the same order); a key is the
        # context's hash with its length m in the top bits (`_key`), so one search finds every m at once
        self.tables: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        for level in range(num_quantizers):
            keys, nexts = [], []
            for c in files:
                t_len = len(c)
                path = np.concatenate([[self.bos], c[:, 0]])  # path[t] is the level-0 code of step t-1
                steps = np.arange(t_len + (1 if level == 0 else 0))  # level 0 also predicts the file end
                nxt = np.where(steps < t_len, c[np.minimum(steps, t_len - 1), level], self.eos)
                h = [np.zeros(len(steps), np.uint64) for _ in _MODS]
                for j in range(level):  # this step's coarser codes, most recent first
                    h = self._extend(h, c[steps, level - 1 - j], level - 1 - (level - 1 - j))
                for m in range(m_max + 1):
                    if m:
                        ok = steps + 1 - m >= 0  # the history reaches back to the file start at most
                        steps, nxt, h = steps[ok], nxt[ok], [x[ok] for x in h]
                        h = self._extend(h, path[steps + 1 - m], level + m - 1)
                    keys.append(((h[0] << np.uint64(32)) | h[1]) & np.uint64(_HASH_MASK) | np.uint64(m << _M_SHIFT))
                    nexts.append(nxt)
            k_all, n_all = np.concatenate(keys), np.concatenate(nexts).astype(np.int32)
            order = np.argsort(k_all, kind="stable")
            self.tables[level] = (k_all[order], n_all[order])
        self._pw = [[pow(b, i, p) for i in range(num_quantizers + m_max + 1)] for b, p in _MODS]

    @staticmethod
    def _extend(h, values, power: int):
        # add (value + 1) * B**power to each hash, for both moduli
        out = []
        for x, (base, mod) in zip(h, _MODS):
            term = (np.asarray(values, dtype=np.uint64) + np.uint64(1)) * np.uint64(pow(base, power, mod))
            out.append((x + term % np.uint64(mod)) % np.uint64(mod))
        return out

    def start(self, begins_clip: bool = True, draw: float = 0.5) -> "RetrievalState":
        """The retrieval state of a new clip (begins_clip: at the file-start symbol); `draw` in [0, 1)
        picks the file length it is given (the sampler draws it from its own random generator)."""
        cap = None
        if begins_clip and self.settings.max_clip_factor > 0:
            length = int(self.file_steps[min(len(self.file_steps) - 1, int(draw * len(self.file_steps)))])
            cap = max(1, round(self.settings.max_clip_factor * length))
        return RetrievalState(self, [self.bos] if begins_clip else [], cap)

    def _keys(self, history: list[int], current: list[int]) -> list[int]:
        """The table keys of a context for m = 0, 1, ... (as many level-0 steps of history as it has,
        up to max_context_steps)."""
        level, (pw1, pw2), h1, h2 = len(current), self._pw, 0, 0
        for j, v in enumerate(reversed(current)):
            h1, h2 = (h1 + (v + 1) * pw1[j]) % _P1, (h2 + (v + 1) * pw2[j]) % _P2
        keys = [_key(h1, h2, 0)]
        for m in range(1, min(self.settings.max_context_steps, len(history)) + 1):
            v = history[-m]
            h1, h2 = (h1 + (v + 1) * pw1[level + m - 1]) % _P1, (h2 + (v + 1) * pw2[level + m - 1]) % _P2
            keys.append(_key(h1, h2, m))
        return keys

    def lookup(self, history: list[int], current: list[int]) -> np.ndarray | None:
        """Counts [K + 2] (codes, then file start, file end) of what followed the longest context found
        >= min_count times: `history` = the clip's previous level-0 codes (oldest first, from the
        file-start symbol where the clip began afresh), `current` = this step's codes so far (its
        length is the level asked about). None when not even the shortest context is found."""
        return self.lookup_many([(history, current)])[0]

    def lookup_many(self, contexts: list[tuple[list[int], list[int]]]) -> list[np.ndarray | None]:
        """`lookup` for several (history, current) contexts: every context length of every context
        at one level is found in one pair of table searches. Rows with the same context (keeping an
        input's shape, every row has its coarse path) are looked up once."""
        return self.lookup_matched(contexts)[0]

    def lookup_matched(self, contexts: list[tuple[list[int], list[int]]]) -> tuple[list, list]:
        """`lookup_many`, and for each context the history steps m of the context it matched (None
        where nothing was found)."""
        found: list = [None] * len(contexts)
        matched: list = [None] * len(contexts)
        by_level: dict[int, list[int]] = {}
        first: dict[tuple, int] = {}
        twins = []
        m_max = self.settings.max_context_steps
        for i, (history, current) in enumerate(contexts):
            seen = first.setdefault((tuple(current), tuple(history[max(0, len(history) - m_max):])), i)
            if seen != i:
                twins.append((i, seen))
            else:
                by_level.setdefault(len(current), []).append(i)
        for level, rows in by_level.items():
            keys, nxt = self.tables[level]
            per_row = [self._keys(*contexts[i]) for i in rows]
            wanted = np.fromiter((k for ks in per_row for k in ks), np.uint64)
            left = np.searchsorted(keys, wanted, "left").tolist()
            right = np.searchsorted(keys, wanted, "right").tolist()
            at = 0
            for i, ks in zip(rows, per_row):
                # the longest context seen often enough (counts only fall as the context grows)
                for m in range(len(ks) - 1, -1, -1):
                    a, b = left[at + m], right[at + m]
                    if b - a >= self.settings.min_count:
                        found[i], matched[i] = np.bincount(nxt[a:b], minlength=self.k + 2), m
                        break
                at += len(ks)
        for i, seen in twins:
            found[i], matched[i] = found[seen], matched[seen]
        return found, matched


def hold_runs(level0: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The holds of a level-0 code path [T]: (the code of each run of one code, its length in steps)."""
    x = np.asarray(level0)
    if not len(x):
        return x[:0], np.zeros(0, np.int64)
    starts = np.concatenate([[0], np.flatnonzero(np.diff(x)) + 1])
    return x[starts], np.diff(np.concatenate([starts, [len(x)]]))


def _hold_lengths(files, codebook_size: int) -> list[np.ndarray]:
    """Per level-0 code, the sorted lengths (steps) of every run of it in the material."""
    lengths: list[list[int]] = [[] for _ in range(codebook_size)]
    for c in files:
        for code, n in zip(*(a.tolist() for a in hold_runs(c[:, 0]))):
            lengths[code].append(n)
    return [np.sort(np.asarray(v, dtype=np.int64)) for v in lengths]


_M_SHIFT = 58  # a key: the context length m in bits 58-63, a 58-bit hash below
_HASH_MASK = (1 << _M_SHIFT) - 1


def _key(h1: int, h2: int, m: int) -> int:
    return (((h1 << 32) | h2) & _HASH_MASK) | (m << _M_SHIFT)


class RetrievalState:
    """The current clip's coarse path; mixes the retrieved distribution into the model's."""

    def __init__(self, index: CodeRetrieval, history: list[int], clip_cap: int | None = None):
        self.index, self.history, self.current = index, history, []
        self.pushed = 0
        self.clip_cap = clip_cap  # time steps after which the clip has ended (None: only where the material ends)
        self.hold = 0  # steps the last level-0 code has been held for (0: none yet in this clip)
        self._cached = (-1, None, None)  # (pushed, counts, matched steps): one lookup serves the end check and the code

    def push(self, token: int) -> None:
        """The next token of the stream (tokens come level 0, 1, ..., Q-1, then the next step)."""
        self.current.append(int(token))
        self.pushed += 1
        if len(self.current) == self.index.q:
            code = self.current[0]
            self.hold = self.hold + 1 if self.hold and self.history[-1] == code else 1
            self.history.append(code)
            self.current = []
            if len(self.history) > 2 * self.index.settings.max_context_steps + 2:
                del self.history[: -self.index.settings.max_context_steps - 1]

    @staticmethod
    def prefetch(states: list["RetrievalState"]) -> None:
        """Look up the next code's counts of several states (over one index) in one `lookup_many`;
        their next `mix` and `material_end` use them (batched sampling)."""
        todo = [st for st in states if st._cached[0] != st.pushed]
        if todo:
            found, matched = todo[0].index.lookup_matched([(st.history, st.current) for st in todo])
            for st, counts, m in zip(todo, found, matched):
                st._cached = (st.pushed, counts, m)

    def _lookup(self) -> tuple:
        """(counts, history steps of the context matched) for the next code, looked up once per token."""
        if self._cached[0] != self.pushed:
            found, matched = self.index.lookup_matched([(self.history, self.current)])
            self._cached = (self.pushed, found[0], matched[0])
        return self._cached[1:]

    def _counts(self):
        return self._lookup()[0]

    def material_end(self) -> float | None:
        """Whether the clip has ended here (a step boundary): how often the material ended after the
        longest context it has seen (at worst, its end rate per step); None where retrieval found
        nothing, and the end head decides. A fresh clip as long as `clip_cap` steps has ended."""
        if self.clip_cap is not None and not self.current and self.pushed // self.index.q >= self.clip_cap:
            return 1.0
        counts = self._counts()
        return None if counts is None else float(counts[self.index.eos] / counts.sum())

    def end_mix(self, p_end: float) -> float:
        """material_end(), or the end head's probability `p_end` where it is None."""
        material = self.material_end()
        return p_end if material is None else material

    def mix(self, probs: np.ndarray) -> np.ndarray:
        """probs [K] for the next code (whose level this state knows) mixed with the retrieved ones."""
        counts = self._counts()
        if counts is not None and counts[: self.index.k].any():
            recalled = counts[None, : self.index.k] / float(counts[: self.index.k].sum())
            probs = _mixed(probs[None], recalled, self.index.settings.weight)[0]
        return self._held(probs)

    def _held(self, probs: np.ndarray) -> np.ndarray:
        """probs [K] with the hold guard (RetrievalSettings.hold_guard) applied at level 0: the held
        code goes on with the share of the material's holds of it that lasted at least one step more."""
        index, settings = self.index, self.index.settings
        if self.current or not settings.hold_guard or not self.hold:
            return probs
        matched = self._lookup()[1]
        inside = settings.hold_guard_inside and matched is not None and matched <= self.hold
        if self.hold < settings.max_context_steps and not inside:
            return probs
        code = self.history[-1]
        lengths = index.holds[code]
        reached = len(lengths) - int(np.searchsorted(lengths, self.hold, "left"))
        longer = len(lengths) - int(np.searchsorted(lengths, self.hold + 1, "left"))
        go_on = longer / reached if reached else 0.0
        rest = 1.0 - float(probs[code])
        if rest <= 1e-12:  # nothing else to go to
            return probs
        out = probs * ((1.0 - go_on) / rest)
        out[code] = go_on
        return out

    @staticmethod
    def mix_rows(states: list["RetrievalState"], probs: np.ndarray) -> np.ndarray:
        """`mix` for several states (over one index) at once: probs [B, K], row b mixed by states[b]
        (the same numbers, row for row, as one `mix` each)."""
        if len(states) == 1:  # one sample: `mix` itself, without the row bookkeeping
            return states[0].mix(probs[0])[None]
        index = states[0].index
        recalled = np.zeros((len(states), index.k))
        for b, st in enumerate(states):
            counts = st._counts()
            if counts is not None:
                recalled[b] = counts[: index.k]
        found = recalled.sum(-1)
        rows = np.flatnonzero(found > 0)
        if len(rows) == len(states):  # every row found its context (the usual case): no row gathering
            out = _mixed(probs, recalled / found[:, None], index.settings.weight)
        else:
            out = probs.copy()
            if len(rows):
                out[rows] = _mixed(probs[rows], recalled[rows] / found[rows, None], index.settings.weight)
        for b, st in enumerate(states):
            if not st.current:  # the hold guard acts at level 0 only
                out[b] = st._held(out[b])
        return out


def _mixed(model: np.ndarray, recalled: np.ndarray, weight: float) -> np.ndarray:
    """Rows [B, K] of the model's distribution mixed with the retrieved ones (module docstring)."""
    share = (1.0 - weight) * np.minimum(1.0, np.exp(_entropies(recalled) - _entropies(model)))
    return share[:, None] * model + (1.0 - share[:, None]) * recalled


def _entropies(p: np.ndarray) -> np.ndarray:
    """Each row's entropy (nats) of p [B, K]."""
    return -(p * np.log(np.where(p > 0, p, 1.0))).sum(-1)
