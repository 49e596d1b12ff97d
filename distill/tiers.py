"""The tier card: which size tier a dataset gets, why, with which settings, and what to watch out for.

Pure Python over the scan's numbers, so the page can show it the moment a folder is scanned.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

from distill.config import TIER_NAMES, AudioConfig, PriorConfig, VQVAEConfig, tier_for

MIN_RECOMMENDED_FILES = 5


@dataclass
class TierCard:
    tier: int
    name: str
    reasons: list[str]
    settings: dict
    warnings: list[str] = field(default_factory=list)
    code_tokens: int = 0
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


def describe_tier(
    file_seconds: list[float],
    audio: AudioConfig,
    vq: VQVAEConfig,
    prior: PriorConfig,
    skipped_count: int = 0,
    truncated_count: int = 0,
) -> TierCard:
    n = len(file_seconds)
    tier = tier_for(n)
    total = sum(min(s, audio.max_seconds) for s in file_seconds)
    tokens = code_token_count(file_seconds, audio, vq)
    bounds = {1: "20 or fewer files", 2: "21 to 100 files", 3: "more than 100 files"}[tier]
    code_rate = audio.frames_per_second / vq.downsample
    reasons = [
        f"{n} usable file{'s' if n != 1 else ''} → the {TIER_NAMES[tier].split(' (')[0].lower()} tier ({bounds}): "
        f"model size grows with the amount of material, so a small collection gets a small model that is slower to memorise it.",
        f"{_fmt_seconds(total)} of audio in all → about {tokens:,} code tokens "
        f"({code_rate:.1f} code steps per second × {vq.num_quantizers} levels) for the prior to learn from.",
        f"Codebook of {vq.codebook_size} codes per level, {vq.num_quantizers} residual levels; prior of "
        f"{prior.num_layers} layers × {prior.hidden_size} wide, dropout {prior.dropout}; "
        f"{round(prior.val_fraction * 100)}% of files held out to check it learns rather than memorises.",
    ]
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
    context_tokens = prior.seq_len(vq.num_quantizers)
    if n and tokens < 20 * context_tokens:
        warnings.append(
            f"Only about {tokens:,} code tokens in all (≈ {tokens / max(context_tokens, 1):.0f} training windows): "
            "thin for this model size. Expect it to start memorising early; Distill keeps the best version "
            "before that happens."
        )
    if skipped_count:
        warnings.append(f"{skipped_count} file{'s were' if skipped_count != 1 else ' was'} skipped — see the reasons in the file list.")
    if truncated_count:
        warnings.append(
            f"{truncated_count} file{'s are' if truncated_count != 1 else ' is'} longer than "
            f"{_fmt_seconds(audio.max_seconds)}: only the start of each is used."
        )
    settings = {"audio": asdict(audio), "vqvae": asdict(vq), "prior": asdict(prior)}
    return TierCard(tier=tier, name=TIER_NAMES[tier], reasons=reasons, settings=settings, warnings=warnings, code_tokens=tokens)
