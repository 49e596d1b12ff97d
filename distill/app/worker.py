"""The background worker: the one object that owns the training job.

One pipeline at a time, in a daemon thread of the app process. A thread rather than a subprocess
because the events arrive as Python dicts with no serialisation or file tailing, the stop flag is a
plain `threading.Event`, there is no second torch import (~2-5 s) before the first loss point, and
the measured status latency while training on both cores is far under the 250 ms target: p95 87 ms
over HTTP (idle 38 ms) on a shared 2-core machine, since torch releases the GIL inside its kernels
(bench/bench_app.py). The page never waits for training: `start` returns at once, and every page or
API client asks `status()`, which only copies a small summary under a lock (O(1));
`events_since(n)` hands over only the new events.

State lives here and in the run folder (the pipeline appends every event to metrics.jsonl), never in
a browser session, so a reload or a second tab simply reattaches.
"""
from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from distill.events import STAGE_ORDER, Kind, Stage
from distill.progress import ProgressTracker

STAGES = (Stage.FEATURES, *STAGE_ORDER)
STAGE_LABELS = {
    "scan": "Scanning files",
    Stage.FEATURES: "Reading audio",
    Stage.VQVAE: "Training the sound model (VQ-VAE)",
    Stage.CODES: "Turning audio into codes",
    Stage.PRIOR: "Training the sequence model (prior)",
    Stage.ANALYSIS: "Checking the result",
    "run": "Finishing",
}
RETRAIN_STAGES = (Stage.PRIOR, Stage.ANALYSIS)
STOPPING_MESSAGE = "Stopping after the current step; finished stages are kept."

Runner = Callable[..., dict]


def _default_runner(source, run_dir, options, callbacks=None, stop=None) -> dict:
    from distill.pipeline import run_pipeline

    return run_pipeline(source, run_dir, options, callbacks=callbacks, stop=stop)


def _default_retrainer(run_dir, options, callbacks=None, stop=None) -> dict:
    from distill.pipeline import retrain_prior

    return retrain_prior(run_dir, options, callbacks=callbacks, stop=stop)


def _default_resumer(run_dir, callbacks=None, stop=None) -> dict:
    from distill.pipeline import resume_run

    return resume_run(run_dir, callbacks=callbacks, stop=stop)


def _default_run_dir(workspace: Path) -> Path:
    from distill.runs import new_run_dir

    return new_run_dir(workspace)


@dataclass
class _Job:
    kind: str  # "train" | "retrain"
    run_dir: Path
    started: float
    stop: threading.Event
    tracker: ProgressTracker  # progress and ETA from this job's own events (distill/progress.py)
    events: list[dict] = field(default_factory=list)
    stage: str = Stage.FEATURES
    stage_started: float = 0.0
    done_stages: list[str] = field(default_factory=list)
    status: str = "running"  # running | stopping | done | stopped | failed
    message: str = ""
    device: str = ""
    latest: dict[str, dict] = field(default_factory=dict)  # "vqvae_step", "vqvae_eval", "prior_step", ...
    levels: list[dict] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    finished: float | None = None
    summary: dict | None = None


class Worker:
    """Owns at most one running job. Thread-safe: any number of page/API threads may call it."""

    def __init__(
        self,
        workspace: str | os.PathLike,
        runner: Runner | None = None,
        retrainer: Runner | None = None,
        run_dir_factory: Callable[[Path], Path] | None = None,
    ):
        self.workspace = Path(workspace)
        self._runner = runner or _default_runner
        self._retrainer = retrainer or _default_retrainer
        self._resumer = _default_resumer
        self._new_run_dir = run_dir_factory or _default_run_dir
        self._lock = threading.Lock()
        self._job: _Job | None = None
        self._thread: threading.Thread | None = None
        self._generation = 0  # bumps with every new job, so pollers notice a new run

    # --- commands ---------------------------------------------------------------------------------

    def start(self, source: Any, options: Any, expected: dict | None = None) -> dict:
        """Start a full pipeline run. Returns at once: {"ok", "message", "run_id", "run_dir"}."""
        return self._launch("train", source, options, expected)

    def retrain(self, run_dir: str | os.PathLike, options: Any, expected: dict | None = None) -> dict:
        """Train a new prior on a finished run's codes (the VQ-VAE is kept)."""
        return self._launch("retrain", Path(run_dir), options, expected)

    def resume(self, run_dir: str | os.PathLike, expected: dict | None = None) -> dict:
        """Continue an interrupted or stopped run from its checkpoints (distill.pipeline.resume_run)."""
        return self._launch("resume", Path(run_dir), None, expected)

    def _launch(self, kind: str, source: Any, options: Any, expected: dict | None) -> dict:
        # A retrain or resume appends to a run that already has a history: read it once, so the page
        # keeps drawing the whole run from memory while the new work trains.
        history = _read_history(Path(source)) if kind in ("retrain", "resume") else []
        kept: list[str] = []
        if kind == "resume":
            from distill.runs import continuous_history

            history = continuous_history(history)  # steps redone after a kill are drawn once
            kept = _finished_stages(Path(source))  # a resume skips them: their chips stay ticked
        with self._lock:
            if self._job is not None and self._job.status in ("running", "stopping"):
                job = self._job
                what = STAGE_LABELS.get(job.stage, job.stage).lower()
                return {
                    "ok": False, "run_id": job.run_dir.name, "run_dir": str(job.run_dir),
                    "message": (f"A training run is already going ({job.run_dir.name}, {what}). "
                                "Distill trains one model at a time: stop it first, or wait until it finishes."),
                }
            try:
                run_dir = Path(source) if kind in ("retrain", "resume") else self._new_run_dir(self.workspace)
            except OSError as exc:
                return {"ok": False, "run_id": "", "run_dir": "", "message": f"Could not create the run folder: {exc}"}
            now = time.time()
            tracker = ProgressTracker.for_stages(RETRAIN_STAGES if kind == "retrain" else STAGES, expected)
            job = _Job(kind=kind, run_dir=run_dir, started=now, stop=threading.Event(), tracker=tracker,
                       stage=Stage.PRIOR if kind == "retrain" else Stage.FEATURES, stage_started=now,
                       device=str((expected or {}).get("device") or ""), events=history, done_stages=kept)
            self._job = job
            self._generation += 1
            thread = threading.Thread(target=self._run, args=(job, source, options), name=f"distill-{kind}", daemon=True)
            self._thread = thread
            thread.start()  # inside the lock: a concurrent start sees a running job, never a half-made one
        verb = {"train": "Training started", "retrain": "Retraining the sequence model", "resume": "Resuming"}[kind]
        return {"ok": True, "run_id": run_dir.name, "run_dir": str(run_dir), "message": f"{verb} ({run_dir.name})."}

    def stop(self) -> dict:
        with self._lock:
            job = self._job
            if job is None or job.status not in ("running", "stopping"):
                return {"ok": False, "message": "Nothing is running."}
            job.stop.set()
            job.status = "stopping"
            job.message = STOPPING_MESSAGE
            return {"ok": True, "message": job.message, "run_id": job.run_dir.name}

    def join(self, timeout: float | None = None) -> bool:
        """Wait for the current job's thread (tests, shutdown). True when nothing is running."""
        thread = self._thread
        if thread is not None:
            thread.join(timeout)
        return not self.is_running()

    # --- the job thread ---------------------------------------------------------------------------

    def _run(self, job: _Job, source: Any, options: Any) -> None:
        callback = lambda event: self._on_event(job, event)  # noqa: E731
        summary: dict | None = None
        error: str | None = None
        try:
            if job.kind == "retrain":
                summary = self._retrainer(job.run_dir, options, callbacks=[callback], stop=job.stop)
            elif job.kind == "resume":
                summary = self._resumer(job.run_dir, callbacks=[callback], stop=job.stop)
            else:
                summary = self._runner(source, job.run_dir, options, callbacks=[callback], stop=job.stop)
        except BaseException as exc:  # the app must outlive any failure in a run
            error = f"{type(exc).__name__}: {exc}"
        with self._lock:
            job.summary = summary if isinstance(summary, dict) else None
            job.finished = time.time()
            if job.status in ("running", "stopping"):  # no run_end event arrived: settle it here
                if error is not None:
                    job.status, job.message = "failed", f"Training failed: {error}"
                else:
                    status = (summary or {}).get("status")
                    if status not in ("done", "stopped", "failed"):
                        status = "stopped" if job.stop.is_set() else "done"
                    job.status = status
                    job.message = (summary or {}).get("message") or {"done": "Training finished.", "stopped": "Stopped.",
                                                                     "failed": "Training failed."}[status]
                end = {"t": round(job.finished, 3), "stage": Stage.RUN, "kind": Kind.RUN_END,
                       "status": job.status, "message": job.message}
                job.events.append(end)
                job.tracker.update(end)

    def _on_event(self, job: _Job, event: dict) -> None:
        if not isinstance(event, dict):
            return
        with self._lock:
            job.events.append(event)
            kind, stage = event.get("kind"), event.get("stage")
            now = float(event.get("t") or time.time())
            if "t" not in event:
                event = {**event, "t": now}
            job.tracker.update(event, stopping=job.stop.is_set())
            if kind == Kind.STAGE_START and stage:
                if job.stage != stage and job.stage in STAGES and job.stage not in job.done_stages:
                    job.done_stages.append(job.stage)  # a stage that ended without a stage_end event
                job.stage, job.stage_started = stage, now
            elif kind == Kind.STAGE_END and stage:
                if stage not in job.done_stages:
                    job.done_stages.append(stage)
                if stage == Stage.CODES:
                    job.levels = levels_from_event(event) or job.levels
            elif kind in (Kind.STEP, Kind.EVAL):
                job.latest[f"{stage}_{kind}"] = event
                if kind == Kind.EVAL:
                    levels = levels_from_event(event)
                    if levels:
                        job.levels = levels
            elif kind == Kind.WARNING and event.get("message"):
                msg = str(event["message"])
                if msg not in job.warnings:
                    job.warnings.append(msg)
            elif kind == Kind.RUN_END:
                status = event.get("status")
                job.status = status if status in ("done", "stopped", "failed") else "failed"
                job.message = str(event.get("message") or "")
            elif kind == Kind.ERROR and event.get("message"):
                job.message = str(event["message"])
            if isinstance(event.get("device"), str) and event["device"] and kind in (Kind.STAGE_START, Kind.INFO, Kind.STAGE_END):
                job.device = _device_words(event["device"])

    # --- queries (cheap) --------------------------------------------------------------------------

    def is_running(self) -> bool:
        with self._lock:
            return self._job is not None and self._job.status in ("running", "stopping")

    @property
    def generation(self) -> int:
        return self._generation

    def active_run_dir(self) -> Path | None:
        with self._lock:
            if self._job is not None and self._job.status in ("running", "stopping"):
                return self._job.run_dir
            return None

    def last_run_dir(self) -> Path | None:
        with self._lock:
            return self._job.run_dir if self._job is not None else None

    def status(self) -> dict:
        """A small JSON-ready snapshot; O(1) in the number of events."""
        with self._lock:
            job = self._job
            if job is None:
                return {"state": "idle", "running": False, "message": "No training has run since the app started.",
                        "seq": 0, "generation": self._generation}
            now = time.time()
            running = job.status in ("running", "stopping")
            est = job.tracker.report(now)
            stopped = job.tracker.stopped_at()
            latest = {k: {kk: vv for kk, vv in v.items() if kk not in ("levels", "trace")} for k, v in job.latest.items()}
            return {
                "state": job.status, "running": running, "job": job.kind,
                "run_id": job.run_dir.name, "run_dir": str(job.run_dir),
                "stage": job.stage, "stage_label": STAGE_LABELS.get(job.stage, job.stage),
                "stages_done": [s for s in job.done_stages if s not in stopped],
                "stages_stopped": stopped,  # {stage: the step it got to}: training stages that ended on a stop
                "stage_fraction": round(est.stage_fraction, 4),
                "stage_eta_s": None if est.stage_eta_s is None else round(est.stage_eta_s, 1),
                "fraction": round(est.fraction, 4), "eta_s": None if est.eta_s is None else round(est.eta_s, 1),
                "elapsed_s": round((job.finished or now) - job.started, 1),
                "device": job.device, "message": job.message, "warnings": list(job.warnings),
                "levels": list(job.levels), "latest": latest,
                "seq": len(job.events), "generation": self._generation,
            }

    def events_since(self, seq: int, run_dir: str | os.PathLike | None = None) -> tuple[list[dict], int, int]:
        """(new events, new seq, generation) of the current job. O(new events)."""
        with self._lock:
            job = self._job
            if job is None or (run_dir is not None and Path(run_dir) != job.run_dir):
                return [], 0, self._generation
            n = len(job.events)
            return job.events[max(0, min(seq, n)):n], n, self._generation

    def job_events(self, run_dir: str | os.PathLike) -> list[dict] | None:
        """All events of the current job if it is `run_dir` (a list copy), else None."""
        with self._lock:
            job = self._job
            if job is None or Path(run_dir) != job.run_dir:
                return None
            return list(job.events)


def levels_from_event(event: dict) -> list[dict]:
    """Per-level codebook health from an event, whichever shape it has.

    "levels": [{"level", "utilisation", ...}] (codes stage_end, from distill.codes.codebook_health) or
    parallel lists "utilisation": [...], "perplexity": [...], "dead_codes": [...] (VQ-VAE eval).
    """
    levels = event.get("levels")
    if isinstance(levels, list) and all(isinstance(x, dict) for x in levels):
        return levels
    util = event.get("utilisation")
    if not isinstance(util, list):
        return []
    ppl = event.get("perplexity") if isinstance(event.get("perplexity"), list) else []
    dead = event.get("dead_codes") if isinstance(event.get("dead_codes"), list) else []
    out = []
    for q, u in enumerate(util):
        lv = {"level": q, "utilisation": u}
        if q < len(ppl):
            lv["perplexity"] = ppl[q]
        if q < len(dead):
            lv["dead_codes"] = dead[q]
        out.append(lv)
    detail = event.get("detail_utilisation")
    if isinstance(detail, list) and detail and all(isinstance(u, (int, float)) for u in detail):
        from distill.codes import detail_health

        out.append(detail_health([float(u) for u in detail], len(util)))
    return out


def _device_words(device: str) -> str:
    """'cpu' / 'cuda:0' / 'mps' -> words; longer descriptions pass through."""
    d = device.lower()
    if d.startswith("cuda"):
        return "CUDA GPU"
    if d == "mps":
        return "Apple GPU (MPS)"
    if d == "cpu":
        import torch

        return f"CPU ({torch.get_num_threads()} threads)"
    return device


def _finished_stages(run_dir: Path) -> list[str]:
    try:
        from distill.resume import stages_done
        from distill.runs import read_manifest

        return list(stages_done(read_manifest(run_dir)))
    except Exception:  # an unreadable manifest: the resume itself says what is wrong
        return []


def _read_history(run_dir: Path) -> list[dict]:
    try:
        from distill.runs import read_metrics

        return list(read_metrics(run_dir) or [])
    except Exception:  # no metrics yet, or unreadable: start from nothing
        return []
