"""The tier card: which size tier a dataset gets, why, with which settings, and what to watch out for.

Pure Python over the scan's numbers, so the page can show it the moment a folder is scanned.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

from distill.config import (
    HIGH_SAMPLE_RATE,
    TIER_NAMES,
    AudioConfig,
    PriorConfig,
    VQVAEConfig,
    high_rate_seconds,
    tier_for,
)

MIN_RECOMMENDED_FILES = 5


@dataclass
class TierCard:
    tier: int
    name: str
    reasons: list[str]
    settings: dict
    warnings: list[str] = field(default_factory=list)
    code_tokens: int = 0
    training_windows: int = 0  # the prior's context windows the training files fill (training_windows)
    eta_s: float | None = None
    device: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


def code_token_count(file_seconds: list[float], audio: AudioConfig, vq: VQVAEConfig) -> int:
    """How many prior tokens the dataset yields: code steps per file × levels."""
    fps = audio.frames_per_second
    steps = 0
    for s in file_seconds:
        frames = int(min(s, audio.max_seconds) * fps) + 1
        steps += math.ceil(frames / vq.downsample)
    return steps * vq.num_quantizers


def _fmt_seconds(s: float) -> str:
    if s < 90:
        return f"{s:.1f} s"
    if s < 5400:
        return f"{s / 60:.1f} min"
    return f"{s / 3600:.1f} h"


def training_windows(tokens: int, audio: AudioConfig, vq: VQVAEConfig, prior: PriorConfig) -> tuple[int, float]:
    """(windows, seconds per window): how many of the prior's context windows the files that train fill
    (the held-out share checks, it does not train), and how long one window sounds. The card and the
    warnings give this one number."""
    context = max(prior.seq_len(vq.num_quantizers), 1)
    train_tokens = tokens * (1.0 - prior.val_fraction)
    window_s = prior.context_steps * vq.downsample / audio.frames_per_second
    return max(1, math.ceil(train_tokens / context)) if tokens else 0, window_s


def rate_reason(audio: AudioConfig, source_rates: list[tuple[int, float]]) -> str:
    """Why this sample rate, in the material's own numbers."""
    high, total = high_rate_seconds(source_rates)
    top = max(r for r, _ in source_rates)
    share = f"{_fmt_seconds(high)} of your {_fmt_seconds(total)} of audio is" if high else "none of your audio is"
    if audio.sample_rate >= HIGH_SAMPLE_RATE:
        return (f"Sound is worked on at {audio.sample_rate / 1000:g} kHz: {share} recorded at 44.1 kHz or more, so "
                f"everything up to {audio.sample_rate / 2000:g} kHz is kept (cymbals, breath, air).")
    why = (f"{share} recorded at 44.1 kHz or more (the highest rate is {top / 1000:g} kHz), so little lives above "
           f"{audio.sample_rate / 2000:g} kHz, and the band below it gets finer pitch detail") if high < total else ""
    return f"Sound is worked on at {audio.sample_rate / 1000:g} kHz" + (f": {why}." if why else ".")


TIER_BOUNDS = {1: "20 or fewer files", 2: "21 to 100 files", 3: "more than 100 files"}
THIN_WINDOWS = 20  # fewer training windows than this: the prior will memorise early


def describe_tier(
    file_seconds: list[float],
    audio: AudioConfig,
    vq: VQVAEConfig,
    prior: PriorConfig,
    skipped_count: int = 0,
    truncated_count: int = 0,
    source_rates: list[tuple[int, float]] | None = None,
) -> TierCard:
    """source_rates: each used file's own (sample rate, seconds), for the words on the working rate."""
    n = len(file_seconds)
    tier = tier_for(n)
    total = sum(min(s, audio.max_seconds) for s in file_seconds)
    tokens = code_token_count(file_seconds, audio, vq)
    windows, window_s = training_windows(tokens, audio, vq, prior)
    code_rate = audio.frames_per_second / vq.downsample
    tier_word = TIER_NAMES[tier].split(" (")[0].lower()
    files = f"{n} usable file{'s' if n != 1 else ''}"
    # Honest about the rule: the tier follows the file count alone (the seed's table), not the minutes.
    reasons = [
        f"Tier chosen by file count: {files} → the {tier_word} tier ({TIER_BOUNDS[tier]}). The size follows "
        "how many files there are, not how long they are: many short files get a bigger model than a few long ones.",
        f"What that means for these files: {_fmt_seconds(total)} of audio in all, about {tokens:,} moments of sound "
        f"to learn from (code tokens: {code_rate:.1f} code steps per second × {vq.num_quantizers} levels), which "
        f"fill {windows:,} training window{'s' if windows != 1 else ''} of {window_s:.1f} s (this preset's context) once "
        f"{round(prior.val_fraction * 100)}% of the files are held out to check it learns rather than memorises.",
        f"Codebook of {vq.codebook_size} codes per level, {vq.num_quantizers} residual levels"
        + (f" that the sequence model learns, and {vq.detail_levels} detail levels that keep the fine texture of "
           "your own sounds (a new sound takes its texture from your material)" if vq.detail_levels else "")
        + (f", with {vq.spectral_levels} levels of spectral detail for what the codec would otherwise smooth over"
           if vq.spectral_levels else "")
        + f"; sequence model of {prior.num_layers} layers × {prior.hidden_size} wide, dropout {prior.dropout}. "
        "Before it trains, a one-second speed test may make it smaller to fit the time budget on this machine; "
        "the Training tab then says what changed.",
    ]
    if source_rates:
        reasons.insert(2, rate_reason(audio, source_rates))
    warnings: list[str] = []
    if n == 0:
        warnings.append("No usable files: there is nothing to train on.")
    elif n < MIN_RECOMMENDED_FILES:
        warnings.append(
            f"Only {n} usable file{'s' if n != 1 else ''}: training works, but results improve a lot with at least "
            f"{MIN_RECOMMENDED_FILES}. With so little material the model will mostly learn to repeat it."
        )
    if n and total / n < 0.5:
        warnings.append(
            f"The files are very short (average {total / n:.2f} s): each gives only a few code steps, so the prior "
            "sees little context. Longer recordings teach it more."
        )
    if n and windows < THIN_WINDOWS:
        warnings.append(
            f"{_fmt_seconds(total)} of audio fills only {windows:,} training window{'s' if windows != 1 else ''}: "
            f"thin for a sequence model of {prior.num_layers} layers × {prior.hidden_size}. "
            "Expect it to start memorising early; Distill keeps the best version before that happens. More or "
            "longer recordings help most."
        )
    if skipped_count:
        warnings.append(f"{skipped_count} file{'s were' if skipped_count != 1 else ' was'} skipped — see the reasons in the file list.")
    if truncated_count:
        warnings.append(
            f"{truncated_count} file{'s are' if truncated_count != 1 else ' is'} longer than "
            f"{_fmt_seconds(audio.max_seconds)}: only the start of each is used."
        )
    settings = {"audio": asdict(audio), "vqvae": asdict(vq), "prior": asdict(prior)}
    return TierCard(tier=tier, name=TIER_NAMES[tier], reasons=reasons, settings=settings, warnings=warnings,
                    code_tokens=tokens, training_windows=windows)
