"""Tab 1, Dataset: drop, type or pick a folder, read its tier card and file report, adjust the settings
and start training."""
from __future__ import annotations

import json
from dataclasses import dataclass

import gradio as gr

from distill.app.page.bind import bind
from distill.app.page.forms import DEVICE_CHOICES, PRESET_CHOICES, options_from_form, progress_cb
from distill.app.page.help import HELP
from distill.app.page.run_view_draw import RunViewComponents, run_choices
from distill.app.page.training_tab import on_stop
from distill.app.service import DistillApp, ScanEntry
from distill.app.uploads import UploadError
from distill.app.views import DROPZONE_TEMPLATE, SETTINGS_ERROR_TITLE, esc, page_rows, summary_md, tier_card_html


@dataclass
class DatasetTab:
    scan_state: gr.State  # the scan id shown on this page
    page_state: gr.State  # the file report's page and filter
    dropzone: gr.HTML
    path_box: gr.Textbox
    scan_btn: gr.Button
    demo_btn: gr.Button
    ingest_msg: gr.Markdown
    tier_card: gr.HTML
    preset: gr.Radio
    device: gr.Dropdown
    minutes: gr.Number
    levels: gr.Slider
    codebook: gr.Dropdown
    seed: gr.Number
    hidden: gr.Dropdown
    layers: gr.Slider
    heads: gr.Dropdown
    dropout: gr.Slider
    lr: gr.Number
    start_btn: gr.Button
    stop_btn: gr.Button
    start_msg: gr.Markdown
    report_box: gr.Column
    report_summary: gr.Markdown
    report_filter: gr.Radio
    prev_btn: gr.Button
    page_label: gr.Markdown
    next_btn: gr.Button
    report_table: gr.Dataframe

    @property
    def settings(self) -> list:
        """The settings form, in forms.FORM_KEYS order."""
        return [self.preset, self.minutes, self.device, self.levels, self.codebook, self.seed, self.hidden,
                self.layers, self.heads, self.dropout, self.lr]

    @property
    def scan_outputs(self) -> list:
        """What a scan updates (see `scan_view`): every message of the dataset panel, so none outlives the
        dataset it was about."""
        return [self.scan_state, self.page_state, self.tier_card, self.ingest_msg, self.report_summary,
                self.report_table, self.page_label, self.preset, self.levels, self.codebook, self.hidden, self.layers,
                self.heads, self.dropout, self.lr, self.report_box, self.minutes, self.start_msg, self.report_filter,
                self.dropzone]


def build_dataset_tab(app: DistillApp, js: str) -> DatasetTab:
    with gr.Tab("1 · Dataset", id="dataset", elem_id="tab-dataset"):  # states inside: a Tabs holds only tabs
        scan_state = gr.State(None)
        page_state = gr.State({"page": 0, "filter": "all"})
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
                        preset = gr.Radio(PRESET_CHOICES, value="auto", label="Preset", scale=3, info=HELP["preset"])
                        device = gr.Dropdown(DEVICE_CHOICES, value="auto", label="Device", scale=2, info=HELP["device"])
                        minutes = gr.Number(None, label="Time budget, minutes (empty = preset's)", maximum=240, step=0.5,
                                            scale=2, elem_id="d-minutes", info=HELP["minutes"])
                    with gr.Row():
                        levels = gr.Slider(2, 4, value=3, step=1, label="Codebook levels (VQ-VAE)", info=HELP["levels"])
                        codebook = gr.Dropdown([16, 32, 64, 128, 256, 512], value=64, label="Codes per level",
                                               info=HELP["codebook"])
                        seed = gr.Number(0, label="Seed", precision=0, minimum=0, info=HELP["seed"])
                    with gr.Row():
                        hidden = gr.Dropdown([32, 64, 128, 256, 384, 512], value=128, label="Prior width",
                                             info=HELP["hidden"])
                        layers = gr.Slider(1, 8, value=2, step=1, label="Prior layers", info=HELP["layers"])
                        heads = gr.Dropdown([1, 2, 4, 8], value=4, label="Attention heads", info=HELP["heads"])
                        dropout = gr.Slider(0.0, 0.6, value=0.3, step=0.05, label="Dropout", info=HELP["dropout"])
                        lr = gr.Number(3e-4, label="Learning rate", minimum=1e-6, maximum=1e-1, step=1e-4, info=HELP["lr"])
                with gr.Row():
                    start_btn = gr.Button("Start training", variant="primary", elem_id="d-start-btn", scale=3)
                    stop_btn = gr.Button("Stop", variant="stop", elem_id="d-stop-btn-ds", scale=1, interactive=False)
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
    return DatasetTab(scan_state, page_state, dropzone, path_box, scan_btn, demo_btn, ingest_msg, tier_card, preset,
                      device, minutes, levels, codebook, seed, hidden, layers, heads, dropout, lr, start_btn, stop_btn,
                      start_msg, report_box, report_summary, report_filter, prev_btn, page_label, next_btn,
                      report_table)


def wire_dataset_tab(app: DistillApp, tab: DatasetTab, tabs: gr.Tabs, run_view: RunViewComponents):
    """Returns the start event, after which other tabs follow the run it shows."""
    scan_opts = {"outputs": tab.scan_outputs, "show_progress_on": [tab.tier_card]}
    tab.dropzone.files_ready(bind(on_files_ready, app, tab), inputs=[tab.dropzone],
                             outputs=tab.scan_outputs, api_visibility="private",
                             show_progress_on=[tab.tier_card])
    tab.scan_btn.click(bind(on_scan_path, app, tab), inputs=[tab.path_box], api_name="scan_ui",
                       api_visibility="undocumented", **scan_opts)
    tab.path_box.submit(bind(on_scan_path, app, tab), inputs=[tab.path_box], api_visibility="private", **scan_opts)
    tab.demo_btn.click(bind(on_demo, app, tab), api_name="use_demo", **scan_opts)

    for comp in (tab.preset, tab.levels):
        comp.input(bind(on_preset, app, tab), inputs=[tab.scan_state, tab.preset, tab.minutes, tab.device, tab.levels,
                                                      tab.seed],
                   outputs=[tab.tier_card, tab.codebook, tab.hidden, tab.layers, tab.heads, tab.dropout, tab.lr],
                   api_visibility="private")
    for comp in (tab.minutes, tab.device, tab.codebook, tab.hidden, tab.layers, tab.heads, tab.dropout, tab.lr, tab.seed):
        comp.input(bind(on_settings, app, tab), inputs=[tab.scan_state, *tab.settings], outputs=[tab.tier_card],
                   api_visibility="private", trigger_mode="always_last")

    paging = {"inputs": [tab.scan_state, tab.page_state, tab.report_filter],
              "outputs": [tab.page_state, tab.report_table, tab.page_label], "api_visibility": "private"}
    tab.prev_btn.click(bind(on_page, app, tab, -1), **paging)
    tab.next_btn.click(bind(on_page, app, tab, +1), **paging)
    tab.report_filter.input(bind(on_page, app, tab, None), **paging)

    started = tab.start_btn.click(bind(on_start, app, tab, tabs, run_view), inputs=[tab.scan_state, *tab.settings],
                        outputs=[tab.start_msg, tabs, run_view.picker, run_view.state, run_view.stop],
                        api_name="start_ui", api_visibility="undocumented", concurrency_limit=None)
    tab.stop_btn.click(bind(on_stop, app, tab.start_msg), outputs=[tab.start_msg], api_visibility="private",
                       concurrency_limit=None)
    return started


# --- handlers ------------------------------------------------------------------------------------------


def scan_view(app: DistillApp, tab: DatasetTab, entry: ScanEntry, message: str, dropped: bool = False) -> dict:
    """Everything the dataset panel shows for a fresh scan: a new dataset starts from its tier's settings,
    so the form (time budget included) is reset to the plan's, and the previous dataset's messages (the
    start message, the drop zone's verdict, the report's filter) go with it. `dropped`: the scan came
    from the drop zone, whose status line then gives the verdict."""
    from distill.scan import DatasetError

    options = app.options()
    out = {tab.tier_card: tier_card_html(None)}
    used = len(entry.report.used)
    try:
        plan = app.plan(entry, options)
        vq, pr = plan.vqvae_config, plan.prior_config
        out.update({tab.tier_card: tier_card_html(plan.tier_card), tab.preset: options.preset,
                    tab.levels: vq.num_quantizers, tab.codebook: vq.codebook_size, tab.hidden: pr.hidden_size,
                    tab.layers: pr.num_layers, tab.heads: pr.num_heads, tab.dropout: pr.dropout,
                    tab.lr: pr.learning_rate})
    except DatasetError as exc:
        out[tab.tier_card] = tier_card_html(None, error=str(exc))
    if not used:  # the card says why; the line on the left must not say "✓"
        message = f"**⚠ Nothing to train on in `{esc(entry.label)}`** — see why on the right."
    verdict = ""
    if dropped:
        verdict = (f"Ready: {used} usable file{'s' if used != 1 else ''}. See the tier card." if used
                   else "Nothing usable arrived: see the card on the right.")
    page = {"page": 0, "filter": "all"}
    rows, label = page_rows(entry, page)
    out.update({tab.scan_state: entry.id, tab.page_state: page, tab.ingest_msg: message,
                tab.report_summary: summary_md(entry), tab.report_table: rows, tab.page_label: label,
                tab.report_box: gr.Column(visible=bool(entry.report.entries)), tab.minutes: None,
                tab.start_msg: "", tab.report_filter: "all",
                tab.dropzone: json.dumps({"result": verdict, "ok": bool(used)})})
    return out


def on_files_ready(app: DistillApp, tab: DatasetTab, payload, progress=gr.Progress()):
    from distill.scan import DatasetError

    try:
        entry = app.ingest_upload(payload, progress=progress_cb(progress))
    except (UploadError, DatasetError) as exc:
        return {tab.ingest_msg: f"**⚠ {exc}**", tab.dropzone: json.dumps({"result": str(exc), "ok": False})}
    return scan_view(app, tab, entry, f"✓ {entry.note}", dropped=True)


def on_scan_path(app: DistillApp, tab: DatasetTab, path, progress=gr.Progress()):
    from distill.scan import DatasetError

    try:
        entry = app.scan(path, progress=progress_cb(progress))
    except DatasetError as exc:
        return {tab.ingest_msg: f"**⚠ {exc}**"}
    return scan_view(app, tab, entry, f"✓ Scanned `{entry.source}` in place (nothing copied).")


def on_demo(app: DistillApp, tab: DatasetTab, progress=gr.Progress()):
    from distill.scan import DatasetError

    try:
        entry = app.demo_dataset(progress=progress_cb(progress))
    except DatasetError as exc:
        return {tab.ingest_msg: f"**⚠ {exc}**"}
    return scan_view(app, tab, entry, f"✓ {entry.note}")


def on_settings(app: DistillApp, tab: DatasetTab, scan_id, *values):
    """A setting changed: the tier card shows the plan with it (and says which settings were edited)."""
    entry = app.get_scan(scan_id)
    if entry is None:
        return {}
    options, edited, err = options_from_form(app, entry, values)
    if err:
        return {tab.tier_card: tier_card_html(None, error=err, title=SETTINGS_ERROR_TITLE)}
    try:
        plan = app.plan(entry, options)
    except Exception as exc:  # a bad combination: say so on the card
        return {tab.tier_card: tier_card_html(None, error=str(exc), title=SETTINGS_ERROR_TITLE)}
    return {tab.tier_card: tier_card_html(plan.tier_card, edited=edited)}


def on_preset(app: DistillApp, tab: DatasetTab, scan_id, preset_v, minutes_v, device_v, levels_v, seed_v):
    """Preset or levels changed: the form goes back to that preset's settings."""
    entry = app.get_scan(scan_id)
    if entry is None:
        return {}
    options = app.options(preset_v, minutes_v, device_v, seed_v, levels_v)
    try:
        plan = app.plan(entry, options)
    except Exception as exc:
        return {tab.tier_card: tier_card_html(None, error=str(exc), title=SETTINGS_ERROR_TITLE)}
    vq, pr = plan.vqvae_config, plan.prior_config
    return {tab.tier_card: tier_card_html(plan.tier_card), tab.codebook: vq.codebook_size, tab.hidden: pr.hidden_size,
            tab.layers: pr.num_layers, tab.heads: pr.num_heads, tab.dropout: pr.dropout, tab.lr: pr.learning_rate}


def on_page(app: DistillApp, tab: DatasetTab, delta: int | None, scan_id, page, filt):
    """The file report's previous/next page (delta -1/+1) or a new filter (delta None: back to page 1)."""
    entry = app.get_scan(scan_id)
    page = dict(page or {})
    page["filter"] = filt or "all"
    page["page"] = max(0, int(page.get("page", 0)) + delta) if delta is not None else 0
    if entry is None:
        return {tab.page_state: page, tab.report_table: [], tab.page_label: ""}
    rows, label = page_rows(entry, page)  # clamps page["page"] to the last page
    return {tab.page_state: page, tab.report_table: rows, tab.page_label: label}


def on_start(app: DistillApp, tab: DatasetTab, tabs: gr.Tabs, run_view: RunViewComponents, scan_id, *values):
    entry = app.get_scan(scan_id)
    if entry is None and scan_id:  # the page shows a dataset the app no longer holds
        return {tab.start_msg: "**⚠ The app no longer holds this dataset's scan** (it was restarted, or other "
                               "tabs scanned more folders since): scan the folder again, then start."}
    if entry is None:
        return {tab.start_msg: "**Choose a dataset first** — drop a folder, type a path or use the demo."}
    options, _, err = options_from_form(app, entry, values)
    if err:
        return {tab.start_msg: f"**⚠ {err}**"}
    res = app.start(entry, options)
    if not res["ok"]:
        return {tab.start_msg: f"**⚠ {res['message']}**"}
    return {tab.start_msg: f"✓ {res['message']} Follow it on the *Training* tab.", tabs: gr.Tabs(selected="train"),
            run_view.picker: run_choices(app, res["run_id"]), run_view.state: None,  # the next poll redraws all
            run_view.stop: gr.Button(interactive=True)}
