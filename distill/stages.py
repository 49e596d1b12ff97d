"""A training run's stages and lifecycle: features → VQ-VAE → codes → prior → analysis.

Every stage gets the one `RunContext` of its run. A stop flag is honoured between and inside
stages; what finished is kept. The manifest's `stages_done` lists the finished stages and the
training stages checkpoint into `checkpoints/`, so distill/resume.py continues a stopped, crashed
or killed run.
"""
from __future__ import annotations

import errno
import math
import threading
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterable

from distill.checkpoint import CheckpointStore
from distill.config import AudioConfig, PriorConfig, VQVAEConfig
from distill.events import Callback, EventLog, Kind, Stage
from distill.planning import TrainOptions, audio_config_for, budget_fit_fields, plan_training
from distill.resources import SettingsError
from distill.runs import (
    DETAIL_FILE,
    configs_dict,
    load_codes,
    load_prior,
    load_vqvae,
    read_manifest,
    save_codes,
    save_detail,
    save_prior,
    save_vqvae,
    stop_code,
    update_manifest,
    versions,
    write_manifest,
)
from distill.scan import DatasetError, scan_dataset
from distill.storage import UnsafeFileError, sanitize_json


@dataclass
class RunContext:
    """What every stage of one run shares: where it writes, its settings, its log and stop flag,
    and what it has finished and measured so far."""

    run_dir: Path
    log: EventLog
    stop: threading.Event
    audio_config: AudioConfig | None = None
    vqvae_config: VQVAEConfig | None = None
    prior_config: PriorConfig | None = None
    resume: bool = False  # continue an unfinished training stage from its checkpoint
    prior_fit_fixed: set[str] | None = None  # see planning.budget_fit_fields; None: no budget fitting
    done: list[str] = field(default_factory=list)  # finished stages, as the manifest's `stages_done`
    stage_seconds: dict[str, float] = field(default_factory=dict)
    summary: dict = field(default_factory=dict)  # what the caller gets back (also saved in the manifest)

    @classmethod
    def open(cls, run_dir: str | Path, callbacks: Iterable[Callback] | None, stop: threading.Event | None,
             **fields) -> "RunContext":
        run_dir = Path(run_dir)
        summary = {"run_dir": str(run_dir), "status": "running", **fields.pop("summary", {})}
        return cls(run_dir=run_dir, log=EventLog(run_dir, callbacks), stop=stop or threading.Event(),
                   summary=summary, **fields)

    @property
    def results(self) -> dict:
        return self.summary.setdefault("results", {})

    def mark_done(self, stage: str, **changes) -> None:
        if stage not in self.done:
            self.done.append(stage)
        update_manifest(self.run_dir, stages_done=list(self.done), **changes)

    def keep_done(self, *stages: str) -> None:
        """Forget finished stages other than `stages` (a redone stage invalidates what follows it)."""
        self.done[:] = [s for s in self.done if s in stages]

    def log_error(self, exc: BaseException) -> None:
        """The failure in words, with the trace kept in metrics for bug reports."""
        self.log({"kind": Kind.ERROR, "message": f"{type(exc).__name__}: {exc}", "trace": traceback.format_exc()[-4000:]})

    def finish(self, status: str, message: str) -> dict:
        self.summary.update(status=status, message=message, stage_seconds=self.stage_seconds)
        try:
            update_manifest(self.run_dir, status=status, message=message, stage_seconds=self.stage_seconds,
                            results=sanitize_json(self.summary.get("results", {})))
        except Exception as exc:
            message = f"{message} (could not update the manifest: {exc})"
            self.summary["message"] = message
        self.log.stage = Stage.RUN
        self.log({"kind": Kind.RUN_END, "status": status, "message": message})
        return self.summary

    def finish_stopped_or_done(self, done_message: str, stopped_message: str) -> dict:
        if self.stop.is_set():
            return self.finish("stopped", stopped_message)
        return self.finish("done", done_message)


def run_guarded(ctx: RunContext, body: Callable[[], None], done_message: str = "Training finished.") -> dict:
    """Run `body`, turning every failure into a plain message and a final manifest status."""
    try:
        body()
    except (DatasetError, SettingsError) as exc:
        return ctx.finish("failed", str(exc))
    except MemoryError:
        return ctx.finish("failed", "Ran out of memory. Try the quick preset, fewer levels or a smaller model.")
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return ctx.finish("failed", f"The disk is full, so training stopped while saving. Files saved before "
                                        f"were kept intact. Free some space on the drive holding "
                                        f"{ctx.run_dir.parent}, then train again.")
        ctx.log_error(exc)
        return ctx.finish("failed", f"Training failed while reading or writing files: {exc}")
    except Exception as exc:
        ctx.log_error(exc)
        return ctx.finish("failed", f"Training failed: {type(exc).__name__}: {exc}")
    return ctx.finish_stopped_or_done(done_message, "Stopped; finished stages were kept.")


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
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "samples").mkdir(exist_ok=True)
    ctx = RunContext.open(run_dir, callbacks, stop, prior_fit_fixed=budget_fit_fields(options))
    listed = isinstance(source, (list, tuple))
    write_manifest(run_dir, {"id": run_dir.name, "created": time.strftime("%Y-%m-%d %H:%M:%S"), "status": "running",
                             "source": f"{len(source)} files" if listed else str(source),
                             **({"source_paths": [str(p) for p in source]} if listed else {}),
                             "options": asdict(options), "versions": versions(), "stages_done": []})

    def body() -> None:
        dataset = features_stage(ctx, source, options)
        if dataset is not None and not ctx.stop.is_set():
            model_stages(ctx, dataset)

    return run_guarded(ctx, body)


def features_stage(ctx: RunContext, source, options: TrainOptions):
    """Scan and features (one pass: the scan decodes only what the cache lacks), then the plan, the
    split and the configs into the manifest. None when stopped during the scan."""
    from distill.codes import mean_frame

    ctx.audio_config = audio_config_for(options, source)
    t0 = ctx.log.begin(Stage.FEATURES)
    report = scan_dataset(source, ctx.audio_config, cache_dir=options.cache_dir,
                          progress=ctx.log.progress_logger(), stop=ctx.stop)
    if ctx.stop.is_set():
        return None
    plan = plan_training(report, options)
    if "error" in plan.tier_card.get("memory", {}):
        raise SettingsError(plan.tier_card["memory"]["error"])
    ctx.vqvae_config, ctx.prior_config = plan.vqvae_config, plan.prior_config
    dataset = report.dataset(ctx.vqvae_config.val_fraction, seed=options.seed)
    counts = report.counts()
    ctx.stage_seconds[Stage.FEATURES] = ctx.log.end(
        t0, files_used=counts["files_used"], files_skipped=counts["files_skipped"],
        total_seconds=round(report.total_seconds, 2), cache_hits=report.cache_hits)
    files = {"used": [e.to_dict() for e in report.used],
             "skipped": [{"path": e.path, "reason": e.reason} for e in report.skipped]}
    split = {"train": [dataset.names[i] for i in dataset.train_index],
             "val": [dataset.names[i] for i in dataset.val_index]}
    train_mean_frame = [round(float(x), 4) for x in mean_frame(dataset.train_mels())]
    update_manifest(ctx.run_dir, files=files, tier=plan.tier_card, split=split, train_mean_frame=train_mean_frame,
                    **configs_dict(ctx.audio_config, ctx.vqvae_config, ctx.prior_config))
    ctx.summary.update(tier=plan.tier_card["tier"], files_used=counts["files_used"],
                       files_skipped=counts["files_skipped"])
    for w in plan.tier_card["warnings"]:
        ctx.log({"kind": Kind.WARNING, "message": w})
    return dataset


def model_stages(ctx: RunContext, dataset) -> None:
    """VQ-VAE → codes → prior → analysis, skipping the stages in `ctx.done` (a resume)."""
    ctx.summary.setdefault("results", {})  # a run that gets this far reports results, even if it fails now
    if Stage.PRIOR not in ctx.done:
        announce_prior_time(ctx, dataset)
    vq_model = vqvae_stage(ctx, dataset)
    if ctx.stop.is_set():
        return
    codes = codes_stage(ctx, vq_model, dataset)
    if ctx.stop.is_set():
        return
    prior_model = prior_stage(ctx, codes, dataset.train_index, dataset.val_index,
                              varied=lambda: varied_training_codes(ctx, vq_model, dataset))
    analysis_stage(ctx, prior_model, codes, dataset.train_index, dataset.val_index)


def announce_prior_time(ctx: RunContext, dataset) -> None:
    """Tell the listeners how long the sequence model should take on this device, so the progress bar
    and ETA do not count its whole budget while the sound model trains (distill/progress.py)."""
    from distill.training.prior_budget import expected_prior_seconds

    vq, prior = ctx.vqvae_config, ctx.prior_config
    frames = sum(int(m.shape[-1]) for m in dataset.train_mels())
    tokens = sum(math.ceil(int(m.shape[-1]) / vq.downsample) for m in dataset.train_mels()) * vq.num_quantizers
    if not frames:
        return
    from distill.training.prior_augment import copies_for

    tokens *= 1 + copies_for(frames / ctx.audio_config.frames_per_second, prior.augment_copies)  # copies train too
    try:
        seconds = expected_prior_seconds(prior, vq.codebook_size, vq.num_quantizers, tokens)
    except Exception:  # an estimate only: training goes on without it
        return
    ctx.log({"kind": Kind.INFO, "expected_s": {Stage.PRIOR: round(seconds, 1)}, "train_tokens": tokens})


def vqvae_stage(ctx: RunContext, dataset):
    """The sound model: trained (or continued from its checkpoint), or loaded when already finished."""
    from distill.training.vqvae_train import train_vqvae

    store = CheckpointStore.for_run(ctx.run_dir, Stage.VQVAE)
    if Stage.VQVAE in ctx.done:
        store.clear()
        return load_vqvae(ctx.run_dir)
    cfg = ctx.vqvae_config
    t0 = ctx.log.begin(Stage.VQVAE, budget_s=cfg.time_budget_s, max_steps=cfg.max_steps,
                       **({"resumed": True} if ctx.resume else {}))
    result = train_vqvae(dataset, cfg, callbacks=[ctx.log], stop=ctx.stop, checkpoint=store, resume=ctx.resume)
    vq_hash = save_vqvae(ctx.run_dir, result.model)
    ctx.stage_seconds[Stage.VQVAE] = ctx.log.end(t0, steps=result.steps, best_val_loss=result.best_val_loss,
                                                 device=str(result.device))
    ctx.results[Stage.VQVAE] = {"best_val_loss": result.best_val_loss, "steps": result.steps,
                                "device": str(result.device), "stop_reason": result.stop_reason,
                                "stop": stop_code(result)}
    # codes, prior and analysis were made by the earlier sound model: they are redone after this
    ctx.keep_done()
    update_manifest(ctx.run_dir, hashes={Stage.VQVAE: vq_hash}, results=sanitize_json(ctx.results), stages_done=[])
    if not result.interrupted:
        ctx.mark_done(Stage.VQVAE)
        store.clear()
    return result.model


def codes_stage(ctx: RunContext, vq_model, dataset) -> list:
    codes = saved_codes(ctx.run_dir, dataset.names) if Stage.CODES in ctx.done else None
    if codes is not None:
        return codes
    t0 = ctx.log.begin(Stage.CODES)
    codes, detail = extract_and_save_codes(ctx.run_dir, vq_model, dataset)
    ctx.results[Stage.CODES] = code_health(codes, dataset.train_index, ctx.vqvae_config.codebook_size, detail)
    ctx.stage_seconds[Stage.CODES] = ctx.log.end(t0, files=len(codes),
                                                 levels=ctx.results[Stage.CODES]["train_levels"])
    ctx.keep_done(Stage.VQVAE)
    ctx.mark_done(Stage.CODES, results=sanitize_json(ctx.results))
    return codes


def saved_codes(run_dir: Path, names: list[str]) -> list | None:
    """The run's saved codes in `names` order, or None when they are missing or for other files."""
    import torch

    try:
        by_name = load_codes(run_dir)
    except (UnsafeFileError, OSError):
        return None
    if list(by_name) != list(names):
        return None
    return [torch.as_tensor(by_name[n]) for n in names]


def extract_and_save_codes(run_dir: Path, model, dataset) -> tuple[list, list | None]:
    """Every file's codes (codes.safetensors: the levels the sequence model learns) and, for a codec
    with detail levels, their detail (detail.safetensors) -> (codes, detail or None)."""
    from distill.codes import extract_code_sequences

    every = extract_code_sequences(model, dataset, detail=True)
    q = model.coarse_levels
    codes = [c[:, :q].contiguous() for c in every]
    detail = [c[:, q:].contiguous() for c in every] if model.detail_width else None
    detail_path = run_dir / DETAIL_FILE
    if detail is not None:
        save_detail(run_dir, dataset.names, detail)
    elif detail_path.is_file():  # from an earlier codec of this run
        detail_path.unlink()
    save_codes(run_dir, dataset.names, codes)
    return codes, detail


def code_health(codes: list, train_index: list[int], codebook_size: int, detail: list | None = None) -> dict:
    """Per level, how many codes the training files use (the detail levels as one entry)."""
    from distill.codes import codebook_health, detail_health, level_histograms, utilisation

    hist = level_histograms([codes[i] for i in train_index], codebook_size)
    levels = codebook_health(hist)
    if detail:
        used = utilisation(level_histograms([detail[i] for i in train_index], codebook_size))
        levels.append(detail_health(used.tolist(), hist.shape[0]))
    return {"train_levels": levels}


def varied_training_codes(ctx: RunContext, vq_model, dataset) -> list:
    """Codes of varied copies of the training files, which the prior learns from besides the files."""
    from distill.training.prior_augment import augmented_codes

    cfg = ctx.prior_config
    return augmented_codes(vq_model, dataset.train_mels(), ctx.audio_config.frames_per_second,
                           ctx.audio_config.log_floor, seed=cfg.seed, copies=cfg.augment_copies)


def prior_stage(ctx: RunContext, codes: list, train_index, val_index, varied=None):
    """The sequence model: trained (or continued from its checkpoint), or loaded when it finished and
    only the analysis is left. varied: () -> the codes of varied copies of the training files."""
    from distill.training.prior_train import train_prior

    run_dir, vq_cfg = ctx.run_dir, ctx.vqvae_config
    store = CheckpointStore.for_run(run_dir, Stage.PRIOR)
    if Stage.PRIOR in ctx.done and (run_dir / "prior.safetensors").is_file():
        store.clear()
        return load_prior(run_dir)
    t0 = ctx.log.begin(Stage.PRIOR, budget_s=ctx.prior_config.time_budget_s,
                       **({"resumed": True} if ctx.resume else {}))
    if ctx.prior_fit_fixed is not None and not ctx.resume:
        from distill.training.prior_budget import fit_prior_to_budget

        ctx.prior_config, note = fit_prior_to_budget(ctx.prior_config, vq_cfg.codebook_size, vq_cfg.num_quantizers,
                                                     ctx.prior_config.device, fixed=ctx.prior_fit_fixed)
        if note:  # recorded before training, so a resume continues with the same settings
            ctx.log({"kind": Kind.WARNING, "code": "budget_fit", "message": note,
                     "prior_config": asdict(ctx.prior_config)})
            key = "pending_prior_config" if read_manifest(run_dir).get("pending_prior_config") else "prior_config"
            update_manifest(run_dir, **{key: asdict(ctx.prior_config)})
    prior_cfg = ctx.prior_config
    result = train_prior(codes, prior_cfg, vq_cfg.codebook_size, train_index, val_index, callbacks=[ctx.log],
                         stop=ctx.stop, checkpoint=store, resume=ctx.resume,
                         varied_codes=varied() if varied is not None else None)
    prior_hash = save_prior(run_dir, result.model, prior_cfg)
    ctx.stage_seconds[Stage.PRIOR] = ctx.log.end(t0, steps=result.steps, best_val_loss=result.best_val_loss)
    ctx.results[Stage.PRIOR] = {"best_val_loss": result.best_val_loss, "steps": result.steps,
                                "best_step": result.best_step,
                                "stop_reason": result.stop_reason, "stop": stop_code(result),
                                "memorisation_warning": result.memorisation_warning}
    hashes = {**(read_manifest(run_dir).get("hashes") or {}), Stage.PRIOR: prior_hash}
    ctx.keep_done(Stage.VQVAE, Stage.CODES)
    changes = dict(prior_config=asdict(prior_cfg), pending_prior_config=None, hashes=hashes,
                   results=sanitize_json(ctx.results))
    if result.interrupted:
        update_manifest(run_dir, stages_done=list(ctx.done), **changes)
    else:
        ctx.mark_done(Stage.PRIOR, **changes)
        store.clear()
    return result.model


def analysis_stage(ctx: RunContext, prior_model, codes: list, train_index, val_index) -> None:
    t0 = ctx.log.begin(Stage.ANALYSIS)
    ctx.results[Stage.ANALYSIS] = analyse_prior(prior_model, codes, train_index, val_index,
                                                ctx.vqvae_config.codebook_size)
    ctx.stage_seconds[Stage.ANALYSIS] = ctx.log.end(t0, **ctx.results[Stage.ANALYSIS])
    if Stage.PRIOR in ctx.done:
        ctx.mark_done(Stage.ANALYSIS, results=sanitize_json(ctx.results))
    else:
        update_manifest(ctx.run_dir, results=sanitize_json(ctx.results))


def analyse_prior(model, codes: list, train_index, val_index, codebook_size: int) -> dict:
    """Held-out bits per token of the prior against the unigram baseline (lower is better)."""
    from distill.analysis import nll_bits, unigram_bits

    train = [codes[i] for i in train_index]
    val = [codes[i] for i in val_index]
    val_bits = float(nll_bits(model, val))
    uni_bits = float(unigram_bits(train, val, codebook_size))
    return {"val_nll_bits": round(val_bits, 4), "unigram_bits": round(uni_bits, 4),
            "ratio_to_unigram": round(val_bits / max(uni_bits, 1e-9), 4)}
