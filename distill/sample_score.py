"""How close a set of sounds is to a collection, the way a listener would judge it (roughly).

Per-frame statistics (a Fréchet distance on log-mel frames) cannot tell real material from codes
drawn with no order in time: each frame of order-free codes looks like a real frame. What they lack
is what happens over the next half second to two seconds: notes that hold and decay, onsets,
rhythm, pitch that stays put. So a sound set is cut into overlapping one-second patches, each
patch is described by its spectral shape and how it moves in time (band envelopes' modulation
spectra, frame-to-frame change, energy autocorrelation, flatness), and two sets are compared with a
kernel two-sample distance (MMD, several bandwidths) in a feature space standardised once on a
reference set. The sample score puts a generated set between real material (0) and order-free
codes (1), every set of the same size against the same held-out files.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from distill.config import AudioConfig

PATCH_SECONDS = 1.0
PATCH_HOP_SECONDS = 0.5
BANDS = 16  # log-mel bands pooled to this many before the statistics
MOD_EDGES_HZ = (0.5, 2.0, 4.0, 8.0, 16.0, 46.0)  # modulation-frequency bands of the envelopes
ACF_LAGS = (1, 2, 4, 8, 16, 32)  # frames (~11 ms each at 24 kHz / hop 256)


def log_mel_frames(wave: np.ndarray, cfg: AudioConfig) -> np.ndarray:
    from distill.audio.features import compute_log_mel

    return compute_log_mel(np.asarray(wave, dtype=np.float32), cfg).numpy().astype(np.float64)


def patch_features(log_mel: np.ndarray, cfg: AudioConfig) -> np.ndarray:
    """log-mel [n_mels, frames] -> [patches, features]; one-second patches, half-second hop.
    A sound shorter than one patch gives one patch of its own length (padded with its floor)."""
    fps = cfg.frames_per_second
    size, hop = int(round(PATCH_SECONDS * fps)), int(round(PATCH_HOP_SECONDS * fps))
    floor = np.log(cfg.log_floor)
    n_mels, frames = log_mel.shape
    if frames < size:
        log_mel = np.pad(log_mel, ((0, 0), (0, size - frames)), constant_values=floor)
        frames = size
    pooled = log_mel[: n_mels // BANDS * BANDS].reshape(BANDS, n_mels // BANDS, frames).mean(1)  # [B, F]
    starts = range(0, frames - size + 1, hop)
    return np.stack([_describe(pooled[:, s : s + size], log_mel[:, s : s + size], fps) for s in starts])


def _describe(bands: np.ndarray, full: np.ndarray, fps: float) -> np.ndarray:
    # bands: [BANDS, size] pooled log-mel; full: [n_mels, size]
    size = bands.shape[1]
    level = bands.mean(0)  # loudness envelope (log)
    feats = [bands.mean(1), bands.std(1), np.abs(np.diff(bands, axis=1)).mean(1)]
    # modulation spectra of four broad bands' envelopes: how the sound moves over 0.02-2 s
    freqs = np.fft.rfftfreq(size, 1.0 / fps)
    window = np.hanning(size)
    for env in list(bands.reshape(4, BANDS // 4, size).mean(1)) + [level]:
        power = np.abs(np.fft.rfft((env - env.mean()) * window)) ** 2
        total = power[1:].sum() + 1e-9
        feats.append(np.array([power[(freqs >= lo) & (freqs < hi)].sum() / total
                               for lo, hi in zip(MOD_EDGES_HZ[:-1], MOD_EDGES_HZ[1:])]))
    centred = level - level.mean()
    var = float(centred @ centred) + 1e-9
    feats.append(np.array([float(centred[:-lag] @ centred[lag:]) / var for lag in ACF_LAGS]))
    power = np.exp(full)
    flatness = np.exp(np.log(power).mean(0)) / power.mean(0)
    weights = np.exp(bands - bands.max(0, keepdims=True))
    centroid = (weights * np.arange(BANDS)[:, None]).sum(0) / weights.sum(0)
    feats.append(np.array([flatness.mean(), flatness.std(), centroid.mean(), centroid.std(), level.std(),
                           np.abs(np.diff(level)).max()]))
    return np.concatenate(feats)


def set_features(waves, cfg: AudioConfig) -> np.ndarray:
    """Patches of a set of sounds, played back to back as one stream -> [patches, features]."""
    stream = np.concatenate([np.asarray(w, dtype=np.float32) for w in waves])
    return patch_features(log_mel_frames(stream, cfg), cfg)


@dataclass
class FeatureSpace:
    """Standardisation (from a reference set) and kernel bandwidths shared by every comparison."""

    mean: np.ndarray
    scale: np.ndarray
    bandwidths: tuple

    @classmethod
    def fit(cls, reference: np.ndarray) -> "FeatureSpace":
        mean, scale = reference.mean(0), reference.std(0) + 1e-6
        z = (reference - mean) / scale
        rng = np.random.default_rng(0)
        pick = z[rng.choice(len(z), size=min(len(z), 400), replace=False)]
        d = np.sqrt(_sq_dists(pick, pick))
        median = float(np.median(d[d > 0])) if (d > 0).any() else 1.0
        return cls(mean, scale, (0.5 * median, median, 2.0 * median))

    def distance(self, a: np.ndarray, b: np.ndarray) -> float:
        """MMD (square root of the biased MMD², summed over the bandwidths) between patch sets."""
        za, zb = (a - self.mean) / self.scale, (b - self.mean) / self.scale
        daa, dbb, dab = _sq_dists(za, za), _sq_dists(zb, zb), _sq_dists(za, zb)
        total = 0.0
        for bw in self.bandwidths:
            g = -0.5 / bw**2
            total += np.exp(g * daa).mean() + np.exp(g * dbb).mean() - 2 * np.exp(g * dab).mean()
        return float(np.sqrt(max(total, 0.0)))


def _sq_dists(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.maximum((a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2 * a @ b.T, 0.0)


def sample_score(d_generated: float, d_real: float, d_order_free: float) -> float:
    """0: as close to new material as real material of the same size; 1: no better than codes with
    no order in time (can go below 0 or above 1)."""
    return (d_generated - d_real) / max(d_order_free - d_real, 1e-12)


def order_free_codes(train_codes, steps: int, codebook_size: int, rng: np.random.Generator) -> np.ndarray:
    """[steps, Q] codes drawn independently per level from the training codes' own histogram:
    the right sounds with no order in time."""
    from distill.codes import level_histograms

    hist = level_histograms(list(train_codes), codebook_size).numpy().astype(np.float64)
    q = hist.shape[0]
    out = np.empty((steps, q), dtype=np.int64)
    for level in range(q):
        counts = hist[level]
        out[:, level] = rng.choice(codebook_size, size=steps, p=counts / counts.sum())
    return out


def verbatim_share(generated: np.ndarray, train_codes, min_steps: int) -> float:
    """Fraction of generated time steps inside a run of >= min_steps consecutive steps (all levels
    equal) found verbatim in one training file. generated: [T, Q]; train_codes: list of [T', Q]."""
    from distill.analysis import _RollingHash

    gen = np.asarray(generated, dtype=np.int64)
    if len(gen) < min_steps or min_steps < 1:
        return 0.0
    k = int(max(int(np.asarray(c).max()) for c in list(train_codes) + [gen] if len(c)) + 1)

    def step_ids(c: np.ndarray) -> np.ndarray:  # one integer per time step (all levels)
        c = np.asarray(c, dtype=np.int64)
        return (c * (k ** np.arange(c.shape[1]))[None, :]).sum(1)

    refs = [step_ids(c) for c in train_codes if len(c) >= min_steps]
    if not refs:
        return 0.0
    keys = np.unique(np.concatenate([_RollingHash(r).windows(min_steps) for r in refs]))
    starts = np.isin(_RollingHash(step_ids(gen)).windows(min_steps), keys)
    covered = np.zeros(len(gen) + 1, dtype=np.int64)
    idx = np.flatnonzero(starts)
    np.add.at(covered, idx, 1)
    np.add.at(covered, idx + min_steps, -1)
    return float((np.cumsum(covered)[: len(gen)] > 0).mean())


def held_share(codes, min_steps: int) -> float:
    """Fraction of all time steps inside a hold: a run of >= min_steps steps with the same level-0
    code (a sound frozen in place; measured on generated and on training codes alike). codes: list of [T, Q]."""
    from distill.models.retrieval import hold_runs

    held = total = 0
    for c in codes:
        _, lengths = hold_runs(np.asarray(c)[:, 0])
        held += int(lengths[lengths >= min_steps].sum())
        total += int(lengths.sum())
    return held / total if total else 0.0
