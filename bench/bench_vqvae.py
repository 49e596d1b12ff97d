"""Benchmark the RVQ-VAE codec on real audio (issue 3 targets).

    python bench/bench_vqvae.py --dataset freedesktop --minutes 5
    python bench/bench_vqvae.py --dataset asterisk-en --minutes 5
    python bench/bench_vqvae.py --dataset freedesktop --gl-sweep   # vocoder only
    python bench/bench_vqvae.py --dataset drascula --gl-blocks    # Griffin-Lim in blocks vs in one piece

Default tier settings for the file count, split by file (the tier's val_fraction, seed 0). Prints:
  held-out mel_l1, the mean-frame baseline and their ratio                  (target ratio <= 0.25)
  per-level utilisation over the training files                             (target >= 80 %)
  per-level perplexity on the held-out files
  code extraction speed on all files, x real time, features cached          (target >= 300x)
  decode + Griffin-Lim CPU seconds per second of audio                      (target <= 0.1)
and writes, for two held-out files, original / Griffin-Lim of the real mel / codec reconstruction
as WAV into bench/out/ for listening.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from distill.audio.griffinlim import (BLOCK_FRAMES, DEFAULT_N_ITER, griffin_lim, log_mel, mel_ceiling,  # noqa: E402
                                      mel_to_audio, mel_to_linear)
from distill.codes import (  # noqa: E402
    codebook_health, extract_code_sequences, level_histograms, mean_frame_baseline_l1, mel_l1, perplexity, utilisation,
)
from distill.config import AudioConfig, apply_overrides, get_adaptive_vqvae_config  # noqa: E402
from distill.data import MelDataset, split_by_file  # noqa: E402

OUT = ROOT / "bench" / "out"


def dataset_folder(name: str) -> str:
    script = ROOT / "scripts" / "fetch_datasets.sh"
    return subprocess.run(["bash", str(script), name], check=True, capture_output=True, text=True).stdout.strip()


def load_mels(folder: str, audio: AudioConfig) -> tuple[list[str], list[torch.Tensor], list[Path]]:
    """Features through the project's own scanner + cache when present; plain librosa otherwise."""
    try:
        from distill.scan import scan_dataset

        report = scan_dataset(folder, audio)
        used = report.used
        return [e.path for e in used], [e.mel for e in used], [Path(report.root) / e.path for e in used]
    except ImportError:
        import librosa

        paths = sorted(p for p in Path(folder).rglob("*") if p.suffix.lower() in {".wav", ".oga", ".ogg", ".flac"})
        mels = [log_mel(torch.from_numpy(librosa.load(str(p), sr=audio.sample_rate, mono=True)[0]), audio) for p in paths]
        return [str(p.relative_to(folder)) for p in paths], mels, paths


def load_wave(path: Path, audio: AudioConfig) -> np.ndarray:
    try:
        from distill.audio.io import decode_file

        return decode_file(path, audio).wave
    except ImportError:
        import librosa

        return librosa.load(str(path), sr=audio.sample_rate, mono=True)[0]


def write_wav(path: Path, wave, sr: int) -> None:
    import soundfile as sf

    wave = np.asarray(wave, dtype=np.float32)
    peak = float(np.abs(wave).max()) if wave.size else 0.0
    sf.write(str(path), wave * (0.9 / peak if peak > 0 else 1.0), sr)


def gl_sweep(mels: list[torch.Tensor], audio: AudioConfig) -> None:
    """Vocoder quality vs cost: log-mel L1 of the re-analysed Griffin-Lim audio against its input."""
    mels = mels[:12]
    secs = sum(m.shape[-1] for m in mels) * audio.hop_length / audio.sample_rate
    print(f"Griffin-Lim sweep on {len(mels)} files ({secs:.1f} s of audio), {torch.get_num_threads()} thread(s)")
    print(" nnls  n_iter  cpu_s_per_audio_s  reanalysed_mel_l1")
    mel_to_audio(mels[0], audio, n_iter=2)  # warm-up
    for nnls in (0, 16):
        for n_iter in (8, 16, 24, 32, 48, 64):
            cpu, err, frames = 0.0, 0.0, 0
            for m in mels:
                t = time.process_time()
                mag = mel_to_linear(m.unsqueeze(0), audio, nnls_iters=nnls).sqrt()
                wave = griffin_lim(mag, audio, n_iter=n_iter, length=m.shape[-1] * audio.hop_length)[0]
                cpu += time.process_time() - t
                again = log_mel(wave, audio)[:, : m.shape[-1]]
                err += float((again - m).abs().sum())
                frames += m.numel()
            print(f" {nnls:4d}  {n_iter:6d}  {cpu / secs:17.4f}  {err / frames:17.4f}")


def gl_blocks(mels: list[torch.Tensor], audio: AudioConfig, seconds: float = 60.0) -> None:
    """Griffin-Lim block by block (griffinlim.BLOCK_FRAMES) against one piece, on each file's first
    `seconds` (up to 8 files): cost per audio second and the re-analysed log-mel L1 (mel_to_audio's path)."""
    cut = [m[:, : int(seconds * audio.frames_per_second)] for m in mels[:8]]
    secs = sum(m.shape[-1] for m in cut) / audio.frames_per_second
    print(f"Griffin-Lim in blocks of {BLOCK_FRAMES} frames vs one piece: {len(cut)} files' first {seconds:g} s "
          f"({secs:.0f} s of audio), {DEFAULT_N_ITER} iterations, {torch.get_num_threads()} thread(s)")
    griffin_lim(mel_to_linear(cut[0][None, :, :200], audio).sqrt(), audio)  # warm-up
    for name, block in (("one piece", 1 << 30), ("blocks", BLOCK_FRAMES)):
        cpu, err, cells = 0.0, 0.0, 0
        for m in cut:
            x = torch.minimum(m, mel_ceiling(audio)[:, None])[None]
            t = time.process_time()
            wave = griffin_lim(mel_to_linear(x, audio).sqrt(), audio, length=m.shape[-1] * audio.hop_length,
                               block_frames=block)[0]
            cpu += time.process_time() - t
            err += float((log_mel(wave, audio)[:, : m.shape[-1]] - m).abs().sum())
            cells += m.numel()
        print(f"  {name:9s}  {cpu / secs:.4f} CPU s per audio s   re-analysed mel L1 {err / cells:.4f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", default="freedesktop", help="freedesktop or asterisk-en (or a folder)")
    ap.add_argument("--minutes", type=float, default=5.0, help="VQ-VAE training budget")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--set", action="append", default=[], metavar="KEY=JSON", help="override a VQVAEConfig field")
    ap.add_argument("--gl-sweep", action="store_true", help="only measure Griffin-Lim quality vs iterations")
    ap.add_argument("--gl-blocks", action="store_true", help="only measure Griffin-Lim in blocks vs in one piece")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: leave torch's default)")
    ap.add_argument("--sample-rate", type=int, default=0, choices=[0, 24000, 48000],
                    help="the rate to work at (0: what `distill train` chooses for the files)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    folder = args.dataset if Path(args.dataset).is_dir() else dataset_folder(args.dataset)
    from distill.planning import TrainOptions, audio_config_for

    audio = audio_config_for(TrainOptions(sample_rate=args.sample_rate), folder)  # the rate `distill train` picks
    t = time.perf_counter()
    names, mels, paths = load_mels(folder, audio)
    audio_seconds = [m.shape[-1] * audio.hop_length / audio.sample_rate for m in mels]
    print(f"{args.dataset}: {len(mels)} files, {sum(audio_seconds) / 60:.1f} min of audio at {audio.sample_rate} Hz, "
          f"features in {time.perf_counter() - t:.1f} s")
    if args.gl_sweep:
        gl_sweep(mels, audio)
        return
    if args.gl_blocks:
        gl_blocks(mels, audio)
        return

    from distill.training.vqvae_train import estimate_vqvae_memory_bytes, train_vqvae

    cfg = get_adaptive_vqvae_config(len(mels), sample_rate=audio.sample_rate)
    overrides = {kv.split("=", 1)[0]: json.loads(kv.split("=", 1)[1]) for kv in args.set}
    cfg = apply_overrides(cfg, {"time_budget_s": args.minutes * 60.0, "max_steps": 1_000_000, "seed": args.seed,
                                "device": "cpu", **overrides})
    train_idx, val_idx = split_by_file(len(mels), cfg.val_fraction, args.seed)
    data = MelDataset(names, mels, audio, train_idx, val_idx)
    print(f"tier config: {json.dumps({k: v for k, v in vars(cfg).items()})}")
    print(f"train {len(train_idx)} files / held-out {len(val_idx)} files; "
          f"~{estimate_vqvae_memory_bytes(cfg, audio.n_mels) / 1e6:.0f} MB training memory (estimate)")

    def show(e: dict) -> None:
        if e["kind"] == "eval":
            print(f"  step {e['step']:5d} {e['seconds']:6.0f}s  val_mel_l1 {e['val_mel_l1']:.4f}  train util "
                  f"{[round(u, 2) for u in e['utilisation']]}  val ppl {[round(p) for p in e['val_perplexity']]}"
                  f"  resets {[int(r) for r in e['codes_reset']]}", flush=True)
        elif e["kind"] in ("warning", "info"):
            print(f"  [{e['kind']}] {e['message']}", flush=True)

    result = train_vqvae(data, cfg, callbacks=[show])
    model = result.model
    print(f"trained {result.steps} steps in {result.seconds:.0f} s ({result.seconds / max(result.steps, 1):.2f} s/step), "
          f"best step {result.best_step}, {model.num_parameters() / 1e6:.2f} M parameters; {result.stop_reason}")

    # held-out reconstruction vs the mean-frame baseline
    train_mels, val_mels = data.train_mels(), data.val_mels()
    val_codes = extract_code_sequences(model, val_mels, detail=True)  # a round trip keeps every level
    with torch.inference_mode():
        recons = [model.decode(c[None], frames=m.shape[-1])[0] for c, m in zip(val_codes, val_mels)]
    err = mel_l1(recons, val_mels)
    base = mean_frame_baseline_l1(train_mels, val_mels)

    # codebook use: utilisation over the training files, perplexity on held-out files
    train_hist = level_histograms(extract_code_sequences(model, train_mels, detail=True), cfg.codebook_size)
    val_hist = level_histograms(val_codes, cfg.codebook_size)

    # extraction speed over every file (features already in memory = cached)
    extract_code_sequences(model, mels[:4], detail=True)  # warm-up
    t = time.perf_counter()
    extract_code_sequences(model, mels, detail=True)  # every level, as the codes stage does
    ext_s = time.perf_counter() - t

    # decode + Griffin-Lim: CPU seconds per audio second, on held-out material (up to ~60 s)
    picked, secs = [], 0.0
    for c, m in zip(val_codes, val_mels):
        if secs > 60:
            break
        picked.append((c, m))
        secs += m.shape[-1] * audio.hop_length / audio.sample_rate
    with torch.inference_mode():
        mel_to_audio(model.decode(picked[0][0][None])[0], audio)  # warm-up
        cpu0, wall0 = time.process_time(), time.perf_counter()
        for c, m in picked:
            mel_to_audio(model.decode(c[None], frames=m.shape[-1])[0], audio)
        dec_cpu, dec_wall = time.process_time() - cpu0, time.perf_counter() - wall0

    total_audio = sum(audio_seconds)
    print("\n=== results", "(smoke run)" if args.minutes < 5 else "", "===")
    print(f"held-out mel_l1          {err:.4f}")
    print(f"baseline_mel_l1          {base:.4f}   (every frame = training mean frame)")
    print(f"ratio                    {err / base:.3f}   (target <= 0.25)")
    q = cfg.num_quantizers
    used = utilisation(train_hist)
    print(f"train utilisation        {[round(float(u), 3) for u in used[:q]]}, detail levels lowest "
          f"{float(used[q:].min()) if len(used) > q else float('nan'):.3f}   (target >= 0.80 each)")
    print(f"held-out perplexity      {[round(float(p), 1) for p in perplexity(val_hist)[:q]]}   (of {cfg.codebook_size})")
    print(f"held-out utilisation     {[round(float(u), 3) for u in utilisation(val_hist)[:q]]}")
    for h in codebook_health(train_hist[:q]):
        print(f"  level {h['level'] + 1}: {h['verdict']}")
    print(f"extraction               {total_audio / ext_s:.0f}x real time ({total_audio:.0f} s of audio in {ext_s:.2f} s, "
          f"{len(mels)} files; target >= 300x)")
    print(f"decode + Griffin-Lim     {dec_cpu / secs:.4f} CPU s per audio s ({dec_wall / secs:.4f} wall), n_iter "
          f"{DEFAULT_N_ITER}, {torch.get_num_threads()} thread(s) (target <= 0.1)")

    # listening: original, vocoder floor (GL of the real mel), codec reconstruction
    OUT.mkdir(parents=True, exist_ok=True)
    tag = Path(args.dataset).name
    longest = sorted(range(len(val_idx)), key=lambda j: -val_mels[j].shape[-1])[:2]
    for j in longest:
        i = val_idx[j]
        stem = f"{tag}_{Path(names[i]).stem}"
        write_wav(OUT / f"{stem}_1_original.wav", load_wave(paths[i], audio), audio.sample_rate)
        write_wav(OUT / f"{stem}_2_griffinlim_of_real_mel.wav", mel_to_audio(val_mels[j], audio).numpy(), audio.sample_rate)
        write_wav(OUT / f"{stem}_3_codec_reconstruction.wav", mel_to_audio(recons[j], audio).numpy(), audio.sample_rate)
        print(f"wrote {OUT}/{stem}_{{1_original,2_griffinlim_of_real_mel,3_codec_reconstruction}}.wav")


if __name__ == "__main__":
    main()
