"""What kind of log-mel error costs ViSQOL: the real mel of held-out files altered in controlled ways,
each through the same Griffin-Lim, beside the codec's own round trip.

    python bench/visqol_probe.py --dataset drascula --seed 0      # after bench/bench_samples.py made the run

The codec is the one bench/bench_samples.py trained for that split (bench/out/samples/...); the held-out
files are that seed's 20 %, their first 12 s, the same excerpts and scoring as bench/bench_codec.py
--visqol (audio mode, 48 kHz, loudness matched). Needs `pip install -r bench/requirements.txt`.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from bench_codec import VISQOL_FILES, VISQOL_MAX_S, VISQOL_MIN_S, VISQOL_RATE  # noqa: E402
from bench_samples import dataset_folder, split_files  # noqa: E402

RUNS = {"drascula": "drascula-auto-m6.0-coarse_dropout0.5", "freedesktop": "freedesktop-auto-m4.0"}


def smooth(mel: torch.Tensor, k: int, axis: int) -> torch.Tensor:
    """A k-wide moving average of mel [n_mels, frames] along time (axis=-1) or mel bands (axis=0)."""
    x = mel if axis == -1 else mel.T
    y = torch.nn.functional.avg_pool1d(x[None], k, 1, k // 2, count_include_pad=False)[0][:, : x.shape[-1]]
    return y if axis == -1 else y.T


def variants(mel: torch.Tensor, codec: torch.Tensor) -> dict[str, torch.Tensor]:
    err = float((codec - mel).abs().mean())
    noise = np.random.default_rng(0).laplace(0.0, err, mel.shape).astype(np.float32)
    return {
        "real": mel,
        "real, smoothed over 3 frames": smooth(mel, 3, -1),
        "real, smoothed over 5 frames": smooth(mel, 5, -1),
        "real, smoothed over 3 mel bands": smooth(mel, 3, 0),
        "real, raised where the codec is louder": torch.maximum(mel, torch.minimum(codec, mel + 3.0)),
        "real + noise of the codec's mean error": mel + torch.from_numpy(noise),
        "codec": codec,
        "codec, the real quiet floor put back": torch.where(mel < codec - 1.0, mel, codec),
        "codec + the real frame-to-frame texture": codec + (mel - smooth(mel, 5, -1)),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", default="drascula", choices=sorted(RUNS))
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    import librosa
    from visqol.api import VisqolApi

    from distill.audio.griffinlim import log_mel, mel_to_audio
    from distill.audio.io import decode_file
    from distill.codes import extract_code_sequences
    from distill.generate import load_run
    from distill.runs import run_configs
    from distill.scan import scan_dataset

    run_dir = REPO / "bench" / "out" / "samples" / f"{RUNS[args.dataset]}-s{args.seed}"
    if not (run_dir / "manifest.json").is_file():
        raise SystemExit(f"{run_dir} is missing: run bench/bench_samples.py --dataset {args.dataset} first")
    run = load_run(run_dir, device="cpu")
    audio, _, _ = run_configs(run.manifest)
    api = VisqolApi()
    api.create(mode="audio")
    entries = scan_dataset(dataset_folder(args.dataset), keep_features=False).used  # as bench_samples.py
    held_entries = split_files(entries, args.seed)[1]
    held = [e for e in scan_dataset([Path(e.abs_path) for e in held_entries], audio).used
            if e.seconds >= VISQOL_MIN_S][:VISQOL_FILES]
    scores: dict[str, list[float]] = {}
    for e in held:  # the excerpts and mels of bench_codec.visqol_pairs
        ref = librosa.load(e.abs_path, sr=VISQOL_RATE, mono=True, duration=VISQOL_MAX_S)[0]
        wave = decode_file(Path(e.abs_path), audio).wave[: int(VISQOL_MAX_S * audio.sample_rate)]
        mel = log_mel(torch.from_numpy(wave), audio)
        with torch.inference_mode():
            codes = extract_code_sequences(run.vqvae, [mel], detail=True)[0]
            codec = run.vqvae.decode(codes[None], frames=mel.shape[-1])[0]
        for name, m in variants(mel, codec).items():
            deg = librosa.resample(mel_to_audio(m, audio).numpy(), orig_sr=audio.sample_rate, target_sr=VISQOL_RATE)
            n = min(len(ref), len(deg))
            r, d = ref[:n].astype(np.float64), deg[:n].astype(np.float64)
            d *= np.sqrt((r ** 2).mean() / max((d ** 2).mean(), 1e-12))  # same loudness: judge the sound
            scores.setdefault(name, []).append(float(api.measure_from_arrays(r, d, VISQOL_RATE).moslqo))
        print(f"{Path(e.abs_path).name}: " + ", ".join(f"{k} {v[-1]:.2f}" for k, v in scores.items()), flush=True)
    print(f"\nViSQOL, mean over {len(held)} held-out files of seed {args.seed}:")
    for name, v in scores.items():
        print(f"  {name:42s} {np.mean(v):.3f} ± {np.std(v):.3f}")


if __name__ == "__main__":
    main()
