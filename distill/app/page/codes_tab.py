"""Tab 3, Codes: a training file's code grid, its audio, and the code histograms."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import gradio as gr

from distill.app import figures
from distill.app.page.bind import bind
from distill.app.page.run_view import Drawn
from distill.app.service import DistillApp


@dataclass
class CodesTab:
    file_pick: gr.Dropdown
    file_audio: gr.Audio
    code_plot: gr.Plot
    hist_plot: gr.Plot


def build_codes_tab() -> CodesTab:
    with gr.Tab("3 · Codes", id="codes", elem_id="tab-codes"):
        gr.Markdown("Every sound becomes a grid of codes: one row per level, one column per time step "
                    "(level 1 carries the broad shape, later levels the detail). Colour = code number.",
                    elem_classes=["d-hint"])
        with gr.Row(equal_height=True):
            file_pick = gr.Dropdown(label="Training file", choices=[], value=None, scale=3, elem_id="d-file-pick",
                                    allow_custom_value=True)
            file_audio = gr.Audio(label="Listen", type="filepath", interactive=False, scale=2, elem_id="d-file-audio")
        code_plot = gr.Plot(figures.code_sequence_figure(None), show_label=False, elem_id="d-code-plot", format="png")
        hist_plot = gr.Plot(figures.histogram_figure(None), show_label=False, elem_id="d-hist-plot", format="png")
    return CodesTab(file_pick, file_audio, code_plot, hist_plot)


def wire_codes_tab(app: DistillApp, tab: CodesTab, run_picker: gr.Dropdown, view_state: gr.State) -> None:
    tab.file_pick.input(bind(on_file, app, tab, view_state), inputs=[run_picker, tab.file_pick, view_state],
                        outputs=[tab.code_plot, tab.file_audio, view_state], api_name="show_codes",
                        api_visibility="undocumented")


def on_file(app: DistillApp, tab: CodesTab, view_state: gr.State, run_id, name, drawn=None):
    """A training file picked: its codes and audio. The choice is kept when the panel redraws after a job."""
    run_dir = app.run_dir(run_id)
    if run_dir is None or not name:
        return {}
    codes = app.codes(run_dir)
    sps, k = app.code_rate(run_dir)
    out = {tab.code_plot: figures.code_sequence_figure(codes.get(name), k, sps, title=name),
           tab.file_audio: app.file_audio(run_dir, name)}
    if isinstance(drawn, Drawn):
        out[view_state] = dataclasses.replace(drawn, file=name)
    return out
