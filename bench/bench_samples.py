"""Benchmark: do generated sounds sound like the collection? The sample score, with its validity check.

    python bench/bench_samples.py --dataset freedesktop --minutes 4 --seeds 0 1 2
    python bench/bench_samples.py --dataset drascula --minutes 6
    python bench/bench_samples.py --dataset asterisk-en --minutes 10
    python bench/bench_samples.py --dataset demo --preset quick          # the built-in demo, quick preset
    python bench/bench_samples.py --dataset freedesktop --minutes 4 --reuse --set retrieval=0 [--sheet]

For each seed: a seeded 80/20 split of the usable files **by file**; the 80 % trained through the same
code path as `distill train --minutes M` (nothing of the 20 % seen), then `--clips` × `--seconds` of
audio generated twice (two sets of seeds) at the settings a user gets (`distill.config.SAMPLING_DEFAULTS`;
`--set NAME=VALUE` changes one for experiments, also the retrieval's `context`, `min_count`, `clip_cap`, `hold_guard` and `hold_guard_inside`).
Every set below has the generated set's size and is compared with the held-out files:
- real material: runs of randomly chosen training files (a random start in the first), as audio
  ("real audio") and as their own codes decoded through the trained codec ("real codes": what a
  perfect prior would give, through the same codec and vocoder as the samples); `--draws` draws each;
- order-free codes: drawn independently per level from the training codes' histogram ("right sounds,
  no order in time"), and uniform random codes; decoded through the same codec.
Distance: MMD between one-second patch descriptions (distill/sample_score.py); the old Fréchet
distance on log-mel frames + 4-frame deltas is printed beside it. Sample score = (d(generated) −
d(real codes)) / (d(order-free) − d(real codes)); valid only where real codes beat order-free codes
by more than 3 × the spread of the real draws (printed per seed). Also: verbatim share (generated time
steps inside a ≥ 0.5 s run found verbatim in the training codes; "as heard": the codes after the
detail stage, which takes stretches of the material's finer codes), longest verbatim stretch, held-out
bits vs the unigram, flicker (how much spectra change from frame to frame, beside real codes'), and a spectrogram sheet per seed (bench/out/samples/<run>.png) to look at.
Run it with nothing else busy on the machine. Results: bench/out/samples_<dataset>.json.
"""
from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402


def dataset_folder(name: str) -> Path:
    if name == "demo":
        return REPO / "assets" / "demo"
    fetch = REPO / "scripts" / "fetch_datasets.sh"
    return Path(subprocess.run(["bash", str(fetch), name], capture_output=True, text=True, check=True).stdout.split()[-1])


def split_files(entries, seed: int, held_fraction: float = 0.2):
    order = np.random.default_rng(seed).permutation(len(entries))
    n_held = max(1, int(round(held_fraction * len(entries))))
    held = sorted(order[:n_held].tolist())
    train = sorted(order[n_held:].tolist())
    return [entries[i] for i in train], [entries[i] for i in held]


def cut_runs(pieces, total: int, count: int, rng, length=len):
    """`count` chunks of `total` units each, every chunk a run of randomly chosen pieces (a random
    start in the first), pieces joined end to end: real material cut to the generated set's size."""
    chunks = []
    for _ in range(count):
        first = pieces[rng.integers(len(pieces))]
        parts = [first[rng.integers(max(1, length(first))):]]
        have = length(parts[0])
        while have < total:
            parts.append(pieces[rng.integers(len(pieces))])
            have += length(parts[-1])
        chunks.append(np.concatenate(parts)[:total])
    return chunks


def frechet(a: np.ndarray, b: np.ndarray) -> float:
    from scipy import linalg

    ma, mb = a.mean(0), b.mean(0)
    ca, cb = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    root = linalg.sqrtm(ca @ cb).real
    return float(((ma - mb) ** 2).sum() + np.trace(ca + cb - 2 * root))


def frame_features(waves, cfg) -> np.ndarray:
    from distill.sample_score import log_mel_frames

    mel = log_mel_frames(np.concatenate(waves), cfg)
    delta = mel[:, 4:] - mel[:, :-4]
    return np.concatenate([mel[:, 4:], delta]).T


def loud_frames(waves, cfg) -> tuple[np.ndarray, np.ndarray]:
    """A set's log-mel [bands, frames] and which frames lie within 40 dB of its loudest."""
    from distill.sample_score import log_mel_frames

    mel = log_mel_frames(np.concatenate(waves), cfg)
    level = mel.max(0)
    return mel, level > level.max() - 40 / 4.343  # 40 dB in nats of power


def spectral_detail(waves, cfg) -> float:
    """How sharp a set's spectra are: the mean difference (nats) between neighbouring mel bands, over
    frames within 40 dB of the set's loudest. Partials standing out of their neighbours score high, a
    spectrum smeared into a blur low; compare a set with real audio of the same size."""
    mel, loud = loud_frames(waves, cfg)
    return float(np.abs(np.diff(mel[:, loud], axis=0)).mean()) if loud.any() else 0.0


def flicker(waves, cfg) -> float:
    """How much a set's spectra change from one frame to the next: the mean difference (nats) between
    neighbouring frames, over pairs of frames within 40 dB of the set's loudest. Detail that jumps from
    place to place of the material scores high against real audio and real codes."""
    mel, loud = loud_frames(waves, cfg)
    pairs = loud[1:] & loud[:-1]
    return float(np.abs(np.diff(mel, axis=1))[:, pairs].mean()) if pairs.any() else 0.0


def normalised(wave: np.ndarray) -> np.ndarray:
    peak = float(np.abs(wave).max()) if wave.size else 0.0
    return (wave * (0.9 / peak) if peak > 0 else wave).astype(np.float32)


def train_run(train_entries, run_dir: Path, args, seed: int) -> None:
    from distill.pipeline import TrainOptions, run_pipeline
    from distill.runs import read_manifest

    if args.reuse and (run_dir / "manifest.json").is_file() and read_manifest(run_dir).get("status") == "done":
        return
    options = TrainOptions(preset=args.preset, minutes=args.minutes, seed=seed, device=args.device,
                           sample_rate=getattr(args, "sample_rate", 0), vqvae_overrides=parse_json_sets(args.vq_set))
    t0 = time.time()
    summary = run_pipeline([Path(e.abs_path) for e in train_entries], run_dir, options,
                           callbacks=[lambda e: e.get("kind") == "stage_end" and print(
                               f"  [{time.time() - t0:5.0f}s] {e.get('stage')} done", file=sys.stderr, flush=True)])
    if summary["status"] != "done":
        raise SystemExit(f"training did not finish: {summary.get('message')}")


HOLD_SECONDS = 2.0


def parse_json_sets(items) -> dict:
    return {kv.split("=", 1)[0]: json.loads(kv.split("=", 1)[1]) for kv in items or []}


def run_tag(args, seed: int) -> str:
    """The run folder's name: dataset, preset, budget, seed (and codec settings other than the defaults)."""
    extra = "".join(f"-{k}{v}" for k, v in sorted(parse_json_sets(args.vq_set).items()))
    extra += f"-sr{args.sample_rate}" if getattr(args, "sample_rate", 0) else ""
    return f"{args.dataset}-{args.preset}-m{args.minutes if args.minutes is not None else 'preset'}{extra}-s{seed}"


def measure_seed(entries, args, seed: int, sampling: dict) -> dict:
    import torch

    from distill.analysis import longest_common_run, nll_bits, unigram_bits
    from distill.audio.io import decode_file
    from distill.codes import extract_code_sequences
    from distill.generate import codes_to_audio, decode_codes, generate_codes, load_run
    from distill.runs import load_codes, read_manifest, run_configs
    from distill.sample_score import (FeatureSpace, held_share, order_free_codes, sample_score, set_features,
                                      verbatim_share)

    train_entries, held_entries = split_files(entries, seed)
    tag = run_tag(args, seed)
    run_dir = REPO / "bench" / "out" / "samples" / tag
    t0 = time.time()
    train_run(train_entries, run_dir, args, seed)
    train_s = time.time() - t0
    run = load_run(run_dir, device="cpu")
    manifest = read_manifest(run_dir)
    audio, vq, _ = run_configs(manifest)
    steps_per_s = audio.frames_per_second / vq.downsample
    steps = math.ceil(args.seconds * steps_per_s)
    samples_per_chunk = int(round(args.seconds * audio.sample_rate))
    train_codes = list(load_codes(run_dir).values())
    k = vq.codebook_size
    rng = np.random.default_rng(1000 + seed)

    t1 = time.perf_counter()
    # two generated sets (other seeds): their difference is the generated side's own spread
    gen_sets = [[generate_codes(run, args.seconds, seed=100 * g + i, **sampling) for i in range(args.clips)]
                for g in range(2)]
    gen_codes = gen_sets[0] + gen_sets[1]
    gen_s = time.perf_counter() - t1
    # the codes each generated clip is heard with (detail, and stretches of the material's finer codes)
    heard_sets = [[run.with_detail(c) for c in codes] for codes in gen_sets]
    if args.no_spectral:  # the generated sets without the spectral detail (the references keep theirs)
        heard_sets = [[h[:, : run.vqvae.coarse_levels + run.vqvae.detail_levels] for h in heard] for heard in heard_sets]
    if args.no_detail:  # every set decoded from the sequence model's levels alone
        decode = lambda codes: decode_codes(run.vqvae, audio, codes)[:samples_per_chunk]  # noqa: E731
        sets = {f"generated {g}": [decode(c) for c in codes] for g, codes in enumerate(gen_sets)}
    else:
        decode = lambda codes: codes_to_audio(run, codes)[:samples_per_chunk]  # noqa: E731
        sets = {f"generated {g}": [decode_codes(run.vqvae, audio, h)[:samples_per_chunk] for h in heard]
                for g, heard in enumerate(heard_sets)}
    train_waves = [decode_file(Path(e.abs_path), audio).wave for e in train_entries]
    held_waves = [decode_file(Path(e.abs_path), audio).wave for e in held_entries]
    # The references depend only on the run and the set size: kept beside the run, so trying other
    # sampling settings on the same run (--reuse --set ...) measures only the generated set.
    refs_path = run_dir.with_name(f"{tag}.refs-{args.clips}x{args.seconds:g}-d{args.draws}"
                                  f"{'-nodetail' if args.no_detail else ''}.json")
    refs = json.loads(refs_path.read_text()) if args.reuse and refs_path.is_file() else None
    if refs is None or args.sheet:
        for d in range(args.draws):
            sets[f"real audio {d}"] = [normalised(w) for w in cut_runs(train_waves, samples_per_chunk, args.clips, rng)]
            sets[f"real codes {d}"] = [decode(c) for c in cut_runs(train_codes, steps, args.clips, rng)]
        for d in range(2):
            sets[f"order-free {d}"] = [decode(order_free_codes(train_codes, steps, k, rng)) for _ in range(args.clips)]
        sets["uniform"] = [decode(rng.integers(0, k, size=(steps, vq.num_quantizers))) for _ in range(args.clips)]

    space = FeatureSpace.fit(set_features(train_waves, audio))
    held_patches = set_features(held_waves, audio)
    held_frames = frame_features(held_waves, audio)
    todo = sets if refs is None else {n: w for n, w in sets.items() if n.startswith("generated")}
    mmd = {name: space.distance(set_features(w, audio), held_patches) for name, w in todo.items()}
    fd = {name: frechet(frame_features(w, audio), held_frames) for name, w in todo.items()}
    if refs is None:
        refs = {"mmd": {n: v for n, v in mmd.items() if not n.startswith("generated")},
                "frechet": {n: v for n, v in fd.items() if not n.startswith("generated")}}
        refs_path.write_text(json.dumps(refs, indent=2))
    mmd, fd = {**mmd, **refs["mmd"]}, {**fd, **refs["frechet"]}

    def summary(table: dict, prefix: str) -> tuple[float, float]:
        vals = [v for n, v in table.items() if n.startswith(prefix)]
        return float(np.mean(vals)), float(np.std(vals))

    out = {"seed": seed, "run_dir": str(run_dir), "train_files": len(train_entries), "held_out_files": len(held_entries),
           "held_out_seconds": round(sum(len(w) for w in held_waves) / audio.sample_rate, 1),
           "train_wall_s": round(train_s, 1), "generate_wall_s": round(gen_s, 2), "mmd": mmd, "frechet": fd,
           "sample_rate": audio.sample_rate, "detail_levels": vq.detail_levels}
    # spectral sharpness beside real audio's (the sample score's 16 pooled bands cannot see it)
    sharp = {n: spectral_detail(w, audio) for n, w in sets.items() if n.split(" ")[0] in ("generated", "real")}
    out["spectral_detail"] = {k: round(v, 4) for k, v in sharp.items()}
    real_sharp = [v for k, v in sharp.items() if k.startswith("real audio")]
    gen_sharp = [v for k, v in sharp.items() if k.startswith("generated")]
    out["spectral_detail_ratio"] = float(np.mean(gen_sharp) / np.mean(real_sharp)) if real_sharp else None
    flick = {n: flicker(w, audio) for n, w in sets.items() if n.split(" ")[0] in ("generated", "real")}
    out["flicker"] = {k: round(v, 4) for k, v in flick.items()}
    real_flick = [v for k, v in flick.items() if k.startswith("real codes")]
    out["flicker_ratio"] = float(np.mean([v for k, v in flick.items() if k.startswith("generated")])
                                 / np.mean(real_flick)) if real_flick else None
    for metric, table in (("mmd", mmd), ("frechet", fd)):
        real, real_sd = summary(table, "real codes")
        audio_real, audio_sd = summary(table, "real audio")
        free, free_sd = summary(table, "order-free")
        out[f"{metric}.valid"] = bool(free - real > 3 * max(real_sd, 1e-9) and free - audio_real > 3 * max(audio_sd, 1e-9))
        gen, gen_sd = summary(table, "generated")
        out[f"{metric}.score"] = sample_score(gen, real, free)
        out[f"{metric}.score_sets"] = [sample_score(table[f"generated {g}"], real, free) for g in range(2)]
        out[f"{metric}.score_vs_audio"] = sample_score(gen, audio_real, free)
        out[f"{metric}.margin"] = (free - real) / max(real_sd, 1e-9)
    min_steps = math.ceil(0.5 * steps_per_s)
    out["verbatim_share"] = float(np.mean([verbatim_share(c, train_codes, min_steps) for c in gen_codes]))
    q = vq.num_quantizers
    # the codes heard: where a step goes on along the material, its finer codes are the material's too
    heard = [h[:, :q] for hs in heard_sets for h in hs]
    out["heard_verbatim_share"] = float(np.mean([verbatim_share(c, train_codes, min_steps) for c in heard]))

    def longest_steps(codes) -> float:  # the longest run of steps found verbatim in one training file
        return longest_common_run(codes.reshape(-1), [t.reshape(-1) for t in train_codes]) / q

    out["heard_longest_verbatim_s"] = float(max(longest_steps(c) for c in heard) / steps_per_s)
    longest = [longest_steps(c) for c in gen_codes]
    out["longest_verbatim_s"] = float(max(longest) / steps_per_s)
    out["longest_verbatim_fraction"] = float(max(longest) / steps)
    # frozen sound: time in holds of one coarse code for 2 s or more, generated and in the training codes
    hold_steps = math.ceil(HOLD_SECONDS * steps_per_s)
    out["held_share"], out["held_share_material"] = held_share(gen_codes, hold_steps), held_share(train_codes, hold_steps)
    held_codes = extract_code_sequences(run.vqvae, [torch.as_tensor(_mel(w, audio)) for w in held_waves])
    out["bits"] = float(nll_bits(run.prior, held_codes))
    out["unigram_bits"] = float(unigram_bits([torch.as_tensor(c) for c in train_codes], held_codes, k))
    out["bits_ratio"] = out["bits"] / out["unigram_bits"]
    prior_results = (manifest.get("results") or {}).get("prior") or {}
    out["prior_steps"], out["prior_stop"] = prior_results.get("steps"), prior_results.get("stop_reason")
    out["prior_size"] = f"{run.prior.num_layers}x{run.prior.hidden_size}"
    if "real audio 0" in sets:
        variant = ("-nodetail" if args.no_detail else "") + ("-nospectral" if args.no_spectral else "")
        sheet(run_dir.parent / f"{tag}{variant}.png", sets, held_waves, audio, tag, out)
        out["sheet"] = str(run_dir.parent / f"{tag}{variant}.png")
    return out


def _mel(wave, cfg):
    from distill.sample_score import log_mel_frames

    return log_mel_frames(wave, cfg).astype(np.float32)


def sheet(path: Path, sets: dict, held_waves, cfg, title: str, result: dict) -> None:
    """Mel spectrograms to look at: generated clips beside training files, held-out files, order-free codes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from distill.sample_score import log_mel_frames

    seconds = 8.0
    n = int(seconds * cfg.sample_rate)
    rows = [(f"generated {i}", w[:n]) for i, w in enumerate(sets["generated 0"][:4])]
    rows += [(f"real audio {i}", w[:n]) for i, w in enumerate(sets["real audio 0"][:2])]
    rows += [("held-out files", np.concatenate(held_waves)[:n]), ("order-free codes", sets["order-free 0"][0][:n])]
    fig, axes = plt.subplots(len(rows), 1, figsize=(12, 1.5 * len(rows)), sharex=True)
    for ax, (name, wave) in zip(axes, rows):
        mel = log_mel_frames(np.pad(wave, (0, max(0, n - len(wave)))), cfg)
        ax.imshow(mel, origin="lower", aspect="auto", cmap="magma", vmin=-11.5, vmax=max(2.0, float(mel.max())),
                  extent=(0, seconds, 0, mel.shape[0]))
        ax.set_ylabel(name, rotation=0, ha="right", fontsize=8)
        ax.set_yticks([])
    axes[-1].set_xlabel("seconds")
    fig.suptitle(f"{title}: sample score {result['mmd.score']:.2f}, verbatim share {result['verbatim_share']:.2f}",
                 fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def parse_sets(items) -> dict:
    out = {}
    for item in items or []:
        key, _, value = item.partition("=")
        out[key] = type_of(value)
    return out


def type_of(value: str):
    for cast in (int, float):
        try:
            return cast(value)
        except ValueError:
            pass
    return {"true": True, "false": False}.get(value.lower(), value)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dataset", default="freedesktop")
    ap.add_argument("--minutes", type=float, default=None, help="training budget, as `distill train --minutes`")
    ap.add_argument("--preset", default=None, choices=["auto", "quick"], help="default: quick for demo, else auto")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--clips", type=int, default=8)
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--draws", type=int, default=3, help="draws of each real reference")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--reuse", action="store_true", help="reuse finished runs of the same dataset/budget/seed")
    ap.add_argument("--sheet", action="store_true", help="with --reuse: decode the references again to draw the sheet")
    ap.add_argument("--set", action="append", metavar="NAME=VALUE", help="a sampling setting other than the default")
    ap.add_argument("--vq-set", action="append", default=[], metavar="KEY=JSON",
                    help="a codec setting other than the default (any VQVAEConfig field); names the run folder")
    ap.add_argument("--sample-rate", type=int, default=0, choices=[0, 24000, 48000],
                    help="the rate to work at (0: what `distill train` chooses for the files); names the run folder")
    ap.add_argument("--no-spectral", action="store_true",
                    help="decode the generated sets without the spectral detail they take from the material")
    ap.add_argument("--no-detail", action="store_true",
                    help="decode every set from the sequence model's levels alone (no detail from the material)")
    args = ap.parse_args()
    args.preset = args.preset or ("quick" if args.dataset == "demo" else "auto")

    import torch

    from distill.config import SAMPLING_DEFAULTS
    from distill.scan import scan_dataset

    folder = dataset_folder(args.dataset)
    entries = scan_dataset(folder, keep_features=False).used
    sampling = {**SAMPLING_DEFAULTS, **parse_sets(args.set)}
    extra = {k: sampling.pop(k) for k in ("context", "min_count", "clip_cap", "hold_guard", "hold_guard_inside") if k in sampling}
    if extra:  # retrieval settings other than its weight (RetrievalSettings' fields)
        from distill.models.retrieval import RetrievalSettings

        sampling["retrieval"] = RetrievalSettings(weight=float(sampling["retrieval"]),
                                                  max_context_steps=int(extra.get("context", RetrievalSettings.max_context_steps)),
                                                  min_count=int(extra.get("min_count", RetrievalSettings.min_count)),
                                                  max_clip_factor=float(extra.get("clip_cap", RetrievalSettings.max_clip_factor)),
                                                  hold_guard=bool(float(extra.get("hold_guard", RetrievalSettings.hold_guard))),
                                                  hold_guard_inside=bool(float(extra.get("hold_guard_inside",
                                                                                         RetrievalSettings.hold_guard_inside))))
    print(f"{args.dataset}: {len(entries)} usable files; budget {args.minutes} min, preset {args.preset}; "
          f"{args.clips} x {args.seconds:.0f} s per set; sampling {sampling}; torch threads {torch.get_num_threads()}",
          flush=True)
    results = []
    for seed in args.seeds:
        r = measure_seed(entries, args, seed, sampling)
        results.append(r)
        print(f"\nseed {seed}: {r['train_files']} training / {r['held_out_files']} held-out files "
              f"({r['held_out_seconds']} s); prior {r['prior_size']}, {r['prior_steps']} steps ({r['prior_stop']})")
        names = list(r["mmd"])
        print("  " + "set".ljust(14) + "MMD".rjust(8) + "Fréchet".rjust(10))
        for name in names:
            print("  " + name.ljust(14) + f"{r['mmd'][name]:8.4f}{r['frechet'][name]:10.1f}")
        for metric in ("mmd", "frechet"):
            print(f"  {metric}: valid {r[metric + '.valid']} (order-free − real codes = {r[metric + '.margin']:.1f} × "
                  f"the real draws' spread); score {r[metric + '.score']:.3f} (the two generated sets: "
                  + " / ".join(f"{x:.3f}" for x in r[metric + '.score_sets'])
                  + f"; vs real audio: {r[metric + '.score_vs_audio']:.3f})")
        sd = r["spectral_detail"]
        gen_sd = np.mean([v for k, v in sd.items() if k.startswith("generated")])
        real_sd = [v for k, v in sd.items() if k.startswith("real audio")]
        print(f"  spectral detail (neighbouring mel bands, nats): generated {gen_sd:.3f}"
              + (f", real audio {np.mean(real_sd):.3f}" if real_sd else "")
              + (f", real codes {np.mean([v for k, v in sd.items() if k.startswith('real codes')]):.3f}"
                 if real_sd else " (references: --sheet)"))
        fl = r["flicker"]
        print(f"  flicker (neighbouring frames, nats): generated {np.mean([v for k, v in fl.items() if k.startswith('generated')]):.3f}"
              + (f", real audio {np.mean([v for k, v in fl.items() if k.startswith('real audio')]):.3f}, real codes "
                 f"{np.mean([v for k, v in fl.items() if k.startswith('real codes')]):.3f}" if r["flicker_ratio"] else ""))
        print(f"  verbatim share {r['verbatim_share']:.3f} (as heard {r['heard_verbatim_share']:.3f}, longest "
              f"{r['heard_longest_verbatim_s']:.2f} s); longest verbatim {r['longest_verbatim_s']:.2f} s "
              f"({r['longest_verbatim_fraction']:.1%} of a clip); held-out bits {r['bits']:.3f} vs unigram "
              f"{r['unigram_bits']:.3f} = {r['bits_ratio']:.3f}x; time in holds >= {HOLD_SECONDS:g} s "
              f"{r['held_share']:.3f} (training codes {r['held_share_material']:.3f}); generate {args.clips} x {args.seconds:.0f} s in "
              f"{r['generate_wall_s']:.1f} s; sheet {r.get('sheet', '(none: --sheet draws it)')}", flush=True)

    def ms(key: str) -> str:
        vals = np.array([r[key] for r in results], dtype=float)
        return f"{vals.mean():.3f} ± {vals.std():.3f}"

    print(f"\n{args.dataset} over seeds {args.seeds}: sample score {ms('mmd.score')} (valid on "
          f"{sum(r['mmd.valid'] for r in results)}/{len(results)} seeds; Fréchet's score {ms('frechet.score')}, valid on "
          f"{sum(r['frechet.valid'] for r in results)}/{len(results)}); verbatim share {ms('verbatim_share')} (as heard "
          f"{ms('heard_verbatim_share')}); "
          f"longest verbatim {ms('longest_verbatim_fraction')} of a clip; bits vs unigram {ms('bits_ratio')}; "
          f"time in holds >= {HOLD_SECONDS:g} s {ms('held_share')} (training codes {ms('held_share_material')})"
          + (f"; spectral detail generated / real audio {ms('spectral_detail_ratio')}"
             if all(r.get("spectral_detail_ratio") is not None for r in results) else "")
          + (f"; flicker generated / real codes {ms('flicker_ratio')}"
             if all(r.get("flicker_ratio") is not None for r in results) else ""))
    out = REPO / "bench" / "out" / f"samples_{args.dataset}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"args": vars(args), "sampling": {k: str(v) for k, v in sampling.items()}, "seeds": results},
                              indent=2, default=float))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
