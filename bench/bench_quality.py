"""Benchmark: end-to-end quality on a real collection, measured on the run's held-out files.

    python bench/bench_quality.py --dataset asterisk-en --vq-minutes 5 --prior-minutes 15
    python bench/bench_quality.py --dataset freedesktop --vq-minutes 5 --prior-minutes 5
    python bench/bench_quality.py --dataset asterisk-en --prior-minutes 15 --retrain-prior bench/out/runs/RUN

Trains the whole pipeline with the default (tier) settings and the given budgets, then reports:
codec held-out log-mel L1 vs the mean-frame baseline (target ≤ 0.25×), codebook use on the training
files (target ≥ 80 % per level), prior held-out bits/token vs the unigram (asterisk target ≤ 0.9×;
freedesktop: never worse than the unigram), generated vs held-out per-level histogram JSD, and the
copy fraction at temperature 1.0 (target < 0.5). Results go to bench/out/quality_<dataset>.json.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dataset", default="freedesktop")
    ap.add_argument("--vq-minutes", type=float, default=5.0)
    ap.add_argument("--prior-minutes", type=float, default=15.0)
    ap.add_argument("--samples", type=int, default=4)
    ap.add_argument("--sample-seconds", type=float, default=10.0)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--retrain-prior", metavar="RUN_DIR",
                    help="keep this earlier bench run's codec and codes; train only a new prior, then evaluate")
    args = ap.parse_args()

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from distill.evaluate import evaluate_run
    from distill.pipeline import TrainOptions, run_pipeline
    from distill.runs import read_manifest

    fetch = REPO / "scripts" / "fetch_datasets.sh"
    folder = Path(subprocess.run(["bash", str(fetch), args.dataset], capture_output=True, text=True, check=True).stdout.split()[-1])
    run_dir = REPO / "bench" / "out" / "runs" / f"{args.dataset}-{time.strftime('%Y%m%d-%H%M%S')}"
    options = TrainOptions(seed=args.seed, vqvae_overrides={"time_budget_s": args.vq_minutes * 60},
                           prior_overrides={"time_budget_s": args.prior_minutes * 60})
    t0 = time.time()
    last = [0.0]

    def progress(e: dict) -> None:
        if e.get("kind") in ("stage_end", "warning", "run_end") or time.time() - last[0] > 30:
            last[0] = time.time()
            keep = {k: v for k, v in e.items() if k in ("stage", "kind", "step", "loss", "val_loss", "message", "seconds")}
            print(f"[{time.time() - t0:6.0f}s] {keep}", file=sys.stderr, flush=True)

    if args.retrain_prior:
        import shutil

        from distill.pipeline import retrain_prior

        src = Path(args.retrain_prior)
        shutil.copytree(src, run_dir, ignore=shutil.ignore_patterns("checkpoints", "samples", "prior.safetensors"))
        summary = retrain_prior(run_dir, options, callbacks=[progress])
        summary["stage_seconds"] = {**(read_manifest(src).get("stage_seconds") or {}), **summary["stage_seconds"]}
    else:
        summary = run_pipeline(folder, run_dir, options, callbacks=[progress])
    if summary["status"] != "done":
        raise SystemExit(f"training did not finish: {summary.get('message')}")
    manifest = read_manifest(run_dir)
    held_out = [folder / name for name in manifest["split"]["val"]]
    result = evaluate_run(run_dir, held_out, samples=args.samples, sample_seconds=args.sample_seconds, seed=args.seed)
    train_levels = manifest["results"]["codes"]["train_levels"]
    from distill.generate import RunCache, generate_audio

    cache = RunCache()
    generate_audio(run_dir, 1.0, cache=cache)  # warm-up: loading the models is not generation
    gen_times = []
    for seed in range(3):
        t = time.perf_counter()
        generate_audio(run_dir, 10.0, seed=seed, cache=cache)
        gen_times.append(time.perf_counter() - t)
    result["generate_10s_wall_s"] = min(gen_times)
    report = {
        "dataset": args.dataset, "files_used": len(manifest["files"]["used"]), "held_out_files": len(held_out),
        "tier": manifest["tier"]["tier"], "stage_seconds": summary["stage_seconds"],
        "vqvae_steps": manifest["results"]["vqvae"]["steps"], "prior_steps": manifest["results"]["prior"]["steps"],
        "prior_stop_reason": manifest["results"]["prior"]["stop_reason"],
        "train_utilisation": [lv["utilisation"] for lv in train_levels], **result, "run_dir": str(run_dir),
        "threads": torch.get_num_threads(),
    }
    out = REPO / "bench" / "out" / f"quality_{args.dataset}.json"
    out.write_text(json.dumps(report, indent=2, default=float))
    r = report
    print(f"\n{args.dataset}: {r['files_used']} files (tier {r['tier']}), {r['held_out_files']} held out; "
          f"VQ-VAE {r['vqvae_steps']} steps, prior {r['prior_steps']} steps ({r['prior_stop_reason']}); {r['threads']} threads")
    print(f"codec held-out mel L1 {r['vqvae.mel_l1']:.4f} vs mean-frame {r['vqvae.baseline_mel_l1']:.4f}: "
          f"ratio {r['vqvae.ratio_to_baseline']:.3f} (target ≤ 0.25)")
    print("codebook use on training files per level: " + ", ".join(f"{u:.0%}" for u in r["train_utilisation"]) + " (target ≥ 80%)")
    print("held-out perplexity per level: " + ", ".join(f"{lv['perplexity']:.1f}" for lv in r["vqvae.levels"]))
    if "prior.val_nll_bits" in r:
        print(f"prior held-out {r['prior.val_nll_bits']:.3f} bits/token vs unigram {r['prior.unigram_bits']:.3f}: "
              f"ratio {r['prior.ratio_to_unigram']:.3f}")
        print("histogram JSD generated vs train: " + ", ".join(f"{x:.4f}" for x in r["prior.generated_jsd"]) +
              " | held-out real vs train: " + ", ".join(f"{x:.4f}" for x in r["prior.heldout_jsd"]))
        print(f"copy fraction at T=1.0: {r['prior.copy_fraction']:.3f} (target < 0.5)")
    print(f"generate 10 s of audio (codes + decode + Griffin-Lim), best of 3: {r['generate_10s_wall_s']:.2f} s wall "
          f"(target ≤ 1 s at tier 2)")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
