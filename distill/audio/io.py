"""Decode one audio file into mono float32 at the project rate, or say in plain words why not."""
from __future__ import annotations

import threading
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

from distill.config import AudioConfig

AUDIO_EXTENSIONS = {".wav", ".wave", ".flac", ".ogg", ".oga", ".mp3", ".aif", ".aiff", ".aifc"}
MIN_SOURCE_RATE = 8_000
MAX_SOURCE_RATE = 192_000
# Most samples (all channels) one file may decode to: stereo at the top rate for the full 10 minutes.
MAX_DECODED_SAMPLES = 2 * MAX_SOURCE_RATE * 600
DECODE_MEMORY_BYTES = 768 * 1024**2  # mono audio held at once by the scan's decoding threads
_BLOCK_SAMPLES = 1 << 19  # samples (all channels) read per block: 2 MB as float32


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
    """Decode, mix to mono, resample, normalise. Raises AudioSkip with a reason for unusable files.

    The header is checked before decoding and channels are mixed down block by block, so memory
    follows the mono length, never channels × rate × length: a silent 8-channel 192 kHz FLAC is a
    few hundred KB on disk and would be 3.7 GB decoded at once."""
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
    wanted = min(total_frames, max_frames + 1) if total_frames > 0 else max_frames + 1
    if channels * min(wanted, max_frames) > MAX_DECODED_SAMPLES:
        raise AudioSkip(_too_much(channels, rate, min(wanted, max_frames)))
    with _DECODE_MEMORY.reserve(4 * wanted):  # big files take turns; small ones decode side by side
        mono, raw_peak = _read_mono(path, channels, rate, wanted, max_frames)
        truncated = mono.shape[0] > max_frames
        if truncated:
            mono = mono[:max_frames]
        seconds = (total_frames if total_frames > 0 else mono.shape[0]) / rate
        if mono.shape[0] == 0:
            raise AudioSkip("contains no audio (zero samples)")
        if mono.shape[0] / rate < cfg.min_seconds:
            raise AudioSkip(f"too short ({mono.shape[0] / rate:.3f} s; the minimum is {cfg.min_seconds} s)")
        mono -= mono.mean()  # a constant offset is inaudible; without this pure DC would look like sound
        peak = max(float(mono.max()), -float(mono.min()))  # |mono|.max() without a copy of the whole file
        if peak == 0.0:
            raise AudioSkip("digital silence" if raw_peak == 0.0 else "silence (only a constant offset)")
        if peak < cfg.silence_peak:
            raise AudioSkip(f"near silence (peak {20 * np.log10(peak):.0f} dBFS); normalising it would only amplify noise")
        if rate != cfg.sample_rate:
            mono = _resample(mono, rate, cfg.sample_rate)
    mono = mono * (cfg.target_peak / max(float(np.abs(mono).max()), 1e-12))
    return DecodedAudio(wave=mono.astype(np.float32), source_rate=rate, channels=channels, seconds=seconds, truncated=truncated)


def _read_mono(path: Path, channels: int, rate: int, wanted: int, max_frames: int) -> tuple[np.ndarray, float]:
    """Up to max_frames + 1 frames mixed to mono (float32) a block at a time, and the peak of the raw
    samples within the first max_frames (to tell digital silence from a constant offset)."""
    kept = min(max_frames, MAX_DECODED_SAMPLES // channels)  # a header that lies about its length gains nothing
    limit = kept + 1  # one frame more says whether there is more
    block = max(1, _BLOCK_SAMPLES // channels)
    mono = np.empty(min(wanted, limit), dtype=np.float32)
    filled, raw_peak = 0, 0.0
    try:
        with sf.SoundFile(str(path)) as fh:
            while filled < limit:
                data = fh.read(min(block, limit - filled), dtype="float32", always_2d=True)
                n = data.shape[0]
                if n == 0:
                    break
                if not np.isfinite(data).all():
                    raise AudioSkip("contains invalid samples (NaN or infinity)")
                if filled + n > mono.shape[0]:  # longer than its header said
                    grown = np.empty(min(limit, 2 * mono.shape[0] + n), dtype=np.float32)
                    grown[:filled] = mono[:filled]
                    mono = grown
                mono[filled:filled + n] = data.mean(axis=1, dtype=np.float64)
                if filled < max_frames:
                    raw_peak = max(raw_peak, float(np.abs(data[:max_frames - filled]).max()))
                filled += n
    except sf.LibsndfileError as exc:
        raise AudioSkip(f"cannot be decoded as audio ({_short(exc)})") from None
    except (MemoryError, OSError, RuntimeError, ValueError) as exc:
        raise AudioSkip(f"cannot be decoded as audio ({_short(exc)})") from None
    if filled > kept and kept < max_frames:  # the budget ran out before the 10 minutes did
        raise AudioSkip(_too_much(channels, rate, filled))
    return mono[:filled], raw_peak


def _too_much(channels: int, rate: int, frames: int) -> str:
    seconds = frames / rate
    length = f"{seconds / 60:.0f} min" if seconds >= 60 else f"{seconds:.0f} s"
    return (f"too much audio to decode safely ({channels} channels at {rate / 1000:g} kHz for {length} is "
            f"{4 * channels * frames / 1e9:.1f} GB once decoded; the limit is {4 * MAX_DECODED_SAMPLES / 1e9:.1f} GB). "
            "Mix it down to stereo or cut it shorter")


class _MemoryBudget:
    """Bytes of decoded audio held at once across the scan's threads; a request waits its turn
    (one larger than the whole budget runs alone)."""

    def __init__(self, limit: int):
        self.limit, self.used = limit, 0
        self._cond = threading.Condition()

    @contextmanager
    def reserve(self, n: int):
        with self._cond:
            while self.used and self.used + n > self.limit:
                self._cond.wait()
            self.used += n
        try:
            yield
        finally:
            with self._cond:
                self.used -= n
                self._cond.notify_all()


_DECODE_MEMORY = _MemoryBudget(DECODE_MEMORY_BYTES)


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
