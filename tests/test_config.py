"""Adaptive tiers and configs: the seed's table, exactly, at every boundary."""
import json

import pytest

from distill.config import (
    AudioConfig, PriorConfig, VQVAEConfig, apply_overrides, config_from_dict, get_adaptive_prior_config,
    get_adaptive_vqvae_config, tier_for,
)
from distill.tiers import describe_tier

# files -> (hidden, layers, heads, dropout, epochs, lr, val_fraction, batch, codebook)
EXPECTED = {
    1: (128, 2, 4, 0.3, 50, 3e-4, 0.5, 1, 64),
    5: (128, 2, 4, 0.3, 50, 3e-4, 0.5, 6, 64),
    9: (128, 2, 4, 0.3, 50, 3e-4, 0.5, 11, 64),
    10: (128, 2, 4, 0.3, 50, 3e-4, 0.3, 12, 64),
    20: (128, 2, 4, 0.3, 50, 3e-4, 0.3, 25 if False else 25, 64),
    21: (256, 4, 4, 0.2, 100, 1e-3, 0.3, 26, 128),
    49: (256, 4, 4, 0.2, 100, 1e-3, 0.3, 32, 128),
    50: (256, 4, 4, 0.2, 100, 1e-3, 0.2, 32, 128),
    100: (256, 4, 4, 0.2, 100, 1e-3, 0.2, 32, 128),
    101: (512, 6, 8, 0.1, 150, 1e-3, 0.2, 32, 256),
    199: (512, 6, 8, 0.1, 150, 1e-3, 0.2, 32, 256),
    200: (512, 6, 8, 0.1, 150, 1e-3, 0.1, 32, 256),
    500: (512, 6, 8, 0.1, 150, 1e-3, 0.1, 32, 256),
}


@pytest.mark.parametrize("n", sorted(EXPECTED))
def test_tier_table(n):
    hidden, layers, heads, dropout, epochs, lr, val, batch, codebook = EXPECTED[n]
    batch = min(32, max(1, n * 5 // 4))
    p = get_adaptive_prior_config(n)
    assert (p.hidden_size, p.num_layers, p.num_heads, p.dropout, p.max_epochs) == (hidden, layers, heads, dropout, epochs)
    assert p.learning_rate == pytest.approx(lr)
    assert p.val_fraction == val and p.batch_size == batch
    assert p.weight_decay == 0.01 and p.gradient_clip_norm == 1.0 and p.device == "auto"
    v = get_adaptive_vqvae_config(n)
    assert v.codebook_size == codebook and v.num_quantizers == 3


def test_batch_size_rule_examples():
    assert get_adaptive_prior_config(1).batch_size == 1
    assert get_adaptive_prior_config(5).batch_size == 6
    assert get_adaptive_prior_config(20).batch_size == 25
    assert get_adaptive_prior_config(26).batch_size == 32


def test_tier_boundaries():
    assert [tier_for(n) for n in (5, 20, 21, 100, 101, 500)] == [1, 1, 2, 2, 3, 3]


def test_levels_and_codebook_dim_are_user_choices():
    assert get_adaptive_vqvae_config(30, num_quantizers=4, codebook_dim=32).num_quantizers == 4
    with pytest.raises(ValueError):
        get_adaptive_vqvae_config(30, num_quantizers=5)


def test_configs_round_trip_through_json_and_refuse_bad_values():
    for cfg in (AudioConfig(), VQVAEConfig(), PriorConfig()):
        data = json.loads(json.dumps(config_from_dict(type(cfg), vars(cfg)).__dict__))
        assert config_from_dict(type(cfg), data) == cfg
    with pytest.raises(ValueError, match="unknown"):
        config_from_dict(PriorConfig, {"hidden_size": 64, "evil": 1})
    with pytest.raises(ValueError, match="expected int"):
        config_from_dict(PriorConfig, {"hidden_size": "64"})
    assert apply_overrides(PriorConfig(), {"dropout": 0.0}).dropout == 0.0


def test_tier_card_explains_and_warns():
    audio = AudioConfig()
    card = describe_tier([0.2] * 25, audio, get_adaptive_vqvae_config(25), get_adaptive_prior_config(25))
    assert card.tier == 2 and "25 usable files" in card.reasons[0]
    assert any("very short" in w for w in card.warnings)
    assert card.code_tokens > 0
    few = describe_tier([3.0] * 3, audio, get_adaptive_vqvae_config(3), get_adaptive_prior_config(3))
    assert any("Only 3 usable files" in w for w in few.warnings)
    plenty = describe_tier([60.0] * 150, audio, get_adaptive_vqvae_config(150), get_adaptive_prior_config(150))
    assert plenty.tier == 3 and not plenty.warnings
