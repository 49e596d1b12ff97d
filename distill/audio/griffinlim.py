"""Log-mel analysis and its inverse (mel -> linear spectrogram -> fast Griffin-Lim), in torch.

Forward and inverse live together so they always agree on the filterbank, the STFT and the floor:
    log_mel(wave)  = log(mel_fb @ |STFT(wave)|^2 + log_floor)
    mel_to_audio   = Griffin-Lim(sqrt(NNLS(mel_fb, exp(log_mel) - log_floor)))

The filterbank is librosa's `filters.mel(sr, n_fft, n_mels, fmin, fmax)` (Slaney mel scale, Slaney
area normalisation), rebuilt in numpy so that nothing here imports librosa (its first call in a
process costs seconds of JIT); a test checks it against librosa to float32 precision.

Griffin-Lim uses Perraudin's momentum ("fast Griffin-Lim", momentum 0.99 as in librosa). Iteration
count: see DEFAULT_N_ITER; measured by `bench/bench_vqvae.py --gl-sweep`.
"""
from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
import torch

from distill.config import AudioConfig

# Measured on real audio (bench_vqvae.py --gl-sweep: 12 freedesktop files, 24 kHz, 128 mels, 1 thread
# on this 2-core CPU): log-mel L1 of the re-analysed output vs its input mel, and CPU s per audio s:
#   n_iter   8: 0.200 / 0.021   16: 0.163 / 0.033   24: 0.147 / 0.045   32: 0.139 / 0.059
#   n_iter  48: 0.129 / 0.074   64: 0.125 / 0.093   (pinv + clamp without NNLS, 32 iters: 0.272 / 0.049)
# 32 is past the knee and leaves room for the decoder inside the 0.1 s budget.
DEFAULT_N_ITER = 32
DEFAULT_MOMENTUM = 0.99
NNLS_ITERS = 16  # multiplicative NNLS refinements after the pseudo-inverse start (cheap: 2·M·F per frame)


# --- mel filterbank -------------------------------------------------------------------------


def _hz_to_mel_slaney(hz: np.ndarray) -> np.ndarray:
    hz = np.asanyarray(hz, dtype=np.float64)
    f_sp = 200.0 / 3
    mels = hz / f_sp
    min_log_hz, min_log_mel, logstep = 1000.0, 1000.0 / f_sp, math.log(6.4) / 27.0
    return np.where(hz >= min_log_hz, min_log_mel + np.log(np.maximum(hz, 1e-12) / min_log_hz) / logstep, mels)


def _mel_to_hz_slaney(mels: np.ndarray) -> np.ndarray:
    mels = np.asanyarray(mels, dtype=np.float64)
    f_sp = 200.0 / 3
    freqs = f_sp * mels
    min_log_hz, min_log_mel, logstep = 1000.0, 1000.0 / f_sp, math.log(6.4) / 27.0
    return np.where(mels >= min_log_mel, min_log_hz * np.exp(logstep * (mels - min_log_mel)), freqs)


@lru_cache(maxsize=16)
def _mel_filterbank_np(sr: int, n_fft: int, n_mels: int, f_min: float, f_max: float) -> np.ndarray:
    """librosa.filters.mel(sr=sr, n_fft=n_fft, n_mels=n_mels, fmin=f_min, fmax=f_max), same op order."""
    weights = np.zeros((n_mels, 1 + n_fft // 2), dtype=np.float32)
    fftfreqs = np.fft.rfftfreq(n=n_fft, d=1.0 / sr)
    mel_f = _mel_to_hz_slaney(
        np.linspace(_hz_to_mel_slaney(f_min), _hz_to_mel_slaney(f_max), n_mels + 2)
    )
    fdiff = np.diff(mel_f)
    ramps = np.subtract.outer(mel_f, fftfreqs)
    for i in range(n_mels):
        lower = -ramps[i] / fdiff[i]
        upper = ramps[i + 2] / fdiff[i + 1]
        weights[i] = np.maximum(0, np.minimum(lower, upper))
    enorm = 2.0 / (mel_f[2 : n_mels + 2] - mel_f[:n_mels])
    weights *= enorm[:, np.newaxis]
    weights.setflags(write=False)  # cached: nobody may change it
    return weights


def _fb_key(cfg: AudioConfig) -> tuple[int, int, int, float, float]:
    f_max = float(cfg.f_max) if cfg.f_max is not None else cfg.sample_rate / 2.0
    return int(cfg.sample_rate), int(cfg.n_fft), int(cfg.n_mels), float(cfg.f_min), f_max


def mel_filterbank(audio_config: AudioConfig) -> torch.Tensor:
    """[n_mels, n_fft//2 + 1] float32, librosa-identical. Cached per settings; returns a fresh tensor."""
    return torch.from_numpy(_mel_filterbank_np(*_fb_key(audio_config)).copy())


@lru_cache(maxsize=16)
def _pinv_np(sr: int, n_fft: int, n_mels: int, f_min: float, f_max: float) -> np.ndarray:
    fb = _mel_filterbank_np(sr, n_fft, n_mels, f_min, f_max).astype(np.float64)
    pinv = np.linalg.pinv(fb).astype(np.float32)  # [bins, n_mels]
    pinv.setflags(write=False)
    return pinv


# --- forward: wave -> log-mel ---------------------------------------------------------------


def _window(n_fft: int, device, dtype=torch.float32) -> torch.Tensor:
    return torch.hann_window(n_fft, device=device, dtype=dtype)


def log_mel(wave: torch.Tensor, audio_config: AudioConfig) -> torch.Tensor:
    """[..., samples] float -> [..., n_mels, frames] float32 with frames = 1 + samples // hop.

    |STFT|^2 with a Hann window, centred frames (reflect padding, torch.stft's default; constant
    padding for clips shorter than half a window, where reflection is impossible)."""
    cfg = audio_config
    wave = wave.to(torch.float32)
    lead = wave.shape[:-1]
    flat = wave.reshape(-1, wave.shape[-1])  # [N, samples]
    pad_mode = "reflect" if flat.shape[-1] > cfg.n_fft // 2 else "constant"
    spec = torch.stft(
        flat, cfg.n_fft, hop_length=cfg.hop_length, window=_window(cfg.n_fft, flat.device),
        center=True, pad_mode=pad_mode, return_complex=True,
    )  # [N, bins, frames]
    power = spec.real.square() + spec.imag.square()
    fb = mel_filterbank(cfg).to(flat.device)
    mel = torch.matmul(fb, power)  # [N, n_mels, frames]
    out = torch.log(mel + cfg.log_floor)
    return out.reshape(*lead, cfg.n_mels, out.shape[-1])


# --- inverse: log-mel -> wave ---------------------------------------------------------------


@lru_cache(maxsize=16)
def _ceiling_np(sr: int, n_fft: int, n_mels: int, f_min: float, f_max: float, log_floor: float) -> np.ndarray:
    fb = _mel_filterbank_np(sr, n_fft, n_mels, f_min, f_max).astype(np.float64)
    # |STFT| of a sound within full scale is at most the Hann window's sum, n_fft / 2, in every bin
    ceiling = np.log((n_fft / 2.0) ** 2 * fb.sum(axis=1) + log_floor).astype(np.float32)
    ceiling.setflags(write=False)
    return ceiling


def mel_ceiling(audio_config: AudioConfig) -> torch.Tensor:
    """[n_mels] the highest log-mel any sound within full scale can have in each band. A decoder's
    output above it (a latent the codec never learned to map, e.g. a file's first step) is not a
    sound, and would come back as a blast that drowns everything else once the audio is normalised."""
    return torch.from_numpy(_ceiling_np(*_fb_key(audio_config), float(audio_config.log_floor)).copy())


def mel_to_linear(log_mel_: torch.Tensor, audio_config: AudioConfig, nnls_iters: int = NNLS_ITERS) -> torch.Tensor:
    """[..., n_mels, frames] log-mel -> [..., bins, frames] non-negative POWER spectrogram.

    Pseudo-inverse start, clamped to >= 0, then a few Lee-Seung multiplicative NNLS steps
    (they keep non-negativity and lower ||fb @ S - mel||, which the clamp alone makes worse)."""
    cfg = audio_config
    key = _fb_key(cfg)
    dev = log_mel_.device
    fb = torch.from_numpy(_mel_filterbank_np(*key).copy()).to(dev)  # [M, F]
    pinv = torch.from_numpy(_pinv_np(*key).copy()).to(dev)  # [F, M]
    mel = (torch.exp(log_mel_.to(torch.float32)) - cfg.log_floor).clamp_min(0.0)  # [..., M, T]
    s = torch.matmul(pinv, mel).clamp_min(0.0)  # [..., F, T]
    # a tiny positive floor so multiplicative updates can move bins the clamp zeroed
    s = s + 1e-10 * mel.mean(dim=-2, keepdim=True)
    if nnls_iters > 0:
        fbt = fb.T.contiguous()  # [F, M]
        fbt_mel = torch.matmul(fbt, mel)  # [..., F, T]
        for _ in range(nnls_iters):
            # fb^T (fb s) costs 2·M·F per frame, F^2 for the precomputed fb^T fb
            s = s * fbt_mel / (torch.matmul(fbt, torch.matmul(fb, s)) + 1e-12)
    return s


def griffin_lim(
    magnitude: torch.Tensor,
    audio_config: AudioConfig,
    n_iter: int = DEFAULT_N_ITER,
    momentum: float = DEFAULT_MOMENTUM,
    length: int | None = None,
    seed: int = 0,
) -> torch.Tensor:
    """[B, bins, frames] magnitude -> [B, samples]. Fast Griffin-Lim (Perraudin et al. 2013).

    Phases start random from a fixed seed, so the same input always gives the same audio."""
    cfg = audio_config
    n_fft, hop = cfg.n_fft, cfg.hop_length
    dev = magnitude.device
    win = _window(n_fft, dev)
    gen = torch.Generator(device="cpu").manual_seed(seed)
    phase = torch.rand(magnitude.shape, generator=gen) * (2 * math.pi)
    angles = torch.polar(torch.ones_like(phase), phase).to(dev)  # [B, F, T] complex
    mag = magnitude.to(torch.float32)
    rebuilt = torch.zeros_like(angles)
    tprev = torch.zeros_like(angles)
    scale = momentum / (1.0 + momentum)
    inner = (mag.shape[-1] - 1) * hop  # the length whose centred STFT has exactly `frames` frames
    for _ in range(max(0, n_iter)):
        wave = torch.istft(mag * angles, n_fft, hop_length=hop, window=win, center=True, length=inner)
        rebuilt = torch.stft(wave, n_fft, hop_length=hop, window=win, center=True, return_complex=True)
        angles = torch.sgn(torch.sub(rebuilt, tprev, alpha=scale))  # z/|z| in one op (0 stays 0)
        tprev = rebuilt
    wave = torch.istft(mag * angles, n_fft, hop_length=hop, window=win, center=True, length=inner)
    if length is not None:
        wave = wave[..., :length] if wave.shape[-1] >= length else torch.nn.functional.pad(wave, (0, length - wave.shape[-1]))
    return wave


def mel_to_audio(
    log_mel_: torch.Tensor,
    audio_config: AudioConfig,
    n_iter: int = DEFAULT_N_ITER,
    device: str | torch.device | None = None,
    seed: int = 0,
) -> torch.Tensor:
    """log-mel [n_mels, frames] or [B, n_mels, frames] -> waveform [samples] or [B, samples] (CPU
    float32) with samples = frames * hop_length, at audio_config.sample_rate. Always finite; each band clamped at
    `mel_ceiling`."""
    cfg = audio_config
    squeeze = log_mel_.dim() == 2
    x = log_mel_.unsqueeze(0) if squeeze else log_mel_
    if x.dim() != 3 or x.shape[1] != cfg.n_mels:
        raise ValueError(f"expected log-mel [n_mels={cfg.n_mels}, frames] or [B, n_mels, frames], got {tuple(log_mel_.shape)}")
    dev = torch.device(device) if device is not None else x.device
    with torch.no_grad():
        x = torch.nan_to_num(x.detach().to(dev, torch.float32), nan=math.log(cfg.log_floor), posinf=20.0, neginf=math.log(cfg.log_floor))
        frames = x.shape[-1]
        if frames == 0:
            out = torch.zeros(x.shape[0], 0)
        else:
            min_frames = cfg.n_fft // (2 * cfg.hop_length) + 2  # the STFT's reflect padding needs > n_fft/2 samples
            if frames < min_frames:  # pad very short inputs with silence; the output is cut to length
                x = torch.nn.functional.pad(x, (0, min_frames - frames), value=math.log(cfg.log_floor))
            x = torch.minimum(x, mel_ceiling(cfg).to(dev)[:, None])
            mag = mel_to_linear(x, cfg).sqrt()  # power -> magnitude
            out = griffin_lim(mag, cfg, n_iter=n_iter, length=frames * cfg.hop_length).cpu()
        out = torch.nan_to_num(out, nan=0.0, posinf=0.0, neginf=0.0)
    return out[0] if squeeze else out
