"""Log-mel features and their on-disk cache (keyed by file content hash + feature settings)."""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from safetensors import safe_open

from distill.config import AudioConfig

from distill.storage import atomic_write_bytes, save_tensors


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
    """One folder per settings key. A usable file's entry is one safetensors holding its frames with the
    verdict in the metadata; an unusable file's entry is a JSON verdict. So a second scan neither
    decodes nor re-judges anything. Entries are recomputable, so writes skip fsync (never torn, though)."""

    def __init__(self, root: str | os.PathLike | None, cfg: AudioConfig):
        self.folder = Path(root or default_cache_dir()) / "features" / settings_key(cfg)

    def _paths(self, content_hash: str) -> tuple[Path, Path]:
        sub = self.folder / content_hash[:2]
        return sub / f"{content_hash}.json", sub / f"{content_hash}.safetensors"

    def get(self, content_hash: str) -> tuple[dict, torch.Tensor | None] | None:
        meta_path, mel_path = self._paths(content_hash)
        try:
            with safe_open(str(mel_path), framework="pt") as fh:
                meta = json.loads((fh.metadata() or {}).get("verdict", "null"))
                mel = fh.get_tensor("mel")
            if isinstance(meta, dict) and mel.ndim == 2:
                return meta, mel
        except FileNotFoundError:
            pass
        except Exception:
            return None  # a damaged entry (e.g. our own cache on a full disk) is simply recomputed
        try:
            meta = json.loads(meta_path.read_text())
        except (OSError, ValueError):
            return None
        return (meta, None) if isinstance(meta, dict) and meta.get("status") != "used" else None

    def put(self, content_hash: str, meta: dict, mel: torch.Tensor | None) -> None:
        meta_path, mel_path = self._paths(content_hash)
        try:
            if mel is not None:
                save_tensors(mel_path, {"mel": mel}, metadata={"verdict": json.dumps(meta)}, durable=False)
            else:
                atomic_write_bytes(meta_path, json.dumps(meta).encode(), durable=False)
        except OSError:
            pass  # a full or read-only cache disk only costs speed, never the scan
