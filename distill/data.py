"""The in-memory dataset every training stage consumes, and the by-file train/validation split."""
from __future__ import annotations

import random
from dataclasses import dataclass, field

import torch

from distill.config import AudioConfig


@dataclass
class MelDataset:
    """Log-mel frames per used file. The split is by file, so validation means 'new material'."""

    names: list[str]  # relative paths, as in the scan report
    mels: list[torch.Tensor]  # each [n_mels, frames] float32, log(mel + floor)
    audio_config: AudioConfig = field(default_factory=AudioConfig)
    train_index: list[int] = field(default_factory=list)
    val_index: list[int] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.mels)

    def train_mels(self) -> list[torch.Tensor]:
        return [self.mels[i] for i in self.train_index]

    def val_mels(self) -> list[torch.Tensor]:
        return [self.mels[i] for i in self.val_index]


def split_by_file(n_files: int, val_fraction: float, seed: int = 0) -> tuple[list[int], list[int]]:
    """Deterministic split of file indices. Keeps at least one file on each side when n >= 2;
    a single file is used for both (there is nothing held out to measure against)."""
    if n_files <= 0:
        return [], []
    if n_files == 1:
        return [0], [0]
    order = list(range(n_files))
    random.Random(seed).shuffle(order)
    n_val = min(n_files - 1, max(1, round(n_files * val_fraction)))
    return sorted(order[n_val:]), sorted(order[:n_val])
