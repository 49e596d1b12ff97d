"""The Runs tab: every run in the workspace, named so a person can tell them apart (its own name or its
dataset's, the date, preset and minutes); clicking one opens it on the Training tab; the run shown can be
given its own name."""
from __future__ import annotations

from dataclasses import dataclass

import gradio as gr

from distill.app.page.bind import bind
from distill.app.page.run_view_draw import RunViewComponents, refresh_run_view, run_choices
from distill.app.service import DistillApp
from distill.app.views import esc, runs_rows


@dataclass
class RunsTab:
    runs_table: gr.Dataframe
    refresh_btn: gr.Button
    label_box: gr.Textbox
    rename_btn: gr.Button
    rename_msg: gr.Markdown


def build_runs_tab(app: DistillApp) -> RunsTab:
    with gr.Tab("Runs", id="runs", elem_id="tab-runs"):
        gr.Markdown("Every run lives in its own folder in the workspace "
                    f"(`{esc(app.workspace / 'runs')}`). Click a row to open it.", elem_classes=["d-hint"])
        runs_table = gr.Dataframe(headers=["Run", "Name", "Created", "Status", "Tier", "Files", "Sound model",
                                           "Sequence model", "Source"], value=[], interactive=False,
                                  max_height=520, elem_id="d-runs")
        refresh_btn = gr.Button("Refresh", size="sm")
        with gr.Row(equal_height=True):
            label_box = gr.Textbox(label="Name the run shown", max_lines=1, scale=4, elem_id="d-run-label",
                                   placeholder="e.g. bells, long take",
                                   info="Your own name for the run picked at the top; empty: named after its dataset.")
            rename_btn = gr.Button("Rename", scale=0, min_width=120, elem_id="d-rename-btn")
        rename_msg = gr.Markdown("", elem_id="d-rename-msg")
    return RunsTab(runs_table, refresh_btn, label_box, rename_btn, rename_msg)


def wire_runs_tab(app: DistillApp, tab: RunsTab, tabs: gr.Tabs, run_view: RunViewComponents):
    """Returns the run-clicked event, after which other tabs follow the run it shows."""
    opened = tab.runs_table.select(bind(on_run_select, app, tabs, run_view), inputs=[run_view.state],
                          outputs=[*run_view.outputs(), tabs], api_visibility="private")
    tab.refresh_btn.click(bind(on_refresh, app, tab), outputs=[tab.runs_table], api_visibility="private")
    rename = {"inputs": [run_view.picker, tab.label_box],
              "outputs": [tab.rename_msg, tab.runs_table, run_view.picker, run_view.state], "api_visibility": "private"}
    tab.rename_btn.click(bind(on_rename, app, tab, run_view), **rename)
    tab.label_box.submit(bind(on_rename, app, tab, run_view), **rename)
    return opened


def on_run_select(app: DistillApp, tabs: gr.Tabs, run_view: RunViewComponents, drawn, evt: gr.SelectData):
    """A run clicked: the whole run view switches to it, on the Training tab."""
    row = evt.row_value if evt is not None else None
    run_id = row[0] if row else None
    if not run_id or app.run_dir(run_id) is None:
        return {}
    named = refresh_run_view(app, run_id, None, force=True)
    named["picker"] = run_choices(app, run_id)
    return {**run_view.updates(named), tabs: gr.Tabs(selected="train")}


def on_refresh(app: DistillApp, tab: RunsTab):
    return {tab.runs_table: runs_rows(app.runs())}


def on_rename(app: DistillApp, tab: RunsTab, run_view: RunViewComponents, run_id, label):
    res = app.rename(run_id, label)
    if not res["ok"]:
        return {tab.rename_msg: f"**⚠ {res['message']}**"}
    return {tab.rename_msg: f"✓ {esc(res['message'])}", tab.runs_table: runs_rows(app.runs()),
            run_view.picker: run_choices(app, run_id),
            run_view.state: None}  # the next poll redraws all, so a poll already on its way cannot undo the name
