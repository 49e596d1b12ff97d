"""Sample packs: "make N new one-shots" from a trained run.

Rows are sampled in batched passes with clip ends on (a clip ends where the prior, following the
material, says the sound is over), until N clips have ended and passed the checks. Each clip is
decoded on its own, trimmed to its sound (silence off both ends, short fades) and kept unless it is
silent, shorter than the collection's shortest file, longer than the pack's bound, or a near-copy
of one already kept. Kept clips are saved in the run's samples/ folder like any sample (audio,
codes, sidecar; atomic writes), and a zip named after the run holds them all.
"""
from __future__ import annotations

import io
import math
import time
import zipfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from distill.config import SAMPLING_DEFAULTS

MAX_PACK = 32
ROWS_PER_PASS = 4
MAX_PASSES = 12  # a collection whose clips never pass the checks stops with what it has, and says so
MAX_CLIP_SECONDS = 30.0
TRIM_DB = -45.0  # below the clip's peak by this much counts as silence at its ends
BLOCK_SECONDS = 0.005  # envelope resolution for trimming
FADE_IN_S, FADE_OUT_S = 0.003, 0.010
NEAR_COPY = 0.95  # cosine of two clips' code statistics above which the second is a near-copy


class PackError(ValueError):
    """A pack this run cannot make; the message is for people."""


@dataclass
class PackSettings:
    count: int = 8
    seed: int = 0
    temperature: float = SAMPLING_DEFAULTS["temperature"]
    top_k: int = SAMPLING_DEFAULTS["top_k"]
    top_p: float = SAMPLING_DEFAULTS["top_p"]
    follow: float = SAMPLING_DEFAULTS["retrieval"]

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class OneShot:
    wave: np.ndarray  # float32, trimmed and faded, peak 0.9
    codes: np.ndarray  # [T', Q]: the clip as the prior made it
    seed: int  # the seed of the row it came from
    clip_seconds: float  # the clip's length before trimming


@dataclass
class PackResult:
    shots: list[OneShot]
    bounds: tuple[float, float]  # (shortest, longest) clip kept, seconds
    dropped: dict = field(default_factory=dict)  # reason -> count
    passes: int = 0

    def summary(self, wanted: int) -> str:
        lo, hi = self.bounds
        text = f"{len(self.shots)} of {wanted} one-shots made (each {lo:.2f}–{hi:.1f} s)"
        if self.dropped:
            text += "; left out: " + ", ".join(f"{n} {why}" for why, n in self.dropped.items())
        return text + "."


def length_bounds(run) -> tuple[float, float]:
    """(shortest, longest) clip a pack keeps, in seconds: from the collection's shortest file to
    twice its longest (at most MAX_CLIP_SECONDS)."""
    used = (run.manifest.get("files") or {}).get("used") or []
    seconds = [float(e.get("seconds", 0)) for e in used if isinstance(e, dict) and e.get("seconds")]
    if not seconds:
        raise PackError("This run does not record its files' lengths, so a pack's bounds are unknown.")
    shortest = min(min(seconds), run.audio_config.max_seconds)
    return shortest, max(shortest, min(MAX_CLIP_SECONDS, 2 * max(seconds)))


def make_one_shots(run, settings: PackSettings, backend: str | None = None, progress=None) -> PackResult:
    """N one-shots (settings.count) from batched passes of ROWS_PER_PASS rows, seeds seed, seed+1, ..."""
    from distill.generate import codes_to_audio
    from distill.models.batch_sampling import sample_rows
    from distill.variations import generators, retrieval_for, steps_per_second

    count = int(settings.count)
    if not 1 <= count <= MAX_PACK:
        raise PackError(f"A pack holds between 1 and {MAX_PACK} one-shots.")
    if not 0 <= float(settings.follow) <= 1 or float(settings.temperature) < 0 or not 0 < float(settings.top_p) <= 1:
        raise PackError("Temperature must be ≥ 0, top-p in (0, 1] and 'follow your material' between 0 and 1.")
    if run.prior.end_head is None:
        raise PackError("This run's sequence model never learnt where your sounds end, so it cannot cut one-shots: "
                        "retrain its sequence model first.")
    lo, hi = length_bounds(run)
    sps, q = steps_per_second(run), run.vqvae_config.num_quantizers
    sr = run.audio_config.sample_rate
    # each row runs long enough for a few clips of the longest length kept
    row_steps = max(4, math.ceil(min(3 * hi, 3 * MAX_CLIP_SECONDS) * sps))
    retrieval = retrieval_for(run, settings.follow, whole_sounds=True)
    shots: list[OneShot] = []
    kept_stats: list[np.ndarray] = []
    dropped: dict[str, int] = {}
    passes, seed = 0, int(settings.seed)

    def drop(why: str) -> None:
        dropped[why] = dropped.get(why, 0) + 1

    while len(shots) < count and passes < MAX_PASSES:
        seeds = list(range(seed, seed + ROWS_PER_PASS))
        seed += ROWS_PER_PASS
        passes += 1
        out = sample_rows(run.prior, row_steps * q, generators(seeds), settings.temperature, settings.top_k,
                          settings.top_p, clip_ends=True, retrieval=retrieval, backend=backend)
        for row, starts, row_seed in zip(out.tokens.cpu().numpy(), out.clip_starts, seeds):
            bounds = [0, *starts]  # a clip has ended where the next began; the row's last clip has not
            for a, b in zip(bounds, bounds[1:]):
                if len(shots) >= count:
                    break
                codes = row[a:b].reshape(-1, q)
                clip_s = len(codes) / sps
                if clip_s < lo:
                    drop("shorter than your shortest file")
                    continue
                if clip_s > hi:
                    drop("too long")
                    continue
                stats = _code_stats(codes, run.vqvae_config.codebook_size)
                if any(float(stats @ s) >= NEAR_COPY for s in kept_stats):
                    drop("near-copies")
                    continue
                raw = codes_to_audio(run, codes, normalise=False)
                peak = float(np.abs(raw).max()) if raw.size else 0.0
                if peak < run.audio_config.silence_peak:
                    drop("silent")
                    continue
                wave = trim_sound(raw * (0.9 / peak), sr)
                if wave.size < 0.5 * lo * sr:  # little sound inside the clip: mostly silence
                    drop("silent")
                    continue
                shots.append(OneShot(wave, codes, row_seed, round(clip_s, 3)))
                kept_stats.append(stats)
        if progress is not None:
            progress(len(shots), count)
    return PackResult(shots, (lo, hi), dropped, passes)


def trim_sound(wave: np.ndarray, sample_rate: int) -> np.ndarray:
    """Silence off both ends (blocks more than TRIM_DB below the peak), then short fades in and out."""
    wave = np.asarray(wave, dtype=np.float32)
    block = max(1, int(BLOCK_SECONDS * sample_rate))
    n_blocks = -(-wave.size // block)
    if not n_blocks:
        return wave
    padded = np.zeros(n_blocks * block, np.float32)
    padded[: wave.size] = np.abs(wave)
    env = padded.reshape(n_blocks, block).max(axis=1)
    if float(env.max()) <= 0.0:
        return wave[:0]
    loud = np.flatnonzero(env >= env.max() * 10 ** (TRIM_DB / 20))
    if not len(loud):
        return wave[:0]
    start = max(0, (loud[0] - 1) * block)  # one block of margin before the onset
    stop = min(wave.size, (loud[-1] + 2) * block)
    out = wave[start:stop].copy()
    fade_in, fade_out = min(out.size, int(FADE_IN_S * sample_rate)), min(out.size, int(FADE_OUT_S * sample_rate))
    if fade_in:
        out[:fade_in] *= np.linspace(0.0, 1.0, fade_in, dtype=np.float32)
    if fade_out:
        out[out.size - fade_out :] *= np.linspace(1.0, 0.0, fade_out, dtype=np.float32)
    return out


def _code_stats(codes: np.ndarray, k: int) -> np.ndarray:
    """A clip's code statistics for spotting near-copies: every level's code counts and the coarse
    level's code pairs, as one unit vector."""
    parts = [np.bincount(codes[:, lv], minlength=k).astype(np.float64) for lv in range(codes.shape[1])]
    c0 = codes[:, 0]
    parts.append(np.bincount(c0[:-1] * k + c0[1:], minlength=k * k).astype(np.float64) if len(c0) > 1
                 else np.zeros(k * k))
    v = np.concatenate(parts)
    return v / max(float(np.linalg.norm(v)), 1e-12)


def save_pack(run_dir, run_id: str, result: PackResult, settings: PackSettings) -> dict:
    """Each one-shot saved as a sample (audio, codes, sidecar) and all of them in one zip named after
    the run (packs/<run>-one-shots-<time>.zip, written atomically). -> {"pack", "samples", "zip"}."""
    import soundfile as sf

    from distill.generate import save_sample
    from distill.storage import atomic_write_bytes

    run_dir = Path(run_dir)
    if not result.shots:
        raise PackError("No one-shot passed the checks, so there is nothing to save. " + result.summary(settings.count))
    from distill.runs import read_manifest, run_configs

    sr = run_configs(read_manifest(run_dir))[0].sample_rate
    pack_id = time.strftime("%Y%m%d-%H%M%S")
    saved = []
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for i, shot in enumerate(result.shots):
            meta = {"kind": "one-shot", "pack": pack_id, "index": i + 1, "pack_size": len(result.shots),
                    "seed": shot.seed, "clip_seconds": shot.clip_seconds, "temperature": float(settings.temperature),
                    "top_k": int(settings.top_k), "top_p": float(settings.top_p), "retrieval": float(settings.follow)}
            s = save_sample(run_dir, shot.wave, sr, shot.codes, meta)
            saved.append({**s, "seconds": round(len(shot.wave) / sr, 3), "seed": shot.seed, "codes": shot.codes,
                          "clip_seconds": shot.clip_seconds})
            wav = io.BytesIO()
            sf.write(wav, shot.wave, sr, format="WAV", subtype="PCM_16")
            zf.writestr(f"{run_id}-one-shots/{run_id}-{i + 1:02d}.wav", wav.getvalue())
    folder = run_dir / "packs"
    folder.mkdir(exist_ok=True)
    zip_path = folder / f"{run_id}-one-shots-{pack_id}.zip"
    atomic_write_bytes(zip_path, buf.getvalue())
    return {"pack": pack_id, "samples": saved, "zip": str(zip_path)}

