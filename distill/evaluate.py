"""Measure a trained run on a folder of audio: codec quality, codebook use, prior bits, sample statistics."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from distill.runs import load_codes, read_manifest, run_configs
from distill.scan import DatasetError, scan_dataset


def evaluate_run(run_dir, data_dir, samples: int = 4, sample_seconds: float = 10.0, seed: int = 0,
                 cache_dir=None) -> dict:
    from distill.codes import codebook_health, detail_health, extract_code_sequences, level_histograms, utilisation
    from distill.codes import mean_frame as codes_mean_frame
    from distill.runs import load_vqvae

    run_dir = Path(run_dir)
    manifest = read_manifest(run_dir)
    audio, vq, prior_cfg = run_configs(manifest)
    report = scan_dataset(data_dir, audio, cache_dir=cache_dir)
    if not report.used:
        raise DatasetError(f"no usable audio in {data_dir}")
    mels = [e.mel for e in report.used]
    model = load_vqvae(run_dir)
    every = extract_code_sequences(model, mels, detail=True)  # the round trip keeps the detail levels
    codes = [c[:, : model.coarse_levels] for c in every]
    total_err, total_base, frames = 0.0, 0.0, 0
    mean = manifest.get("train_mean_frame")
    mean_frame = torch.tensor(mean, dtype=torch.float32) if mean else codes_mean_frame(mels)
    with torch.inference_mode():
        for mel, c in zip(mels, every):
            recon = model.decode(torch.as_tensor(c)[None], frames=mel.shape[1])[0]
            total_err += float((recon - mel).abs().sum())
            total_base += float((mean_frame[:, None] - mel).abs().sum())
            frames += mel.numel()
    hist = level_histograms(every, vq.codebook_size)
    levels = codebook_health(hist[: model.coarse_levels])
    if model.detail_levels:
        levels.append(detail_health(utilisation(hist[model.coarse_levels : model.coarse_levels + model.detail_levels]).tolist(),
                                    model.coarse_levels))
    out: dict = {
        "files": len(mels),
        "vqvae.mel_l1": total_err / frames,
        "vqvae.baseline_mel_l1": total_base / frames,
        "vqvae.levels": levels,
    }
    out["vqvae.ratio_to_baseline"] = out["vqvae.mel_l1"] / max(out["vqvae.baseline_mel_l1"], 1e-12)
    if prior_cfg is not None and (run_dir / "prior.safetensors").is_file():
        out.update(_evaluate_prior(run_dir, manifest, codes, vq.codebook_size, samples, sample_seconds, seed))
    return out


def _evaluate_prior(run_dir: Path, manifest: dict, eval_codes: list, codebook_size: int, samples: int,
                    sample_seconds: float, seed: int) -> dict:
    from distill.analysis import copy_fraction, histogram_jsd, nll_bits, unigram_bits
    from distill.generate import generate_codes, load_run

    run = load_run(run_dir)
    by_name = load_codes(run_dir)
    val_names = set((manifest.get("split") or {}).get("val") or [])
    train_codes = [torch.as_tensor(c) for n, c in by_name.items() if n not in val_names] or [torch.as_tensor(c) for c in by_name.values()]
    eval_t = [torch.as_tensor(c) for c in eval_codes]
    out = {
        "prior.val_nll_bits": float(nll_bits(run.prior, eval_t)),
        "prior.unigram_bits": float(unigram_bits(train_codes, eval_t, codebook_size)),
    }
    out["prior.ratio_to_unigram"] = out["prior.val_nll_bits"] / max(out["prior.unigram_bits"], 1e-12)
    if samples > 0:
        generated = [torch.as_tensor(generate_codes(run, sample_seconds, seed=seed + i)) for i in range(samples)]
        gen_tokens = sum(int(g.numel()) for g in generated)
        out["prior.generated_jsd"] = histogram_jsd(generated, train_codes, codebook_size)
        # Reference: held-out real codes of the same size against the training codes.
        held = _take_tokens(eval_t, gen_tokens)
        out["prior.heldout_jsd"] = histogram_jsd(held, train_codes, codebook_size)
        out["prior.copy_fraction"] = float(np.mean([copy_fraction(g, train_codes) for g in generated]))
        # a replay of training files, even cut into pieces, is not a new sound: the share of generated
        # time steps inside a run of >= 0.5 s found verbatim in the training codes
        from distill.sample_score import verbatim_share

        audio, vq, _ = run_configs(manifest)
        min_steps = math.ceil(0.5 * audio.frames_per_second / vq.downsample)
        out["prior.verbatim_share"] = float(np.mean([verbatim_share(g.numpy(), [c.numpy() for c in train_codes], min_steps)
                                                     for g in generated]))
    return out


def _take_tokens(codes: list, n_tokens: int) -> list:
    out, have = [], 0
    for c in codes:
        if have >= n_tokens:
            break
        need = max(1, (n_tokens - have) // c.shape[1])
        out.append(c[:need])
        have += int(out[-1].numel())
    return out
