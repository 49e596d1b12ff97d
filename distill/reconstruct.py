"""A training file heard through the codes: its codes -> the sound model's decoder -> audio.

Played beside the original, it tells a person how much of their sound the codes keep: every level,
the detail levels too (a generated sound's detail comes from the material instead). Needs only the
sound model and the codes, so it works on a run whose sequence model is not trained yet."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

MAX_SECONDS = 120.0  # a long file is heard from its start: decoding costs ~0.07 s per second of audio


@dataclass
class Reconstruction:
    name: str
    wave: np.ndarray  # float32 [samples], peak 0.9
    sample_rate: int
    cut: bool  # the file was longer than MAX_SECONDS: only its start was decoded


def reconstruct_file(run_dir: str | os.PathLike, name: str, vqvae=None,
                     max_seconds: float = MAX_SECONDS) -> Reconstruction:
    """The training file `name` of the run, decoded from its codes. ValueError if it has none."""
    from distill.generate import decode_codes
    from distill.runs import load_codes, load_detail, load_vqvae, read_manifest, run_configs

    run_dir = Path(run_dir)
    codes = load_codes(run_dir)
    if name not in codes:
        raise ValueError(f"'{name}' is not one of this run's training files.")
    audio, vq, _ = run_configs(read_manifest(run_dir))
    steps_per_s = audio.frames_per_second / vq.downsample
    keep = max(1, int(max_seconds * steps_per_s))
    file_codes = np.asarray(codes[name])
    detail = load_detail(run_dir, codes).get(name)
    if detail is not None:  # the file's own detail levels: what the codec keeps of it, all of it
        file_codes = np.concatenate([file_codes, detail], axis=1)
    wave = decode_codes(vqvae if vqvae is not None else load_vqvae(run_dir), audio, file_codes[:keep])
    return Reconstruction(name, wave, audio.sample_rate, cut=len(file_codes) > keep)
