"""New audio from a trained run: sample codes from the prior, decode them, vocode with Griffin-Lim."""
from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from distill.config import SAMPLING_DEFAULTS
from distill.runs import file_sha256, load_codes, load_prior, load_vqvae, read_manifest, run_configs
from distill.storage import atomic_write_bytes, atomic_write_json

MAX_SECONDS = 600.0


@dataclass
class LoadedRun:
    """A run's models in memory, for repeated generation without reloading."""

    run_dir: Path
    manifest: dict
    vqvae: torch.nn.Module
    prior: torch.nn.Module
    prior_hash: str
    stamp: tuple  # (mtime_ns of vqvae, prior): tells a cache when the files changed
    _retrieval: dict = field(default_factory=dict, repr=False)  # RetrievalSettings -> index, built on first use
    _detail: dict = field(default_factory=dict, repr=False)  # "bank" -> DetailBank (or None), built on first use

    def retrieval_index(self, settings):
        """The training codes indexed for retrieval while sampling (built once per run and settings)."""
        from distill.models.retrieval import CodeRetrieval

        if settings not in self._retrieval:
            vq = self.vqvae_config
            # every file the user gave is material (the held-back split only served early stopping)
            codes = list(load_codes(self.run_dir).values())
            self._retrieval[settings] = CodeRetrieval(codes, vq.codebook_size, vq.num_quantizers, settings)
        return self._retrieval[settings]

    def detail_bank(self):
        """The material's detail codes, for codes the sequence model made (None: the codec has no
        detail levels, or the run keeps none)."""
        if "bank" not in self._detail:
            self._detail["bank"] = load_detail_bank(self.run_dir, self.vqvae)
        return self._detail["bank"]

    def with_detail(self, codes: np.ndarray, known: np.ndarray | None = None, new_fine_codes: bool = False) -> np.ndarray:
        """[T', Q] codes -> the codes they are heard with [T', Q + detail_width] (`DetailBank.realise`:
        detail, and stretches of the material's finer codes, from the material; `known`: the detail of
        the first steps, kept; new_fine_codes: the finer codes kept as they are); codes already with
        detail, or a run without, as they are."""
        return add_detail(self.detail_bank(), self.vqvae, codes, known, new_fine_codes)

    @property
    def audio_config(self):
        return run_configs(self.manifest)[0]

    @property
    def vqvae_config(self):
        return run_configs(self.manifest)[1]


def load_detail_bank(run_dir: Path, vqvae):
    """The run's material as a DetailBank (distill/detail.py): its codes and detail, or, where the codec
    has no detail levels, its codes alone (the bank then realises the finer coarse codes only). None
    where the run has no codes, or its detail is missing."""
    from distill.detail import DetailBank
    from distill.runs import load_detail

    if not (Path(run_dir) / "codes.safetensors").is_file():  # stopped before its codes were extracted
        return None
    codes = load_codes(run_dir)
    if not codes:
        return None
    if not getattr(vqvae, "detail_width", 0):
        return DetailBank.from_codec(vqvae, list(codes.values()), [np.zeros((len(c), 0), np.int64) for c in codes.values()])
    detail = load_detail(run_dir, codes)
    return DetailBank.from_codec(vqvae, list(codes.values()), list(detail.values())) if detail else None


def add_detail(bank, vqvae, codes: np.ndarray, known: np.ndarray | None = None,
               new_fine_codes: bool = False) -> np.ndarray:
    """[T', Q] codes -> the codes they are heard with [T', Q + detail_width], from `bank`
    (`DetailBank.realise`); codes that already have their detail, or any codes where `bank` is None,
    as they are."""
    codes = np.asarray(codes)
    if bank is None or codes.shape[1] != vqvae.coarse_levels:
        return codes
    return bank.realise(codes, known, new_fine_codes)


def _stamp(run_dir: Path) -> tuple:
    return tuple((run_dir / f).stat().st_mtime_ns for f in ("vqvae.safetensors", "prior.safetensors"))


def load_run(run_dir: str | os.PathLike, device: str = "cpu") -> LoadedRun:
    run_dir = Path(run_dir)
    manifest = read_manifest(run_dir)
    stamp = _stamp(run_dir)
    return LoadedRun(
        run_dir=run_dir, manifest=manifest, vqvae=load_vqvae(run_dir, device), prior=load_prior(run_dir, device),
        prior_hash=file_sha256(run_dir / "prior.safetensors")[:16], stamp=stamp,
    )


class RunCache:
    """Keeps the last few loaded runs; reloads a run whose model files changed (e.g. prior retrained)."""

    def __init__(self, size: int = 2):
        self.size = size
        self._runs: dict[str, LoadedRun] = {}

    def get(self, run_dir: str | os.PathLike) -> LoadedRun:
        key = str(Path(run_dir).resolve())
        run = self._runs.get(key)
        if run is None or run.stamp != _stamp(Path(run_dir)):
            run = load_run(run_dir)
            self._runs.pop(key, None)
            self._runs[key] = run
            while len(self._runs) > self.size:
                self._runs.pop(next(iter(self._runs)))
        return run


def generate_codes(run: LoadedRun, seconds: float, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
                   seed: int = 0, prompt_codes: np.ndarray | None = None, clip_ends: bool = True,
                   retrieval=SAMPLING_DEFAULTS["retrieval"]) -> np.ndarray:
    """Sample [T', Q] codes covering `seconds` of audio (continuing `prompt_codes` when given).
    clip_ends: where the prior learnt where files end, a sound that ends is followed by a fresh one
    (False: one continuous stream, as priors without the end head always give).
    retrieval: 0..1, how much each next code follows what came next in the material after the same
    recent codes (distill/models/retrieval.py); 0: the model alone. (A RetrievalSettings: all of its
    settings, for benchmarks.)"""
    from distill.models.retrieval import RetrievalSettings

    settings = retrieval if isinstance(retrieval, RetrievalSettings) else RetrievalSettings(weight=float(retrieval))
    retrieval = settings.weight

    from distill.models.prior import flatten_codes, unflatten_codes

    if not 0 < seconds <= MAX_SECONDS:
        raise ValueError(f"duration must be between 0 and {MAX_SECONDS:.0f} seconds")
    if temperature < 0 or not 0 < top_p <= 1 or top_k < 0:
        raise ValueError("temperature must be ≥ 0, top-p in (0, 1], top-k ≥ 0")
    if not 0 <= retrieval <= 1:
        raise ValueError("how closely to follow your material (retrieval) must be between 0 and 1")
    audio, vq, _ = run_configs(run.manifest)
    steps = max(1, math.ceil(seconds * audio.frames_per_second / vq.downsample))
    generator = torch.Generator().manual_seed(int(seed))
    prompt, whole_file = None, True
    if prompt_codes is not None and len(prompt_codes):
        context_steps = run.prior.seq_len // vq.num_quantizers
        tail = np.asarray(prompt_codes)[-max(1, context_steps // 2):]
        prompt = flatten_codes(torch.as_tensor(tail, dtype=torch.long)[None])
        whole_file = len(tail) == len(prompt_codes)
    flat = run.prior.generate(steps * vq.num_quantizers, temperature=temperature, top_k=top_k, top_p=top_p,
                              prompt=prompt, generator=generator, clip_ends=clip_ends,
                              prompt_starts_clip=whole_file,  # a cut prompt begins mid-sound
                              retrieval=run.retrieval_index(settings) if retrieval > 0 else None)
    return unflatten_codes(flat, vq.num_quantizers)[0].cpu().numpy()


def codes_to_audio(run: LoadedRun, codes: np.ndarray, normalise: bool = True) -> np.ndarray:
    """Codes of the run's sequence model [T', Q] (heard with detail from the material: `LoadedRun.with_detail`)
    or with their own detail [T', Q + detail_width] -> audio."""
    return decode_codes(run.vqvae, run_configs(run.manifest)[0], run.with_detail(codes), normalise)


def decode_codes(vqvae: torch.nn.Module, audio, codes: np.ndarray, normalise: bool = True) -> np.ndarray:
    """[T', Q] codes (or with detail levels) -> the sound model's decoder -> log-mel -> Griffin-Lim -> float32 audio peaking at 0.9
    (normalise=False: as decoded, so a caller can tell a near-silent result from a sound)."""
    from distill.audio.griffinlim import mel_to_audio

    with torch.inference_mode():
        mel = vqvae.decode(torch.as_tensor(codes, dtype=torch.long)[None])
        wave = mel_to_audio(mel[0], audio)
    wave = wave.cpu().numpy().astype(np.float32)
    if not normalise:
        return wave
    peak = float(np.abs(wave).max()) if wave.size else 0.0
    return wave * (0.9 / peak) if peak > 0 else wave


def generate_audio(run_dir, seconds: float, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
                   seed: int = 0, prompt_file: str | None = None, cache: RunCache | None = None,
                   clip_ends: bool = True, retrieval: float = SAMPLING_DEFAULTS["retrieval"]):
    """-> (waveform float32 [samples], sample_rate, codes int64 [T', Q]). Same inputs, same audio."""
    run = cache.get(run_dir) if cache else load_run(run_dir)
    prompt_codes = None
    if prompt_file:
        codes_by_name = load_codes(run.run_dir)
        if prompt_file not in codes_by_name:
            raise ValueError(f"'{prompt_file}' is not one of this run's training files")
        prompt_codes = codes_by_name[prompt_file]
    codes = generate_codes(run, seconds, temperature, top_k, top_p, seed, prompt_codes, clip_ends, retrieval)
    wave = codes_to_audio(run, codes)
    audio = run.audio_config
    return wave[: int(round(seconds * audio.sample_rate))], audio.sample_rate, codes


def save_sample(run_dir, wave: np.ndarray, sample_rate: int, codes: np.ndarray, settings: dict, fmt: str = "wav",
                detail: np.ndarray | None = None) -> dict:
    """Write the audio, its codes (and the detail it was decoded with) and a sidecar JSON (settings,
    seed, model hash) into samples/."""
    import io

    import soundfile as sf

    if fmt not in ("wav", "flac"):
        raise ValueError("format must be wav or flac")
    run_dir = Path(run_dir)
    folder = run_dir / "samples"
    folder.mkdir(exist_ok=True)
    manifest = read_manifest(run_dir)
    sample_id = time.strftime("%Y%m%d-%H%M%S") + f"-s{int(settings.get('seed', 0))}-{os.urandom(2).hex()}"
    buf = io.BytesIO()
    sf.write(buf, wave, sample_rate, format=fmt.upper(), subtype="PCM_16")
    audio_path = folder / f"{sample_id}.{fmt}"
    atomic_write_bytes(audio_path, buf.getvalue())
    from distill.storage import save_tensors

    tensors = {"codes": torch.as_tensor(codes, dtype=torch.int16)}
    if detail is not None and len(detail) == len(codes):
        tensors["detail"] = torch.as_tensor(np.asarray(detail), dtype=torch.int16)
    save_tensors(folder / f"{sample_id}.codes.safetensors", tensors)
    sidecar = {
        "id": sample_id, "file": audio_path.name, "seconds": round(len(wave) / sample_rate, 3), "sample_rate": sample_rate,
        "settings": settings, "prior_hash": (manifest.get("hashes") or {}).get("prior"),
        "vqvae_hash": (manifest.get("hashes") or {}).get("vqvae"), "created": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    atomic_write_json(folder / f"{sample_id}.json", sidecar)
    return {"id": sample_id, "path": str(audio_path), "sidecar": str(folder / f"{sample_id}.json")}


def list_samples(run_dir) -> list[dict]:
    out = []
    for p in sorted((Path(run_dir) / "samples").glob("*.json"), reverse=True):
        try:
            meta = json.loads(p.read_text())
        except (OSError, ValueError, RecursionError):  # a sidecar from an imported bundle may be hostile
            continue
        name = meta.get("file") if isinstance(meta, dict) else None
        # A sidecar may come from an imported bundle: only a plain file name inside samples/ is honoured.
        if not isinstance(name, str) or Path(name).name != name or name.startswith("."):
            continue
        if (p.parent / name).is_file() and not (p.parent / name).is_symlink():
            meta["path"] = str(p.parent / name)
            out.append(meta)
    return out


def load_sample_codes(sample: dict, detail: bool = False):
    """A saved sample's codes [T', Q] int64, or None when missing or damaged. detail=True: (codes, the
    detail it was decoded with [T', D] or None where it kept none)."""
    from distill.storage import load_tensors

    path = Path(sample["path"]).with_suffix("").with_suffix(".codes.safetensors")
    try:
        tensors = load_tensors(path)
        codes = tensors["codes"].numpy().astype(np.int64)
    except Exception:
        return (None, None) if detail else None
    if not detail:
        return codes
    fine = tensors.get("detail")
    fine = fine.numpy().astype(np.int64) if fine is not None and fine.dim() == 2 and len(fine) == len(codes) else None
    return codes, fine
