"""The run folder: one per training run, every file written atomically, every load validated.

    <workspace>/runs/<run-id>/
      manifest.json        files used/skipped, tier, configs, split, stage results, versions, hashes
      vqvae.safetensors    prior.safetensors    codes.safetensors    detail.safetensors (detail levels)
      metrics.jsonl        one event per line, appended as it happens
      samples/             generated audio + sidecar JSON
      checkpoints/         training state of an unfinished stage (distill.checkpoint), for resuming

Model files may come from strangers (bundles), so loading never unpickles, checks sizes in the
manifest before building anything, and checks tensor names/shapes/dtypes before reading data.
"""
from __future__ import annotations

import json
import math
import os
import secrets
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

from distill.config import AudioConfig, PriorConfig, VQVAEConfig, config_from_dict
from distill.events import METRICS, STAGE_ORDER, Kind, Stage  # METRICS: re-exported
from distill.storage import (  # file_sha256: re-exported for callers of runs
    file_sha256,
    UnsafeFileError,
    atomic_write_json,
    load_tensors,
    parse_json,
    read_jsonl,
    save_tensors,
    tensor_spec,
)

MANIFEST = "manifest.json"
DETAIL_FILE = "detail.safetensors"  # the codec's detail levels of every file (runs with detail levels)
MANIFEST_FORMAT = "distill-run"
MANIFEST_VERSION = 2  # 2: every config field and `stages_done` written out, stage results carry a `stop` code
MAX_MANIFEST_BYTES = 32 * 1024**2
MAX_METRICS_BYTES = 64 * 1024**2  # a 4-hour run logs a few MB

# Sanity bounds for settings read from a file: far above anything Distill trains, far below
# anything that would exhaust memory when the model is built.
LIMITS = {
    "codebook_size": (2, 4096), "num_quantizers": (1, 8), "detail_levels": (0, 64), "spectral_levels": (0, 32), "spectral_bands": (1, 128), "codebook_dim": (1, 1024), "hidden_channels": (1, 2048),
    "num_res_blocks": (0, 16), "downsample": (1, 16), "hidden_size": (8, 2048), "num_layers": (1, 48),
    "num_heads": (1, 64), "context_steps": (1, 8192), "n_mels": (8, 512), "n_fft": (64, 16384),
    "hop_length": (16, 8192), "sample_rate": (4000, 192_000),
}


def new_run_id() -> str:
    return time.strftime("%Y%m%d-%H%M%S") + "-" + secrets.token_hex(2)


def runs_root(workspace: str | os.PathLike) -> Path:
    return Path(workspace) / "runs"


def new_run_dir(workspace: str | os.PathLike) -> Path:
    path = runs_root(workspace) / new_run_id()
    path.mkdir(parents=True, exist_ok=False)
    (path / "samples").mkdir()
    return path


def read_manifest(run_dir: str | os.PathLike) -> dict:
    path = Path(run_dir) / MANIFEST
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise UnsafeFileError(f"{Path(run_dir).name}: no manifest.json (not a Distill run)") from None
    if size > MAX_MANIFEST_BYTES:
        raise UnsafeFileError(f"{Path(run_dir).name}: manifest.json is implausibly large ({size} bytes)")
    try:
        data = parse_json(path.read_text(encoding="utf-8"))
    except ValueError as exc:  # bad UTF-8, bad JSON, nested too deeply
        raise UnsafeFileError(f"{Path(run_dir).name}: manifest.json is not valid JSON ({exc})") from None
    if not isinstance(data, dict) or data.get("format") != MANIFEST_FORMAT:
        raise UnsafeFileError(f"{Path(run_dir).name}: manifest.json is not a Distill run manifest")
    return migrate(data)


def write_manifest(run_dir: str | os.PathLike, manifest: dict) -> None:
    """Always in the current form: a manifest read from an older run is written back migrated."""
    manifest = {k: v for k, v in migrate(manifest).items() if k not in ("format", "version")}
    manifest = {"format": MANIFEST_FORMAT, "version": MANIFEST_VERSION, **manifest}
    atomic_write_json(Path(run_dir) / MANIFEST, manifest)


def update_manifest(run_dir: str | os.PathLike, **changes) -> dict:
    manifest = read_manifest(run_dir)
    manifest.update(changes)
    write_manifest(run_dir, manifest)
    return manifest


# --- older manifests ----------------------------------------------------------------------------------
# A manifest is brought up to MANIFEST_VERSION when it is read; it is written back in the new form
# only when the run is written anyway (listing runs never rewrites a user's folder).

STOP_CODES = ("completed", "early_stop", "time_budget", "stopped", "non_finite", "step_limit")
# How distill/training/vqvae_train.py worded why the codec stopped, before results carried a code.
_VQVAE_STOP_WORDS = (("stopped on request", "stopped"), ("reached the step limit", "step_limit"),
                     ("used the time budget", "time_budget"), ("training became numerically unstable", "non_finite"))


def vqvae_stop_code(stop_reason) -> str:
    """The stop code for the codec's stop sentence (results saved before `stop` existed)."""
    text = stop_reason if isinstance(stop_reason, str) else ""
    return next((code for words, code in _VQVAE_STOP_WORDS if text.startswith(words)), "completed")


def stop_code(result) -> str:
    """A training result's stop code: its own `stop` where it has one, else read from `stop_reason`."""
    stop = getattr(result, "stop", None)
    if stop is not None:
        return str(getattr(stop, "value", stop))
    reason = getattr(result, "stop_reason", "")
    return reason if reason in STOP_CODES else vqvae_stop_code(reason)


def _with_default(settings, key: str, value):
    """Settings saved before `key` existed describe a model without it (value: the old behaviour)."""
    if isinstance(settings, dict) and settings and key not in settings:
        return {**settings, key: value}
    return settings


def _migrated_prior_settings(settings):
    # a run saved before a setting existed trained without it: its resume must match its checkpoint
    return _with_default(_with_default(settings, "learn_clip_ends", False), "augment_copies", 0)


def _inferred_stages(manifest: dict, results: dict) -> list[str]:
    """Finished stages of a run written before `stages_done` existed."""
    if manifest.get("status") == "done":
        return list(STAGE_ORDER)
    hashes = manifest.get("hashes") if isinstance(manifest.get("hashes"), dict) else {}
    vq = results.get(Stage.VQVAE) if isinstance(results.get(Stage.VQVAE), dict) else {}
    done = []
    if hashes.get(Stage.VQVAE) and vq and vq.get("stop") != "stopped":
        done.append(Stage.VQVAE)
        if Stage.CODES in results:
            done.append(Stage.CODES)
    return done


def migrate(manifest: dict) -> dict:
    """`manifest` in the current form, as a new dict. Each step fills only what is missing, whatever
    the version says: settings without a field were written before it existed, also when they were
    put into a newer manifest (a retrain's settings, a hand edit)."""
    m = dict(manifest)
    if "vqvae_config" in m:
        m["vqvae_config"] = _with_default(m["vqvae_config"], "linear_path", False)
    for key in ("prior_config", "pending_prior_config"):
        if key in m:
            m[key] = _migrated_prior_settings(m[key])
    results = m.get("results")
    if isinstance(results, dict):
        results = dict(results)
        vq, prior = results.get(Stage.VQVAE), results.get(Stage.PRIOR)
        if isinstance(vq, dict) and "stop" not in vq:
            results[Stage.VQVAE] = {**vq, "stop": vqvae_stop_code(vq.get("stop_reason"))}
        if isinstance(prior, dict) and "stop" not in prior and prior.get("stop_reason") in STOP_CODES:
            results[Stage.PRIOR] = {**prior, "stop": prior["stop_reason"]}
        m["results"] = results
    if m.get("stages_done") is None:
        m["stages_done"] = _inferred_stages(m, results if isinstance(results, dict) else {})
    m["version"] = MANIFEST_VERSION
    return m


def read_metrics(run_dir: str | os.PathLike) -> list[dict]:
    """The run's events; a file too large to read safely gives one warning event instead (shown as a note)."""
    path = Path(run_dir) / METRICS
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return []
    if size > MAX_METRICS_BYTES:
        return [{"stage": Stage.RUN, "kind": Kind.WARNING,
                 "message": f"This run's metrics.jsonl is {human_bytes(size)}, too large to draw (the limit is "
                            f"{human_bytes(MAX_METRICS_BYTES)}), so the loss plots stay empty. The models are not affected."}]
    return read_jsonl(path)


def human_bytes(n: int) -> str:
    return f"{n / 1024**3:.1f} GB" if n >= 1024**3 else f"{n / 1024**2:.0f} MB" if n >= 1024**2 else f"{n / 1024:.0f} KB"


def continuous_history(events: list[dict]) -> list[dict]:
    """The events as one continuous history across resumes: a "resumed" event of a stage at step S
    drops that stage's earlier events logged after step S (work lost in a kill, redone after the
    resume), so every stage's steps only go forward."""
    out: list[dict] = []
    for event in events:
        step = event.get("step")
        if event.get("kind") == Kind.RESUMED and isinstance(step, int) and event.get("stage") not in (None, Stage.RUN):
            stage = event["stage"]
            out = [e for e in out if e.get("stage") != stage or not isinstance(e.get("step"), (int, float))
                   or e["step"] <= step or e.get("kind") not in (Kind.STEP, Kind.EVAL)]
        out.append(event)
    return out


# --- what the page shows of a manifest ---------------------------------------------------------------

RUN_STATUSES = ("running", "interrupted", "stopped", "failed", "done")
_TEXT_LIMITS = {"created": 40, "message": 4000, "source": 4096, "id": 120, "imported_from": 300, "label": 300}
MAX_LABEL = 80  # characters of a run's own name


def _manifest_problems(m: dict) -> list[str]:
    """What in a manifest's display fields has the wrong type or an impossible value (a bundle from a
    stranger, a hand edit): the page and the runs list read only these fields, always through `run_summary`."""
    bad = []
    for key, limit in _TEXT_LIMITS.items():
        if key in m and m[key] is not None and (not isinstance(m[key], str) or len(m[key]) > limit):
            bad.append(f"{key} is not a short text")
    if "status" in m and m["status"] not in RUN_STATUSES:
        bad.append(f"status is not one of {', '.join(RUN_STATUSES)}")
    tier = m.get("tier")
    if tier is not None and (not isinstance(tier, dict) or _tier_number(tier.get("tier")) is None):
        bad.append("tier is not a tier card with a tier number 1–3")
    files = m.get("files")
    if files is not None and (not isinstance(files, dict) or not all(
            isinstance(files.get(k, []), list) and all(isinstance(e, dict) and isinstance(e.get("path"), str)
                                                       for e in files.get(k, [])) for k in ("used", "skipped"))):
        bad.append("files is not a list of used and skipped files")
    split = m.get("split")
    if split is not None and (not isinstance(split, dict) or not all(
            isinstance(split.get(k, []), list) and all(isinstance(n, str) for n in split.get(k, [])) for k in ("train", "val"))):
        bad.append("split is not two lists of file names")
    stages = m.get("stage_seconds")
    if stages is not None and (not isinstance(stages, dict) or not all(
            isinstance(k, str) and isinstance(v, (int, float)) and not isinstance(v, bool) for k, v in stages.items())):
        bad.append("stage_seconds is not a table of seconds")
    return bad


def check_manifest_fields(m: dict, where: str = "manifest.json") -> None:
    """Refuse a manifest whose display fields are not what Distill writes (bundle import)."""
    bad = _manifest_problems(m)
    if bad:
        raise UnsafeFileError(f"{where}: {'; '.join(bad)}; this is not a manifest Distill wrote")


def _tier_number(value) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= 3 else None


def _text(value, limit: int) -> str | None:
    return value[:limit] if isinstance(value, str) else None


def run_summary(m: dict) -> dict:
    """The manifest's display fields, typed and bounded whatever the file holds: the one reader the runs
    list and the status card use, so a wrong type never breaks the page (the HTML is escaped in views)."""
    tier = m.get("tier") if isinstance(m.get("tier"), dict) else {}
    files = m.get("files") if isinstance(m.get("files"), dict) else {}
    used = files.get("used") if isinstance(files.get("used"), list) else []
    stages = m.get("stage_seconds") if isinstance(m.get("stage_seconds"), dict) else {}
    seconds = {str(k): float(v) for k, v in stages.items()
               if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)}
    status = m.get("status") if m.get("status") in RUN_STATUSES else "unknown"
    return {"status": status, "created": _text(m.get("created"), _TEXT_LIMITS["created"]),
            "message": _text(m.get("message"), _TEXT_LIMITS["message"]) or "",
            "source": _text(m.get("source"), _TEXT_LIMITS["source"]), "tier": _tier_number(tier.get("tier")),
            "files_used": len(used), "stage_seconds": seconds}


def clean_label(text) -> str:
    """A person's name for a run, made safe to keep and show: no control characters, one space between
    words, at most MAX_LABEL characters ("" clears it)."""
    if not isinstance(text, str):
        return ""
    text = "".join(ch if ch.isprintable() else " " for ch in text)
    return " ".join(text.split())[:MAX_LABEL].strip()


def rename_run(run_dir: str | os.PathLike, label) -> str:
    """Store a run's own name in its manifest (written atomically); returns the name kept."""
    kept = clean_label(label)
    update_manifest(run_dir, label=kept or None)
    return kept


def _dataset_name(source: str | None) -> str:
    """How a person knows the collection: its folder's name (an upload's copy is named after what was dropped)."""
    if not source:
        return "?"
    return Path(source).name or source


def _options_words(m: dict) -> tuple[str, str]:
    """(preset in words, the training budget in minutes in words) from a manifest's options and configs."""
    opts = m.get("options") if isinstance(m.get("options"), dict) else {}
    preset = {"quick": "quick look", "auto": "auto"}.get(opts.get("preset"), "")
    minutes = opts.get("minutes")
    if not isinstance(minutes, (int, float)) or isinstance(minutes, bool) or not math.isfinite(minutes):
        budgets = [(m.get(k) or {}).get("time_budget_s") if isinstance(m.get(k), dict) else None
                   for k in ("vqvae_config", "prior_config")]
        secs = sum(b for b in budgets if isinstance(b, (int, float)) and not isinstance(b, bool) and math.isfinite(b))
        minutes = secs / 60 if secs else None  # the preset's budgets, as the tier card adds them up
    if minutes is None:
        return preset, ""
    return preset, f"{minutes:.2g} min" if minutes < 10 else f"{minutes:.0f} min"


def run_title(m: dict) -> str:
    """A run named so a person can tell it from the others: its own label (when given) or the dataset's
    name, then when it was made, its preset and its minutes."""
    label = clean_label(m.get("label"))
    created = _text(m.get("created"), _TEXT_LIMITS["created"]) or ""
    when = created[5:16] if len(created) >= 16 else created  # "MM-DD HH:MM"
    preset, minutes = _options_words(m)
    name = label or _dataset_name(_text(m.get("source"), _TEXT_LIMITS["source"]))
    return " · ".join(b for b in (name, when, preset, minutes) if b)


def list_runs(workspace: str | os.PathLike) -> list[dict]:
    """Every readable run, newest first. Unreadable folders are listed with their problem, not hidden."""
    root = runs_root(workspace)
    out = []
    if not root.is_dir():
        return out
    for d in sorted(root.iterdir(), reverse=True):
        if not d.is_dir() or d.name.startswith("."):
            continue
        try:
            m = read_manifest(d)
            run_configs(m)
        except UnsafeFileError as exc:
            out.append({"id": d.name, "path": str(d), "status": "unreadable", "problem": str(exc)})
            continue
        shown = run_summary(m)
        out.append({
            "id": d.name, "path": str(d), "created": shown["created"], "status": shown["status"],
            "tier": shown["tier"], "files_used": shown["files_used"],
            "has_vqvae": (d / "vqvae.safetensors").is_file(), "has_prior": (d / "prior.safetensors").is_file(),
            "source": shown["source"], "title": run_title(m), "label": clean_label(m.get("label")),
            # can `distill.pipeline.resume_run` continue it (`can_resume` gives the details)
            "resumable": shown["status"] in ("interrupted", "stopped", "failed") and bool(shown["source"]),
        })
    return out


# --- validated configs ------------------------------------------------------------------------


def _check_limits(obj, where: str) -> None:
    for key, (lo, hi) in LIMITS.items():
        value = getattr(obj, key, None)
        if value is None:
            continue
        if not isinstance(value, int) or not lo <= value <= hi:
            raise UnsafeFileError(f"{where}: {key}={value!r} is outside the sane range {lo}–{hi}; refusing to build it")


def run_configs(manifest: dict) -> tuple[AudioConfig, VQVAEConfig, PriorConfig | None]:
    manifest = migrate(manifest)
    try:
        audio = config_from_dict(AudioConfig, manifest.get("audio_config") or {})
        vq = config_from_dict(VQVAEConfig, manifest.get("vqvae_config") or {})
        prior = config_from_dict(PriorConfig, manifest["prior_config"]) if manifest.get("prior_config") else None
    except (ValueError, TypeError) as exc:
        raise UnsafeFileError(f"manifest settings are invalid: {exc}") from None
    _check_limits(audio, "audio settings")
    _check_limits(vq, "VQ-VAE settings")
    if prior is not None:
        _check_limits(prior, "prior settings")
        if prior.hidden_size % prior.num_heads:
            raise UnsafeFileError("prior settings: hidden_size must be a multiple of num_heads")
    return audio, vq, prior


# --- models ------------------------------------------------------------------------------------


def save_vqvae(run_dir: str | os.PathLike, model) -> str:
    path = Path(run_dir) / "vqvae.safetensors"
    save_tensors(path, model.state_dict())
    return file_sha256(path)


def load_vqvae(run_dir: str | os.PathLike, device: str = "cpu"):
    from distill.models.vqvae import ConvVQVAE

    manifest = read_manifest(run_dir)
    audio, vq, _ = run_configs(manifest)
    model = ConvVQVAE(audio.n_mels, vq)
    state = load_tensors(Path(run_dir) / "vqvae.safetensors", expected=tensor_spec(model.state_dict()))
    model.load_state_dict(state)
    return model.to(device).eval()


def build_prior(vq: VQVAEConfig, prior: PriorConfig):
    from distill.models.prior import CodePrior

    return CodePrior.from_config(prior, vq.codebook_size, vq.num_quantizers)


def save_prior(run_dir: str | os.PathLike, model, prior_config: PriorConfig | None = None) -> str:
    """The prior's settings travel inside its file, so replacing the file is the one atomic switch
    (a crash before the manifest catches up cannot pair new weights with old settings)."""
    path = Path(run_dir) / "prior.safetensors"
    meta = {"prior_config": json.dumps(asdict(prior_config))} if prior_config is not None else None
    save_tensors(path, model.state_dict(), metadata=meta)
    return file_sha256(path)


def _embedded_prior_config(path: Path) -> PriorConfig | None:
    from distill.storage import read_safetensors_header

    try:
        raw = (read_safetensors_header(path).get("__metadata__") or {}).get("prior_config")
        # the file's own copy of the settings has no manifest version: it gets the same defaults
        return config_from_dict(PriorConfig, _migrated_prior_settings(parse_json(raw))) if raw else None
    except (ValueError, TypeError) as exc:
        raise UnsafeFileError(f"prior.safetensors: embedded settings are invalid: {exc}") from None


def load_prior(run_dir: str | os.PathLike, device: str = "cpu"):
    manifest = read_manifest(run_dir)
    _, vq, prior_cfg = run_configs(manifest)
    path = Path(run_dir) / "prior.safetensors"
    if path.is_file():
        embedded = _embedded_prior_config(path)
        if embedded is not None:
            _check_limits(embedded, "prior settings")
            if embedded.hidden_size % embedded.num_heads:
                raise UnsafeFileError("prior settings: hidden_size must be a multiple of num_heads")
            prior_cfg = embedded
    if prior_cfg is None:
        raise UnsafeFileError(f"{Path(run_dir).name}: this run has no trained prior yet")
    model = build_prior(vq, prior_cfg)
    state = load_tensors(Path(run_dir) / "prior.safetensors", expected=tensor_spec(model.state_dict()))
    model.load_state_dict(state)
    return model.to(device).eval()


# --- codes -------------------------------------------------------------------------------------


def save_codes(run_dir: str | os.PathLike, names: list[str], codes: list) -> None:
    """codes: per file [T', Q] integer tensors/arrays, stored as int16 (codebooks ≤ 4096)."""
    import torch

    tensors = {f"{i:05d}": torch.as_tensor(np.asarray(c), dtype=torch.int16) for i, c in enumerate(codes)}
    save_tensors(Path(run_dir) / "codes.safetensors", tensors, metadata={"names": json.dumps(names)})


def load_codes(run_dir: str | os.PathLike) -> dict[str, np.ndarray]:
    """{file name: int64 [T', Q]} in training order; validated against the manifest's settings."""
    from safetensors import safe_open

    path = Path(run_dir) / "codes.safetensors"
    manifest = read_manifest(run_dir)
    _, vq, _ = run_configs(manifest)
    tensors = load_tensors(path)
    with safe_open(str(path), framework="pt") as fh:
        meta = fh.metadata() or {}
    try:
        names = parse_json(meta.get("names", "[]"))
    except ValueError:
        names = []
    keys = sorted(tensors)
    if not isinstance(names, list) or len(names) != len(keys):
        names = keys
    out: dict[str, np.ndarray] = {}
    for name, key in zip(names, keys):
        arr = tensors[key].numpy().astype(np.int64)
        if arr.ndim != 2 or arr.shape[1] != vq.num_quantizers or (arr.size and (arr.min() < 0 or arr.max() >= vq.codebook_size)):
            raise UnsafeFileError(f"codes.safetensors: entry '{name}' does not fit the model's codebooks")
        out[str(name)] = arr
    return out


def save_detail(run_dir: str | os.PathLike, names: list[str], detail: list) -> None:
    """detail: per file [T', detail_width] integer codes (the codec's detail levels and spectral detail), stored as int16."""
    import torch

    tensors = {f"{i:05d}": torch.as_tensor(np.asarray(d), dtype=torch.int16) for i, d in enumerate(detail)}
    save_tensors(Path(run_dir) / DETAIL_FILE, tensors, metadata={"names": json.dumps(names)})


def load_detail(run_dir: str | os.PathLike, codes: dict[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
    """{file name: int16 [T', detail_width]} in training order, or {} for a run without detail levels
    (int16 as stored: 45 levels of a long collection are many numbers).
    Validated against the manifest's settings and, entry for entry, against the run's codes (`codes`:
    load_codes' answer, read here when not given): same files, same lengths."""
    manifest = read_manifest(run_dir)
    _, vq, _ = run_configs(manifest)
    path = Path(run_dir) / DETAIL_FILE
    if not vq.detail_width or not path.is_file():
        return {}
    codes = load_codes(run_dir) if codes is None else codes
    # names, shapes and types are checked from the header, before any data is read
    expected = {f"{i:05d}": ((len(c), vq.detail_width), "I16") for i, c in enumerate(codes.values())}
    tensors = load_tensors(path, expected=expected)
    out: dict[str, np.ndarray] = {}
    for name, key in zip(codes, expected):
        arr = tensors[key].numpy()
        if arr.size and (arr.min() < 0 or arr.max() >= vq.codebook_size):
            raise UnsafeFileError(f"{DETAIL_FILE}: entry '{name}' does not fit the model's codebooks")
        out[name] = arr
    return out


def versions() -> dict:
    import platform

    import torch

    from distill import __version__

    return {"distill": __version__, "torch": torch.__version__, "python": platform.python_version()}


def configs_dict(audio: AudioConfig, vq: VQVAEConfig, prior: PriorConfig | None) -> dict:
    return {"audio_config": asdict(audio), "vqvae_config": asdict(vq), "prior_config": asdict(prior) if prior else None}


def recover_workspace(workspace: str | os.PathLike) -> dict:
    """At app start-up (no job can be running yet): mark runs left 'running' by a crash as
    'interrupted', and delete temp files that killed writers left behind (they are never read)."""
    root = runs_root(workspace)
    marked, swept = 0, 0
    if not root.is_dir():
        return {"interrupted": 0, "temp_files_removed": 0}
    for d in root.iterdir():
        if not d.is_dir():
            continue
        for tmp in list(d.glob(".*.tmp")) + list((d / "samples").glob(".*.tmp")) + list((d / "checkpoints").glob(".*.tmp")):
            try:
                tmp.unlink()
                swept += 1
            except OSError:
                pass
        try:
            m = read_manifest(d)
        except UnsafeFileError:
            continue
        if m.get("status") == "running":
            try:
                update_manifest(d, status="interrupted",
                                message="The app stopped while this run was training; finished stages were kept.")
                marked += 1
            except OSError:
                pass
    return {"interrupted": marked, "temp_files_removed": swept}
