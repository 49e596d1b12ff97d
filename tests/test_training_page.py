"""What the training tab says, as pure functions: progress and ETA from measured speed
(distill/progress.py), stopped stages, a resumed run's curves, legends, the learning verdict on the
status card, and the form a reloaded page shows for a running job."""
from __future__ import annotations

import json
from pathlib import Path

from distill.app import figures
from distill.app.views import status_card_html
from distill.progress import ProgressTracker, estimate_progress

FIXTURES = Path(__file__).resolve().parent / "fixtures"
# A quick-preset run on the demo as it was logged (the codec's step events thinned out of it): the
# codec stops at its 400-step limit after 28 s of its 40-s budget, the sequence model early-stops in 1 s.
QUICK = [json.loads(line) for line in (FIXTURES / "progress" / "quick_demo.jsonl").read_text().splitlines()]
BUDGETS = {"vqvae": 40.0, "prior": 40.0}


def test_progress_comes_from_the_measured_speed_and_the_bar_only_moves_forward():
    t0, t_end = QUICK[0]["t"], QUICK[-1]["t"]
    tracker = ProgressTracker.for_stages(("features", "vqvae", "codes", "prior", "analysis"), BUDGETS)
    shown, i = [], 0
    for second in range(0, 32):
        now = t0 + second
        while i < len(QUICK) and QUICK[i]["t"] <= now:
            tracker.update(QUICK[i])
            i += 1
        est = tracker.report(now)
        shown.append(est.fraction)
        left = t_end - now
        if 3 <= second <= 25:  # once the codec has measured its speed: not its budget, the real time left
            assert 0.3 * left <= est.eta_s <= 2.5 * left + 3, (second, est.eta_s, left)
            # the same moment replayed from the event list agrees (before the bar's hold)
            assert estimate_progress(QUICK, now, expected=BUDGETS).eta_s == est.eta_s
    assert shown == sorted(shown), shown  # never moves back
    assert shown[-1] == 1.0 and all(f < 1.0 for f in shown[:-2])
    assert max(b - a for a, b in zip(shown, shown[1:])) <= 0.25, shown  # no leap past the work done
    assert len({round(f, 2) for f in shown if 0 < f < 1}) >= 10  # it moves all along


def test_on_a_busy_machine_the_bar_still_only_moves_forward():
    # the same preset on the same demo while other work shared the 2 cores: the codec managed 42 steps
    # in its 40-s budget, and the probe before it rightly expected the sequence model to need its budget
    events = [json.loads(line) for line in (FIXTURES / "progress" / "quick_demo_busy.jsonl").read_text().splitlines()]
    t0, t_end = events[0]["t"], events[-1]["t"]
    tracker = ProgressTracker.for_stages(("features", "vqvae", "codes", "prior", "analysis"), BUDGETS)
    shown, i, second = [], 0, 0
    while t0 + second <= t_end + 1:
        while i < len(events) and events[i]["t"] <= t0 + second:
            tracker.update(events[i])
            i += 1
        shown.append(tracker.report(t0 + second).fraction)
        second += 1
    assert shown == sorted(shown) and shown[-1] == 1.0
    assert max(b - a for a, b in zip(shown, shown[1:])) <= 0.25, shown
    assert len({round(f, 2) for f in shown if 0 < f < 1}) >= 30


def test_a_budget_counts_only_until_the_stage_has_measured_itself():
    t0 = 1000.0
    ev = [{"t": t0, "stage": "vqvae", "kind": "stage_start", "budget_s": 600.0, "max_steps": 100},
          {"t": t0 + 2, "stage": "vqvae", "kind": "step", "step": 10},
          {"t": t0 + 4, "stage": "vqvae", "kind": "step", "step": 20}]
    est = estimate_progress(ev, t0 + 4, stages=("vqvae",))
    assert abs(est.eta_s - 16.0) < 0.01  # 80 steps at 5 steps/s, not the 596 s of budget left
    assert abs(est.fraction - 0.2) < 0.01
    budget_bound = [{**ev[0], "max_steps": 1000}, {"t": t0 + 4, "stage": "vqvae", "kind": "step", "step": 2}]
    assert estimate_progress(budget_bound, t0 + 10, stages=("vqvae",)).eta_s == 590.0  # the budget ends it first


def test_a_stopped_stage_looks_stopped_and_the_bar_stays_where_it_got():
    t0 = 1000.0
    tracker = ProgressTracker.for_stages(("prior", "analysis"), {"prior": 20.0})
    for ev in [{"t": t0, "stage": "prior", "kind": "stage_start", "budget_s": 20.0},
               {"t": t0 + 1, "stage": "prior", "kind": "step", "step": 10},
               {"t": t0 + 5, "stage": "prior", "kind": "step", "step": 50}]:
        tracker.update(ev)
    before = tracker.report(t0 + 5).fraction
    tracker.update({"t": t0 + 5.1, "stage": "prior", "kind": "stage_end"}, stopping=True)
    tracker.update({"t": t0 + 5.3, "stage": "analysis", "kind": "stage_start"}, stopping=True)
    tracker.update({"t": t0 + 5.4, "stage": "analysis", "kind": "stage_end"}, stopping=True)
    tracker.update({"t": t0 + 5.5, "stage": "run", "kind": "run_end", "status": "stopped"})
    after = tracker.report(t0 + 9)
    assert tracker.stopped_at() == {"prior": 50}  # the check that ran is not "stopped"
    assert before <= after.fraction < before + 0.05  # held where the stop came, not filled by the check after it
    snap = {"state": "stopped", "run_id": "r", "job": "retrain", "stages_done": ["analysis"],
            "stages_stopped": {"prior": 50}, "fraction": after.fraction, "elapsed_s": 9.0, "message": "Stopped."}
    card = status_card_html(snap, "r")
    assert "■ Sequence model — stopped at step 50" in card and "✓ Sequence model" not in card
    assert "width:100.0%" not in card and "100 %" not in card


def test_a_resume_drops_the_stages_it_skips():
    tracker = ProgressTracker.for_stages(("features", "vqvae", "codes", "prior", "analysis"), BUDGETS)
    tracker.update({"t": 0.0, "stage": "features", "kind": "stage_start"})
    tracker.update({"t": 1.0, "stage": "features", "kind": "stage_end"})
    tracker.update({"t": 1.0, "stage": "prior", "kind": "stage_start", "budget_s": 10.0, "resumed": True})
    assert set(tracker.expected) == {"features", "prior", "analysis"}  # the finished codec is not waited for


def test_a_saved_stopped_run_shows_its_stopped_stage():
    m = {"status": "stopped", "stages_done": ["vqvae", "codes"], "message": "Stopped; finished stages were kept.",
         "stage_seconds": {"features": 0.1, "vqvae": 5.0, "codes": 0.1, "prior": 3.0, "analysis": 0.1},
         "results": {"prior": {"steps": 160, "stop": "stopped"}}}
    card = status_card_html(None, "r", m)
    assert "✓ Read audio" in card and "✓ Sound model" in card
    assert "■ Sequence model — stopped at step 160" in card and "✓ Check" not in card


def test_a_resumed_run_draws_its_whole_curve():
    ev = [{"stage": "prior", "kind": "stage_start"}]
    ev += [{"stage": "prior", "kind": "step", "step": s, "loss": 4.0 - s / 100} for s in range(1, 161)]
    ev += [{"stage": "prior", "kind": "stage_start", "resumed": True}, {"stage": "prior", "kind": "resumed", "step": 160}]
    ev += [{"stage": "prior", "kind": "step", "step": s, "loss": 2.0} for s in range(161, 201)]
    steps = [r["step"] for r in figures.latest_attempt(ev, "prior") if r.get("kind") == "step"]
    assert steps == list(range(1, 201))
    retrained = ev + [{"stage": "prior", "kind": "stage_start"}, {"stage": "prior", "kind": "step", "step": 1}]
    assert [r["step"] for r in figures.latest_attempt(retrained, "prior") if r.get("kind") == "step"] == [1]


def _legend_outside(fig) -> bool:
    fig.canvas.draw()
    ax = fig.axes[0]
    legend = ax.get_legend()
    box, area = legend.get_window_extent(), ax.get_window_extent()
    return box.y1 <= area.y0 + 1  # wholly under the plotting area


def test_loss_legends_never_cover_the_data():
    events = [e for e in QUICK if e["stage"] in ("vqvae", "prior")]
    assert _legend_outside(figures.vqvae_loss_figure(events))
    assert _legend_outside(figures.prior_loss_figure(events))


def test_the_card_says_how_much_the_sequence_model_learned():
    m = {"status": "done", "message": "Training finished.", "options": {"preset": "quick"},
         "stages_done": ["vqvae", "codes", "prior", "analysis"], "vqvae_config": {"codebook_size": 64},
         "stage_seconds": {"features": 0.1, "vqvae": 28.0, "codes": 0.1, "prior": 1.1, "analysis": 0.1},
         "results": {"analysis": {"val_nll_bits": 6.01, "unigram_bits": 7.27, "ratio_to_unigram": 0.83},
                     "prior": {"steps": 16, "best_step": 4, "stop": "early_stop"}}}
    card = status_card_html(None, "r", m)
    assert 'data-learned="little"' in card and "learned little about how your sounds unfold in time" in card
    assert "Auto preset" in card and "more minutes" in card.lower()
    assert "! Sequence model" in card and "✓ Sequence model" not in card  # not every check is green
    snap = {"state": "done", "run_id": "r", "stages_done": ["features", "vqvae", "codes", "prior", "analysis"],
            "fraction": 1.0, "elapsed_s": 30.0, "message": "Training finished."}
    live = status_card_html(snap, "r", m)  # the job that just finished says the same
    assert 'data-learned="little"' in live and "! Sequence model" in live


def test_a_reloaded_form_holds_the_running_jobs_settings(tmp_path):
    from distill.app.page.forms import form_for_job
    from distill.app.service import DistillApp

    app = DistillApp(tmp_path / "ws")
    m = {"options": {"preset": "quick", "minutes": 0.5, "device": "cpu", "seed": 3, "num_quantizers": 2,
                     "vqvae_overrides": {}, "prior_overrides": {"dropout": 0.1}},
         "vqvae_config": {"codebook_size": 32}, "prior_config": {"hidden_size": 64, "num_layers": 2, "num_heads": 4,
                                                                 "dropout": 0.1, "learning_rate": 0.001}}
    values, card = form_for_job(app, m, None)
    assert card is None
    assert values == {"preset": "quick", "minutes": 0.5, "device": "cpu", "levels": 2, "seed": 3, "codebook": 32,
                      "hidden": 64, "layers": 2, "heads": 4, "dropout": 0.1, "lr": 0.001}
    assert form_for_job(app, {}, None) == ({}, None)


def test_the_sequence_models_expected_time_is_measured_or_its_budget():
    from distill.config import PriorConfig
    from distill.training.prior_budget import expected_prior_seconds

    small = PriorConfig(hidden_size=32, num_layers=1, num_heads=2, max_epochs=2, batch_size=2, time_budget_s=600.0,
                        device="cpu")
    seconds = expected_prior_seconds(small, 16, 2, train_tokens=400, probe_seconds=0.05)
    assert 0 < seconds < 60  # a few steps on a tiny model: far under its 10-minute budget
    huge = PriorConfig(hidden_size=32, num_layers=1, num_heads=2, max_epochs=10 ** 6, batch_size=2,
                       time_budget_s=5.0, device="cpu")
    assert expected_prior_seconds(huge, 16, 2, train_tokens=10 ** 6) == 5.0  # budget-bound: not probed
