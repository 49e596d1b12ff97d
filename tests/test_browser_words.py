"""The page tells the truth and speaks a musician's language: a real browser (Debian chromium through
Playwright, as in test_browser.py) and plain HTTP against the app in a subprocess.

Each test reproduces one thing a person met on the page: a message left over from an earlier state, an
empty folder "✓ Scanned", error badges for a duration of 0, a tier card that argued against itself, model
words without plain ones, dead ends, no way to hear what the codes keep, runs that all look alike.
Small synthetic folders and one tiny trained run (copied to make the others) keep it quick.
"""
from __future__ import annotations

import json
import re
import shutil
import sys
import time
from pathlib import Path

import httpx
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the shared helpers, under any import mode
from conftest import TINY, app_process  # noqa: E402
from test_app_e2e import synth_folder  # noqa: E402
from test_browser import browser, shot, wait_until  # noqa: E402,F401  (browser: a fixture)

JARGON_PLAIN = {  # a model word may appear only with a plain phrase beside it
    "perplexity": ("codes in regular use", "how surprised the model is"),
    "nats/token": ("how surprised the model is",),
    "nats / token": ("how surprised the model is",),
    "dead codes": ("never used", "unused"),
    "code tokens": ("moments of sound", "codes to learn from"),
}


class App:
    """The app under test: its address, workspace and a plain-HTTP caller for the named API."""

    def __init__(self, url: str, ws: Path, base: Path):
        self.url, self.ws, self.base = url, ws, base
        self.http = httpx.Client(timeout=120)
        self.scanned = False  # once a dataset is scanned, a fresh page's load shows it ("Last dataset")
        self.has_runs = False  # once runs exist, a fresh page's load picks one

    def call(self, name: str, *args):
        r = self.http.post(f"{self.url}gradio_api/run/{name}", json={"data": list(args)})
        assert r.status_code == 200, (name, r.status_code, r.text[:300])
        return r.json()["data"][0]

    def wait_idle(self, timeout: float = 120) -> dict:
        deadline = time.time() + timeout
        while time.time() < deadline:
            st = self.call("status")
            if not st["running"]:
                return st
            time.sleep(0.5)
        raise AssertionError("the job did not finish")


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    base = tmp_path_factory.mktemp("words")
    with app_process(base) as (url, ws, _):
        yield App(url, ws, base)


@pytest.fixture(scope="module")
def kit(app) -> Path:
    return synth_folder(app.base / "bells kit")


@pytest.fixture(scope="module")
def runs(app, kit) -> dict:
    """One tiny trained run ("a"), a copy of it ("b") and a copy stopped before its sequence model ("stopped")."""
    res = app.call("start", str(kit), *TINY)
    assert res["ok"], res
    st = app.wait_idle()
    assert st["state"] == "done", st
    a = res["run_id"]
    root = app.ws / "runs"

    def copy(suffix: str, **changes) -> str:
        new = f"{a}-{suffix}"
        shutil.copytree(root / a, root / new)
        m = json.loads((root / new / "manifest.json").read_text())
        m.update(id=new, **changes)
        (root / new / "manifest.json").write_text(json.dumps(m))
        return new

    b = copy("b", created="2026-01-02 10:00:00")
    stopped = copy("c", created="2026-01-03 10:00:00", status="stopped", stages_done=["features", "vqvae", "codes"],
                   message="Stopped on request.")
    (root / stopped / "prior.safetensors").unlink()
    app.has_runs = True
    return {"a": a, "b": b, "stopped": stopped}


def open_page(browser, app, errors: list | None = None):  # noqa: F811
    page = browser.new_page(viewport={"width": 1440, "height": 1000})
    if errors is not None:
        page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(app.url)
    page.wait_for_selector("#d-drop .dz", timeout=30_000)
    # the drop zone's script has run (its listeners are on), not only its markup
    page.wait_for_function("[...document.querySelectorAll('#d-drop, #d-drop *')].some((e) => e.distillSend)",
                           timeout=30_000)
    if app.scanned:  # the page's load event has answered: it would overwrite what a test does first
        wait_until(lambda: re.search("Last dataset|Nothing to train on", text(page, "#d-ingest-msg")), 60,
                   "the page's load")
    if app.has_runs:
        wait_until(lambda: page.locator("#d-run-picker input").first.input_value(), 60, "the page's run")
    return page


def text(page, sel: str) -> str:
    loc = page.locator(sel)
    return loc.first.inner_text() if loc.count() else ""


def fill(page, elem_id: str, value) -> None:
    box = page.locator(f"#{elem_id} input, #{elem_id} textarea").first
    box.fill(str(value))
    box.press("Tab")


def scan_path(page, app, path: Path) -> None:
    before = text(page, "#d-ingest-msg")
    fill(page, "d-path", path)
    page.click("#d-scan-btn")
    wait_until(lambda: text(page, "#d-ingest-msg") not in ("", before) and str(path.name) in text(page, "#d-ingest-msg")
               + text(page, "#d-report-summary") + text(page, "#d-tier-card"), 60, f"the scan of {path}")
    app.scanned = True


def error_badges(page, within: str) -> int:
    """Gradio's red "Error" status badges inside `within`."""
    return page.evaluate("""(sel) => [...document.querySelectorAll(sel + ' *')]
        .filter((e) => e.children.length === 0 && e.textContent.trim() === 'Error').length""", within)


def has_audio(page, elem_id: str) -> bool:
    return page.locator(f"#{elem_id} audio, #{elem_id} .waveform-container").count() > 0


def has_labelled_audio(page, label: str) -> bool:
    """A player found by its label (the same test ran against pages whose players had no ids)."""
    block = page.locator(f"xpath=//label[contains(., '{label}')]/ancestor::div[contains(@class, 'block')][1]")
    return block.locator("audio, .waveform-container").count() > 0


# Run titles name runs for people (b and c are copies of a dated 2 and 3 January); the older picker
# labels ("<id> · <status>") match too, so these tests also run against the page before the change.
RUN_A = r"^(?!.*(01-0[23]|-[bc] ·)).*done"
RUN_B, RUN_STOPPED = r"01-02|-b ·", r"01-03|-c ·"


def pick_run(page, pattern: str) -> None:
    """Pick a run by its title in the picker (titles name runs for people; ids are not in them)."""
    box = page.locator("#d-run-picker input").first
    for _ in range(4):  # a poll sent before the pick may still redraw the previous run: pick again
        box.click()
        page.get_by_role("option", name=re.compile(pattern)).first.click()
        time.sleep(1.5)
        if re.search(pattern, box.input_value()):
            return
    raise AssertionError(f"the picker would not stay on {pattern}: {box.input_value()!r}")


# --- item 6: dead ends point somewhere (before any run exists) ---------------------------------------


def test_generate_without_a_run_says_train_one_first(app, browser):  # noqa: F811
    page = open_page(browser, app)
    page.get_by_role("tab", name="4 · Generate").click()
    page.click("#d-gen-btn")
    wait_until(lambda: "first" in text(page, "#d-gen-msg"), 20, lambda: f"the generate message ({text(page, '#d-gen-msg')!r})")
    msg = text(page, "#d-gen-msg")
    assert "train one first" in msg and "Dataset" in msg and "Start training" in msg, msg
    assert "Choose a run first" not in msg
    page.close()


# --- item 1: every message belongs to a state and goes with it ---------------------------------------


def test_start_message_goes_when_a_dataset_arrives(app, browser):  # noqa: F811
    page = open_page(browser, app)
    page.click("#d-start-btn")
    wait_until(lambda: "Choose a dataset first" in text(page, "#d-start-msg"), 20, "the start message")
    page.click("#d-demo-btn")
    wait_until(lambda: "16 used" in text(page, "#d-report-summary"), 60, "the demo's scan")
    app.scanned = True
    wait_until(lambda: "Choose a dataset first" not in text(page, "#d-start-msg"), 10, "the stale message to go")
    page.close()


def test_new_scan_resets_the_filter_and_the_drop_verdict(app, browser, kit):  # noqa: F811
    page = open_page(browser, app)
    page.set_input_files("#d-drop input.dz-folder", str(kit))
    logs = []
    page.on("console", lambda m: logs.append(m.text))
    wait_until(lambda: "Ready: 6 usable files" in text(page, "#d-drop .dz-status"), 60,
               lambda: f"the drop verdict ({text(page, '#d-drop .dz-status')!r}, {text(page, '#d-ingest-msg')!r}) {logs} {kit} {list(kit.rglob('*'))}")
    page.locator("#d-report").get_by_label("Skipped").check()
    wait_until(lambda: "✓ used" not in text(page, "#d-report-table"), 10, "the skipped filter")
    scan_path(page, app, kit)  # the same files, typed: the report lists all of them again, as the filter must say
    wait_until(lambda: "✓ used" in text(page, "#d-report-table"), 20, "the new report")
    assert page.locator("#d-report").get_by_label("All files").is_checked()
    assert "Ready" not in text(page, "#d-drop .dz-status")  # the drop's verdict was about another scan
    page.close()


# --- item 2: an empty folder -------------------------------------------------------------------------


def test_empty_folder_says_it_holds_no_audio(app, browser):  # noqa: F811
    empty = app.base / "empty folder"
    empty.mkdir()
    text_only = app.base / "text only"
    text_only.mkdir()
    (text_only / "readme.txt").write_text("no sound here")
    page = open_page(browser, app)
    for folder in (empty, text_only):
        scan_path(page, app, folder)
        shown = text(page, "#d-ingest-msg") + "\n" + text(page, "#d-tier-card")
        assert "✓ Scanned" not in shown, shown
        assert "skipped files' reasons" not in shown, shown
        assert ("no audio files" if folder is empty else "not an audio file") in shown, shown
        assert "WAV" in shown and ".flac" in shown, shown  # which formats are read
    shot(page, "words-01-empty-folder")
    page.close()


# --- item 4: the tier card explains itself, one windows count ----------------------------------------


def test_tier_card_is_honest_about_the_file_count(app, browser, kit):  # noqa: F811
    page = open_page(browser, app)
    scan_path(page, app, kit)
    page.get_by_text("Settings — change them").click()
    for preset in ("Auto: sized to the dataset", "Quick look: small and fast"):
        page.get_by_label(preset).check()
        time.sleep(1.0)
        card = text(page, "#d-tier-card")
        assert "Tier chosen by file count" in card, card
        assert "a small collection gets a small model" not in card, card
        counts = set(re.findall(r"(\d+) training windows?", card))
        assert len(counts) == 1, (preset, counts, card)  # the reasons and the warning give one number
    assert "speed test" in card  # the budget fitting that follows is announced
    page.close()


def test_budget_fitting_says_it_changed_the_cards_model():
    from distill.config import PriorConfig
    from distill.training.prior_budget import fit_prior_to_budget

    cfg = PriorConfig(hidden_size=256, num_layers=4, num_heads=4, time_budget_s=60, batch_size=32)
    _, note = fit_prior_to_budget(cfg, 128, 3, "cpu", probe=lambda c: 2000.0 if c.hidden_size > 128 else 40_000.0)
    assert note and "tier card" in note and "instead of" in note


# --- item 5: one line of help per control; model words beside plain ones ---------------------------


def _tab_components(config: dict, tab_elem: str) -> list[dict]:
    by_id = {c["id"]: c for c in config["components"]}

    def walk(node):
        yield node["id"]
        for ch in node.get("children") or []:
            yield from walk(ch)

    def find(node):
        if by_id.get(node["id"], {}).get("props", {}).get("elem_id") == tab_elem:
            return node
        for ch in node.get("children") or []:
            hit = find(ch)
            if hit:
                return hit
        return None

    tab = find(config["layout"])
    assert tab, tab_elem
    return [by_id[i] for i in walk(tab) if i in by_id]


def _strings(obj):
    if isinstance(obj, str):
        yield obj
    elif isinstance(obj, dict):
        for v in obj.values():
            yield from _strings(v)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            yield from _strings(v)


def jargon_without_plain(texts) -> list[str]:
    bad = []
    for t in texts:
        low = t.lower()
        for word, plain in JARGON_PLAIN.items():
            if word in low and not any(p in low for p in plain):
                bad.append(f"{word!r} in {t[:160]!r}")
    return bad


def test_every_control_has_help_and_no_bare_jargon(app, browser, kit):  # noqa: F811
    config = httpx.get(f"{app.url}config", timeout=30).json()
    controls = {"dropdown", "slider", "number", "radio", "checkbox", "textbox"}
    missing = []
    for tab in ("tab-dataset", "tab-train", "tab-generate", "tab-codes", "tab-variations", "tab-runs"):
        for c in _tab_components(config, tab):
            p = c.get("props", {})
            # a control without a label explains itself (the typed path's placeholder, the report's filter)
            if c["type"] in controls and p.get("visible", True) is not False and p.get("label"):
                if not (p.get("info") or "").strip():
                    missing.append(f"{tab}: {p.get('label')!r}")
    assert not missing, f"controls without a line of help: {missing}"
    texts = []
    for c in config["components"]:
        p = c.get("props", {})
        texts += [p.get(k) for k in ("label", "info", "value", "placeholder") if isinstance(p.get(k), str)]
        texts += list(_strings(p.get("headers") or []))
    # what a scan writes on the page: the tier card and the report
    page = open_page(browser, app)
    scan_path(page, app, kit)
    texts += [text(page, "#d-tier-card"), text(page, "#d-report-summary")]
    page.close()
    bad = jargon_without_plain(texts)
    assert not bad, bad


# --- with trained runs ------------------------------------------------------------------------------


def test_duration_out_of_range_is_one_message(app, browser, runs):  # noqa: F811
    page = open_page(browser, app)
    pick_run(page, RUN_A)
    page.get_by_role("tab", name="4 · Generate").click()
    fill(page, "d-g-seconds", 0.5)
    page.click("#d-gen-btn")
    wait_until(lambda: "saved" in text(page, "#d-gen-msg"), 90, "a first sample")
    wait_until(lambda: has_audio(page, "d-gen-audio-0"), 20, "its player")
    saved_msg = text(page, "#d-gen-msg")
    for bad in (0, -3, 5000):
        fill(page, "d-g-seconds", bad)
        page.click("#d-gen-btn")
        wait_until(lambda: "Duration" in text(page, "#d-g-check") or error_badges(page, "#tab-generate"), 20,
                   "an answer")
        time.sleep(0.5)
        assert error_badges(page, "#tab-generate") == 0, bad  # no red "Error" on every output
        assert "Duration" in text(page, "#d-g-check"), bad
        assert has_audio(page, "d-gen-audio-0"), bad  # the sample shown stays
        assert text(page, "#d-gen-msg") == saved_msg
    shot(page, "words-03-duration-message")
    fill(page, "d-g-seconds", 1)
    wait_until(lambda: not text(page, "#d-g-check"), 10, "the message to go with the problem")
    page.close()


def test_selected_sample_goes_with_its_run(app, browser, runs):  # noqa: F811
    page = open_page(browser, app)
    pick_run(page, RUN_A)
    page.get_by_role("tab", name="4 · Generate").click()
    fill(page, "d-g-seconds", 0.5)
    page.click("#d-gen-btn")
    wait_until(lambda: "saved" in text(page, "#d-gen-msg"), 90, "a sample")
    wait_until(lambda: page.locator('#d-samples [data-testid="cell-0-1"]').count(), 20, "the saved samples")
    page.locator('#d-samples [data-testid="cell-0-1"]').click()  # the newest sample's name
    wait_until(lambda: has_labelled_audio(page, "Selected sample"), 20, "the selected sample's player")
    pick_run(page, RUN_B)  # no samples of its own
    wait_until(lambda: not has_labelled_audio(page, "Selected sample"), 20, "the other run's sample to go")
    assert not has_audio(page, "d-gen-audio-0") and "saved" not in text(page, "#d-gen-msg")
    page.close()


def test_stopped_run_offers_resume(app, browser, runs):  # noqa: F811
    page = open_page(browser, app)
    pick_run(page, RUN_STOPPED)
    page.get_by_role("tab", name="4 · Generate").click()
    page.click("#d-gen-btn")
    wait_until(lambda: page.locator("#d-g-resume-btn").is_visible(), 30,
               lambda: f"the Resume offer ({text(page, '#d-gen-msg')!r}, {page.locator('#d-run-picker input').first.input_value()!r})")
    assert "Resume" in text(page, "#d-gen-msg")
    shot(page, "words-04-stopped-run")
    page.click("#d-g-resume-btn")
    wait_until(lambda: page.locator("#tab-train").is_visible(), 20, "the training tab")
    app.wait_idle()
    assert (app.ws / "runs" / runs["stopped"] / "prior.safetensors").is_file()  # it trained to the end
    page.close()


def test_codes_tab_plays_the_file_and_its_reconstruction(app, browser, runs):  # noqa: F811
    page = open_page(browser, app)
    pick_run(page, RUN_A)
    page.get_by_role("tab", name="3 · Codes").click()
    wait_until(lambda: has_audio(page, "d-file-audio"), 30, "the original's player")
    wait_until(lambda: has_audio(page, "d-recon-audio"), 60, "the reconstruction's player")
    assert "Through the codes" in text(page, "#tab-codes")
    shot(page, "words-05-codes")
    page.close()


def test_reconstruction_library_decodes_a_training_file(app, runs):
    from distill.reconstruct import reconstruct_file
    from distill.runs import load_codes

    run_dir = app.ws / "runs" / runs["a"]
    name = next(iter(load_codes(run_dir)))
    rec = reconstruct_file(run_dir, name)
    assert rec.sample_rate == 24_000 and rec.wave.size > 0.5 * 24_000 and 0.85 < abs(rec.wave).max() <= 0.91
    with pytest.raises(ValueError):
        reconstruct_file(run_dir, "not/a/file.wav")


def test_runs_are_named_and_renamable(app, browser, runs, kit):  # noqa: F811
    page = open_page(browser, app)
    page.get_by_role("tab", name="Runs").click()
    wait_until(lambda: runs["a"] in text(page, "#d-runs"), 20, "the runs list")
    listed = text(page, "#d-runs")
    assert "bells kit" in listed and "quick look" in listed and "min" in listed, listed
    fill(page, "d-run-label", "  long\x07 bells\n take  ")
    label = lambda: json.loads((app.ws / "runs" / runs["b"] / "manifest.json").read_text()).get("label")  # noqa: E731
    for _ in range(3):  # a poll sent before the pick can still redraw the previous run: then pick and rename again
        pick_run(page, RUN_B)  # last: the rename acts on the run the picker shows when it is pressed
        page.click("#d-rename-btn")
        wait_until(lambda: "Renamed" in text(page, "#d-rename-msg"), 30, "the rename")
        if label() == "long bells take":
            break
    assert label() == "long bells take"  # cleaned: no control characters, one space between words
    wait_until(lambda: "long bells take" in text(page, "#d-runs"), 40, "the new name in the list")
    wait_until(lambda: "long bells take" in page.locator("#d-run-picker input").first.input_value(), 40,
               "the new name in the run picker")
    page.keyboard.press("Escape")
    page.close()


def test_same_folder_twice_is_not_copied_again(app, browser, kit):  # noqa: F811
    page = open_page(browser, app)
    datasets = app.ws / "datasets"
    copies = lambda: sorted(d for d in datasets.iterdir() if d.name.startswith("bells"))  # noqa: E731
    page.set_input_files("#d-drop input.dz-folder", str(kit))
    wait_until(lambda: "Ready" in text(page, "#d-drop .dz-status"), 60, "the first drop")
    first = copies()
    assert first
    page.set_input_files("#d-drop input.dz-folder", str(kit))
    wait_until(lambda: "nothing copied again" in text(page, "#d-ingest-msg"), 60, "the second drop")
    assert copies() == first
    page.close()


def test_screenshots_of_every_tab(app, browser, runs):  # noqa: F811
    page = open_page(browser, app)
    pick_run(page, RUN_A)
    for name, tab in (("dataset", "1 · Dataset"), ("training", "2 · Training"), ("codes", "3 · Codes"),
                      ("generate", "4 · Generate"), ("runs", "Runs")):
        page.get_by_role("tab", name=tab).click()
        time.sleep(1.5)
        shot(page, f"words-tab-{name}")
    page.close()
