"""The run view: what the training, codes and generate tabs show about the selected run, and which of
its parts changed since the page last drew it.

`read_run_view` builds a `RunView` from the worker's status, the run's events and its manifest;
`parts_to_draw` (pure) compares it with the `Drawn` state the page keeps in a gr.State and names the
parts to redraw (run_view_draw.py renders them). The event tally advances from where the last poll
stopped, so a poll costs O(new events). A new job, from any tab or the API, takes over the view.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from distill.app.service import DistillApp
from distill.app.views import status_card_html
from distill.app.worker import levels_from_event
from distill.events import Kind, Stage

REDRAW_EVERY_S = 2.0  # loss plots redraw at most this often while training (they cost CPU)

LOSS_KINDS = {(Stage.VQVAE, Kind.STEP), (Stage.VQVAE, Kind.EVAL), (Stage.PRIOR, Kind.STEP), (Stage.PRIOR, Kind.EVAL)}
ACTIVE_STATES = ("running", "stopping")

# Every part of the run view, in the order they are drawn; a run without a folder has no codes or form.
# "stop_msg" follows the worker's state; "msgs" (the resume and retrain answers) are cleared when the
# state they answered has changed, so they are never part of a full redraw (which follows a click on them).
ALL_PARTS = ("picker", "buttons", "runs", "card", "stop_msg", "vq", "prior", "health", "notes", "codes", "retrain")
NO_RUN_PARTS = ALL_PARTS[:-2]
EVERY_PART = (*ALL_PARTS, "msgs")


@dataclass(frozen=True)
class EventTally:
    """What the view needs from a run's events, counted over the first `seen` of them."""
    seen: int = 0
    vq_points: int = 0
    prior_points: int = 0
    levels: tuple = ()  # the latest codebook levels (health plot, notes)
    levels_sig: str = "[]"  # compared instead of `levels`: their values may be NaN
    warnings: tuple[str, ...] = ()
    codes_ready: int = 0  # events after which the codes panel has something new

    def advance(self, new: list[dict]) -> EventTally:
        vq, pr, levels, codes_ready = self.vq_points, self.prior_points, self.levels, self.codes_ready
        warnings = list(self.warnings)
        for ev in new:
            key = (ev.get("stage"), ev.get("kind"))
            if key in LOSS_KINDS:
                if key[0] == Stage.VQVAE:
                    vq += 1
                else:
                    pr += 1
            if ev.get("kind") == Kind.EVAL or key == (Stage.CODES, Kind.STAGE_END):
                lv = levels_from_event(ev)
                if lv:
                    levels = tuple(lv)
            if key == (Stage.CODES, Kind.STAGE_END) or ev.get("kind") == Kind.RUN_END:
                codes_ready += 1
            if ev.get("kind") == Kind.WARNING and ev.get("message") and ev["message"] not in warnings:
                warnings.append(str(ev["message"]))
        sig = self.levels_sig if levels is self.levels else json.dumps(list(levels), sort_keys=True, default=str)
        return EventTally(self.seen + len(new), vq, pr, levels, sig, tuple(warnings), codes_ready)


@dataclass(frozen=True)
class RunView:
    run_id: str | None
    generation: int  # the worker's job counter: it moves when any job starts
    state: str | None  # the worker's state
    running: bool
    exists: bool  # the run has a folder
    card: str  # the status card's HTML
    tally: EventTally = field(default_factory=EventTally)
    names_revision: int = 0  # the app's count of renames: the runs list and picker follow it

    @property
    def active(self) -> bool:
        return self.state in ACTIVE_STATES


@dataclass(frozen=True)
class Drawn:
    """What a page shows: the view it last drew, and the loss plots as drawn (they lag while throttled)."""
    view: RunView
    vq_points: int = 0
    prior_points: int = 0
    plots_at: float = 0.0
    file: str | None = None  # the training file the codes tab shows, kept across redraws


@dataclass(frozen=True)
class RunSources:
    """What drawing needs besides the view: the run's folder, events and manifest."""
    run_dir: Path | None = None
    events: list = field(default_factory=list)
    manifest: dict | None = None


def read_run_view(app: DistillApp, run_id: str | None, drawn: Drawn | None) -> tuple[RunView, RunSources, Drawn | None]:
    """The view of `run_id` now, with `drawn` as the page's state (None when it must redraw everything)."""
    snap = app.worker.status()
    gen = snap.get("generation", 0)
    job_run = snap.get("run_id")
    if job_run and ((drawn is not None and gen != drawn.view.generation) or not run_id):
        run_id, drawn = job_run, None
    state, running = snap.get("state"), bool(snap.get("running"))
    run_dir = app.run_dir(run_id)
    if drawn is not None and (drawn.view.run_id != run_id or drawn.view.exists != (run_dir is not None)):
        drawn = None  # another run, or the run's folder came or went: everything is redrawn
    if run_dir is None:
        return (RunView(run_id, gen, state, running, False, status_card_html(snap, run_id),
                        names_revision=app.names_revision), RunSources(), drawn)

    is_job = job_run == run_id and state != "idle"
    manifest = None
    if not (is_job and state in ACTIVE_STATES):  # a finished job's manifest holds its results (the verdict)
        try:
            manifest = app.manifest(run_dir)
        except Exception:
            manifest = None
    events = app.run_events(run_dir)
    tally = drawn.view.tally if drawn is not None else EventTally()
    if tally.seen > len(events):  # the file was rewritten (retrain appends; this is a safety net)
        tally, drawn = EventTally(), None
    view = RunView(run_id, gen, state, running, True, status_card_html(snap if is_job else None, run_id, manifest),
                   tally.advance(events[tally.seen:]), app.names_revision)
    return view, RunSources(run_dir, events, manifest), drawn


def parts_to_draw(drawn: Drawn | None, view: RunView, now: float) -> tuple[str, ...]:
    """The parts of `view` that differ from what the page shows (all of them when nothing is drawn)."""
    if drawn is None:
        return ALL_PARTS if view.exists else NO_RUN_PARTS
    prev, tally, prev_tally = drawn.view, view.tally, drawn.view.tally
    due = not view.running or now - drawn.plots_at >= REDRAW_EVERY_S
    renamed = prev.names_revision != view.names_revision
    changed = {
        "picker": renamed or (prev.generation, prev.state) != (view.generation, view.state),
        "buttons": prev.running != view.running,
        "runs": renamed or prev.state != view.state,
        "card": prev.card != view.card,
        "stop_msg": (prev.generation, prev.state) != (view.generation, view.state),
        "msgs": (prev.generation, prev.state) != (view.generation, view.state),
        "vq": view.exists and due and tally.vq_points != drawn.vq_points,
        "prior": view.exists and due and tally.prior_points != drawn.prior_points,
        "health": view.exists and tally.levels_sig != prev_tally.levels_sig,
        "notes": view.exists and (tally.warnings, tally.levels_sig) != (prev_tally.warnings, prev_tally.levels_sig),
        "codes": view.exists and (tally.codes_ready != prev_tally.codes_ready or (prev.active and not view.active)),
        "retrain": False,  # the retrain form follows the run only when the page switches to it
    }
    return tuple(p for p in EVERY_PART if changed[p])


def next_drawn(drawn: Drawn | None, view: RunView, parts: tuple[str, ...], now: float) -> Drawn:
    """The page's state once `parts` of `view` are drawn."""
    prev = drawn or Drawn(view)
    vq = view.tally.vq_points if "vq" in parts else prev.vq_points
    prior = view.tally.prior_points if "prior" in parts else prev.prior_points
    plots_at = now if ("vq" in parts or "prior" in parts) else prev.plots_at
    return Drawn(view, vq, prior, plots_at, drawn.file if drawn is not None else None)
