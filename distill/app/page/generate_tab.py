"""Tab 4, Generate: sampling settings, up to MAX_VARIATIONS samples with their codes, and the run's
saved samples."""
from __future__ import annotations

from dataclasses import dataclass

import gradio as gr

from distill.app import figures
from distill.app.page.bind import bind
from distill.app.page.run_view_draw import NO_PROMPT
from distill.app.page.help import HELP
from distill.app.service import MAX_VARIATIONS, DistillApp
from distill.app.views import samples_rows
from distill.config import SAMPLING_DEFAULTS
from distill.sampling_check import sampling_problems


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
    check_msg: gr.Markdown  # a setting out of range, said next to the controls (nothing else changes)
    gen_btn: gr.Button
    gen_msg: gr.Markdown
    resume_btn: gr.Button  # offered when the run stopped before its sequence model was trained
    slots: list[Slot]
    downloads: gr.File
    samples_table: gr.Dataframe
    saved_audio: gr.Audio
    saved_plot: gr.Plot
    shown_run: gr.State  # the run what this tab shows belongs to: another run picked clears it

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

    @property
    def shown_for_run(self) -> list:
        """What belongs to the run shown: cleared when another run is picked."""
        return [self.gen_msg, self.resume_btn, self.check_msg, *[s.audio for s in self.slots],
                *[s.group for s in self.slots], *[s.plot for s in self.slots], self.downloads, self.saved_audio,
                self.saved_plot, self.shown_run]


def build_generate_tab() -> GenerateTab:
    with gr.Tab("4 · Generate", id="generate", elem_id="tab-generate"):
        shown_run = gr.State(None)
        with gr.Row():
            with gr.Column(scale=2, min_width=280):
                # No minimum/maximum here: Gradio would refuse an out-of-range value by turning every output
                # into an error badge. The range is checked below and said in words next to the controls.
                seconds = gr.Number(4.0, label="Duration (seconds)", step=0.5, info=HELP["seconds"],
                                    elem_id="d-g-seconds")
                temperature = gr.Slider(0.0, 2.0, value=1.0, step=0.05, label="Temperature",
                                        info=HELP["temperature"], elem_id="d-g-temperature")
                with gr.Row():
                    top_k = gr.Number(0, label="Top-k (0 = off)", precision=0, info=HELP["top_k"], elem_id="d-g-topk")
                    top_p = gr.Slider(0.05, 1.0, value=1.0, step=0.01, label="Top-p", info=HELP["top_p"],
                                      elem_id="d-g-topp")
                with gr.Row():
                    seed = gr.Number(0, label="Seed", precision=0, info=HELP["gen_seed"], elem_id="d-g-seed")
                    variations = gr.Slider(1, MAX_VARIATIONS, value=1, step=1, label="Variations",
                                           info=HELP["variations"])
                fmt = gr.Radio([("WAV", "wav"), ("FLAC", "flac")], value="wav", label="File format", info=HELP["format"])
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
                check_msg = gr.Markdown("", elem_id="d-g-check")
                gen_btn = gr.Button("Generate", variant="primary", elem_id="d-gen-btn")
                gen_msg = gr.Markdown("", elem_id="d-gen-msg")
                resume_btn = gr.Button("Resume training this run", visible=False, elem_id="d-g-resume-btn", size="sm")
            with gr.Column(scale=5):
                slots = []
                for i in range(MAX_VARIATIONS):
                    with gr.Column(visible=i == 0, variant="panel", elem_classes=["d-slot"]) as group:
                        audio = gr.Audio(label=f"Variation {i + 1}", type="filepath", interactive=False,
                                         buttons=["download"], elem_id=f"d-gen-audio-{i}")
                        plot = gr.Plot(figures.code_sequence_figure(None), show_label=False, format="png",
                                       elem_id=f"d-gen-plot-{i}")
                        vary_btn = gr.Button("Vary this", size="sm", elem_id=f"d-gen-vary-{i}")
                        if i == 0:
                            gr.Markdown(HELP["code_grid"], elem_classes=["d-hint"])
                    slots.append(Slot(group, audio, plot, vary_btn))
                downloads = gr.File(label="Download", file_count="multiple", interactive=False, elem_id="d-downloads")
        gr.Markdown("### Saved samples")
        gr.Markdown(HELP["saved_samples"], elem_classes=["d-hint"])
        samples_table = gr.Dataframe(headers=["Created", "Sample", "Seconds", "Temperature", "Top-k", "Top-p",
                                              "Seed", "Continues"], value=[], interactive=False,
                                     max_height=300, elem_id="d-samples")
        with gr.Row():
            saved_audio = gr.Audio(label="Selected sample", type="filepath", interactive=False,
                                   buttons=["download"], scale=2, elem_id="d-saved-audio")
            saved_plot = gr.Plot(figures.empty_figure("Click a saved sample above to play it and see its codes",
                                                      height=1.8), show_label=False, format="png", scale=3)
    return GenerateTab(seconds, temperature, top_k, top_p, seed, variations, fmt, prompt, clips, follow, check_msg,
                       gen_btn, gen_msg, resume_btn, slots, downloads, samples_table, saved_audio, saved_plot,
                       shown_run)


def wire_generate_tab(app: DistillApp, tab: GenerateTab, run_picker: gr.Dropdown, hist_plot: gr.Plot, tabs: gr.Tabs,
                      view_state: gr.State) -> None:
    """`hist_plot` is the codes tab's histogram: new samples join its generated counts."""
    tab.gen_btn.click(bind(on_generate, app, tab, hist_plot), inputs=[run_picker, *tab.inputs],
                      outputs=[*tab.outputs, hist_plot, tab.check_msg, tab.resume_btn, tab.shown_run],
                      api_name="generate_ui",
                      api_visibility="undocumented", show_progress_on=[tab.gen_msg])
    tab.samples_table.select(bind(on_sample_select, app, tab), inputs=[run_picker], api_visibility="private",
                             outputs=[tab.saved_audio, tab.saved_plot, tab.shown_run])
    checked = [tab.seconds, tab.temperature, tab.top_k, tab.top_p, tab.seed, tab.follow]
    for comp in (tab.seconds, tab.top_k, tab.seed):
        comp.input(bind(on_check, tab), inputs=checked, outputs=[tab.check_msg], api_visibility="private",
                   show_progress="hidden", trigger_mode="always_last", queue=False)
    # Another run picked: what this tab shows of the previous run goes (its samples, a selected sample).
    # On .input, not .change: the poll redraws the picker (same run, new labels) while a sample is made.
    run_picker.input(bind(on_run_changed, tab), inputs=[run_picker, tab.shown_run], outputs=tab.shown_for_run,
                     api_visibility="private", show_progress="hidden", queue=False)
    tab.resume_btn.click(bind(on_resume, app, tab, tabs, view_state), inputs=[run_picker],
                         outputs=[tab.gen_msg, tab.resume_btn, tabs, view_state], api_visibility="private")


def follow_run_switches(tab: GenerateTab, run_picker: gr.Dropdown, *events) -> None:
    """After each event that shows another run (a start, a run opened from the list), this tab's
    leftovers of the previous run go."""
    for event in events:
        event.then(bind(on_run_changed, tab), inputs=[run_picker, tab.shown_run], outputs=tab.shown_for_run,
                   api_visibility="private", show_progress="hidden")


def on_check(tab: GenerateTab, seconds, temperature, top_k, top_p, seed, follow):
    """A number typed: its range problem (or none) next to the controls, before Generate is pressed."""
    problems = sampling_problems(seconds, temperature, top_k, top_p, seed, follow)
    return {tab.check_msg: f"**⚠ {problems[0].message}**" if problems else ""}


def on_run_changed(tab: GenerateTab, run_id, shown):
    if (run_id or None) == (shown or None):  # the picker redrawn (new choices), same run: nothing is stale
        return {tab.shown_run: shown}
    out = {tab.shown_run: run_id or None, tab.gen_msg: "", tab.resume_btn: gr.Button(visible=False), tab.check_msg: "", tab.downloads: None,
           tab.saved_audio: None,
           tab.saved_plot: figures.empty_figure("Click a saved sample above to play it and see its codes", height=1.8)}
    for i, slot in enumerate(tab.slots):
        out.update({slot.audio: None, slot.group: gr.Column(visible=i == 0), slot.plot: figures.code_sequence_figure(None)})
    return out


def on_resume(app: DistillApp, tab: GenerateTab, tabs: gr.Tabs, view_state: gr.State, run_id):
    res = app.resume(run_id)
    if not res["ok"]:
        return {tab.gen_msg: f"**⚠ {res['message']}**", tab.resume_btn: gr.Button(visible=False)}
    return {tab.gen_msg: f"✓ {res['message']} Follow it on the *Training* tab; come back here when it has finished.",
            tab.resume_btn: gr.Button(visible=False), tabs: gr.Tabs(selected="train"),
            view_state: None}  # the next poll redraws the whole run view


def _not_trained(app: DistillApp, run_id) -> dict | None:
    """Generate on a run without a trained sequence model: offer Resume when the run can go on."""
    from distill.pipeline import can_resume

    run_dir = app.run_dir(run_id)
    if run_dir is None or (run_dir / "prior.safetensors").is_file() or app.worker.active_run_dir() == run_dir:
        return None
    check = can_resume(run_dir)
    if not check.get("ok"):
        return None
    return {"message": f"**⚠ This run stopped before its sequence model was trained**, so it cannot make sounds yet. "
                       f"Resume it to finish training ({check['message'].rstrip('.').lower()}), then generate.",
            "resume": True}


def on_generate(app: DistillApp, tab: GenerateTab, hist_plot: gr.Plot, run_id, seconds, temperature, top_k, top_p,
                seed, variations, fmt, prompt, clips, follow):
    problems = sampling_problems(seconds, temperature, top_k, top_p, seed, follow)
    if problems:  # said next to the controls; the samples shown stay as they are
        return {tab.check_msg: f"**⚠ {problems[0].message}**"}
    stopped = _not_trained(app, run_id)
    if stopped:
        return {tab.check_msg: "", tab.gen_msg: stopped["message"], tab.resume_btn: gr.Button(visible=True),
                tab.shown_run: run_id}
    try:
        samples = app.generate(run_id, seconds, temperature, top_k, top_p, seed, variations, fmt, prompt or None,
                               clips, follow)
    except (ValueError, RuntimeError) as exc:
        return {tab.check_msg: "", tab.gen_msg: f"**⚠ {exc}**", tab.resume_btn: gr.Button(visible=False),
                tab.shown_run: run_id or None}
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
        tab.check_msg: "", tab.resume_btn: gr.Button(visible=False), tab.shown_run: run_id,
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
            return {tab.saved_audio: s["path"], tab.shown_run: run_id,
                    tab.saved_plot: figures.code_sequence_figure(codes, k, sps, title=f"Codes of {sid}")}
    return {}
