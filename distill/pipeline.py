"""The whole training pipeline as plain functions: scan → features → VQ-VAE → codes → prior → analysis.

Every event goes to the run's metrics.jsonl (so a page reload or an app restart can redraw
everything) and then to the caller's callbacks. A stop flag is honoured between and inside stages;
what finished is kept. The manifest's `stages_done` lists the finished stages and the training
stages checkpoint into `checkpoints/`, so `resume_run` continues a stopped, crashed or killed run.
"""
from __future__ import annotations

import errno
import threading
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterable

from distill.checkpoint import CheckpointStore
from distill.config import (
    AudioConfig,
    PriorConfig,
    VQVAEConfig,
    apply_overrides,
    config_from_dict,
    get_adaptive_prior_config,
    get_adaptive_vqvae_config,
)
from distill.runs import (
    METRICS,
    configs_dict,
    load_codes,
    load_prior,
    load_vqvae,
    prior_config_from_dict,
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
from distill.data import MelDataset
from distill.storage import UnsafeFileError, append_jsonl, sanitize_json
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


STAGE_ORDER = ("vqvae", "codes", "prior", "analysis")  # the stages a resume can skip once finished
RESUMABLE = ("interrupted", "stopped", "failed", "running")


def run_pipeline(
    source,
    run_dir: str | Path,
    options: TrainOptions | None = None,
    callbacks: Iterable[Callback] | None = None,
    stop: threading.Event | None = None,
) -> dict:
    """Train everything for one dataset into `run_dir`. Returns a summary (also in the manifest).
    Training state is checkpointed into `run_dir/checkpoints/`, so `resume_run` can continue it."""
    options = options or TrainOptions()
    stop = stop or threading.Event()
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "samples").mkdir(exist_ok=True)
    log = EventLog(run_dir, callbacks)
    stage_seconds: dict[str, float] = {}
    summary: dict = {"run_dir": str(run_dir), "status": "running"}
    listed = isinstance(source, (list, tuple))
    write_manifest(run_dir, {"id": run_dir.name, "created": time.strftime("%Y-%m-%d %H:%M:%S"), "status": "running",
                             "source": f"{len(source)} files" if listed else str(source),
                             **({"source_paths": [str(p) for p in source]} if listed else {}),
                             "options": asdict(options), "versions": versions(), "stages_done": []})
    return _guarded(run_dir, log, summary, stage_seconds, stop,
                    lambda: _run_stages(source, run_dir, options, log, stop, stage_seconds, summary))


def _guarded(run_dir: Path, log: EventLog, summary: dict, stage_seconds: dict, stop, body: Callable[[], None],
             done_message: str = "Training finished.") -> dict:
    """Run `body`, turning every failure into a plain message and a final manifest status."""
    try:
        body()
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
    message = "Stopped; finished stages were kept." if status == "stopped" else done_message
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


def _progress_logger(log: EventLog) -> Callable[[int, int], None]:
    last = [0.0]

    def progress(done: int, total: int) -> None:
        now = time.perf_counter()
        if now - last[0] > 0.5 or done == total:
            last[0] = now
            log({"kind": "progress", "fraction": done / max(total, 1), "done": done, "total": total})

    return progress


def _run_stages(source, run_dir: Path, options: TrainOptions, log: EventLog, stop, stage_seconds: dict, summary: dict) -> None:
    audio_cfg = audio_config_for(options)

    # scan + features (one pass: the scan decodes only what the cache lacks)
    t0 = log.begin("features")
    report = scan_dataset(source, audio_cfg, cache_dir=options.cache_dir, progress=_progress_logger(log), stop=stop)
    if stop.is_set():
        return
    plan = plan_training(report, options)
    if "error" in plan.tier_card.get("memory", {}):
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
    _model_stages(run_dir, dataset, vq_cfg, prior_cfg, log, stop, stage_seconds, summary.setdefault("results", {}),
                  done=[], resume=False, fit_fixed=_budget_fit_fields(options))


def _mark_done(run_dir: Path, done: list[str], stage: str, **changes) -> None:
    if stage not in done:
        done.append(stage)
    update_manifest(run_dir, stages_done=list(done), **changes)


def _budget_fit_fields(options: TrainOptions) -> set[str] | None:
    """Fields the prior's budget fitting must leave alone (the user's own), or None: no fitting
    (the quick preset is already small, and explicit sizes are the user's call)."""
    return set(options.prior_overrides) if options.preset == "auto" else None


def _model_stages(run_dir: Path, dataset, vq_cfg: VQVAEConfig, prior_cfg: PriorConfig, log: EventLog, stop,
                  stage_seconds: dict, results: dict, done: list[str], resume: bool,
                  fit_fixed: set[str] | None = None) -> None:
    """VQ-VAE → codes → prior → analysis, skipping the stages in `done` (a resume) and continuing
    an unfinished training stage from its checkpoint when `resume`."""
    from distill.training.vqvae_train import train_vqvae

    vq_store = CheckpointStore.for_run(run_dir, "vqvae")
    if "vqvae" in done:
        vq_store.clear()
        vq_model = load_vqvae(run_dir)
    else:
        t0 = log.begin("vqvae", budget_s=vq_cfg.time_budget_s, **({"resumed": True} if resume else {}))
        vq_result = train_vqvae(dataset, vq_cfg, callbacks=[log], stop=stop, checkpoint=vq_store, resume=resume)
        vq_model = vq_result.model
        vq_hash = save_vqvae(run_dir, vq_model)
        stage_seconds["vqvae"] = log.end(t0, steps=vq_result.steps, best_val_loss=vq_result.best_val_loss,
                                         device=str(vq_result.device))
        results["vqvae"] = {"best_val_loss": vq_result.best_val_loss, "steps": vq_result.steps,
                            "device": str(vq_result.device), "stop_reason": vq_result.stop_reason}
        # codes, prior and analysis were made by the earlier sound model: they are redone below
        done[:] = []
        update_manifest(run_dir, hashes={"vqvae": vq_hash}, results=sanitize_json(results), stages_done=[])
        if not vq_result.interrupted:
            _mark_done(run_dir, done, "vqvae")
            vq_store.clear()
    if stop.is_set():
        return

    # codes
    codes = _saved_codes(run_dir, dataset.names) if "codes" in done else None
    if codes is None:
        t0 = log.begin("codes")
        codes = extract_and_save_codes(run_dir, vq_model, dataset)
        results["codes"] = code_health(codes, dataset.train_index, vq_cfg.codebook_size)
        stage_seconds["codes"] = log.end(t0, files=len(codes), levels=results["codes"]["train_levels"])
        done[:] = [s for s in done if s == "vqvae"]
        _mark_done(run_dir, done, "codes", results=sanitize_json(results))
    if stop.is_set():
        return

    # prior (+ analysis)
    _train_prior_stage(run_dir, codes, dataset.train_index, dataset.val_index, vq_cfg, prior_cfg, log, stop,
                       stage_seconds, results, resume=resume, done=done, fit_fixed=fit_fixed)


def _saved_codes(run_dir: Path, names: list[str]) -> list | None:
    """The run's saved codes in `names` order, or None when they are missing or for other files."""
    import torch

    try:
        by_name = load_codes(run_dir)
    except (UnsafeFileError, OSError):
        return None
    if list(by_name) != list(names):
        return None
    return [torch.as_tensor(by_name[n]) for n in names]


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
                       log: EventLog, stop, stage_seconds: dict, results: dict, resume: bool = False,
                       done: list[str] | None = None, fit_fixed: set[str] | None = None) -> None:
    from distill.training.prior_train import train_prior

    done = done if done is not None else list(read_manifest(run_dir).get("stages_done") or [])
    store = CheckpointStore.for_run(run_dir, "prior")
    if "prior" in done and (run_dir / "prior.safetensors").is_file():  # a resume that only lacks the analysis
        store.clear()
        model = load_prior(run_dir)
    else:
        t0 = log.begin("prior", budget_s=prior_cfg.time_budget_s, **({"resumed": True} if resume else {}))
        if fit_fixed is not None and not resume:
            from distill.training.prior_budget import fit_prior_to_budget

            prior_cfg, note = fit_prior_to_budget(prior_cfg, vq_cfg.codebook_size, vq_cfg.num_quantizers,
                                                  prior_cfg.device, fixed=fit_fixed)
            if note:  # recorded before training, so a resume continues with the same settings
                log({"kind": "warning", "code": "budget_fit", "message": note, "prior_config": asdict(prior_cfg)})
                key = "pending_prior_config" if read_manifest(run_dir).get("pending_prior_config") else "prior_config"
                update_manifest(run_dir, **{key: asdict(prior_cfg)})
        prior_result = train_prior(codes, prior_cfg, vq_cfg.codebook_size, train_index, val_index, callbacks=[log],
                                   stop=stop, checkpoint=store, resume=resume)
        model = prior_result.model
        prior_hash = save_prior(run_dir, model, prior_cfg)
        stage_seconds["prior"] = log.end(t0, steps=prior_result.steps, best_val_loss=prior_result.best_val_loss)
        results["prior"] = {"best_val_loss": prior_result.best_val_loss, "steps": prior_result.steps,
                            "stop_reason": prior_result.stop_reason,
                            "memorisation_warning": prior_result.memorisation_warning}
        manifest = read_manifest(run_dir)
        hashes = {**(manifest.get("hashes") or {}), "prior": prior_hash}
        done[:] = [s for s in done if s in ("vqvae", "codes")]
        changes = dict(prior_config=asdict(prior_cfg), pending_prior_config=None, hashes=hashes,
                       results=sanitize_json(results))
        if prior_result.interrupted:
            update_manifest(run_dir, stages_done=list(done), **changes)
        else:
            _mark_done(run_dir, done, "prior", **changes)
            store.clear()

    t0 = log.begin("analysis")
    results["analysis"] = analyse_prior(model, codes, train_index, val_index, vq_cfg.codebook_size)
    stage_seconds["analysis"] = log.end(t0, **results["analysis"])
    if "prior" in done:
        _mark_done(run_dir, done, "analysis", results=sanitize_json(results))
    else:
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
    """A new prior on a finished run's codes with other settings; the VQ-VAE is left as it is.
    Interrupted, it can be continued with `resume_run` (the new settings wait in the manifest as
    `pending_prior_config` until the new prior is saved, so the old prior stays loadable)."""
    options = options or TrainOptions()
    stop = stop or threading.Event()
    run_dir = Path(run_dir)
    log = EventLog(run_dir, callbacks)
    stage_seconds: dict[str, float] = {}
    manifest = read_manifest(run_dir)
    summary: dict = {"run_dir": str(run_dir), "status": "running", "results": dict(manifest.get("results") or {})}
    try:
        audio_cfg, vq_cfg, _ = run_configs(manifest)
        codes_by_name = load_codes(run_dir)
        names = list(codes_by_name)
        train_index, val_index = _split_indices(names, manifest.get("split") or {})
        _, prior_cfg = _preset_configs(len(names), options)
        try:  # the limits Start enforces, before any model is built; the run is left as it was
            from distill.resources import check_settings

            check_settings(vq_cfg, prior_cfg, audio_cfg.n_mels, options.device)
        except SettingsError as exc:
            return {**summary, "status": "failed", "message": f"Nothing was retrained: {exc}"}
        done = [s for s in stages_done(manifest) if s in ("vqvae", "codes")]
        update_manifest(run_dir, status="running", pending_prior_config=asdict(prior_cfg), stages_done=done)
        import torch

        codes = [torch.as_tensor(codes_by_name[n]) for n in names]
        _train_prior_stage(run_dir, codes, train_index, val_index, vq_cfg, prior_cfg, log, stop, stage_seconds,
                           summary["results"], resume=False, done=done, fit_fixed=_budget_fit_fields(options))
    except Exception as exc:
        log({"kind": "error", "message": f"{type(exc).__name__}: {exc}", "trace": traceback.format_exc()[-4000:]})
        return _finish(run_dir, log, summary, stage_seconds, "failed", f"Retraining the prior failed: {exc}")
    status = "stopped" if stop.is_set() else "done"
    return _finish(run_dir, log, summary, stage_seconds, status,
                   "Prior retrained." if status == "done" else "Stopped; the best prior so far was kept.")


def _split_indices(names: list[str], split: dict) -> tuple[list[int], list[int]]:
    val_names = set(split.get("val") or [])
    train_names = set(split.get("train") or []) or set(names) - val_names
    train_index = [i for i, n in enumerate(names) if n in train_names]
    val_index = [i for i, n in enumerate(names) if n in val_names] or train_index
    return train_index, val_index


# --- resume -------------------------------------------------------------------------------------


def _inferred_stages(manifest: dict) -> list[str]:
    """Finished stages of a run written before `stages_done` existed."""
    if manifest.get("status") == "done":
        return list(STAGE_ORDER)
    results = manifest.get("results") or {}
    done = []
    vq = results.get("vqvae") or {}
    if (manifest.get("hashes") or {}).get("vqvae") and vq and vq.get("stop_reason") != "stopped on request":
        done.append("vqvae")
        if "codes" in results:
            done.append("codes")
    return done


def stages_done(manifest: dict) -> list[str]:
    """The finished stages, in order; a stage counts only if every stage before it is finished."""
    recorded = manifest.get("stages_done")
    recorded = _inferred_stages(manifest) if recorded is None else recorded
    out = []
    for stage in STAGE_ORDER:
        if stage not in recorded:
            break
        out.append(stage)
    return out


def _source_of(manifest: dict):
    return manifest.get("source_paths") or manifest.get("source")


def _check_source(source) -> None:
    if isinstance(source, list):
        missing = [p for p in source if not Path(p).exists()]
        if missing:
            raise DatasetError(f"{len(missing)} of the files this run was trained on are gone (first: {missing[0]}), "
                               "so it cannot continue. Put them back, or start a new training run.")
        return
    if not source or not Path(str(source)).expanduser().exists():
        raise DatasetError(f"The folder this run was trained on ({source}) is no longer there, so the run cannot "
                           "continue. Put the folder back where it was (with the same files) and resume again, "
                           "or start a new training run.")


def can_resume(run_dir: str | Path) -> dict:
    """For a "Resume" button: {"ok", "message", "stage", "step"}. Cheap: reads the manifest and the
    checkpoints' small JSON halves, never the tensors; ok=False says why in words."""
    run_dir = Path(run_dir)
    try:
        manifest = read_manifest(run_dir)
    except UnsafeFileError as exc:
        return {"ok": False, "message": str(exc), "stage": None, "step": None}
    status = manifest.get("status")
    if status not in RESUMABLE:
        words = "has already finished" if status == "done" else f"is {status}"
        return {"ok": False, "message": f"This run {words}; there is nothing to resume.", "stage": None, "step": None}
    try:
        _check_source(_source_of(manifest))
    except DatasetError as exc:
        return {"ok": False, "message": str(exc), "stage": None, "step": None}
    done = stages_done(manifest)
    stage = next((s for s in STAGE_ORDER if s not in done), "analysis")
    step = None
    if stage in ("vqvae", "prior"):
        import json

        store = CheckpointStore.for_run(run_dir, stage)
        for path in (store.current[1], store.previous[1]):
            try:
                step = int(json.loads(path.read_text(encoding="utf-8")).get("step"))
                break
            except (OSError, ValueError, TypeError, AttributeError):
                continue
    label = {"vqvae": "the sound model", "codes": "turning audio into codes", "prior": "the sequence model",
             "analysis": "the final check"}[stage]
    where = f" from step {step}" if step else (" from its start" if stage in ("vqvae", "prior") else "")
    return {"ok": True, "message": f"Resume {label}{where}.", "stage": stage, "step": step}


def resume_run(run_dir: str | Path, callbacks: Iterable[Callback] | None = None, stop: threading.Event | None = None,
               options_overrides: dict | None = None) -> dict:
    """Continue an interrupted, stopped or failed run where it left off: finished stages are kept,
    an unfinished training stage continues from its last checkpoint (weights, optimiser, codebooks,
    RNG state, loss history) with what is left of its time budget, and the rest follows.

    Re-reads the source files through the feature cache and rebuilds the same split by file name.
    Raises DatasetError (before changing anything) when the source or one of its files is gone or
    changed, UnsafeFileError when `run_dir` is not a readable run, ValueError when the run already
    finished or an override is unknown. options_overrides: TrainOptions fields, e.g. {"minutes": 10}
    (a new total budget), {"device": "cpu"}, {"prior_overrides": {...}}; settings that change a
    model's shape make its checkpoint unusable (that stage then starts again, with a warning)."""
    stop = stop or threading.Event()
    run_dir = Path(run_dir)
    manifest = read_manifest(run_dir)
    status = manifest.get("status")
    if status not in RESUMABLE:
        raise ValueError(f"This run is {status}; there is nothing to resume." if status != "done"
                         else "This run has already finished; there is nothing to resume.")
    saved = dict(manifest.get("options") or {})
    overrides = dict(options_overrides or {})
    unknown = set(overrides) - set(TrainOptions.__dataclass_fields__)
    if unknown:
        raise ValueError(f"unknown options {sorted(unknown)}")
    options = TrainOptions(**{k: v for k, v in {**saved, **overrides}.items() if k in TrainOptions.__dataclass_fields__})
    source = _source_of(manifest)
    _check_source(source)
    log = EventLog(run_dir, callbacks)
    if not manifest.get("split") or not manifest.get("vqvae_config") or not manifest.get("files"):
        # interrupted before the data was even read: there is nothing to keep, so start it again
        log({"kind": "resumed", "step": 0, "from_status": status, "message": "Starting this run again from the beginning."})
        return run_pipeline(source, run_dir, options, callbacks=callbacks, stop=stop)

    audio_cfg, vq_cfg, prior_cfg = run_configs(manifest)
    if manifest.get("pending_prior_config"):  # an interrupted retrain_prior
        prior_cfg = prior_config_from_dict(manifest["pending_prior_config"])
    vq_cfg, prior_cfg = _resume_configs(vq_cfg, prior_cfg, overrides)
    done = stages_done(manifest)
    log({"kind": "resumed", "step": None, "from_status": status, "stages_done": done,
         "message": "Continuing this run" + (f" after its finished stages ({', '.join(done)})." if done else ".")})

    dataset = _dataset_from_manifest(source, manifest, audio_cfg, options, log, stop)
    stage_seconds = dict(manifest.get("stage_seconds") or {})
    summary: dict = {"run_dir": str(run_dir), "status": "running", "resumed": True,
                     "tier": (manifest.get("tier") or {}).get("tier"),
                     "files_used": len(manifest["files"].get("used") or []),
                     "files_skipped": len(manifest["files"].get("skipped") or []),
                     "results": dict(manifest.get("results") or {})}
    if dataset is None:  # stopped while reading the files: nothing changed
        return _finish(run_dir, log, summary, stage_seconds, "stopped", "Stopped before anything new was trained.")
    changes = {"vqvae_config": asdict(vq_cfg)}
    if manifest.get("pending_prior_config"):
        changes["pending_prior_config"] = asdict(prior_cfg)
    elif "prior" not in done:
        changes["prior_config"] = asdict(prior_cfg)
    update_manifest(run_dir, status="running", message="Resumed.", options=asdict(options), **changes)
    return _guarded(run_dir, log, summary, stage_seconds, stop, lambda: _model_stages(
        run_dir, dataset, vq_cfg, prior_cfg, log, stop, stage_seconds, summary["results"], done=list(done), resume=True))


def _resume_configs(vq: VQVAEConfig, prior: PriorConfig, overrides: dict) -> tuple[VQVAEConfig, PriorConfig]:
    """The run's own settings, with a resume's overrides (new budget, device, explicit settings)."""
    vq = apply_overrides(vq, {"device": overrides["device"]} if "device" in overrides else None)
    prior = apply_overrides(prior, {"device": overrides["device"]} if "device" in overrides else None)
    if overrides.get("minutes") is not None:
        budget = max(0.05, float(overrides["minutes"])) * 60
        vq = apply_overrides(vq, {"time_budget_s": round(budget * VQVAE_SHARE, 1)})
        prior = apply_overrides(prior, {"time_budget_s": round(budget * PRIOR_SHARE, 1)})
    vq = apply_overrides(vq, overrides.get("vqvae_overrides"))
    prior = apply_overrides(prior, overrides.get("prior_overrides"))
    return vq, prior


def _dataset_from_manifest(source, manifest: dict, audio_cfg: AudioConfig, options: TrainOptions, log: EventLog,
                           stop) -> MelDataset | None:
    """The run's files, in the run's order and split, read back through the feature cache."""
    t0 = log.begin("features", resumed=True)
    report = scan_dataset(source, audio_cfg, cache_dir=options.cache_dir, progress=_progress_logger(log), stop=stop)
    if stop.is_set():
        return None
    found = {e.path: e for e in report.used}
    wanted = [(f.get("path"), f.get("sha256")) for f in manifest["files"].get("used") or []]
    gone = [p for p, _ in wanted if p not in found]
    changed = [p for p, h in wanted if p in found and h and found[p].sha256 != h]
    if gone or changed or not wanted:
        what = (f"{len(gone)} file(s) are gone or no longer usable (first: {gone[0]})" if gone
                else f"{len(changed)} file(s) have changed (first: {changed[0]})" if changed else "it lists no files")
        raise DatasetError(f"This run cannot continue with the same material: {what}. Put the original files back, "
                           "or start a new training run.")
    names = [p for p, _ in wanted]
    train_index, val_index = _split_indices(names, manifest.get("split") or {})
    dataset = MelDataset(names=names, mels=[found[n].mel for n in names], audio_config=audio_cfg,
                         train_index=train_index, val_index=val_index)
    log.end(t0, files_used=len(names), files_skipped=len(manifest["files"].get("skipped") or []),
            total_seconds=round(sum(found[n].seconds for n in names), 2), cache_hits=report.cache_hits)
    return dataset
