"""Benchmark: the codec's fidelity on held-out files, at the budget a user gives `distill train`.

    python bench/bench_codec.py --dataset freedesktop --minutes 4 --seeds 0 1 2
    python bench/bench_codec.py --dataset drascula --minutes 6 --seeds 0 1 2 --visqol
    python bench/bench_codec.py --dataset asterisk-en --minutes 10 --seeds 0 1
    python bench/bench_codec.py --dataset drascula --from-runs     # the codecs bench_samples.py trained
    python bench/bench_codec.py --dataset freedesktop --steps 1000 --set num_quantizers=4   # a variant
    python bench/bench_codec.py --dataset freedesktop --steps 30 --extraction-baseline 5764d76  # extraction vs a commit

For each seed: the same seeded 80/20 split **by file** as `bench/bench_samples.py`; the codec is
planned and trained exactly as `distill train --minutes M` does on the 80 % (tier, budget share,
its own early-stopping split inside the 80 %), and nothing of the 20 % is seen. Prints, per seed and
as mean ± spread over seeds:
  held-out log-mel L1 / the mean-frame baseline of the 80 %, every level (target <= 0.30), and from
  the sequence model's levels alone (what a generated sound's codes carry before their detail)
  per-level code use on the training files                                (target >= 80 % each)
  ViSQOL (audio mode, 48 kHz) of original -> codec -> Griffin-Lim, beside Griffin-Lim of the real
  mel (the vocoder's own cost), on held-out files >= 3 s (--visqol; target: within 0.4)
  code extraction speed, x real time, the median of --extraction-passes passes (target >= 300)
  decode + Griffin-Lim CPU s per audio s (target <= 0.1)
`--steps N` trains a fixed number of steps instead of the budget: variants compare at equal work
while the machine is busy (time-budgeted figures need the machine to itself). `--from-runs` measures
the codecs in bench/out/samples/ (trained by bench_samples.py with the same splits) instead;
`--refit-spectral` with it fits their spectral detail again, as training now would, before measuring.
ViSQOL needs `pip install -r bench/requirements.txt` (a benchmark requirement, not the app's).
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
import types
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from bench_samples import dataset_folder, run_tag, split_files  # noqa: E402  (same folders, splits and runs)

OUT = REPO / "bench" / "out"
VISQOL_RATE = 48_000
VISQOL_MIN_S, VISQOL_MAX_S, VISQOL_FILES = 3.0, 12.0, 6  # excerpt length and count: ViSQOL is slow


def parse_sets(pairs: list[str]) -> dict:
    return {kv.split("=", 1)[0]: json.loads(kv.split("=", 1)[1]) for kv in pairs}


def train_codec(train_entries, args, seed: int):
    """The codec `distill train` would train on these files, with the user's budget (or --steps)."""
    from distill.planning import TrainOptions, audio_config_for, plan_training
    from distill.config import apply_overrides
    from distill.scan import scan_dataset
    from distill.training.vqvae_train import train_vqvae

    options = TrainOptions(preset=args.preset, minutes=args.minutes, seed=seed, device=args.device,
                           sample_rate=args.sample_rate)
    paths = [Path(e.abs_path) for e in train_entries]
    audio = audio_config_for(options, paths)  # the rate `distill train` would choose for these files
    report = scan_dataset(paths, audio)
    plan = plan_training(report, options)
    cfg = plan.vqvae_config
    overrides = parse_sets(args.set)
    if args.steps:
        overrides.update(max_steps=args.steps, time_budget_s=None)
    cfg = apply_overrides(cfg, overrides)
    dataset = report.dataset(cfg.val_fraction, seed=seed)
    result = train_vqvae(dataset, cfg)
    return result.model.eval(), cfg, audio, report, result


def codec_from_run(args, seed: int):
    from distill.generate import load_run
    from distill.runs import run_configs

    from types import SimpleNamespace

    # bench_samples.py's folder for the same dataset, budget, seed and codec settings (--set there is --vq-set)
    tag = run_tag(SimpleNamespace(dataset=args.dataset, preset=args.preset, minutes=args.minutes, vq_set=args.set,
                                  sample_rate=args.sample_rate), seed)
    run_dir = OUT / "samples" / tag
    if not (run_dir / "manifest.json").is_file():
        raise SystemExit(f"{run_dir} is missing: run bench/bench_samples.py --dataset {args.dataset} first")
    run = load_run(run_dir, device="cpu")
    audio, cfg, _ = run_configs(run.manifest)
    return run.vqvae.eval(), cfg, audio, run.manifest["results"]["vqvae"]


def visqol_pairs(held, audio, model, api) -> tuple[list[float], list[float]]:
    """(codec round trip, Griffin-Lim of the real mel) ViSQOL for each held-out file >= 3 s."""
    import librosa

    from distill.audio.griffinlim import log_mel, mel_to_audio
    from distill.audio.io import decode_file
    from distill.codes import extract_code_sequences

    codec, vocoder = [], []
    long_enough = [e for e in held if e.seconds >= VISQOL_MIN_S][:VISQOL_FILES]
    for e in long_enough:
        ref = librosa.load(e.abs_path, sr=VISQOL_RATE, mono=True, duration=VISQOL_MAX_S)[0]
        wave = decode_file(Path(e.abs_path), audio).wave[: int(VISQOL_MAX_S * audio.sample_rate)]
        mel = log_mel(torch.from_numpy(wave), audio)
        with torch.inference_mode():
            codes = extract_code_sequences(model, [mel], detail=True)[0]  # a file's round trip keeps every level
            recon = model.decode(codes[None], frames=mel.shape[-1])[0]
        for mel_in, out in ((recon, codec), (mel, vocoder)):
            deg = librosa.resample(mel_to_audio(mel_in, audio).numpy(), orig_sr=audio.sample_rate,
                                   target_sr=VISQOL_RATE)
            n = min(len(ref), len(deg))
            r, d = ref[:n].astype(np.float64), deg[:n].astype(np.float64)
            d *= np.sqrt((r ** 2).mean() / max((d ** 2).mean(), 1e-12))  # same loudness: judge the sound
            out.append(float(api.measure_from_arrays(r, d, VISQOL_RATE).moslqo))
    return codec, vocoder


def measure_seed(entries, args, seed: int, api) -> dict:
    from distill.audio.griffinlim import mel_to_audio
    from distill.codes import extract_code_sequences, level_histograms, mean_frame_baseline_l1, mel_l1, utilisation
    from distill.scan import scan_dataset

    train_entries, held_entries = split_files(entries, seed)
    t0 = time.time()
    if args.from_runs:
        model, cfg, audio, trained = codec_from_run(args, seed)
        train_mels = [e.mel for e in scan_dataset([Path(e.abs_path) for e in train_entries], audio).used]
        steps, stop = trained["steps"], trained.get("stop_reason")
        if args.refit_spectral:
            model.fit_spectral_detail(train_mels, seed=cfg.seed)
    else:
        model, cfg, audio, report, result = train_codec(train_entries, args, seed)
        train_mels = [e.mel for e in report.used]
        steps, stop = result.steps, result.stop_reason
    train_s = time.time() - t0
    held = scan_dataset([Path(e.abs_path) for e in held_entries], audio)
    held_mels = [e.mel for e in held.used]
    q = cfg.num_quantizers
    with torch.inference_mode():
        held_codes = extract_code_sequences(model, held_mels, detail=True)  # every level: the round trip
        recons = [model.decode(c[None], frames=m.shape[-1])[0] for c, m in zip(held_codes, held_mels)]
        baseline = mean_frame_baseline_l1(train_mels, held_mels)
        ratio = mel_l1(recons, held_mels) / baseline
        # the sequence model's levels alone: what a generated sound's codes carry before their detail
        coarse = [model.decode(c[None, :, :q], frames=m.shape[-1])[0] for c, m in zip(held_codes, held_mels)]
        coarse_ratio = mel_l1(coarse, held_mels) / baseline
        train_codes = extract_code_sequences(model, train_mels, detail=True)
        use = [round(float(u), 3) for u in utilisation(level_histograms(train_codes, cfg.codebook_size))]

        every = train_mels + held_mels
        total_s = sum(m.shape[-1] for m in every) / audio.frames_per_second
        extract_code_sequences(model, every[:4], detail=True)  # warm-up
        passes = []
        for _ in range(args.extraction_passes):  # the median pass: one pass on a shared machine varies ~2x
            t = time.perf_counter()
            extract_code_sequences(model, every, detail=True)  # as the codes stage does: every level
            passes.append(time.perf_counter() - t)
        extraction_x = total_s / statistics.median(passes)
        if args.extraction_baseline:
            extraction_side_by_side(model, every, total_s, args)

        picked = held_mels[: max(1, len(held_mels))]
        secs = sum(m.shape[-1] for m in picked) / audio.frames_per_second
        mel_to_audio(recons[0], audio)  # warm-up
        cpu0 = time.process_time()
        for c, m in zip(held_codes, picked):
            mel_to_audio(model.decode(c[None], frames=m.shape[-1])[0], audio)
        decode_cpu = (time.process_time() - cpu0) / secs

    levels = cfg.num_quantizers + cfg.detail_levels  # the codec's residual levels (then the spectral detail)
    row = {"seed": seed, "train_files": len(train_entries), "held_files": len(held_entries),
           "held_seconds": round(sum(e.seconds for e in held.used), 1), "steps": steps, "stop": stop,
           "train_s": round(train_s, 1), "budget_s": cfg.time_budget_s, "ratio": round(ratio, 4),
           "coarse_ratio": round(coarse_ratio, 4), "sample_rate": audio.sample_rate, "utilisation": use, "levels": levels, "extraction_x": round(extraction_x), "decode_cpu_per_s": round(decode_cpu, 4),
           "config": {k: getattr(cfg, k) for k in ("num_quantizers", "detail_levels", "spectral_levels", "spectral_bands",
                                                   "codebook_size", "codebook_dim",
                                                   "downsample", "hidden_channels", "num_res_blocks", "window_frames",
                                                   "batch_size")}}
    if api is not None:
        codec, vocoder = visqol_pairs(held.used, audio, model, api)
        row.update(visqol_codec=codec, visqol_vocoder=vocoder,
                   visqol_gap=round(statistics.mean(v - c for c, v in zip(codec, vocoder)), 3) if codec else None)
    print(f"seed {seed}: {row['train_files']} training / {row['held_files']} held-out files ({row['held_seconds']} s); "
          f"{steps} steps in {train_s:.0f} s ({stop}); {audio.sample_rate} Hz, {cfg.num_quantizers} + {cfg.detail_levels} "
          f"levels" + (f" + spectral detail {cfg.spectral_levels} x {cfg.spectral_bands}" if cfg.spectral_levels else "") + ";"
          f" held-out L1 ratio {ratio:.3f} (the sequence model's levels alone {coarse_ratio:.3f}); "
          f"lowest code use {min(use[:levels]):.2f}"
          + (f" (spectral detail {min(use[levels:]):.2f})" if len(use) > levels else "") + "; "
          f"extraction {extraction_x:.0f}x; decode+GL {decode_cpu:.4f} CPU s/s"
          + (f"; ViSQOL codec {np.mean(row['visqol_codec']):.2f} vs Griffin-Lim of the real mel "
             f"{np.mean(row['visqol_vocoder']):.2f} on {len(row['visqol_codec'])} files (gap {row['visqol_gap']})"
             if api is not None and row.get("visqol_codec") else ""), flush=True)
    return row


BASELINE_MODULES = ("distill.models.nearest", "distill.models.spectral_detail", "distill.models.vqvae", "distill.codes")


def baseline_modules(rev: str) -> dict[str, types.ModuleType]:
    """The codec's code at git revision `rev` (BASELINE_MODULES that exist there), loaded beside this
    checkout's: each module's imports of the others resolve to the revision's own while it loads."""
    loaded: dict[str, types.ModuleType] = {}
    saved = {name: sys.modules.get(name) for name in BASELINE_MODULES}
    try:
        for name in BASELINE_MODULES:
            path = name.replace(".", "/") + ".py"
            shown = subprocess.run(["git", "-C", str(REPO), "show", f"{rev}:{path}"], capture_output=True, text=True)
            if shown.returncode != 0:
                sys.modules.pop(name, None)  # not at that revision: nothing there imports it
                continue
            module = types.ModuleType(name)
            sys.modules[name] = module  # (its siblings and dataclasses look it up while it loads)
            exec(compile(shown.stdout, f"{rev}:{path}", "exec"), module.__dict__)
            loaded[name] = module
    finally:
        for name, module in saved.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module
    return loaded


def extraction_side_by_side(model, mels, total_s: float, args) -> None:
    """Extraction with this checkout's codec against the codec code of git revision
    --extraction-baseline (its vqvae.py, spectral_detail.py and codes.py, the same weights), passes
    alternated in this process: a shared machine's speed drifts between runs more than a change moves it."""
    from distill.codes import extract_code_sequences

    rev = args.extraction_baseline
    old = baseline_modules(rev)
    baseline = old["distill.models.vqvae"].ConvVQVAE(model.n_mels, model.config)
    baseline.load_state_dict(model.state_dict())
    baseline.eval()
    extract_old = old["distill.codes"].extract_code_sequences
    extract_old(baseline, mels[:4], detail=True)  # warm-up, as the checkout's codec had
    times: dict[str, list[float]] = {"now": [], rev: []}
    codes = {}
    ways = (("now", model, extract_code_sequences), (rev, baseline, extract_old))
    for r in range(2 * args.extraction_passes):
        for name, m, extract in ways[:: 1 if r % 2 == 0 else -1]:
            t = time.perf_counter()
            codes[name] = extract(m, mels, detail=True)
            times[name].append(time.perf_counter() - t)
    ratios = sorted(b / a for a, b in zip(times["now"], times[rev]))
    differ = sum(int((a != b).sum()) for a, b in zip(codes["now"], codes[rev]))
    total = sum(a.numel() for a in codes["now"])
    print(f"  extraction side by side, {len(ratios)} alternated pairs: now {total_s / statistics.median(times['now']):.0f}x, "
          f"{rev} {total_s / statistics.median(times[rev]):.0f}x; now faster by {statistics.median(ratios):.2f}x "
          f"(pairs {ratios[0]:.2f}-{ratios[-1]:.2f}); codes that differ: {differ} of {total}", flush=True)


def spread(values) -> str:
    values = [v for v in values if v is not None]
    if not values:
        return "n/a"
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values) if len(values) > 1 else 0.0:.3f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", default="freedesktop")
    ap.add_argument("--minutes", type=float, default=None, help="the budget given to `distill train` (its codec share)")
    ap.add_argument("--preset", default="auto")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--steps", type=int, default=0, help="train this many steps instead of the time budget")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=JSON", help="override a VQVAEConfig field")
    ap.add_argument("--visqol", action="store_true", help="ViSQOL columns (pip install -r bench/requirements.txt)")
    ap.add_argument("--from-runs", action="store_true", help="measure the codecs bench_samples.py trained")
    ap.add_argument("--refit-spectral", action="store_true",
                    help="with --from-runs: fit the spectral detail again as training does now")
    ap.add_argument("--device", default="cpu", help="auto|cpu|cuda|mps")
    ap.add_argument("--sample-rate", type=int, default=0, choices=[0, 24000, 48000],
                    help="the rate to work at (0: what `distill train` chooses for the files)")
    ap.add_argument("--tag", default="", help="a name for this variant in the output file")
    ap.add_argument("--extraction-passes", type=int, default=5, help="timed extraction passes (the median is reported)")
    ap.add_argument("--extraction-baseline", default="", metavar="REV",
                    help="also time extraction side by side with the codec code of this git revision (same weights)")
    args = ap.parse_args()

    from distill.scan import scan_dataset

    api = None
    if args.visqol:
        from visqol.api import VisqolApi

        api = VisqolApi()
        api.create(mode="audio")
    entries = scan_dataset(dataset_folder(args.dataset), keep_features=False).used
    print(f"{args.dataset}: {len(entries)} usable files; budget {args.minutes} min; "
          f"{'steps ' + str(args.steps) if args.steps else 'time budget'}; overrides {parse_sets(args.set)}; "
          f"{torch.get_num_threads()} thread(s)", flush=True)
    rows = [measure_seed(entries, args, s, api) for s in args.seeds]
    summary = {"ratio": spread([r["ratio"] for r in rows]),
               "coarse_ratio": spread([r["coarse_ratio"] for r in rows]),
               "utilisation_min": spread([min(r["utilisation"][: r["levels"]]) for r in rows]),
               "spectral_utilisation_min": spread([min(r["utilisation"][r["levels"]:], default=None) for r in rows]),
               "visqol_codec": spread([float(np.mean(r["visqol_codec"])) for r in rows if r.get("visqol_codec")]),
               "visqol_vocoder": spread([float(np.mean(r["visqol_vocoder"])) for r in rows if r.get("visqol_vocoder")]),
               "visqol_gap": spread([r.get("visqol_gap") for r in rows]),
               "extraction_x": spread([r["extraction_x"] for r in rows]),
               "decode_cpu_per_s": spread([r["decode_cpu_per_s"] for r in rows])}
    print(f"\n{args.dataset} over seeds {args.seeds}: " + "; ".join(f"{k} {v}" for k, v in summary.items()))
    OUT.mkdir(parents=True, exist_ok=True)
    name = f"codec_{args.dataset}{'-' + args.tag if args.tag else ''}.json"
    (OUT / name).write_text(json.dumps({"args": vars(args), "seeds": rows, "summary": summary}, indent=1))
    print(f"wrote {OUT / name}")


if __name__ == "__main__":
    main()
