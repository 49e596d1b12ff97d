"""More material for a small collection's sequence model: its training files a little louder or
quieter, higher or lower, faster or slower, through the trained sound model.

A prior trained on a minute of codes sees each context a handful of times and memorises within a
few dozen steps (on 22 desktop sounds it early-stopped after ~40 steps, seconds into a four-minute
budget). Copies of the training sounds, varied the way a listener still hears as the same
material, give it more contexts to learn what follows what. The held-back files stay as they are,
so validation still measures the real thing, and the copies feed the prior only: the run's saved
codes, histograms and the retrieval index are the real files'.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from distill.training.vqvae_train import augment

COPIES_MAX = 6  # copies of each training file for collections of up to FULL_BELOW_S of audio
FULL_BELOW_S = 60.0
NONE_ABOVE_S = 600.0  # from here on the collection has enough of its own (log scale in between)
STRETCH = 0.1  # time stretched by up to ±10 % (the mel frames resampled; pitch is the shift's job)


def copies_for(train_seconds: float, requested: int = -1) -> int:
    """Varied copies of each training file the prior gets: `requested` (PriorConfig.augment_copies)
    when it is >= 0, else from the amount of training audio."""
    if requested >= 0:
        return requested
    if train_seconds <= FULL_BELOW_S:
        return COPIES_MAX
    if train_seconds >= NONE_ABOVE_S:
        return 0
    return round(COPIES_MAX * math.log(NONE_ABOVE_S / train_seconds) / math.log(NONE_ABOVE_S / FULL_BELOW_S))


def varied_mels(mels: list[torch.Tensor], copies: int, floor: float, seed: int) -> list[torch.Tensor]:
    """`copies` varied versions of each mel [n_mels, frames] (file-major order), seeded: each a random
    gain and mel-band shift (as the sound model's own training augmentation) and a random stretch."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for mel in mels:
        for _ in range(copies):
            rate = 1.0 + (float(torch.rand(1, generator=gen)) * 2 - 1) * STRETCH
            frames = max(1, round(mel.shape[-1] * rate))
            stretched = F.interpolate(mel[None].float(), size=frames, mode="linear", align_corners=False)
            out.append(augment(stretched, floor, gen, prob=1.0)[0])
    return out


def augmented_codes(vq_model, train_mels: list[torch.Tensor], frames_per_second: float, floor: float,
                    seed: int, copies: int = -1) -> list[torch.Tensor]:
    """The codes of varied copies of the training files, for the prior only ([] when the collection
    is large enough). copies: as `copies_for`'s `requested`."""
    from distill.codes import BATCH_FRAMES, extract_code_sequences

    copies = copies_for(sum(int(m.shape[-1]) for m in train_mels) / frames_per_second, copies)
    if copies <= 0 or not train_mels:
        return []
    # batched: these codes are compared with nothing, so only speed matters
    return extract_code_sequences(vq_model, varied_mels(train_mels, copies, floor, seed), batch_frames=BATCH_FRAMES)
