"""Analysis functions on hand-made codes: baselines, held-out bits, histogram JSD, copy fraction."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from distill.analysis import bigram_bits, copy_fraction, histogram_jsd, longest_common_run, nll_bits, unigram_bits
from distill.models.prior import CodePrior


def test_unigram_bits_by_hand():
    # level 0 always code 0 in training, level 1 codes 0/1 equally; K = 4, add-one smoothing
    train = torch.tensor([[0, 0], [0, 1], [0, 0], [0, 1]])
    ev = torch.tensor([[0, 1], [1, 0]])
    # level 0 probs: (4+1, 1, 1, 1)/8 ; level 1: (2+1, 2+1, 1, 1)/8
    expected = -(math.log2(5 / 8) + math.log2(3 / 8) + math.log2(1 / 8) + math.log2(3 / 8)) / 4
    assert math.isclose(unigram_bits([train], [ev], 4), expected)
    # no training data: uniform, exactly log2(K)
    assert math.isclose(unigram_bits([torch.zeros(0, 2, dtype=torch.long)], ev, 4), 2.0)


def test_bigram_beats_unigram_on_a_sequence_with_memory():
    rng = np.random.default_rng(0)
    walk = np.cumsum(rng.integers(0, 2, size=(400, 2)), 0) % 8  # each level steps 0 or +1
    train, ev = walk[:300], walk[300:]
    uni, bi = unigram_bits(train, ev, 8), bigram_bits(train, ev, 8)
    assert uni > 2.8 and bi < 1.5
    # on memoryless codes the bigram gains nothing
    noise = rng.integers(0, 8, size=(2000, 2))
    assert bigram_bits(noise[:1500], noise[1500:], 8) >= unigram_bits(noise[:1500], noise[1500:], 8) - 0.02


def test_level_counts_are_the_codes_histograms():
    from distill.analysis import _level_counts
    from distill.codes import level_histograms

    rng = np.random.default_rng(1)
    codes = [rng.integers(0, 8, size=(n, 3)) for n in (5, 0, 17)]  # an empty file among them
    counts = _level_counts(codes, 8, 3)
    cat = np.concatenate(codes)
    assert counts.dtype == np.float64
    assert counts.tolist() == [np.bincount(cat[:, lvl], minlength=8).tolist() for lvl in range(3)]
    assert counts.tolist() == level_histograms(codes, 8).tolist()
    assert _level_counts([np.zeros((0, 3), dtype=np.int64)], 8, 3).tolist() == [[0.0] * 8] * 3


def test_histogram_jsd_bounds_and_value():
    a = torch.tensor([[0, 5], [1, 5]])  # level 0: {0, 1}; level 1: {5}
    b = torch.tensor([[0, 6], [1, 6]])  # level 0 same usage; level 1 disjoint
    jsd = histogram_jsd(a, b, 8)
    assert len(jsd) == 2 and jsd[0] == pytest.approx(0.0, abs=1e-12) and jsd[1] == pytest.approx(1.0)
    # p = (1, 0), r = (1/2, 1/2): JSD = 0.5*KL(p|m) + 0.5*KL(r|m), m = (3/4, 1/4)
    c = [torch.tensor([[0], [0]])]
    d = [torch.tensor([[0]]), torch.tensor([[1]])]
    expected = 0.5 * math.log2(1 / 0.75) + 0.5 * (0.5 * math.log2(0.5 / 0.75) + 0.5 * math.log2(0.5 / 0.25))
    assert histogram_jsd(c, d, 2)[0] == pytest.approx(expected)


def _brute_longest(gen, refs):
    best = 0
    for r in refs:
        for i in range(len(gen)):
            for j in range(len(r)):
                k = 0
                while i + k < len(gen) and j + k < len(r) and gen[i + k] == r[j + k]:
                    k += 1
                best = max(best, k)
    return best


def test_copy_fraction_exact_on_constructed_cases():
    train = [torch.arange(30).reshape(10, 3), (torch.arange(30).reshape(10, 3) + 100)]
    # a sample made of train file 0's tokens 6..17 (12 tokens), then unseen tokens
    gen = torch.cat([torch.arange(6, 18), torch.full((12,), 999)]).reshape(8, 3)
    assert copy_fraction(gen, train) == pytest.approx(12 / 24)
    # a whole copy
    assert copy_fraction(train[1][2:6], train) == 1.0
    # a run that straddles two training files is not one copy: 28, 29 | 100, 101
    straddle = torch.tensor([[28, 29, 100], [101, 102, 7]])
    assert copy_fraction(straddle, train) == pytest.approx(3 / 6)  # 100, 101, 102
    # nothing in common
    assert copy_fraction(torch.full((4, 3), 500), train) == 0.0


def test_longest_common_run_matches_brute_force():
    rng = np.random.default_rng(1)
    for _ in range(30):
        k = int(rng.integers(2, 5))  # small alphabets: many partial matches
        refs = [rng.integers(0, k, size=int(rng.integers(1, 60))) for _ in range(int(rng.integers(1, 4)))]
        gen = rng.integers(0, k, size=int(rng.integers(1, 40)))
        assert longest_common_run(gen, refs) == _brute_longest(gen.tolist(), [r.tolist() for r in refs])


def test_copy_fraction_is_fast_on_long_inputs():
    import time

    rng = np.random.default_rng(2)
    train = [rng.integers(0, 256, size=(20_000, 3)) for _ in range(10)]  # 600 k tokens
    gen = np.concatenate([train[7][5000:5300], rng.integers(0, 256, size=(400, 3))])
    t0 = time.perf_counter()
    frac = copy_fraction(gen, train)
    assert time.perf_counter() - t0 < 5.0  # ~0.8 s on the 2-core dev machine
    assert frac == pytest.approx(900 / 2100)


def test_nll_bits_scores_every_token_in_aligned_windows():
    torch.manual_seed(0)
    m = CodePrior(8, 12, 3, hidden_size=16, num_layers=1, num_heads=2, dropout=0.0).eval()
    codes = [torch.randint(0, 8, (9, 3)), torch.randint(0, 8, (2, 3))]  # 27 tokens (3 windows), 6 tokens
    flat = [c.reshape(-1) for c in codes]
    total, n = 0.0, 0
    with torch.no_grad():
        for f in flat:
            for s in range(0, len(f), 12):
                w = f[s : s + 12]
                lp = torch.log_softmax(m(w[None])[0], -1)
                total -= float(lp[torch.arange(len(w)), w].sum())
                n += len(w)
    assert n == 33
    assert nll_bits(m, codes, batch_size=2) == pytest.approx(total / n / math.log(2), rel=1e-5)
    # an untrained model is close to knowing nothing: about log2(K) bits
    assert abs(nll_bits(m, codes) - 3.0) < 0.3
