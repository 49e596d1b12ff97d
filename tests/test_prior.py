"""CodePrior: code layout, causality, the cached sampler against the full forward, sampling controls."""
from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from distill.models.prior import (
    Block,
    CodePrior,
    KVCache,
    TorchStepper,
    default_backend,
    estimate_prior_memory_bytes,
    flatten_codes,
    nucleus,
    prior_param_count,
    unflatten_codes,
)
from distill.config import PriorConfig
from distill.storage import load_tensors, save_tensors, tensor_spec

K, Q = 16, 3


def tiny(seq_len: int = 24, layers: int = 2, seed: int = 0) -> CodePrior:
    torch.manual_seed(seed)
    m = CodePrior(K, seq_len, Q, hidden_size=32, num_layers=layers, num_heads=4, dropout=0.1).eval()
    # random (not init-sized) weights so every path matters numerically
    with torch.no_grad():
        for p in m.parameters():
            p.normal_(0, 0.3)
    return m


def test_flatten_round_trip_and_layout():
    codes = torch.randint(0, 100, (3, 7, 4))
    flat = flatten_codes(codes)
    assert flat.shape == (3, 28)
    # position-major: step 0's levels first
    assert flat[1, :4].tolist() == codes[1, 0].tolist()
    assert flat[1, 4:8].tolist() == codes[1, 1].tolist()
    assert torch.equal(unflatten_codes(flat, 4), codes)
    assert torch.equal(flatten_codes(unflatten_codes(flat, 4)), flat)
    with pytest.raises(ValueError):
        unflatten_codes(flat[:, :27], 4)


def test_forward_shapes_and_length_check():
    m = tiny()
    for t in (1, 5, 24):
        assert m(torch.randint(0, K, (2, t))).shape == (2, t, K)
    with pytest.raises(ValueError):
        m(torch.randint(0, K, (1, 25)))
    with pytest.raises(ValueError):
        CodePrior(K, 25, Q)  # seq_len must be whole steps


def test_causality_and_start_token():
    m = tiny()
    x = torch.randint(0, K, (1, 24))
    base = m(x)
    for t in (0, 5, 12, 23):
        y = x.clone()
        y[0, t] = (y[0, t] + 1) % K
        out = m(y)
        # logits at positions <= t do not depend on token t (it is what position t predicts)
        assert torch.allclose(out[0, : t + 1], base[0, : t + 1], atol=1e-6)
        if t < 23:
            assert not torch.allclose(out[0, t + 1 :], base[0, t + 1 :], atol=1e-6)
    # position 0 sees only the start token: identical for any input
    other = m(torch.randint(0, K, (1, 3)))
    assert torch.allclose(other[0, 0], base[0, 0], atol=1e-6)


@pytest.mark.parametrize("hidden,heads", [(32, 4), (24, 2), (16, 1)])
def test_block_steps_equal_its_forward(hidden, heads):
    torch.manual_seed(hidden + heads)
    blk = Block(hidden, heads, dropout=0.3).eval()
    with torch.no_grad():
        for p in blk.parameters():
            p.normal_(0, 0.3)
        x = torch.randn(1, 11, hidden)
        full = blk(x)
        cache = KVCache.empty(heads, 16, hidden // heads)
        stepped = torch.cat([blk.step(x[:, i : i + 1], cache, i) for i in range(11)], dim=1)
        assert torch.allclose(stepped, full, atol=1e-5), (stepped - full).abs().max()
        # several positions at once (a window's start and prompt), then one at a time
        cache = KVCache.empty(heads, 16, hidden // heads)
        head = blk.step(x[:, :6], cache, 0)
        rest = [blk.step(x[:, i : i + 1], cache, i) for i in range(6, 11)]
        assert torch.allclose(torch.cat([head, *rest], dim=1), full, atol=1e-5)
        with pytest.raises(ValueError):
            blk.step(x[:, :2], cache, 3)


@pytest.mark.parametrize("layers,heads,ends", [(1, 1, False), (2, 4, True), (3, 2, False), (3, 8, True)])
def test_torch_steps_equal_the_full_forward_with_and_without_the_end_head(layers, heads, ends):
    torch.manual_seed(layers * 10 + heads)
    m = CodePrior(K, 24, Q, hidden_size=32, num_layers=layers, num_heads=heads, dropout=0.2, learn_ends=ends).eval()
    with torch.no_grad():
        for p in m.parameters():
            p.normal_(0, 0.3)
        x = torch.randint(0, K, (1, 24))
        for resume in ((False, True) if ends else (False,)):
            logits, end_logits = m.forward_with_ends(x, resume=resume)
            steps = TorchStepper(m)
            got = [steps.prime(m.start_vector(resume), None)]
            got_ends = [steps.end_logit()] if ends else []
            for pos in range(1, 24):
                got.append(steps.step(x[0, pos - 1 : pos], pos))
                if ends:
                    got_ends.append(steps.end_logit())
            assert torch.allclose(torch.stack(got), logits[0], atol=1e-4)
            if ends:
                assert torch.allclose(torch.tensor(got_ends), end_logits[0], atol=1e-4)
            else:
                assert end_logits is None
                with pytest.raises(ValueError):
                    steps.end_logit()
            # a prompt fed in one window pass lands where stepping lands
            primed = TorchStepper(m).prime(m.start_vector(resume), x[0, :10])
            assert torch.allclose(primed, logits[0, 10], atol=1e-4)


def test_backend_is_explicit_with_one_default():
    assert default_backend(torch.device("cpu")) == "numpy"
    assert default_backend(torch.device("cuda")) == "torch" and default_backend("mps") == "torch"
    m = tiny()
    assert torch.equal(m.generate(20, temperature=0), m.generate(20, temperature=0, backend="numpy"))
    with pytest.raises(ValueError):
        m.generate(3, backend="jax")
    from distill.models.cpu_decode import CpuStepper

    with pytest.raises(ValueError):  # no clip-end head to ask
        CpuStepper(m).end_logit_row(0)


def _check_against_forward(m: CodePrior, tokens, logits, starts, prompt=None):
    stream = tokens[0] if prompt is None else torch.cat([prompt[0], tokens[0]])
    p = 0 if prompt is None else prompt.shape[1]
    with torch.no_grad():
        for i in range(tokens.shape[1]):
            w0 = int(starts[i])
            n = p + i
            assert w0 % Q == 0 and n - w0 < m.seq_len
            # a window begins a clip at the stream's start or where a clip restarted (a token whose
            # window starts at itself); otherwise, after a slide, it resumes inside one
            fresh = w0 == 0 or (w0 >= p and int(starts[w0 - p]) == w0)
            full = m(stream[w0 : n + 1].unsqueeze(0), resume=not fresh)[0, -1]
            assert torch.allclose(full, logits[i], atol=1e-4), (i, (full - logits[i]).abs().max())


@pytest.fixture(params=["numpy-steps", "torch-steps"])
def step_path(request):
    """The sampler's `backend`: one-token steps in NumPy (CpuStepper, the CPU default) or in torch
    (Block.step, the default elsewhere). Both are checked here."""
    return {"numpy-steps": "numpy", "torch-steps": "torch"}[request.param]


def test_cache_matches_full_forward_every_step_including_slides(step_path):
    m = tiny(seq_len=24)
    g = torch.Generator().manual_seed(3)
    tokens, logits, starts = m.generate(70, generator=g, return_logits=True, backend=step_path)
    assert tokens.shape == (1, 70) and tokens.dtype == torch.long
    assert len(set(starts.tolist())) >= 3  # it slid more than once
    _check_against_forward(m, tokens, logits, starts)


@pytest.mark.parametrize("p_len", [4, 9, 40])  # not a whole step; whole steps; longer than the window
def test_prompt_continues_given_codes(p_len, step_path):
    m = tiny(seq_len=24)
    prompt = torch.randint(0, K, (1, p_len), dtype=torch.int16)  # stored codes may be narrow ints
    tokens, logits, starts = m.generate(20, prompt=prompt, generator=torch.Generator().manual_seed(0), return_logits=True,
                                        backend=step_path)
    assert tokens.shape == (1, 20)  # only the new tokens
    _check_against_forward(m, tokens, logits, starts, prompt=prompt.long())
    with pytest.raises(ValueError):
        m.generate(3, prompt=torch.full((1, 3), K), backend=step_path)


def test_numpy_steps_match_torch_steps_at_real_sizes():
    torch.manual_seed(0)
    m = CodePrior(128, 48, 3, hidden_size=256, num_layers=2, num_heads=4, dropout=0.0).eval()
    _, la, sa = m.generate(120, generator=torch.Generator().manual_seed(1), return_logits=True, backend="numpy")
    _, lb, sb = m.generate(120, prompt=None, generator=torch.Generator().manual_seed(1), return_logits=True,
                           backend="torch")
    assert torch.equal(sa, sb)
    # same tokens drawn up to the first one where float rounding could tip a draw; logits agree closely
    assert (la[:20] - lb[:20]).abs().max() < 1e-4


def test_numpy_weights_follow_changed_parameters():
    m = tiny(seq_len=24)
    m.generate(5, generator=torch.Generator().manual_seed(0))  # folds and caches the weights
    with torch.no_grad():
        m.blocks[0].fc.weight.mul_(-1.5)  # in place, as an optimiser step would
    tokens, logits, starts = m.generate(30, generator=torch.Generator().manual_seed(2), return_logits=True)
    _check_against_forward(m, tokens, logits, starts)
    m.load_state_dict(tiny(seq_len=24, seed=1).state_dict())  # new weights loaded into the same model
    tokens, logits, starts = m.generate(30, generator=torch.Generator().manual_seed(2), return_logits=True)
    _check_against_forward(m, tokens, logits, starts)


def test_generation_far_past_window_and_zero_tokens():
    m = tiny(seq_len=12)
    out = m.generate(200, generator=torch.Generator().manual_seed(0))
    assert out.shape == (1, 200) and int(out.min()) >= 0 and int(out.max()) < K
    assert m.generate(0).shape == (1, 0)


def test_greedy_paths_agree_and_follow_argmax():
    m = tiny()
    a, logits, _ = m.generate(30, temperature=0.0, return_logits=True)
    b = m.generate(30, top_k=1, generator=torch.Generator().manual_seed(5))
    assert torch.equal(a, b)
    assert torch.equal(a[0], logits.argmax(-1))


def test_seed_reproducibility():
    m = tiny()
    a = m.generate(50, temperature=1.0, top_k=5, top_p=0.9, generator=torch.Generator().manual_seed(11))
    b = m.generate(50, temperature=1.0, top_k=5, top_p=0.9, generator=torch.Generator().manual_seed(11))
    c = m.generate(50, temperature=1.0, top_k=5, top_p=0.9, generator=torch.Generator().manual_seed(12))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_top_k_only_draws_from_the_k_best():
    m = tiny()
    tokens, logits, _ = m.generate(200, top_k=3, temperature=2.0, generator=torch.Generator().manual_seed(0), return_logits=True)
    top3 = logits.topk(3, -1).indices
    assert (top3 == tokens[0, :, None]).any(-1).all()
    assert len(set(tokens[0].tolist())) > 3  # still random across steps


def test_top_p_keeps_only_the_nucleus():
    probs = torch.tensor([0.5, 0.05, 0.3, 0.15])
    kept = nucleus(probs, 0.75)  # 0.5 + 0.3 reaches 0.75: only those two
    assert torch.allclose(kept, torch.tensor([0.625, 0.0, 0.375, 0.0]))
    assert torch.equal(nucleus(probs, 0.1) > 0, torch.tensor([True, False, False, False]))
    assert torch.equal(nucleus(probs, 0.5) > 0, torch.tensor([True, False, False, False]))  # 0.5 reaches 0.5
    assert torch.allclose(nucleus(probs, 1.0), probs)
    # in the sampler: every draw lies in the step's nucleus
    m = tiny()
    tokens, logits, _ = m.generate(150, top_p=0.6, generator=torch.Generator().manual_seed(1), return_logits=True)
    allowed = nucleus(torch.softmax(logits, -1), 0.6) > 0
    assert allowed[torch.arange(150), tokens[0]].all()


def test_temperature_sharpens():
    m = tiny()
    # a fixed prompt, many single draws: low temperature concentrates on the argmax
    prompt = torch.randint(0, K, (1, 6), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        best = int(m(torch.cat([prompt, prompt[:, :1]], 1))[0, -1].argmax())

    def hit_rate(temp):
        g = torch.Generator().manual_seed(0)
        return sum(int(m.generate(1, temperature=temp, prompt=prompt, generator=g)) == best for _ in range(150)) / 150

    cold, warm = hit_rate(0.2), hit_rate(3.0)
    assert cold > 0.9 and cold > warm + 0.3


def test_save_load_identical_logits(tmp_path):
    m = tiny()
    save_tensors(tmp_path / "prior.safetensors", m.state_dict())
    fresh = CodePrior(**m.settings()).eval()
    fresh.load_state_dict(load_tensors(tmp_path / "prior.safetensors", expected=tensor_spec(fresh.state_dict())))
    x = torch.randint(0, K, (2, 24))
    assert torch.equal(m(x), fresh(x))
    assert torch.equal(m.generate(20, temperature=0), fresh.generate(20, temperature=0))


def test_param_count_and_memory_estimate():
    cfg = PriorConfig(hidden_size=32, num_layers=2, num_heads=4, context_steps=8, batch_size=4)
    for ends in (False, True):
        m = CodePrior(K, 8 * Q, Q, 32, 2, 4, 0.0, learn_ends=ends)
        counted = prior_param_count(replace(cfg, learn_clip_ends=ends), K, Q)
        assert counted == sum(p.numel() for p in m.parameters())
    small = estimate_prior_memory_bytes(cfg, K, Q)
    big = estimate_prior_memory_bytes(PriorConfig(hidden_size=512, num_layers=6, num_heads=8), 256, 3)
    assert 4 * prior_param_count(cfg, K, Q) < small < big


def test_from_config_builds_the_configured_model():
    cfg = PriorConfig(hidden_size=32, num_layers=3, num_heads=2, dropout=0.1, context_steps=8, learn_clip_ends=True)
    m = CodePrior.from_config(cfg, K, Q)
    assert m.settings() == {"codebook_size": K, "seq_len": 8 * Q, "num_quantizers": Q, "hidden_size": 32,
                            "num_layers": 3, "num_heads": 2, "dropout": 0.1, "learn_ends": True}
    for ends in (False, True):
        sized = replace(cfg, learn_clip_ends=ends)
        assert sum(p.numel() for p in CodePrior.from_config(sized, K, Q).parameters()) == prior_param_count(sized, K, Q)


def test_train_mode_restored_after_generate():
    m = tiny().train()
    m.generate(5, generator=torch.Generator().manual_seed(0))
    assert m.training


def _with_end_bias(m: CodePrior, bias: float) -> CodePrior:
    with torch.no_grad():
        m.end_head.weight.zero_()
        m.end_head.bias.fill_(bias)
    return m


def test_clip_ends_restart_from_the_start_token_and_match_the_full_forward(step_path):
    torch.manual_seed(0)
    m = CodePrior(K, 24, Q, hidden_size=32, num_layers=2, num_heads=4, dropout=0.0, learn_ends=True).eval()
    assert m.settings()["learn_ends"] is True and CodePrior(**m.settings()).end_head is not None
    x = torch.randint(0, K, (2, 24))
    logits, end_logits = m.forward_with_ends(x)
    assert torch.equal(logits, m(x)) and end_logits.shape == (2, 24)

    # an end head that is sure every clip has ended: each time step is a clip of its own
    tokens, logits, starts = _with_end_bias(m, 30.0).generate(
        30, generator=torch.Generator().manual_seed(1), return_logits=True, backend=step_path)
    assert starts.tolist() == [i // Q * Q for i in range(30)]
    _check_against_forward(m, tokens, logits, starts)
    greedy = m.generate(12, temperature=0, backend=step_path)
    assert torch.equal(greedy, m.generate(3, temperature=0, backend=step_path).repeat(1, 4))  # the same one-step clip each time
    # undecided (p = 1/2): clips of varying length, every step still equal to the full forward
    tokens, logits, starts = _with_end_bias(m, 0.0).generate(
        90, generator=torch.Generator().manual_seed(2), return_logits=True, backend=step_path)
    restarts = [i for i in range(1, 90) if starts[i] == i]
    assert 8 < len(restarts) < 25, restarts
    _check_against_forward(m, tokens, logits, starts)
    # never ending: only the window slides, and windows after a slide begin with the resume token
    tokens, logits, starts = _with_end_bias(m, -30.0).generate(
        70, generator=torch.Generator().manual_seed(3), return_logits=True, backend=step_path)
    assert all(int(starts[i]) < i for i in range(1, 70)) and int(starts[-1]) > 0
    _check_against_forward(m, tokens, logits, starts)
    window = tokens[:, int(starts[-1]):]
    with torch.no_grad():
        assert not torch.allclose(m(window, resume=True), m(window))  # the two start vectors differ
    # clip_ends=False: the plain sampler, token for token (once the resume token, which windows
    # after a slide begin with, is the start token)
    plain = CodePrior(K, 24, Q, hidden_size=32, num_layers=2, num_heads=4, dropout=0.0).eval()
    plain.load_state_dict({k: v for k, v in m.state_dict().items() if not k.startswith(("end_head", "resume_emb"))})
    with torch.no_grad():
        m.resume_emb.copy_(m.start_emb)
    expected = plain.generate(70, generator=torch.Generator().manual_seed(3), backend=step_path)
    _with_end_bias(m, 30.0)
    assert torch.equal(m.generate(70, generator=torch.Generator().manual_seed(3), clip_ends=False, backend=step_path), expected)


def test_numpy_and_torch_steps_end_clips_alike():
    torch.manual_seed(0)
    m = CodePrior(K, 24, Q, hidden_size=32, num_layers=2, num_heads=4, dropout=0.0, learn_ends=True).eval()
    with torch.no_grad():
        m.end_head.weight.normal_(0, 0.15)  # end probabilities that depend on the state, not just a bias
        m.end_head.bias.fill_(-1.0)
    numpy_run = m.generate(60, generator=torch.Generator().manual_seed(4), return_logits=True, backend="numpy")
    torch_run = m.generate(60, generator=torch.Generator().manual_seed(4), return_logits=True, backend="torch")
    restarts = [i for i in range(1, 60) if int(torch_run[2][i]) == i]
    assert 2 <= len(restarts) <= 16, restarts
    assert torch.equal(numpy_run[0], torch_run[0]) and torch.equal(numpy_run[2], torch_run[2])
    assert (numpy_run[1] - torch_run[1]).abs().max() < 1e-4
