"""Shared fixtures: synthetic audio folders and the real collections from ../shared/datasets/fetch.sh."""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

REPO = Path(__file__).resolve().parents[1]
FETCH = Path(os.environ.get("DISTILL_FETCH", REPO.parent / "shared" / "datasets" / "fetch.sh"))

# Tiny test models gain nothing from a second thread, and two busy processes (the test and an app
# subprocess) each spinning two OpenMP threads on 2 cores run many times slower. Children inherit this.
os.environ.setdefault("OMP_NUM_THREADS", "1")
torch.set_num_threads(1)


def tone(seconds: float, freq: float, sr: int = 24_000, kind: str = "sine", seed: int = 0) -> np.ndarray:
    t = np.arange(int(seconds * sr)) / sr
    rng = np.random.default_rng(seed)
    if kind == "sine":
        x = np.sin(2 * np.pi * freq * t)
    elif kind == "saw":
        x = 2 * ((freq * t) % 1.0) - 1
    elif kind == "noise":
        x = rng.standard_normal(t.size) * 0.3
    else:
        raise ValueError(kind)
    env = np.exp(-t * rng.uniform(0.5, 3.0))
    return (0.5 * x * env).astype(np.float32)


def write_synthetic_folder(folder: Path, n: int = 6, seconds: float = 1.0, sr: int = 24_000) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    kinds = ["sine", "saw", "noise"]
    for i in range(n):
        sub = folder / ("a" if i % 2 else "b")
        sub.mkdir(exist_ok=True)
        sf.write(sub / f"clip_{i:02d}.wav", tone(seconds, 110 * (i + 2), sr, kinds[i % 3], seed=i), sr)
    return folder


@pytest.fixture
def synth_folder(tmp_path) -> Path:
    return write_synthetic_folder(tmp_path / "sounds")


@pytest.fixture
def cache_dir(tmp_path) -> Path:
    return tmp_path / "cache"


def fetch_dataset(name: str) -> Path:
    """A real collection. Missing tools or network make the test fail (never skip)."""
    assert FETCH.is_file(), f"{FETCH} is missing: real-audio tests need ../shared/datasets/fetch.sh"
    out = subprocess.run(["bash", str(FETCH), name], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, f"fetch.sh {name} failed: {out.stderr[-2000:]}"
    return Path(out.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="session")
def freedesktop_dir() -> Path:
    return fetch_dataset("freedesktop")
