"""Tab 5, Variations: vary one sound (keep its shape with new detail, or continue it from a point),
each result beside its input with both code plots and a "Vary this" action, and sample packs of
new one-shots shown as a grid of small players. Every action calls DistillApp (service.py)."""
from __future__ import annotations

import html
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import gradio as gr

from distill.app import figures
from distill.app.page.bind import bind
from distill.app.page.help import HELP
from distill.app.service import DistillApp
from distill.config import SAMPLING_DEFAULTS

MAX_SLOTS = 4  # variations shown at once (the library makes up to distill.variations.MAX_COUNT)
SOURCES = [("A training file", "file"), ("A saved sample", "sample"), ("A file of your own", "upload")]
MODES = [("Keep the shape, new detail", "shape"), ("Continue from here", "continue")]

# A pack's "Vary this" buttons live in plain HTML (a grid of small players): a click writes the
# sample's id into a hidden textbox and presses a hidden button, whose handler does the rest.
GRID_JS = """
element.addEventListener("click", (ev) => {
  const btn = ev.target.closest("[data-vary]");
  if (!btn) return;
  const box = document.querySelector("#d-v-pick textarea, #d-v-pick input");
  const setter = Object.getOwnPropertyDescriptor(Object.getPrototypeOf(box), "value").set;
  setter.call(box, btn.dataset.vary);
  box.dispatchEvent(new Event("input", {bubbles: true}));
  setTimeout(() => document.querySelector("#d-v-pick-btn").click(), 50);
});
"""
CSS = """
.d-hidden { display: none !important; }
.d-pack-grid { display: grid; grid-template-columns: repeat(auto-fill, minmax(230px, 1fr)); gap: 10px; }
.d-pack-cell { border: 1px solid var(--border-color-primary); border-radius: 8px; padding: 8px; }
.d-pack-cell .d-pack-head { display: flex; justify-content: space-between; font-size: 13px; margin-bottom: 4px; }
.d-pack-cell audio { width: 100%; height: 32px; }
.d-pack-cell button { margin-top: 4px; font-size: 12px; padding: 2px 8px; border-radius: 6px;
  border: 1px solid var(--border-color-primary); background: var(--background-fill-secondary); cursor: pointer; }
"""


@dataclass
class ResultSlot:
    group: gr.Column
    audio: gr.Audio
    plot: gr.Plot
    vary_btn: gr.Button


@dataclass
class VariationsTab:
    tab: gr.Tab
    source: gr.Radio
    file_pick: gr.Dropdown
    sample_pick: gr.Dropdown
    upload: gr.File
    input_audio: gr.Audio
    input_plot: gr.Plot
    input_msg: gr.Markdown
    mode: gr.Radio
    keep_levels: gr.Slider
    continue_box: gr.Row  # the continue mode's settings, shown in that mode
    at_seconds: gr.Number
    seconds: gr.Number
    count: gr.Slider
    seed: gr.Number
    follow: gr.Slider
    vary_btn: gr.Button
    msg: gr.Markdown
    slots: list[ResultSlot]
    result_ids: gr.State
    downloads: gr.File
    pack_count: gr.Number
    pack_seed: gr.Number
    pack_btn: gr.Button
    pack_msg: gr.Markdown
    pack_grid: gr.HTML
    pack_zip: gr.File
    pick_box: gr.Textbox
    pick_btn: gr.Button

    @property
    def source_inputs(self) -> list:
        return [self.source, self.file_pick, self.sample_pick, self.upload]

    @property
    def input_outputs(self) -> list:
        """What showing an input updates."""
        return [self.source, self.file_pick, self.sample_pick, self.upload, self.input_audio, self.input_plot,
                self.input_msg]


def build_variations_tab() -> VariationsTab:
    with gr.Tab("5 · Variations", id="variations", elem_id="tab-variations") as tab:
        result_ids = gr.State([])
        with gr.Row():
            with gr.Column(scale=2, min_width=280):
                source = gr.Radio(SOURCES, value="file", label="Start from", elem_id="d-v-source",
                                  info=HELP["v_source"])
                file_pick = gr.Dropdown([], value=None, label="Training file", allow_custom_value=True,
                                        elem_id="d-v-file", info="One of the files this run learned from.")
                sample_pick = gr.Dropdown([], value=None, label="Saved sample", allow_custom_value=True,
                                          visible=False, elem_id="d-v-sample",
                                          info="A sound generated earlier from this run (newest first).")
                upload = gr.File(label="Any audio file (encoded by this run's codec)", type="filepath",
                                 file_count="single", visible=False, elem_id="d-v-upload")
                mode = gr.Radio(MODES, value="shape", label="Make", elem_id="d-v-mode", info=HELP["v_mode"])
                keep_levels = gr.Slider(1, 3, value=1, step=1, label="Coarse levels kept", elem_id="d-v-keep",
                                        info="Keep the shape: these levels stay the input's, the finer ones are new.")
                with gr.Row(visible=False) as continue_box:
                    at_seconds = gr.Number(1.0, label="Continue from (s)", minimum=0, step=0.1, elem_id="d-v-at",
                                           info=HELP["v_at"])
                    seconds = gr.Number(2.0, label="New material (s)", minimum=0.1, maximum=60, step=0.5,
                                        elem_id="d-v-seconds", info=HELP["v_seconds"])
                with gr.Row():
                    count = gr.Slider(1, MAX_SLOTS, value=2, step=1, label="Variations", elem_id="d-v-count",
                                      info="Sampled together in one pass.")
                    seed = gr.Number(0, label="Seed", precision=0, minimum=0, elem_id="d-v-seed",
                                     info=HELP["v_seed"])
                follow = gr.Slider(0.0, 1.0, value=SAMPLING_DEFAULTS["retrieval"], step=0.05,
                                   label="Follow your material", elem_id="d-v-follow",
                                   info=HELP["follow"])
                vary_btn = gr.Button("Make variations", variant="primary", elem_id="d-v-btn")
                msg = gr.Markdown("", elem_id="d-v-msg")
            with gr.Column(scale=5):
                with gr.Column(variant="panel"):
                    input_msg = gr.Markdown("Choose the sound to vary.", elem_id="d-v-input-msg")
                    input_audio = gr.Audio(label="Input", type="filepath", interactive=False, buttons=["download"],
                                           elem_id="d-v-input-audio")
                    input_plot = gr.Plot(figures.code_sequence_figure(None), show_label=False, format="png",
                                         elem_id="d-v-input-plot")
                slots = []
                for i in range(MAX_SLOTS):
                    with gr.Column(visible=False, variant="panel", elem_classes=["d-slot"]) as group:
                        audio = gr.Audio(label=f"Variation {i + 1}", type="filepath", interactive=False,
                                         buttons=["download"], elem_id=f"d-v-audio-{i}")
                        plot = gr.Plot(figures.code_sequence_figure(None), show_label=False, format="png",
                                       elem_id=f"d-v-plot-{i}")
                        vary_this = gr.Button("Vary this", size="sm", elem_id=f"d-v-again-{i}")
                    slots.append(ResultSlot(group, audio, plot, vary_this))
                downloads = gr.File(label="Download", file_count="multiple", interactive=False, elem_id="d-v-downloads")
        gr.Markdown("### Sample pack: new one-shots")
        with gr.Row(equal_height=True):
            pack_count = gr.Number(8, label="How many", precision=0, minimum=1, maximum=32, elem_id="d-p-count",
                                   info="How many new one-shots to make (1 to 32).")
            pack_seed = gr.Number(0, label="Seed", precision=0, minimum=0, elem_id="d-p-seed",
                                  info=HELP["v_seed"])
            pack_btn = gr.Button("Make new one-shots", variant="primary", elem_id="d-p-btn")
        pack_msg = gr.Markdown("Each one ends where the model ends the sound, trimmed to its sound; repeats and "
                               "clips shorter than your shortest file are left out.", elem_id="d-p-msg")
        pack_grid = gr.HTML("", js_on_load=GRID_JS, elem_id="d-p-grid")
        pack_zip = gr.File(label="Download all (zip)", interactive=False, elem_id="d-p-zip")
        pick_box = gr.Textbox("", elem_id="d-v-pick", elem_classes=["d-hidden"], show_label=False, container=False)
        pick_btn = gr.Button("pick", elem_id="d-v-pick-btn", elem_classes=["d-hidden"])
    return VariationsTab(tab, source, file_pick, sample_pick, upload, input_audio, input_plot, input_msg, mode,
                         keep_levels, continue_box, at_seconds, seconds, count, seed, follow, vary_btn, msg, slots, result_ids,
                         downloads, pack_count, pack_seed, pack_btn, pack_msg, pack_grid, pack_zip, pick_box, pick_btn)


def wire_variations_tab(app: DistillApp, tab: VariationsTab, run_picker: gr.Dropdown, tabs: gr.Tabs,
                        vary_sources: list[tuple[gr.Button, gr.Audio]] = ()) -> None:
    """`vary_sources`: other tabs' (button, player) pairs whose sound becomes this tab's input."""
    private = {"api_visibility": "private"}
    refresh = [tab.file_pick, tab.sample_pick, tab.keep_levels]
    tab.tab.select(bind(on_refresh, app, tab), inputs=[run_picker, tab.file_pick, tab.sample_pick], outputs=refresh,
                   **private)
    run_picker.change(bind(on_refresh, app, tab), inputs=[run_picker, tab.file_pick, tab.sample_pick],
                      outputs=refresh, **private)
    # Everything that changes the input runs in one queue, in the order it was asked: an upload's
    # preview must not be overwritten by the source choice made just before it.
    one_at_a_time = {"concurrency_id": "d-v-input", "concurrency_limit": 1}
    show = {"inputs": [run_picker, *tab.source_inputs], "outputs": tab.input_outputs, **private, **one_at_a_time}
    tab.source.input(bind(on_show_input, app, tab), **show)
    tab.file_pick.input(bind(on_show_input, app, tab), **show)
    tab.sample_pick.input(bind(on_show_input, app, tab), **show)
    tab.upload.upload(bind(on_show_input, app, tab), **show)
    tab.mode.input(bind(on_mode, tab), inputs=[tab.mode], outputs=[tab.keep_levels, tab.continue_box], **private)
    settings = [tab.mode, tab.keep_levels, tab.at_seconds, tab.seconds, tab.count, tab.seed, tab.follow]
    slot_outputs = [x for s in tab.slots for x in (s.group, s.audio, s.plot)]
    tab.vary_btn.click(bind(on_vary, app, tab), inputs=[run_picker, *tab.source_inputs, *settings],
                       outputs=[tab.msg, *slot_outputs, tab.result_ids, tab.downloads, tab.sample_pick],
                       api_name="vary_ui", api_visibility="undocumented")
    for i, slot in enumerate(tab.slots):
        slot.vary_btn.click(bind(on_vary_result, app, tab, i), inputs=[run_picker, tab.result_ids],
                            outputs=tab.input_outputs, **private, **one_at_a_time)
    tab.pack_btn.click(bind(on_pack, app, tab), inputs=[run_picker, tab.pack_count, tab.pack_seed, tab.follow],
                       outputs=[tab.pack_msg, tab.pack_grid, tab.pack_zip, tab.sample_pick],
                       api_name="pack_ui", api_visibility="undocumented")
    tab.pick_btn.click(bind(on_pick_sample, app, tab), inputs=[run_picker, tab.pick_box], outputs=tab.input_outputs,
                       **private, **one_at_a_time)
    for button, player in vary_sources:
        button.click(bind(on_vary_player, app, tab, tabs), inputs=[run_picker, player], outputs=[tabs, *tab.input_outputs],
                     **private, **one_at_a_time)


# --- handlers --------------------------------------------------------------------------------------


def _sample_choices(app: DistillApp, run_dir: Path | None) -> list[tuple[str, str]]:
    if run_dir is None:
        return []
    out = []
    for s in app.samples(run_dir):
        st = s.get("settings") or {}
        kind = st.get("kind") or "generated"
        out.append((f"{s.get('id')} · {kind} · {s.get('seconds', '')} s", s.get("id")))
    return out


def on_refresh(app: DistillApp, tab: VariationsTab, run_id, file_name, sample_id):
    """The run's training files and saved samples to choose from, and how many levels it has."""
    run_dir = app.run_dir(run_id)
    files = list(app.codes(run_dir)) if run_dir is not None else []
    q = int(((app.manifest(run_dir) or {}).get("vqvae_config") or {}).get("num_quantizers", 3)) if run_dir else 3
    return {
        tab.file_pick: gr.Dropdown(choices=files, value=file_name if file_name in files else (files[0] if files else None)),
        tab.sample_pick: gr.Dropdown(choices=_sample_choices(app, run_dir), value=sample_id),
        tab.keep_levels: gr.Slider(maximum=max(2, q - 1), info=f"Of this run's {q} levels: these stay the input's, "
                                                               "the finer ones are new."),
    }


def on_mode(tab: VariationsTab, mode):
    """Each mode shows only its own settings."""
    return {tab.keep_levels: gr.Slider(visible=mode == "shape"), tab.continue_box: gr.Row(visible=mode == "continue")}


def _input_ref(source, file_name, sample_id, upload) -> tuple[str, str]:
    if source == "sample":
        return "sample", sample_id or ""
    if source == "upload":
        return "upload", upload or ""
    return "file", file_name or ""


def _show(app: DistillApp, tab: VariationsTab, run_id, source, file_name, sample_id, upload) -> dict:
    visible = {tab.file_pick: gr.Dropdown(visible=source == "file"),
               tab.sample_pick: gr.Dropdown(visible=source == "sample"),
               tab.upload: gr.File(visible=source == "upload")}
    kind, ref = _input_ref(source, file_name, sample_id, upload)
    if not ref:
        return {**visible, tab.input_msg: "Choose the sound to vary.", tab.input_audio: None,
                tab.input_plot: figures.code_sequence_figure(None)}
    try:
        run_dir, src = app.variation_source(run_id, kind, ref)
    except ValueError as exc:
        return {**visible, tab.input_msg: f"**⚠ {exc}**", tab.input_audio: None,
                tab.input_plot: figures.code_sequence_figure(None)}
    sps, k = app.code_rate(run_dir)
    seconds = len(src.codes) / sps if sps else 0
    text = f"Input: **{html.escape(src.name)}** · {seconds:.2f} s · {len(src.codes)} code steps"
    return {**visible, tab.input_msg: text + (f"  \n{src.note}" if src.note else ""),
            tab.input_audio: app.input_audio(run_dir, src),
            tab.input_plot: figures.code_sequence_figure(src.codes, k, sps, title="Codes of the input")}


def on_show_input(app: DistillApp, tab: VariationsTab, run_id, source, file_name, sample_id, upload):
    return _show(app, tab, run_id, source, file_name, sample_id, upload)


def on_vary(app: DistillApp, tab: VariationsTab, run_id, source, file_name, sample_id, upload, mode, keep_levels,
            at_seconds, seconds, count, seed, follow):
    kind, ref = _input_ref(source, file_name, sample_id, upload)
    try:
        count = max(1, min(MAX_SLOTS, int(count or 1)))
        out = app.vary(run_id, kind, ref, None, mode, keep_levels, at_seconds, seconds, count, seed, follow)
    except (ValueError, RuntimeError) as exc:
        return {tab.msg: f"**⚠ {exc}**"}
    run_dir = app.run_dir(run_id)
    sps, k = app.code_rate(run_dir)
    results = out["results"]
    updates = {}
    for i, slot in enumerate(tab.slots):
        if i < len(results):
            s = results[i]
            updates[slot.group] = gr.Column(visible=True)
            updates[slot.audio] = gr.Audio(value=s["path"], label=f"Variation {i + 1} · seed {s['seed']} · "
                                                                  f"{s['seconds']:.2f} s")
            updates[slot.plot] = figures.code_sequence_figure(s["codes"], k, sps, title=f"Codes of variation {i + 1}")
        else:
            updates[slot.group] = gr.Column(visible=False)
            updates[slot.audio] = None
            updates[slot.plot] = figures.code_sequence_figure(None)
    note = out["input"].note
    what = "kept its first levels" if mode == "shape" else "continued"
    updates.update({
        tab.msg: f"✓ {len(results)} variation{'s' if len(results) != 1 else ''} of **{html.escape(out['input'].name)}** "
                 f"({what}) saved in the run's `samples/` ({out['elapsed_s']:.1f} s)." + (f"  \n{note}" if note else ""),
        tab.result_ids: [s["id"] for s in results], tab.downloads: [s["path"] for s in results],
        tab.sample_pick: gr.Dropdown(choices=_sample_choices(app, run_dir)),
    })
    return updates


def _as_input(app: DistillApp, tab: VariationsTab, run_id, sample_id) -> dict:
    """A saved sample becomes the input ("Vary this")."""
    run_dir = app.run_dir(run_id)
    shown = _show(app, tab, run_id, "sample", None, sample_id, None)
    return {**shown, tab.source: "sample",
            tab.sample_pick: gr.Dropdown(choices=_sample_choices(app, run_dir), value=sample_id, visible=True)}


def on_vary_result(app: DistillApp, tab: VariationsTab, index: int, run_id, ids):
    if not ids or index >= len(ids):
        return {tab.input_msg: "**⚠ Make a variation first.**"}
    return _as_input(app, tab, run_id, ids[index])


def on_pick_sample(app: DistillApp, tab: VariationsTab, run_id, sample_id):
    return _as_input(app, tab, run_id, (sample_id or "").strip())


def on_vary_player(app: DistillApp, tab: VariationsTab, tabs: gr.Tabs, run_id, audio):
    """Another tab's sample ("Vary this" on the Generate tab): the player holds a served copy of
    the sample's file, whose name is the sample's id."""
    sid = Path(str(audio)).stem if audio else ""
    run_dir = app.run_dir(run_id)
    if not sid or run_dir is None or not any(s.get("id") == sid for s in app.samples(run_dir)):
        return {tab.input_msg: "**⚠ Generate a sample first, then vary it.**"}
    return {tabs: gr.Tabs(selected="variations"), **_as_input(app, tab, run_id, sid)}


def on_pack(app: DistillApp, tab: VariationsTab, run_id, count, seed, follow):
    try:
        out = app.make_pack(run_id, int(count or 0), seed, follow)
    except (ValueError, RuntimeError) as exc:
        return {tab.pack_msg: f"**⚠ {exc}**"}
    run_dir = app.run_dir(run_id)
    return {tab.pack_msg: f"✓ {out['message']} Saved in the run's `samples/` ({out['elapsed_s']:.1f} s).",
            tab.pack_grid: pack_grid_html(out["samples"]), tab.pack_zip: out["zip"],
            tab.sample_pick: gr.Dropdown(choices=_sample_choices(app, run_dir))}


def pack_grid_html(samples: list[dict]) -> str:
    """A grid of small players, each with its length and a "Vary this" button."""
    cells = []
    for i, s in enumerate(samples):
        url = "/gradio_api/file=" + quote(str(s["path"]))
        cells.append(
            f'<div class="d-pack-cell"><div class="d-pack-head"><b>#{i + 1}</b><span>{s["seconds"]:.2f} s</span></div>'
            f'<audio controls preload="none" src="{html.escape(url)}"></audio>'
            f'<button type="button" data-vary="{html.escape(str(s["id"]))}">Vary this</button></div>')
    return f'<div class="d-pack-grid">{"".join(cells)}</div>'
