"""How far a trained run's generated codes are from its training codes, and where the gap comes from.

    python bench/bench_prior_samples.py bench/out/runs/RUN [--samples 8] [--seconds 10] [--sets 2]

Prints, per quantiser level, the histogram Jensen-Shannon divergence (bits) against the training codes of:
- generated samples (T = 1, no truncation), for `--sets` independent sets of seeds; for a prior that
  learnt where files end, both with clip ends (the default) and as one continuous stream, side by side,
  with the lengths of the generated clips next to the training files' lengths;
- held-out real codes of the same size (the issue's reference: the first held-out files in order);
- random stretches of the training files themselves, cut like the samples, and whole training files in
  random order against the remaining training files (two views of what a perfect generator of the
  training material would score at this size: the floor set by sample size alone);
- the model's teacher-forced predictions averaged over the training windows (its marginal when it
  never sees its own output: near zero means any excess above comes from sampling drift);
- generated samples split into time segments (does the gap grow as a sample runs on?).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("run_dir")
    ap.add_argument("--samples", type=int, default=8)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--sets", type=int, default=2)
    args = ap.parse_args()

    import numpy as np
    import torch

    from distill.analysis import distribution_jsd, histogram_jsd
    from distill.evaluate import _take_tokens
    from distill.generate import generate_codes, load_run
    from distill.runs import load_codes, read_manifest

    run = load_run(args.run_dir)
    manifest = read_manifest(args.run_dir)
    val_names = list(manifest["split"]["val"])
    by_name = load_codes(args.run_dir)
    train = [torch.as_tensor(c) for n, c in by_name.items() if n not in set(val_names)]
    held = [torch.as_tensor(by_name[n]) for n in val_names]
    k = run.vqvae.quantizer.codebook_size
    fmt = lambda xs: " ".join(f"{x:.4f}" for x in xs)  # noqa: E731

    def summary(rows) -> str:
        rows = np.asarray(rows)
        return "  ".join(f"{m:.4f} ± {d:.4f}" for m, d in zip(rows.mean(0), rows.std(0)))

    ends = run.prior.end_head is not None
    sets, plain_sets = [], []
    for s in range(args.sets):
        sets.append([torch.as_tensor(generate_codes(run, args.seconds, seed=1000 * s + i)) for i in range(args.samples)])
        if ends:
            plain_sets.append([torch.as_tensor(generate_codes(run, args.seconds, seed=1000 * s + i, clip_ends=False))
                               for i in range(args.samples)])
    frames = sets[0][0].shape[0]
    tokens = sum(int(g.numel()) for g in sets[0])
    print(f"{args.samples} samples x {args.seconds:g} s ({tokens} tokens) per set; JSD per level, mean ± sd over draws")
    label = "generated, with clip ends" if ends else "generated (no end head)"
    print(f"{label + f', {args.sets} seed sets:':48s}{summary([histogram_jsd(g, train, k) for g in sets])}")
    if ends:
        print(f"{f'generated, one stream, {args.sets} seed sets:':48s}{summary([histogram_jsd(g, train, k) for g in plain_sets])}")
    print(f"held-out, first files in order (the reference): {fmt(histogram_jsd(_take_tokens(held, tokens), train, k))}")
    rng = np.random.default_rng(0)
    held_rows = [histogram_jsd(_take_tokens([held[i] for i in rng.permutation(len(held))], tokens), train, k)
                 for _ in range(20)]
    print(f"held-out, 20 random orders of its files:        {summary(held_rows)}")
    stream = torch.cat([train[i] for i in rng.permutation(len(train))])
    stretch_rows = []
    for _ in range(20):
        starts = rng.integers(0, max(1, len(stream) - frames), args.samples)
        stretch_rows.append(histogram_jsd([stream[int(a):int(a) + frames] for a in starts], train, k))
    print(f"training stretches cut like the samples (x20):  {summary(stretch_rows)}")
    file_rows = []
    for _ in range(40):
        order = rng.permutation(len(train))
        sizes = np.cumsum([len(train[i]) for i in order])
        cut = int(np.searchsorted(sizes, len(sets[0]) * frames)) + 1
        drawn = _take_tokens([train[i] for i in order[:cut]], tokens)
        file_rows.append(histogram_jsd(drawn, [train[i] for i in order[cut:]], k))
    print(f"training files vs the other training files (x40): {summary(file_rows)}")

    model = run.prior
    q = train[0].shape[1]
    pred = np.zeros((q, k))
    real = np.zeros((q, k))
    window = model.seq_len
    with torch.inference_mode():
        for c in train:
            flat = c.reshape(-1).long()
            for a in range(0, len(flat), window):
                x = flat[a:a + window][None]
                probs = torch.softmax(model(x, resume=a > 0).float(), -1)[0].numpy()
                levels = np.arange(x.shape[1]) % q
                for lv in range(q):
                    pred[lv] += probs[levels == lv].sum(0)
                    real[lv] += np.bincount(x[0, levels == lv].numpy(), minlength=k)
    print(f"teacher-forced predictions, all training windows: {fmt([distribution_jsd(pred[lv], real[lv]) for lv in range(q)])}")

    if ends:
        lengths = []
        for i in range(args.samples * args.sets):
            g = torch.Generator().manual_seed(i)
            _, _, starts = model.generate(frames * q, generator=g, return_logits=True)
            cuts = [0] + [n for n in range(q, len(starts), q) if int(starts[n]) == n] + [len(starts)]
            lengths += [(b - a) // q for a, b in zip(cuts, cuts[1:-1])]  # whole clips (the last is cut short)
        real = np.array([len(c) for c in train])
        got = np.array(lengths) if lengths else np.zeros(1)
        print(f"clip lengths in steps, median / mean / 90th percentile: generated {np.median(got):.0f} / "
              f"{got.mean():.1f} / {np.percentile(got, 90):.0f} ({len(lengths)} whole clips); training files "
              f"{np.median(real):.0f} / {real.mean():.1f} / {np.percentile(real, 90):.0f}")

    fps = frames / args.seconds
    step = max(1.0, args.seconds / 5)
    pooled = [g for gen in sets for g in gen]
    a = 0.0
    while a < args.seconds - 1e-9:
        seg = [g[int(a * fps):int((a + step) * fps)] for g in pooled]
        print(f"generated, {a:4.1f}-{a + step:4.1f} s of each sample: {fmt(histogram_jsd(seg, train, k))}"
              f"  ({len(pooled)} samples)")
        a += step


if __name__ == "__main__":
    main()
