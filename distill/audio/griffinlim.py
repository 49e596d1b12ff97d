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

# Measured on real audio (bench_vqvae.py --gl-sweep --sample-rate 24000 --threads 1: 12 freedesktop
# files, 24 kHz, 128 mels, on this 2-core CPU): log-mel L1 of the re-analysed output vs its input mel,
# and CPU s per audio s (2026-12-07, with `_istft`; torch.istft cost 2.5x as much):
#   n_iter   8: 0.200 / 0.010   16: 0.163 / 0.014   24: 0.147 / 0.018   32: 0.139 / 0.022
#   n_iter  48: 0.129 / 0.030   64: 0.125 / 0.037   (pinv + clamp without NNLS, 32 iters: 0.272 / 0.018)
# 32 is past the knee; at 48 kHz ViSQOL of codec round trips on drascula did not move from 8 to 32
# iterations (4.115 / 4.110 / 4.120 / 4.122): the codec, not Griffin-Lim, limits what is heard there.
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


# Long sounds run Griffin-Lim block by block: every iteration over a whole minute at 48 kHz streams
# ~50 MB complex spectrograms through memory, and the cost per second of audio grew with the length
# (0.085 CPU s at 10 s, 0.17 at 60 s, 1 thread, with torch.istft). A block of BLOCK_FRAMES (~11 s, so a
# 10-s sample is one block) runs every iteration on its own, with BLOCK_CONTEXT frames of the sound
# either side; the frames it shares with the block before keep that block's phases, and the two are
# crossfaded at the seam. 8 drascula tracks' first minute at 48 kHz, 1 thread: one piece 0.115 CPU s per
# audio s, blocks 0.055, re-analysed log-mel L1 0.1761 both ways (with torch.istft: 0.155 in one piece)
# (`python bench/bench_vqvae.py --dataset drascula --gl-blocks --threads 1`).
BLOCK_FRAMES = 1024
BLOCK_CONTEXT = 16


def griffin_lim(
    magnitude: torch.Tensor,
    audio_config: AudioConfig,
    n_iter: int = DEFAULT_N_ITER,
    momentum: float = DEFAULT_MOMENTUM,
    length: int | None = None,
    seed: int = 0,
    block_frames: int = BLOCK_FRAMES,
) -> torch.Tensor:
    """[B, bins, frames] magnitude -> [B, samples]. Fast Griffin-Lim (Perraudin et al. 2013), block by
    block past `block_frames` (see BLOCK_FRAMES).

    Phases start random from a fixed seed, so the same input always gives the same audio."""
    cfg = audio_config
    hop = cfg.hop_length
    dev = magnitude.device
    gen = torch.Generator(device="cpu").manual_seed(seed)
    phase = torch.rand(magnitude.shape, generator=gen) * (2 * math.pi)
    # frame-major [B, T, F] throughout: the layout torch.stft gives and `_istft` takes
    angles = torch.polar(torch.ones_like(phase), phase).to(dev).transpose(-1, -2).contiguous()
    mag = magnitude.to(torch.float32).transpose(-1, -2).contiguous()
    frames = mag.shape[-2]
    if frames <= block_frames:
        wave = _griffin_lim_block(mag, angles, cfg, n_iter, momentum, kept=0)[0]
    else:
        ctx = BLOCK_CONTEXT
        fade = ctx * hop // 2  # the seam's crossfade, centred on it
        ramp = torch.linspace(0.0, 1.0, fade, device=dev)
        wave = torch.zeros(mag.shape[0], (frames - 1) * hop, device=dev)
        for start in range(0, frames, block_frames):
            lo, hi = max(0, start - ctx), min(frames, start + block_frames + ctx)
            block, angles[:, lo:hi] = _griffin_lim_block(mag[:, lo:hi], angles[:, lo:hi], cfg, n_iter, momentum,
                                                         kept=start - lo)  # the next block starts from these phases
            # up to half a fade past the block's end: the next block fades in over it
            seam, end = start * hop, min(wave.shape[-1], (start + block_frames) * hop + fade - fade // 2)
            if start == 0:
                wave[:, :end] = block[:, :end]
                continue
            f0 = seam - fade // 2
            wave[:, f0 : f0 + fade] = torch.lerp(wave[:, f0 : f0 + fade], block[:, f0 - lo * hop : f0 + fade - lo * hop], ramp)
            wave[:, f0 + fade : end] = block[:, f0 + fade - lo * hop : end - lo * hop]
    if length is not None:
        wave = wave[..., :length] if wave.shape[-1] >= length else torch.nn.functional.pad(wave, (0, length - wave.shape[-1]))
    return wave


def _griffin_lim_block(mag, angles, cfg: AudioConfig, n_iter: int, momentum: float, kept: int):
    """Fast Griffin-Lim over frame-major mag [B, t, F] from `angles` [B, t, F] -> (wave [B, (t-1)*hop],
    final angles). The first `kept` frames keep their phases (the block before decided them)."""
    n_fft, hop = cfg.n_fft, cfg.hop_length
    win = _window(n_fft, mag.device)
    tprev = torch.zeros_like(angles)
    scale = momentum / (1.0 + momentum)
    inner = (mag.shape[-2] - 1) * hop  # the length whose centred STFT has exactly `frames` frames
    for _ in range(max(0, n_iter)):
        wave = _istft(mag * angles, cfg, inner)
        rebuilt = torch.stft(wave, n_fft, hop_length=hop, window=win, center=True, return_complex=True).transpose(-1, -2)
        if kept:
            rebuilt[:, :kept] = angles[:, :kept] * rebuilt[:, :kept].abs()
        angles = torch.sgn(torch.sub(rebuilt, tprev, alpha=scale))  # z/|z| in one op (0 stays 0)
        tprev = rebuilt
    return _istft(mag * angles, cfg, inner), angles


def _istft(spec: torch.Tensor, cfg: AudioConfig, length: int) -> torch.Tensor:
    """torch.istft(center=True, Hann window) of a frame-major spectrogram [B, t, F] -> [B, length]: an
    inverse real FFT per frame and an overlap-add of n_fft/hop shifted copies, divided by the window's
    own overlap-add. 3x faster than torch.istft at 48 kHz (its NOLA check and fold cost more than the
    FFTs); the same samples to float precision (tests/test_griffinlim.py)."""
    n_fft, hop = cfg.n_fft, cfg.hop_length
    if n_fft % hop:
        return torch.istft(spec.transpose(-1, -2), n_fft, hop_length=hop, window=_window(n_fft, spec.device),
                           center=True, length=length)
    b, t = spec.shape[0], spec.shape[1]
    r = n_fft // hop
    frames = (torch.fft.irfft(spec, n=n_fft, dim=-1) * _window(n_fft, spec.device)).view(b, t, r, hop)
    out = torch.zeros(b, t + r - 1, hop, device=spec.device)
    for j in range(r):  # frame i's j-th hop of samples lands at hop i + j
        out[:, j : j + t] += frames[:, :, j]
    lo = n_fft // 2  # center=True: the signal starts half a window into the first frame
    out = out.view(b, -1)[:, lo : lo + length]
    return out / _window_overlap(n_fft, hop, t).to(spec.device)[lo : lo + length]


@lru_cache(maxsize=16)
def _window_overlap(n_fft: int, hop: int, frames: int) -> torch.Tensor:
    """The squared Hann window overlap-added over `frames` frames (what an inverse STFT divides by), on
    the CPU; callers only read it."""
    r = n_fft // hop
    w2 = _window(n_fft, "cpu").square().view(r, hop)
    env = torch.zeros(frames + r - 1, hop)
    for j in range(r):
        env[j : j + frames] += w2[j]
    return env.view(-1)


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
