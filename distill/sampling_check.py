"""The generate settings checked before anything runs, each problem named by its control, in words.

The page shows the first problem next to the controls and changes nothing else; the library and the
API raise it as a ValueError. One place, so the page, the API and the sampler agree on the ranges."""
from __future__ import annotations

import math
from dataclasses import dataclass

MIN_SECONDS, MAX_SECONDS = 0.1, 600.0
MAX_TOP_K = 4096
MAX_SEED = 2**63 - 1 - 8  # seeds run seed, seed+1, ... one per variation


@dataclass(frozen=True)
class SamplingProblem:
    control: str  # "seconds", "temperature", "top_k", "top_p", "seed" or "follow"
    message: str


def _number(value) -> float | None:
    try:
        x = float(value)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def sampling_problems(seconds, temperature=1.0, top_k=0, top_p=1.0, seed=0, follow=0.9) -> list[SamplingProblem]:
    """Every setting outside what the sampler can use; [] when all of them are fine."""
    out: list[SamplingProblem] = []
    s = _number(seconds)
    if s is None:
        out.append(SamplingProblem("seconds", f"Duration: type a length in seconds, from {MIN_SECONDS:g} to "
                                              f"{MAX_SECONDS:.0f} (10 minutes)."))
    elif not MIN_SECONDS <= s <= MAX_SECONDS:
        side = "too short" if s < MIN_SECONDS else "too long"
        out.append(SamplingProblem("seconds", f"Duration: {s:g} s is {side}. Choose from {MIN_SECONDS:g} s to "
                                              f"{MAX_SECONDS:.0f} s (10 minutes)."))
    t = _number(temperature)
    if t is None or not 0 <= t <= 10:
        out.append(SamplingProblem("temperature", "Temperature: choose a number from 0 (safest) to 2 (wildest)."))
    k = _number(top_k if top_k not in (None, "") else 0)
    if k is None or k != int(k) or not 0 <= k <= MAX_TOP_K:
        out.append(SamplingProblem("top_k", f"Top-k: a whole number from 0 (off) to {MAX_TOP_K}."))
    p = _number(top_p)
    if p is None or not 0 < p <= 1:
        out.append(SamplingProblem("top_p", "Top-p: a number above 0 and at most 1 (1 = off)."))
    sd = _number(seed if seed not in (None, "") else 0)
    if sd is None or sd != int(sd) or not 0 <= sd <= MAX_SEED:
        out.append(SamplingProblem("seed", "Seed: a whole number, 0 or more (the same seed gives the same sound)."))
    f = _number(follow)
    if f is None or not 0 <= f <= 1:
        out.append(SamplingProblem("follow", "Follow your material: from 0 (the model alone) to 1."))
    return out
