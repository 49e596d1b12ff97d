"""Several variations at once: one batched sampling pass (B rows in one KV cache) against the same
variations made one after another, side by side in one run.

    python bench/bench_variations.py                 # tier-1 prior, the page's lengths and long ones, ~1 minute
    python bench/bench_variations.py --size tier2     # (and tier3): the priors of larger collections
    python bench/bench_variations.py --case long      # only the 10-s case

The prior has the sizes a run trains at (auto tier 1, up to 20 files: 128 wide, 2 layers, 4 heads, a
144-step window, 64 codes x 3 levels; --size tier2 / tier3 for larger collections; or the quick
preset), with the clip-end head and retrieval over 16 synthetic files of 300 steps, at the page's
defaults (follow 0.9). Both ways use the same sampler (distill/models/batch_sampling.py) on the
threads a user's run gets (distill.models.prior.sampling_threads: one; several rows from 512 wide,
two; NumPy's BLAS as it comes; printed); "sequential" is N one-row passes, which give the same codes
seed for seed (checked here, and in tests/test_variations.py). Two variation kinds: keep the shape
of an input (level 0 kept, levels 1-2 sampled), and continue an input from a point for some seconds
(here the sequential side is CodePrior.generate, the default sampling path; the prior sees at most
the last half window before the point, as distill.variations.continue_from gives it).
Two cases (--case): "page", the variations panel's lengths (keep the shape of a 3-s sound, the demo's
longest files; continue for 2 s from 1 s in), where nothing slides the window; and "long", 10 s each
(continue from 10 s in), where the window slides (5 times in a continuation) and every row re-primes
its own window, work that batching cannot share.
Repeats alternate the two ways so machine noise hits both alike; medians are reported, and the
ratio is the median of each repeat's own ratio (its two timings back to back), with their range.
Target: batched >= 2x faster than sequential for N = 4.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from distill.models.batch_sampling import sample_rows  # noqa: E402
from distill.models.prior import CodePrior, sampling_threads  # noqa: E402
from distill.models.retrieval import CodeRetrieval, RetrievalSettings  # noqa: E402

K, Q = 64, 3
# hidden, layers, heads, context steps: the auto tiers' priors (tier 1 up to 20 files, tier 2 up to 100,
# tier 3 past that; distill/config.py) and the quick preset's
SIZES = {"tier1": (128, 2, 4, 144), "tier2": (256, 4, 4, 144), "tier3": (512, 6, 8, 144), "quick": (64, 2, 4, 48)}
STEPS_PER_SECOND = 24_000 / 256 / 4
# (input kept in shape, continued from, new material), seconds: the variations panel's defaults
# (distill/app/page/variations_tab.py: continue 2 s from 1 s; a kept shape is a whole sound, 3 s the
# demo's longest), and long ones
CASES = {"page": (3.0, 1.0, 2.0), "long": (10.0, 10.0, 10.0)}


def material(files: int = 16, steps: int = 300, seed: int = 0) -> list[np.ndarray]:
    # codes with some order: level 0 holds a value for a few steps, finer levels vary
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(files):
        level0 = np.repeat(rng.integers(0, 24, steps // 4 + 1), 4)[:steps]
        out.append(np.stack([level0, (level0 * 5 + rng.integers(0, 6, steps)) % K, rng.integers(0, K, steps)], 1))
    return out


def blas_threads() -> str:
    from threadpoolctl import threadpool_info

    return ", ".join(f"{i['num_threads']} ({i['internal_api']})" for i in threadpool_info()
                     if i["user_api"] == "blas") or "?"


def gens(seeds):
    return [torch.Generator().manual_seed(s) for s in seeds]


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", choices=sorted(SIZES), default="tier1")
    ap.add_argument("--n", type=int, default=4, help="variations at once")
    ap.add_argument("--case", choices=("page", "long", "both"), default="both",
                    help="page: the variations panel's lengths; long: 10 s each")
    ap.add_argument("--seconds", type=float, help="override: the input kept in shape and the new material, seconds")
    ap.add_argument("--repeats", type=int, default=7)
    args = ap.parse_args()
    torch.set_num_threads(1)
    hidden, layers, heads, context = SIZES[args.size]
    torch.manual_seed(0)
    model = CodePrior(K, context * Q, Q, hidden, layers, heads, 0.0, learn_ends=True).eval()
    files = material()
    index = CodeRetrieval(files, K, Q, RetrievalSettings(weight=0.9))
    print(f"prior {args.size}: {hidden} wide, {layers} layers, {heads} heads, window {context} steps; K={K}, Q={Q}; "
          f"retrieval follow 0.9; N={args.n}; torch on {sampling_threads(model, args.n)} thread(s) batched, "
          f"{sampling_threads(model)} one row at a time; NumPy's BLAS on {blas_threads()}")
    cases = ("page", "long") if args.case == "both" else (args.case,)
    for case in cases:
        shape_s, at_s, new_s = CASES[case]
        if args.seconds:
            shape_s = new_s = args.seconds
        run_case(model, files, index, context, args, case, shape_s, at_s, new_s)
    return 0



def run_case(model, files, index, context, args, case, shape_s, at_s, new_s):
    seeds = list(range(args.n))
    src = np.concatenate(files)  # the input: the material itself, as a training file would be
    shape_steps, at, new = (max(1, round(x * STEPS_PER_SECOND)) for x in (shape_s, at_s, new_s))
    forced = src[:shape_steps].copy()
    forced[:, 1:] = -1
    forced = forced.reshape(-1)
    prompt = torch.as_tensor(src[:at][-context // 2:].reshape(-1))  # as distill.variations.continue_from

    def shape_batched():
        return list(sample_rows(model, forced.size, gens(seeds), forced=forced, clip_ends=False, retrieval=index).tokens)

    def shape_sequential():
        return [sample_rows(model, forced.size, gens([s]), forced=forced, clip_ends=False, retrieval=index).tokens[0]
                for s in seeds]

    def cont_batched():
        return list(sample_rows(model, new * Q, gens(seeds), prompt=prompt, clip_ends=False, retrieval=index).tokens)

    def cont_sequential():
        return [model.generate(new * Q, prompt=prompt[None], generator=gens([s])[0], clip_ends=False,
                               retrieval=index)[0] for s in seeds]

    print(f"{case}: keep the shape of {shape_s:g} s ({shape_steps} steps); continue {new_s:g} s ({new} steps) "
          f"from {at_s:g} s in")
    for name, batched, sequential in (("keep the shape", shape_batched, shape_sequential),
                                      ("continue", cont_batched, cont_sequential)):
        same = all(torch.equal(a, b) for a, b in zip(batched(), sequential()))  # also warms both up
        tb, ts = [], []
        for r in range(args.repeats):
            for fn, into in ((batched, tb), (sequential, ts)) if r % 2 == 0 else ((sequential, ts), (batched, tb)):
                t0 = time.perf_counter()
                fn()
                into.append(time.perf_counter() - t0)
        b, s = statistics.median(tb), statistics.median(ts)
        # each repeat's own ratio (its two timings run back to back): steadier on a noisy machine
        ratios = sorted(x / y for x, y in zip(ts, tb))
        print(f"  {name:15s} batched {b:6.3f} s   {args.n} sequential {s:6.3f} s   ratio {statistics.median(ratios):4.2f}x "
              f"(repeats {ratios[0]:.2f}-{ratios[-1]:.2f})   same codes: {'yes' if same else 'NO'}")


if __name__ == "__main__":
    raise SystemExit(main())
