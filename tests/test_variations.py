"""Variations, one-shot packs and batched sampling, on the small saved run (tests/fixtures/saved_runs)
and tiny untrained priors."""
from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from distill.generate import load_run, save_sample
from distill.models.batch_sampling import sample_rows
from distill.models.prior import CodePrior
from distill.models.retrieval import CodeRetrieval, RetrievalSettings
from distill.packs import MAX_PACK, PackError, PackSettings, length_bounds, make_one_shots, save_pack, trim_sound
from distill.runs import load_codes
from distill.sound_input import InputError, from_audio_file, from_sample, from_training_file, load_input
from distill.variations import MAX_COUNT, VariationError, VariationSettings, save_variations, vary_codes
from test_saved_runs import saved_copy

SR = 24_000


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return load_run(saved_copy(tmp_path_factory.mktemp("variations"), "finished"))


def tiny_prior(k=16, q=3, seq_len=36, ends=True) -> CodePrior:
    torch.manual_seed(0)
    return CodePrior(k, seq_len, q, hidden_size=32, num_layers=2, num_heads=4, dropout=0.0, learn_ends=ends).eval()


def material(k=16, q=3, files=6, steps=14) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [np.stack([np.repeat(rng.integers(0, 4, steps), 2)[:steps]] + [rng.integers(0, k, steps) for _ in range(q - 1)],
                     1) for _ in range(files)]


# --- batched sampling ------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["numpy", "torch"])
def test_batched_rows_give_the_codes_of_sequential_runs_with_the_same_seeds(backend):
    """One batched pass of 4 rows == 4 one-row runs of CodePrior.generate, the default sampler, seed for
    seed: with retrieval (each row its own state) and without, with clip ends (rows restart at different
    times) and window slides (120 tokens through a 36-token window)."""
    model = tiny_prior()
    index = CodeRetrieval(material(), 16, 3, RetrievalSettings(weight=0.9, max_context_steps=4))
    seeds = [3, 4, 5, 6]
    for retrieval in (index, None):
        for clip_ends in (True, False):
            one_by_one = [model.generate(120, generator=torch.Generator().manual_seed(s), retrieval=retrieval,
                                         clip_ends=clip_ends, backend=backend)[0] for s in seeds]
            batched = sample_rows(model, 120, [torch.Generator().manual_seed(s) for s in seeds], retrieval=retrieval,
                                  clip_ends=clip_ends, backend=backend)
            for a, b in zip(one_by_one, batched.tokens):
                assert torch.equal(a, b), (retrieval is not None, clip_ends)
            if clip_ends:
                assert len({tuple(s) for s in batched.clip_starts}) > 1  # the rows' clips really ended apart
    # a prompt and temperature / top-k / top-p shape each row as they shape one
    prompt = torch.as_tensor(material()[0][:5].reshape(-1))
    one = model.generate(30, temperature=0.8, top_k=6, top_p=0.9, prompt=prompt[None],
                         generator=torch.Generator().manual_seed(1), retrieval=index, backend=backend)[0]
    rows = sample_rows(model, 30, [torch.Generator().manual_seed(s) for s in (0, 1)], 0.8, 6, 0.9, prompt=prompt,
                       retrieval=index, backend=backend)
    assert torch.equal(rows.tokens[1], one)


def test_rows_of_a_larger_prior_give_the_codes_of_sequential_runs(monkeypatch):
    """Where three or more rows' weight products go through torch (priors from 256 wide, the tiny one
    here by lowering the threshold) and their GELU's erf too, the codes are still those of one-row
    runs, seed for seed, with clip ends and retrieval."""
    from distill.models import cpu_decode

    monkeypatch.setattr(cpu_decode, "TORCH_PRODUCTS_FROM", 32)
    model = tiny_prior()
    stepper = cpu_decode.CpuStepper(model, batch=4)
    assert stepper._mm is cpu_decode._torch_mm  # (the path under test)
    index = CodeRetrieval(material(), 16, 3, RetrievalSettings(weight=0.9, max_context_steps=4))
    seeds = [3, 4, 5, 6]
    one_by_one = [model.generate(120, generator=torch.Generator().manual_seed(s), retrieval=index)[0] for s in seeds]
    batched = sample_rows(model, 120, [torch.Generator().manual_seed(s) for s in seeds], retrieval=index)
    assert all(torch.equal(a, b) for a, b in zip(one_by_one, batched.tokens))


def test_rows_of_a_wide_prior_sample_on_two_threads_and_give_the_threads_back(monkeypatch):
    """From WIDE_SAMPLING_FROM wide (the tiny prior here by lowering it) several rows' torch products run
    and attention on two threads where the machine has them, one row stays on one (NumPy's BLAS does its
    products), the caller's thread count comes back afterwards, and the codes are still those of one-row
    runs, with clip ends (rows at different window positions) and retrieval."""
    import os

    from distill.models import cpu_decode, prior

    monkeypatch.setattr(cpu_decode, "TORCH_PRODUCTS_FROM", 32)
    monkeypatch.setattr(prior, "WIDE_SAMPLING_FROM", 32)
    seen = []  # (rows, torch's threads) of every step
    step_rows = cpu_decode.CpuStepper.step_rows

    def recorded(self, tokens, pos):
        seen.append((len(tokens), torch.get_num_threads()))
        return step_rows(self, tokens, pos)

    monkeypatch.setattr(cpu_decode.CpuStepper, "step_rows", recorded)
    model = tiny_prior()
    if os.cpu_count() > 1:  # their attention goes through torch too (the path under test)
        assert cpu_decode.CpuStepper(model, batch=4)._torch_kv is not None
    assert cpu_decode.CpuStepper(model, batch=1)._torch_kv is None
    index = CodeRetrieval(material(), 16, 3, RetrievalSettings(weight=0.9, max_context_steps=4))
    seeds = [3, 4, 5, 6]
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(3)
        one_by_one = [model.generate(60, generator=torch.Generator().manual_seed(s), retrieval=index)[0] for s in seeds]
        assert torch.get_num_threads() == 3
        batched = sample_rows(model, 60, [torch.Generator().manual_seed(s) for s in seeds], retrieval=index)
        assert torch.get_num_threads() == 3
    finally:
        torch.set_num_threads(before)
    assert all(torch.equal(a, b) for a, b in zip(one_by_one, batched.tokens))
    assert {threads for rows, threads in seen if rows == 1} == {1}
    assert {threads for rows, threads in seen if rows == 4} == {min(2, os.cpu_count())}


def test_draws_taken_ahead_give_the_codes_and_generator_state_of_a_draw_per_code():
    """Without clip ends a row's draws are drawn ahead in one call (`RowDraws`): the codes, and where
    the generator is left, are those of one draw per sampled code (torch's global generator, shared by
    every caller, still draws one at a time). Forced codes draw nothing, with or without retrieval."""
    model = tiny_prior()
    index = CodeRetrieval(material(), 16, 3, RetrievalSettings(weight=0.9, max_context_steps=4))
    forced = np.full(60, -1)
    forced[::3] = np.arange(20) % 16
    for retrieval in (index, None):
        for force in (None, forced):
            torch.manual_seed(7)
            per_code = sample_rows(model, 60, [None], forced=force, clip_ends=False, retrieval=retrieval).tokens
            after_per_code = torch.rand(4)
            g = torch.Generator().manual_seed(7)
            ahead = sample_rows(model, 60, [g], forced=force, clip_ends=False, retrieval=retrieval).tokens
            assert torch.equal(per_code, ahead), (retrieval is not None, force is not None)
            assert torch.equal(after_per_code, torch.rand(4, generator=g))
    # two rows on one generator draw in turn, as they always did
    g = torch.Generator().manual_seed(2)
    shared = sample_rows(model, 30, [g, g], clip_ends=False, retrieval=index).tokens
    torch.manual_seed(2)
    assert torch.equal(shared, sample_rows(model, 30, [None, None], clip_ends=False, retrieval=index).tokens)


def naive_lookup(files, k, history, current, max_m, min_count):
    """What followed the longest context seen >= min_count times, by scanning every file step."""
    level = len(current)
    for m in range(min(max_m, len(history)), -1, -1):
        followed = []
        for c in files:
            path = [k, *c[:, 0].tolist()]  # the file-start symbol, then step t-1's level-0 code at t
            for t in range(len(c) + (1 if level == 0 else 0)):
                if t + 1 - m < 0 or (m and path[t + 1 - m : t + 1] != list(history[-m:])):
                    continue
                if t < len(c) and c[t, :level].tolist() == list(current):
                    followed.append(int(c[t, level]))
                elif t == len(c):
                    followed.append(k + 1)  # the file ends here
        if len(followed) >= min_count:
            return np.bincount(followed, minlength=k + 2)
    return None


def test_lookup_many_gives_each_context_what_a_scan_of_the_material_gives():
    files = material(k=16, q=3, files=6, steps=30)
    index = CodeRetrieval(files, 16, 3, RetrievalSettings(weight=0.9, max_context_steps=6, min_count=2))
    rng = np.random.default_rng(2)
    contexts = [([index.bos, *f[: t, 0].tolist()][-9:], f[t, :level].tolist())
                for f in files for t in range(0, 30, 4) for level in range(3)]
    contexts += [(rng.integers(0, 16, n).tolist(), rng.integers(0, 16, lv).tolist())
                 for n, lv in zip(rng.integers(0, 9, 40), rng.integers(0, 3, 40))] + [([], [])]
    contexts += contexts[::7]  # rows that share a context in one call (looked up once)
    found = index.lookup_many(contexts)
    for (history, current), many in zip(contexts, found):
        one, scanned = index.lookup(history, current), naive_lookup(files, 16, history, current, 6, 2)
        assert (one is None and many is None and scanned is None) or (
            np.array_equal(one, many) and np.array_equal(one, scanned)), (history, current)
    assert sum(f is None for f in found) not in (0, len(found))  # both kinds were asked


def test_forced_codes_are_taken_and_the_rest_sampled_as_one_row_would():
    model = tiny_prior()
    index = CodeRetrieval(material(), 16, 3, RetrievalSettings(weight=0.9, max_context_steps=4))
    src = material(steps=20)[1]
    forced = src.copy()
    forced[:, 2:] = -1  # keep levels 0 and 1
    gens = lambda: [torch.Generator().manual_seed(s) for s in (7, 8, 9)]  # noqa: E731
    out = sample_rows(model, src.size, gens(), forced=forced.reshape(-1), clip_ends=False, retrieval=index)
    for row in out.tokens.numpy():
        codes = row.reshape(-1, 3)
        assert np.array_equal(codes[:, :2], src[:, :2])
    assert len({tuple(r[2::3]) for r in out.tokens.numpy().tolist()}) == 3  # the free level differs per seed
    alone = [sample_rows(model, src.size, [g], forced=forced.reshape(-1), clip_ends=False, retrieval=index).tokens[0]
             for g in gens()]
    assert all(torch.equal(a, b) for a, b in zip(alone, out.tokens))
    with pytest.raises(ValueError, match="clip_ends=False"):
        sample_rows(model, src.size, gens(), forced=forced.reshape(-1), clip_ends=True)


# --- variations ------------------------------------------------------------------------------------


def test_keep_the_shape_forces_exactly_the_inputs_coarse_level(run):
    src = from_training_file(run, "a/clip_01.wav")
    out = vary_codes(run, src.codes, VariationSettings(mode="shape", keep_levels=1, count=3, seed=5))
    assert len(out) == 3
    for codes in out:
        assert codes.shape == src.codes.shape and np.array_equal(codes[:, 0], src.codes[:, 0])
    assert not all(np.array_equal(codes[:, 1], src.codes[:, 1]) for codes in out)  # new detail
    again = vary_codes(run, src.codes, VariationSettings(mode="shape", keep_levels=1, count=1, seed=6))
    assert np.array_equal(again[0], out[1])  # variation i is seed + i, batched or not


def test_continue_from_here_keeps_everything_before_the_point(run):
    src = from_training_file(run, "b/clip_00.wav")
    sps = run.audio_config.frames_per_second / run.vqvae_config.downsample
    settings = VariationSettings(mode="continue", at_seconds=0.4, seconds=1.0, count=2, seed=1)
    out = vary_codes(run, src.codes, settings)
    at = round(0.4 * sps)
    for codes in out:
        assert np.array_equal(codes[:at], src.codes[:at])
        assert len(codes) == at + int(np.ceil(1.0 * sps))
    assert not np.array_equal(out[0][at:], out[1][at:])
    saved = save_variations(run, src, settings, out)
    assert len(saved) == 2
    meta = json.loads(Path(saved[0]["sidecar"]).read_text())
    assert meta["settings"]["kind"] == "variation" and meta["settings"]["input"]["ref"] == "b/clip_00.wav"
    wave, sr = sf.read(saved[0]["path"])
    assert sr == SR and np.abs(wave).max() > 0.1
    # a saved result is an input in its turn ("vary this")
    again = from_sample(run, saved[0]["id"])  # with the codes it is heard with: its own before the point,
    heard = run.with_detail(out[0], src.detail[:at])  # the new part's finer codes going on along the material
    assert np.array_equal(again.codes, heard) and np.array_equal(again.codes, saved[0]["codes"])
    assert np.array_equal(again.codes[:at], src.codes[:at]) and np.array_equal(again.codes[:, 0], out[0][:, 0])
    assert vary_codes(run, again.codes, VariationSettings(mode="shape", keep_levels=1))[0].shape == out[0].shape


def test_cli_vary_keep_writes_and_keeps_the_same_sound_decoding_each_once(run, tmp_path, monkeypatch):
    import distill.generate as generate
    from distill.cli import main

    decoded = []
    real = generate.decode_codes
    monkeypatch.setattr(generate, "decode_codes", lambda *a, **kw: decoded.append(1) or real(*a, **kw))
    before = {p.name for p in (run.run_dir / "samples").glob("*.wav")} if (run.run_dir / "samples").is_dir() else set()
    out = tmp_path / "out"
    assert main(["vary", str(run.run_dir), "--file", "a/clip_01.wav", "--count", "2", "--seed", "3",
                 "--out-dir", str(out), "--keep"]) == 0
    written = sorted(out.glob("*.wav"))
    kept = sorted(p for p in (run.run_dir / "samples").glob("*.wav") if p.name not in before)
    assert len(written) == len(kept) == 2 and len(decoded) == 2  # one decode per variation, kept or not
    kept_waves = [sf.read(k)[0] for k in kept]
    for w in written:  # each file written is one of the samples kept
        wave = sf.read(w)[0]
        assert any(len(k) == len(wave) and np.allclose(wave, k, atol=1e-4) for k in kept_waves)


def test_variation_settings_out_of_range_are_refused_in_words(run):
    codes = from_training_file(run, "a/clip_01.wav").codes
    bad = [(dict(keep_levels=0), "Keep between 1 and 1"), (dict(keep_levels=2), "is a copy"),
           (dict(count=0), f"between 1 and {MAX_COUNT}"), (dict(count=MAX_COUNT + 1), "variations at once"),
           (dict(mode="continue", at_seconds=5.0), "inside the sound"),
           (dict(mode="continue", at_seconds=0.2, seconds=0), "Continue for"),
           (dict(follow=1.5), "Follow your material"), (dict(temperature=float("nan")), "number"),
           (dict(mode="sideways"), "keep the shape")]
    for change, words in bad:
        with pytest.raises(VariationError, match=words):
            vary_codes(run, codes, VariationSettings(**change))


# --- inputs ----------------------------------------------------------------------------------------


def write(path: Path, wave: np.ndarray, sr: int) -> Path:
    sf.write(path, wave.astype(np.float32), sr)
    return path


def test_any_audio_file_is_encoded_by_the_runs_codec(run, tmp_path):
    own = Path(run.manifest["source"]) / "a" / "clip_01.wav"
    uploaded = from_audio_file(run, own)
    assert np.array_equal(uploaded.codes, load_codes(run.run_dir)["a/clip_01.wav"])  # the scan's decoding, the run's codec
    t = np.arange(int(0.6 * 8000)) / 8000
    low = from_audio_file(run, write(tmp_path / "low.wav", 0.5 * np.sin(2 * np.pi * 220 * t), 8000))
    t = np.arange(int(0.6 * 192_000)) / 192_000
    high = from_audio_file(run, write(tmp_path / "high.flac", 0.5 * np.sin(2 * np.pi * 220 * t), 192_000))
    assert len(low.codes) == len(high.codes) == 15 and not low.note
    assert load_input(run, "upload", str(tmp_path / "low.wav"), "my sound.wav").name == "my sound.wav"


def test_bad_inputs_are_refused_with_the_scans_reasons(run, tmp_path):
    (tmp_path / "notes.txt").write_text("not audio")
    (tmp_path / "broken.wav").write_bytes(b"RIFF0000WAVEjunk")
    write(tmp_path / "silence.wav", np.zeros(SR), SR)
    write(tmp_path / "blip.wav", 0.5 * np.ones(int(0.01 * SR)), SR)
    write(tmp_path / "rate.wav", np.ones(100) * 0.1, 4000)
    cases = {"notes.txt": "not an audio file", "broken.wav": "cannot be decoded as audio",
             "silence.wav": "digital silence", "blip.wav": "too short", "rate.wav": "outside the supported 8–192 kHz"}
    for name, words in cases.items():
        with pytest.raises(InputError, match=words) as err:
            from_audio_file(run, tmp_path / name)
        assert str(err.value).startswith(f"'{name}' cannot be used: ")
    with pytest.raises(InputError, match="not one of this run's training files"):
        from_training_file(run, "../../etc/passwd")
    with pytest.raises(InputError, match="not one of this run's saved samples"):
        from_sample(run, "nope")
    with pytest.raises(InputError, match="must be one of"):
        load_input(run, "url", "http://example.com/a.wav")


def test_a_long_file_is_cut_to_its_first_seconds_and_says_so(run, tmp_path):
    rng = np.random.default_rng(0)
    long = write(tmp_path / "long.wav", 0.3 * rng.standard_normal(8000 * 45), 8000)  # 45 s at 8 kHz
    src = from_audio_file(run, long)
    sps = run.audio_config.frames_per_second / run.vqvae_config.downsample
    assert abs(len(src.codes) - 30 * sps) <= 1
    assert "45 s long: only its first 30 s are used" in src.note


def test_a_damaged_sample_is_refused(run):
    saved = save_sample(run.run_dir, np.zeros(100, np.float32), SR, np.full((3, 2), 99), {"seed": 0})
    with pytest.raises(InputError, match="missing or damaged"):
        from_sample(run, saved["id"])


# --- packs -----------------------------------------------------------------------------------------


def test_a_pack_has_n_one_shots_inside_the_bounds_none_silent(run):
    lo, hi = length_bounds(run)
    assert lo == pytest.approx(0.75) and hi == pytest.approx(1.5)
    settings = PackSettings(count=3, seed=0)
    result = make_one_shots(run, settings)
    assert len(result.shots) == 3, result.summary(3)
    saved = save_pack(run.run_dir, "finished", result, settings)
    assert len(saved["samples"]) == 3
    for s in saved["samples"]:
        wave, sr = sf.read(s["path"])
        meta = json.loads(Path(s["sidecar"]).read_text())
        assert set(meta) >= {"id", "file", "seconds", "sample_rate", "settings", "prior_hash", "created"}
        assert meta["settings"]["kind"] == "one-shot" and meta["settings"]["pack"] == saved["pack"]
        assert lo <= meta["settings"]["clip_seconds"] <= hi and 0 < len(wave) / sr <= hi
        assert np.abs(wave).max() > 0.5 and np.sqrt(np.mean(wave**2)) > 0.01  # not silent
        assert abs(wave[0]) < 0.05 and abs(wave[-1]) < 0.05  # faded in and out
    zpath = Path(saved["zip"])
    assert zpath.parent.name == "packs" and zpath.name.startswith("finished-one-shots-")
    with zipfile.ZipFile(zpath) as zf:
        names = zf.namelist()
    assert names == [f"finished-one-shots/finished-{i:02d}.wav" for i in (1, 2, 3)]
    stats = [tuple(s["codes"][:, 0]) for s in saved["samples"]]
    assert len(set(stats)) == 3  # no two the same


def test_pack_sizes_out_of_range_are_refused(run):
    for n in (0, MAX_PACK + 1):
        with pytest.raises(PackError, match=f"between 1 and {MAX_PACK}"):
            make_one_shots(run, PackSettings(count=n))


def test_trimming_takes_silence_off_both_ends_and_fades():
    t = np.arange(SR) / SR
    tone = (0.8 * np.sin(2 * np.pi * 440 * t[: SR // 2])).astype(np.float32)
    wave = np.concatenate([np.zeros(SR // 4, np.float32), tone, np.zeros(SR // 4, np.float32)])
    out = trim_sound(wave, SR)
    assert abs(len(out) - len(tone)) < 0.02 * SR
    assert out[0] == 0.0 and abs(out[-1]) < 1e-6 and np.abs(out).max() > 0.7
    assert trim_sound(np.zeros(100, np.float32), SR).size == 0
