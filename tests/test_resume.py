"""Resume: a run interrupted by a stop, a crash or kill -9 continues from its last checkpoint and ends
where an uninterrupted run ends (bit-identical on CPU without a time budget); damaged or mismatched
checkpoints are skipped with a warning, never loaded."""
from __future__ import annotations

import hashlib
import json
import math
import os
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import torch

import distill.training.vqvae_train as vt
from conftest import REPO, write_synthetic_folder
from distill.audio.griffinlim import log_mel
from distill.checkpoint import CheckpointStore, _json_digest
from distill.codes import level_histograms, utilisation
from distill.config import AudioConfig, PriorConfig, VQVAEConfig
from distill.data import MelDataset
from distill.pipeline import TrainOptions, can_resume, resume_run, run_pipeline
from distill.runs import continuous_history, load_codes, load_prior, read_manifest, read_metrics
from distill.scan import DatasetError
from distill.training.prior_train import train_prior
from distill.training.vqvae_train import train_vqvae

AUDIO = AudioConfig(sample_rate=8000, n_fft=256, hop_length=64, n_mels=24)
K, Q = 16, 3


class StopAfter:
    """A stop flag that turns on at its n-th check: the trainers check once per step, so this stops
    at an exact step, independent of timing."""

    def __init__(self, n: int):
        self.n = n

    def is_set(self) -> bool:
        self.n -= 1
        return self.n < 0


def tone_dataset(n_files: int = 4) -> MelDataset:
    g = torch.Generator().manual_seed(0)
    mels = []
    for i in range(n_files):
        t = torch.arange(int(AUDIO.sample_rate * (0.5 + 0.25 * i))) / AUDIO.sample_rate
        f = 200.0 * 2 ** ((i % 3) / 2)
        wave = 0.6 * torch.sin(2 * math.pi * f * t) * torch.exp(-3 * t) + 0.005 * torch.randn(t.shape[0], generator=g)
        mels.append(log_mel(wave, AUDIO))
    return MelDataset([f"f{i}.wav" for i in range(n_files)], mels, AUDIO, [0, 1, 2], [3])


def vq_config(**kw) -> VQVAEConfig:
    # a high dead-code threshold makes codebook re-seeding (torch's global RNG) happen during training
    base = dict(codebook_size=16, num_quantizers=2, codebook_dim=8, hidden_channels=32, num_res_blocks=1,
                downsample=4, batch_size=8, window_frames=32, max_steps=40, time_budget_s=None, eval_every=10,
                learning_rate=3e-3, device="cpu", seed=0, dead_code_threshold=30.0)
    return VQVAEConfig(**{**base, **kw})


def same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def code_stats(model, dataset: MelDataset) -> tuple[torch.Tensor, torch.Tensor]:
    codes = [model.encode(m.unsqueeze(0))[0] for m in dataset.mels]
    hist = level_histograms(codes, model.quantizer.codebook_size)
    return hist, utilisation(hist)


def evaluations(result) -> list[tuple]:
    return [(e["step"], e["val_loss"], e["utilisation"], e["codes_reset"]) for e in result.history if e["kind"] == "eval"]


@pytest.fixture(scope="module")
def vq_reference():
    return train_vqvae(tone_dataset(), vq_config())


# --- (a) the trainers -------------------------------------------------------------------------


def test_vqvae_stop_and_resume_matches_an_uninterrupted_run(tmp_path, vq_reference):
    store = CheckpointStore(tmp_path, "vqvae")
    first = train_vqvae(tone_dataset(), vq_config(), stop=StopAfter(17), checkpoint=store)
    assert first.interrupted and first.steps == 17 and store.exists()
    assert store.last_save["step"] == 17
    # a second interruption, then the rest
    second = train_vqvae(tone_dataset(), vq_config(), stop=StopAfter(6), checkpoint=store, resume=True)
    assert second.resumed_from == 17 and second.steps == 23 and second.interrupted
    events = []
    final = train_vqvae(tone_dataset(), vq_config(), checkpoint=store, resume=True, callbacks=[events.append])
    assert final.resumed_from == 23 and final.steps == 40 and not final.interrupted
    assert same_weights(final.model, vq_reference.model)  # bit-identical: weights, codebooks, EMA buffers
    assert final.best_step == vq_reference.best_step > 0 and final.best_val_loss == vq_reference.best_val_loss
    # ... along the same path: every evaluation after the resumes scored the same
    assert evaluations(final) == evaluations(vq_reference)
    hist_a, used_a = code_stats(vq_reference.model, tone_dataset())
    hist_b, used_b = code_stats(final.model, tone_dataset())
    assert torch.equal(hist_a, hist_b) and torch.equal(used_a, used_b)
    assert sum(e["codes_reset"][0] for e in final.history if e["kind"] == "eval" and e["step"] == 40) > 0
    # the loss history continues across both resumes (evaluations at every 10 steps, once each)
    evals = [e["step"] for e in final.history if e["kind"] == "eval"]
    assert evals == [10, 20, 30, 40] == [e["step"] for e in vq_reference.history if e["kind"] == "eval"]
    resumed = [e for e in events if e["kind"] == "resumed"]
    assert resumed == [{"stage": "vqvae", "kind": "resumed", "step": 23, "seconds": resumed[0]["seconds"],
                        "from_checkpoint": True}]
    json.dumps(final.history, allow_nan=False)


def test_prior_stop_and_resume_matches_an_uninterrupted_run(tmp_path):
    # random codes over a skewed alphabet: the model memorises, so early stopping and the
    # memorisation warning depend on state (best loss, counters, history) carried by the checkpoint
    g = torch.Generator().manual_seed(0)
    probs = torch.tensor([8.0, 6, 4, 3, 2, 1, 1, 1] + [0.0] * 8)
    codes = [torch.multinomial(probs, 30 * Q, replacement=True, generator=g).reshape(30, Q) for _ in range(4)]
    cfg = PriorConfig(hidden_size=64, num_layers=2, num_heads=4, dropout=0.2, max_epochs=300, learning_rate=2e-3,
                      batch_size=8, context_steps=8, warmup_steps=10, patience=15, time_budget_s=None, eval_every=5,
                      device="cpu", seed=0)
    ref = train_prior(codes, cfg, K, [0, 1], [2, 3])
    assert ref.stop_reason == "early_stop" and ref.memorisation_warning and ref.steps > 20
    store = CheckpointStore(tmp_path, "prior")
    half = ref.steps // 2 + 3  # not on an evaluation step
    first = train_prior(codes, cfg, K, [0, 1], [2, 3], stop=StopAfter(half), checkpoint=store)
    assert first.interrupted and first.steps == half and store.last_save["step"] == half
    events = []
    res = train_prior(codes, cfg, K, [0, 1], [2, 3], checkpoint=store, resume=True, callbacks=[events.append])
    assert res.resumed_from == half and res.steps == ref.steps and res.stop_reason == "early_stop"
    assert same_weights(res.model, ref.model)  # dropout and window sampling resumed exactly
    assert res.best_step == ref.best_step and res.best_val_loss == ref.best_val_loss
    assert res.memorisation_warning == ref.memorisation_warning
    assert [h["step"] for h in res.history] == [h["step"] for h in ref.history]
    assert [h["val_loss"] for h in res.history] == [h["val_loss"] for h in ref.history]
    steps = [e["step"] for e in events if e["kind"] == "step"]
    assert steps[0] == half + 1 and steps == sorted(steps)


def test_resume_counts_the_time_already_spent(tmp_path):
    store = CheckpointStore(tmp_path, "vqvae")
    cfg = vq_config(max_steps=10**6, eval_every=10**6, time_budget_s=2.0)

    class StopLater:
        def __init__(self):
            self.t0 = time.perf_counter()

        def is_set(self):
            return time.perf_counter() - self.t0 > 1.2

    first = train_vqvae(tone_dataset(), cfg, stop=StopLater(), checkpoint=store)
    assert first.interrupted
    spent = json.loads(store.current[1].read_text())["seconds"]
    t0 = time.perf_counter()
    rest = train_vqvae(tone_dataset(), cfg, checkpoint=store, resume=True)
    wall = time.perf_counter() - t0
    assert "time budget" in rest.stop_reason and rest.steps > first.steps
    # only what was left of the budget (under 0.8 s, + setup and the closing evaluation), not a fresh 2 s
    assert spent >= 1.2 and wall < 2.0
    assert rest.seconds >= 2.0  # the reported time counts the time spent before the stop


def test_step_events_also_come_by_time(monkeypatch):
    """Slow steps still draw a live loss curve: a step event at least every LOG_SECONDS."""
    monkeypatch.setattr(vt, "LOG_EVERY", 10**6)
    monkeypatch.setattr(vt, "LOG_SECONDS", 0.0)
    res = train_vqvae(tone_dataset(), vq_config(max_steps=6, eval_every=6))
    assert [e["step"] for e in res.history if e["kind"] == "step"] == [1, 2, 3, 4, 5, 6]
    monkeypatch.setattr(vt, "LOG_SECONDS", 3600.0)
    res = train_vqvae(tone_dataset(), vq_config(max_steps=6, eval_every=6))
    assert [e["step"] for e in res.history if e["kind"] == "step"] == [1]


def test_a_checkpoint_that_cannot_be_written_only_warns(tmp_path, monkeypatch, vq_reference):
    import errno

    import distill.checkpoint as ck

    def disk_full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ck, "atomic_write_bytes", disk_full)
    res = train_vqvae(tone_dataset(), vq_config(), checkpoint=CheckpointStore(tmp_path, "vqvae"))
    warned = [e for e in res.history if e["kind"] == "warning" and "Could not save a checkpoint" in e["message"]]
    assert len(warned) == 1 and "No space" in warned[0]["message"]
    assert res.steps == 40 and same_weights(res.model, vq_reference.model)  # training itself was unaffected


# --- (d) damaged checkpoints ----------------------------------------------------------------------


def test_damaged_or_mismatched_checkpoints_are_skipped_never_loaded(tmp_path, vq_reference):
    store = CheckpointStore(tmp_path, "vqvae")
    train_vqvae(tone_dataset(), vq_config(), stop=StopAfter(13), checkpoint=store)  # saves at 10, then 13
    assert json.loads(store.previous[1].read_text())["step"] == 10
    saved = {p: p.read_bytes() for p in (*store.current, *store.previous)}

    def resume(**kw):
        res = train_vqvae(tone_dataset(), vq_config(**kw), checkpoint=store, resume=True)
        warnings = [e["message"] for e in res.history if e["kind"] == "warning" and "checkpoint" in e["message"]]
        for p, data in saved.items():  # put every file back for the next case
            p.write_bytes(data)
        return res, warnings

    # a truncated tensors file (a crash mid-write without the atomic rename): the previous checkpoint
    store.current[0].write_bytes(saved[store.current[0]][:5000])
    res, warnings = resume()
    assert res.resumed_from == 10 and warnings and "cut short" in warnings[0]
    assert same_weights(res.model, vq_reference.model)  # resuming from the older one is exact too

    # a JSON from another save beside these tensors, and no tensors of its own: nothing usable
    store.current[1].write_bytes(saved[store.previous[1]])
    store.previous[0].unlink()
    res, warnings = resume()
    assert res.resumed_from is None and warnings  # started again from the beginning
    assert any(e["kind"] == "resumed" and e["from_checkpoint"] is False for e in res.history)
    assert same_weights(res.model, vq_reference.model)

    # an edited JSON (its step changed): refused by its own hash; the previous one is used
    meta = json.loads(saved[store.current[1]])
    meta["step"] = 12
    store.current[1].write_text(json.dumps(meta))
    res, warnings = resume()
    assert res.resumed_from == 10 and "changed after it was written" in warnings[0]

    # tensors and JSON that each look fine but come from different saves (same hash, other save id)
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(store.current[0]))
    save_file(tensors, str(store.current[0]), metadata={"format": "distill-checkpoint", "save_id": "x", "step": "13"})
    meta = json.loads(saved[store.current[1]])
    meta["tensors_sha256"] = hashlib.sha256(store.current[0].read_bytes()).hexdigest()
    meta["json_sha256"] = _json_digest(meta)  # a consistent-looking JSON, so only the save id can tell
    store.current[1].write_text(json.dumps(meta))
    res, warnings = resume()
    assert res.resumed_from == 10 and "different saves" in warnings[0]

    # other settings: the checkpoint does not apply, so the stage starts again
    res, warnings = resume(codebook_size=32)
    assert res.resumed_from is None and "other settings" in warnings[0]


# --- (b), (c) the pipeline ------------------------------------------------------------------------

VQ_OVERRIDES = {"max_steps": 60, "eval_every": 20, "time_budget_s": None}
PRIOR_OVERRIDES = {"max_epochs": 8, "eval_every": 5, "time_budget_s": None, "dropout": 0.1, "batch_size": 2,
                   "context_steps": 8, "patience": 100}


def options(root) -> TrainOptions:
    return TrainOptions(preset="quick", seed=1, device="cpu", cache_dir=str(root / "cache"),
                        vqvae_overrides=dict(VQ_OVERRIDES), prior_overrides=dict(PRIOR_OVERRIDES))


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    root = tmp_path_factory.mktemp("resume")
    data = write_synthetic_folder(root / "data", n=6)
    summary = run_pipeline(data, root / "ref", options(root))
    assert summary["status"] == "done", summary
    return {"root": root, "data": data, "run": root / "ref", "summary": summary}


def assert_same_result(run, ref) -> None:
    codes, ref_codes = load_codes(run), load_codes(ref)
    assert list(codes) == list(ref_codes) and all(np.array_equal(codes[k], ref_codes[k]) for k in codes)
    assert same_weights(load_prior(run), load_prior(ref))
    a, b = read_manifest(run)["results"], read_manifest(ref)["results"]
    assert a["analysis"] == b["analysis"] and a["prior"]["steps"] == b["prior"]["steps"]
    assert a["codes"] == b["codes"]  # per-level utilisation, perplexity, dead codes


def test_pipeline_stopped_in_the_prior_resumes_to_the_same_result(reference, tmp_path):
    root, run = reference["root"], tmp_path / "run"
    stop = threading.Event()

    def stop_in_prior(event):
        if event.get("stage") == "prior" and event.get("kind") == "step" and event["step"] >= 12:
            stop.set()

    summary = run_pipeline(reference["data"], run, options(root), callbacks=[stop_in_prior], stop=stop)
    assert summary["status"] == "stopped"
    manifest = read_manifest(run)
    assert manifest["status"] == "stopped" and manifest["stages_done"] == ["vqvae", "codes"]
    assert not (run / "checkpoints" / "vqvae.ckpt.json").exists()  # finished stages keep no checkpoint
    check = can_resume(run)
    assert check["ok"] and check["stage"] == "prior" and check["step"] == 12

    # the source folder gone: a clear error, and nothing about the run changes
    moved = reference["data"].with_name("moved")
    reference["data"].rename(moved)
    try:
        with pytest.raises(DatasetError, match="no longer there"):
            resume_run(run)
        assert not can_resume(run)["ok"]
    finally:
        moved.rename(reference["data"])
    assert read_manifest(run)["status"] == "stopped"

    events = []
    summary = resume_run(run, callbacks=[events.append])
    assert summary["status"] == "done", summary
    manifest = read_manifest(run)
    assert manifest["status"] == "done" and manifest["stages_done"] == ["vqvae", "codes", "prior", "analysis"]
    assert_same_result(run, reference["run"])
    assert not any((run / "checkpoints").iterdir())  # nothing left to resume
    assert {e["stage"] for e in events if e["kind"] == "stage_start"} == {"features", "prior", "analysis"}
    # one continuous loss history in metrics.jsonl: the prior's steps only go forward
    metrics = read_metrics(run)
    assert any(e["kind"] == "resumed" and e["stage"] == "prior" and e["step"] == 12 for e in metrics)
    steps = [e["step"] for e in metrics if e["stage"] == "prior" and e["kind"] == "step"]
    assert steps == list(range(1, len(steps) + 1)) and steps[-1] == manifest["results"]["prior"]["steps"]
    with pytest.raises(ValueError, match="already finished"):
        resume_run(run)


def _cli(*args, **kw):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "distill", *map(str, args)], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def test_kill_9_then_resume_from_the_command_line(reference):
    root = reference["root"]
    run = root / "killed"
    settings = [f"vqvae.{k}={json.dumps(v)}" for k, v in VQ_OVERRIDES.items()]
    settings += [f"prior.{k}={json.dumps(v)}" for k, v in PRIOR_OVERRIDES.items()]
    proc = _cli("--cache-dir", root / "cache", "train", reference["data"], "--run", run, "--preset", "quick",
                "--seed", "1", "--device", "cpu", *[a for s in settings for a in ("--set", s)])
    ckpt = run / "checkpoints" / "vqvae.ckpt.json"
    deadline = time.time() + 120
    while not ckpt.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == -signal.SIGKILL, err[-2000:]
    manifest = read_manifest(run)
    assert manifest["status"] == "running" and "vqvae" not in manifest["stages_done"]

    done = _cli("resume", run, "--json")
    out, err = done.communicate(timeout=300)
    assert done.returncode == 0, err[-3000:]
    summary = json.loads(out)
    assert summary["status"] == "done" and summary["resumed"]
    assert read_manifest(run)["status"] == "done"
    assert_same_result(run, reference["run"])
    metrics = read_metrics(run)
    resumed = [e for e in metrics if e["kind"] == "resumed" and e["stage"] == "vqvae"]
    assert len(resumed) == 1 and resumed[0]["from_checkpoint"] and resumed[0]["step"] >= 20
    # steps logged after the checkpoint and before the kill were redone: the continuous view drops them
    history = continuous_history(metrics)
    for stage in ("vqvae", "prior"):
        steps = [e["step"] for e in history if e["stage"] == stage and e["kind"] == "step"]
        assert steps and steps == sorted(steps), stage
