"""How far a run has got and how long it still needs, from its own events: a pure estimator.

Guesses made before a stage starts (its time budget) are replaced by what the stage measures as soon
as it runs: steps per second so far against the steps planned, the time budget left, or the share
of files read. The overall bar is the share of the run's time spent so far, with finished stages at
their real durations; it never moves back (`ProgressTracker.report`). The worker folds events into a
tracker as they arrive (O(1) per status); `estimate_progress` replays a recorded event list (tests).
"""
from __future__ import annotations

from dataclasses import dataclass, field

from distill.events import STAGE_ORDER, TRAINING_STAGES, Kind, Stage

STAGES = (Stage.FEATURES, *STAGE_ORDER)
# Seconds a stage is expected to take before it has measured anything (features, codes and analysis
# are short; the training stages normally arrive with their budgets).
DEFAULT_SECONDS = {Stage.FEATURES: 3.0, Stage.VQVAE: 45.0, Stage.CODES: 2.0, Stage.PRIOR: 45.0, Stage.ANALYSIS: 2.0}
RUNNING_CAP = 0.99  # the bar stays short of full until the run has ended


@dataclass
class StageClock:
    """One stage's attempt as its events tell it."""

    started: float
    budget_s: float | None = None
    planned_steps: int | None = None
    base_step: int = 0  # the step it (re)started from: a resumed stage measures from there
    first: tuple[int, float] | None = None  # (step, time) of its first step event
    last: tuple[int, float] | None = None  # (step, time) of its latest step event
    share_done: float | None = None  # from "progress" events (files read)
    ended: float | None = None
    stopped: bool = False

    def remaining(self, now: float, expected: float) -> float:
        """Seconds this stage still needs, from what it measured (the expectation until it has)."""
        if self.ended is not None:
            return 0.0
        elapsed = max(0.0, now - self.started)
        guesses = []
        if self.budget_s:
            guesses.append(self.budget_s - elapsed)
        rate = self.steps_per_s()
        if rate and self.planned_steps and self.last is not None:
            guesses.append((self.planned_steps - self.last[0]) / rate - (now - self.last[1]))
        if self.share_done and self.share_done > 0.05:
            guesses.append(elapsed * (1 - self.share_done) / self.share_done)
        if not guesses:
            guesses.append(expected - elapsed)
        # never "done" while it runs: at least a little, growing with time already spent past the guess
        return max(min(guesses), 0.02 * elapsed, 0.5)

    def steps_per_s(self) -> float | None:
        if self.first is None or self.last is None:
            return None
        if self.last[0] > self.first[0] and self.last[1] > self.first[1]:
            return (self.last[0] - self.first[0]) / (self.last[1] - self.first[1])
        if self.last[0] > self.base_step and self.last[1] > self.started:  # one step event: setup time included
            return (self.last[0] - self.base_step) / (self.last[1] - self.started)
        return None


@dataclass(frozen=True)
class Estimate:
    fraction: float  # of the whole run, 0..1
    eta_s: float | None  # seconds left in the whole run
    stage_fraction: float
    stage_eta_s: float | None


@dataclass
class ProgressTracker:
    """Folds a run's events into per-stage clocks; `estimate(now)` says where the run stands."""

    expected: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_SECONDS))
    clocks: dict[str, StageClock] = field(default_factory=dict)
    current: str | None = None
    ended: float | None = None
    status: str | None = None  # the run_end's: "done", "stopped" or "failed"
    shown: float = 0.0  # the highest overall fraction reported: the bar never moves back
    held: bool = False  # a stop was honoured: the bar stays where the work got to

    @classmethod
    def for_stages(cls, stages, expected: dict | None = None) -> "ProgressTracker":
        """A tracker for a job that runs `stages`, with expected seconds per stage (the plan's budgets)."""
        base = {s: DEFAULT_SECONDS[s] for s in stages if s in DEFAULT_SECONDS}
        for k, v in (expected or {}).items():
            if k in base and isinstance(v, (int, float)) and v > 0:
                base[k] = float(v)
        return cls(expected=base)

    def update(self, event: dict, stopping: bool = False) -> None:
        kind, stage, t = event.get("kind"), event.get("stage"), event.get("t")
        if not isinstance(t, (int, float)):
            return
        if kind == Kind.STAGE_START and stage in STAGES:
            if self.current in self.clocks and self.current != stage and self.clocks[self.current].ended is None:
                self.clocks[self.current].ended = t  # a stage that ended without a stage_end event
            budget = event.get("budget_s")
            planned = event.get("max_steps")
            self.clocks[stage] = StageClock(started=t, budget_s=float(budget) if _num(budget) and budget > 0 else None,
                                            planned_steps=int(planned) if _num(planned) and planned > 0 else None)
            self.current = stage
            if stage in STAGES:  # earlier stages that never started were skipped (a resume): nothing left of them
                for skipped in STAGES[:STAGES.index(stage)]:
                    if skipped not in self.clocks:
                        self.expected.pop(skipped, None)
            if stage not in self.expected:
                self.expected[stage] = DEFAULT_SECONDS.get(stage, 1.0)
            return
        if isinstance(event.get("expected_s"), dict):  # a measured guess for stages still to come
            for later, seconds in event["expected_s"].items():
                if later in self.expected and later not in self.clocks and _num(seconds) and seconds > 0:
                    self.expected[later] = float(seconds)
        clock = self.clocks.get(stage) if stage in STAGES else None
        if kind == Kind.RUN_END:
            if not self.held:
                self.shown = max(self.shown, self.estimate(t).fraction)  # where the bar stays if it did not finish
            self.ended, self.status = t, event.get("status")
            if self.current in self.clocks and self.clocks[self.current].ended is None:
                clock = self.clocks[self.current]
                clock.ended, clock.stopped = t, event.get("status") == "stopped" and self.current in TRAINING_STAGES
            return
        if clock is None:
            return
        if kind == Kind.STAGE_END:
            if stopping and stage in TRAINING_STAGES and not self.held:
                # the work left in this stage will not be done now: hold the bar where it got to
                self.shown, self.held = max(self.shown, self.estimate(t).fraction), True
            clock.ended = t
            clock.stopped = stopping and stage in TRAINING_STAGES
        elif kind == Kind.INFO and _num(event.get("planned_steps")):
            clock.planned_steps = int(event["planned_steps"])
        elif kind == Kind.RESUMED and _num(event.get("step")):
            clock.base_step, clock.first, clock.last = int(event["step"]), None, None
        elif kind == Kind.STEP and _num(event.get("step")):
            point = (int(event["step"]), float(t))
            clock.first = clock.first or point
            clock.last = point
        elif kind == Kind.PROGRESS and _num(event.get("fraction")):
            clock.share_done = max(0.0, min(1.0, float(event["fraction"])))

    def estimate(self, now: float) -> Estimate:
        """Where the run stands at `now` (pure: `report` is the one that remembers the bar)."""
        spent = left = 0.0
        stage_fraction, stage_eta = 0.0, None
        for stage, expected in self.expected.items():
            clock = self.clocks.get(stage)
            if clock is None:
                if self.ended is None:
                    left += expected  # not started yet: the plan's guess
                continue
            end = clock.ended if clock.ended is not None else (self.ended if self.ended is not None else now)
            spent += max(0.0, end - clock.started)
            if clock.ended is None and self.ended is None:
                rest = clock.remaining(now, expected)
                left += rest
                if stage == self.current:
                    elapsed = max(0.0, now - clock.started)
                    stage_fraction, stage_eta = elapsed / (elapsed + rest), rest
        if self.ended is not None:
            full = self.status == "done"  # a stopped or failed run keeps the bar where it got to
            return Estimate(1.0 if full else self.shown, 0.0, 1.0 if full else stage_fraction, 0.0)
        fraction = min(RUNNING_CAP, spent / (spent + left)) if spent + left > 0 else 0.0
        return Estimate(fraction, left, min(RUNNING_CAP, stage_fraction), stage_eta)

    def report(self, now: float) -> Estimate:
        """`estimate` with the bar held where it was if the estimate moved back."""
        est = self.estimate(now)
        if self.held:
            return Estimate(self.shown, est.eta_s, est.stage_fraction, est.stage_eta_s)
        if self.ended is None:
            self.shown = max(self.shown, est.fraction)
            est = Estimate(self.shown, est.eta_s, est.stage_fraction, est.stage_eta_s)
        return est

    def stopped_at(self) -> dict[str, int | None]:
        """The training stages that ended on a stop, with the step they got to."""
        return {s: (c.last[0] if c.last else None) for s, c in self.clocks.items() if c.stopped}


def estimate_progress(events: list[dict], now: float, stages=STAGES, expected: dict | None = None) -> Estimate:
    """Where a run stood at `now`, from its events up to then (a recorded run replayed)."""
    tracker = ProgressTracker.for_stages(stages, expected)
    for event in events:
        t = event.get("t")
        if isinstance(t, (int, float)) and t <= now:
            tracker.update(event)
    return tracker.estimate(now)


def _num(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)
