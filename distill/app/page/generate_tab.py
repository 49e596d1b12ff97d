"""Tab 4, Generate: sampling settings, up to MAX_VARIATIONS samples with their codes, and the run's
saved samples."""
from __future__ import annotations

from dataclasses import dataclass

import gradio as gr

from distill.app import figures
from distill.app.page.bind import bind
from distill.app.page.run_view_draw import NO_PROMPT
from distill.app.service import MAX_VARIATIONS, DistillApp
from distill.app.views import samples_rows
from distill.config import SAMPLING_DEFAULTS


@dataclass
class Slot:
    """One variation's panel: shown only when the last generate made that many."""
    group: gr.Column
    audio: gr.Audio
    plot: gr.Plot
    vary_btn: gr.Button  # makes this sample the Variations tab's input (wired there)


@dataclass
class GenerateTab:
    seconds: gr.Number
    temperature: gr.Slider
    top_k: gr.Number
    top_p: gr.Slider
    seed: gr.Number
    variations: gr.Slider
    fmt: gr.Radio
    prompt: gr.Dropdown
    clips: gr.Checkbox
    follow: gr.Slider
    gen_btn: gr.Button
    gen_msg: gr.Markdown
    slots: list[Slot]
    downloads: gr.File
    samples_table: gr.Dataframe
    saved_audio: gr.Audio
    saved_plot: gr.Plot

    @property
    def inputs(self) -> list:
        """The sampling settings, in DistillApp.generate's order."""
        return [self.seconds, self.temperature, self.top_k, self.top_p, self.seed, self.variations, self.fmt,
                self.prompt, self.clips, self.follow]

    @property
    def outputs(self) -> list:
        """What generating updates, in the generate_ui endpoint's order."""
        return [self.gen_msg, *[s.audio for s in self.slots], *[s.group for s in self.slots],
                *[s.plot for s in self.slots], self.downloads, self.samples_table]


def build_generate_tab() -> GenerateTab:
    with gr.Tab("4 · Generate", id="generate", elem_id="tab-generate"):
        with gr.Row():
            with gr.Column(scale=2, min_width=280):
                seconds = gr.Number(4.0, label="Duration (seconds)", minimum=0.1, maximum=600, step=0.5,
                                    elem_id="d-g-seconds")
                temperature = gr.Slider(0.0, 2.0, value=1.0, step=0.05, label="Temperature",
                                        info="Lower: safer, more repetitive. Higher: wilder.")
                with gr.Row():
                    top_k = gr.Number(0, label="Top-k (0 = off)", precision=0, minimum=0, maximum=4096)
                    top_p = gr.Slider(0.05, 1.0, value=1.0, step=0.01, label="Top-p")
                with gr.Row():
                    seed = gr.Number(0, label="Seed", precision=0, minimum=0)
                    variations = gr.Slider(1, MAX_VARIATIONS, value=1, step=1, label="Variations")
                fmt = gr.Radio([("WAV", "wav"), ("FLAC", "flac")], value="wav", label="File format")
                prompt = gr.Dropdown([NO_PROMPT], value="", label="Continue from a file", allow_custom_value=True,
                                     info="The sample starts where this training file's codes end.")
                clips = gr.Checkbox(True, label="New sound after each one ends",
                                    info="When your files are short sounds, a long sample is a run of "
                                         "them, each ending where the model expects. Off: one continuous sound.",
                                    elem_id="d-g-clips")
                follow = gr.Slider(0.0, 1.0, value=SAMPLING_DEFAULTS["retrieval"], step=0.05,
                                   label="Follow your material", elem_id="d-g-follow",
                                   info="Higher: each moment continues the way your own files continue "
                                        "(fewer clicks and noise, closer to your sounds). 0: the model alone.")
                gen_btn = gr.Button("Generate", variant="primary", elem_id="d-gen-btn")
                gen_msg = gr.Markdown("", elem_id="d-gen-msg")
            with gr.Column(scale=5):
                slots = []
                for i in range(MAX_VARIATIONS):
                    with gr.Column(visible=i == 0, variant="panel", elem_classes=["d-slot"]) as group:
                        audio = gr.Audio(label=f"Variation {i + 1}", type="filepath", interactive=False,
                                         buttons=["download"], elem_id=f"d-gen-audio-{i}")
                        plot = gr.Plot(figures.code_sequence_figure(None), show_label=False, format="png",
                                       elem_id=f"d-gen-plot-{i}")
                        vary_btn = gr.Button("Vary this", size="sm", elem_id=f"d-gen-vary-{i}")
                    slots.append(Slot(group, audio, plot, vary_btn))
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
    return GenerateTab(seconds, temperature, top_k, top_p, seed, variations, fmt, prompt, clips, follow, gen_btn,
                       gen_msg, slots, downloads, samples_table, saved_audio, saved_plot)


def wire_generate_tab(app: DistillApp, tab: GenerateTab, run_picker: gr.Dropdown, hist_plot: gr.Plot) -> None:
    """`hist_plot` is the codes tab's histogram: new samples join its generated counts."""
    tab.gen_btn.click(bind(on_generate, app, tab, hist_plot), inputs=[run_picker, *tab.inputs],
                      outputs=[*tab.outputs, hist_plot], api_name="generate_ui", api_visibility="undocumented")
    tab.samples_table.select(bind(on_sample_select, app, tab), inputs=[run_picker], api_visibility="private",
                             outputs=[tab.saved_audio, tab.saved_plot])


def on_generate(app: DistillApp, tab: GenerateTab, hist_plot: gr.Plot, run_id, seconds, temperature, top_k, top_p,
                seed, variations, fmt, prompt, clips, follow):
    try:
        samples = app.generate(run_id, seconds, temperature, top_k, top_p, seed, variations, fmt, prompt or None,
                               clips, follow)
    except (ValueError, RuntimeError) as exc:
        return {tab.gen_msg: f"**⚠ {exc}**"}
    run_dir = app.run_dir(run_id)
    sps, k = app.code_rate(run_dir)
    out = {}
    for i, slot in enumerate(tab.slots):
        if i < len(samples):
            s = samples[i]
            out[slot.audio] = gr.Audio(value=s["path"], label=f"Variation {i + 1} · seed {s['seed']} · {s['seconds']:.1f} s")
            out[slot.group] = gr.Column(visible=True)
            out[slot.plot] = figures.code_sequence_figure(s["codes"], k, sps, title=f"Codes of variation {i + 1}")
        else:
            out[slot.audio] = None
            out[slot.group] = gr.Column(visible=False)
            out[slot.plot] = figures.code_sequence_figure(None)
    took = sum(s["elapsed_s"] for s in samples)
    train_counts, gen_counts = app.histograms(run_dir)
    out.update({
        tab.gen_msg: f"✓ {len(samples)} sample{'s' if len(samples) != 1 else ''} saved in the run's `samples/` ({took:.1f} s).",
        tab.downloads: [s["path"] for s in samples], tab.samples_table: samples_rows(app.samples(run_dir)),
        hist_plot: figures.histogram_figure(train_counts, gen_counts),
    })
    return out


def on_sample_select(app: DistillApp, tab: GenerateTab, run_id, evt: gr.SelectData):
    """A saved sample clicked: play it and show its codes."""
    run_dir = app.run_dir(run_id)
    if run_dir is None:
        return {}
    row = evt.row_value if evt is not None else None
    sid = row[1] if row and len(row) > 1 else None
    for s in app.samples(run_dir):
        if s.get("id") == sid:
            sps, k = app.code_rate(run_dir)
            codes = app.sample_codes(run_dir).get(sid)
            return {tab.saved_audio: s["path"],
                    tab.saved_plot: figures.code_sequence_figure(codes, k, sps, title=f"Codes of {sid}")}
    return {}
