"""Retrieval from the training codes while sampling, the sample score's features, the verbatim share."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from distill.config import AudioConfig
from distill.models.prior import CodePrior, unflatten_codes
from distill.models.retrieval import CodeRetrieval, RetrievalSettings
from distill.sample_score import FeatureSpace, held_share, order_free_codes, patch_features, verbatim_share

K, Q = 16, 2


def untrained_prior(seq_len: int = 24, ends: bool = False) -> CodePrior:
    torch.manual_seed(0)
    return CodePrior(K, seq_len, Q, hidden_size=32, num_layers=1, num_heads=4, dropout=0.0, learn_ends=ends).eval()


def pattern_file(length: int, offset: int = 0) -> np.ndarray:
    # a "sound" whose codes follow a fixed cycle: step t is (t + offset) % 8 on level 0, 8 + that on level 1
    t = (np.arange(length) + offset) % 8
    return np.stack([t, 8 + t], axis=1)


def transitions(codes: np.ndarray) -> set:
    flat = codes.reshape(-1)
    return set(zip(flat[:-1].tolist(), flat[1:].tolist()))


def test_lookup_finds_what_followed_the_longest_context_seen_often_enough():
    files = [pattern_file(20), pattern_file(20, offset=3)]
    index = CodeRetrieval(files, K, Q, RetrievalSettings(weight=1.0, max_context_steps=4, min_count=2))
    counts = index.lookup([index.bos, 0, 1], [])  # level-0 path 0, 1: the next level-0 code is 2
    assert counts[:K].argmax() == 2 and counts[:K].sum() == counts.sum()
    assert index.lookup([index.bos, 0, 1], [2])[:K].tolist() == np.bincount([10] * int(counts.sum()), minlength=K).tolist()
    # a context met only once is not used at its full length: the lookup backs off to a shorter one
    lone = CodeRetrieval([pattern_file(6), np.array([[5, 1], [3, 2]])], K, Q, RetrievalSettings(1.0, 4, 2))
    after_5_then_3 = lone.lookup([lone.bos, 5], [3])  # (5, 3) occurs once: back off to level 0 = 3 alone
    assert after_5_then_3 is not None and after_5_then_3[:K].sum() == 2 and after_5_then_3[2] == 1
    assert lone.lookup([7, 7], [9]) is None  # level-0 code 9 never occurs at all
    # file ends are counted after a file's last step, at level 0
    ends = CodeRetrieval([pattern_file(4), pattern_file(4)], K, Q, RetrievalSettings(1.0, 4, 2))
    after_last = ends.lookup([ends.bos, 0, 1, 2, 3], [])
    assert after_last[ends.eos] == after_last.sum() == 2


def test_full_retrieval_makes_an_untrained_prior_follow_the_material():
    files = [pattern_file(30), pattern_file(30, offset=5)]
    model = untrained_prior()
    index = CodeRetrieval(files, K, Q, RetrievalSettings(weight=1.0, max_context_steps=3, min_count=2))
    g = torch.Generator().manual_seed(0)
    out = unflatten_codes(model.generate(60 * Q, generator=g, retrieval=index), Q)[0].numpy()
    seen = set().union(*(transitions(f) for f in files))
    assert transitions(out) <= seen  # every code follows one that followed it in the material
    plain = unflatten_codes(model.generate(60 * Q, generator=torch.Generator().manual_seed(0)), Q)[0].numpy()
    assert not transitions(plain) <= seen  # without retrieval an untrained model wanders


def test_weight_zero_is_the_plain_sampler_and_retrieval_is_reproducible():
    files = [pattern_file(30), pattern_file(30, offset=5)]
    model = untrained_prior()
    off = CodeRetrieval(files, K, Q, RetrievalSettings(weight=0.0))
    a = model.generate(40, generator=torch.Generator().manual_seed(3), retrieval=off)
    b = model.generate(40, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b)
    half = CodeRetrieval(files, K, Q, RetrievalSettings(weight=0.5))
    c = model.generate(40, generator=torch.Generator().manual_seed(3), retrieval=half)
    d = model.generate(40, generator=torch.Generator().manual_seed(3), retrieval=half)
    assert torch.equal(c, d)


def test_material_ends_end_clips_where_the_end_head_only_says_maybe():
    # the untrained end head says ~50 % everywhere; the material's files all end after 5 steps
    files = [pattern_file(5) for _ in range(3)]
    model = untrained_prior(seq_len=40, ends=True)
    index = CodeRetrieval(files, K, Q, RetrievalSettings(weight=1.0, max_context_steps=8, min_count=2,
                                                         max_clip_factor=0))  # only where the material ends
    _, _, starts = model.generate(40 * Q, generator=torch.Generator().manual_seed(1), retrieval=index,
                                  return_logits=True)
    clip_starts = sorted(set(starts.tolist()))
    lengths = np.diff(clip_starts) // Q
    assert len(lengths) >= 5 and (lengths == 5).all()


def test_a_clip_inside_a_repeating_sound_ends_by_the_length_of_a_file_of_the_material():
    # a long ringing (a cycle of 8 codes, 160 steps) beside two short sounds: inside the ringing every
    # context recurs mid-file, so the material alone almost never ends a clip there
    files = [pattern_file(160), pattern_file(8), pattern_file(8)]
    model = untrained_prior(seq_len=1000, ends=True)  # no window slides: every window start is a clip start

    def clip_lengths(factor: float) -> np.ndarray:
        index = CodeRetrieval(files, K, Q, RetrievalSettings(weight=1.0, max_context_steps=12, min_count=2,
                                                             max_clip_factor=factor))
        lengths = []
        for seed in range(6):
            _, _, starts = model.generate(480 * Q, generator=torch.Generator().manual_seed(seed), retrieval=index,
                                          return_logits=True)
            bounds = sorted(set(starts.tolist())) + [480 * Q]
            lengths += (np.diff(bounds) // Q).tolist()[:-1]  # the last clip is cut by the sample's end
        return np.array(lengths)

    loose, capped = clip_lengths(0.0), clip_lengths(1.0)
    assert capped.max() <= 160 < loose.max()  # no clip outlasts the longest file; without the cap one loops on
    assert (capped == 8).any() and (capped == 160).any()  # the lengths the files have


def test_a_clip_is_given_the_length_of_the_file_its_draw_picks():
    index = CodeRetrieval([pattern_file(n) for n in (4, 10, 30)], K, Q, RetrievalSettings(max_clip_factor=0.5))
    assert [index.start(draw=d).clip_cap for d in (0.0, 0.4, 0.99)] == [2, 5, 15]
    assert index.start(begins_clip=False).clip_cap is None  # a clip that began mid-sound: its length is unknown
    state = index.start(draw=0.0)
    for tok in pattern_file(2).reshape(-1):
        state.push(int(tok))
    assert state.material_end() == 1.0


def test_a_flat_model_gets_no_share_where_the_material_is_sure():
    files = [pattern_file(20), pattern_file(20, offset=3)]
    index = CodeRetrieval(files, K, Q, RetrievalSettings(weight=0.9, max_context_steps=4, min_count=2))
    state = index.start()
    for tok in pattern_file(2).reshape(-1):  # path 0, 1 on level 0: the material always goes on with 2
        state.push(int(tok))
    uniform = np.full(K, 1.0 / K)
    mixed = state.mix(uniform)
    assert mixed.sum() == pytest.approx(1.0)
    # a uniform model's 10 % is scaled by exp(H(material) - H(model)) = exp(0 - ln K) = 1 / K
    assert mixed[2] == pytest.approx(1 - 0.1 / K + 0.1 / K**2) and mixed[5] == pytest.approx(0.1 / K**2)
    sure = np.zeros(K)
    sure[7] = 1.0  # a model as sure as the material keeps its whole share
    assert state.mix(sure)[7] == pytest.approx(0.1) and state.mix(sure)[2] == pytest.approx(0.9)


def test_clips_end_where_the_material_ends_whatever_the_end_head_says():
    files = [pattern_file(4), pattern_file(4)]  # both files end after the path 0, 1, 2, 3
    index = CodeRetrieval(files, K, Q, RetrievalSettings(weight=0.5, max_context_steps=4, min_count=2))
    state = index.start()
    for tok in pattern_file(2).reshape(-1):
        state.push(int(tok))
    assert state.end_mix(0.5) == 0.0  # the material never ended after 0, 1: the head's "maybe" is ignored
    for tok in pattern_file(4)[2:].reshape(-1):
        state.push(int(tok))
    assert state.end_mix(0.01) == 1.0
    unseen = index.start(begins_clip=False)
    for tok in (9, 9):  # a context the material never had: its end rate per step, 2 ends in 10 steps
        unseen.push(tok)
    assert unseen.end_mix(0.9) == pytest.approx(0.2)


def test_verbatim_share_counts_steps_inside_long_copied_runs():
    rng = np.random.default_rng(0)
    train = [rng.integers(0, 64, size=(100, 3))]
    gen = rng.integers(0, 64, size=(60, 3))
    gen[10:30] = train[0][40:60]  # 20 copied steps
    assert verbatim_share(gen, train, min_steps=12) == pytest.approx(20 / 60)
    assert verbatim_share(gen, train, min_steps=21) == 0.0
    assert verbatim_share(rng.integers(0, 64, size=(60, 3)), train, min_steps=4) == 0.0


def test_order_free_codes_keep_each_levels_histogram():
    rng = np.random.default_rng(0)
    train = [np.stack([rng.choice([1, 2], 500, p=[0.8, 0.2]), np.full(500, 7)], 1)]
    out = order_free_codes(train, 4000, 16, rng)
    assert abs((out[:, 0] == 1).mean() - (train[0][:, 0] == 1).mean()) < 0.02 and (out[:, 1] == 7).all()


def test_patch_distance_tells_sounds_from_their_frames_in_no_order():
    # decaying tones (real), the same log-mel frames shuffled in time (order-free): the patch
    # distance to other decaying tones must be clearly larger for the shuffled version
    cfg = AudioConfig()
    rng = np.random.default_rng(0)

    def tones(n: int) -> np.ndarray:
        t = np.arange(int(1.5 * cfg.sample_rate)) / cfg.sample_rate
        parts = [np.sin(2 * np.pi * rng.uniform(150, 900) * t) * np.exp(-3 * t) for _ in range(n)]
        return np.concatenate(parts).astype(np.float32)

    from distill.sample_score import log_mel_frames

    real, other, reference = (log_mel_frames(tones(n), cfg) for n in (12, 12, 24))
    shuffled = real[:, rng.permutation(real.shape[1])]
    space = FeatureSpace.fit(patch_features(reference, cfg))
    d_real = space.distance(patch_features(real, cfg), patch_features(other, cfg))
    d_shuffled = space.distance(patch_features(shuffled, cfg), patch_features(other, cfg))
    assert d_shuffled > 2 * d_real


def held_file(runs: list[tuple[int, int]]) -> np.ndarray:
    # level 0 holds each (code, steps) in turn; level 1 varies, as finer detail does inside a held sound
    level0 = np.concatenate([[code] * steps for code, steps in runs])
    return np.stack([level0, 8 + np.arange(len(level0)) % 4], axis=1)


def test_a_held_code_goes_on_as_often_as_the_materials_holds_of_it_did():
    files = [held_file([(1, 40), (2, 5)]), held_file([(1, 6), (2, 3)] * 10)]  # code 1: ten holds of 6 steps, one of 40
    index = CodeRetrieval(files, K, Q, RetrievalSettings(weight=0.9, max_context_steps=4))
    assert index.holds[1].tolist() == [6] * 10 + [40]

    def after_hold(steps: int, settings=index) -> np.ndarray:
        state = settings.start()
        for t in range(steps):
            state.push(1)
            state.push(8 + t % 4)
        assert state.hold == steps
        return state._held(np.full(K, 1.0 / K))

    uniform = np.full(K, 1.0 / K)
    assert after_hold(3)[1] == 1.0  # the context the lookup matched is the hold itself: the guard decides
    only_beyond = CodeRetrieval(files, K, Q, RetrievalSettings(weight=0.9, max_context_steps=4, hold_guard_inside=False))
    assert np.array_equal(after_hold(3, only_beyond), uniform)  # within the context the lookup sees: left to it
    lead_in = index.start()
    for t, code in enumerate([2, 2, 1, 1]):  # "2, 2, 1, 1" occurs 9 times: the match reaches back before the hold
        lead_in.push(code)
        lead_in.push(8 + t % 4)
    assert lead_in.hold == 2 and np.array_equal(lead_in._held(uniform), uniform)  # left to the lookup
    assert after_hold(5)[1] == 1.0  # every hold of 1 that reached 5 steps lasted a 6th
    held = after_hold(6)
    assert held[1] == pytest.approx(1 / 11) and held.sum() == pytest.approx(1.0)  # one in eleven went on
    assert after_hold(20)[1] == 1.0 and after_hold(40)[1] == 0.0  # none held longer than 40
    off = CodeRetrieval(files, K, Q, RetrievalSettings(weight=0.9, max_context_steps=4, hold_guard=False))
    assert np.array_equal(after_hold(40, off), uniform)


def test_with_the_hold_guard_generated_holds_last_as_the_materials_do():
    files = [held_file([(1, 40), (2, 5)]), held_file([(1, 6), (2, 3)] * 10)]
    model = untrained_prior(seq_len=32)

    def holds_of_1(guard: bool) -> list[int]:
        index = CodeRetrieval(files, K, Q, RetrievalSettings(weight=1.0, max_context_steps=4, hold_guard=guard))
        out = []
        for seed in range(6):
            codes = unflatten_codes(model.generate(200 * Q, generator=torch.Generator().manual_seed(seed),
                                                   retrieval=index), Q)[0].numpy()[:, 0]
            edges = np.flatnonzero(np.diff(codes)) + 1
            starts, ends = np.concatenate([[0], edges]), np.concatenate([edges, [len(codes)]])
            out += [int(e - s) for s, e in zip(starts, ends) if codes[s] == 1 and e < len(codes)]
        return out

    guarded, unguarded = holds_of_1(True), holds_of_1(False)
    assert max(guarded) <= 40
    longer = lambda holds: sum(h > 6 for h in holds) / len(holds)  # noqa: E731
    assert longer(guarded) < 0.3 < longer(unguarded)  # the material: 1 hold in 11 is longer than 6 steps


def test_one_long_hold_in_the_material_does_not_make_every_hold_long():
    # code 1: ten holds of 3 steps, each after a different code, and one of 60. Inside a hold the lookup
    # backs off to "1, 1, ..." (each lead-in occurs once), which occurs 50-odd times in the long hold and
    # once in each short one, so its counts said "go on" nearly every time
    files = [held_file([(1, 60), (2, 5)]), held_file([run for c in range(3, 13) for run in ((c, 2), (1, 3))])]
    model = untrained_prior(seq_len=32)

    def holds_of_1(inside: bool) -> list[int]:
        index = CodeRetrieval(files, K, Q, RetrievalSettings(weight=1.0, hold_guard_inside=inside))
        out = []
        for seed in range(6):
            codes = unflatten_codes(model.generate(200 * Q, generator=torch.Generator().manual_seed(seed),
                                                   retrieval=index, clip_ends=False), Q)[0].numpy()[:, 0]
            edges = np.flatnonzero(np.diff(codes)) + 1
            starts, ends = np.concatenate([[0], edges]), np.concatenate([edges, [len(codes)]])
            out += [int(e - s) for s, e in zip(starts, ends) if codes[s] == 1 and s > 0 and e < len(codes)]
        return out

    inside, beyond_only = holds_of_1(True), holds_of_1(False)
    longer = lambda holds: sum(h > 3 for h in holds) / len(holds)  # noqa: E731
    assert longer(inside) < 0.3 < longer(beyond_only)  # the material: 1 hold in 11 is longer than 3 steps


def test_held_share_counts_the_time_inside_long_holds_of_one_coarse_code():
    a = held_file([(1, 5), (2, 2), (3, 4)])  # holds of 5, 2 and 4 steps
    assert held_share([a], 4) == pytest.approx(9 / 11)
    assert held_share([a, held_file([(4, 9)])], 6) == pytest.approx(9 / 20)
    assert held_share([a], 6) == 0.0 and held_share([], 3) == 0.0
