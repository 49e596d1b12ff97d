"""The judgement of how much a sequence model learned (distill/learning.py): thresholds and words."""
from __future__ import annotations

import math

from distill.learning import CLEAR_RATIO, LITTLE_RATIO, Learned, judge_manifest, judge_prior

K = 64
CHANCE = math.log2(K)  # 6 bits


def test_at_chance_is_little_and_says_what_to_do():
    # the quick demo run of the issue: perplexity 64 of 64 codes, kept at step 2 of 14
    v = judge_prior(6.01, K, unigram_bits=7.27, steps=14, best_step=2, preset="quick")
    assert v.level == Learned.LITTLE and not v.ok
    assert "learned little about how your sounds unfold in time" in v.headline
    assert "picking codes at random" in v.headline  # the random guess is the better bar here
    assert "stopped improving almost as soon as it started" in v.headline
    assert "more minutes" in v.advice and "more material" in v.advice and "Auto preset" in v.advice
    assert "step 2 of 14" in v.detail


def test_thresholds_against_the_better_order_free_guess():
    uni = 5.0  # better than random (6 bits): the bar is the unigram
    assert judge_prior(uni * LITTLE_RATIO, K, uni).level == Learned.LITTLE
    assert judge_prior(uni * (LITTLE_RATIO - 0.01), K, uni).level == Learned.SOME
    assert judge_prior(uni * CLEAR_RATIO, K, uni).level == Learned.SOME
    assert judge_prior(uni * (CLEAR_RATIO - 0.01), K, uni).level == Learned.CLEAR
    some = judge_prior(uni * 0.9, K, uni)
    assert "10 % better than guessing from how often each code is used" in some.headline
    assert judge_prior(uni * 0.5, K, uni).advice == ""
    # without a unigram, random picking is the bar
    assert judge_prior(CHANCE * 0.99, K).level == Learned.LITTLE
    assert judge_prior(CHANCE * 0.8, K).level == Learned.CLEAR


def test_missing_numbers_give_no_verdict():
    assert judge_prior(None, K) is None
    assert judge_prior(float("nan"), K) is None
    assert judge_prior(5.0, None) is None
    assert judge_prior(1e6, K) is None and judge_prior(-1.0, K) is None  # a stranger's manifest
    assert judge_prior(5.0, True) is None and judge_prior(5.0, 10 ** 9) is None
    assert judge_prior(5.0, K, unigram_bits=1e9).unigram_bits is None
    assert judge_manifest({}) is None
    assert judge_manifest({"results": {"analysis": "x"}}) is None


def test_from_a_manifest():
    m = {"vqvae_config": {"codebook_size": 64}, "options": {"preset": "auto"},
         "results": {"analysis": {"val_nll_bits": 4.0, "unigram_bits": 5.5}, "prior": {"steps": 900, "best_step": 880}}}
    v = judge_manifest(m)
    assert v.level == Learned.CLEAR and v.to_dict()["ratio"] == round(4.0 / 5.5, 4)


def test_an_auto_run_is_not_told_to_use_auto():
    v = judge_prior(6.0, K, 6.5, preset="auto")
    assert "Auto preset" not in v.advice and "more minutes" in v.advice
