"""Code extraction and the pure code statistics."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from distill.codes import (
    codebook_health, dead_codes, extract_code_sequences, level_histograms, mean_frame_baseline_l1, mel_l1,
    perplexity, utilisation,
)
from distill.config import AudioConfig, VQVAEConfig
from distill.data import MelDataset
from distill.models.vqvae import ConvVQVAE

N_MELS = 16


def tiny_model() -> ConvVQVAE:
    torch.manual_seed(0)
    cfg = VQVAEConfig(codebook_size=16, num_quantizers=3, codebook_dim=8, hidden_channels=32, num_res_blocks=1, downsample=4)
    model = ConvVQVAE(N_MELS, cfg).train()
    model(torch.randn(4, N_MELS, 64))  # k-means init so codes are spread
    return model


def some_mels(lengths=(5, 40, 41, 44, 100, 3, 40)) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return [torch.randn(N_MELS, n, generator=g) for n in lengths]


def test_extraction_shapes_order_and_determinism():
    model = tiny_model()
    mels = some_mels()
    a = extract_code_sequences(model, mels)
    b = extract_code_sequences(model, mels, batch_frames=0)  # one file a pass
    assert [tuple(c.shape) for c in a] == [(math.ceil(m.shape[-1] / 4), 3) for m in mels]
    assert all(c.dtype == torch.long and c.device.type == "cpu" for c in a)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert model.training  # mode restored
    model.eval()
    for m, c in zip(mels, a):  # same as encoding each file alone
        assert torch.equal(model.encode(m[None])[0], c)


TIE = 1e-8


def codec_with_near_ties() -> tuple[ConvVQVAE, list[torch.Tensor]]:
    """A codec with detail levels and spectral detail, and files of many lengths whose first latent
    vectors lie halfway between two codes of the first level: where a batch's last bits decide."""
    torch.manual_seed(0)
    cfg = VQVAEConfig(codebook_size=16, num_quantizers=2, detail_levels=3, spectral_levels=2, spectral_bands=4,
                      codebook_dim=64, hidden_channels=32, num_res_blocks=2, downsample=4, linear_path=False)
    model = ConvVQVAE(N_MELS, cfg).train()
    model(torch.randn(4, N_MELS, 64))  # k-means init
    model.eval()
    mels = some_mels((1, 2, 3, 4, 5, 7, 8, 13, 40, 41, 44, 64, 100, 250, 2100, 2400))  # the last two: alone (SHORT_FRAMES)
    model.fit_spectral_detail(mels)
    with torch.no_grad():
        book = model.quantizer.levels[0].embed
        g = torch.Generator().manual_seed(5)
        for i, m in enumerate(mels[:7]):
            z = model._latent(m[None])[0, :, 0]
            book[2 * i] = z + 0.01 * torch.randn(z.shape[0], generator=g)
            book[2 * i + 1] = book[2 * i] + TIE * torch.randn(z.shape[0], generator=g)  # all but equally near
    return model, mels


def test_files_encoded_together_get_bit_for_bit_the_codes_they_get_alone():
    """A training file's saved codes must be those it gets alone (an upload of it, `encode`): files
    pass through together (their convs on oneDNN, zero past each end; exact nearest codes), and
    whatever files come with them, in whatever order, the codes are each file's own."""
    from distill.models.nearest import nearest_codes

    model, mels = codec_with_near_ties()
    alone = [model.encode(m[None], detail=True)[0] for m in mels]
    ways = [extract_code_sequences(model, mels, detail=True),  # one pass, the short files laid end to end
            extract_code_sequences(model, mels[::-1], detail=True)[::-1],
            extract_code_sequences(model, mels, detail=True, batch_frames=120),  # passes of a few files
            model.encode_files(mels, detail=True, batch_frames=10**6),  # every short file in one call
            model.encode_files(mels, detail=True, batch_frames=90)]  # a few files a call
    for codes in ways:
        assert all(torch.equal(a, c) for a, c in zip(alone, codes))
    # the planted ties are decided exactly: each first vector's first code is its exact nearest
    for m, c in zip(mels[:7], alone):
        z = model._latent(m[None])[0, :, :1].T
        assert int(c[0, 0]) == int(nearest_codes(z, model.quantizer.levels[0].embed)[0])


def test_extraction_accepts_a_dataset():
    model = tiny_model()
    mels = some_mels()
    ds = MelDataset([str(i) for i in range(len(mels))], mels, AudioConfig(n_mels=N_MELS), [0, 1, 2, 3], [4, 5, 6])
    codes = extract_code_sequences(model, ds)
    assert len(codes) == len(mels)
    elsewhere = extract_code_sequences(model, ds, device="cpu")  # explicit device works too
    assert all(torch.equal(a, b) for a, b in zip(codes, elsewhere))
    assert extract_code_sequences(model, []) == []


def test_level_histograms_and_stats_on_hand_made_codes():
    codes = [
        torch.tensor([[0, 1], [1, 1], [2, 1]]),
        np.array([[3, 1], [0, 1]]),  # numpy works too
    ]
    hist = level_histograms(codes, 4)
    assert hist.tolist() == [[2, 1, 1, 1], [0, 5, 0, 0]]
    assert utilisation(hist).tolist() == [1.0, 0.25]
    assert dead_codes(hist).tolist() == [0, 3]
    p = perplexity(hist)
    expected = math.exp(-(0.4 * math.log(0.4) + 3 * 0.2 * math.log(0.2)))
    assert p[0].item() == pytest.approx(expected)
    assert p[1].item() == pytest.approx(1.0)
    uniform = torch.tensor([[5, 5, 5, 5, 0, 0, 0, 0]])
    assert perplexity(uniform).item() == pytest.approx(4.0)
    assert perplexity(torch.zeros(1, 8, dtype=torch.long)).item() == 0.0
    with pytest.raises(ValueError):
        level_histograms([torch.tensor([[4, 0]])], 4)  # out of range


def test_codebook_health_verdicts():
    k = 20
    healthy = [10] * 18 + [0, 0]  # 90 % used, flat
    partial = [10] * 10 + [0] * 10  # 50 % used
    collapsed = [1000, 1, 1] + [0] * 17  # 15 % used, one code dominates
    report = codebook_health(torch.tensor([healthy, partial, collapsed]))
    assert [r["verdict"] for r in report] == ["healthy", "some codes unused", "collapse"]
    assert report[1]["dead_codes"] == 10 and report[0]["codebook_size"] == k
    assert all(isinstance(r["explanation"], str) and r["explanation"] for r in report)


def test_mel_l1_and_mean_frame_baseline():
    a = torch.zeros(2, 3)
    b = torch.ones(2, 3)
    assert mel_l1(a, b) == pytest.approx(1.0)
    # lists are frame-weighted: 6 values off by 1, 2 values off by 4 -> 14 / 8
    assert mel_l1([a, torch.zeros(2, 1)], [b, torch.full((2, 1), 4.0)]) == pytest.approx(14 / 8)
    train = [torch.tensor([[0.0, 2.0], [4.0, 4.0]]), torch.tensor([[1.0], [1.0]])]  # mean frame [1, 3]
    evals = [torch.tensor([[1.0, 3.0], [3.0, 0.0]])]
    assert mean_frame_baseline_l1(train, evals) == pytest.approx((0 + 2 + 0 + 3) / 4)
    with pytest.raises(ValueError):
        mel_l1(torch.zeros(2, 3), torch.zeros(2, 4))
