"""Continuing a saved run: resume a stopped, crashed or killed run where it left off, or retrain
a finished run's prior with other settings (the VQ-VAE and codes are kept)."""
from __future__ import annotations

import json
import threading
from dataclasses import asdict
from pathlib import Path
from typing import Iterable

from distill.checkpoint import CheckpointStore
from distill.config import PriorConfig, VQVAEConfig, apply_overrides, config_from_dict
from distill.data import MelDataset
from distill.events import STAGE_ORDER, TRAINING_STAGES, Callback, EventLog, Kind, Stage
from distill.planning import TrainOptions, budget_fit_fields, preset_configs, split_budget
from distill.resources import SettingsError
from distill.runs import load_codes, migrate, read_manifest, run_configs, update_manifest
from distill.scan import DatasetError, scan_dataset
from distill.stages import RunContext, analysis_stage, model_stages, prior_stage, run_guarded, run_pipeline
from distill.storage import UnsafeFileError

RESUMABLE = ("interrupted", "stopped", "failed", "running")
STAGE_LABELS = {Stage.VQVAE: "the sound model", Stage.CODES: "turning audio into codes",
                Stage.PRIOR: "the sequence model", Stage.ANALYSIS: "the final check"}


def stages_done(manifest: dict) -> list[str]:
    """The finished stages, in order; a stage counts only if every stage before it is finished."""
    recorded = migrate(manifest).get("stages_done") or []
    out = []
    for stage in STAGE_ORDER:
        if stage not in recorded:
            break
        out.append(stage)
    return out


def split_indices(names: list[str], split: dict) -> tuple[list[int], list[int]]:
    val_names = set(split.get("val") or [])
    train_names = set(split.get("train") or []) or set(names) - val_names
    train_index = [i for i, n in enumerate(names) if n in train_names]
    val_index = [i for i, n in enumerate(names) if n in val_names] or train_index
    return train_index, val_index


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
    stage = next((s for s in STAGE_ORDER if s not in done), Stage.ANALYSIS)
    step = _checkpoint_step(run_dir, stage) if stage in TRAINING_STAGES else None
    where = f" from step {step}" if step else (" from its start" if stage in TRAINING_STAGES else "")
    return {"ok": True, "message": f"Resume {STAGE_LABELS[stage]}{where}.", "stage": stage, "step": step}


def _checkpoint_step(run_dir: Path, stage: str) -> int | None:
    store = CheckpointStore.for_run(run_dir, stage)
    for path in (store.current[1], store.previous[1]):
        try:
            return int(json.loads(path.read_text(encoding="utf-8")).get("step"))
        except (OSError, ValueError, TypeError, AttributeError):
            continue
    return None


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
    files = manifest.get("files")
    if not manifest.get("split") or not manifest.get("vqvae_config") or not files:
        # interrupted before the data was even read: there is nothing to keep, so start it again
        EventLog(run_dir, callbacks)(
            {"kind": Kind.RESUMED, "step": 0, "from_status": status, "message": "Starting this run again from the beginning."})
        return run_pipeline(source, run_dir, options, callbacks=callbacks, stop=stop)

    audio_cfg, vq_cfg, prior_cfg = run_configs(manifest)
    retraining = bool(manifest.get("pending_prior_config"))  # an interrupted retrain_prior
    if retraining:
        prior_cfg = config_from_dict(PriorConfig, manifest["pending_prior_config"])
    vq_cfg, prior_cfg = _resume_configs(vq_cfg, prior_cfg, overrides, retraining)
    done = stages_done(manifest)
    ctx = RunContext.open(
        run_dir, callbacks, stop, audio_config=audio_cfg, vqvae_config=vq_cfg, prior_config=prior_cfg, resume=True,
        done=list(done), stage_seconds=dict(manifest.get("stage_seconds") or {}),
        summary={"resumed": True, "tier": (manifest.get("tier") or {}).get("tier"),
                 "files_used": len(files.get("used") or []), "files_skipped": len(files.get("skipped") or []),
                 "results": dict(manifest.get("results") or {})})
    ctx.log({"kind": Kind.RESUMED, "step": None, "from_status": status, "stages_done": done,
             "message": "Continuing this run" + (f" after its finished stages ({', '.join(done)})." if done else ".")})

    dataset = _dataset_from_manifest(ctx, source, manifest, options)
    if dataset is None:  # stopped while reading the files: nothing changed
        return ctx.finish("stopped", "Stopped before anything new was trained.")
    changes = {"vqvae_config": asdict(vq_cfg)}
    if retraining:
        changes["pending_prior_config"] = asdict(prior_cfg)
    elif Stage.PRIOR not in done:
        changes["prior_config"] = asdict(prior_cfg)
    update_manifest(run_dir, status="running", message="Resumed.", options=asdict(options), **changes)
    return run_guarded(ctx, lambda: model_stages(ctx, dataset))


def _resume_configs(vq: VQVAEConfig, prior: PriorConfig, overrides: dict,
                    retraining: bool) -> tuple[VQVAEConfig, PriorConfig]:
    """The run's own settings, with a resume's overrides (new budget, device, explicit settings).
    A new budget is split as at the start; a retrain's prior, trained alone, gets all of it."""
    device = {"device": overrides["device"]} if "device" in overrides else None
    vq, prior = apply_overrides(vq, device), apply_overrides(prior, device)
    if overrides.get("minutes") is not None:
        budgets = split_budget(overrides["minutes"], (Stage.PRIOR,) if retraining else (Stage.VQVAE, Stage.PRIOR))
        if Stage.VQVAE in budgets:
            vq = apply_overrides(vq, {"time_budget_s": budgets[Stage.VQVAE]})
        prior = apply_overrides(prior, {"time_budget_s": budgets[Stage.PRIOR]})
    vq = apply_overrides(vq, overrides.get("vqvae_overrides"))
    prior = apply_overrides(prior, overrides.get("prior_overrides"))
    return vq, prior


def _dataset_from_manifest(ctx: RunContext, source, manifest: dict, options: TrainOptions) -> MelDataset | None:
    """The run's files, in the run's order and split, read back through the feature cache."""
    t0 = ctx.log.begin(Stage.FEATURES, resumed=True)
    report = scan_dataset(source, ctx.audio_config, cache_dir=options.cache_dir, progress=ctx.log.progress_logger(),
                          stop=ctx.stop)
    if ctx.stop.is_set():
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
    train_index, val_index = split_indices(names, manifest.get("split") or {})
    dataset = MelDataset(names=names, mels=[found[n].mel for n in names], audio_config=ctx.audio_config,
                         train_index=train_index, val_index=val_index)
    ctx.log.end(t0, files_used=len(names), files_skipped=len(manifest["files"].get("skipped") or []),
                total_seconds=round(sum(found[n].seconds for n in names), 2), cache_hits=report.cache_hits)
    return dataset


def retrain_prior(run_dir: str | Path, options: TrainOptions | None = None,
                  callbacks: Iterable[Callback] | None = None, stop: threading.Event | None = None) -> dict:
    """A new prior on a finished run's codes with other settings; the VQ-VAE is left as it is.
    `options.minutes` is the prior's whole budget (it is the only model that trains).
    Interrupted, it can be continued with `resume_run` (the new settings wait in the manifest as
    `pending_prior_config` until the new prior is saved, so the old prior stays loadable)."""
    options = options or TrainOptions()
    manifest = read_manifest(run_dir)
    ctx = RunContext.open(run_dir, callbacks, stop, prior_fit_fixed=budget_fit_fields(options),
                          summary={"results": dict(manifest.get("results") or {})})
    try:
        ctx.audio_config, ctx.vqvae_config, _ = run_configs(manifest)
        codes_by_name = load_codes(ctx.run_dir)
        names = list(codes_by_name)
        train_index, val_index = split_indices(names, manifest.get("split") or {})
        _, ctx.prior_config = preset_configs(len(names), options, training=(Stage.PRIOR,))
        try:  # the limits Start enforces, before any model is built; the run is left as it was
            from distill.resources import check_settings

            check_settings(ctx.vqvae_config, ctx.prior_config, ctx.audio_config.n_mels, options.device)
        except SettingsError as exc:
            return {**ctx.summary, "status": "failed", "message": f"Nothing was retrained: {exc}"}
        ctx.done = [s for s in stages_done(manifest) if s in (Stage.VQVAE, Stage.CODES)]
        update_manifest(ctx.run_dir, status="running", pending_prior_config=asdict(ctx.prior_config),
                        stages_done=ctx.done)
        import torch

        codes = [torch.as_tensor(codes_by_name[n]) for n in names]
        model = prior_stage(ctx, codes, train_index, val_index)
        analysis_stage(ctx, model, codes, train_index, val_index)
    except Exception as exc:
        ctx.log_error(exc)
        return ctx.finish("failed", f"Retraining the prior failed: {exc}")
    return ctx.finish_stopped_or_done("Prior retrained.", "Stopped; the best prior so far was kept.")
