"""The rate sound is worked on: 48 kHz for material recorded at 44.1 kHz or more, else 24 kHz, chosen
from the files' headers before anything is decoded, said on the tier card, and overridable."""
from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf

from distill.config import SPECTRAL_LEVELS, AudioConfig, sample_rate_for
from distill.planning import TrainOptions, audio_config_for, plan_training
from distill.scan import scan_dataset, source_rates


def folder(tmp_path, rates_seconds, name="sounds"):
    d = tmp_path / name
    d.mkdir()
    for i, (rate, seconds) in enumerate(rates_seconds):
        t = np.arange(int(rate * seconds)) / rate
        sf.write(d / f"s{i}.wav", (0.4 * np.sin(2 * np.pi * 440 * t)).astype(np.float32), rate)
    return d


def test_the_rule_follows_the_share_of_time_recorded_at_44k_or_more():
    assert sample_rate_for([(44_100, 10.0)]) == 48_000
    assert sample_rate_for([(96_000, 1.0), (48_000, 2.0)]) == 48_000
    assert sample_rate_for([(8_000, 10.0), (22_050, 3.0)]) == 24_000
    assert sample_rate_for([(44_100, 4.0), (8_000, 6.0)]) == 24_000  # most of the time is low-rate
    assert sample_rate_for([(44_100, 5.0), (8_000, 5.0)]) == 48_000  # half of it is enough
    assert sample_rate_for([]) == 24_000


def test_a_frame_lasts_as_long_at_either_rate():
    low, high = AudioConfig.at_rate(24_000), AudioConfig.at_rate(48_000)
    assert (high.n_fft, high.hop_length) == (2048, 512) and low == AudioConfig()
    assert high.frames_per_second == low.frames_per_second


def test_the_rate_is_chosen_from_the_headers_and_said_on_the_tier_card(tmp_path):
    hi = folder(tmp_path, [(44_100, 1.0), (48_000, 0.5), (8_000, 0.5)], "hi")
    lo = folder(tmp_path, [(8_000, 1.0), (16_000, 1.0), (44_100, 0.5)], "lo")
    assert sorted(source_rates(hi)) == [(8000, 0.5), (44100, 1.0), (48000, 0.5)]
    for path, rate, words in ((hi, 48_000, "recorded at 44.1 kHz or more, so everything up to 24 kHz is kept"),
                              (lo, 24_000, "0.5 s of your 2.5 s of audio is recorded at 44.1 kHz or more")):
        audio = audio_config_for(TrainOptions(), path)
        assert audio.sample_rate == rate
        report = scan_dataset(path, audio, cache_dir=tmp_path / "cache")
        plan = plan_training(report, TrainOptions(preset="quick"))
        card = plan.tier_card
        assert card["settings"]["audio"]["sample_rate"] == rate
        # detail levels where the material is worked on at 48 kHz; the three-level codec at 24 kHz
        assert plan.vqvae_config.detail_levels == (45 if rate == 48_000 else 0)
        assert plan.vqvae_config.spectral_levels == (SPECTRAL_LEVELS if rate == 48_000 else 0)
        assert plan.vqvae_config.coarse_dropout == (0.5 if rate == 48_000 else 0.0)  # the coarse levels trained to stand alone
        assert ("detail levels" in " ".join(card["reasons"])) == (rate == 48_000)
        assert any(words in r for r in card["reasons"]), card["reasons"]
        mel = report.used[0].mel
        assert mel.shape[0] == 128 and abs(mel.shape[1] - report.used[0].seconds * 93.75) <= 2


def test_the_rate_can_be_set_and_a_rate_distill_does_not_work_at_is_refused(tmp_path):
    lo = folder(tmp_path, [(8_000, 1.0)])
    assert audio_config_for(TrainOptions(sample_rate=48_000), lo).sample_rate == 48_000
    assert audio_config_for(TrainOptions(sample_rate=0)).sample_rate == 24_000  # no material: the project rate
    with pytest.raises(ValueError, match="24000, 48000"):
        audio_config_for(TrainOptions(sample_rate=44_100), lo)


def test_unreadable_files_do_not_stop_the_choice(tmp_path):
    d = folder(tmp_path, [(44_100, 1.0)])
    (d / "broken.wav").write_bytes(b"RIFF0000WAVEjunk")
    (d / "notes.txt").write_text("hello")
    assert source_rates(d) == [(44_100, 1.0)]
    assert audio_config_for(TrainOptions(), d).sample_rate == 48_000
