"""A real browser (Debian chromium via Playwright, headless) drives the page like a person would.

Folder drop (synthetic drop event carrying directory entries) -> folder picker upload -> tier card ->
quick training with the loss plot updating (and a second tab reattaching) -> code plot and histograms
-> generate -> an audio player. Screenshots go to test-artifacts/ (gitignored).
"""
from __future__ import annotations

import base64
import shutil
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the shared helpers, under any import mode
from conftest import REPO, app_process  # noqa: E402
from test_app_e2e import synth_folder  # noqa: E402

ARTIFACTS = REPO / "test-artifacts"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update"]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    base = tmp_path_factory.mktemp("browser")
    with app_process(base) as (url, ws, _):
        yield url, ws, base


@pytest.fixture(scope="module")
def browser():
    exe = shutil.which("chromium")
    assert exe, "chromium is not installed (apt-get install -y chromium): the browser test cannot run"
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=exe, headless=True, args=CHROMIUM_ARGS)
        yield b
        b.close()


def shot(page, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def img_src(page, elem_id: str) -> str:
    loc = page.locator(f"#{elem_id} img")
    return loc.first.get_attribute("src") or "" if loc.count() else ""


def wait_until(fn, timeout: float, what, every: float = 0.25):
    """`fn()` until truthy; `what` names what was awaited (or is a callable saying what the page showed instead)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = fn()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout} s waiting for {what() if callable(what) else what}")


FAKE_DROP_JS = """
({files}) => {
  const bytes = (b64) => Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
  const fileEntry = (name, b64) => {
    const file = new File([bytes(b64)], name, {type: "audio/wav"});
    return {isFile: true, isDirectory: false, name, file: (ok) => ok(file)};
  };
  // readEntries hands out entries in batches, then an empty batch: mimic two batches.
  const dirEntry = (name, children) => ({
    isFile: false, isDirectory: true, name,
    createReader: () => {
      const batches = [children.slice(0, 1), children.slice(1), []];
      return {readEntries: (ok) => ok(batches.shift() || [])};
    },
  });
  const root = dirEntry("dropped kit", [
    dirEntry("a", [fileEntry("hit.wav", files[0]), fileEntry("tail.wav", files[1])]),
    dirEntry("b", [fileEntry("hit.wav", files[2])]),
    fileEntry(".DS_Store", files[0]),
    fileEntry("loose.wav", files[3]),
  ]);
  const dt = {items: [{kind: "file", webkitGetAsEntry: () => root}], files: [], types: ["Files"]};
  const ev = new Event("drop", {bubbles: true, cancelable: true});
  Object.defineProperty(ev, "dataTransfer", {value: dt});
  document.querySelector("#d-drop .dz").dispatchEvent(ev);
  return ev.defaultPrevented;
}
"""


def test_page_end_to_end(server, browser, tmp_path):
    url, ws, base = server
    data = synth_folder(base / "kit")
    page = browser.new_page(viewport={"width": 1440, "height": 1000})
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(url)
    page.wait_for_selector("#d-drop .dz", timeout=30_000)
    assert "No dataset yet" in page.locator("#d-tier-card").inner_text()
    shot(page, "01-empty")

    # 1. a synthetic drop event carrying a folder (directory entries, subfolders, equal names)
    wavs = sorted(data.rglob("tone_*.wav"))
    payload = [base64.b64encode(p.read_bytes()).decode() for p in wavs[:4]]
    assert page.evaluate(FAKE_DROP_JS, {"files": payload}) is True
    page.wait_for_function("document.querySelector('#d-ingest-msg').innerText.includes('copied into the workspace')",
                           timeout=60_000)
    dropped = [d for d in (ws / "datasets").iterdir() if d.name.startswith("dropped")]
    assert len(dropped) == 1
    got = sorted(p.relative_to(dropped[0]).as_posix() for p in dropped[0].rglob("*") if p.is_file())
    assert got == ["dropped kit/a/hit.wav", "dropped kit/a/tail.wav", "dropped kit/b/hit.wav", "dropped kit/loose.wav"]
    card = page.locator("#d-tier-card").inner_text()
    assert "Tier 1" in card
    assert "4 used" in page.locator("#d-report-summary").inner_text()
    shot(page, "02-dropped-folder")

    summary = lambda: page.locator("#d-report-summary").inner_text()  # noqa: E731

    # 2. a .zip of the folder through "Choose files or a .zip"
    import zipfile

    zpath = tmp_path / "kit.zip"
    with zipfile.ZipFile(zpath, "w") as zf:
        for f in sorted(data.rglob("*")):
            if f.is_file():
                zf.write(f, "kit/" + f.relative_to(data).as_posix())
    page.set_input_files("#d-drop input.dz-files", str(zpath))
    wait_until(lambda: "6 used" in summary() and "/kit" in summary(), 60, "the zip's scan")
    assert "high/tone_0.wav" in page.locator("#d-report-table").inner_text()

    # 3. a folder path typed on this machine (scanned in place)
    before = summary()
    page.locator("#d-path textarea, #d-path input").first.fill(str(data))
    page.click("#d-scan-btn")
    wait_until(lambda: summary() != before and str(data) in summary(), 60, "the typed path's scan")
    assert "in place" in page.locator("#d-ingest-msg").inner_text()

    # 4. the folder picker (webkitdirectory): the training set, skip reasons in the table
    before = summary()
    page.set_input_files("#d-drop input.dz-folder", str(data))
    wait_until(lambda: summary() != before and "6 used" in summary() and "workspace/datasets" in summary(), 60,
               "the folder picker's scan")
    assert "Ready: 6 usable files" in page.locator("#d-drop .dz-status").inner_text()
    table = page.locator("#d-report-table").inner_text()
    assert "high/tone_0.wav" in table and "low/tone_0.wav" in table
    assert "skipped" in table and "notes.txt" in table
    assert "Tier 1" in page.locator("#d-tier-card").inner_text()
    shot(page, "03-folder-picker-tier-card")

    # 5. quick preset, short budget, start
    page.get_by_text("Settings — change them").click()
    page.get_by_label("Quick look: small and fast").check()
    page.wait_for_function("document.querySelector('#d-tier-card').innerText.includes('Tier 1')")
    page.locator("#d-minutes input").fill("0.3")
    page.locator("#d-minutes input").press("Tab")
    page.click("#d-start-btn")
    page.wait_for_function("document.querySelector('#d-start-msg').innerText.includes('Training started')",
                           timeout=15_000)
    assert page.locator("#tab-train").is_visible()  # the page moved to the training tab
    wait_until(lambda: "Device" in page.locator("#d-status").inner_text(), 20, "the live status card")
    before = wait_until(lambda: img_src(page, "d-vq-plot"), 20, "the loss plot")
    first = wait_until(lambda: (s := img_src(page, "d-vq-plot")) != before and s, 90, "the loss plot to update")
    status = page.locator("#d-status").inner_text()
    assert "CPU" in status or "GPU" in status
    shot(page, "04-training")

    # a second tab reattaches to the running job
    other = browser.new_page(viewport={"width": 1280, "height": 900})
    other.goto(url)
    other.wait_for_selector("#d-drop .dz", timeout=30_000)
    other.get_by_role("tab", name="2 · Training").click()
    wait_until(lambda: "Read audio" in other.locator("#d-status").inner_text(), 20, "the second tab's status card")
    other.close()

    page.wait_for_function("document.querySelector('#d-status').innerText.includes('Finished')", timeout=150_000)
    assert img_src(page, "d-vq-plot") != first  # the loss plot kept updating
    wait_until(lambda: img_src(page, "d-prior-plot"), 10, "the prior loss plot")
    health = page.locator("#d-notes").inner_text()
    assert "Level 1" in health
    shot(page, "05-training-done")

    # 6. codes: code-sequence plot with its audio player, histograms
    page.get_by_role("tab", name="3 · Codes").click()
    wait_until(lambda: len(img_src(page, "d-code-plot")) > 5000, 20, "the code-sequence plot")
    wait_until(lambda: len(img_src(page, "d-hist-plot")) > 5000, 20, "the histograms")
    wait_until(lambda: page.locator("#d-file-audio audio, #d-file-audio .waveform-container, #d-file-audio button").count(),
               20, "the file's audio player")
    shot(page, "06-codes")

    # 7. generate: an audio player, the sample's codes, a download
    page.get_by_role("tab", name="4 · Generate").click()
    page.locator("#d-g-seconds input").fill("1.5")
    page.click("#d-gen-btn")
    page.wait_for_function("document.querySelector('#d-gen-msg').innerText.includes('saved')", timeout=90_000)
    wait_until(lambda: page.locator("#d-gen-audio-0 audio").count() or page.locator("#d-gen-audio-0 button").count(),
               20, "an audio player")
    src = page.locator("#d-gen-audio-0 audio").first.get_attribute("src") if page.locator("#d-gen-audio-0 audio").count() else ""
    assert src is None or src == "" or "/file=" in src or src.startswith("blob:") or "gradio_api" in src
    wait_until(lambda: len(img_src(page, "d-gen-plot-0")) > 5000, 20, "the sample's code plot")
    assert ".wav" in page.locator("#d-downloads").inner_text()
    assert "s0" in page.locator("#d-samples").inner_text() or page.locator("#d-samples tbody tr").count() >= 1
    shot(page, "07-generated")
    samples = list((ws / "runs").glob("*/samples/*.wav"))
    assert samples, "the generated sample was not saved in the run"

    # 8. runs list
    page.get_by_role("tab", name="Runs").click()
    wait_until(lambda: "done" in page.locator("#d-runs").inner_text(), 10, "the runs list")
    shot(page, "08-runs")

    # 9. the demo dataset in one click
    page.get_by_role("tab", name="1 · Dataset").click()
    page.click("#d-demo-btn")
    wait_until(lambda: "16 used" in summary(), 60, "the demo dataset's scan")
    assert "Tier 1" in page.locator("#d-tier-card").inner_text()
    shot(page, "09-demo-dataset")
    assert not errors, errors
    page.close()
