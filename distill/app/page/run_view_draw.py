"""Renders the parts of the run view that changed, as {name: value}; `RunViewComponents` maps the names
to the page's components."""
from __future__ import annotations

import time
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import gradio as gr

from distill.app import figures
from distill.app.page.run_view import Drawn, RunSources, RunView, next_drawn, parts_to_draw, read_run_view
from distill.app.service import DistillApp
from distill.app.worker import STOPPING_MESSAGE
from distill.app.views import notes_html, runs_rows, samples_rows

NO_PROMPT = ("(none — start from scratch)", "")
RETRAIN_FIELDS = {"r_hidden": "hidden_size", "r_layers": "num_layers", "r_heads": "num_heads",
                  "r_dropout": "dropout", "r_lr": "learning_rate"}


def refresh_run_view(app: DistillApp, run_id: str | None, drawn: Any, force: bool = False) -> dict[str, Any]:
    """What the page must send for the run view, as {name: value}; "state" is the page's new `Drawn`."""
    now = time.time()
    previous = drawn if isinstance(drawn, Drawn) and not force else None
    view, sources, previous = read_run_view(app, run_id, previous)
    parts = parts_to_draw(previous, view, now)
    out = draw_parts(app, view, sources, parts, previous.file if previous is not None else None)
    out["state"] = next_drawn(previous, view, parts, now)
    return out


def draw_parts(app: DistillApp, view: RunView, sources: RunSources, parts: tuple[str, ...],
               file: str | None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    tally, events = view.tally, sources.events
    if "picker" in parts:
        out["picker"] = run_choices(app, view.run_id)
    if "buttons" in parts:
        out.update(start=gr.Button(interactive=not view.running), stop=gr.Button(interactive=view.running),
                   stop_ds=gr.Button(interactive=view.running))
    if "runs" in parts:
        out["runs"] = runs_rows(app.runs())
    if "card" in parts:
        out["status"] = view.card
    if "stop_msg" in parts:  # the stop button's answer lasts as long as the stopping does
        out["stop_msg"] = STOPPING_MESSAGE if view.state == "stopping" else ""
    if "msgs" in parts:
        out.update(resume_msg="", retrain_msg="")
    if "vq" in parts:
        out["vq"] = figures.vqvae_loss_figure(events)
    if "prior" in parts:
        out["prior"] = figures.prior_loss_figure(events)
    if "health" in parts:
        out["health"] = figures.health_figure(list(tally.levels))
    if "notes" in parts:
        out["notes"] = notes_html(list(tally.warnings), list(tally.levels))
    if "codes" in parts:
        out.update(codes_panel(app, sources.run_dir, file))
    if "retrain" in parts:
        out.update(retrain_form(app, sources))
    return out


def codes_panel(app: DistillApp, run_dir: Path, file: str | None) -> dict[str, Any]:
    """The codes tab (file list, its codes and audio, histograms) and what the generate tab lists."""
    try:
        codes = app.codes(run_dir)
    except Exception:
        codes = {}
    names = list(codes)
    samples = app.samples(run_dir) if (run_dir / "samples").is_dir() else []
    if not names:
        return {"file_pick": gr.Dropdown(choices=[], value=None), "file_audio": None,
                "code": figures.code_sequence_figure(None), "hist": figures.histogram_figure(None),
                "prompt": gr.Dropdown(choices=[NO_PROMPT], value=""), "samples": samples_rows(samples)}
    sps, k = app.code_rate(run_dir)
    first = file if file in codes else names[0]
    train_counts, gen_counts = app.histograms(run_dir)
    return {
        "file_pick": gr.Dropdown(choices=names, value=first),
        "file_audio": app.file_audio(run_dir, first),
        "code": figures.code_sequence_figure(codes[first], k, sps, title=first),
        "hist": figures.histogram_figure(train_counts, gen_counts),
        "prompt": gr.Dropdown(choices=[NO_PROMPT] + [(n, n) for n in names], value=""),
        "samples": samples_rows(samples),
    }


def retrain_form(app: DistillApp, sources: RunSources) -> dict[str, Any]:
    """The retrain form starts from the settings this run's prior was trained with."""
    try:
        prior_cfg = (sources.manifest or app.manifest(sources.run_dir) or {}).get("prior_config")
    except Exception:  # an unreadable manifest: the form keeps its values
        prior_cfg = None
    if not isinstance(prior_cfg, dict):
        return {}
    return {name: prior_cfg[key] for name, key in RETRAIN_FIELDS.items() if key in prior_cfg}


def run_choices(app: DistillApp, run_id: str | None) -> gr.Dropdown:
    """The run picker: every run with its status, `run_id` selected when it is one of them."""
    choices = []
    for r in app.runs():
        bits = [r.get("title") or r["id"], r.get("status", "")]  # the title names it for a person (runs.run_title)
        choices.append((" · ".join(b for b in bits if b), r["id"]))
    ids = {c[1] for c in choices}
    return gr.Dropdown(choices=choices, value=run_id if run_id in ids else None)


@dataclass
class RunViewComponents:
    """The components the run view updates, named as `refresh_run_view` names its parts."""
    status: gr.HTML
    vq: gr.Plot
    prior: gr.Plot
    health: gr.Plot
    notes: gr.HTML
    file_pick: gr.Dropdown
    file_audio: gr.Audio
    code: gr.Plot
    hist: gr.Plot
    prompt: gr.Dropdown
    samples: gr.Dataframe
    state: gr.State  # the page's `Drawn`
    picker: gr.Dropdown
    start: gr.Button
    stop: gr.Button
    stop_ds: gr.Button
    runs: gr.Dataframe
    stop_msg: gr.Markdown
    resume_msg: gr.Markdown
    retrain_msg: gr.Markdown
    r_hidden: gr.Dropdown
    r_layers: gr.Slider
    r_heads: gr.Dropdown
    r_dropout: gr.Slider
    r_lr: gr.Number

    def outputs(self) -> list:
        return [getattr(self, f.name) for f in fields(self)]

    def updates(self, named: dict[str, Any]) -> dict:
        return {getattr(self, name): value for name, value in named.items()}
