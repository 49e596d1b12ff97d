"""Log-mel features and their on-disk cache (keyed by file content hash + feature settings)."""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from distill.config import AudioConfig
from distill.storage import UnsafeFileError, atomic_write_json, load_tensors, save_tensors


def compute_log_mel(wave: np.ndarray, cfg: AudioConfig) -> torch.Tensor:
    """[samples] float32 -> [n_mels, frames] float32, log(mel power + floor)."""
    from distill.audio.griffinlim import log_mel

    with torch.inference_mode():
        return log_mel(torch.from_numpy(np.ascontiguousarray(wave)), cfg).contiguous()


def settings_key(cfg: AudioConfig) -> str:
    """Short hash of everything that changes the features (so new settings never reuse old frames)."""
    blob = json.dumps({**asdict(cfg), "version": 1}, sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def default_cache_dir() -> Path:
    env = os.environ.get("DISTILL_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "distill"


class FeatureCache:
    """One folder per settings key; per file a safetensors of the frames (usable files) plus a JSON
    verdict (every file), so a second scan neither decodes nor re-judges anything."""

    def __init__(self, root: str | os.PathLike | None, cfg: AudioConfig):
        self.folder = Path(root or default_cache_dir()) / "features" / settings_key(cfg)

    def _paths(self, content_hash: str) -> tuple[Path, Path]:
        sub = self.folder / content_hash[:2]
        return sub / f"{content_hash}.json", sub / f"{content_hash}.safetensors"

    def get(self, content_hash: str) -> tuple[dict, torch.Tensor | None] | None:
        meta_path, mel_path = self._paths(content_hash)
        try:
            meta = json.loads(meta_path.read_text())
        except (OSError, ValueError):
            return None
        if not isinstance(meta, dict):
            return None
        if meta.get("status") != "used":
            return meta, None
        try:
            mel = load_tensors(mel_path)["mel"]
        except (UnsafeFileError, KeyError, OSError):
            return None  # a damaged cache entry is simply recomputed
        return meta, mel

    def put(self, content_hash: str, meta: dict, mel: torch.Tensor | None) -> None:
        meta_path, mel_path = self._paths(content_hash)
        try:
            if mel is not None:
                save_tensors(mel_path, {"mel": mel})
            atomic_write_json(meta_path, meta)  # written last: it is the entry's commit point
        except OSError:
            pass  # a full or read-only cache disk only costs speed, never the scan
