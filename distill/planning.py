"""What a training run will be, before it starts: options, presets, the time budget's split between
the two models, the configs and tier card for a scanned dataset, and an upper estimate of its time."""
from __future__ import annotations

from dataclasses import dataclass, field

from distill.config import (
    HIGH_SAMPLE_RATE,
    PROJECT_SAMPLE_RATE,
    AudioConfig,
    PriorConfig,
    VQVAEConfig,
    apply_overrides,
    get_adaptive_prior_config,
    get_adaptive_vqvae_config,
    sample_rate_for,
)
from distill.events import Stage
from distill.scan import DatasetError, ScanReport, nothing_usable_message, source_rates
from distill.tiers import TierCard, describe_tier

PRESETS = ("auto", "quick")


@dataclass
class TrainOptions:
    preset: str = "auto"  # "auto": the seed's tier table; "quick": small and fast, for first looks and tests
    minutes: float | None = None  # total training budget (VQ-VAE + prior); None: the preset's default
    seed: int = 0
    device: str = "auto"
    num_quantizers: int = 3
    sample_rate: int = 0  # the rate to work at; 0: chosen from the material (config.sample_rate_for)
    vqvae_overrides: dict = field(default_factory=dict)
    prior_overrides: dict = field(default_factory=dict)
    audio_overrides: dict = field(default_factory=dict)
    cache_dir: str | None = None


@dataclass
class TrainingPlan:
    audio_config: AudioConfig
    vqvae_config: VQVAEConfig
    prior_config: PriorConfig
    tier_card: dict


# Share of the training budget each model gets when both train; the rest covers features, codes
# and analysis. A model trained alone (a prior retrain) gets the whole budget.
VQVAE_SHARE, PRIOR_SHARE = 0.45, 0.45
MIN_MINUTES = 0.05


def split_budget(minutes: float, training: tuple[str, ...] = (Stage.VQVAE, Stage.PRIOR)) -> dict[str, float]:
    """Seconds of the user's `minutes` for each model in `training`: {"vqvae": s, "prior": s}."""
    budget = max(MIN_MINUTES, float(minutes)) * 60
    if len(training) == 1:
        return {training[0]: round(budget, 1)}
    shares = {Stage.VQVAE: VQVAE_SHARE, Stage.PRIOR: PRIOR_SHARE}
    return {stage: round(budget * shares[stage], 1) for stage in training}


def preset_configs(file_count: int, options: TrainOptions,
                   training: tuple[str, ...] = (Stage.VQVAE, Stage.PRIOR),
                   sample_rate: int = PROJECT_SAMPLE_RATE) -> tuple[VQVAEConfig, PriorConfig]:
    """The preset's configs for `file_count` files worked on at `sample_rate`, with the options
    applied; `options.minutes` is split over the models in `training`."""
    if options.preset not in PRESETS:
        raise ValueError(f"unknown preset '{options.preset}': use one of {', '.join(PRESETS)}")
    vq = get_adaptive_vqvae_config(max(file_count, 1), num_quantizers=options.num_quantizers, sample_rate=sample_rate)
    prior = get_adaptive_prior_config(max(file_count, 1))
    if options.preset == "quick":
        vq.hidden_channels, vq.codebook_dim, vq.window_frames, vq.batch_size = 64, 32, 64, 8
        vq.max_steps, vq.eval_every, vq.time_budget_s = 400, 50, 40.0
        prior.hidden_size, prior.num_layers, prior.num_heads, prior.context_steps = 64, 2, 4, 48
        prior.max_epochs, prior.eval_every, prior.time_budget_s, prior.batch_size = 30, 25, 40.0, 8
        prior.patience = 6
    if options.minutes is not None:
        budgets = split_budget(options.minutes, training)
        vq.time_budget_s = budgets.get(Stage.VQVAE, vq.time_budget_s)
        prior.time_budget_s = budgets.get(Stage.PRIOR, prior.time_budget_s)
    vq.seed = prior.seed = options.seed
    vq.device = prior.device = options.device
    vq = apply_overrides(vq, options.vqvae_overrides)
    prior = apply_overrides(prior, options.prior_overrides)
    return vq, prior


def budget_fit_fields(options: TrainOptions) -> set[str] | None:
    """Fields the prior's budget fitting must leave alone (the user's own), or None: no fitting
    (the quick preset is already small, and explicit sizes are the user's call)."""
    return set(options.prior_overrides) if options.preset == "auto" else None


SAMPLE_RATES = (PROJECT_SAMPLE_RATE, HIGH_SAMPLE_RATE)


def audio_config_for(options: TrainOptions, source=None) -> AudioConfig:
    """How audio becomes frames for this training: at options.sample_rate, or (0) at the rate the
    material calls for (`source`: what the scan reads; read from the files' headers), then the
    options' own audio settings."""
    rate = int(options.sample_rate or 0)
    if rate and rate not in SAMPLE_RATES:
        raise ValueError(f"sample rate must be one of {', '.join(map(str, SAMPLE_RATES))} (or 0: chosen from your files)")
    if not rate:
        rate = sample_rate_for(source_rates(source)) if source is not None else PROJECT_SAMPLE_RATE
    return apply_overrides(AudioConfig.at_rate(rate), options.audio_overrides)


def plan_training(report: ScanReport, options: TrainOptions) -> TrainingPlan:
    """Configs and the tier card for a scanned dataset."""
    used = report.used
    if not used:
        raise DatasetError(nothing_usable_message(report))
    vq, prior = preset_configs(len(used), options, sample_rate=report.audio_config.sample_rate)
    card: TierCard = describe_tier(
        [e.seconds for e in used], report.audio_config, vq, prior,
        skipped_count=len([e for e in report.skipped if not e.path.endswith("/")]),
        truncated_count=sum(e.truncated for e in used),
        source_rates=[(e.sample_rate, e.seconds) for e in used if e.sample_rate > 0],
    )
    card.eta_s = estimate_seconds(report, vq, prior)
    from distill.device import describe_device, resolve_device
    from distill.resources import SettingsError, check_fits

    try:
        device = resolve_device(options.device)
        card.device = describe_device(device)
    except (RuntimeError, ValueError) as exc:
        card.warnings.append(str(exc))
        card.device = "unavailable"
        device = None
    tier_card = card.to_dict()
    if device is not None:
        try:
            tier_card["memory"] = check_fits(vq, prior, report.audio_config.n_mels, device.type)
        except SettingsError as exc:
            tier_card["memory"] = {"error": str(exc)}
            tier_card["warnings"].append(str(exc))
    return TrainingPlan(report.audio_config, vq, prior, tier_card)


def estimate_seconds(report: ScanReport, vq: VQVAEConfig, prior: PriorConfig) -> float:
    """Upper estimate of wall time: the stages stop at their budgets or earlier (early stopping)."""
    seconds = 2.0 + 0.002 * report.total_seconds  # features (cached) + code extraction
    return round(seconds + (vq.time_budget_s or 600.0) + (prior.time_budget_s or 600.0), 1)
