"""train_vqvae on tiny models and synthetic tone mels: learning, events, stop, budget, NaN, resume."""
from __future__ import annotations

import json
import math
import threading

import pytest
import torch

import distill.training.vqvae_train as vt
from distill.audio.griffinlim import log_mel
from distill.config import AudioConfig, VQVAEConfig
from distill.data import MelDataset
from distill.training.vqvae_train import estimate_vqvae_memory_bytes, train_vqvae, validation_chunks

AUDIO = AudioConfig(sample_rate=8000, n_fft=256, hop_length=64, n_mels=24)


def tone_dataset(n_files: int = 6, seconds: float = 1.0) -> MelDataset:
    """Decaying tones plus a little noise, one pitch per file: easy to learn, not trivial."""
    g = torch.Generator().manual_seed(0)
    sr = AUDIO.sample_rate
    mels = []
    for i in range(n_files):
        t = torch.arange(int(sr * seconds * (0.5 + 0.25 * i))) / sr
        f = 200.0 * 2 ** ((i % 3) / 2)  # three pitches, each in train and in validation
        wave = 0.6 * torch.sin(2 * math.pi * f * t) * torch.exp(-3 * t) + 0.005 * torch.randn(t.shape[0], generator=g)
        mels.append(log_mel(wave, AUDIO))
    val = [1, 5] if n_files >= 6 else [n_files - 1]
    train = [i for i in range(n_files) if i not in val]
    return MelDataset([f"f{i}.wav" for i in range(n_files)], mels, AUDIO, train, val)


def tiny_config(**kw) -> VQVAEConfig:
    base = dict(codebook_size=16, num_quantizers=2, codebook_dim=8, hidden_channels=32, num_res_blocks=1,
                downsample=4, batch_size=8, window_frames=32, max_steps=100, time_budget_s=None, eval_every=20,
                learning_rate=3e-3, device="cpu", seed=0)
    return VQVAEConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def trained():
    events: list[dict] = []
    with pytest.MonkeyPatch.context() as mp:  # plain fitting here; augmentation has its own test
        mp.setattr(vt, "augment_probability", lambda seconds: 0.0)
        result = train_vqvae(tone_dataset(), tiny_config(), callbacks=[events.append])
    return result, events


def test_training_lowers_the_loss_and_reports(trained):
    result, events = trained
    assert events == result.history
    json.dumps(events, allow_nan=False)  # every event is plain JSON
    assert all(e["stage"] == "vqvae" for e in events)
    steps = [e for e in events if e["kind"] == "step"]
    evals = [e for e in events if e["kind"] == "eval"]
    assert steps and evals and result.steps == 100
    # on the training material, the trained codec beats the same codec before its first step
    # (and beats its own starting point: the linear path's principal components + k-means codebooks)
    untrained = train_vqvae(tone_dataset(), tiny_config(max_steps=0, linear_path=False)).model
    start = train_vqvae(tone_dataset(), tiny_config(max_steps=0)).model
    chunks = validation_chunks(tone_dataset().train_mels())
    before = vt.evaluate(untrained, chunks, torch.device("cpu"))["val_mel_l1"]
    at_start = vt.evaluate(start, chunks, torch.device("cpu"))["val_mel_l1"]
    after = vt.evaluate(result.model, chunks, torch.device("cpu"))["val_mel_l1"]
    assert after < 0.7 * before
    assert after < 0.95 * at_start < 0.95 * before
    for key in ("loss", "recon_loss", "commit_loss", "lr", "step", "seconds"):
        assert key in steps[-1]
    for key in ("val_loss", "val_mel_l1", "utilisation", "perplexity", "dead_codes", "codes_reset", "val_perplexity"):
        assert key in evals[-1]
    assert len(evals[-1]["utilisation"]) == 2 and len(evals[-1]["dead_codes"]) == 2
    # codes no training vector used were moved after training: the result reports the moved model's loss
    refreshed = [e for e in events if e.get("codes_moved")]
    assert result.best_val_loss == (refreshed[-1]["val_loss"] if refreshed else min(e["val_loss"] for e in evals))
    assert not result.model.training and result.device == "cpu"
    assert result.stop_reason and not result.stopped_early


def test_best_validation_weights_are_returned(trained):
    result, _ = trained
    ev = vt.evaluate(result.model, validation_chunks(tone_dataset().val_mels()), torch.device("cpu"))
    assert ev["val_loss"] == pytest.approx(result.best_val_loss, rel=1e-5)


def test_unused_detail_codes_are_moved_where_the_files_are_after_training(trained):
    _, plain_events = trained
    assert not any(e.get("codes_moved") for e in plain_events)  # no detail levels: nothing is moved
    events: list[dict] = []
    data = tone_dataset()
    result = train_vqvae(data, tiny_config(max_steps=30, eval_every=10, detail_levels=3), callbacks=[events.append])
    moved = [e for e in events if e.get("codes_moved")]
    assert len(moved) == 1 and "not used by any of your training files" in moved[0]["message"]
    assert moved[0]["codes_moved"][:2] == [0, 0] and sum(moved[0]["codes_moved"][2:]) > 0  # detail levels only
    hist = vt.code_histogram(result.model, list(data.mels), torch.device("cpu"))  # every file extraction will see
    assert bool((hist[2:] > 0).all())  # every detail code is used now
    assert moved[0]["val_loss"] == pytest.approx(result.best_val_loss)  # the result reports the moved model
    ev = vt.evaluate(result.model, validation_chunks(data.val_mels()), torch.device("cpu"))
    assert ev["val_loss"] == pytest.approx(result.best_val_loss, rel=1e-5)


def test_runs_are_reproducible():
    a = train_vqvae(tone_dataset(4), tiny_config(max_steps=6, eval_every=3))
    b = train_vqvae(tone_dataset(4), tiny_config(max_steps=6, eval_every=3))
    sa, sb = a.model.state_dict(), b.model.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    c = train_vqvae(tone_dataset(4), tiny_config(max_steps=6, eval_every=3, seed=1))
    assert not torch.equal(sa["encoder.net.0.weight"], c.model.state_dict()["encoder.net.0.weight"])


def test_stop_flag_is_honoured():
    stop = threading.Event()

    def stop_at_5(event):
        if event["kind"] == "step" and event["step"] >= 5:
            stop.set()

    result = train_vqvae(tone_dataset(4), tiny_config(max_steps=1000, eval_every=1000), callbacks=[stop_at_5], stop=stop)
    assert result.stopped_early and "stop" in result.stop_reason
    assert result.steps <= 11
    assert math.isfinite(result.best_val_loss)  # a final evaluation still ran


def test_time_budget_is_honoured():
    result = train_vqvae(tone_dataset(4), tiny_config(max_steps=10**6, time_budget_s=1.5, eval_every=10**6))
    assert result.seconds < 15 and "time budget" in result.stop_reason and not result.stopped_early


def test_non_finite_loss_is_skipped_then_stops(monkeypatch):
    real = vt.reconstruction_loss
    calls = {"n": 0}

    def poisoned(pred, target):
        loss, l1 = real(pred, target)
        calls["n"] += 1
        if torch.is_grad_enabled() and calls["n"] > 4:  # training steps after the 4th: NaN
            return loss * float("nan"), l1
        return loss, l1

    monkeypatch.setattr(vt, "reconstruction_loss", poisoned)
    events: list[dict] = []
    result = train_vqvae(tone_dataset(4), tiny_config(max_steps=100, eval_every=2), callbacks=[events.append])
    warnings = [e for e in events if e["kind"] == "warning" and "finite" in e["message"]]
    assert len(warnings) == vt.MAX_BAD_STEPS
    assert result.stopped_early and "unstable" in result.stop_reason
    assert all(torch.isfinite(v.float()).all() for v in result.model.state_dict().values())
    assert math.isfinite(result.best_val_loss)


def test_low_utilisation_warning():
    mel = torch.full((AUDIO.n_mels, 200), -5.0)  # one frame repeated: nothing to tell apart
    data = MelDataset(["a", "b"], [mel, mel.clone()], AUDIO, [0], [1])
    result = train_vqvae(data, tiny_config(max_steps=4, eval_every=4, codebook_size=64))
    warned = [e for e in result.history if e["kind"] == "warning" and "codes" in e["message"]]
    assert warned and warned[0]["level"] == 0


def test_resume_from_state():
    first = train_vqvae(tone_dataset(4), tiny_config(max_steps=10, eval_every=5))
    state = {k: v.clone() for k, v in first.model.state_dict().items()}
    again = train_vqvae(tone_dataset(4), tiny_config(max_steps=0), init_state=state)
    assert all(torch.equal(state[k], v) for k, v in again.model.state_dict().items())
    assert again.best_val_loss == pytest.approx(first.best_val_loss, rel=1e-5)


def test_device_whose_quantiser_disagrees_falls_back_to_cpu(monkeypatch):
    monkeypatch.setattr(vt, "resolve_device", lambda name: torch.device("mps"))
    seen = []
    monkeypatch.setattr(vt, "quantizer_matches_cpu", lambda model, device: seen.append(str(device)) or False)
    result = train_vqvae(tone_dataset(4), tiny_config(max_steps=3, eval_every=3, device="mps"))
    assert seen == ["mps"] and result.device == "cpu"
    assert any(e["kind"] == "warning" and "CPU" in e["message"] for e in result.history)


def test_augmentation():
    assert vt.augment_probability(10) == vt.AUG_MAX_PROB and vt.augment_probability(3600) == 0.0
    assert 0 < vt.augment_probability(200) < vt.AUG_MAX_PROB
    assert vt.augment_probability(100) > vt.augment_probability(200)  # less audio, more augmentation
    floor = 1e-5
    x = torch.full((6, 24, 10), math.log(floor))  # silence ...
    x[:, 12, :] = 0.0  # ... with one loud band
    g = torch.Generator().manual_seed(0)
    assert torch.equal(vt.augment(x, floor, g, prob=0.0), x)
    y = vt.augment(x, floor, g, prob=1.0)
    assert y.shape == x.shape and torch.isfinite(y).all()
    assert torch.allclose(y.min(), torch.tensor(math.log(floor)))  # silence stays silence
    assert set(y.amax(dim=2).argmax(dim=1).tolist()) <= set(range(10, 15))  # band moved by at most 2
    assert not torch.equal(y, x)


def test_memory_estimate_grows_with_batch():
    small = estimate_vqvae_memory_bytes(VQVAEConfig(batch_size=4), 128)
    big = estimate_vqvae_memory_bytes(VQVAEConfig(batch_size=64), 128)
    assert 10 * 1024**2 < small < big < 4 * 1024**3


def test_stop_reason_words_come_from_the_enum():
    from distill.training.loop import StopReason, stop_words

    result = train_vqvae(tone_dataset(4), tiny_config(max_steps=3, eval_every=3))
    assert result.stop is StopReason.STEP_LIMIT and result.stop_reason == stop_words(StopReason.STEP_LIMIT, max_steps=3)
    assert result.stop_reason == "reached the step limit (3)"
    assert stop_words(StopReason.STOPPED) == "stopped on request"  # older manifests hold these words


def test_a_version_1_checkpoint_still_resumes(tmp_path):
    """Checkpoints saved before the codec's bad-step count was renamed (format 1, "bad_streak")."""
    from distill.checkpoint import CheckpointStore, _json_digest

    cfg = tiny_config(max_steps=12, eval_every=6)
    reference = train_vqvae(tone_dataset(4), cfg)
    stop = threading.Event()
    store = CheckpointStore(tmp_path, "vqvae")
    train_vqvae(tone_dataset(4), cfg, stop=stop, checkpoint=store,
                callbacks=[lambda e: stop.set() if e["kind"] == "eval" and e["step"] == 6 else None])
    meta = json.loads(store.current[1].read_text())
    meta["version"] = 1
    meta["bad_streak"] = meta.pop("bad_steps")
    meta["json_sha256"] = _json_digest(meta)
    store.current[1].write_text(json.dumps(meta))
    resumed = train_vqvae(tone_dataset(4), cfg, checkpoint=store, resume=True)
    assert resumed.resumed_from == 6 and resumed.steps == 12
    for (ka, va), (kb, vb) in zip(resumed.model.state_dict().items(), reference.model.state_dict().items()):
        assert ka == kb and torch.equal(va, vb)
