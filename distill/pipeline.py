"""The whole training pipeline as plain functions: scan → features → VQ-VAE → codes → prior → analysis.

Every event goes to the run's metrics.jsonl (so a page reload or an app restart can redraw
everything) and then to the caller's callbacks. A stop flag is honoured between and inside stages;
what finished is kept.
"""
from __future__ import annotations

import errno
import threading
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterable

from distill.config import (
    AudioConfig,
    PriorConfig,
    VQVAEConfig,
    apply_overrides,
    get_adaptive_prior_config,
    get_adaptive_vqvae_config,
)
from distill.runs import (
    METRICS,
    configs_dict,
    load_codes,
    read_manifest,
    run_configs,
    save_codes,
    save_prior,
    save_vqvae,
    update_manifest,
    versions,
    write_manifest,
)
from distill.resources import SettingsError
from distill.scan import DatasetError, ScanReport, scan_dataset
from distill.storage import append_jsonl, sanitize_json
from distill.tiers import TierCard, describe_tier

Callback = Callable[[dict], None]
PRESETS = ("auto", "quick")


@dataclass
class TrainOptions:
    preset: str = "auto"  # "auto": the seed's tier table; "quick": small and fast, for first looks and tests
    minutes: float | None = None  # total training budget (VQ-VAE + prior); None: the preset's default
    seed: int = 0
    device: str = "auto"
    num_quantizers: int = 3
    vqvae_overrides: dict = field(default_factory=dict)
    prior_overrides: dict = field(default_factory=dict)
    audio_overrides: dict = field(default_factory=dict)
    cache_dir: str | None = None


@dataclass
class TrainingPlan:
    audio_config: AudioConfig
    vqvae_config: VQVAEConfig
    prior_config: PriorConfig
    tier_card: dict


# Share of the training budget each model gets; the rest covers features, codes and analysis.
VQVAE_SHARE, PRIOR_SHARE = 0.45, 0.45


def _preset_configs(file_count: int, options: TrainOptions) -> tuple[VQVAEConfig, PriorConfig]:
    if options.preset not in PRESETS:
        raise ValueError(f"unknown preset '{options.preset}': use one of {', '.join(PRESETS)}")
    vq = get_adaptive_vqvae_config(max(file_count, 1), num_quantizers=options.num_quantizers)
    prior = get_adaptive_prior_config(max(file_count, 1))
    if options.preset == "quick":
        vq.hidden_channels, vq.codebook_dim, vq.window_frames, vq.batch_size = 64, 32, 64, 8
        vq.max_steps, vq.eval_every, vq.time_budget_s = 400, 50, 40.0
        prior.hidden_size, prior.num_layers, prior.num_heads, prior.context_steps = 64, 2, 4, 48
        prior.max_epochs, prior.eval_every, prior.time_budget_s, prior.batch_size = 30, 25, 40.0, 8
        prior.patience = 6
    if options.minutes is not None:
        budget = max(0.05, float(options.minutes)) * 60
        vq.time_budget_s = round(budget * VQVAE_SHARE, 1)
        prior.time_budget_s = round(budget * PRIOR_SHARE, 1)
    vq.seed = prior.seed = options.seed
    vq.device = prior.device = options.device
    vq = apply_overrides(vq, options.vqvae_overrides)
    prior = apply_overrides(prior, options.prior_overrides)
    return vq, prior


def audio_config_for(options: TrainOptions) -> AudioConfig:
    return apply_overrides(AudioConfig(), options.audio_overrides)


def plan_training(report: ScanReport, options: TrainOptions, probe: bool = False) -> TrainingPlan:
    """Configs and the tier card for a scanned dataset. probe=True times a few steps for the ETA."""
    used = report.used
    if not used:
        raise DatasetError("No usable audio files: there is nothing to train on. Check the skipped files' reasons.")
    vq, prior = _preset_configs(len(used), options)
    card: TierCard = describe_tier(
        [e.seconds for e in used], report.audio_config, vq, prior,
        skipped_count=len([e for e in report.skipped if not e.path.endswith("/")]),
        truncated_count=sum(e.truncated for e in used),
    )
    card.eta_s = estimate_seconds(report, vq, prior, probe)
    from distill.device import describe_device, resolve_device
    from distill.resources import SettingsError, check_fits

    try:
        device = resolve_device(options.device)
        card.device = describe_device(device)
    except (RuntimeError, ValueError) as exc:
        card.warnings.append(str(exc))
        card.device = "unavailable"
        device = None
    tier_card = card.to_dict()
    if device is not None:
        try:
            tier_card["memory"] = check_fits(vq, prior, report.audio_config.n_mels, device.type)
        except SettingsError as exc:
            tier_card["memory"] = {"error": str(exc)}
            tier_card["warnings"].append(str(exc))
    return TrainingPlan(report.audio_config, vq, prior, tier_card)


def estimate_seconds(report: ScanReport, vq: VQVAEConfig, prior: PriorConfig, probe: bool) -> float:
    """Upper estimate of wall time: the stages stop at their budgets or earlier (early stopping)."""
    seconds = 2.0 + 0.002 * report.total_seconds  # features (cached) + code extraction
    vq_budget = vq.time_budget_s or 600.0
    prior_budget = prior.time_budget_s or 600.0
    if probe:
        try:  # a short timing of real training steps on the chosen device
            from distill.training.prior_train import speed_probe

            tokens = report.total_seconds * report.audio_config.frames_per_second / vq.downsample * vq.num_quantizers
            train_tokens = tokens * (1 - prior.val_fraction)
            tps = speed_probe(prior, vq.codebook_size, vq.num_quantizers, prior.device, seconds=1.0)
            prior_budget = min(prior_budget, prior.max_epochs * train_tokens / max(tps, 1.0))
        except Exception:
            pass  # an ETA is a courtesy; never block planning on it
    return round(seconds + vq_budget + prior_budget, 1)


class EventLog:
    """Stamps events, appends them to metrics.jsonl, then hands them to the listeners."""

    def __init__(self, run_dir: Path, callbacks: Iterable[Callback] | None):
        self.path = run_dir / METRICS
        self.callbacks = list(callbacks or [])
        self.stage = "run"

    def __call__(self, event: dict) -> None:
        event = sanitize_json({"t": round(time.time(), 3), "stage": self.stage, **event})
        try:
            append_jsonl(self.path, event)
        except OSError:
            pass  # a full disk must not kill training; the final save reports it
        for cb in self.callbacks:
            try:
                cb(event)
            except Exception:
                pass  # a broken listener (e.g. a closed page) must not stop the run

    def begin(self, stage: str, **info) -> float:
        self.stage = stage
        self({"kind": "stage_start", **info})
        return time.perf_counter()

    def end(self, started: float, **info) -> float:
        seconds = round(time.perf_counter() - started, 2)
        self({"kind": "stage_end", "seconds": seconds, **info})
        return seconds


def run_pipeline(
    source,
    run_dir: str | Path,
    options: TrainOptions | None = None,
    callbacks: Iterable[Callback] | None = None,
    stop: threading.Event | None = None,
) -> dict:
    """Train everything for one dataset into `run_dir`. Returns a summary (also in the manifest)."""
    options = options or TrainOptions()
    stop = stop or threading.Event()
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "samples").mkdir(exist_ok=True)
    log = EventLog(run_dir, callbacks)
    stage_seconds: dict[str, float] = {}
    summary: dict = {"run_dir": str(run_dir), "status": "running"}
    write_manifest(run_dir, {"id": run_dir.name, "created": time.strftime("%Y-%m-%d %H:%M:%S"), "status": "running",
                             "source": str(source) if not isinstance(source, list) else f"{len(source)} files",
                             "options": asdict(options), "versions": versions()})
    try:
        _run_stages(source, run_dir, options, log, stop, stage_seconds, summary)
    except (DatasetError, SettingsError) as exc:
        return _finish(run_dir, log, summary, stage_seconds, "failed", str(exc))
    except MemoryError:
        return _finish(run_dir, log, summary, stage_seconds, "failed",
                       "Ran out of memory. Try the quick preset, fewer levels or a smaller model.")
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return _finish(run_dir, log, summary, stage_seconds, "failed",
                           f"The disk is full, so training stopped while saving. Files saved before were kept "
                           f"intact. Free some space on the drive holding {run_dir.parent}, then train again.")
        log({"kind": "error", "message": f"{type(exc).__name__}: {exc}", "trace": traceback.format_exc()[-4000:]})
        return _finish(run_dir, log, summary, stage_seconds, "failed", f"Training failed while reading or writing files: {exc}")
    except Exception as exc:  # reported in words, with the trace kept in metrics for bug reports
        log({"kind": "error", "message": f"{type(exc).__name__}: {exc}", "trace": traceback.format_exc()[-4000:]})
        return _finish(run_dir, log, summary, stage_seconds, "failed", f"Training failed: {type(exc).__name__}: {exc}")
    status = "stopped" if stop.is_set() else "done"
    message = "Stopped; finished stages were kept." if status == "stopped" else "Training finished."
    return _finish(run_dir, log, summary, stage_seconds, status, message)


def _finish(run_dir: Path, log: EventLog, summary: dict, stage_seconds: dict, status: str, message: str) -> dict:
    summary.update(status=status, message=message, stage_seconds=stage_seconds)
    try:
        update_manifest(run_dir, status=status, message=message, stage_seconds=stage_seconds,
                        results=sanitize_json(summary.get("results", {})))
    except Exception as exc:
        message = f"{message} (could not update the manifest: {exc})"
        summary["message"] = message
    log.stage = "run"
    log({"kind": "run_end", "status": status, "message": message})
    return summary


def _run_stages(source, run_dir: Path, options: TrainOptions, log: EventLog, stop, stage_seconds: dict, summary: dict) -> None:
    audio_cfg = audio_config_for(options)

    # scan + features (one pass: the scan decodes only what the cache lacks)
    t0 = log.begin("features")
    last = [0.0]

    def progress(done: int, total: int) -> None:
        now = time.perf_counter()
        if now - last[0] > 0.5 or done == total:
            last[0] = now
            log({"kind": "progress", "fraction": done / max(total, 1), "done": done, "total": total})

    report = scan_dataset(source, audio_cfg, cache_dir=options.cache_dir, progress=progress, stop=stop)
    if stop.is_set():
        return
    plan = plan_training(report, options)
    if "error" in plan.tier_card.get("memory", {}):
        from distill.resources import SettingsError

        raise SettingsError(plan.tier_card["memory"]["error"])
    vq_cfg, prior_cfg = plan.vqvae_config, plan.prior_config
    dataset = report.dataset(vq_cfg.val_fraction, seed=options.seed)
    counts = report.counts()
    stage_seconds["features"] = log.end(t0, files_used=counts["files_used"], files_skipped=counts["files_skipped"],
                                        total_seconds=round(report.total_seconds, 2), cache_hits=report.cache_hits)
    files = {"used": [e.to_dict() for e in report.used], "skipped": [{"path": e.path, "reason": e.reason} for e in report.skipped]}
    split = {"train": [dataset.names[i] for i in dataset.train_index], "val": [dataset.names[i] for i in dataset.val_index]}
    from distill.codes import mean_frame as codes_mean_frame

    mean_frame = [round(float(x), 4) for x in codes_mean_frame(dataset.train_mels())]
    update_manifest(run_dir, files=files, tier=plan.tier_card, split=split, train_mean_frame=mean_frame,
                    **configs_dict(audio_cfg, vq_cfg, prior_cfg))
    summary.update(tier=plan.tier_card["tier"], files_used=counts["files_used"], files_skipped=counts["files_skipped"])
    for w in plan.tier_card["warnings"]:
        log({"kind": "warning", "message": w})
    if stop.is_set():
        return

    # VQ-VAE
    from distill.training.vqvae_train import train_vqvae

    t0 = log.begin("vqvae", budget_s=vq_cfg.time_budget_s)
    vq_result = train_vqvae(dataset, vq_cfg, callbacks=[log], stop=stop)
    vq_hash = save_vqvae(run_dir, vq_result.model)
    stage_seconds["vqvae"] = log.end(t0, steps=vq_result.steps, best_val_loss=vq_result.best_val_loss, device=str(vq_result.device))
    results = summary.setdefault("results", {})
    results["vqvae"] = {"best_val_loss": vq_result.best_val_loss, "steps": vq_result.steps, "device": str(vq_result.device),
                        "stop_reason": getattr(vq_result, "stop_reason", None)}
    update_manifest(run_dir, hashes={"vqvae": vq_hash}, results=sanitize_json(results))
    if stop.is_set():
        return

    # codes
    t0 = log.begin("codes")
    codes = extract_and_save_codes(run_dir, vq_result.model, dataset)
    health = code_health(codes, dataset.train_index, vq_cfg.codebook_size)
    results["codes"] = health
    stage_seconds["codes"] = log.end(t0, files=len(codes), levels=health["train_levels"])
    update_manifest(run_dir, results=sanitize_json(results))
    if stop.is_set():
        return

    # prior (+ analysis)
    _train_prior_stage(run_dir, codes, dataset.train_index, dataset.val_index, vq_cfg, prior_cfg, log, stop, stage_seconds, results)


def extract_and_save_codes(run_dir: Path, model, dataset) -> list:
    from distill.codes import extract_code_sequences

    codes = extract_code_sequences(model, dataset)
    save_codes(run_dir, dataset.names, codes)
    return codes


def code_health(codes: list, train_index: list[int], codebook_size: int) -> dict:
    from distill.codes import codebook_health, level_histograms

    hist = level_histograms([codes[i] for i in train_index], codebook_size)
    return {"train_levels": codebook_health(hist)}


def _train_prior_stage(run_dir: Path, codes: list, train_index, val_index, vq_cfg: VQVAEConfig, prior_cfg: PriorConfig,
                       log: EventLog, stop, stage_seconds: dict, results: dict) -> None:
    from distill.training.prior_train import train_prior

    t0 = log.begin("prior", budget_s=prior_cfg.time_budget_s)
    prior_result = train_prior(codes, prior_cfg, vq_cfg.codebook_size, train_index, val_index, callbacks=[log], stop=stop)
    prior_hash = save_prior(run_dir, prior_result.model)
    stage_seconds["prior"] = log.end(t0, steps=prior_result.steps, best_val_loss=prior_result.best_val_loss)
    results["prior"] = {"best_val_loss": prior_result.best_val_loss, "steps": prior_result.steps,
                        "stop_reason": getattr(prior_result, "stop_reason", None),
                        "memorisation_warning": getattr(prior_result, "memorisation_warning", None)}
    manifest = read_manifest(run_dir)
    hashes = {**(manifest.get("hashes") or {}), "prior": prior_hash}
    update_manifest(run_dir, prior_config=asdict(prior_cfg), hashes=hashes, results=sanitize_json(results))

    t0 = log.begin("analysis")
    results["analysis"] = analyse_prior(prior_result.model, codes, train_index, val_index, vq_cfg.codebook_size)
    stage_seconds["analysis"] = log.end(t0, **results["analysis"])
    update_manifest(run_dir, results=sanitize_json(results))


def analyse_prior(model, codes: list, train_index, val_index, codebook_size: int) -> dict:
    """Held-out bits per token of the prior against the unigram baseline (lower is better)."""
    from distill.analysis import nll_bits, unigram_bits

    train = [codes[i] for i in train_index]
    val = [codes[i] for i in val_index]
    val_bits = float(nll_bits(model, val))
    uni_bits = float(unigram_bits(train, val, codebook_size))
    return {"val_nll_bits": round(val_bits, 4), "unigram_bits": round(uni_bits, 4),
            "ratio_to_unigram": round(val_bits / max(uni_bits, 1e-9), 4)}


def retrain_prior(run_dir: str | Path, options: TrainOptions | None = None,
                  callbacks: Iterable[Callback] | None = None, stop: threading.Event | None = None) -> dict:
    """A new prior on a finished run's codes with other settings; the VQ-VAE is left as it is."""
    options = options or TrainOptions()
    stop = stop or threading.Event()
    run_dir = Path(run_dir)
    log = EventLog(run_dir, callbacks)
    stage_seconds: dict[str, float] = {}
    manifest = read_manifest(run_dir)
    summary: dict = {"run_dir": str(run_dir), "status": "running", "results": dict(manifest.get("results") or {})}
    try:
        _, vq_cfg, _ = run_configs(manifest)
        codes_by_name = load_codes(run_dir)
        names = list(codes_by_name)
        split = manifest.get("split") or {}
        val_names = set(split.get("val") or [])
        train_index = [i for i, n in enumerate(names) if n not in val_names]
        val_index = [i for i, n in enumerate(names) if n in val_names] or train_index
        _, prior_cfg = _preset_configs(len(names), options)
        update_manifest(run_dir, status="running")
        import torch

        codes = [torch.as_tensor(codes_by_name[n]) for n in names]
        _train_prior_stage(run_dir, codes, train_index, val_index, vq_cfg, prior_cfg, log, stop, stage_seconds, summary["results"])
    except Exception as exc:
        log({"kind": "error", "message": f"{type(exc).__name__}: {exc}", "trace": traceback.format_exc()[-4000:]})
        return _finish(run_dir, log, summary, stage_seconds, "failed", f"Retraining the prior failed: {exc}")
    status = "stopped" if stop.is_set() else "done"
    return _finish(run_dir, log, summary, stage_seconds, status,
                   "Prior retrained." if status == "done" else "Stopped; the best prior so far was kept.")
