"""Log-mel analysis and its Griffin-Lim inverse."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from distill.audio.griffinlim import griffin_lim, log_mel, mel_ceiling, mel_filterbank, mel_to_audio, mel_to_linear
from distill.config import AudioConfig

SMALL = AudioConfig(sample_rate=8000, n_fft=256, hop_length=64, n_mels=32)


def tone(freq: float, seconds: float, sr: int) -> torch.Tensor:
    t = torch.arange(int(seconds * sr)) / sr
    return 0.5 * torch.sin(2 * math.pi * freq * t)


@pytest.mark.parametrize(
    "cfg", [AudioConfig(), SMALL, AudioConfig(sample_rate=22050, n_fft=2048, n_mels=80, f_min=30.0, f_max=8000.0)]
)
def test_filterbank_matches_librosa(cfg):
    import librosa

    ref = librosa.filters.mel(sr=cfg.sample_rate, n_fft=cfg.n_fft, n_mels=cfg.n_mels, fmin=cfg.f_min, fmax=cfg.f_max)
    ours = mel_filterbank(cfg)
    assert ours.shape == (cfg.n_mels, cfg.n_fft // 2 + 1) and ours.dtype == torch.float32
    np.testing.assert_allclose(ours.numpy(), ref, rtol=1e-5, atol=1e-8)
    ours[0, 0] = 123.0  # callers get their own copy: the cache cannot be corrupted
    assert float(mel_filterbank(cfg)[0, 0]) != 123.0


def test_log_mel_shapes_and_values():
    wave = tone(1000.0, 0.5, SMALL.sample_rate)
    m = log_mel(wave, SMALL)
    assert m.shape == (32, 1 + wave.shape[0] // SMALL.hop_length)
    # the loudest band is the one whose filter covers 1 kHz
    fb = mel_filterbank(SMALL)
    bin_1k = round(1000 * SMALL.n_fft / SMALL.sample_rate)
    assert int(m[:, 10].argmax()) == int(fb[:, bin_1k].argmax())
    silence = log_mel(torch.zeros(2, 3, 1000), SMALL)  # leading batch dims are kept
    assert silence.shape == (2, 3, 32, 1 + 1000 // 64)
    assert torch.allclose(silence, torch.full_like(silence, math.log(SMALL.log_floor)))
    assert log_mel(torch.zeros(50), SMALL).shape == (32, 1)  # shorter than half a window


def test_mel_to_linear_is_non_negative_and_fits_better_than_clamp():
    m = log_mel(tone(440.0, 0.5, 8000) + 0.01 * torch.randn(4000, generator=torch.Generator().manual_seed(0)), SMALL)
    fb = mel_filterbank(SMALL)
    target = torch.exp(m) - SMALL.log_floor
    clamp_only = mel_to_linear(m, SMALL, nnls_iters=0)
    refined = mel_to_linear(m, SMALL)
    assert (refined >= 0).all() and (clamp_only >= 0).all()
    err = lambda s: float((fb @ s - target).abs().sum())  # noqa: E731
    assert err(refined) < err(clamp_only)


def test_mel_to_audio_length_finite_and_better_with_iterations():
    wave = tone(440.0, 0.5, SMALL.sample_rate) + 0.3 * tone(1250.0, 0.5, SMALL.sample_rate)
    m = log_mel(wave, SMALL)
    frames = m.shape[-1]
    out = mel_to_audio(m, SMALL, n_iter=16)
    assert out.shape == (frames * SMALL.hop_length,) and torch.isfinite(out).all()
    assert torch.equal(out, mel_to_audio(m, SMALL, n_iter=16))  # deterministic

    def err(n_iter):
        again = log_mel(mel_to_audio(m, SMALL, n_iter=n_iter), SMALL)[:, :frames]
        return float((again - m).abs().mean())

    assert err(16) < err(0)
    assert err(16) < 1.0


def test_mel_to_audio_batch_short_and_hostile_inputs():
    m = log_mel(torch.randn(3, 2000) * 0.1, SMALL)
    out = mel_to_audio(m, SMALL, n_iter=2)
    assert out.shape == (3, m.shape[-1] * SMALL.hop_length)
    one = mel_to_audio(m[0, :, :1], SMALL, n_iter=2)
    assert one.shape == (SMALL.hop_length,) and torch.isfinite(one).all()
    bad = m[0].clone()
    bad[0, 0], bad[1, 1], bad[2, 2] = float("nan"), float("inf"), 1e6
    assert torch.isfinite(mel_to_audio(bad, SMALL, n_iter=2)).all()
    with pytest.raises(ValueError):
        mel_to_audio(torch.zeros(5, 10), SMALL)  # wrong mel count


@pytest.mark.parametrize("rate", [24000, 48000])
def test_no_sound_within_full_scale_passes_the_ceiling_and_a_decoders_blast_is_clamped_to_it(rate):
    cfg = AudioConfig().at_rate(rate)
    ceiling = mel_ceiling(cfg)
    t = np.arange(rate) / rate
    loud = [np.sign(np.sin(2 * np.pi * 440 * t)), np.sin(2 * np.pi * (50 + (rate / 2 - 100) * t / 2) * t),
            np.sign(np.random.default_rng(0).standard_normal(rate))]
    for wave in loud:
        assert (log_mel(torch.tensor(wave, dtype=torch.float32), cfg) <= ceiling[:, None]).all()
    mel = log_mel(torch.tensor(0.3 * loud[1], dtype=torch.float32), cfg)[:, :40]
    blast = mel.clone()
    blast[:, 20] = 28.0  # what a codec's latent it never learned to map decoded to
    out, clamped = mel_to_audio(blast, cfg), mel_to_audio(torch.minimum(blast, ceiling[:, None]), cfg)
    assert torch.equal(out, clamped) and float(out.abs().max()) < 1e3


def test_a_long_sound_runs_in_blocks_without_a_seam_and_a_short_one_in_one():
    """Past `block_frames`, Griffin-Lim runs block by block (memory traffic, griffinlim.BLOCK_FRAMES):
    a steady chord comes out as steady across every seam, and as close to its mel as in one piece."""
    sr = SMALL.sample_rate
    wave = tone(440.0, 3.0, sr) + 0.3 * tone(1250.0, 3.0, sr)
    m = log_mel(wave, SMALL)
    frames = m.shape[-1]  # 376: blocks of 100 leave three seams
    mag = mel_to_linear(m[None], SMALL).sqrt()
    whole = griffin_lim(mag, SMALL, length=frames * SMALL.hop_length, block_frames=frames)[0]
    blocks = griffin_lim(mag, SMALL, length=frames * SMALL.hop_length, block_frames=100)[0]
    assert blocks.shape == whole.shape and torch.isfinite(blocks).all()

    def err(out):
        return float((log_mel(out, SMALL)[:, 8:frames - 8] - m[:, 8:frames - 8]).abs().mean())

    assert err(blocks) < 1.1 * err(whole) + 0.02
    # loudness in 16-ms windows: no dip or bump at a seam beyond what the chord does elsewhere
    rms = blocks[: len(blocks) // 128 * 128].reshape(-1, 128).pow(2).mean(-1).sqrt()[4:-4]
    assert float(rms.min()) > 0.8 * float(rms.median()) and float(rms.max()) < 1.2 * float(rms.median())
    for seam in (100, 200, 300):  # each seam's re-analysed frames as close to the mel as the rest
        near = (log_mel(blocks, SMALL)[:, seam - 3 : seam + 3] - m[:, seam - 3 : seam + 3]).abs().mean()
        assert float(near) < 2.0 * err(blocks) + 0.05
    # a sound of at most one block: the one-piece result itself
    assert torch.equal(griffin_lim(mag, SMALL, block_frames=frames), griffin_lim(mag, SMALL, block_frames=frames + 50))


@pytest.mark.parametrize("cfg", [SMALL, AudioConfig.at_rate(48_000), AudioConfig(n_fft=1000, hop_length=300)])
def test_the_inverse_stft_is_torchs(cfg):
    from distill.audio.griffinlim import _istft

    frames = 57
    spec = torch.polar(torch.rand(2, cfg.n_fft // 2 + 1, frames), torch.rand(2, cfg.n_fft // 2 + 1, frames) * 6.3)
    length = (frames - 1) * cfg.hop_length
    ref = torch.istft(spec, cfg.n_fft, hop_length=cfg.hop_length, window=torch.hann_window(cfg.n_fft), center=True,
                      length=length)
    ours = _istft(spec.transpose(-1, -2).contiguous(), cfg, length)
    assert ours.shape == ref.shape and torch.allclose(ours, ref, atol=1e-6 * float(ref.abs().max()))
