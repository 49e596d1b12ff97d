"""ConvVQVAE + residual VQ: shapes, round trips, gradients, codebook init/reset, persistence."""
from __future__ import annotations

import copy
import math

import pytest
import torch

from distill.audio.griffinlim import mel_to_audio
from distill.config import AudioConfig, VQVAEConfig
from distill.models.vqvae import ConvVQVAE, EMACodebook, ResidualVQ, quantizer_matches_cpu
from distill.storage import load_tensors, save_tensors, tensor_spec

N_MELS = 16


def tiny_config(**kw) -> VQVAEConfig:
    base = dict(codebook_size=16, num_quantizers=3, codebook_dim=8, hidden_channels=32, num_res_blocks=1, downsample=4)
    return VQVAEConfig(**{**base, **kw})


def tiny_model(seed: int = 0, **kw) -> ConvVQVAE:
    torch.manual_seed(seed)
    return ConvVQVAE(N_MELS, tiny_config(**kw))


def mels(b: int, frames: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, N_MELS, frames, generator=g) * 2 - 6  # log-mel-like values


@pytest.mark.parametrize("q", [2, 3, 4])
@pytest.mark.parametrize("ds", [2, 4, 8])
def test_shapes_and_round_trip(q, ds):
    model = tiny_model(num_quantizers=q, downsample=ds).eval()
    x = mels(2, 40)
    codes = model.encode(x)
    assert codes.shape == (2, math.ceil(40 / ds), q) and codes.dtype == torch.long
    assert int(codes.min()) >= 0 and int(codes.max()) < 16
    assert model.decode(codes).shape == (2, N_MELS, codes.shape[1] * ds)
    recon = model.decode(codes, frames=40)
    assert recon.shape == x.shape and torch.isfinite(recon).all()
    out = model(x)  # eval mode: forward is encode -> decode
    assert torch.equal(out.codes, codes)
    assert torch.allclose(out.recon, recon, atol=1e-5)
    assert set(out.stats) == {"utilisation", "perplexity", "dead_codes", "codes_reset"}
    assert all(v.shape == (q,) for v in out.stats.values())
    # codes -> mel -> codes is stable enough to be a round trip on the decoder's own output
    assert model.encode(recon).shape == codes.shape


@pytest.mark.parametrize("frames", [1, 3, 5, 8, 17, 33])
def test_any_length(frames):
    model = tiny_model(downsample=8).eval()
    x = mels(1, frames)
    codes = model.encode(x)
    assert codes.shape == (1, math.ceil(frames / 8), 3)
    assert model(x).recon.shape == (1, N_MELS, frames)
    assert model.decode(codes, frames=frames + 11).shape == (1, N_MELS, frames + 11)  # padded on request


def test_bad_inputs_are_refused():
    with pytest.raises(ValueError):
        ConvVQVAE(N_MELS, tiny_config(downsample=3))
    model = tiny_model()
    with pytest.raises(ValueError):
        model.encode(torch.zeros(1, N_MELS + 1, 8))
    with pytest.raises(ValueError):
        model.decode(torch.zeros(1, 4, 2, dtype=torch.long))  # 2 levels for a 3-level model


def test_gradient_reaches_encoder_through_quantiser():
    model = ConvVQVAE(N_MELS, tiny_config(linear_path=False)).train()
    x = mels(2, 32)
    out = model(x)
    (out.recon - x).abs().mean().backward()  # reconstruction only: no commitment path
    first = model.encoder.net[0].weight.grad
    assert first is not None and float(first.abs().sum()) > 0
    assert model.decoder.net[0].weight.grad.abs().sum() > 0


def test_linear_path_starts_as_pca_and_gradients_reach_both_paths():
    model = tiny_model().train()
    x = mels(4, 64)
    model.init_linear_path(list(x))
    # a fresh model is the linear codec: the conv paths add nothing yet
    z = model._latent(x)
    assert torch.allclose(z, model.enc_linear(x), atol=1e-6)
    # the components are orthonormal: encode-decode without quantising is a projection
    w = model.enc_linear.weight.reshape(model.enc_linear.out_channels, -1)
    k = min(w.shape)
    assert torch.allclose(w[:k] @ w[:k].T, torch.eye(k), atol=1e-4)
    out = model(x)
    (out.recon - x).abs().mean().backward()
    assert float(model.enc_linear.weight.grad.abs().sum()) > 0
    assert float(model.encoder.net[-1].weight.grad.abs().sum()) > 0  # the conv path's way in
    assert float(model.decoder.net[-1].weight.grad.abs().sum()) > 0


def test_commitment_gradient_reaches_encoder():
    model = tiny_model().train()
    model(mels(4, 128)).commit_loss.backward()  # more vectors than codes: k-means cannot fit them exactly
    assert float(model.encoder.net[-1].weight.grad.abs().sum()) > 0


def test_kmeans_init_finds_clusters():
    torch.manual_seed(0)
    centres = torch.tensor([[10.0, 0], [-10, 0], [0, 10], [0, -10]])
    x = centres.repeat_interleave(50, 0) + 0.1 * torch.randn(200, 2)
    book = EMACodebook(4, 2, decay=0.99, dead_code_threshold=1.0)
    book.kmeans_init(x)
    dist = torch.cdist(centres, book.embed)
    assert float(dist.min(dim=1).values.max()) < 0.5  # every centre has a code on it
    assert bool(book.initted.item())
    assert torch.allclose(book.cluster_size, torch.full((4,), 256.0))  # usage per 1024 vectors: 1/4 each


def test_first_training_forward_initialises_codebooks():
    model = tiny_model().train()
    assert not model.quantizer.initted
    before = model.quantizer.levels[0].embed.clone()
    model(mels(4, 64))
    assert model.quantizer.initted
    assert not torch.equal(before, model.quantizer.levels[0].embed)


def test_dead_codes_get_reset():
    torch.manual_seed(0)
    book = EMACodebook(8, 2, decay=0.9, dead_code_threshold=1.0)
    x = torch.randn(64, 2)
    with torch.no_grad():
        book.embed.copy_(torch.cat([torch.randn(4, 2), torch.full((4, 2), 100.0)]))  # 4 codes far from data
        book.embed_avg.copy_(book.embed * 5)
        book.cluster_size.fill_(5.0)
    rvq = ResidualVQ(1, 8, 2, decay=0.9, dead_code_threshold=1.0).train()
    rvq.levels[0] = book
    total_reset = 0
    for _ in range(40):
        _, codes, _, stats = rvq(x.T.unsqueeze(0))
        total_reset += int(stats["codes_reset"][0])
    assert total_reset >= 4
    assert float(book.embed.abs().max()) < 50  # the far codes were moved onto the data
    _, codes, _, stats = rvq(x.T.unsqueeze(0))
    assert float(stats["utilisation"][0]) > 0.5


def test_codes_no_vector_uses_split_the_most_crowded_clusters():
    torch.manual_seed(0)
    centres = torch.tensor([[10.0, 0], [-10, 0], [0, 10], [0, -10]])
    x = centres.repeat_interleave(100, 0) + torch.randn(400, 2)
    rvq = ResidualVQ(2, 8, 2, decay=0.9, dead_code_threshold=1.0).eval()
    with torch.no_grad():
        rvq.levels[0].embed.copy_(torch.cat([centres, torch.full((4, 2), 100.0)]))  # 4 codes nowhere near the data
        rvq.levels[1].embed.copy_(0.3 * torch.randn(8, 2))

    def level0_error():
        return float((x - rvq.levels[0].embed[rvq.levels[0].nearest(x)]).pow(2).sum(1).mean())

    before = level0_error()
    moved = rvq.refresh_unused(x, seed=0)
    assert moved[0] == 4
    codes = rvq.encode(x.T.unsqueeze(0))[0]  # [N, 2]
    assert len(set(codes[:, 0].tolist())) == 8  # every code of level 0 is used now
    level0 = rvq.levels[0].embed
    assert float(level0.abs().max()) < 20  # the moved codes sit inside the data
    assert float(torch.cdist(level0[4:], x).min()) > 0  # halfway to a vector, not on one (that memorised)
    assert level0_error() < before
    again = copy.deepcopy(rvq)
    assert again.refresh_unused(x, seed=0) == [0, 0]  # nothing unused: nothing moves
    assert all(torch.equal(a, b) for a, b in zip(again.state_dict().values(), rvq.state_dict().values()))
    twin = ResidualVQ(2, 8, 2, decay=0.9, dead_code_threshold=1.0)
    with torch.no_grad():
        twin.levels[0].embed.copy_(torch.cat([centres, torch.full((4, 2), 100.0)]))
        twin.levels[1].embed.copy_(rvq.levels[1].embed)
    twin.refresh_unused(x, seed=0)
    assert torch.equal(twin.levels[0].embed, rvq.levels[0].embed)  # the same seed moves them the same way
    kept = ResidualVQ(2, 8, 2, decay=0.9, dead_code_threshold=1.0)
    with torch.no_grad():
        kept.levels[0].embed.copy_(torch.cat([centres, torch.full((4, 2), 100.0)]))
    first = kept.levels[0].embed.clone()
    assert kept.refresh_unused(x, seed=0, from_level=1)[0] == 0
    assert torch.equal(kept.levels[0].embed, first)  # levels below from_level stay as they are


def test_nan_input_does_not_touch_codebooks():
    model = tiny_model().train()
    model(mels(2, 32))  # init
    state = {k: v.clone() for k, v in model.state_dict().items()}
    x = mels(2, 32)
    x[0, 0, 0] = float("nan")
    model(x)
    after = model.state_dict()
    assert all(torch.equal(state[k], after[k]) for k in state if "quantizer" in k)


def test_state_dict_round_trips_through_safetensors(tmp_path):
    model = tiny_model(seed=3).train()
    for s in range(3):  # codebooks trained a little so the buffers are not at their defaults
        model(mels(4, 64, seed=s))
    model.set_normalization(torch.linspace(-6, -3, N_MELS), torch.linspace(1, 2, N_MELS))
    model.eval()
    state = model.state_dict()
    assert any(k.endswith("initted") for k in state) and any(k.endswith("cluster_size") for k in state)
    path = tmp_path / "vqvae.safetensors"
    save_tensors(path, state)
    fresh = ConvVQVAE(N_MELS, tiny_config())
    fresh.load_state_dict(load_tensors(path, expected=tensor_spec(fresh.state_dict())))
    fresh.eval()
    x = mels(2, 50, seed=9)
    assert torch.equal(fresh.encode(x), model.encode(x))
    assert torch.equal(fresh.decode(model.encode(x), 50), model.decode(model.encode(x), 50))
    assert fresh.quantizer.initted


def test_quantizer_matches_cpu():
    model = tiny_model().train()
    model(mels(4, 64))
    assert quantizer_matches_cpu(model, "cpu") is True
    assert quantizer_matches_cpu(model, "meta") is False  # a device that cannot run it counts as a mismatch


def test_decode_then_griffin_lim_gives_audio_of_the_right_length():
    audio = AudioConfig(sample_rate=8000, n_fft=256, hop_length=64, n_mels=N_MELS)
    model = tiny_model().eval()
    x = mels(1, 37)
    recon = model.decode(model.encode(x), frames=37)[0]
    wave = mel_to_audio(recon, audio, n_iter=4)
    assert wave.dim() == 1 and abs(wave.shape[0] - 37 * audio.hop_length) <= audio.hop_length
    assert torch.isfinite(wave).all()


def test_runs_saved_before_the_linear_path_still_load(tmp_path):
    """A manifest written before VQVAEConfig had `linear_path` describes a codec without one."""
    from dataclasses import asdict

    from distill.runs import load_vqvae, run_configs, save_vqvae, write_manifest

    cfg = tiny_config(linear_path=False)
    old_settings = {k: v for k, v in asdict(cfg).items() if k != "linear_path"}
    write_manifest(tmp_path, {"audio_config": asdict(AudioConfig(n_mels=N_MELS)), "vqvae_config": old_settings})
    assert run_configs({"vqvae_config": old_settings})[1].linear_path is False
    model = ConvVQVAE(N_MELS, cfg).eval()
    save_vqvae(tmp_path, model)
    loaded = load_vqvae(tmp_path)
    x = mels(1, 40)
    assert torch.equal(loaded.encode(x), model.encode(x))
    assert VQVAEConfig().linear_path is True  # new runs get it


def test_inference_runs_every_convolution_on_onednn_with_the_modules_numbers():
    # torch runs a one-file conv under ~20,000 input values on its generic kernels (im2col and a
    # product whose last bits depend on the width; dilated ones 3-4x slower): encoding goes through
    # oneDNN instead, transposed convs as their polyphase ordinary conv, with the modules' numbers
    from torch import nn
    from torch.profiler import profile

    from distill.models.vqvae import inference_conv

    torch.manual_seed(0)
    convs = [nn.Conv1d(32, 32, 3, padding=3, dilation=3), nn.Conv1d(16, 32, 4, stride=2, padding=1),
             nn.Conv1d(32, 8, 1), nn.ConvTranspose1d(32, 16, 4, stride=2, padding=1),
             nn.ConvTranspose1d(8, 16, 4, stride=4), nn.ConvTranspose1d(8, 6, 6, stride=2, padding=2),
             nn.ConvTranspose1d(8, 6, 5, stride=3, padding=1)]
    for conv in convs:
        for width in (1, 2, 7, 20):
            x = torch.randn(2, conv.in_channels, width)
            with torch.inference_mode():
                if isinstance(conv, nn.Conv1d) and width + 2 * conv.padding[0] < conv.kernel_size[0]:
                    continue  # too short for this conv, on either path
                assert torch.allclose(inference_conv(conv, x), conv(x), atol=1e-5), (conv, width)
    with torch.inference_mode():
        model = tiny_model(num_res_blocks=2, detail_levels=2, spectral_levels=1).eval()  # dilated blocks too
        with profile() as prof:
            model.encode(mels(1, 40), detail=True)
            model.encode_files([mels(1, 40)[0], mels(1, 13)[0]], detail=True)
    ops = {e.key for e in prof.key_averages()}
    assert "aten::mkldnn_convolution" in ops
    assert not ops & {"aten::slow_conv_dilated2d", "aten::_slow_conv2d_forward", "aten::slow_conv_transpose2d"}
    # with gradients (training) the module's own path runs
    conv = convs[0]
    x = torch.randn(1, 32, 20, requires_grad=True)
    inference_conv(conv, x).sum().backward()
    assert x.grad is not None and conv.weight.grad is not None


def test_a_file_laid_beside_others_gets_its_values_alone_bit_for_bit():
    """Files of other lengths laid end to end in rows, `gap_frames` of zeros between them, zero
    outside every file after each layer, on oneDNN: each file's stretch of the encoder's and the
    decoder's output is what the file gives alone, to the last bit. A gap one stride narrower lets a
    file read its neighbour (so the check can fail)."""
    from distill.models.vqvae import Spans, run_layers

    # dilations 1, 3, 9 (a fresh linear path's last convs start at zero: none here)
    model = tiny_model(num_res_blocks=3, linear_path=False).eval()
    ds = model.downsample
    g = torch.Generator().manual_seed(3)
    lengths = [4, 8, 12, 40, 44, 100, 400, 4, 16]  # mel frames
    assert model.gap_frames == 36  # dilation 9 at a quarter of the frame rate
    with torch.inference_mode():
        for net, channels, scale in ((model.encoder.net, N_MELS, 1), (model.decoder.net, 8, ds)):
            xs = [torch.randn(channels, n // scale, generator=g) for n in lengths]  # (the latent rate)
            alone = [run_layers(net, x[None])[0] for x in xs]
            for gap, same in ((model.gap_frames, True), (model.gap_frames - ds, False)):
                # two rows: the files in order, then in reverse, each row from a different offset
                rows = [list(range(len(xs))), list(range(len(xs)))[::-1]]
                parts, places, ends = [], [], []
                for r, order in enumerate(rows):
                    at = gap // scale if r else 0
                    for i in order:
                        parts.append((r, at, at + xs[i].shape[-1]))
                        places.append(i)
                        at += xs[i].shape[-1] + gap // scale
                    ends.append(at)
                batch = torch.zeros(len(rows), channels, max(ends) + 3 * ds // scale)
                for (r, a, b), i in zip(parts, places):
                    batch[r, :, a:b] = xs[i]
                out = run_layers(net, batch, Spans(len(rows), tuple(parts)))
                grow = out.shape[-1] // batch.shape[-1] if out.shape[-1] >= batch.shape[-1] else 1
                shrink = batch.shape[-1] // out.shape[-1] if out.shape[-1] < batch.shape[-1] else 1
                equal = [torch.equal(out[r, :, a * grow // shrink : b * grow // shrink], alone[i])
                         for (r, a, b), i in zip(parts, places)]
                assert all(equal) if same else not all(equal), (scale, gap, equal)


def test_codebook_norms_follow_every_change_to_the_codebook():
    torch.manual_seed(0)
    book = EMACodebook(8, 4, decay=0.9, dead_code_threshold=1.0)
    x = torch.randn(50, 4)

    def fresh():
        e = book.embed
        return torch.addmm(e.pow(2).sum(1), x, e.T, alpha=-2).min(dim=1).indices

    assert torch.equal(book.nearest(x), fresh())
    with torch.no_grad():
        book.embed.mul_(3.0).add_(1.0)  # in place, as EMA steps and reseeds change it
    assert torch.equal(book.nearest(x), fresh())
    book.ema_update(x, book.nearest(x))
    assert torch.equal(book.nearest(x), fresh())
    book.load_state_dict({**book.state_dict(), "embed": torch.randn(8, 4)})
    assert torch.equal(book.nearest(x), fresh())
    with torch.inference_mode():  # a codebook made in inference mode has no version counter: never cached
        made = EMACodebook(8, 4, decay=0.9, dead_code_threshold=1.0)
        assert torch.equal(made.nearest(x), torch.addmm(made.embed.pow(2).sum(1), x, made.embed.T, alpha=-2).min(1).indices)
