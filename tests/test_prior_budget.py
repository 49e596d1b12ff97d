"""Fitting the prior to its time budget: shrink the batch first, then the model; never the user's own settings."""
from distill.config import get_adaptive_prior_config
from distill.training.prior_budget import MIN_STEPS, fit_prior_to_budget, planned_steps


def fake_probe(tokens_per_s_by_hidden):
    return lambda cfg: tokens_per_s_by_hidden[cfg.hidden_size]


def test_fast_device_keeps_the_seed_table():
    cfg = get_adaptive_prior_config(300)
    cfg.time_budget_s = 900
    out, note = fit_prior_to_budget(cfg, 256, 3, "cpu", probe=fake_probe({512: 1e6}))
    assert out == cfg and note is None


def test_slow_device_shrinks_batch_then_model():
    cfg = get_adaptive_prior_config(300)
    cfg.time_budget_s = 900
    speeds = {512: 300.0, 256: 2500.0, 128: 9000.0}
    out, note = fit_prior_to_budget(cfg, 256, 3, "cpu", probe=fake_probe(speeds))
    assert out.batch_size == 4 and out.hidden_size == 256 and out.num_layers == 4
    assert planned_steps(out, speeds[256], 3) >= MIN_STEPS
    assert "batch 4" in note and "instead of batch 32" in note
    assert out.dropout == cfg.dropout and out.learning_rate == cfg.learning_rate


def test_user_settings_are_never_changed():
    cfg = get_adaptive_prior_config(300)
    cfg.time_budget_s = 900
    out, _ = fit_prior_to_budget(cfg, 256, 3, "cpu", fixed={"hidden_size", "batch_size"},
                                 probe=fake_probe({512: 300.0}))
    assert out.hidden_size == 512 and out.batch_size == 32


def test_no_budget_means_no_change():
    cfg = get_adaptive_prior_config(300)
    cfg.time_budget_s = None
    out, note = fit_prior_to_budget(cfg, 256, 3, "cpu", probe=fake_probe({512: 1.0}))
    assert out == cfg and note is None
