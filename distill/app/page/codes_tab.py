"""Tab 3, Codes: a training file's code grid, its audio, and the code histograms."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import gradio as gr

from distill.app import figures
from distill.app.page.bind import bind
from distill.app.page.help import HELP
from distill.app.page.run_view import Drawn
from distill.app.service import DistillApp


@dataclass
class CodesTab:
    tab: gr.Tab
    file_pick: gr.Dropdown
    file_audio: gr.Audio
    recon_audio: gr.Audio  # the same file through codes -> decoder, beside the original
    code_plot: gr.Plot
    hist_plot: gr.Plot


def build_codes_tab() -> CodesTab:
    with gr.Tab("3 · Codes", id="codes", elem_id="tab-codes") as tab:
        gr.Markdown("Every sound becomes a grid of codes. " + HELP["code_grid"], elem_classes=["d-hint"])
        file_pick = gr.Dropdown(label="Training file", choices=[], value=None, elem_id="d-file-pick",
                                allow_custom_value=True, info="Pick one of your files to see and hear its codes.")
        with gr.Row(equal_height=True):
            file_audio = gr.Audio(label="Your file", type="filepath", interactive=False, elem_id="d-file-audio")
            recon_audio = gr.Audio(label="Through the codes (rebuilt by the sound model)", type="numpy",
                                   interactive=False, elem_id="d-recon-audio")
        gr.Markdown(HELP["reconstruction"], elem_classes=["d-hint"])
        code_plot = gr.Plot(figures.code_sequence_figure(None), show_label=False, elem_id="d-code-plot", format="png")
        hist_plot = gr.Plot(figures.histogram_figure(None), show_label=False, elem_id="d-hist-plot", format="png")
        gr.Markdown(HELP["histogram"], elem_classes=["d-hint"])
    return CodesTab(tab, file_pick, file_audio, recon_audio, code_plot, hist_plot)


def wire_codes_tab(app: DistillApp, tab: CodesTab, run_picker: gr.Dropdown, view_state: gr.State) -> None:
    tab.file_pick.input(bind(on_file, app, tab, view_state), inputs=[run_picker, tab.file_pick, view_state],
                        outputs=[tab.code_plot, tab.file_audio, view_state], api_name="show_codes",
                        api_visibility="undocumented")
    # .change, not .input: the run view also sets the file when it draws a run. The run picker may not
    # hold the new run yet at that moment, so the drawn view's run is the fallback; opening the tab redoes it.
    recon = {"inputs": [run_picker, tab.file_pick, view_state], "outputs": [tab.recon_audio],
             "show_progress_on": [tab.recon_audio], "trigger_mode": "always_last"}
    tab.file_pick.change(bind(on_reconstruct, app, tab), api_name="reconstruct", api_visibility="undocumented",
                         **recon)
    tab.tab.select(bind(on_reconstruct, app, tab), api_visibility="private", **recon)


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


def on_reconstruct(app: DistillApp, tab: CodesTab, run_id, name, drawn=None):
    """The picked file through its codes and the decoder, to play beside the original."""
    if not run_id and isinstance(drawn, Drawn):
        run_id = drawn.view.run_id
    run_dir = app.run_dir(run_id)
    return {tab.recon_audio: app.reconstruction(run_dir, name) if run_dir is not None and name else None}
