"""Dataset scan: every file gets an outcome and a reason; good files survive bad neighbours."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from badfiles import make_corpus
from conftest import REPO, write_synthetic_folder
from distill.config import AudioConfig
from distill.scan import DatasetError, scan_dataset


def test_bad_input_corpus_each_file_has_expected_outcome(tmp_path, cache_dir):
    cases = make_corpus(tmp_path / "corpus")
    report = scan_dataset(tmp_path / "corpus", cache_dir=cache_dir)
    got = {e.path: e for e in report.entries}
    problems = []
    for c in cases:
        e = got.get(c.path)
        if e is None or e.status != c.expect or c.reason.lower() not in e.reason.lower():
            problems.append((c.kind, c.path, e and e.status, e and e.reason))
    assert not problems, problems
    assert got[".git/"].reason.startswith("hidden folder")
    assert not any(p.startswith(".git/inside") for p in got)
    assert report.total_seconds > 5
    # each reason is short plain language, never a raw absolute path
    for e in report.skipped:
        assert str(tmp_path) not in e.reason and len(e.reason) < 200


def test_features_resampled_mono_normalised(tmp_path, cache_dir):
    cfg = AudioConfig()
    sr = 48_000
    t = np.arange(sr) / sr
    stereo = np.stack([0.01 * np.sin(2 * np.pi * 440 * t), 0.01 * np.sin(2 * np.pi * 440 * t)], axis=1)
    sf.write(tmp_path / "quiet_stereo.wav", stereo, sr)
    report = scan_dataset(tmp_path, cfg, cache_dir=cache_dir)
    (e,) = report.used
    assert (e.sample_rate, e.channels) == (sr, 2) and e.seconds == pytest.approx(1.0)
    assert e.mel.shape[0] == cfg.n_mels
    assert abs(e.mel.shape[1] - cfg.sample_rate / cfg.hop_length) <= 2
    # normalised: a quiet file reaches the same level as a loud one
    loud = tmp_path / "loud"
    loud.mkdir()
    sf.write(loud / "loud.wav", stereo * 50, sr)
    (l,) = scan_dataset(loud, cfg, cache_dir=cache_dir).used
    loud_bins = l.mel > l.mel.max() - 4  # compare where the tone is, not the quantisation-noise floor
    assert float((l.mel - e.mel)[loud_bins].abs().max()) < 0.05


def test_second_scan_decodes_nothing(synth_folder, cache_dir, monkeypatch):
    first = scan_dataset(synth_folder, cache_dir=cache_dir)
    import distill.scan as scan_mod

    def boom(*a, **k):
        raise AssertionError("decoded on a warm cache")

    monkeypatch.setattr(scan_mod, "_decode_and_featurise", boom)
    second = scan_dataset(synth_folder, cache_dir=cache_dir)
    assert second.cache_hits == len(first.used) == 6
    for a, b in zip(first.used, second.used):
        assert a.path == b.path and bool((a.mel == b.mel).all())


def test_cache_key_changes_with_settings(synth_folder, cache_dir):
    scan_dataset(synth_folder, cache_dir=cache_dir)
    other = scan_dataset(synth_folder, AudioConfig(n_mels=64), cache_dir=cache_dir)
    assert other.cache_hits == 0 and other.used[0].mel.shape[0] == 64


def test_relative_paths_and_file_list_input(synth_folder, cache_dir):
    report = scan_dataset(synth_folder, cache_dir=cache_dir)
    assert {e.path.split("/")[0] for e in report.used} == {"a", "b"}
    files = sorted(synth_folder.rglob("*.wav"))[:3]
    listed = scan_dataset(files, cache_dir=cache_dir, root=synth_folder)
    assert [e.path for e in listed.used] == [f.relative_to(synth_folder).as_posix() for f in files]


def test_zero_usable_files_is_a_clear_error(tmp_path, cache_dir):
    (tmp_path / "notes.txt").write_text("hi")
    report = scan_dataset(tmp_path, cache_dir=cache_dir)
    assert not report.used
    with pytest.raises(DatasetError, match="No usable audio"):
        report.dataset(0.2)
    with pytest.raises(DatasetError, match="does not exist"):
        scan_dataset(tmp_path / "nope", cache_dir=cache_dir)


def test_cli_scan_json(synth_folder, cache_dir):
    out = subprocess.run(
        [sys.executable, "-m", "distill", "--cache-dir", str(cache_dir), "scan", str(synth_folder), "--json"],
        capture_output=True, text=True, cwd=REPO, timeout=120,
    )
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert len(data["files_used"]) == 6 and data["files_skipped"] == []
    assert data["tier"]["tier"] == 1 and data["prior_config"]["hidden_size"] == 128
    assert data["vqvae_config"]["codebook_size"] == 64 and data["total_seconds"] == pytest.approx(6.0, abs=0.01)


def test_cli_scan_reports_nothing_usable(tmp_path, cache_dir):
    (tmp_path / "x.wav").write_bytes(b"")
    out = subprocess.run([sys.executable, "-m", "distill", "--cache-dir", str(cache_dir), "scan", str(tmp_path), "--json"],
                         capture_output=True, text=True, cwd=REPO, timeout=120)
    assert out.returncode == 1
    data = json.loads(out.stdout)
    assert data["files_skipped"][0]["reason"].startswith("empty file") and data["tier"] is None


def test_real_collection_freedesktop_all_files_used(freedesktop_dir, cache_dir):
    report = scan_dataset(freedesktop_dir, cache_dir=cache_dir)
    oga = [e for e in report.entries if e.path.endswith(".oga")]
    assert len(oga) == 27
    assert all(e.status == "used" for e in oga), [(e.path, e.reason) for e in oga if e.status != "used"]
    rates = {e.sample_rate for e in oga}
    assert min(rates) == 8000 and max(rates) == 96000
    assert {e.channels for e in oga} == {1, 2}
