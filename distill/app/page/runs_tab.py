"""The Runs tab: every run in the workspace; clicking one opens it on the Training tab."""
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


def build_runs_tab(app: DistillApp) -> RunsTab:
    with gr.Tab("Runs", id="runs", elem_id="tab-runs"):
        gr.Markdown("Every run lives in its own folder in the workspace "
                    f"(`{esc(app.workspace / 'runs')}`). Click a row to open it.", elem_classes=["d-hint"])
        runs_table = gr.Dataframe(headers=["Run", "Created", "Status", "Tier", "Files", "Sound model",
                                           "Sequence model", "Source"], value=[], interactive=False,
                                  max_height=520, elem_id="d-runs")
        refresh_btn = gr.Button("Refresh", size="sm")
    return RunsTab(runs_table, refresh_btn)


def wire_runs_tab(app: DistillApp, tab: RunsTab, tabs: gr.Tabs, run_view: RunViewComponents) -> None:
    tab.runs_table.select(bind(on_run_select, app, tabs, run_view), inputs=[run_view.state],
                          outputs=[*run_view.outputs(), tabs], api_visibility="private")
    tab.refresh_btn.click(bind(on_refresh, app, tab), outputs=[tab.runs_table], api_visibility="private")


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
