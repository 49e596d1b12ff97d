"""Codes out of a trained VQ-VAE, and pure statistics over them.

`extract_code_sequences` runs files through the frozen codec; everything else here is a pure function
of code tensors (or mels) so the UI, CLI and benchmarks compute the same numbers the same way.
"""
from __future__ import annotations

import copy
import math
from typing import Sequence

import numpy as np
import torch

from distill.models.vqvae import BATCH_FRAMES as BATCH_FRAMES_PER_CALL

BATCH_FRAMES = 32_768  # padded mel frames per pass of files (~6 min at 48 kHz): their blocks ~70 MB


def _as_mel_list(dataset_or_mels) -> list[torch.Tensor]:
    mels = getattr(dataset_or_mels, "mels", dataset_or_mels)
    return [m if isinstance(m, torch.Tensor) else torch.as_tensor(np.asarray(m)) for m in mels]


def _passes(frames: list[int], batch_frames: int) -> list[list[int]]:
    """Consecutive files up to `batch_frames` padded frames a pass (at least one file; 0: one each)."""
    parts: list[list[int]] = []
    total = 0
    for i, f in enumerate(frames):
        if parts and batch_frames > 0 and total + f <= batch_frames:
            parts[-1].append(i)
            total += f
        else:
            parts.append([i])
            total = f
    return parts


def extract_code_sequences(
    model,
    dataset_or_mels,
    batch_frames: int = BATCH_FRAMES,
    device: str | torch.device | None = None,
    detail: bool = False,
) -> list[torch.Tensor]:
    """Codes [ceil(frames / downsample), Q] (CPU, long) for every mel [n_mels, frames], in input order
    (detail=True: [.., Q + detail_width], the codec's detail levels and spectral detail too).

    Accepts a MelDataset (all its files) or a list of mels. No gradients, eval mode (the model's mode
    is restored afterwards); `device` (default: the model's) runs a copy of the model there.

    Files pass through the codec together, up to `batch_frames` padded frames a pass
    (`ConvVQVAE.encode_files`: on a CPU, short files laid end to end share each convolution call, and all
    of a pass's vectors take their codes together), and each file gets bit for bit the codes it gets
    alone, so a training file's saved codes are those of an upload of it. Elsewhere (CUDA, MPS) each
    file goes through the convolutions on its own: there a batch is not known to keep a row's last
    bits."""
    mels = _as_mel_list(dataset_or_mels)
    if not mels:
        return []
    own = next(model.parameters()).device
    dev = torch.device(device) if device is not None else own
    if dev != own:  # work on a copy: the caller's model stays where it is
        model = copy.deepcopy(model).to(dev)
    for i, m in enumerate(mels):
        if m.dim() != 2 or m.shape[-1] == 0:
            raise ValueError(f"mel {i}: expected [n_mels, frames>0], got {tuple(m.shape)}")
    ds = int(model.downsample)
    padded = [-(-m.shape[-1] // ds) * ds for m in mels]
    out: list[torch.Tensor | None] = [None] * len(mels)
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            for part in _passes(padded, batch_frames):
                codes = model.encode_files([mels[i] for i in part], detail=detail,
                                           batch_frames=BATCH_FRAMES_PER_CALL if dev.type == "cpu" else 0)
                for i, c in zip(part, codes):
                    out[i] = c.cpu().clone()
    finally:
        model.train(was_training)
    return out  # type: ignore[return-value]


# --- code statistics (pure) ------------------------------------------------------------------


def level_histograms(codes_list: Sequence, codebook_size: int) -> torch.Tensor:
    """Code counts per level: list of codes [T', Q] (tensors or arrays) -> [Q, K] int64. The one
    place code histograms are counted (distill.analysis scores from it too)."""
    arrays = [torch.as_tensor(np.asarray(c)) if not isinstance(c, torch.Tensor) else c for c in codes_list]
    if not arrays:
        raise ValueError("no code sequences given")
    q = arrays[0].shape[-1]
    hist = torch.zeros(q, codebook_size, dtype=torch.int64)
    for c in arrays:
        if c.dim() != 2 or c.shape[-1] != q:
            raise ValueError(f"expected codes [T', {q}], got {tuple(c.shape)}")
        c = c.to(torch.int64).cpu()
        if c.numel() and (int(c.min()) < 0 or int(c.max()) >= codebook_size):
            raise ValueError(f"codes outside 0..{codebook_size - 1}")
        for level in range(q):
            hist[level] += torch.bincount(c[:, level], minlength=codebook_size)
    return hist


def utilisation(hist: torch.Tensor) -> torch.Tensor:
    """[Q, K] counts -> [Q] fraction of the K codes used at least once."""
    return (torch.as_tensor(hist) > 0).to(torch.float64).mean(dim=-1)


def perplexity(hist: torch.Tensor) -> torch.Tensor:
    """[Q, K] counts -> [Q] exp(entropy) of each level's code frequencies: the number of equally
    used codes that would carry the same information (K at best, 1 when one code is all). 0 if empty."""
    h = torch.as_tensor(hist).to(torch.float64)
    total = h.sum(dim=-1, keepdim=True)
    p = h / total.clamp_min(1)
    entropy = -(p * torch.log(p.clamp_min(1e-300))).sum(dim=-1)
    return torch.where(total.squeeze(-1) > 0, torch.exp(entropy), torch.zeros_like(entropy))


def dead_codes(hist: torch.Tensor) -> torch.Tensor:
    """[Q, K] counts -> [Q] number of codes never used."""
    return (torch.as_tensor(hist) == 0).sum(dim=-1)


HEALTHY_UTILISATION = 0.8
COLLAPSE_UTILISATION = 0.3  # the level warned about during training
COLLAPSE_PERPLEXITY_FRACTION = 0.1  # or: most material squeezed onto a handful of codes


def codebook_health(hist: torch.Tensor) -> list[dict]:
    """One plain-language verdict per level: "healthy", "some codes unused" or "collapse"."""
    hist = torch.as_tensor(hist)
    k = hist.shape[-1]
    util, perp, dead = utilisation(hist), perplexity(hist), dead_codes(hist)
    out = []
    for q in range(hist.shape[0]):
        u, p, d = float(util[q]), float(perp[q]), int(dead[q])
        if u < COLLAPSE_UTILISATION or p < COLLAPSE_PERPLEXITY_FRACTION * k:
            verdict = "collapse"
            text = (
                f"Level {q + 1} leans on very few codes ({u:.0%} of {k} used, effectively {p:.1f} in play): "
                "it describes little of the sound. More training, fewer levels or a smaller codebook usually help."
            )
        elif u < HEALTHY_UTILISATION:
            verdict = "some codes unused"
            text = (
                f"Level {q + 1} uses {u:.0%} of its {k} codes ({d} never chosen). It works, but the codebook "
                "is bigger than this material needs."
            )
        else:
            verdict = "healthy"
            text = f"Level {q + 1} uses {u:.0%} of its {k} codes, spread over about {p:.0f} in regular use."
        out.append(
            {"level": q, "codebook_size": k, "utilisation": u, "perplexity": p, "dead_codes": d,
             "verdict": verdict, "explanation": text}
        )
    return out


def detail_health(used: Sequence[float], first_level: int) -> dict:
    """The codec's detail levels as one entry beside codebook_health's (they are many and alike): the
    share of codes in use of the least used one (`used`: per detail level) stands for all of them."""
    lowest, n = float(min(used)), len(used)
    verdict = "collapse" if lowest < COLLAPSE_UTILISATION else "some codes unused" if lowest < HEALTHY_UTILISATION \
        else "healthy"
    span = f"levels {first_level + 1}–{first_level + n}" if n > 1 else f"level {first_level + 1}"
    return {"level": first_level, "name": f"detail ({span})", "utilisation": lowest, "verdict": verdict,
            "detail_levels": n, "explanation": (
                f"{n} detail level{'s' if n > 1 else ''}: the fine texture of your own sounds when they are heard "
                f"through their codes (the sequence model does not learn them; a new sound takes its texture from "
                f"your material). The least used of them uses {lowest:.0%} of its codes.")}


# --- reconstruction error ---------------------------------------------------------------------


def _pairs(a, b) -> list[tuple[torch.Tensor, torch.Tensor]]:
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        return [(a, b)]
    a, b = list(a), list(b)
    if len(a) != len(b):
        raise ValueError(f"{len(a)} vs {len(b)} mels")
    return list(zip(a, b))


def mel_l1(a, b) -> float:
    """Mean absolute log-mel difference over every bin and frame: tensors of equal shape, or two
    equal-length lists of them (then frame-weighted, i.e. longer files count more)."""
    total, count = 0.0, 0
    for x, y in _pairs(a, b):
        if x.shape != y.shape:
            raise ValueError(f"shape mismatch {tuple(x.shape)} vs {tuple(y.shape)}")
        total += float((x.to(torch.float64) - y.to(torch.float64)).abs().sum())
        count += x.numel()
    return total / count if count else math.nan


def mean_frame(mels: Sequence[torch.Tensor]) -> torch.Tensor:
    """[n_mels] average log-mel frame over all frames of `mels` (each [n_mels, frames])."""
    total = sum(m.to(torch.float64).sum(dim=-1) for m in mels)
    frames = sum(m.shape[-1] for m in mels)
    if not frames:
        raise ValueError("no frames")
    return (total / frames).to(torch.float32)


def mean_frame_baseline_l1(train_mels: Sequence[torch.Tensor], eval_mels: Sequence[torch.Tensor]) -> float:
    """Error of the dumbest codec: predict every eval frame as the training set's mean frame."""
    mu = mean_frame(list(train_mels)).to(torch.float64)[:, None]
    total, count = 0.0, 0
    for m in eval_mels:
        total += float((m.to(torch.float64) - mu).abs().sum())
        count += m.numel()
    return total / count if count else math.nan
