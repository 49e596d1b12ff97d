"""Tab 2, Training: the status card, loss and codebook-health plots, notes, stop, resume and retrain."""
from __future__ import annotations

from dataclasses import dataclass

import gradio as gr

from distill.app import figures
from distill.app.page.bind import bind
from distill.app.page.forms import PRESET_CHOICES
from distill.app.page.help import HELP
from distill.app.service import DistillApp
from distill.app.views import notes_html, status_card_html


@dataclass
class TrainingTab:
    status_card: gr.HTML
    stop_btn: gr.Button
    stop_msg: gr.Markdown
    vq_plot: gr.Plot
    prior_plot: gr.Plot
    health_plot: gr.Plot
    notes: gr.HTML
    resume_btn: gr.Button
    resume_msg: gr.Markdown
    r_preset: gr.Radio
    r_minutes: gr.Number
    r_hidden: gr.Dropdown
    r_layers: gr.Slider
    r_heads: gr.Dropdown
    r_dropout: gr.Slider
    r_lr: gr.Number
    retrain_btn: gr.Button
    retrain_msg: gr.Markdown


def build_training_tab() -> TrainingTab:
    with gr.Tab("2 · Training", id="train", elem_id="tab-train"):
        status_card = gr.HTML(status_card_html(None), elem_id="d-status")
        with gr.Row(equal_height=True):
            stop_btn = gr.Button("Stop training", variant="stop", elem_id="d-stop-btn", interactive=False,
                                 size="md", scale=0, min_width=170)
            stop_msg = gr.Markdown("", elem_classes=["d-hint"], elem_id="d-stop-msg")
        with gr.Row():
            vq_plot = gr.Plot(figures.vqvae_loss_figure([]), show_label=False, elem_id="d-vq-plot", format="png")
            prior_plot = gr.Plot(figures.prior_loss_figure([]), show_label=False, elem_id="d-prior-plot", format="png")
        with gr.Row():
            gr.Markdown(HELP["vq_plot"], elem_classes=["d-hint"])
            gr.Markdown(HELP["prior_plot"], elem_classes=["d-hint"])
        with gr.Row():
            health_plot = gr.Plot(figures.health_figure([]), show_label=False, elem_id="d-health-plot",
                                  format="png", scale=3)
            notes = gr.HTML(notes_html([], []), elem_id="d-notes", scale=2)
        gr.Markdown(HELP["health_plot"], elem_classes=["d-hint"])
        with gr.Row():
            resume_btn = gr.Button("Resume this run from its last checkpoint", elem_id="d-resume-btn",
                                   size="sm", scale=1)
            resume_msg = gr.Markdown("", elem_id="d-resume-msg")
        with gr.Accordion("Retrain the sequence model with other settings (keeps the sound model and its codes)",
                          open=False, elem_id="d-retrain"):
            with gr.Row():
                r_preset = gr.Radio(PRESET_CHOICES, value="auto", label="Preset", scale=2, info=HELP["preset"])
                r_minutes = gr.Number(None, label="Minutes (empty = preset's)", maximum=240,
                                      info=HELP["retrain_minutes"])
                r_hidden = gr.Dropdown([32, 64, 128, 256, 384, 512], value=128, label="Width", allow_custom_value=True,
                                       info=HELP["hidden"])
                r_layers = gr.Slider(1, 8, value=2, step=1, label="Layers", info=HELP["layers"])
                r_heads = gr.Dropdown([1, 2, 4, 8], value=4, label="Heads", allow_custom_value=True, info=HELP["heads"])
                r_dropout = gr.Slider(0.0, 0.6, value=0.3, step=0.05, label="Dropout", info=HELP["dropout"])
                r_lr = gr.Number(3e-4, label="Learning rate", minimum=1e-6, maximum=1e-1, info=HELP["lr"])
            retrain_btn = gr.Button("Retrain the sequence model with these settings", elem_id="d-retrain-btn")
            retrain_msg = gr.Markdown("", elem_id="d-retrain-msg")
    return TrainingTab(status_card, stop_btn, stop_msg, vq_plot, prior_plot, health_plot, notes, resume_btn, resume_msg,
                       r_preset, r_minutes, r_hidden, r_layers, r_heads, r_dropout, r_lr, retrain_btn, retrain_msg)


def wire_training_tab(app: DistillApp, tab: TrainingTab, run_picker: gr.Dropdown, view_state: gr.State) -> None:
    tab.stop_btn.click(bind(on_stop, app, tab.stop_msg), outputs=[tab.stop_msg], api_visibility="private",
                       concurrency_limit=None)
    tab.resume_btn.click(bind(on_resume, app, tab.resume_msg, view_state), inputs=[run_picker],
                         outputs=[tab.resume_msg, view_state], api_visibility="private", concurrency_limit=None)
    tab.retrain_btn.click(bind(on_retrain, app, tab.retrain_msg, view_state),
                          inputs=[run_picker, tab.r_preset, tab.r_minutes, tab.r_hidden, tab.r_layers, tab.r_heads,
                                  tab.r_dropout, tab.r_lr],
                          outputs=[tab.retrain_msg, view_state], api_visibility="private", concurrency_limit=None)


# --- handlers ------------------------------------------------------------------------------------------


def on_stop(app: DistillApp, msg: gr.Markdown):
    return {msg: f"{app.worker.stop()['message']}"}


def on_resume(app: DistillApp, msg: gr.Markdown, view_state: gr.State, run_id):
    res = app.resume(run_id)
    if not res["ok"]:
        return {msg: f"**⚠ {res['message']}**"}
    return {msg: f"✓ {res['message']}", view_state: None}  # the next poll redraws the whole view


def on_retrain(app: DistillApp, msg: gr.Markdown, view_state: gr.State, run_id, r_preset_v, r_minutes_v, h, n, nh, d,
               lr_v):
    if app.worker.is_running():
        return {msg: "**⚠ A training run is going; wait for it or stop it first.**"}
    if h and nh and int(h) % int(nh):
        return {msg: f"**⚠ Width {h} must be a multiple of the number of heads ({nh}).**"}
    overrides = {"hidden_size": int(h), "num_layers": int(n), "num_heads": int(nh), "dropout": float(d),
                 "learning_rate": float(lr_v)}
    res = app.retrain(run_id, app.options(r_preset_v, r_minutes_v, prior_overrides=overrides))
    if not res["ok"]:
        return {msg: f"**⚠ {res['message']}**"}
    return {msg: f"✓ {res['message']}", view_state: None}
