"""The training loop both stages share: limits, stop flag, bad steps, evaluations, checkpoints.

The caller brings what is particular to its model: a step function (one optimiser step), an
evaluation function and a state object that turns itself into a checkpoint and back. The loop owns
everything else: the step counter and the clock (which counts time spent before a resume), the step
limit and time budget, the stop flag, consecutive non-finite losses, when to evaluate, saving a
checkpoint after each evaluation and when stopped, resuming from one, and why training ended.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from enum import Enum
from typing import Callable, Protocol

import torch

from distill.checkpoint import Checkpoint, CheckpointStore, ignored_message

MAX_BAD_STEPS = 5  # consecutive non-finite losses before giving up


class StopReason(str, Enum):
    """Why training ended. The values are stored in manifests: do not change them."""

    COMPLETED = "completed"  # all planned passes over the material
    EARLY_STOP = "early_stop"  # the held-out score stopped improving
    TIME_BUDGET = "time_budget"
    STEP_LIMIT = "step_limit"
    STOPPED = "stopped"  # the stop flag: a checkpoint (if any) can continue it
    NON_FINITE = "non_finite"  # MAX_BAD_STEPS non-finite losses in a row

    def __str__(self) -> str:  # f-strings and str() give the value, as for a plain string
        return self.value


def stop_words(stop: StopReason, *, passes: int | None = None, max_steps: int | None = None,
               budget_s: float | None = None, patience: int | None = None) -> str:
    """Why training ended, in plain words (lower case, no full stop): the one place they are made."""
    if stop is StopReason.COMPLETED:
        return f"finished all {passes} passes over the material" if passes else "finished the planned training"
    if stop is StopReason.EARLY_STOP:
        return f"stopped early: the held-back files stopped improving {patience} checks ago"
    if stop is StopReason.TIME_BUDGET:
        return f"used the time budget ({budget_s:.0f} s)" if budget_s else "used the time budget"
    if stop is StopReason.STEP_LIMIT:
        return f"reached the step limit ({max_steps})"
    if stop is StopReason.STOPPED:
        return "stopped on request"
    return f"training became numerically unstable (no usable loss {MAX_BAD_STEPS} steps in a row)"


def stop_sentence(stop: StopReason, best_step: int, **facts) -> str:
    """stop_words as a sentence that also says which weights were kept."""
    kept = {StopReason.NON_FINITE: "the last good version was kept; a lower learning rate may help",
            StopReason.STOPPED: "the best version so far was kept"}.get(stop, f"keeping the best version, from step {best_step}")
    words = stop_words(stop, **facts)
    return f"{words[0].upper()}{words[1:]}; {kept}."


class TrainingState(Protocol):
    """A trainer's own state: what it must save to continue exactly where it left off."""

    def to_checkpoint(self) -> tuple[dict[str, torch.Tensor], dict]: ...

    def restore(self, ckpt: Checkpoint) -> None: ...


@dataclass
class Schedule:
    max_steps: int  # optimiser steps (after which training ends with `limit_reason`)
    time_budget_s: float | None  # None or 0: no time limit
    eval_every: int  # optimiser steps between evaluations
    epoch_steps: int | None = None  # also evaluate at the end of every pass over the material
    limit_reason: StopReason = StopReason.STEP_LIMIT
    evaluate_untrained: bool = False  # the closing evaluation even when no step was taken

    def eval_due(self, step: int) -> bool:
        return step % max(1, self.eval_every) == 0 or bool(self.epoch_steps and step % self.epoch_steps == 0)


@dataclass
class Progress:
    """The loop's own part of a checkpoint."""

    step: int = 0  # optimiser steps taken
    bad_steps: int = 0  # non-finite losses in a row
    last_eval_step: int = -1
    started: float = 0.0  # perf_counter() at the start, moved back by the time spent before a resume

    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def to_meta(self) -> dict:
        return {"step": self.step, "seconds": round(self.elapsed(), 3), "bad_steps": self.bad_steps,
                "last_eval_step": self.last_eval_step}

    @classmethod
    def from_meta(cls, meta: dict) -> "Progress":
        bad = meta["bad_steps"] if "bad_steps" in meta else meta["bad_streak"]  # the codec's older name
        return cls(step=int(meta["step"]), bad_steps=int(bad), last_eval_step=int(meta["last_eval_step"]),
                   started=time.perf_counter() - float(meta["seconds"]))


@dataclass
class StepOutcome:
    finite: bool  # False: the loss or its gradient was not finite; the optimiser did not step
    event: dict | None = None  # the "step" event's payload (without "step"); None: no event this time


@dataclass
class LoopResult:
    stop: StopReason
    progress: Progress
    resumed_from: int | None  # the checkpoint step this call continued from

    @property
    def interrupted(self) -> bool:
        return self.stop is StopReason.STOPPED

    @property
    def steps(self) -> int:
        return self.progress.step

    @property
    def seconds(self) -> float:
        return self.progress.elapsed()


Emit = Callable[..., None]  # emit(kind, **payload)


def find_checkpoint(store: CheckpointStore | None, resume: bool, expected: Callable[[dict], dict], emit: Emit,
                    what: str) -> Checkpoint | None:
    """The newest usable checkpoint when resuming (None otherwise); without resume the store is
    cleared, so some older training of this stage is never continued later. `what` names the model
    in messages ("code model", "sound model")."""
    if store is None:
        return None
    if not resume:
        store.clear()
        return None
    ckpt, problems = store.load(expected)
    if problems:
        emit("warning", code="checkpoint_ignored", message=ignored_message(problems, what.replace(" ", "-")),
             problems=problems[:5])
    if ckpt is None:
        emit("resumed", step=0, seconds=0.0, from_checkpoint=False,
             message=f"No usable checkpoint of the {what} was found, so it trains again from the start.")
    return ckpt


def run_training(
    state: TrainingState,
    train_step: Callable[[Progress], StepOutcome],
    evaluate: Callable[[Progress], bool],
    schedule: Schedule,
    emit: Emit,
    stop=None,
    checkpoint: CheckpointStore | None = None,
    resume_from: Checkpoint | None = None,
    started: float | None = None,
) -> LoopResult:
    """Train until a limit, the stop flag, early stopping (`evaluate` returns True) or too many
    non-finite losses. `train_step(progress)` takes one optimiser step (progress.step is the number
    taken before it); `evaluate(progress)` scores the model after it. `started`: perf_counter() at
    which the clock started (default now). After the loop a stopped run is saved and, unless the
    last step was just evaluated, evaluated once more (so the kept weights are scored)."""
    progress = Progress(started=time.perf_counter() if started is None else started)
    resumed_from = None
    if resume_from is not None:
        state.restore(resume_from)
        progress = Progress.from_meta(resume_from.meta)
        resumed_from = progress.step
        emit("resumed", step=progress.step, seconds=round(float(resume_from.meta["seconds"]), 3), from_checkpoint=True)
    saved_step = progress.step  # a fresh start's step 0 is untouched: nothing to save

    def save(wait: bool) -> None:
        nonlocal checkpoint, saved_step
        if checkpoint is None or progress.step == saved_step:
            return
        tensors, meta = state.to_checkpoint()
        try:
            checkpoint.save(tensors, {**meta, **progress.to_meta()}, wait=wait)  # at evaluations: in the background
            saved_step = progress.step
        except OSError as exc:  # a checkpoint is insurance: losing it must not stop the training
            emit("warning", code="checkpoint_failed", step=progress.step, message=f"Could not save a checkpoint ({exc}); "
                 "training goes on, but an interruption now would lose more work.")
            checkpoint = None

    budget = schedule.time_budget_s
    while True:
        if stop is not None and stop.is_set():
            reason = StopReason.STOPPED
            break
        if progress.step >= schedule.max_steps:
            reason = schedule.limit_reason
            break
        if budget and progress.elapsed() >= budget:
            reason = StopReason.TIME_BUDGET
            break
        outcome = train_step(progress)
        if not outcome.finite:
            progress.bad_steps += 1
            emit("warning", code="non_finite", step=progress.step, message=(
                f"Skipped training step {progress.step + 1}: its loss was not a finite number "
                f"({progress.bad_steps} in a row)."))
            if progress.bad_steps >= MAX_BAD_STEPS:
                reason = StopReason.NON_FINITE
                break
            continue
        progress.bad_steps = 0
        progress.step += 1
        if outcome.event is not None:
            emit("step", step=progress.step, **outcome.event)
        if schedule.eval_due(progress.step):
            early = evaluate(progress)
            progress.last_eval_step = progress.step
            if early:
                reason = StopReason.EARLY_STOP
                break
            save(wait=False)

    if reason is StopReason.STOPPED:
        save(wait=True)  # before the closing evaluation, which an uninterrupted run would not do here
    if checkpoint is not None:
        try:
            checkpoint.wait()  # a background save still writing: done before anyone reads the files
        except OSError as exc:
            emit("warning", code="checkpoint_failed", step=progress.step, message=f"Could not save a checkpoint ({exc}).")
    if progress.step != progress.last_eval_step and (progress.step > 0 or schedule.evaluate_untrained):
        evaluate(progress)
        progress.last_eval_step = progress.step
    return LoopResult(reason, progress, resumed_from)


def strip_prefix(tensors: dict, prefix: str) -> dict:
    return {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}


def finite_or_none(x: float) -> float | None:
    return float(x) if math.isfinite(x) else None

