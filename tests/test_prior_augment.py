"""Varied copies of a small collection's training files for its sequence model."""
from __future__ import annotations

import torch

from distill.config import PriorConfig, VQVAEConfig
from distill.models.vqvae import ConvVQVAE
from distill.training.prior_augment import COPIES_MAX, STRETCH, augmented_codes, copies_for, varied_mels
from distill.training.prior_train import train_prior

FLOOR = 1e-5


def mels(n: int = 3, frames: int = 40) -> list[torch.Tensor]:
    torch.manual_seed(0)
    return [torch.log(torch.rand(16, frames + 7 * i) + FLOOR) for i in range(n)]


def test_small_collections_get_copies_and_large_ones_none():
    assert copies_for(20.0) == copies_for(60.0) == COPIES_MAX
    assert 0 < copies_for(200.0) < COPIES_MAX
    assert copies_for(600.0) == copies_for(3000.0) == 0


def test_copies_are_seeded_and_stay_close_to_their_file():
    src = mels()
    a, b = varied_mels(src, 2, FLOOR, seed=1), varied_mels(src, 2, FLOOR, seed=1)
    assert len(a) == 6 and all(torch.equal(x, y) for x, y in zip(a, b))
    assert not all(torch.equal(x, y) for x, y in zip(a, varied_mels(src, 2, FLOOR, seed=2)))
    for i, copy in enumerate(a):
        original = src[i // 2]
        assert copy.shape[0] == original.shape[0]
        assert abs(copy.shape[1] / original.shape[1] - 1) <= STRETCH + 1 / original.shape[1]
        assert bool(torch.isfinite(copy).all()) and float(copy.min()) >= float(torch.log(torch.tensor(FLOOR))) - 1e-4


def test_the_codes_of_the_copies_come_from_the_sound_model_and_none_past_the_limit():
    model = ConvVQVAE(16, VQVAEConfig(codebook_size=8, num_quantizers=2, hidden_channels=16, codebook_dim=8,
                                      num_res_blocks=1)).eval()
    src = mels()
    codes = augmented_codes(model, src, frames_per_second=10.0, floor=FLOOR, seed=0, copies=2)
    assert len(codes) == 6 and all(c.shape[-1] == 2 and int(c.max()) < 8 for c in codes)
    # by default as many as the amount of audio calls for: 141 frames at 0.1 frames/s are 23 minutes
    assert augmented_codes(model, src, frames_per_second=0.1, floor=FLOOR, seed=0) == []
    assert len(augmented_codes(model, src, frames_per_second=10.0, floor=FLOOR, seed=0)) == 3 * COPIES_MAX


def test_the_prior_trains_on_the_copies_and_is_checked_on_the_real_files_only():
    def pattern(steps, phase):
        t = torch.arange(phase, phase + steps)
        return torch.stack([t % 4, (t + 1) % 4 + 4, (t + 2) % 4 + 8], dim=-1)

    codes = [pattern(30, i) for i in range(3)]
    cfg = PriorConfig(hidden_size=32, num_layers=1, num_heads=4, dropout=0.0, max_epochs=2, batch_size=4,
                      context_steps=8, warmup_steps=2, eval_every=5, time_budget_s=None, device="cpu")
    plain, varied = [], []
    train_prior(codes, cfg, 16, [0, 1], [2], callbacks=[plain.append])
    train_prior(codes, cfg, 16, [0, 1], [2], callbacks=[varied.append], varied_codes=[pattern(30, 3)] * 4)
    info = lambda events: next(e for e in events if e["kind"] == "info")  # noqa: E731
    assert info(varied)["train_tokens"] == 3 * info(plain)["train_tokens"]  # 2 files + 4 copies of 30 steps
    assert info(varied)["val_tokens"] == info(plain)["val_tokens"]
    assert "from 2 files and 4 varied copies of them" in info(varied)["message"]
