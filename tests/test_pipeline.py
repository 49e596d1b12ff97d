"""The whole pipeline through the CLI on a tiny synthetic folder: train, generate, encode, decode, evaluate."""
import json
import os
import subprocess
import sys
import threading

import numpy as np
import pytest
import soundfile as sf
import torch

from conftest import REPO, write_synthetic_folder
from distill.generate import generate_audio, list_samples, load_sample_codes, save_sample
from distill.pipeline import TrainOptions, retrain_prior, run_pipeline
from distill.runs import list_runs, load_codes, load_detail, load_vqvae, read_manifest, read_metrics


def _cli(*args, timeout=300):
    # One thread: tiny models gain nothing from two, and it keeps timings sane when the cores are busy.
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "distill", *map(str, args)], capture_output=True, text=True,
                          cwd=REPO, timeout=timeout, env=env)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("pipe")
    data = write_synthetic_folder(root / "data", n=6, seconds=1.5, sr=48_000)  # worked on at 48 kHz, detail levels
    run = root / "workspace" / "runs" / "r1"
    out = _cli("--cache-dir", root / "cache", "train", data, "--run", run, "--preset", "quick", "--minutes", "0.6",
               "--seed", "3", "--json")
    assert out.returncode == 0, out.stderr[-3000:]
    return {"root": root, "data": data, "run": run, "summary": json.loads(out.stdout), "stderr": out.stderr}


def test_train_writes_a_complete_run(trained):
    run, summary = trained["run"], trained["summary"]
    assert summary["status"] == "done" and summary["tier"] == 1 and summary["files_used"] == 6
    for name in ("manifest.json", "vqvae.safetensors", "prior.safetensors", "codes.safetensors", "metrics.jsonl"):
        assert (run / name).is_file(), name
    manifest = read_manifest(run)
    assert manifest["status"] == "done" and len(manifest["files"]["used"]) == 6
    assert set(manifest["split"]["train"]).isdisjoint(manifest["split"]["val"])
    assert manifest["vqvae_config"]["codebook_size"] == 64 and manifest["prior_config"]["num_layers"] == 2
    assert set(summary["stage_seconds"]) >= {"features", "vqvae", "codes", "prior", "analysis"}
    assert "val_nll_bits" in summary["results"]["analysis"]
    # the CLI says how much the sequence model learned, from the same judgement as the page
    assert summary["learned"]["level"] in ("little", "some", "clear") and summary["learned"]["headline"]
    kinds = {(e["stage"], e["kind"]) for e in read_metrics(run)}
    assert {("vqvae", "step"), ("vqvae", "eval"), ("prior", "step"), ("prior", "eval"), ("run", "run_end")} <= kinds
    assert "progress" in trained["stderr"] or "stage_start" in trained["stderr"]
    assert list_runs(run.parent.parent)[0]["has_prior"]


def test_codes_match_reencoding_and_load_is_identical(trained):
    run = trained["run"]
    codes = load_codes(run)
    assert len(codes) == 6 and all(c.shape[1] == 3 for c in codes.values())
    name = next(iter(codes))
    out = _cli("--cache-dir", trained["root"] / "cache", "encode", run, trained["data"] / name, "--out",
               trained["root"] / "c.npy")
    assert out.returncode == 0, out.stderr
    again = np.load(trained["root"] / "c.npy")  # every level: the sequence model's, then the detail levels
    assert np.array_equal(again[:, :3], codes[name]) and np.array_equal(again[:, 3:], load_detail(run)[name])


def test_generate_cli_and_determinism(trained):
    run, root = trained["run"], trained["root"]
    out = _cli("generate", run, "--seconds", "2", "--seed", "7", "--temperature", "0.9", "--top-k", "20",
               "--out", root / "g.wav", "--codes-out", root / "g.npy", "--keep")
    assert out.returncode == 0, out.stderr
    wave, sr = sf.read(root / "g.wav")
    assert sr == 48_000 and abs(len(wave) - 2 * sr) <= 512 and np.isfinite(wave).all() and np.abs(wave).max() > 0.01
    heard = np.load(root / "g.npy")  # every level the sound is heard with
    vq = read_manifest(run)["vqvae_config"]
    assert vq["spectral_levels"] > 0  # worked on at 48 kHz: the detail levels, then the spectral detail
    assert heard.shape[1] == 3 + vq["detail_levels"] + vq["spectral_levels"] * vq["spectral_bands"] and heard.max() < 64
    w1, _, c1 = generate_audio(run, 2.0, 0.9, 20, 1.0, seed=7)
    w2, _, c2 = generate_audio(run, 2.0, 0.9, 20, 1.0, seed=7)
    w3, _, c3 = generate_audio(run, 2.0, 0.9, 20, 1.0, seed=8)
    assert np.array_equal(c1, c2) and np.array_equal(w1, w2) and np.array_equal(c1[:, 0], heard[:, 0])
    assert not np.array_equal(c1, c3)
    back = _cli("decode", run, root / "g.npy", "--out", root / "back.wav")  # the heard codes decode to the sound
    assert back.returncode == 0, back.stderr
    assert np.allclose(sf.read(root / "back.wav")[0][: len(wave)], wave, atol=2e-4)
    # following the material changes the sample; --follow 0 is the model alone
    _, _, alone = generate_audio(run, 2.0, 0.9, 20, 1.0, seed=7, retrieval=0.0)
    out0 = _cli("generate", run, "--seconds", "2", "--seed", "7", "--temperature", "0.9", "--top-k", "20",
                "--follow", "0", "--out", root / "g0.wav", "--codes-out", root / "g0.npy")
    assert out0.returncode == 0, out0.stderr
    assert np.array_equal(np.load(root / "g0.npy")[:, 0], alone[:, 0]) and not np.array_equal(alone, c1)
    bad = _cli("generate", run, "--seconds", "2", "--follow", "1.5", "--out", root / "bad.wav")
    assert bad.returncode != 0 and "retrieval" in bad.stderr
    samples = list_samples(run)
    assert samples and samples[0]["settings"]["seed"] == 7 and samples[0]["prior_hash"]
    assert np.array_equal(load_sample_codes(samples[0]), c1)  # the sequence model's codes (heard the same every time)


def test_generate_continues_a_training_file(trained):
    run = trained["run"]
    name = next(iter(load_codes(run)))
    wave, sr, codes = generate_audio(run, 1.0, seed=1, prompt_file=name)
    assert len(wave) > 0.9 * sr and codes.shape[1] == 3
    with pytest.raises(ValueError, match="not one of"):
        generate_audio(run, 1.0, prompt_file="no/such.wav")


def test_decode_cli_round_trip(trained):
    run, root = trained["run"], trained["root"]
    codes = next(iter(load_codes(run).values()))
    np.save(root / "d.npy", codes)
    out = _cli("decode", run, root / "d.npy", "--out", root / "d.wav")
    assert out.returncode == 0, out.stderr
    wave, sr = sf.read(root / "d.wav")
    frames = codes.shape[0] * read_manifest(run)["vqvae_config"]["downsample"]
    assert abs(len(wave) - frames * read_manifest(run)["audio_config"]["hop_length"]) <= 2048 and np.isfinite(wave).all()
    np.save(root / "bad.npy", np.full((4, 3), 999))
    bad = _cli("decode", run, root / "bad.npy", "--out", root / "bad.wav")
    assert bad.returncode == 2 and "codes must be" in bad.stderr


def test_evaluate_cli_json(trained):
    out = _cli("--cache-dir", trained["root"] / "cache", "evaluate", trained["run"], "--data", trained["data"],
               "--samples", "2", "--sample-seconds", "2", "--json")
    assert out.returncode == 0, out.stderr[-2000:]
    res = json.loads(out.stdout)
    assert 0 < res["vqvae.mel_l1"] < res["vqvae.baseline_mel_l1"]
    assert len(res["vqvae.levels"]) == 4 and all(0 <= lv["utilisation"] <= 1 for lv in res["vqvae.levels"])
    assert res["vqvae.levels"][-1]["name"] == "detail (levels 4–48)"  # the detail levels, as one entry
    for key in ("prior.val_nll_bits", "prior.unigram_bits", "prior.copy_fraction"):
        assert np.isfinite(res[key]), key
    assert 0 <= res["prior.verbatim_share"] <= 1
    assert len(res["prior.generated_jsd"]) == 3


def test_retrain_prior_keeps_vqvae(trained):
    run = trained["run"]
    before = (run / "vqvae.safetensors").read_bytes()
    events = []
    summary = retrain_prior(run, TrainOptions(preset="quick", minutes=0.1, prior_overrides={"dropout": 0.0}),
                            callbacks=[events.append])
    assert summary["status"] == "done", summary
    assert (run / "vqvae.safetensors").read_bytes() == before
    assert read_manifest(run)["prior_config"]["dropout"] == 0.0
    assert any(e["stage"] == "prior" and e["kind"] == "eval" for e in events)


def test_stop_flag_ends_the_run_cleanly(tmp_path):
    data = write_synthetic_folder(tmp_path / "d", n=5)
    stop = threading.Event()

    def stop_in_vqvae(event):
        if event.get("stage") == "vqvae" and event.get("kind") == "step":
            stop.set()

    summary = run_pipeline(data, tmp_path / "run", TrainOptions(preset="quick", cache_dir=str(tmp_path / "c")),
                           callbacks=[stop_in_vqvae], stop=stop)
    assert summary["status"] == "stopped"
    assert read_manifest(tmp_path / "run")["status"] == "stopped"
    assert (tmp_path / "run" / "vqvae.safetensors").is_file() and not (tmp_path / "run" / "prior.safetensors").exists()
    load_vqvae(tmp_path / "run")  # what was kept loads


def test_no_usable_files_fails_with_a_clear_message(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "a.wav").write_bytes(b"")
    summary = run_pipeline(tmp_path / "d", tmp_path / "run", TrainOptions(preset="quick", cache_dir=str(tmp_path / "c")))
    assert summary["status"] == "failed" and "No usable audio" in summary["message"]
    assert read_manifest(tmp_path / "run")["status"] == "failed"


def test_a_real_run_passes_the_bundle_checks(trained, tmp_path):
    """The import checks on a manifest's display fields accept everything Distill itself writes."""
    from distill.bundle import export_run, import_run
    from distill.runs import check_manifest_fields

    check_manifest_fields(read_manifest(trained["run"]))
    assert import_run(export_run(trained["run"], tmp_path / "b.zip"), tmp_path / "ws").is_dir()
    assert list_runs(tmp_path / "ws")[0]["tier"] == read_manifest(trained["run"])["tier"]["tier"] in (1, 2, 3)


def test_retrain_refuses_settings_start_would_refuse_before_building_anything(trained, monkeypatch):
    from distill.models import prior as prior_module

    def never(*args, **kwargs):
        raise AssertionError("a model was built")

    monkeypatch.setattr(prior_module.CodePrior, "__init__", never)
    run = trained["run"]
    before = (read_manifest(run), (run / "prior.safetensors").read_bytes())
    for overrides, words in (({"hidden_size": 100000, "num_heads": 1}, "hidden_size=100000 is outside"),
                             ({"hidden_size": 100, "num_heads": 3}, "multiple of the number of heads"),
                             ({"num_layers": 10**6}, "num_layers=1000000 is outside")):
        summary = retrain_prior(run, TrainOptions(preset="quick", prior_overrides=overrides))
        assert summary["status"] == "failed" and words in summary["message"], summary
        assert summary["message"].startswith("Nothing was retrained"), summary["message"]
    assert (read_manifest(run), (run / "prior.safetensors").read_bytes()) == before  # the run is as it was
