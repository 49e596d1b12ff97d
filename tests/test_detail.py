"""The codec's detail levels: encoded and stored beside the codes, kept in every round trip of a sound,
taken from the material for codes the sequence model made (distill/detail.py), checked on load."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import soundfile as sf
import torch

from conftest import write_synthetic_folder
from distill.bundle import export_run, import_run
from distill.config import VQVAEConfig
from distill.detail import DetailBank, DetailSettings
from distill.generate import load_run, load_sample_codes
from distill.models.vqvae import ConvVQVAE
from distill.pipeline import TrainOptions, run_pipeline
from distill.reconstruct import reconstruct_file
from distill.runs import DETAIL_FILE, load_codes, load_detail, read_manifest
from distill.sound_input import from_audio_file, from_sample, from_training_file
from distill.storage import UnsafeFileError, save_tensors
from distill.variations import VariationSettings, save_variations, vary_codes

N_MELS, Q, D, K = 16, 3, 4, 16


def tiny_codec(detail_levels: int = D) -> ConvVQVAE:
    torch.manual_seed(0)
    cfg = VQVAEConfig(codebook_size=K, num_quantizers=Q, detail_levels=detail_levels, codebook_dim=8,
                      hidden_channels=32, num_res_blocks=1)
    return ConvVQVAE(N_MELS, cfg).eval()


def test_the_codec_encodes_the_sequence_models_levels_or_every_level():
    model = tiny_codec()
    x = torch.randn(4, N_MELS, 200) - 5  # 200 latent vectors for 16 codes a level: no level fits them exactly
    model.init_codebooks(x)
    coarse, every = model.encode(x), model.encode(x, detail=True)
    assert coarse.shape == (4, 50, Q) and every.shape == (4, 50, Q + D)
    assert torch.equal(every[..., :Q], coarse)
    # decoding sums the codebook vectors of the levels given: the coarse ones alone, or all of them
    levels = model.quantizer.levels
    for codes in (coarse, every):
        z = sum(levels[q].embed[codes[..., q]] for q in range(codes.shape[-1])).permute(0, 2, 1)
        assert torch.allclose(model.decode(codes), model._frames_out(model._decode_latent(z), None), atol=1e-5)
    # the detail levels quantise what the coarse ones leave: every level brings the latent closer
    z = model._latent(x).detach().permute(0, 2, 1)
    errors = [float((z - sum(levels[q].embed[every[..., q]] for q in range(n))).norm()) for n in (Q, Q + D)]
    assert errors[1] < errors[0]
    with pytest.raises(ValueError, match="3 or 7"):
        model.decode(every[..., : Q + 1])
    with pytest.raises(ValueError, match="detail_levels"):
        tiny_codec(detail_levels=65)


def test_coarse_dropout_decodes_some_training_windows_from_the_sequence_models_levels_alone():
    """VQVAEConfig.coarse_dropout: in training, each window is decoded from the coarse levels alone
    with that chance (so they describe a sound on their own), else from every level; never in eval."""
    x = torch.randn(64, N_MELS, 32) - 5
    model = tiny_codec()
    model.init_codebooks(x)
    model.config.coarse_dropout = 0.5
    z = model._latent(x).detach()
    levels = torch.tensor([Q, Q + D] * 32)
    quantised, codes, _, _ = model.quantizer(z, update=False, levels=levels)
    embeds = model.quantizer.levels
    for b in (0, 1):  # item 0 sums its coarse levels' codes, item 1 every level's
        n = int(levels[b])
        want = sum(embeds[q].embed[codes[b, :, q]] for q in range(n)).T
        assert torch.allclose(quantised[b], want, atol=1e-5)
    # every level is still searched: the codes are the same either way
    assert torch.equal(codes, model.quantizer(z, update=False)[1])
    # training forward: about half the windows come out as the coarse decode, the rest as every level's
    model.train()
    model.quantizer.eval()  # no codebook updates here, so encode() below finds the same codes
    torch.manual_seed(1)
    recon = model(x).recon.detach()
    model.eval()
    coarse = model.decode(model.encode(x), frames=32)
    every = model.decode(model.encode(x, detail=True), frames=32)
    as_coarse = [bool(torch.allclose(recon[i], coarse[i], atol=1e-4)) for i in range(64)]
    as_every = [bool(torch.allclose(recon[i], every[i], atol=1e-4)) for i in range(64)]
    assert all(a != b for a, b in zip(as_coarse, as_every))
    assert 16 <= sum(as_coarse) <= 48
    assert torch.allclose(model(x).recon, every, atol=1e-4)  # eval: every level, always


def material(files=4, steps=30, seed=0):
    rng = np.random.default_rng(seed)
    coarse = [rng.integers(0, K, (steps, Q)) for _ in range(files)]
    detail = [rng.integers(0, K, (steps, D)) for _ in range(files)]
    embeds = [rng.standard_normal((K, 8)).astype(np.float32) for _ in range(Q)]
    return coarse, detail, embeds


def test_a_files_own_coarse_codes_get_its_own_detail_back():
    coarse, detail, embeds = material()
    bank = DetailBank(coarse, detail, embeds)
    for c, d in zip(coarse, detail):
        assert np.array_equal(bank.realise(c), np.concatenate([c, d], 1))
    # a new path made of two stretches of the material takes each stretch's detail
    path = np.concatenate([coarse[0][:12], coarse[2][5:20]])
    filled = bank.realise(path)[:, Q:]
    assert np.array_equal(filled[2:10], detail[0][2:10]) and np.array_equal(filled[14:18], detail[2][7:11])


def test_known_detail_is_kept_and_the_rest_taken_from_the_material():
    coarse, detail, embeds = material()
    bank = DetailBank(coarse, detail, embeds)
    own = np.full((8, D), 3)
    filled = bank.realise(coarse[1], known=own)
    assert np.array_equal(filled[:, :Q], coarse[1])
    assert np.array_equal(filled[:8, Q:], own) and np.array_equal(filled[10:, Q:], detail[1][10:])
    assert np.array_equal(bank.realise(coarse[1][:5], known=np.full((9, D), 2))[:, Q:], np.full((5, D), 2))


def test_codes_the_material_never_used_still_get_detail_the_same_way_each_time():
    coarse, detail, embeds = material()
    for c in coarse:
        c[:, 0] %= 8  # level-0 codes 8..15 never occur in the material
    bank = DetailBank(coarse, detail, embeds)
    new = np.random.default_rng(5).integers(0, K, (20, Q))
    new[:, 0] = np.arange(20) % 8 + 8
    a, b = bank.realise(new), bank.realise(new)
    assert a.shape == (20, Q + D) and np.array_equal(a, b)
    assert np.array_equal(a[:, :Q], new)  # no place has their level-0 codes: nothing goes on, the codes stay
    rows = {tuple(r) for d in detail for r in d}
    assert all(tuple(r) in rows for r in a[:, Q:])  # every step's detail is a step of the material
    with pytest.raises(ValueError, match="no material"):
        DetailBank([], [], embeds)


def test_going_on_from_the_last_place_is_preferred_within_the_stay_margin():
    coarse, detail, embeds = material(files=2, steps=40)
    coarse[1] = coarse[0].copy()  # the same coarse sound twice, with different detail
    bank = DetailBank(coarse, detail, embeds, DetailSettings(stay=0.5, longest=0))
    filled = bank.realise(coarse[0])[:, Q:]
    assert np.array_equal(filled, detail[0]) or np.array_equal(filled, detail[1])  # one take all through: never a jump
    # with finer codes of its own, a sound goes on along a take for `longest` steps at most (then the
    # other take goes on, and so on); its own codes are never cut short
    capped = DetailBank(coarse, detail, embeds, DetailSettings(stay=0.5, longest=10))
    assert np.array_equal(np.diff(capped.places(coarse[0])), np.ones(39))
    new = coarse[0].copy()
    new[:, 1:] = (new[:, 1:] + 1) % K
    places = capped.places(new)
    runs = np.diff(np.concatenate([[0], np.flatnonzero(np.diff(places) != 1) + 1, [len(places)]]))
    assert runs.max() == 10 and len(runs) >= 4


def test_a_new_sound_goes_on_along_the_material_where_its_level_0_codes_do():
    """Where a new sound's level-0 path runs along the material's with other finer codes, the detail is
    taken in one stretch, with that stretch's finer codes (the step is the material's own latent); level 0
    stays the new sound's. Chosen step by step among places with all three of its codes, the detail came
    from a new place almost every step. A kept shape keeps its new finer codes."""
    coarse, detail, embeds = material(files=4, steps=40)
    bank = DetailBank(coarse, detail, embeds, DetailSettings(longest=0))  # (stretches as long as they go)
    new = coarse[1].copy()
    new[:, 1:] = np.random.default_rng(3).integers(0, K, (40, Q - 1))  # new finer codes on file 1's level-0 path
    heard = bank.realise(new)
    assert np.array_equal(heard[:, 0], new[:, 0])
    taken = (heard[:, 1:Q] == coarse[1][:, 1:]).all(1) & (heard[:, Q:] == detail[1]).all(1)
    assert taken.mean() >= 0.9, taken.mean()  # file 1 itself, step after step
    places = bank.places(new)
    assert (np.diff(places) == 1).mean() >= 0.9
    step_by_step = bank.places(new, go_on=False)  # places with the step's own codes only
    assert (np.diff(step_by_step) == 1).mean() < 0.5
    shaped = bank.realise(new, new_fine_codes=True)
    assert np.array_equal(shaped[:, :Q], new)
    # a codec without detail levels: the finer coarse codes alone go on along the material
    plain = DetailBank(coarse, [np.zeros((len(c), 0), np.int64) for c in coarse], embeds, DetailSettings(longest=0))
    assert np.array_equal(plain.realise(new), heard[:, :Q])
    assert np.array_equal(plain.realise(new, new_fine_codes=True), new)


def test_spectral_detail_is_the_materials_only_where_a_step_plays_as_the_material_did():
    """Columns from `spectral_from` on are spectral detail: the material's residual of its own decoded
    sound. A step that goes on along the material (its coarse codes and detail the place's own) takes it;
    any other step gets code 0 (no change), and a kept shape, with new finer codes, gets none."""
    coarse, detail, embeds = material(files=4, steps=40)
    for c in coarse:
        c[:, 0] %= 8  # level-0 codes 8..15 never occur in the material
    spectral = [np.random.default_rng(i).integers(1, K, (len(c), 6)) for i, c in enumerate(coarse)]
    both = [np.concatenate([d, s], 1) for d, s in zip(detail, spectral)]
    bank = DetailBank(coarse, both, embeds, DetailSettings(longest=0), spectral_from=D)
    assert np.array_equal(bank.realise(coarse[2]), np.concatenate([coarse[2], both[2]], 1))  # a file's own path
    new = coarse[1].copy()
    new[:, 1:] = np.random.default_rng(3).integers(0, K, (40, Q - 1))
    new[20:, 0] += 8  # from step 20 on, level-0 codes the material never has: nothing goes on there
    heard = bank.realise(new)
    places = bank.places(new)
    along = bank.coarse[places, 0] == new[:, 0]
    assert along[:20].mean() >= 0.9 and not along[20:].any()
    # inside: the step and two steps each side go on along one file with the places' coarse codes
    inside = np.array([all(along[u] and (u == lo or places[u] == places[u - 1] + 1) for u in range(lo, hi + 1))
                       for lo, hi in ((max(0, t - 2), min(39, t + 2)) for t in range(40))])
    assert inside[:16].sum() >= 10 and not inside[18:].any()
    assert np.array_equal(heard[inside, Q + D :], bank.detail[places[inside], D:])  # the place's own
    assert (heard[~inside, Q + D :] == 0).all()  # elsewhere no change
    assert np.array_equal(heard[:, Q : Q + D], bank.detail[places, :D])  # the detail levels come from the places as before
    shaped = bank.realise(new, new_fine_codes=True)
    assert (shaped[:, Q + D :] == 0).all() and np.array_equal(shaped[:, :Q], new)
    assert np.array_equal(bank.realise(new, known=heard[:5, Q:])[:5, Q:], heard[:5, Q:])  # known detail is kept whole


def test_a_place_whose_detail_outweighs_its_coarse_codes_is_never_copied():
    coarse, detail, embeds = material(files=2, steps=30)
    detail_embeds = [np.full((K, 8), 0.01, np.float32) for _ in range(D)]
    detail_embeds[0][7] = 50.0  # detail code 7 at the first detail level: far larger than any coarse latent
    for d in detail:
        d[d[:, 0] == 7, 0] = 0
    detail[0][10, 0] = 7  # used at one place only
    new = coarse[0][8:13].copy()
    bank = DetailBank(coarse, detail, embeds, detail_embeds=detail_embeds)
    assert not bank.usable[10] and bank.usable.sum() == len(bank.usable) - 1
    assert 10 not in bank.candidates(coarse[0][10])  # its exact coarse codes find other places instead
    assert all(tuple(r) != tuple(detail[0][10]) for r in bank.realise(new)[:, Q:])
    assert DetailBank(coarse, detail, embeds).usable.all()  # without the detail codebooks nothing is left out


# --- a run with detail levels ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("detail")
    data = write_synthetic_folder(root / "data", n=6, seconds=1.5)
    options = TrainOptions(preset="quick", minutes=0.15, device="cpu", seed=1, cache_dir=str(root / "cache"),
                           vqvae_overrides={"max_steps": 40, "eval_every": 20, "detail_levels": D},
                           prior_overrides={"max_epochs": 2})
    summary = run_pipeline(data, root / "run", options)
    assert summary["status"] == "done", summary.get("message")
    return root / "run"


def test_a_run_keeps_every_files_detail_beside_its_codes(run_dir):
    codes, detail = load_codes(run_dir), load_detail(run_dir)
    assert list(codes) == list(detail)
    assert all(d.shape == (len(codes[n]), D) for n, d in detail.items())
    levels = read_manifest(run_dir)["results"]["codes"]["train_levels"]
    assert len(levels) == Q + 1 and levels[-1]["name"] == f"detail (levels {Q + 1}–{Q + D})"
    assert 0 < levels[-1]["utilisation"] <= 1 and levels[-1]["verdict"] in ("healthy", "some codes unused", "collapse")


def test_a_files_round_trip_keeps_its_detail(run_dir):
    from distill.generate import decode_codes
    from distill.runs import load_vqvae, run_configs

    name = next(iter(load_codes(run_dir)))
    heard = reconstruct_file(run_dir, name).wave
    audio = run_configs(read_manifest(run_dir))[0]
    own = np.concatenate([load_codes(run_dir)[name], load_detail(run_dir)[name]], 1)
    assert np.allclose(heard, decode_codes(load_vqvae(run_dir), audio, own), atol=1e-6)
    coarse_only = decode_codes(load_vqvae(run_dir), audio, load_codes(run_dir)[name])
    assert not np.allclose(heard, coarse_only, atol=1e-3)


def test_generated_codes_take_their_detail_from_the_material(run_dir):
    run = load_run(run_dir)
    name, codes = next(iter(load_codes(run_dir).items()))
    full = run.with_detail(codes)
    assert full.shape == (len(codes), Q + D)
    assert np.array_equal(full[:, Q:], load_detail(run_dir)[name])  # a file's own path finds its own detail
    assert np.array_equal(run.with_detail(full), full)  # codes that have their detail keep it


def test_continuing_an_upload_keeps_its_own_detail_before_the_point(run_dir, tmp_path):
    run = load_run(run_dir)
    t = np.arange(int(1.2 * 24_000)) / 24_000
    path = tmp_path / "mine.wav"
    sf.write(path, (0.4 * np.sin(2 * np.pi * 330 * t) * np.exp(-2 * t)).astype(np.float32), 24_000)
    src = from_audio_file(run, path)
    assert src.detail is not None and src.detail.shape == (len(src.codes), D)
    settings = VariationSettings(mode="continue", at_seconds=0.5, seconds=0.5, seed=2)
    out = vary_codes(run, src.codes, settings)
    saved = save_variations(run, src, settings, out)
    codes, detail = load_sample_codes(saved[0], detail=True)
    at = round(0.5 * run.audio_config.frames_per_second / run.vqvae_config.downsample)
    # the codes it was heard with: the input's before the point, the prior's level 0 after it
    assert np.array_equal(codes[:at], src.codes[:at]) and np.array_equal(codes[:, 0], out[0][:, 0])
    assert np.array_equal(np.concatenate([codes, detail], 1), run.with_detail(out[0], src.detail[:at]))
    assert np.array_equal(detail[:at], src.detail[:at])
    again = from_sample(run, saved[0]["id"])  # "vary this": the result comes back with the detail it was heard with
    assert np.array_equal(again.codes, codes) and np.array_equal(again.detail, detail)
    assert from_training_file(run, next(iter(load_codes(run_dir)))).detail is not None


def test_a_samples_damaged_detail_is_not_trusted(run_dir):
    from pathlib import Path

    from distill.generate import save_sample

    run = load_run(run_dir)
    codes = next(iter(load_codes(run_dir).values()))
    for bad in (np.zeros((len(codes), D + 2)), np.full((len(codes), D), 10_000), np.zeros((len(codes) - 1, D))):
        saved = save_sample(run_dir, np.zeros(2400, np.float32), 24_000, codes, {"seed": 0})
        path = Path(saved["path"]).with_suffix("").with_suffix(".codes.safetensors")
        save_tensors(path, {"codes": torch.as_tensor(codes, dtype=torch.int16),
                            "detail": torch.as_tensor(bad, dtype=torch.int16)})
        src = from_sample(run, saved["id"])  # it is heard with detail from the material, as a generated sound is
        heard = run.with_detail(codes)
        assert np.array_equal(src.codes, heard[:, :Q]) and np.array_equal(src.detail, heard[:, Q:])


def test_encode_and_decode_on_the_command_line_keep_every_level(run_dir, tmp_path):
    import subprocess
    import sys

    from conftest import REPO

    name = next(iter(load_codes(run_dir)))
    source = read_manifest(run_dir)["source"]
    import os

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-m", "distill", "--cache-dir", tmp_path / "cache", "encode", run_dir, f"{source}/{name}", "--out",
                          tmp_path / "c.npy"], capture_output=True, text=True, cwd=REPO, env=env, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    codes = np.load(tmp_path / "c.npy")
    assert codes.shape[1] == Q + D and np.array_equal(codes[:, :Q], load_codes(run_dir)[name])
    for width in (Q + D, Q):
        np.save(tmp_path / "w.npy", codes[:, :width])
        out = subprocess.run([sys.executable, "-m", "distill", "decode", run_dir, tmp_path / "w.npy", "--out",
                              tmp_path / "w.wav"], capture_output=True, text=True, cwd=REPO, env=env, timeout=120)
        assert out.returncode == 0, out.stderr[-2000:]
        assert sf.info(str(tmp_path / "w.wav")).frames > 0
    np.save(tmp_path / "bad.npy", codes[:, : Q + 1])
    out = subprocess.run([sys.executable, "-m", "distill", "decode", run_dir, tmp_path / "bad.npy", "--out",
                          tmp_path / "bad.wav"], capture_output=True, text=True, cwd=REPO, env=env, timeout=120)
    assert out.returncode != 0 and f"[T, {Q} or {Q + D}]" in out.stderr


def test_a_bundle_carries_the_detail_and_a_tampered_one_is_refused(run_dir, tmp_path):
    bundle = export_run(run_dir, tmp_path / "run.zip")
    imported = import_run(bundle, tmp_path / "ws")
    assert (imported / DETAIL_FILE).is_file()
    assert {n: d.tolist() for n, d in load_detail(imported).items()} == \
        {n: d.tolist() for n, d in load_detail(run_dir).items()}
    codes = load_codes(imported)
    lengths = [len(c) for c in codes.values()]
    bad_files = {
        "wrong type": {f"{i:05d}": torch.zeros(n, D, dtype=torch.float32) for i, n in enumerate(lengths)},
        "wrong length": {f"{i:05d}": torch.zeros(n + 1, D, dtype=torch.int16) for i, n in enumerate(lengths)},
        "outside the codebook": {f"{i:05d}": torch.full((n, D), K + 500, dtype=torch.int16) for i, n in enumerate(lengths)},
        "one file missing": {f"{i:05d}": torch.zeros(n, D, dtype=torch.int16) for i, n in enumerate(lengths[1:])},
    }
    for what, tensors in bad_files.items():
        save_tensors(imported / DETAIL_FILE, tensors)
        with pytest.raises(UnsafeFileError):
            load_detail(imported)
        export_run(imported, tmp_path / "bad.zip")
        with pytest.raises(UnsafeFileError):
            import_run(tmp_path / "bad.zip", tmp_path / "ws2")
    assert not list((tmp_path / "ws2" / "runs").glob("*")), "nothing of a refused bundle is kept"


def test_runs_without_detail_levels_load_and_decode_as_before(tmp_path):
    from test_saved_runs import saved_copy

    run = load_run(saved_copy(tmp_path, "finished"))
    assert run.vqvae_config.detail_levels == 0 and run.detail_bank().detail_levels == 0
    codes = next(iter(load_codes(run.run_dir).values()))
    assert np.array_equal(run.with_detail(codes), codes)  # a file's own codes are heard as they are
    assert load_detail(run.run_dir) == {}
    assert json.loads(json.dumps(read_manifest(run.run_dir)["vqvae_config"])).get("detail_levels", 0) == 0
    assert math.isfinite(float(np.abs(reconstruct_file(run.run_dir, next(iter(load_codes(run.run_dir)))).wave).max()))


def test_the_page_shows_the_detail_levels_as_one_entry_beside_the_sequence_models_levels():
    from distill.app import figures
    from distill.app.views import notes_html
    from distill.app.worker import levels_from_event

    event = {"stage": "vqvae", "kind": "eval", "utilisation": [0.9, 0.95, 1.0], "perplexity": [50, 60, 70],
             "dead_codes": [3, 1, 0], "detail_utilisation": [1.0] * 40 + [0.85] * 5}
    levels = levels_from_event(event)
    assert len(levels) == 4 and levels[-1]["name"] == "detail (levels 4–48)"
    assert levels[-1]["utilisation"] == 0.85 and levels[-1]["verdict"] == "healthy"
    html = notes_html([], levels)
    assert "Detail (levels 4–48): healthy." in html and "Level 1: healthy." in html
    fig = figures.health_figure(levels)
    labels = [t.get_text() for t in fig.axes[0].get_yticklabels()]
    assert labels == ["level 1", "level 2", "level 3", "detail (levels 4–48)"]
    assert len(levels_from_event({**event, "detail_utilisation": "hostile"})) == 3  # a malformed field is left out
