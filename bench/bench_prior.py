"""CodePrior speed, ours vs the seed's design (bench/baseline_prior.py), side by side in one run.

    python bench/bench_prior.py                 # all tiers, ~2-3 minutes on 2 cores
    python bench/bench_prior.py --tiers 2 --threads 1

Training: tokens/s of full optimiser steps (forward, backward, clip, AdamW) at each tier's model
sizes, codebook 64/128/256, Q = 3, windows of 432 tokens, the tier's batch size capped by --max-batch
(for time), after warm-up steps; ours and the baseline alternate step by step so machine noise hits
both alike; the median step is reported. Targets: >= 1.3x at tiers 2 and 3.
generate_audio: 10 s of audio at the seed's tier-2 sizes, codes + detail + decode + Griffin-Lim, median wall
time at 24 and at 48 kHz (target <= 1 s).
Sampling: 432 new tokens at tier 2. Ours: the cached sampler, median of a few runs. Baseline: the
seed's sampler re-runs the whole prefix per token; by default its cost is measured at 12 prefix
lengths (best of 1 thread and the default thread count) and summed over all 432 (each token = one
forward over its prefix); --full-baseline runs it for real (a minute or more). Target: >= 10x.
The machine is shared: numbers move with other people's load, so compare ratios, not absolutes.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from baseline_prior import BaselinePrior  # noqa: E402
from distill.config import get_adaptive_prior_config  # noqa: E402
from distill.models.prior import CodePrior  # noqa: E402
from distill.training.prior_train import _optimizer, plain_training_step  # noqa: E402

Q = 3
SEQ = 432
TIERS = {1: (20, 64), 2: (60, 128), 3: (200, 256)}  # representative file count, codebook size


def build(tier: int, seed: int = 0):
    files, k = TIERS[tier]
    cfg = get_adaptive_prior_config(files)
    args = (k, SEQ, Q, cfg.hidden_size, cfg.num_layers, cfg.num_heads, cfg.dropout)
    torch.manual_seed(seed)
    ours = CodePrior(*args, learn_ends=cfg.learn_clip_ends)  # as trained: with the clip-end head
    torch.manual_seed(seed)
    base = BaselinePrior(*args)
    return cfg, k, ours, base


def train_steppers(cfg, k, ours, base, batch):
    x = torch.randint(0, k, (batch, SEQ), generator=torch.Generator().manual_seed(0))
    opt_ours = _optimizer(ours, cfg, torch.device("cpu"))
    # the seed's loop: plain AdamW, next-token targets
    opt_base = torch.optim.AdamW(base.parameters(), lr=cfg.learning_rate, weight_decay=cfg.weight_decay)

    def step_ours():
        plain_training_step(ours, opt_ours, x, cfg.gradient_clip_norm)

    def step_base():
        logits = base(x[:, :-1])
        loss = F.cross_entropy(logits.reshape(-1, k), x[:, 1:].reshape(-1))
        opt_base.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(base.parameters(), cfg.gradient_clip_norm)
        opt_base.step()

    return step_ours, step_base


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def timed_both(fn) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process): on a shared machine the CPU time is the steadier
    of the two, since it does not count time spent descheduled."""
    w0, c0 = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - w0, time.process_time() - c0


def bench_training(tier: int, max_batch: int, warmup: int, min_steps: int, seconds: float) -> dict:
    cfg, k, ours, base = build(tier)
    batch = max(1, min(cfg.batch_size, max_batch))
    ours.train()
    base.train()
    step_ours, step_base = train_steppers(cfg, k, ours, base, batch)
    for _ in range(warmup):
        step_ours()
        step_base()
    t_ours, t_base = [], []
    t_end = time.perf_counter() + seconds
    while len(t_ours) < min_steps or time.perf_counter() < t_end:
        t_ours.append(timed_both(step_ours))
        t_base.append(timed_both(step_base))
        if len(t_ours) >= 50:
            break
    tokens = batch * SEQ
    ours_tps = tokens / statistics.median(w for w, _ in t_ours)
    base_tps = tokens / statistics.median(w for w, _ in t_base)
    cpu_ratio = statistics.median(c for _, c in t_base) / statistics.median(c for _, c in t_ours)
    return {"tier": tier, "batch": batch, "hidden": cfg.hidden_size, "layers": cfg.num_layers, "steps": len(t_ours),
            "ours": ours_tps, "base": base_tps, "ratio": ours_tps / base_tps, "cpu_ratio": cpu_ratio}


def bench_sampling(tier: int, n_tokens: int, full_baseline: bool, runs: int) -> dict:
    cfg, k, ours, base = build(tier)
    ours.eval()
    base.eval()
    g = torch.Generator().manual_seed(0)
    # one continuous stream (no clip restarts, which would shorten the context): the slowest case
    ours.generate(32, generator=g, clip_ends=False)  # warm-up
    t_ours = statistics.median(timed(lambda: ours.generate(n_tokens, generator=g, clip_ends=False)) for _ in range(runs))
    if full_baseline:
        t_base = timed(lambda: base.generate(n_tokens, generator=g))
        how = "full run"
    else:
        # token i costs one forward over its i-token prefix (+ a softmax and a draw): measure the
        # forward at a few prefix lengths and integrate linearly over all of them
        # (at 1 thread and at the default, whichever is faster: the baseline's best case)
        lengths = sorted({max(1, round(i * n_tokens / 11)) for i in range(12)})
        cost = {}
        default_threads = torch.get_num_threads()
        with torch.no_grad():
            base.generate(4, generator=g)  # warm-up
            for n in lengths:
                x = torch.randint(0, k, (1, min(n, SEQ)))
                best = float("inf")
                for threads in sorted({1, default_threads}):
                    torch.set_num_threads(threads)
                    best = min(best, statistics.median(
                        timed(lambda: torch.multinomial(torch.softmax(base(x)[:, -1], -1), 1, generator=g)) for _ in range(3)
                    ))
                torch.set_num_threads(default_threads)
                cost[n] = best
        t_base = 0.0
        for i in range(1, n_tokens + 1):
            lo = max(n for n in lengths if n <= i)
            hi = min((n for n in lengths if n >= i), default=lo)
            w = 0.0 if hi == lo else (i - lo) / (hi - lo)
            t_base += (1 - w) * cost[lo] + w * cost[hi]
        how = f"estimated from {len(lengths)} prefix lengths"
    return {"tier": tier, "tokens": n_tokens, "ours": n_tokens / t_ours, "base": n_tokens / t_base,
            "ratio": t_base / t_ours, "ours_s": t_ours, "base_s": t_base, "how": how}


def bench_generate_audio(seconds: float, runs: int, sample_rate: int = 24_000) -> dict:
    """`generate_audio` end to end (codes, their detail from the material, decode, Griffin-Lim) with the
    seed's tier-2 sizes: a 4 × 256 prior over codebook-128 codes and the tier-2 codec (with its detail
    levels), in a throwaway run folder, with retrieval from 60 files x 10 s of training codes (the
    default sampling), at `sample_rate`. The weights and codes are random: the time of every stage does
    not depend on what the models learned."""
    import tempfile
    from dataclasses import asdict

    from distill.config import AudioConfig, get_adaptive_vqvae_config
    from distill.generate import RunCache, codes_to_audio, generate_audio, generate_codes
    from distill.models.vqvae import ConvVQVAE
    from distill.runs import build_prior, save_codes, save_detail, save_prior, save_vqvae, write_manifest

    audio, vq, prior_cfg = AudioConfig.at_rate(sample_rate), get_adaptive_vqvae_config(60, sample_rate=sample_rate), get_adaptive_prior_config(60)
    with tempfile.TemporaryDirectory() as d:
        write_manifest(d, {"audio_config": asdict(audio), "vqvae_config": asdict(vq), "prior_config": asdict(prior_cfg)})
        torch.manual_seed(0)
        save_vqvae(d, ConvVQVAE(audio.n_mels, vq).eval())
        save_prior(d, build_prior(vq, prior_cfg), prior_cfg)
        steps = int(10 * audio.frames_per_second / vq.downsample)
        rng = np.random.default_rng(0)
        names = [f"f{i}.wav" for i in range(60)]
        save_codes(d, names, [rng.integers(0, vq.codebook_size, size=(steps, vq.num_quantizers)) for _ in range(60)])
        if vq.detail_width:  # material worked on at 48 kHz
            save_detail(d, names, [rng.integers(0, vq.codebook_size, size=(steps, vq.detail_width)) for _ in range(60)])
        cache = RunCache()
        generate_audio(d, 1.0, cache=cache)  # loading the models is not generation
        run = cache.get(d)
        walls, code_s, audio_s = [], [], []
        # Random weights would end clips at random, and restarts shorten the context: time one
        # continuous stream, the slowest case.
        for seed in range(runs):
            walls.append(timed(lambda: generate_audio(d, seconds, seed=seed, cache=cache, clip_ends=False)))
            t = time.perf_counter()
            codes = generate_codes(run, seconds, seed=seed, clip_ends=False)
            code_s.append(time.perf_counter() - t)
            audio_s.append(timed(lambda: codes_to_audio(run, codes)))
    return {"seconds": seconds, "wall": statistics.median(walls), "codes": statistics.median(code_s),
            "audio": statistics.median(audio_s), "tokens": len(codes) * vq.num_quantizers,
            "size": f"{prior_cfg.num_layers} x {prior_cfg.hidden_size}", "sample_rate": sample_rate}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tiers", default="1,2,3")
    ap.add_argument("--max-batch", type=int, default=8)
    ap.add_argument("--max-batch-tier3", type=int, default=4, help="tier 3 steps take seconds each on a CPU")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--min-steps", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=15.0, help="timed training seconds per tier (both models)")
    ap.add_argument("--sample-tokens", type=int, default=SEQ)
    ap.add_argument("--sample-runs", type=int, default=3)
    ap.add_argument("--full-baseline", action="store_true")
    ap.add_argument("--generate-seconds", type=float, default=10.0)
    ap.add_argument("--generate-only", action="store_true", help="only the generate_audio timing")
    ap.add_argument("--sample-rates", default="24000,48000", help="generate_audio at each of these rates")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    tiers = [int(t) for t in args.tiers.split(",") if t]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; window {SEQ} tokens, Q={Q}")

    if args.generate_only:
        tiers = []
    if tiers:
        print("\nTraining tokens/s (median step; ours vs seed baseline)")
        print(f"{'tier':>4} {'hidden':>6} {'layers':>6} {'batch':>5} {'steps':>5} {'ours':>9} {'baseline':>9} {'ratio':>6}"
              f" {'cpu-time ratio':>14}")
    for tier in tiers:
        cap = args.max_batch_tier3 if tier == 3 else args.max_batch
        r = bench_training(tier, cap, args.warmup, args.min_steps, args.seconds)
        print(f"{r['tier']:>4} {r['hidden']:>6} {r['layers']:>6} {r['batch']:>5} {r['steps']:>5} "
              f"{r['ours']:>9.0f} {r['base']:>9.0f} {r['ratio']:>5.2f}x {r['cpu_ratio']:>13.2f}x", flush=True)

    s = None if args.generate_only else bench_sampling(2, args.sample_tokens, args.full_baseline, args.sample_runs)
    if s is not None:
        print(f"\nSampling {s['tokens']} tokens at tier 2 (baseline {s['how']})")
        print(f"  ours     {s['ours']:8.0f} tokens/s  ({s['ours_s']:.2f} s)")
        print(f"  baseline {s['base']:8.1f} tokens/s  ({s['base_s']:.2f} s)")
        print(f"  ratio    {s['ratio']:8.1f}x")

    for rate in (int(r) for r in args.sample_rates.split(",") if r):
        g = bench_generate_audio(args.generate_seconds, args.sample_runs, rate)
        print(f"\ngenerate_audio {g['seconds']:.0f} s at tier 2, {rate} Hz ({g['size']} prior, {g['tokens']} tokens; "
              f"median of {args.sample_runs}; target <= 1 s)")
        print(f"  wall     {g['wall']:.2f} s   (codes {g['codes']:.2f} s + detail, decode and Griffin-Lim "
              f"{g['audio']:.2f} s)", flush=True)


if __name__ == "__main__":
    main()
