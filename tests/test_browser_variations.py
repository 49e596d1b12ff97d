"""The Variations tab in a real browser (Debian chromium via Playwright, headless): upload a file,
make a variation, play it, vary the result again, make a pack, vary one of its one-shots and
download the zip. The app's workspace holds a copy of the small saved run, so nothing trains first.
Screenshots go to test-artifacts/ (gitignored)."""
from __future__ import annotations

import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

sys.path.insert(0, str(Path(__file__).resolve().parent))
from conftest import app_process  # noqa: E402
from test_browser import browser, img_src, shot, wait_until  # noqa: E402,F401  (browser: a fixture)
from test_saved_runs import saved_copy  # noqa: E402

from distill.runs import read_manifest, run_title  # noqa: E402


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    base = tmp_path_factory.mktemp("browser-variations")
    saved_copy(base, "finished")
    with app_process(base) as (url, ws, _):
        yield url, ws, base


def text(page, sel: str) -> str:
    loc = page.locator(sel)
    return loc.first.inner_text() if loc.count() else ""


def test_variations_tab(server, browser, tmp_path):
    url, ws, _ = server
    t = np.arange(int(0.8 * 24_000)) / 24_000
    mine = tmp_path / "my hit.wav"
    sf.write(mine, (0.6 * np.sin(2 * np.pi * 260 * t) * np.exp(-3 * t)).astype(np.float32), 24_000)
    page = browser.new_page(viewport={"width": 1440, "height": 1100}, accept_downloads=True)
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    picker = lambda: page.locator("#d-run-picker input").first.input_value() or ""  # noqa: E731
    title = run_title(read_manifest(ws / "runs" / "finished"))  # how the picker names the saved run
    for attempt in range(3):  # on a loaded machine the page's first load event is now and then lost: reload
        page.goto(url)
        page.wait_for_selector("#d-drop .dz", timeout=30_000)
        try:
            wait_until(lambda: title in picker(), 30, "the saved run to be shown")
            break
        except AssertionError:
            if attempt == 2:
                raise
    # A poll that left before the page's load event answered can clear the picker after it (seen on a
    # machine at load 13): once the polls settle, choose the run by hand if so, as a person would.
    time.sleep(3)
    if title not in picker():
        page.locator("#d-run-picker input").first.click()
        page.get_by_role("option", name=title).click()
        wait_until(lambda: title in picker(), 20, "the run chosen by hand")
    page.get_by_role("tab", name="5 · Variations").click()

    # 1. upload a file of my own: its player and codes appear
    page.get_by_label("A file of your own").check()
    wait_until(lambda: page.locator("#d-v-upload").is_visible(), 20, "the upload box")
    page.wait_for_selector("#d-v-upload input[type=file]", state="attached", timeout=10_000)
    page.set_input_files("#d-v-upload input[type=file]", str(mine))
    try:
        wait_until(lambda: "my hit.wav" in text(page, "#d-v-input-msg"), 60, "the uploaded input")
    except AssertionError:
        shot(page, "v0-upload-failed")
        raise
    wait_until(lambda: len(img_src(page, "d-v-input-plot")) > 5000, 20, "the input's code plot")

    # 2. one variation: keep the shape
    page.locator("#d-v-count input[type=number]").fill("1")
    page.locator("#d-v-count input[type=number]").press("Tab")
    page.click("#d-v-btn")
    wait_until(lambda: "kept its first levels" in text(page, "#d-v-msg") or "⚠" in text(page, "#d-v-msg"), 60,
               "the variation")
    assert "✓ 1 variation of my hit.wav" in text(page, "#d-v-msg"), text(page, "#d-v-msg")
    wait_until(lambda: len(img_src(page, "d-v-plot-0")) > 5000, 20, "the variation's code plot")
    wait_until(lambda: page.locator("#d-v-audio-0 audio").count(), 20, "the variation's player")

    # 3. play it (Gradio's waveform player: its Play button turns into Pause while it plays), and its
    # download link serves the file
    slot = page.locator("#d-v-audio-0")
    page.evaluate("""() => {  // remember whether Pause ever shows, however short the sound
        const el = document.querySelector('#d-v-audio-0');
        window.__played = false;
        new MutationObserver(() => { if (el.querySelector('button[aria-label="Pause"]')) window.__played = true; })
            .observe(el, {subtree: true, childList: true, attributes: true});
    }""")
    slot.get_by_role("button", name="Play", exact=True).click()
    wait_until(lambda: page.evaluate("window.__played"), 30, "the variation to play")
    href = slot.locator("a.download-link").first.get_attribute("href")
    head = page.evaluate("(u) => fetch(u).then(r => r.arrayBuffer()).then(b => new TextDecoder().decode(b.slice(0, 4)))",
                         href)
    assert head == "RIFF"
    shot(page, "v1-variation")

    # 4. vary the result again: it becomes the input (a saved sample), then continue it
    result_id = Path(slot.locator("a.download-link").first.get_attribute("download")).stem
    page.click("#d-v-again-0")
    wait_until(lambda: result_id in text(page, "#d-v-input-msg"), 30, "the result as the new input")
    assert page.get_by_label("A saved sample").is_checked()
    page.get_by_label("Continue from here").check()
    page.locator("#d-v-at input").fill("0.4")
    page.locator("#d-v-at input").press("Tab")
    page.click("#d-v-btn")
    wait_until(lambda: "continued" in text(page, "#d-v-msg") or "⚠" in text(page, "#d-v-msg"), 60,
               "the second variation")
    assert f"✓ 1 variation of {result_id}" in text(page, "#d-v-msg"), text(page, "#d-v-msg")

    # 5. a pack of three one-shots: a grid of players with their lengths, and one zip
    page.locator("#d-p-count input").fill("3")
    page.locator("#d-p-count input").press("Tab")
    page.click("#d-p-btn")
    wait_until(lambda: "✓" in text(page, "#d-p-msg") or "⚠" in text(page, "#d-p-msg"), 90, "the pack")
    assert "3 of 3" in text(page, "#d-p-msg"), text(page, "#d-p-msg")
    cells = page.locator("#d-p-grid .d-pack-cell")
    assert cells.count() == 3 and all(" s" in cells.nth(i).inner_text() for i in range(3))
    assert page.locator("#d-p-grid audio").count() == 3
    status = page.evaluate("fetch(document.querySelector('#d-p-grid audio').src).then(r => r.status)")
    assert status == 200
    link = page.locator("#d-p-zip a").first
    wait_until(lambda: link.count(), 10, "the zip's link")
    with page.expect_download() as dl:
        link.click()
    path = tmp_path / "pack.zip"
    dl.value.save_as(path)
    with zipfile.ZipFile(path) as zf:
        assert len(zf.namelist()) == 3
    assert "finished" in dl.value.suggested_filename
    page.locator("#d-p-grid").scroll_into_view_if_needed()
    shot(page, "v2-pack")

    # 6. "Vary this" on a one-shot makes it the input
    sid = page.locator("#d-p-grid [data-vary]").nth(1).get_attribute("data-vary")
    page.locator("#d-p-grid [data-vary]").nth(1).click()
    wait_until(lambda: sid in text(page, "#d-v-input-msg"), 30, "the one-shot as the input")
    page.locator("#tab-variations").scroll_into_view_if_needed()
    time.sleep(0.5)
    shot(page, "v3-variations-tab")

    # 7. the training files are there to choose from, and "Vary this" under a generated sample
    # brings it here
    page.get_by_label("A training file").check()
    wait_until(lambda: page.locator("#d-v-file").is_visible(), 20, "the training file picker")
    page.locator("#d-v-file input").click()
    wait_until(lambda: page.get_by_role("option", name="b/clip_02.wav").count(), 10, "the training files")
    page.get_by_role("option", name="b/clip_02.wav").click()
    wait_until(lambda: "b/clip_02.wav" in text(page, "#d-v-input-msg"), 30, "the training file as the input")
    page.get_by_role("tab", name="4 · Generate").click()
    page.locator("#d-g-seconds input").fill("0.5")
    page.click("#d-gen-btn")
    page.wait_for_function("document.querySelector('#d-gen-msg').innerText.includes('saved')", timeout=90_000)
    generated = Path(page.locator("#d-gen-audio-0 a.download-link").first.get_attribute("download")).stem
    page.click("#d-gen-vary-0")
    wait_until(lambda: generated in text(page, "#d-v-input-msg"), 30, "the generated sample as the input")
    assert page.locator("#tab-variations").is_visible()
    assert not errors, errors
    page.close()
