"""Spectral detail: codes of what the codec's decoder leaves out of a sound's log-mel."""
from __future__ import annotations

import dataclasses

import pytest
import torch

from distill.config import VQVAEConfig
from distill.models.spectral_detail import SpectralDetail, fit_excerpts
from distill.models.vqvae import ConvVQVAE
from distill.storage import load_tensors, save_tensors

N_MELS, LEVELS, BANDS = 16, 3, 4


def codec(spectral_levels: int = LEVELS, seed: int = 0) -> ConvVQVAE:
    torch.manual_seed(seed)
    cfg = VQVAEConfig(codebook_size=16, num_quantizers=3, detail_levels=2, codebook_dim=8, hidden_channels=16,
                      num_res_blocks=1, downsample=4, spectral_levels=spectral_levels, spectral_bands=BANDS)
    return ConvVQVAE(N_MELS, cfg).eval()


def material(n: int, frames: int, seed: int) -> list[torch.Tensor]:
    # a few recurring spectral shapes (notes in a register), each held for a few frames, plus noise:
    # texture the untrained decoder cannot make and the codebooks can learn
    g = torch.Generator().manual_seed(0)
    shapes = torch.randn(6, N_MELS, generator=g) * 2
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        which = torch.randint(0, 6, (frames // 4 + 1,), generator=g).repeat_interleave(4)[:frames]
        out.append(shapes[which].T - 6 + 0.1 * torch.randn(N_MELS, frames, generator=g))
    return out


@torch.no_grad()
def l1(model, mel, codes):
    return float((model.decode(codes, frames=mel.shape[-1])[0] - mel).abs().mean())


def test_fitted_spectral_detail_brings_a_files_round_trip_closer_held_out_files_too():
    model = codec()
    model.init_codebooks(torch.stack(material(4, 64, seed=1)))
    left = model.fit_spectral_detail(material(8, 64, seed=1), seed=0)
    assert left is not None and left > 0
    for mel in material(3, 61, seed=2):  # files the fit never saw, of a length the codec pads
        codes = model.encode(mel[None], detail=True)
        assert codes.shape == (1, 16, 3 + 2 + LEVELS * BANDS) and int(codes.max()) < 16
        with_it, without = l1(model, mel, codes), l1(model, mel, codes[..., :5])
        assert with_it < 0.3 * without, (with_it, without)
        assert model.decode(codes, frames=61).shape == (1, N_MELS, 61)


def test_unfitted_spectral_detail_changes_nothing_and_codes_keep_their_widths():
    model = codec()
    mel = material(1, 40, seed=3)[0][None]
    codes = model.encode(mel, detail=True)
    assert torch.equal(model.decode(codes), model.decode(codes[..., :5]))  # zero codebooks add nothing
    assert model.encode(mel).shape[-1] == 3 and model.detail_width == 2 + LEVELS * BANDS
    with pytest.raises(ValueError, match="3 or 5 or 17"):
        model.decode(codes[..., :9])


def test_the_fit_is_deterministic_and_its_codebooks_round_trip_through_safetensors(tmp_path):
    files = material(5, 48, seed=4)
    a, b = codec(), codec()
    a.fit_spectral_detail(files, seed=3)
    b.fit_spectral_detail(files, seed=3)
    assert torch.equal(a.spectral.books, b.spectral.books) and a.spectral.books.abs().sum() > 0
    assert (a.spectral.books[:, :, 0] == 0).all()  # code 0 of every level and band: no change
    zero = torch.zeros(1, 5, LEVELS * BANDS, dtype=torch.long)
    assert (a.spectral.decode(zero) == 0).all()
    save_tensors(tmp_path / "v.safetensors", a.state_dict())
    c = codec(seed=9)
    c.load_state_dict(load_tensors(tmp_path / "v.safetensors"))
    mel = files[0][None]
    assert torch.equal(c.encode(mel, detail=True), a.encode(mel, detail=True))


def test_a_codec_saved_before_spectral_detail_loads_without_it():
    old = codec(spectral_levels=0)
    assert old.spectral is None and old.detail_width == 2 and old.fit_spectral_detail(material(1, 8, 0)) is None
    new = ConvVQVAE(N_MELS, dataclasses.replace(old.config))
    new.load_state_dict(old.state_dict())  # no spectral buffer is expected or missing


def test_blocks_cut_and_join_the_mel_exactly():
    sd = SpectralDetail(N_MELS, 4, 2, BANDS, 8)
    mel = torch.randn(2, N_MELS, 20)
    blocks = sd.to_blocks(mel)
    assert blocks.shape == (2, BANDS, 5, (N_MELS // BANDS) * 4)
    assert torch.equal(sd.from_blocks(blocks), mel)
    assert torch.equal(blocks[1, 2, 3], mel[1, 8:12, 12:16].reshape(-1))  # band 2, step 3: its bins x frames
    with pytest.raises(ValueError, match="bands dividing"):
        SpectralDetail(N_MELS, 4, 2, 5, 8)


def test_every_spectral_code_is_used_on_the_training_files_even_with_silent_tails():
    # short clips with long silent tails: most vectors are the same, so a random start draws many
    # near-identical codes that no vector then chooses; k-means moves those onto the worst-fitting vectors
    sd = SpectralDetail(N_MELS, 4, levels=LEVELS, bands=BANDS, codebook_size=16)
    g = torch.Generator().manual_seed(4)
    residuals = [torch.cat([torch.randn(N_MELS, 96, generator=g), torch.zeros(N_MELS, 400)], 1) for _ in range(3)]
    sd.fit(residuals, seed=0)
    codes = sd.encode(torch.cat(residuals, 1)[None])[0]  # [T', levels * bands]
    for column in codes.T:
        assert len(column.unique()) == 16, column.unique()


def test_a_long_collection_is_fitted_on_excerpts_from_every_file_and_a_short_one_whole():
    ds = 4
    short = [torch.randn(N_MELS, n) for n in (30, 41)]
    assert all(a is b for a, b in zip(fit_excerpts(short, ds, max_steps=100, excerpt_steps=8), short))
    long = [torch.arange(n, dtype=torch.float32).expand(N_MELS, n) for n in (4000, 1000, 20)]  # frame indices
    parts = fit_excerpts(long, ds, max_steps=200, excerpt_steps=16)
    steps = sum(-(-p.shape[-1] // ds) for p in parts)
    assert 150 <= steps <= 260, steps  # about max_steps in all
    firsts = [int(p[0, 0]) for p in parts]
    assert all(f % ds == 0 for f in firsts)  # excerpts start on a code step
    # in file order: the longest file gives most, from its start to its end; the next its share; the
    # shortest (its share a sixth of it) none
    assert [p.shape[-1] for p in parts] == [64] * 10 + [64] * 2
    assert int(parts[0][0, 0]) == 0 and int(parts[9][0, -1]) == 3999
    assert int(parts[10][0, 0]) == 0 and int(parts[11][0, -1]) == 999
    assert sum(p.shape[-1] for p in parts) < sum(m.shape[-1] for m in long) / 3
    # hundreds of short files: whole ones, spread over the collection, about max_steps in all
    many = [torch.full((N_MELS, 40), float(i)) for i in range(300)]
    parts = fit_excerpts(many, ds, max_steps=300, excerpt_steps=16)
    taken = [int(p[0, 0]) for p in parts]
    assert all(p.shape[-1] == 40 for p in parts) and 25 <= len(taken) <= 35, len(taken)
    assert taken[0] < 15 and taken[-1] > 285 and max(b - a for a, b in zip(taken, taken[1:])) <= 11
