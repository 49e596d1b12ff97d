"""The Distill page: a thin Gradio layer over the library.

`build_ui` lays out the page and wires every button to `DistillApp` (service.py); HTML pieces come
from views.py and figures from figures.py. Every action is also a named API endpoint (api.py).
Nothing trains inside a request: start hands the job to the worker and returns; the page polls with
a `gr.Timer` and `_refresh` sends only what changed (gr.skip() for the rest), redrawing from the
worker's events or the run's metrics.jsonl, so a reload or a second tab reattaches.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import gradio as gr

from distill.app import figures
from distill.app.api import register_api
from distill.app.service import MAX_VARIATIONS, DistillApp, ScanEntry
from distill.app.uploads import UploadError
from distill.app.views import (
    CSS,
    DROPZONE_TEMPLATE,
    esc,
    notes_html,
    page_rows,
    runs_rows,
    samples_rows,
    status_card_html,
    summary_md,
    tier_card_html,
)
from distill.app.worker import levels_from_event
from distill.config import SAMPLING_DEFAULTS

JS_PATH = Path(__file__).with_name("folder_drop.js")
REDRAW_EVERY_S = 2.0  # loss plots redraw at most this often while training (they cost CPU)

PRESET_CHOICES = [("Auto: sized to the dataset", "auto"), ("Quick look: small and fast", "quick")]
DEVICE_CHOICES = [("Auto", "auto"), ("CPU", "cpu"), ("CUDA GPU", "cuda"), ("Apple GPU (MPS)", "mps")]


def launch_kwargs(app: DistillApp) -> dict:
    """What `Blocks.launch` needs besides host and port (Gradio 6 takes theme/css/js there)."""
    theme = gr.themes.Default(primary_hue="indigo", secondary_hue="sky", neutral_hue="slate",
                              radius_size="md", text_size="md")
    return {
        "theme": theme, "css": CSS, "allowed_paths": [str(app.workspace)], "share": False,
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
        scan_state = gr.State(None)  # scan id shown on this page
        page_state = gr.State({"page": 0, "filter": "all"})
        view_state = gr.State({})  # what this page has drawn (see `refresh`)

        with gr.Row(equal_height=True, elem_id="d-top"):
            gr.HTML('<div id="d-header"><div class="d-logo">D</div><div><h1>Distill</h1>'
                    '<div class="d-sub">Train a small generative model on your own sounds — on this machine, '
                    'nothing leaves it.</div></div></div>', scale=4)
            run_picker = gr.Dropdown(label="Run shown", choices=[], value=None, scale=2, elem_id="d-run-picker",
                                     allow_custom_value=True,  # choices change at run time; ids are checked
                                     min_width=320)

        with gr.Tabs(selected="dataset", elem_id="d-tabs") as tabs:
            # --- 1 dataset -------------------------------------------------------------------
            with gr.Tab("1 · Dataset", id="dataset", elem_id="tab-dataset"):
                with gr.Row():
                    with gr.Column(scale=5):
                        dropzone = gr.HTML(
                            value="", html_template=DROPZONE_TEMPLATE, js_on_load=js, elem_id="d-drop",
                            max_files=app.limits.max_files, max_file_bytes=app.limits.max_file_bytes,
                        )
                        with gr.Row(equal_height=True):
                            path_box = gr.Textbox(show_label=False, scale=4, container=False, elem_id="d-path", max_lines=1,
                                                  placeholder="…or type a folder path on this computer")
                            scan_btn = gr.Button("Scan folder", scale=0, min_width=140, size="md", elem_id="d-scan-btn")
                        demo_btn = gr.Button("Use the demo dataset (16 synthetic sounds)", size="md", elem_id="d-demo-btn")
                        ingest_msg = gr.Markdown("", elem_id="d-ingest-msg")
                    with gr.Column(scale=6):
                        tier_card = gr.HTML(tier_card_html(None), elem_id="d-tier-card")
                        with gr.Accordion("Settings — change them before training if you like", open=False,
                                          elem_id="d-settings"):
                            with gr.Row():
                                preset = gr.Radio(PRESET_CHOICES, value="auto", label="Preset", scale=3)
                                device = gr.Dropdown(DEVICE_CHOICES, value="auto", label="Device", scale=2)
                                minutes = gr.Number(None, label="Time budget, minutes (empty = preset's)", maximum=240, step=0.5,
                                                    scale=2, elem_id="d-minutes")
                            with gr.Row():
                                levels = gr.Slider(2, 4, value=3, step=1, label="Codebook levels (VQ-VAE)")
                                codebook = gr.Dropdown([16, 32, 64, 128, 256, 512], value=64, label="Codes per level")
                                seed = gr.Number(0, label="Seed", precision=0, minimum=0)
                            with gr.Row():
                                hidden = gr.Dropdown([32, 64, 128, 256, 384, 512], value=128, label="Prior width")
                                layers = gr.Slider(1, 8, value=2, step=1, label="Prior layers")
                                heads = gr.Dropdown([1, 2, 4, 8], value=4, label="Attention heads")
                                dropout = gr.Slider(0.0, 0.6, value=0.3, step=0.05, label="Dropout")
                                lr = gr.Number(3e-4, label="Learning rate", minimum=1e-6, maximum=1e-1, step=1e-4)
                        with gr.Row():
                            start_btn = gr.Button("Start training", variant="primary", elem_id="d-start-btn", scale=3)
                            stop_btn_ds = gr.Button("Stop", variant="stop", elem_id="d-stop-btn-ds", scale=1, interactive=False)
                        start_msg = gr.Markdown("", elem_id="d-start-msg")
                with gr.Column(visible=False, elem_id="d-report") as report_box:  # shown once a dataset is scanned
                    report_summary = gr.Markdown("", elem_id="d-report-summary")
                    with gr.Row(equal_height=True):
                        report_filter = gr.Radio([("All files", "all"), ("Used", "used"), ("Skipped", "skipped")],
                                                 value="all", show_label=False, scale=3, container=False)
                        prev_btn = gr.Button("◀ Previous", size="sm", scale=0, min_width=110)
                        page_label = gr.Markdown("", elem_id="d-page-label")
                        next_btn = gr.Button("Next ▶", size="sm", scale=0, min_width=110)
                    report_table = gr.Dataframe(headers=["", "File", "Length", "Rate", "Channels", "Note / reason for skipping"],
                                                value=[], interactive=False, wrap=True, max_height=420,
                                                column_widths=["100px", "38%", "80px", "80px", "90px", "30%"],
                                                elem_id="d-report-table")

            # --- 2 training --------------------------------------------------------------------
            with gr.Tab("2 · Training", id="train", elem_id="tab-train"):
                status_card = gr.HTML(status_card_html(None), elem_id="d-status")
                with gr.Row(equal_height=True):
                    stop_btn = gr.Button("Stop training", variant="stop", elem_id="d-stop-btn", interactive=False,
                                         size="md", scale=0, min_width=170)
                    stop_msg = gr.Markdown("", elem_classes=["d-hint"])
                with gr.Row():
                    vq_plot = gr.Plot(figures.vqvae_loss_figure([]), show_label=False, elem_id="d-vq-plot",
                                      format="png")
                    prior_plot = gr.Plot(figures.prior_loss_figure([]), show_label=False, elem_id="d-prior-plot",
                                         format="png")
                with gr.Row():
                    health_plot = gr.Plot(figures.health_figure([]), show_label=False, elem_id="d-health-plot",
                                          format="png", scale=3)
                    notes = gr.HTML(notes_html([], []), elem_id="d-notes", scale=2)
                with gr.Row():
                    resume_btn = gr.Button("Resume this run from its last checkpoint", elem_id="d-resume-btn",
                                           size="sm", scale=1)
                    resume_msg = gr.Markdown("", elem_id="d-resume-msg")
                with gr.Accordion("Retrain the sequence model with other settings (keeps the sound model and its codes)",
                                  open=False, elem_id="d-retrain"):
                    with gr.Row():
                        r_preset = gr.Radio(PRESET_CHOICES, value="auto", label="Preset", scale=2)
                        r_minutes = gr.Number(None, label="Minutes (empty = preset's)", maximum=240)
                        r_hidden = gr.Dropdown([32, 64, 128, 256, 384, 512], value=128, label="Width", allow_custom_value=True)
                        r_layers = gr.Slider(1, 8, value=2, step=1, label="Layers")
                        r_heads = gr.Dropdown([1, 2, 4, 8], value=4, label="Heads", allow_custom_value=True)
                        r_dropout = gr.Slider(0.0, 0.6, value=0.3, step=0.05, label="Dropout")
                        r_lr = gr.Number(3e-4, label="Learning rate", minimum=1e-6, maximum=1e-1)
                    retrain_btn = gr.Button("Retrain the sequence model with these settings", elem_id="d-retrain-btn")
                    retrain_msg = gr.Markdown("")

            # --- 3 codes ---------------------------------------------------------------------------
            with gr.Tab("3 · Codes", id="codes", elem_id="tab-codes"):
                gr.Markdown("Every sound becomes a grid of codes: one row per level, one column per time step "
                            "(level 1 carries the broad shape, later levels the detail). Colour = code number.",
                            elem_classes=["d-hint"])
                with gr.Row(equal_height=True):
                    file_pick = gr.Dropdown(label="Training file", choices=[], value=None, scale=3, elem_id="d-file-pick",
                                            allow_custom_value=True)
                    file_audio = gr.Audio(label="Listen", type="filepath", interactive=False, scale=2, elem_id="d-file-audio")
                code_plot = gr.Plot(figures.code_sequence_figure(None), show_label=False, elem_id="d-code-plot",
                                    format="png")
                hist_plot = gr.Plot(figures.histogram_figure(None), show_label=False, elem_id="d-hist-plot",
                                    format="png")

            # --- 4 generate ------------------------------------------------------------------------
            with gr.Tab("4 · Generate", id="generate", elem_id="tab-generate"):
                with gr.Row():
                    with gr.Column(scale=2, min_width=280):
                        g_seconds = gr.Number(4.0, label="Duration (seconds)", minimum=0.1, maximum=600, step=0.5,
                                              elem_id="d-g-seconds")
                        g_temp = gr.Slider(0.0, 2.0, value=1.0, step=0.05, label="Temperature",
                                           info="Lower: safer, more repetitive. Higher: wilder.")
                        with gr.Row():
                            g_topk = gr.Number(0, label="Top-k (0 = off)", precision=0, minimum=0, maximum=4096)
                            g_topp = gr.Slider(0.05, 1.0, value=1.0, step=0.01, label="Top-p")
                        with gr.Row():
                            g_seed = gr.Number(0, label="Seed", precision=0, minimum=0)
                            g_var = gr.Slider(1, MAX_VARIATIONS, value=1, step=1, label="Variations")
                        g_fmt = gr.Radio([("WAV", "wav"), ("FLAC", "flac")], value="wav", label="File format")
                        g_prompt = gr.Dropdown([("(none — start from scratch)", "")], value="", label="Continue from a file",
                                               allow_custom_value=True,
                                               info="The sample starts where this training file's codes end.")
                        g_clips = gr.Checkbox(True, label="New sound after each one ends",
                                              info="When your files are short sounds, a long sample is a run of "
                                                   "them, each ending where the model expects. Off: one continuous sound.",
                                              elem_id="d-g-clips")
                        g_follow = gr.Slider(0.0, 1.0, value=SAMPLING_DEFAULTS["retrieval"], step=0.05,
                                             label="Follow your material", elem_id="d-g-follow",
                                             info="Higher: each moment continues the way your own files continue "
                                                  "(fewer clicks and noise, closer to your sounds). 0: the model alone.")
                        gen_btn = gr.Button("Generate", variant="primary", elem_id="d-gen-btn")
                        gen_msg = gr.Markdown("", elem_id="d-gen-msg")
                    with gr.Column(scale=5):
                        slot_audio, slot_plot = [], []
                        for i in range(MAX_VARIATIONS):
                            with gr.Column(visible=i == 0, variant="panel", elem_classes=["d-slot"]) as grp:
                                a = gr.Audio(label=f"Variation {i + 1}", type="filepath", interactive=False,
                                             buttons=["download"], elem_id=f"d-gen-audio-{i}")
                                p = gr.Plot(figures.code_sequence_figure(None), show_label=False, format="png",
                                            elem_id=f"d-gen-plot-{i}")
                            slot_audio.append(a)
                            slot_plot.append((grp, p))
                        downloads = gr.File(label="Download", file_count="multiple", interactive=False, elem_id="d-downloads")
                gr.Markdown("### Saved samples")
                samples_table = gr.Dataframe(headers=["Created", "Sample", "Seconds", "Temperature", "Top-k", "Top-p",
                                                      "Seed", "Continues"], value=[], interactive=False,
                                             max_height=300, elem_id="d-samples")
                with gr.Row():
                    saved_audio = gr.Audio(label="Selected sample", type="filepath", interactive=False,
                                           buttons=["download"], scale=2)
                    saved_plot = gr.Plot(figures.empty_figure("Click a saved sample above to play it and see its codes",
                                                              height=1.8), show_label=False, format="png", scale=3)

            # --- runs --------------------------------------------------------------------------------
            with gr.Tab("Runs", id="runs", elem_id="tab-runs"):
                gr.Markdown("Every run lives in its own folder in the workspace "
                            f"(`{esc(app.workspace / 'runs')}`). Click a row to open it.", elem_classes=["d-hint"])
                runs_table = gr.Dataframe(headers=["Run", "Created", "Status", "Tier", "Files", "Sound model",
                                                   "Sequence model", "Source"], value=[], interactive=False,
                                          max_height=520, elem_id="d-runs")
                refresh_runs_btn = gr.Button("Refresh", size="sm")

        timer = gr.Timer(1.0)

        # --- handlers ----------------------------------------------------------------------------------

        settings_inputs = [preset, minutes, device, levels, codebook, seed, hidden, layers, heads, dropout, lr]
        dataset_outputs = [scan_state, page_state, tier_card, ingest_msg, report_summary, report_table, page_label,
                           preset, levels, codebook, hidden, layers, heads, dropout, lr, report_box, minutes]

        def scan_view(entry, message: str, options=None):
            """Everything the dataset panel shows for a fresh scan (settings reset to the plan's)."""
            from distill.scan import DatasetError

            options = options or app.options()
            card_html, form = tier_card_html(None), [gr.skip()] * 8
            try:
                plan = app.plan(entry, options)
                card_html = tier_card_html(plan.tier_card)
                vq, pr = plan.vqvae_config, plan.prior_config
                form = [options.preset, vq.num_quantizers, vq.codebook_size, pr.hidden_size, pr.num_layers,
                        pr.num_heads, pr.dropout, pr.learning_rate]
            except DatasetError as exc:
                card_html = tier_card_html(None, error=str(exc))
            page = {"page": 0, "filter": "all"}
            rows, label = page_rows(entry, page)
            # A new dataset starts from its tier's settings: the form (time budget included) is reset.
            return [entry.id, page, card_html, message, summary_md(entry), rows, label, *form, gr.Column(visible=True),
                    None]

        def failed_view(message: str):
            return [gr.skip(), gr.skip(), gr.skip(), f"**⚠ {message}**", gr.skip(), gr.skip(), gr.skip(),
                    *([gr.skip()] * 10)]

        def on_files_ready(payload, progress=gr.Progress()):
            from distill.scan import DatasetError

            try:
                entry = app.ingest_upload(payload, progress=_progress_cb(progress))
            except (UploadError, DatasetError) as exc:
                return [*failed_view(str(exc)), json.dumps({"result": str(exc), "ok": False})]
            used = len(entry.report.used)
            verdict = f"Ready: {used} usable file{'s' if used != 1 else ''}. See the tier card."
            return [*scan_view(entry, f"✓ {entry.note}"), json.dumps({"result": verdict, "ok": True})]

        def on_scan_path(path, progress=gr.Progress()):
            from distill.scan import DatasetError

            try:
                entry = app.scan(path, progress=_progress_cb(progress))
            except DatasetError as exc:
                return failed_view(str(exc))
            return scan_view(entry, f"✓ Scanned `{entry.source}` in place (nothing copied).")

        def on_demo(progress=gr.Progress()):
            from distill.scan import DatasetError

            try:
                entry = app.demo_dataset(progress=_progress_cb(progress))
            except DatasetError as exc:
                return failed_view(str(exc))
            return scan_view(entry, f"✓ {entry.note}")

        dropzone.files_ready(on_files_ready, inputs=[dropzone], outputs=[*dataset_outputs, dropzone], api_visibility="private",
                             show_progress_on=[tier_card])
        scan_btn.click(on_scan_path, inputs=[path_box], outputs=dataset_outputs, api_name="scan_ui",
                       api_visibility="undocumented", show_progress_on=[tier_card])
        path_box.submit(on_scan_path, inputs=[path_box], outputs=dataset_outputs, api_visibility="private",
                        show_progress_on=[tier_card])
        demo_btn.click(on_demo, outputs=dataset_outputs, api_name="use_demo", show_progress_on=[tier_card])

        def on_settings(scan_id, *values):
            entry = app.get_scan(scan_id)
            if entry is None:
                return gr.skip()
            options, edited, err = _options_from_form(app, entry, values)
            if err:
                return tier_card_html(None, error=err)
            try:
                plan = app.plan(entry, options)
            except Exception as exc:  # a bad combination: say so on the card
                return tier_card_html(None, error=str(exc))
            return tier_card_html(plan.tier_card, edited=edited)

        def on_preset(scan_id, preset_v, minutes_v, device_v, levels_v, seed_v):
            """Preset or levels changed: the form goes back to that preset's settings."""
            entry = app.get_scan(scan_id)
            if entry is None:
                return [gr.skip()] * 7
            options = app.options(preset_v, minutes_v, device_v, seed_v, levels_v)
            try:
                plan = app.plan(entry, options)
            except Exception as exc:
                return [tier_card_html(None, error=str(exc))] + [gr.skip()] * 6
            vq, pr = plan.vqvae_config, plan.prior_config
            return [tier_card_html(plan.tier_card), vq.codebook_size, pr.hidden_size, pr.num_layers, pr.num_heads,
                    pr.dropout, pr.learning_rate]

        for comp in (preset, levels):
            comp.input(on_preset, inputs=[scan_state, preset, minutes, device, levels, seed],
                       outputs=[tier_card, codebook, hidden, layers, heads, dropout, lr], api_visibility="private")
        for comp in (minutes, device, codebook, hidden, layers, heads, dropout, lr, seed):
            comp.input(on_settings, inputs=[scan_state, *settings_inputs], outputs=[tier_card], api_visibility="private",
                       trigger_mode="always_last")

        def on_page(scan_id, page, delta, filt):
            entry = app.get_scan(scan_id)
            page = dict(page or {})
            page["filter"] = filt or "all"
            page["page"] = max(0, int(page.get("page", 0)) + delta) if delta is not None else 0
            if entry is None:
                return page, [], ""
            rows, label = page_rows(entry, page)  # clamps page["page"] to the last page
            return page, rows, label

        prev_btn.click(lambda s, p, f: on_page(s, p, -1, f), inputs=[scan_state, page_state, report_filter],
                       outputs=[page_state, report_table, page_label], api_visibility="private")
        next_btn.click(lambda s, p, f: on_page(s, p, +1, f), inputs=[scan_state, page_state, report_filter],
                       outputs=[page_state, report_table, page_label], api_visibility="private")
        report_filter.input(lambda s, p, f: on_page(s, p, None, f), inputs=[scan_state, page_state, report_filter],
                            outputs=[page_state, report_table, page_label], api_visibility="private")

        def on_start(scan_id, *values):
            entry = app.get_scan(scan_id)
            if entry is None:
                return ("**Choose a dataset first** — drop a folder, type a path or use the demo.",
                        gr.skip(), gr.skip(), gr.skip(), gr.skip())
            options, _, err = _options_from_form(app, entry, values)
            if err:
                return f"**⚠ {err}**", gr.skip(), gr.skip(), gr.skip(), gr.skip()
            res = app.start(entry, options)
            if not res["ok"]:
                return f"**⚠ {res['message']}**", gr.skip(), gr.skip(), gr.skip(), gr.skip()
            return (f"✓ {res['message']} Follow it on the *Training* tab.", gr.Tabs(selected="train"),
                    _run_choices_update(app, res["run_id"]), {}, gr.Button(interactive=True))

        start_btn.click(on_start, inputs=[scan_state, *settings_inputs],
                        outputs=[start_msg, tabs, run_picker, view_state, stop_btn], api_name="start_ui",
                        api_visibility="undocumented", concurrency_limit=None)

        def on_stop():
            return f"{app.worker.stop()['message']}"

        stop_btn.click(on_stop, outputs=[stop_msg], api_visibility="private", concurrency_limit=None)
        stop_btn_ds.click(on_stop, outputs=[start_msg], api_visibility="private", concurrency_limit=None)

        def on_retrain(run_id, r_preset_v, r_minutes_v, h, n, nh, d, lr_v):
            if app.worker.is_running():
                return "**⚠ A training run is going; wait for it or stop it first.**", gr.skip()
            if h and nh and int(h) % int(nh):
                return f"**⚠ Width {h} must be a multiple of the number of heads ({nh}).**", gr.skip()
            overrides = {"hidden_size": int(h), "num_layers": int(n), "num_heads": int(nh), "dropout": float(d),
                         "learning_rate": float(lr_v)}
            res = app.retrain(run_id, app.options(r_preset_v, r_minutes_v, prior_overrides=overrides))
            if not res["ok"]:
                return f"**⚠ {res['message']}**", gr.skip()
            return f"✓ {res['message']}", {}

        def on_resume(run_id):
            res = app.resume(run_id)
            return (f"✓ {res['message']}", {}) if res["ok"] else (f"**⚠ {res['message']}**", gr.skip())

        resume_btn.click(on_resume, inputs=[run_picker], outputs=[resume_msg, view_state], api_visibility="private",
                         concurrency_limit=None)

        retrain_btn.click(on_retrain, inputs=[run_picker, r_preset, r_minutes, r_hidden, r_layers, r_heads, r_dropout, r_lr],
                          outputs=[retrain_msg, view_state], api_visibility="private", concurrency_limit=None)

        # --- the run view: training plots, codes, samples (drawn incrementally) ---------------------

        view_outputs = [status_card, vq_plot, prior_plot, health_plot, notes, file_pick, file_audio, code_plot, hist_plot,
                        g_prompt, samples_table, view_state, run_picker, start_btn, stop_btn, stop_btn_ds, runs_table,
                        r_hidden, r_layers, r_heads, r_dropout, r_lr]

        def refresh(run_id, vs, force: bool = False):
            return _refresh(app, run_id, vs, force)

        timer.tick(lambda r, v: refresh(r, v), inputs=[run_picker, view_state], outputs=view_outputs,
                   api_visibility="private", show_progress="hidden", concurrency_limit=None, queue=True)
        run_picker.input(lambda r, v: refresh(r, {}, True), inputs=[run_picker, view_state], outputs=view_outputs,
                         api_visibility="private")

        def on_load():
            entry = app.latest_scan()
            active = app.worker.active_run_dir() or app.worker.last_run_dir()
            runs = app.runs()
            run_id = active.name if active is not None else (runs[0]["id"] if runs else None)
            ds = scan_view(entry, f"Last dataset: **{esc(entry.label)}**") if entry else [gr.skip()] * len(dataset_outputs)
            return [*ds, *refresh(run_id, {}, True)]

        demo.load(on_load, outputs=[*dataset_outputs, *view_outputs], api_visibility="private", show_progress="hidden")

        def on_file(run_id, name, vs=None):
            run_dir = app.run_dir(run_id)
            if run_dir is None or not name:
                return gr.skip(), gr.skip(), gr.skip()
            codes = app.codes(run_dir)
            sps, k = app.code_rate(run_dir)
            vs = dict(vs or {}, file=name)  # kept when the panel redraws after a job
            return (figures.code_sequence_figure(codes.get(name), k, sps, title=name), app.file_audio(run_dir, name), vs)

        file_pick.input(on_file, inputs=[run_picker, file_pick, view_state], outputs=[code_plot, file_audio, view_state],
                        api_name="show_codes", api_visibility="undocumented")

        def on_generate(run_id, seconds_v, temp, topk, topp, seed_v, nvar, fmt, prompt, clips, follow):
            try:
                samples = app.generate(run_id, seconds_v, temp, topk, topp, seed_v, nvar, fmt, prompt or None, clips,
                                       follow)
            except (ValueError, RuntimeError) as exc:
                return [f"**⚠ {exc}**"] + [gr.skip()] * (3 * MAX_VARIATIONS + 3)
            run_dir = app.run_dir(run_id)
            sps, k = app.code_rate(run_dir)
            audios, groups, plots = [], [], []
            for i in range(MAX_VARIATIONS):
                if i < len(samples):
                    s = samples[i]
                    audios.append(gr.Audio(value=s["path"], label=f"Variation {i + 1} · seed {s['seed']} · {s['seconds']:.1f} s"))
                    groups.append(gr.Column(visible=True))
                    plots.append(figures.code_sequence_figure(s["codes"], k, sps, title=f"Codes of variation {i + 1}"))
                else:
                    audios.append(None)
                    groups.append(gr.Column(visible=False))
                    plots.append(figures.code_sequence_figure(None))
            took = sum(s["elapsed_s"] for s in samples)
            msg = f"✓ {len(samples)} sample{'s' if len(samples) != 1 else ''} saved in the run's `samples/` ({took:.1f} s)."
            train_counts, gen_counts = app.histograms(run_dir)
            return [msg, *audios, *groups, *plots, [s["path"] for s in samples], samples_rows(app.samples(run_dir)),
                    figures.histogram_figure(train_counts, gen_counts)]

        gen_btn.click(on_generate, inputs=[run_picker, g_seconds, g_temp, g_topk, g_topp, g_seed, g_var, g_fmt, g_prompt,
                                           g_clips, g_follow],
                      outputs=[gen_msg, *slot_audio, *[g for g, _ in slot_plot], *[p for _, p in slot_plot], downloads,
                               samples_table, hist_plot], api_name="generate_ui", api_visibility="undocumented")

        def on_sample_select(run_id, evt: gr.SelectData):
            run_dir = app.run_dir(run_id)
            if run_dir is None:
                return gr.skip(), gr.skip()
            row = evt.row_value if evt is not None else None
            sid = row[1] if row and len(row) > 1 else None
            for s in app.samples(run_dir):
                if s.get("id") == sid:
                    sps, k = app.code_rate(run_dir)
                    codes = app.sample_codes(run_dir).get(sid)
                    return s["path"], figures.code_sequence_figure(codes, k, sps, title=f"Codes of {sid}")
            return gr.skip(), gr.skip()

        samples_table.select(on_sample_select, inputs=[run_picker], outputs=[saved_audio, saved_plot],
                             api_visibility="private")

        def on_run_select(vs, evt: gr.SelectData):
            row = evt.row_value if evt is not None else None
            run_id = row[0] if row else None
            if not run_id or app.run_dir(run_id) is None:
                return [gr.skip()] * (len(view_outputs) + 1)
            out = _refresh(app, run_id, {}, True)
            out[view_outputs.index(run_picker)] = _run_choices_update(app, run_id)
            return [*out, gr.Tabs(selected="train")]

        runs_table.select(on_run_select, inputs=[view_state], outputs=[*view_outputs, tabs], api_visibility="private")
        refresh_runs_btn.click(lambda: runs_rows(app.runs()), outputs=[runs_table], api_visibility="private")

        # --- the JSON API (gradio_client) -------------------------------------------------------------
        register_api(app)

    demo.queue(default_concurrency_limit=1)
    return demo


# --- the view refresher (poll + reattach) --------------------------------------------------------------

_LOSS_KINDS = {("vqvae", "step"), ("vqvae", "eval"), ("prior", "step"), ("prior", "eval")}


def _refresh(app: DistillApp, run_id: str | None, vs: dict | None, force: bool) -> list:
    """Everything the run view shows, as updates; unchanged parts are gr.skip(). O(new events) per call."""
    vs = dict(vs or {})
    snap = app.worker.status()
    gen = snap.get("generation", 0)
    job_run = snap.get("run_id")
    # A new job (started from any tab or the API) takes over this page's view.
    if job_run and vs.get("gen") is not None and gen != vs.get("gen"):
        run_id, force = job_run, True
    if not run_id and job_run:
        run_id, force = job_run, True
    picker = gr.skip()
    if force or gen != vs.get("gen") or snap.get("state") != vs.get("state"):
        picker = _run_choices_update(app, run_id)
    if force or vs.get("run") != run_id:
        vs = {"run": run_id}
        force = True
    vs["gen"] = gen
    run_dir = app.run_dir(run_id)
    skip = gr.skip()
    out = {k: skip for k in ("status", "vq", "prior", "health", "notes", "file_pick", "file_audio", "code", "hist",
                             "prompt", "samples", "picker", "start", "stop", "stop_ds", "runs")}
    out["picker"] = picker
    running = bool(snap.get("running"))
    if force or vs.get("running") != running:
        out["start"] = gr.Button(interactive=not running)
        out["stop"] = gr.Button(interactive=running)
        out["stop_ds"] = gr.Button(interactive=running)
    ended_now = vs.get("state") in ("running", "stopping") and snap.get("state") not in ("running", "stopping")
    if force or ended_now or (snap.get("state") != vs.get("state")):
        out["runs"] = runs_rows(app.runs())
    vs["running"] = running
    vs["state"] = snap.get("state")

    if run_dir is None:
        if force:
            out["status"] = status_card_html(snap, run_id)
            out.update(vq=figures.vqvae_loss_figure([]), prior=figures.prior_loss_figure([]),
                       health=figures.health_figure([]), notes=notes_html([], []))
        return _ordered(out, vs)

    manifest = None
    is_job = job_run == run_id and snap.get("state") != "idle"
    if not is_job:
        try:
            manifest = app.manifest(run_dir)
        except Exception:
            manifest = None
    card = status_card_html(snap if is_job else None, run_id, manifest)
    if card != vs.get("card"):
        out["status"] = card
        vs["card"] = card

    # New events since the last call: count loss points, collect health and warnings.
    events = app.run_events(run_dir)
    seen = int(vs.get("n", 0)) if not force else 0
    if seen > len(events):  # the file was rewritten (retrain appends; this is a safety net)
        seen, force = 0, True
    new = events[seen:]
    n_vq, n_pr = int(vs.get("n_vq", 0)), int(vs.get("n_pr", 0))
    levels = vs.get("levels") or []
    warnings = list(vs.get("warnings") or [])
    codes_ready = False
    for ev in new:
        key = (ev.get("stage"), ev.get("kind"))
        if key in _LOSS_KINDS:
            if key[0] == "vqvae":
                n_vq += 1
            else:
                n_pr += 1
        if ev.get("kind") == "eval" or (key == ("codes", "stage_end")):
            lv = levels_from_event(ev)
            if lv:
                levels = lv
        if key == ("codes", "stage_end") or ev.get("kind") == "run_end":
            codes_ready = True
        if ev.get("kind") == "warning" and ev.get("message") and ev["message"] not in warnings:
            warnings.append(str(ev["message"]))
    vs["n"] = len(events)
    now = time.time()
    due = force or not running or now - float(vs.get("drawn", 0)) >= REDRAW_EVERY_S
    if n_vq != vs.get("drawn_vq") and due:
        out["vq"] = figures.vqvae_loss_figure(events)
        vs["drawn_vq"], vs["drawn"] = n_vq, now
    if n_pr != vs.get("drawn_pr") and due:
        out["prior"] = figures.prior_loss_figure(events)
        vs["drawn_pr"], vs["drawn"] = n_pr, now
    vs["n_vq"], vs["n_pr"] = n_vq, n_pr
    sig = json.dumps(levels, sort_keys=True, default=str)
    if force or sig != vs.get("levels_sig"):
        out["health"] = figures.health_figure(levels)
        vs["levels_sig"], vs["levels"] = sig, levels
    if force or warnings != vs.get("warnings") or sig != vs.get("notes_sig"):
        out["notes"] = notes_html(warnings, levels)
        vs["warnings"], vs["notes_sig"] = warnings, sig
    if force and out["vq"] is skip:
        out["vq"] = figures.vqvae_loss_figure(events)
        vs["drawn_vq"] = n_vq
    if force and out["prior"] is skip:
        out["prior"] = figures.prior_loss_figure(events)
        vs["drawn_pr"] = n_pr

    if force or codes_ready or ended_now:
        out.update(_codes_panel(app, run_dir, vs))
        try:
            prior_cfg = (manifest or app.manifest(run_dir) or {}).get("prior_config") if force else None
        except Exception:  # an unreadable manifest: the form keeps its values
            prior_cfg = None
        if isinstance(prior_cfg, dict):  # the retrain form starts from the settings this run's prior was trained with
            out["retrain"] = [prior_cfg.get(k, gr.skip()) for k in
                              ("hidden_size", "num_layers", "num_heads", "dropout", "learning_rate")]
    return _ordered(out, vs)


def _ordered(out: dict, vs: dict) -> list:
    return [out["status"], out["vq"], out["prior"], out["health"], out["notes"], out["file_pick"], out["file_audio"],
            out["code"], out["hist"], out["prompt"], out["samples"], vs, out["picker"], out["start"], out["stop"],
            out["stop_ds"], out["runs"], *out.get("retrain", [gr.skip()] * 5)]


def _codes_panel(app: DistillApp, run_dir: Path, vs: dict) -> dict:
    try:
        codes = app.codes(run_dir)
    except Exception:
        codes = {}
    names = list(codes)
    samples = app.samples(run_dir) if (run_dir / "samples").is_dir() else []
    if not names:
        return {"file_pick": gr.Dropdown(choices=[], value=None), "file_audio": None,
                "code": figures.code_sequence_figure(None), "hist": figures.histogram_figure(None),
                "prompt": gr.Dropdown(choices=[("(none — start from scratch)", "")], value=""),
                "samples": samples_rows(samples)}
    sps, k = app.code_rate(run_dir)
    first = vs.get("file") if vs.get("file") in codes else names[0]
    train_counts, gen_counts = app.histograms(run_dir)
    return {
        "file_pick": gr.Dropdown(choices=names, value=first),
        "file_audio": app.file_audio(run_dir, first),
        "code": figures.code_sequence_figure(codes[first], k, sps, title=first),
        "hist": figures.histogram_figure(train_counts, gen_counts),
        "prompt": gr.Dropdown(choices=[("(none — start from scratch)", "")] + [(n, n) for n in names], value=""),
        "samples": samples_rows(samples),
    }


def _run_choices_update(app: DistillApp, run_id: str | None):
    choices = []
    for r in app.runs():
        bits = [r["id"], r.get("status", "")]
        if r.get("files_used"):
            bits.append(f"{r['files_used']} files")
        choices.append((" · ".join(b for b in bits if b), r["id"]))
    ids = {c[1] for c in choices}
    return gr.Dropdown(choices=choices, value=run_id if run_id in ids else None)


def _progress_cb(progress):
    def cb(done: int, total: int) -> None:
        try:
            progress((done, max(total, 1)), desc="Reading audio files")
        except Exception:
            pass

    return cb


_FORM_KEYS = ("preset", "minutes", "device", "levels", "codebook", "seed", "hidden", "layers", "heads", "dropout", "lr")


def _options_from_form(app: DistillApp, entry: ScanEntry, values) -> tuple[Any, list[str], str | None]:
    """The settings form -> TrainOptions with only the fields the user changed as overrides."""
    v = dict(zip(_FORM_KEYS, values))
    try:
        base = app.options(v["preset"], v["minutes"], v["device"], v["seed"], v["levels"])
        plan = app.plan(entry, base)
    except Exception as exc:
        return None, [], str(exc)
    vq, pr = plan.vqvae_config, plan.prior_config
    vq_o, pr_o, edited = {}, {}, []
    checks = [("codebook", vq, "codebook_size", int, vq_o, "codes per level"),
              ("hidden", pr, "hidden_size", int, pr_o, "prior width"),
              ("layers", pr, "num_layers", int, pr_o, "prior layers"),
              ("heads", pr, "num_heads", int, pr_o, "heads"),
              ("dropout", pr, "dropout", float, pr_o, "dropout"),
              ("lr", pr, "learning_rate", float, pr_o, "learning rate")]
    for key, cfg, attr, cast, target, words in checks:
        value = v.get(key)
        if value is None or value == "":
            continue
        value = cast(value)
        if abs(float(value) - float(getattr(cfg, attr))) > 1e-12:
            target[attr] = value
            edited.append(words)
    hid = pr_o.get("hidden_size", pr.hidden_size)
    nh = pr_o.get("num_heads", pr.num_heads)
    if hid % nh:
        return None, edited, f"The prior width ({hid}) must be a multiple of the number of heads ({nh})."
    options = app.options(v["preset"], v["minutes"], v["device"], v["seed"], v["levels"], vq_o, pr_o)
    return options, edited, None
