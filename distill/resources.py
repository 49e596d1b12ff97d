"""Will these settings fit? Estimate training memory and compare it with what the device has free,
so impossible settings are refused up front (with the numbers) instead of crashing mid-run."""
from __future__ import annotations

import os

from distill.config import PriorConfig, VQVAEConfig

HEADROOM = 0.8  # leave a fifth of free memory to the OS, the page and the app itself


class SettingsError(ValueError):
    """Settings that cannot work on this machine; the message says why and what to change."""


def available_bytes(device_type: str = "cpu") -> int:
    import torch

    if device_type == "cuda":
        return int(torch.cuda.mem_get_info()[0])
    if device_type == "mps":
        return int(torch.mps.recommended_max_memory())
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") * 0.5)


def training_memory_bytes(vq: VQVAEConfig, prior: PriorConfig, n_mels: int) -> dict:
    from distill.models.prior import estimate_prior_memory_bytes
    from distill.runs import _check_limits
    from distill.training.vqvae_train import estimate_vqvae_memory_bytes

    try:  # bounds first: estimating builds the codec, which absurd sizes would make huge by itself
        _check_limits(vq, "VQ-VAE settings")
        _check_limits(prior, "prior settings")
    except ValueError as exc:
        raise SettingsError(str(exc)) from None
    return {"vqvae": estimate_vqvae_memory_bytes(vq, n_mels),
            "prior": estimate_prior_memory_bytes(prior, vq.codebook_size, vq.num_quantizers)}


def check_fits(vq: VQVAEConfig, prior: PriorConfig, n_mels: int, device_type: str) -> dict:
    """Raise SettingsError when either model's training would not fit; else return the estimates."""
    need = training_memory_bytes(vq, prior, n_mels)
    free = available_bytes(device_type)
    for stage, nbytes in need.items():
        if nbytes > HEADROOM * free:
            what = "the VQ-VAE (lower its batch size, window or width)" if stage == "vqvae" else \
                "the prior (lower its batch size, hidden size, layers or context length)"
            raise SettingsError(
                f"These settings need about {nbytes / 1024**3:.1f} GB to train {what}, but only "
                f"{free / 1024**3:.1f} GB is free on the {device_type.upper()}. Nothing was started."
            )
    return {"vqvae_mb": round(need["vqvae"] / 1024**2), "prior_mb": round(need["prior"] / 1024**2),
            "free_mb": round(free / 1024**2)}


def check_settings(vq: VQVAEConfig, prior: PriorConfig, n_mels: int, device: str = "auto") -> dict:
    """Everything Start checks before a model is built (bounds, heads, memory), for paths that do not
    go through a plan, such as retraining the prior. Raises SettingsError in words."""
    from distill.device import resolve_device

    if prior.num_heads >= 1 and prior.hidden_size % prior.num_heads:
        raise SettingsError(f"The prior width ({prior.hidden_size}) must be a multiple of the number of heads "
                            f"({prior.num_heads}). Nothing was started.")
    try:
        device_type = resolve_device(device).type
    except (RuntimeError, ValueError) as exc:
        raise SettingsError(str(exc)) from None
    return check_fits(vq, prior, n_mels, device_type)
