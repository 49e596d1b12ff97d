"""Dataclass configs for every stage, and the adaptive tier rules.

Pure Python (no torch import) so the UI and CLI can describe a dataset instantly.
Every config is saved inside the run's manifest, so loading one is `Config(**json)`.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

PROJECT_SAMPLE_RATE = 24_000
# Material recorded at 44.1 kHz or more is worked on at 48 kHz, so what lives above 12 kHz (cymbals,
# air, the edge of a consonant) survives: the codec's round trip of 31 music tracks scored ViSQOL 3.9-4.1
# at 48 kHz against 2.9 at 24 kHz, at the same budget (README). Lower-rate material (telephone speech,
# old samples) has nothing up there and keeps 24 kHz, which gives its band more mel resolution.
HIGH_SAMPLE_RATE = 48_000
HIGH_RATE_SOURCES = 44_100  # recorded at this rate or more: worth the high rate
HIGH_RATE_SHARE = 0.5  # ... when at least this share of the material's time is


@dataclass
class AudioConfig:
    """How audio becomes log-mel frames. Saved with every run; part of the feature-cache key."""

    sample_rate: int = PROJECT_SAMPLE_RATE
    n_fft: int = 1024
    hop_length: int = 256
    n_mels: int = 128
    f_min: float = 0.0
    f_max: float | None = None  # None: Nyquist
    log_floor: float = 1e-5  # log(mel + floor): keeps quiet detail that log1p flattens
    target_peak: float = 0.9  # files are peak-normalised to this ...
    silence_peak: float = 1e-3  # ... unless their peak is below this: then they are "silence"
    min_seconds: float = 0.05  # shorter files are skipped (the shortest desktop sounds are ~0.06 s)
    max_seconds: float = 600.0  # longer files are cut to this many seconds (reported)

    @property
    def frames_per_second(self) -> float:
        return self.sample_rate / self.hop_length

    @classmethod
    def at_rate(cls, sample_rate: int) -> "AudioConfig":
        """The settings for `sample_rate`, with the window and hop scaled so a frame lasts as long as
        at 24 kHz (the same frames, code steps and model sizes per second at either rate)."""
        scale = sample_rate / PROJECT_SAMPLE_RATE
        base = cls()
        return cls(sample_rate=int(sample_rate), n_fft=int(round(base.n_fft * scale)),
                   hop_length=int(round(base.hop_length * scale)))


def high_rate_seconds(sources: list[tuple[int, float]]) -> tuple[float, float]:
    """(seconds recorded at 44.1 kHz or more, all seconds) of material at these (sample rate, seconds)."""
    total = sum(max(0.0, s) for _, s in sources)
    high = sum(max(0.0, s) for r, s in sources if r >= HIGH_RATE_SOURCES)
    return high, total


def sample_rate_for(sources: list[tuple[int, float]]) -> int:
    """The rate to work at for material recorded at these (sample rate, seconds): 48 kHz when at least
    HIGH_RATE_SHARE of its time was recorded at 44.1 kHz or more, else 24 kHz."""
    high, total = high_rate_seconds(sources)
    return HIGH_SAMPLE_RATE if total > 0 and high >= HIGH_RATE_SHARE * total else PROJECT_SAMPLE_RATE


@dataclass
class VQVAEConfig:
    """RVQ-VAE settings; `get_adaptive_vqvae_config` picks the tier's defaults."""

    codebook_size: int = 64
    num_quantizers: int = 3  # residual levels the sequence model learns, 2-4
    # Further residual levels past those: they carry the detail of a sound's own round trip (a file
    # heard through its codes), and a generated sound takes them from the material (distill/detail.py).
    # The sequence model never sees them, so they cost it nothing. Runs saved before them load with 0.
    detail_levels: int = 0
    # With detail levels: the share of training windows decoded from the sequence model's levels alone,
    # so those levels describe a sound on their own (a generated sound's codes are chosen by them;
    # COARSE_DROPOUT). Runs saved before it load with 0, as they were trained.
    coarse_dropout: float = 0.0
    # Spectral detail: residual levels of codes over the log-mel itself, for what the decoder leaves out
    # (distill/models/spectral_detail.py), `spectral_bands` bands of mel bins each; they follow the
    # detail levels in a sound's detail codes. Runs saved before them load with 0.
    spectral_levels: int = 0
    spectral_bands: int = 8
    codebook_dim: int = 64
    hidden_channels: int = 256
    num_res_blocks: int = 2
    downsample: int = 4  # time reduction: 2, 4 or 8
    # A linear path beside the convolutions (one strided conv each way), started as the training
    # material's principal components: the codec starts as the best linear codec and the convolutions
    # learn what it misses (README). Runs saved before it load with False.
    linear_path: bool = True
    commitment_weight: float = 0.25
    ema_decay: float = 0.99
    dead_code_threshold: float = 1.0  # EMA usage count below which a code is re-seeded
    kmeans_init: bool = True
    learning_rate: float = 3e-3  # measured: on a CPU budget more, smaller steps beat bigger batches
    weight_decay: float = 0.0
    gradient_clip_norm: float = 1.0
    batch_size: int = 8
    window_frames: int = 128  # training window length in mel frames (~1.4 s at 24 kHz / hop 256)
    max_steps: int = 4000
    time_budget_s: float | None = 300.0
    val_fraction: float = 0.2
    eval_every: int = 100
    device: str = "auto"
    seed: int = 0

    @property
    def detail_width(self) -> int:
        """Detail codes per step past the sequence model's levels: the detail levels, then the
        spectral detail's levels x bands."""
        return self.detail_levels + self.spectral_levels * self.spectral_bands


@dataclass
class PriorConfig:
    """CodePrior settings. The first eleven fields are the seed's; the rest are ours."""

    hidden_size: int = 256
    num_layers: int = 4
    num_heads: int = 4
    dropout: float = 0.2
    max_epochs: int = 100
    learning_rate: float = 1e-3
    weight_decay: float = 0.01
    gradient_clip_norm: float = 1.0
    batch_size: int = 32
    val_fraction: float = 0.2
    device: str = "auto"
    # ours
    context_steps: int = 144  # code time steps per training window; seq_len = context_steps * Q
    warmup_steps: int = 50
    patience: int = 10  # evaluations without validation improvement before early stop
    time_budget_s: float | None = 300.0
    eval_every: int = 50  # optimiser steps between validation passes
    # Evaluate and keep an exponential moving average of the weights (0: off). Small batches on a CPU
    # budget make every step noisy; the average is measurably better on held-out files (README).
    weight_average_decay: float = 0.995
    # Also learn where files end (a small second head, and a resume token for windows that begin
    # inside a file; see distill/models/prior.py), so a collection of short sounds generates as a run
    # of sound-length clips rather than one sound stretched on (README).
    learn_clip_ends: bool = True
    clip_end_weight: float = 0.3  # the clip-end loss's weight next to the code loss (README)
    # Varied copies (gain, pitch, speed) of each training file the prior also learns from; -1: as many
    # as the amount of training audio calls for (distill/training/prior_augment.py).
    augment_copies: int = -1
    seed: int = 0

    def seq_len(self, num_quantizers: int) -> int:
        """Tokens in one training window (codes are flattened position-major, Q per time step)."""
        return self.context_steps * num_quantizers


# The sampling settings a user gets: the CLI, the page and the API start from these, and
# bench/bench_samples.py measures them. "retrieval": how much each next code follows what came next
# in the material after the same recent codes (distill/models/retrieval.py).
SAMPLING_DEFAULTS = {"temperature": 1.0, "top_k": 0, "top_p": 1.0, "clip_ends": True, "retrieval": 0.9}


# --- adaptive tiers -------------------------------------------------------------------------

TIER_NAMES = {1: "Small (≤ 20 files)", 2: "Medium (21–100 files)", 3: "Large (> 100 files)"}


def tier_for(file_count: int) -> int:
    if file_count <= 20:
        return 1
    if file_count <= 100:
        return 2
    return 3


def val_fraction_for(file_count: int) -> float:
    if file_count < 10:
        return 0.5
    if file_count < 50:
        return 0.3
    if file_count < 200:
        return 0.2
    return 0.1


def get_adaptive_prior_config(file_count: int) -> PriorConfig:
    """The seed's three-tier table, pure Python."""
    tier = tier_for(file_count)
    hidden, layers, heads, dropout, epochs, lr = {
        1: (128, 2, 4, 0.3, 50, 3e-4),
        2: (256, 4, 4, 0.2, 100, 1e-3),
        3: (512, 6, 8, 0.1, 150, 1e-3),
    }[tier]
    return PriorConfig(
        hidden_size=hidden,
        num_layers=layers,
        num_heads=heads,
        dropout=dropout,
        max_epochs=epochs,
        learning_rate=lr,
        weight_decay=0.01,
        gradient_clip_norm=1.0,
        batch_size=min(32, max(1, file_count * 5 // 4)),
        val_fraction=val_fraction_for(file_count),
        device="auto",
    )


# Residual levels past the sequence model's, up to 48 in all, for material worked on at 48 kHz. On 31
# music tracks (6-minute budget, one split) the round trip's ViSQOL went 3.0 (3 levels) -> 3.9 (32) ->
# 4.1 (48), and 64 levels gave only 4.2 for a codec that trains 12 % slower. At 24 kHz (spoken prompts,
# 3 seeds) the round trip improved too, but generated speech moved further from held-out files (patch
# MMD 0.35 -> 0.46): the coarse levels of a 48-level codec suit the sequence model less, so material
# worked on at 24 kHz keeps the three-level codec (README).
TOTAL_LEVELS = 48
# Half the training windows decode from the sequence model's three levels alone, so they describe a
# sound on their own (they alone are generated). drascula, 3 seeds, 6 min: generated music nearer the
# held-out tracks on every seed (patch MMD 0.41/0.55/0.48 -> 0.28/0.42/0.42); freedesktop's prior bits
# vs unigram back to the three-level codec's (0.978 -> 0.919). The codec pays a little: held-out L1 with
# every level 0.226 -> 0.230 (drascula), 0.143 -> 0.147 (freedesktop); ViSQOL 4.16 -> 4.07 (README).
COARSE_DROPOUT = 0.5
# Levels of spectral detail for material worked on at 48 kHz, 8 bands each, fitted after the codec has
# trained (6-7 s on drascula). drascula seed 0, 6 held-out tracks, ViSQOL of the round trip: 4.04 with none, 4.31 /
# 4.43 / 4.50 / 4.54 with 2 / 4 / 6 / 8 levels (README).
SPECTRAL_LEVELS = 6


def get_adaptive_vqvae_config(
    file_count: int, num_quantizers: int = 3, codebook_dim: int = 64, sample_rate: int = PROJECT_SAMPLE_RATE
) -> VQVAEConfig:
    if not 2 <= num_quantizers <= 4:
        raise ValueError(f"num_quantizers must be 2-4, got {num_quantizers}")
    codebook = {1: 64, 2: 128, 3: 256}[tier_for(file_count)]
    high_rate = sample_rate >= HIGH_SAMPLE_RATE  # detail levels, trained with coarse dropout
    return VQVAEConfig(
        codebook_size=codebook,
        num_quantizers=num_quantizers,
        detail_levels=TOTAL_LEVELS - num_quantizers if high_rate else 0,
        coarse_dropout=COARSE_DROPOUT if high_rate else 0.0,
        spectral_levels=SPECTRAL_LEVELS if high_rate else 0,
        codebook_dim=codebook_dim,
        val_fraction=val_fraction_for(file_count),
    )


# --- (de)serialisation ----------------------------------------------------------------------


def config_to_dict(cfg: Any) -> dict:
    return asdict(cfg)


# Settings older runs saved that no longer exist (experiments that were dropped): ignored on load.
RETIRED_SETTINGS = {"PriorConfig": frozenset({"pack_files", "input_noise"})}


def config_from_dict(cls, data: dict):
    """Build a config from JSON, refusing unknown keys and wrong basic types (files may be hostile).
    Retired settings from older runs are dropped."""
    if not isinstance(data, dict):
        raise ValueError(f"{cls.__name__}: expected an object, got {type(data).__name__}")
    retired = RETIRED_SETTINGS.get(cls.__name__, frozenset())
    data = {k: v for k, v in data.items() if k not in retired}
    known = {f.name: f for f in fields(cls)}
    unknown = set(data) - set(known)
    if unknown:
        raise ValueError(f"{cls.__name__}: unknown settings {sorted(unknown)}")
    defaults = cls()
    for key, value in data.items():
        expected = type(getattr(defaults, key))
        if value is None or expected is type(None):
            continue
        if expected is float and isinstance(value, int) and not isinstance(value, bool):
            continue
        if not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
            raise ValueError(f"{cls.__name__}.{key}: expected {expected.__name__}, got {value!r}")
    return cls(**data)


def apply_overrides(cfg, overrides: dict | None):
    """Return a copy of `cfg` with user overrides applied (validated like a loaded file)."""
    if not overrides:
        return cfg
    merged = {**asdict(cfg), **overrides}
    return config_from_dict(type(cfg), merged)
