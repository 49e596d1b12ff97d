"""Variations of a sound through a trained run.

"Keep the shape, new detail" (mode "shape"): the input's coarse levels are kept and the finer ones
sampled anew. In the flattened stream every kept code is forced and the others sampled, so each new
fine code follows the kept coarse codes before it, as in training (and retrieval looks up what
finer codes followed those coarse codes in the material).
"Continue from here" (mode "continue"): everything before a point is kept and the prior continues
it for a chosen length.
Several variations run as one batched sampling pass (distill/models/batch_sampling.py); variation i
uses seed + i and gives the codes a one-row pass with that seed gives.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace

import numpy as np
import torch

from distill.config import SAMPLING_DEFAULTS

MODES = ("shape", "continue")
MAX_COUNT = 8  # variations per pass
MAX_CONTINUE_SECONDS = 60.0


class VariationError(ValueError):
    """Settings that cannot make a variation; the message is for people."""


@dataclass
class VariationSettings:
    mode: str = "shape"
    keep_levels: int = 1  # shape: coarse levels kept from the input (1..Q-1)
    at_seconds: float = 1.0  # continue: the point the new material starts from
    seconds: float = 2.0  # continue: how much new material
    count: int = 1
    seed: int = 0
    temperature: float = SAMPLING_DEFAULTS["temperature"]
    top_k: int = SAMPLING_DEFAULTS["top_k"]
    top_p: float = SAMPLING_DEFAULTS["top_p"]
    follow: float = SAMPLING_DEFAULTS["retrieval"]  # how closely to follow the material (0: the model alone)

    def to_dict(self) -> dict:
        return asdict(self)


def steps_per_second(run) -> float:
    return run.audio_config.frames_per_second / run.vqvae_config.downsample


def continue_step(run, settings: VariationSettings, input_steps: int) -> int:
    """The code step a continuation starts from (everything before it is kept)."""
    return max(1, min(input_steps, round(settings.at_seconds * steps_per_second(run))))


def check_settings(run, settings: VariationSettings, input_steps: int) -> None:
    """Raise VariationError, in words, for settings this run and input cannot take."""
    q = run.vqvae_config.num_quantizers
    if settings.mode not in MODES:
        raise VariationError("Choose 'keep the shape' or 'continue from here'.")
    if not 1 <= int(settings.count) <= MAX_COUNT:
        raise VariationError(f"Make between 1 and {MAX_COUNT} variations at once.")
    if not all(math.isfinite(float(v)) for v in (settings.temperature, settings.top_p, settings.follow,
                                                   settings.at_seconds, settings.seconds)):
        raise VariationError("Every setting must be a number.")
    if settings.temperature < 0 or not 0 < settings.top_p <= 1 or settings.top_k < 0:
        raise VariationError("Temperature must be ≥ 0, top-p in (0, 1] and top-k ≥ 0.")
    if not 0 <= settings.follow <= 1:
        raise VariationError("'Follow your material' must be between 0 and 1.")
    if settings.mode == "shape" and not 1 <= int(settings.keep_levels) <= q - 1:
        raise VariationError(f"Keep between 1 and {q - 1} of this run's {q} levels (keeping all {q} is a copy).")
    if settings.mode == "continue":
        length = input_steps / steps_per_second(run)
        if not 0 < settings.at_seconds <= length + 1e-6:
            raise VariationError(f"Choose a point inside the sound: between 0 and {length:.2f} s.")
        if not 0 < settings.seconds <= MAX_CONTINUE_SECONDS:
            raise VariationError(f"Continue for between 0.1 and {MAX_CONTINUE_SECONDS:.0f} seconds.")


def vary_codes(run, codes: np.ndarray, settings: VariationSettings, backend: str | None = None) -> list[np.ndarray]:
    """`settings.count` variations of codes [T', Q] -> one codes array [T'', Q] each (seeds seed, seed+1, ...)."""
    codes = np.asarray(codes, dtype=np.int64)
    if codes.ndim != 2 or codes.shape[1] != run.vqvae_config.num_quantizers or not len(codes):
        raise VariationError("The input has no codes of this run's shape.")
    check_settings(run, settings, len(codes))
    seeds = [int(settings.seed) + i for i in range(int(settings.count))]
    sampling = dict(temperature=float(settings.temperature), top_k=int(settings.top_k), top_p=float(settings.top_p),
                    follow=float(settings.follow), backend=backend)
    if settings.mode == "shape":
        return keep_shape(run, codes, int(settings.keep_levels), seeds, **sampling)
    at = continue_step(run, settings, len(codes))
    new = max(1, math.ceil(settings.seconds * steps_per_second(run)))
    return continue_from(run, codes, at, new, seeds, **sampling)


def keep_shape(run, codes: np.ndarray, keep_levels: int, seeds: list[int], temperature: float = 1.0, top_k: int = 0,
               top_p: float = 1.0, follow: float = SAMPLING_DEFAULTS["retrieval"], backend: str | None = None):
    """Levels 0..keep_levels-1 of codes [T', Q] kept, the rest sampled -> one [T', Q] per seed."""
    from distill.models.batch_sampling import sample_rows

    t, q = codes.shape
    forced = codes.copy()
    forced[:, keep_levels:] = -1  # -1: sampled
    out = sample_rows(run.prior, t * q, generators(seeds), temperature, top_k, top_p, forced=forced.reshape(-1),
                      clip_ends=False, retrieval=retrieval_for(run, follow), backend=backend)
    return [row.reshape(t, q).cpu().numpy() for row in out.tokens]


def continue_from(run, codes: np.ndarray, at_step: int, new_steps: int, seeds: list[int], temperature: float = 1.0,
                  top_k: int = 0, top_p: float = 1.0, follow: float = SAMPLING_DEFAULTS["retrieval"],
                  backend: str | None = None):
    """codes[:at_step] kept, then new_steps sampled after them -> one [at_step + new_steps, Q] per seed.
    The prior sees the last half window before the point, as `generate_codes` continues a file."""
    from distill.models.batch_sampling import sample_rows

    q = codes.shape[1]
    kept = codes[:at_step]
    context = run.prior.seq_len // q
    tail = kept[-max(1, context // 2):]
    out = sample_rows(run.prior, new_steps * q, generators(seeds), temperature, top_k, top_p,
                      prompt=torch.as_tensor(tail.reshape(-1), dtype=torch.long), clip_ends=False,
                      prompt_starts_clip=len(tail) == len(kept), retrieval=retrieval_for(run, follow), backend=backend)
    return [np.concatenate([kept, row.reshape(new_steps, q).cpu().numpy()]) for row in out.tokens]


def generators(seeds: list[int]) -> list[torch.Generator]:
    """One generator per row, each seeded as a one-row run with that seed would be."""
    return [torch.Generator().manual_seed(int(s)) for s in seeds]


def retrieval_for(run, follow: float, whole_sounds: bool = False):
    """The run's training codes indexed for sampling at this `follow` weight (None at 0: the model alone).
    whole_sounds: a fresh clip may last as long as the file whose length it was given (a pack keeps
    only clips at least as long as the shortest file, so the shorter default cap would drop them all)."""
    from distill.models.retrieval import RetrievalSettings

    if follow <= 0:
        return None
    settings = RetrievalSettings(weight=float(follow))
    if whole_sounds:
        settings = replace(settings, max_clip_factor=max(1.0, settings.max_clip_factor))
    return run.retrieval_index(settings)


def with_detail(run, source, settings: VariationSettings, codes: np.ndarray) -> np.ndarray:
    """A variation's codes [T', Q] -> the codes it is heard with [T', Q + detail_width]: what is kept
    of the input before a continuation keeps the input's own detail; everything new takes its detail
    from the material (a kept shape has new finer codes, which the input's detail would not fit, and
    which it keeps: `new_fine_codes`)."""
    known = None
    if settings.mode == "continue" and source.detail is not None:
        known = source.detail[: continue_step(run, settings, len(source.codes))]
    return run.with_detail(codes, known, new_fine_codes=settings.mode == "shape")


def render_variation(run, source, settings: VariationSettings, codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A variation's codes [T', Q] -> (the codes it is heard with, `with_detail`; its audio)."""
    from distill.generate import decode_codes

    full = with_detail(run, source, settings, codes)
    return full, decode_codes(run.vqvae, run.audio_config, full)  # as they are: `full` is what is heard


def save_variations(run, source, settings: VariationSettings, results: list[np.ndarray],
                    rendered: list[tuple[np.ndarray, np.ndarray]] | None = None) -> list[dict]:
    """Save each variation in the run's samples/ like any sample (audio, codes, sidecar naming its input
    and settings), decoding it unless `rendered` (`render_variation` of each) has it already -> the
    saved samples, with their codes."""
    from distill.generate import save_sample

    sr = run.audio_config.sample_rate
    shape = {"keep_levels": int(settings.keep_levels)} if settings.mode == "shape" else \
        {"at_seconds": float(settings.at_seconds), "new_seconds": float(settings.seconds)}
    out = []
    for i, codes in enumerate(results):
        full, wave = rendered[i] if rendered is not None else render_variation(run, source, settings, codes)
        meta = {"kind": "variation", "mode": settings.mode, **shape, "input": source.describe(),
                "seed": int(settings.seed) + i, "temperature": float(settings.temperature), "top_k": int(settings.top_k),
                "top_p": float(settings.top_p), "retrieval": float(settings.follow)}
        q = codes.shape[1]
        heard = full[:, :q]  # the finer codes of stretches taken from the material, where it went on along one
        saved = save_sample(run.run_dir, wave, sr, heard, meta, detail=full[:, q:])  # (width 0: no detail levels)
        out.append({**saved, "seconds": round(len(wave) / sr, 3), "seed": meta["seed"], "codes": heard})
    return out
