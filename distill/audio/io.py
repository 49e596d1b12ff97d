"""Decode one audio file into mono float32 at the project rate, or say in plain words why not."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

from distill.config import AudioConfig

AUDIO_EXTENSIONS = {".wav", ".wave", ".flac", ".ogg", ".oga", ".mp3", ".aif", ".aiff", ".aifc"}
MIN_SOURCE_RATE = 8_000
MAX_SOURCE_RATE = 192_000


class AudioSkip(Exception):
    """A file that cannot be used; the message is the reason shown to the user."""


@dataclass
class DecodedAudio:
    wave: np.ndarray  # [samples] float32, mono, project rate, peak-normalised
    source_rate: int
    channels: int
    seconds: float  # duration of the original file
    truncated: bool  # longer than AudioConfig.max_seconds: only the start was used


def decode_file(path: Path, cfg: AudioConfig) -> DecodedAudio:
    """Decode, mix to mono, resample, normalise. Raises AudioSkip with a reason for unusable files."""
    try:
        info = sf.info(str(path))
    except sf.LibsndfileError as exc:
        raise AudioSkip(f"cannot be decoded as audio ({_short(exc)})") from None
    except PermissionError:
        raise AudioSkip("cannot be read (permission denied)") from None
    except OSError as exc:
        raise AudioSkip(f"cannot be read ({_short(exc)})") from None
    rate, channels = int(info.samplerate), int(info.channels)
    if not MIN_SOURCE_RATE <= rate <= MAX_SOURCE_RATE:
        raise AudioSkip(f"sample rate {rate} Hz is outside the supported 8–192 kHz")
    if channels < 1:
        raise AudioSkip("has no audio channels")
    total_frames = int(info.frames)  # may be 0 or wrong for streamed mp3/ogg: the read decides
    max_frames = int(cfg.max_seconds * rate)
    try:
        data, _ = sf.read(str(path), frames=max_frames + 1, dtype="float32", always_2d=True)
    except sf.LibsndfileError as exc:
        raise AudioSkip(f"cannot be decoded as audio ({_short(exc)})") from None
    except (MemoryError, OSError, RuntimeError, ValueError) as exc:
        raise AudioSkip(f"cannot be decoded as audio ({_short(exc)})") from None
    truncated = data.shape[0] > max_frames
    if truncated:
        data = data[:max_frames]
    seconds = (total_frames if total_frames > 0 else data.shape[0]) / rate
    if data.shape[0] == 0:
        raise AudioSkip("contains no audio (zero samples)")
    if not np.isfinite(data).all():
        raise AudioSkip("contains invalid samples (NaN or infinity)")
    if data.shape[0] / rate < cfg.min_seconds:
        raise AudioSkip(f"too short ({data.shape[0] / rate:.3f} s; the minimum is {cfg.min_seconds} s)")
    mono = data.mean(axis=1, dtype=np.float64).astype(np.float32)
    mono -= mono.mean()  # a constant offset is inaudible; without this pure DC would look like sound
    peak = float(np.abs(mono).max())
    if peak == 0.0:
        raise AudioSkip("digital silence" if float(np.abs(data).max()) == 0.0 else "silence (only a constant offset)")
    if peak < cfg.silence_peak:
        raise AudioSkip(f"near silence (peak {20 * np.log10(peak):.0f} dBFS); normalising it would only amplify noise")
    if rate != cfg.sample_rate:
        mono = _resample(mono, rate, cfg.sample_rate)
    mono = mono * (cfg.target_peak / max(float(np.abs(mono).max()), 1e-12))
    return DecodedAudio(wave=mono.astype(np.float32), source_rate=rate, channels=channels, seconds=seconds, truncated=truncated)


def _resample(wave: np.ndarray, src: int, dst: int) -> np.ndarray:
    import soxr  # librosa's own high-quality resampler backend, without librosa's import cost

    return soxr.resample(wave, src, dst, quality="HQ").astype(np.float32)


def _short(exc: BaseException) -> str:
    """libsndfile's message without the file path (the report already names the file)."""
    text = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
    if text.startswith("Error opening") and "': " in text:
        text = text.split("': ", 1)[1]
    if "does not exist or is not a regular file" in text:
        text = "format not recognised"  # libsndfile's wording when no decoder accepts the bytes
    return text.rstrip(".")[:160]
