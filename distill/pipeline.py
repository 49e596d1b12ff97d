"""The whole training pipeline: scan → features → VQ-VAE → codes → prior → analysis.

The names callers use, from where they live: planning (distill/planning.py), the stages and the
run lifecycle (distill/stages.py), resume and retrain (distill/resume.py), event names and the
event log (distill/events.py).
"""
from distill.events import STAGE_ORDER, Callback, EventLog, Kind, Stage
from distill.planning import (
    PRESETS,
    PRIOR_SHARE,
    VQVAE_SHARE,
    TrainingPlan,
    TrainOptions,
    audio_config_for,
    estimate_seconds,
    plan_training,
    preset_configs,
    split_budget,
)
from distill.resume import RESUMABLE, can_resume, resume_run, retrain_prior, stages_done
from distill.stages import RunContext, analyse_prior, code_health, extract_and_save_codes, run_pipeline

__all__ = [
    "PRESETS", "PRIOR_SHARE", "RESUMABLE", "STAGE_ORDER", "VQVAE_SHARE", "Callback", "EventLog", "Kind", "RunContext",
    "Stage", "TrainOptions", "TrainingPlan", "analyse_prior", "audio_config_for", "can_resume", "code_health",
    "estimate_seconds", "extract_and_save_codes", "plan_training", "preset_configs", "resume_run", "retrain_prior",
    "run_pipeline", "split_budget", "stages_done",
]
