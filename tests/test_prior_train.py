"""Prior training: windows, learning, memorisation warning, early stop, budgets, stop flag, NaN guard."""
from __future__ import annotations

import json
import math
import threading
import types

import pytest
import torch
import torch.nn.functional as F

from distill.analysis import nll_bits
from distill.config import PriorConfig
from distill.training import prior_train
from distill.training.prior_train import (
    _Windows,
    _lr,
    estimate_training_seconds,
    plan_prior_training,
    speed_probe,
    train_prior,
)

K, Q = 16, 3


def tiny_config(**kw) -> PriorConfig:
    base = dict(
        hidden_size=32, num_layers=2, num_heads=4, dropout=0.0, max_epochs=40, learning_rate=3e-3,
        batch_size=8, context_steps=8, warmup_steps=10, patience=100, time_budget_s=None, eval_every=20,
        device="cpu", seed=0,
    )
    base.update(kw)
    return PriorConfig(**base)


def pattern_file(steps: int, phase: int = 0, period: int = 4) -> torch.Tensor:
    t = torch.arange(phase, phase + steps)
    # [T, Q]: each level cycles with the period, levels differ
    return torch.stack([(t % period) * 3 + lvl for lvl in range(Q)], 1) % K


def test_windows_are_level_aligned_and_short_files_whole():
    flats = [torch.arange(60), 100 + torch.arange(9)]  # 20 steps; 3 steps (shorter than a window)
    data = _Windows(flats, Q, seq_len=24)
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        x, y, _, _ = data.sample(6, g)
        assert x.shape[1] <= 24
        for row_x, row_y in zip(x, y):
            n = int((row_y != -100).sum())
            assert n in (9, 24)  # a short file whole, or a full window
            assert torch.equal(row_x[:n], row_y[:n])
            if n == 24:  # from file 0, starting on a level-0 token
                first = int(row_x[0])
                assert first % Q == 0 and torch.equal(row_x, torch.arange(24) + first)
            else:
                assert torch.equal(row_x[:n], flats[1])
    files, starts = data.tiles()
    assert files.tolist() == [0, 0, 0, 1] and starts.tolist() == [0, 24, 48, 0]


def test_plan_and_lr_schedule():
    cfg = tiny_config(max_epochs=10, batch_size=4, warmup_steps=5, eval_every=1000, learning_rate=1e-3)
    plan = plan_prior_training(cfg, Q, train_tokens=24 * 10)  # 10 windows -> 3 batches
    assert (plan.seq_len, plan.steps_per_epoch, plan.total_steps, plan.warmup_steps) == (24, 3, 30, 3)
    assert plan.eval_interval == 3  # at least once per epoch
    lrs = [_lr(cfg, plan, s, 0.0) for s in range(30)]
    assert lrs[0] < lrs[1] < lrs[2] == cfg.learning_rate
    assert all(a >= b for a, b in zip(lrs[2:], lrs[3:]))
    assert math.isclose(_lr(cfg, plan, 30, 0.0), 0.1 * cfg.learning_rate)
    # with a time budget, elapsed time also advances the schedule
    timed = tiny_config(max_epochs=10, batch_size=4, warmup_steps=5, learning_rate=1e-3, time_budget_s=10.0)
    assert _lr(timed, plan, 4, 9.9) < _lr(timed, plan, 4, 0.0)
    est = estimate_training_seconds(timed, Q, 240, tokens_per_s=24.0)
    assert est == 10.0  # 30 steps * 4 * 24 tokens at 24 tokens/s, capped by the budget


def test_learns_a_repeating_pattern_to_near_zero_loss():
    codes = [pattern_file(40, phase=i) for i in range(4)]
    events = []
    res = train_prior(codes, tiny_config(max_epochs=60), K, [0, 1, 2], [3], callbacks=[events.append])
    # the only uncertainty left is the first token of each window (4 possible phases)
    assert res.best_val_loss < 0.15, res.best_val_loss
    assert res.history[0]["val_loss"] > 1.0
    assert not res.model.training
    kinds = {e["kind"] for e in events}
    assert {"info", "step", "eval"} <= kinds
    step = next(e for e in events if e["kind"] == "step")
    assert {"loss", "lr", "tokens_per_s", "step", "epoch", "eta_s"} <= set(step)
    ev = next(e for e in events if e["kind"] == "eval")
    assert {"train_loss", "val_loss", "val_perplexity", "gap"} <= set(ev)
    json.dumps(events, allow_nan=False)  # plain JSON all the way
    # the trained model continues the pattern when sampled greedily from a prompt
    out = res.model.generate(24, temperature=0, prompt=torch.cat([c.reshape(1, -1) for c in [codes[3][:4]]], 1))
    assert torch.equal(out[0], codes[3][4:12].reshape(-1))


def _memorise_data():
    # a skewed code distribution shared by all files (learnable), but otherwise random sequences:
    # past the unigram, anything learned on the training files is memorisation
    g = torch.Generator().manual_seed(0)
    probs = torch.tensor([8.0, 6, 4, 3, 2, 1, 1, 1] + [0.0] * 8)
    return [torch.multinomial(probs, 30 * Q, replacement=True, generator=g).reshape(30, Q) for _ in range(4)]


def test_memorisation_warning_fires_and_best_weights_are_kept():
    codes = _memorise_data()
    events = []
    cfg = tiny_config(hidden_size=64, max_epochs=300, learning_rate=2e-3, eval_every=5, patience=15)
    res = train_prior(codes, cfg, K, [0, 1], [2, 3], callbacks=[events.append])
    warnings = [e for e in events if e["kind"] == "warning" and e["code"].startswith("memorising")]
    assert warnings and res.memorisation_warning is not None
    warn = warnings[0]
    at_warning = next(h for h in res.history if h["step"] == warn["step"])
    at_best = next(h for h in res.history if h["step"] == warn["best_step"])
    assert warn["step"] > warn["best_step"]
    assert at_warning["val_loss"] > at_best["val_loss"] and at_warning["train_loss"] < at_best["train_loss"]
    assert "memoris" in res.memorisation_warning and "held-back" in res.memorisation_warning
    assert res.stop_reason == "early_stop"
    last = res.history[-1]
    assert last["val_loss"] > res.best_val_loss and last["train_loss"] < res.history[0]["train_loss"]
    assert res.best_step < res.steps
    # the returned weights are the best-validation ones
    val_bits = nll_bits(res.model, [codes[2], codes[3]])
    assert math.isclose(val_bits * math.log(2), res.best_val_loss, rel_tol=1e-4)


def test_same_seed_same_model():
    codes = _memorise_data()
    cfg = tiny_config(max_epochs=3, dropout=0.2)
    a = train_prior(codes, cfg, K, [0, 1, 2], [3])
    b = train_prior(codes, cfg, K, [0, 1, 2], [3])
    assert [h["val_loss"] for h in a.history] == [h["val_loss"] for h in b.history]
    for (ka, va), (kb, vb) in zip(a.model.state_dict().items(), b.model.state_dict().items()):
        assert ka == kb and torch.equal(va, vb)


def test_stop_flag_and_time_budget():
    codes = _memorise_data()
    stop = threading.Event()

    def stopper(event):
        if event["kind"] == "step" and event["step"] == 4:
            stop.set()

    res = train_prior(codes, tiny_config(), K, [0, 1], [2], callbacks=[stopper], stop=stop)
    assert res.stop_reason == "stopped" and res.steps == 4
    assert res.history  # a final evaluation still picks the kept weights

    res = train_prior(codes, tiny_config(max_epochs=100_000, time_budget_s=0.7, patience=10**9), K, [0, 1], [2])
    assert res.stop_reason == "time_budget" and res.seconds < 5.0


def test_non_finite_losses_are_skipped_then_stop(monkeypatch):
    codes = _memorise_data()
    state = {"nan": 0}

    def cross_entropy(*a, **k):
        if state["nan"] > 0:
            state["nan"] -= 1
            return torch.tensor(float("nan"), requires_grad=True)
        return F.cross_entropy(*a, **k)

    monkeypatch.setattr(prior_train, "F", types.SimpleNamespace(
        cross_entropy=cross_entropy, binary_cross_entropy_with_logits=F.binary_cross_entropy_with_logits))

    events = []

    def inject(event):
        events.append(event)
        if event["kind"] == "step" and event["step"] == 3:
            state["nan"] = 2  # two bad steps, then fine again

    cfg = tiny_config(max_epochs=2, eval_every=1000)
    res = train_prior(codes, cfg, K, [0, 1, 2], [3], callbacks=[inject])
    bad = [e for e in events if e["kind"] == "warning" and e["code"] == "non_finite"]
    assert len(bad) == 2 and res.stop_reason == "completed"
    assert res.steps == plan_prior_training(cfg, Q, 3 * 30 * Q).total_steps

    state["nan"] = 10_000  # never recovers: gives up after 5, keeps the untouched weights
    events.clear()
    res = train_prior(codes, cfg, K, [0, 1, 2], [3], callbacks=[events.append])
    assert res.stop_reason == "non_finite" and res.steps == 0
    assert sum(e["kind"] == "warning" for e in events) == 5
    assert "unstable" in res.message
    assert all(torch.isfinite(p).all() for p in res.model.parameters())


def test_speed_probe_is_quick_and_leaves_rng_alone():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    tps = speed_probe(tiny_config(), K, Q, "cpu", seconds=0.2)
    assert tps > 0
    assert torch.equal(torch.rand(3), expected)


def test_weight_average_update_and_off_switch():
    from distill.training.prior_train import WeightAverage

    lin = torch.nn.Linear(2, 2)
    avg = WeightAverage(lin, 0.9)
    start = avg.model.weight.detach().clone()
    with torch.no_grad():
        lin.weight.add_(1.0)
    avg.update(lin, step=1000)  # past the ramp: decay 0.9
    assert torch.allclose(avg.model.weight, start + 0.1, atol=1e-6)
    assert not avg.model.weight.requires_grad
    avg.update(lin, step=0)  # early on the ramp ((1 + 0) / 10 = 0.1) the average follows the weights closely
    assert torch.allclose(avg.model.weight, 0.1 * (start + 0.1) + 0.9 * lin.weight, atol=1e-6)
    # with and without averaging, the kept model is the one the best validation score belongs to
    codes = _memorise_data()
    for decay in (0.0, 0.9):
        res = train_prior(codes, tiny_config(max_epochs=4, weight_average_decay=decay), K, [0, 1], [2, 3])
        val_bits = nll_bits(res.model, [codes[2], codes[3]])
        assert math.isclose(val_bits * math.log(2), res.best_val_loss, rel_tol=1e-4)


def test_windows_carry_clip_end_targets():
    flats = [torch.arange(60), 100 + torch.arange(9), 200 + torch.arange(6)]  # 20, 3 and 2 steps
    data = _Windows(flats, Q, seq_len=24)
    x, y, ends, resume = data.gather(torch.tensor([1, 0, 0]), torch.tensor([0, 0, 48]))
    assert resume.tolist() == [False, False, True]  # the last window begins inside its file
    assert x.shape == y.shape == ends.shape == (3, 24)
    # a short file: "not ended" at each later step, "ended" right after its last code
    assert {i: int(e) for i, e in enumerate(ends[0]) if e != -100} == {3: 0, 6: 0, 9: 1}
    assert {i: int(e) for i, e in enumerate(ends[1]) if e != -100} == {i: 0 for i in range(3, 24, 3)}
    assert {i: int(e) for i, e in enumerate(ends[2]) if e != -100} == {3: 0, 6: 0, 9: 0, 12: 1}
    x, y, ends, _ = data.gather(torch.tensor([1]), torch.tensor([0]))
    assert x.shape[1] == 10 and int(ends[0, 9]) == 1  # the column where it ends is kept


def test_a_tiny_prior_learns_where_clips_end():
    # two kinds of clip, told apart by their first code: 3 steps from phase 0, 6 steps from phase 2
    short, long = pattern_file(3, phase=0), pattern_file(6, phase=2)
    codes = [short, long] * 4
    events = []
    res = train_prior(codes, tiny_config(max_epochs=300, eval_every=50), K, list(range(6)), [6, 7],
                      callbacks=[events.append])
    assert res.history[-1]["val_end_loss"] < 0.1, res.history[-1]
    assert res.history[0]["val_end_loss"] > res.history[-1]["val_end_loss"]
    tokens, _, starts = res.model.generate(300, generator=torch.Generator().manual_seed(0), return_logits=True)
    clip_starts = [0] + [i for i in range(1, 300) if int(starts[i]) == i]
    lengths = [b - a for a, b in zip(clip_starts, clip_starts[1:])]
    expected = [3 * Q if int(tokens[0, a]) == int(short[0, 0]) else 6 * Q for a in clip_starts[:-1]]
    assert len(lengths) >= 15
    assert sum(a == b for a, b in zip(lengths, expected)) >= 0.9 * len(lengths), (lengths, expected)
    # without the end head nothing restarts: one stream, the window only slides
    plain = train_prior(codes, tiny_config(max_epochs=5, learn_clip_ends=False), K, list(range(6)), [6, 7])
    assert plain.model.end_head is None and "val_end_loss" not in plain.history[-1]
    _, _, starts = plain.model.generate(60, generator=torch.Generator().manual_seed(0), return_logits=True)
    assert all(int(starts[i]) < i for i in range(1, 60))


def test_settings_of_retired_experiments_in_older_runs_are_dropped():
    from dataclasses import asdict

    from distill.config import config_from_dict

    old = {**asdict(PriorConfig()), "pack_files": False, "input_noise": 0.1}  # as runs before them saved
    assert config_from_dict(PriorConfig, old) == PriorConfig()
    with pytest.raises(ValueError, match="unknown"):
        config_from_dict(PriorConfig, {**asdict(PriorConfig()), "pack_file": False})


def test_stop_reason_is_an_enum_with_its_words_made_in_one_place():
    from distill.training.loop import StopReason, stop_sentence

    assert [r.value for r in StopReason] == ["completed", "early_stop", "time_budget", "step_limit", "stopped",
                                             "non_finite"]
    events = []
    cfg = tiny_config(max_epochs=2)
    res = train_prior(_memorise_data(), cfg, K, [0, 1], [2], callbacks=[events.append])
    assert res.stop is StopReason.COMPLETED and res.stop_reason is res.stop and res.stop_reason == "completed"
    assert json.dumps({"stop_reason": res.stop_reason}) == '{"stop_reason": "completed"}'
    info = [e for e in events if e["kind"] == "info"][-1]
    assert info["stop_reason"] == "completed" and type(info["stop_reason"]) is str
    assert res.message == info["message"] == stop_sentence(StopReason.COMPLETED, res.best_step, passes=2)
    assert "Finished all 2 passes" in res.message
