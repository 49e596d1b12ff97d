"""The Distill page: a thin Gradio layer over the library.

`build_ui` composes the page from one module per tab (distill/app/page/) and wires the run view
shared by the training, codes and generate tabs. HTML pieces come from views.py and figures from
figures.py; every action is also a named API endpoint (api.py). Nothing trains inside a request:
start hands the job to the worker and returns; the page polls with a `gr.Timer` and sends only the
parts of the run view that changed (page/run_view.py), redrawing from the worker's events or the
run's metrics.jsonl, so a reload or a second tab reattaches.
"""
from __future__ import annotations

from pathlib import Path

import gradio as gr

from distill.app.api import register_api
from distill.app.page.bind import bind
from distill.app.page.codes_tab import build_codes_tab, wire_codes_tab
from distill.app.page.dataset_tab import DatasetTab, build_dataset_tab, scan_view, wire_dataset_tab
from distill.app.page.forms import FORM_KEYS, form_for_job
from distill.app.page.generate_tab import build_generate_tab, follow_run_switches, wire_generate_tab
from distill.app.page.run_view_draw import RunViewComponents, refresh_run_view
from distill.app.page.runs_tab import build_runs_tab, wire_runs_tab
from distill.app.page.training_tab import build_training_tab, wire_training_tab
from distill.app.page.variations_tab import CSS as VARIATIONS_CSS
from distill.app.page.variations_tab import build_variations_tab, wire_variations_tab
from distill.app.service import DistillApp
from distill.app.views import CSS, esc, tier_card_html

__all__ = ["DistillApp", "build_ui", "launch_kwargs"]  # app.py imports DistillApp from here

JS_PATH = Path(__file__).with_name("folder_drop.js")
HEADER_HTML = ('<div id="d-header"><div class="d-logo">D</div><div><h1>Distill</h1>'
               '<div class="d-sub">Train a small generative model on your own sounds — on this machine, '
               'nothing leaves it.</div></div></div>')


def launch_kwargs(app: DistillApp) -> dict:
    """What `Blocks.launch` needs besides host and port (Gradio 6 takes theme/css/js there)."""
    theme = gr.themes.Default(primary_hue="indigo", secondary_hue="sky", neutral_hue="slate",
                              radius_size="md", text_size="md")
    return {
        "theme": theme, "css": CSS + VARIATIONS_CSS, "allowed_paths": [str(app.workspace)], "share": False,
        "max_file_size": app.limits.max_file_bytes, "footer_links": ["api"], "show_error": True,
        "run_history": False,
    }


def build_ui(workspace: str | Path, app: DistillApp | None = None) -> gr.Blocks:
    """The page. `app` may be passed to share a DistillApp (tests, the launcher)."""
    app = app or DistillApp(workspace)
    js = JS_PATH.read_text(encoding="utf-8")

    # Served copies of audio pile up in Gradio's cache (inside the workspace): drop day-old ones.
    with gr.Blocks(title="Distill", fill_width=False, delete_cache=(6 * 3600, 24 * 3600)) as demo:
        demo.distill_app = app  # launcher and tests reach the app through the Blocks
        view_state = gr.State(None)  # the run view this page has drawn (page/run_view.py's `Drawn`)

        with gr.Row(equal_height=True, elem_id="d-top"):
            gr.HTML(HEADER_HTML, scale=4)
            run_picker = gr.Dropdown(label="Run shown", choices=[], value=None, scale=2, elem_id="d-run-picker",
                                     allow_custom_value=True,  # choices change at run time; ids are checked
                                     min_width=320)

        with gr.Tabs(selected="dataset", elem_id="d-tabs") as tabs:
            dataset = build_dataset_tab(app, js)
            training = build_training_tab()
            codes = build_codes_tab()
            generate = build_generate_tab()
            variations = build_variations_tab()
            runs = build_runs_tab(app)

        timer = gr.Timer(1.0)

        run_view = RunViewComponents(
            status=training.status_card, vq=training.vq_plot, prior=training.prior_plot, health=training.health_plot,
            notes=training.notes, file_pick=codes.file_pick, file_audio=codes.file_audio, code=codes.code_plot,
            hist=codes.hist_plot, prompt=generate.prompt, samples=generate.samples_table, state=view_state,
            picker=run_picker, start=dataset.start_btn, stop=training.stop_btn, stop_ds=dataset.stop_btn,
            runs=runs.runs_table, stop_msg=training.stop_msg, resume_msg=training.resume_msg,
            retrain_msg=training.retrain_msg, r_hidden=training.r_hidden, r_layers=training.r_layers, r_heads=training.r_heads,
            r_dropout=training.r_dropout, r_lr=training.r_lr)

        started = wire_dataset_tab(app, dataset, tabs, run_view)
        wire_training_tab(app, training, run_picker, view_state)
        wire_codes_tab(app, codes, run_picker, view_state)
        wire_generate_tab(app, generate, run_picker, codes.hist_plot, tabs, view_state)
        opened = wire_runs_tab(app, runs, tabs, run_view)
        follow_run_switches(generate, run_picker, started, opened)
        wire_variations_tab(app, variations, run_picker, tabs, [(s.vary_btn, s.audio) for s in generate.slots])

        view_outputs = run_view.outputs()
        timer.tick(bind(on_tick, app, run_view), inputs=[run_picker, view_state], outputs=view_outputs,
                   api_visibility="private", show_progress="hidden", concurrency_limit=None, queue=True)
        run_picker.input(bind(on_pick, app, run_view), inputs=[run_picker], outputs=view_outputs,
                         api_visibility="private")
        demo.load(bind(on_load, app, dataset, tabs, run_view),
                  outputs=[*dataset.scan_outputs, dataset.device, dataset.seed, tabs, *view_outputs],
                  api_visibility="private", show_progress="hidden")

        register_api(app)  # the JSON API (gradio_client)

    demo.queue(default_concurrency_limit=1)
    return demo


# --- the run view's handlers -----------------------------------------------------------------------------


def on_tick(app: DistillApp, run_view: RunViewComponents, run_id, drawn):
    """The poll: only what changed since this page last drew."""
    return run_view.updates(refresh_run_view(app, run_id, drawn))


def on_pick(app: DistillApp, run_view: RunViewComponents, run_id):
    return run_view.updates(refresh_run_view(app, run_id, None, force=True))


def on_load(app: DistillApp, dataset: DatasetTab, tabs: gr.Tabs, run_view: RunViewComponents):
    """A page opens (or reloads): the last dataset, and the running, last or newest run. While a job
    runs the page opens on the Training tab, and the form holds the job's settings, not the defaults."""
    entry = app.latest_scan()
    running = app.worker.active_run_dir()
    active = running or app.worker.last_run_dir()
    runs = app.runs()
    run_id = active.name if active is not None else (runs[0]["id"] if runs else None)
    shown = scan_view(app, dataset, entry, f"Last dataset: **{esc(entry.label)}**") if entry else {}
    if running is not None:
        shown.update(job_form(app, dataset, running, entry))
        shown[tabs] = gr.Tabs(selected="train")
    shown.pop(dataset.dropzone, None)  # a fresh page's drop zone says nothing yet; an update would redraw it mid-drop
    return {**shown, **run_view.updates(refresh_run_view(app, run_id, None, force=True))}


def job_form(app: DistillApp, dataset: DatasetTab, run_dir: Path, entry) -> dict:
    """The dataset tab's form (and tier card) as the running job was started."""
    try:
        manifest = app.manifest(run_dir)
    except Exception:
        return {}
    values, card = form_for_job(app, manifest, entry)
    fields = dict(zip(FORM_KEYS, dataset.settings))
    out = {fields[k]: v for k, v in values.items() if k in fields}
    if card is not None:
        out[dataset.tier_card] = tier_card_html(card)
    return out


def _refresh(app: DistillApp, run_id: str | None, drawn, force: bool) -> dict:
    """The run view's updates by part name (see page/run_view_draw.py), for callers without a page."""
    return refresh_run_view(app, run_id, drawn, force)
