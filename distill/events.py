"""The names a run's events use, and the log that stamps, keeps and forwards them.

Every event goes to the run's metrics.jsonl (so a page reload or an app restart can redraw
everything) and then to the caller's callbacks.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Callable, Iterable

from distill.storage import append_jsonl, sanitize_json

Callback = Callable[[dict], None]
METRICS = "metrics.jsonl"  # a run's event log, in its folder


class Stage:
    """Values of an event's "stage" and of the manifest's `stages_done`."""

    RUN = "run"  # events of the run as a whole (its end, errors outside a stage)
    FEATURES = "features"
    VQVAE = "vqvae"
    CODES = "codes"
    PRIOR = "prior"
    ANALYSIS = "analysis"


# The stages a resume can skip once finished, in the order they run.
STAGE_ORDER = (Stage.VQVAE, Stage.CODES, Stage.PRIOR, Stage.ANALYSIS)
TRAINING_STAGES = (Stage.VQVAE, Stage.PRIOR)  # the ones that checkpoint


class Kind:
    """Values of an event's "kind"."""

    STAGE_START = "stage_start"
    STAGE_END = "stage_end"
    PROGRESS = "progress"
    STEP = "step"
    EVAL = "eval"
    INFO = "info"
    WARNING = "warning"
    ERROR = "error"
    RESUMED = "resumed"
    RUN_END = "run_end"


class EventLog:
    """Stamps events, appends them to metrics.jsonl, then hands them to the listeners."""

    def __init__(self, run_dir: Path, callbacks: Iterable[Callback] | None):
        self.path = Path(run_dir) / METRICS
        self.callbacks = list(callbacks or [])
        self.stage = Stage.RUN

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
        self({"kind": Kind.STAGE_START, **info})
        return time.perf_counter()

    def end(self, started: float, **info) -> float:
        seconds = round(time.perf_counter() - started, 2)
        self({"kind": Kind.STAGE_END, "seconds": seconds, **info})
        return seconds

    def progress_logger(self) -> Callable[[int, int], None]:
        """A scan's progress callback: at most two events a second, and always the last one."""
        last = [0.0]

        def progress(done: int, total: int) -> None:
            now = time.perf_counter()
            if now - last[0] > 0.5 or done == total:
                last[0] = now
                self({"kind": Kind.PROGRESS, "fraction": done / max(total, 1), "done": done, "total": total})

        return progress
