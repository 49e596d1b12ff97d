"""Fit the prior to the time budget: the seed's tier table is the ceiling, not a law.

On a CPU a tier-3 prior (6 layers × 512, batch 32 × 432 tokens) manages too few optimiser steps in a
short budget to learn anything, and there more, smaller steps beat bigger batches (README). So before
training, a short speed probe decides: first shrink the batch (down to MIN_BATCH), then, if that is
still not enough, step the model down to the next smaller tier's size. Settings the user chose
explicitly are never changed.
"""
from __future__ import annotations

from dataclasses import replace

from distill.config import PriorConfig

MIN_STEPS = 1000  # optimiser steps a prior needs to get clearly past the unigram on real codes (asterisk-en)
MIN_BATCH = 4
FASTEST_TOKENS_PER_S = 5e6  # more than any device trains a prior at: beyond it the budget decides, unprobed
SMALLER_SIZES = [(512, 6, 8), (256, 4, 4), (128, 2, 4)]  # (hidden, layers, heads), the tiers' sizes


def planned_steps(config: PriorConfig, tokens_per_s: float, num_quantizers: int) -> float:
    if not config.time_budget_s:
        return float("inf")
    return config.time_budget_s * tokens_per_s / (config.batch_size * config.seq_len(num_quantizers))


def fit_prior_to_budget(config: PriorConfig, codebook_size: int, num_quantizers: int, device,
                        fixed: set[str] | frozenset = frozenset(), probe=None) -> tuple[PriorConfig, str | None]:
    """Return (config to train, plain-words note or None). `fixed`: fields the user set by hand.
    `probe(config) -> tokens/s` defaults to a one-second timing on `device`."""
    if probe is None:
        from distill.training.prior_train import speed_probe

        def probe(cfg: PriorConfig) -> float:
            return speed_probe(cfg, codebook_size, num_quantizers, device, seconds=1.0)

    original = config
    tps = tps_original = probe(config)
    if planned_steps(config, tps, num_quantizers) >= MIN_STEPS:
        return config, None
    if "batch_size" not in fixed:
        need = config.time_budget_s * tps / (MIN_STEPS * config.seq_len(num_quantizers))
        config = replace(config, batch_size=max(MIN_BATCH, min(config.batch_size, int(need))))
    size_fixed = {"hidden_size", "num_layers", "num_heads"} & set(fixed)
    while not size_fixed and planned_steps(config, tps, num_quantizers) < MIN_STEPS:
        smaller = [s for s in SMALLER_SIZES if s[0] < config.hidden_size]
        if not smaller:
            break
        hidden, layers, heads = smaller[0]
        config = replace(config, hidden_size=hidden, num_layers=layers, num_heads=heads)
        tps = probe(config)
    if config == original:
        return config, None
    note = (
        f"Fitted to the time budget (the tier card's sequence model changed): to learn well in the "
        f"{config.time_budget_s / 60:.0f}-minute budget on this device, the sequence model "
        f"trains with batch {config.batch_size}"
        + (f" and a {config.num_layers}-layer × {config.hidden_size} size" if config.hidden_size != original.hidden_size else "")
        + f" instead of batch {original.batch_size}"
        + (f", {original.num_layers} layers × {original.hidden_size}" if config.hidden_size != original.hidden_size else "")
        + f" (about {planned_steps(config, tps, num_quantizers):,.0f} training steps instead of "
        f"{planned_steps(original, tps_original, num_quantizers):,.0f}). "
        "More time or a GPU lets it use the full size."
    )
    return config, note


def expected_prior_seconds(config: PriorConfig, codebook_size: int, num_quantizers: int, train_tokens: int,
                           probe_seconds: float = 0.3) -> float:
    """How long the prior should train, before it starts: its planned steps at the speed a short probe
    measures on this device, capped by its time budget (a small collection's prior ends long before it)."""
    from distill.training.prior_train import estimate_training_seconds, plan_prior_training, speed_probe

    plan = plan_prior_training(config, num_quantizers, max(1, train_tokens))
    planned_tokens = plan.total_steps * config.batch_size * plan.seq_len
    if config.time_budget_s and planned_tokens > FASTEST_TOKENS_PER_S * config.time_budget_s:
        return float(config.time_budget_s)  # the budget ends it on any device: no probe needed
    tokens_per_s = speed_probe(config, codebook_size, num_quantizers, config.device, seconds=probe_seconds)
    return estimate_training_seconds(config, num_quantizers, max(1, train_tokens), tokens_per_s)
