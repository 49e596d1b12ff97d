"""The training tab in a real browser (headless Debian chromium, as tests/test_browser.py): what a
quick run says it learned, a progress bar that only moves forward, a stop that looks stopped and a
resume whose curves continue, messages that go with their state, and a reload during training that
keeps the job's settings. Runs are tiny (quick preset, seconds of budget); jobs start through the API
where the page's own form is not what is being tested. Screenshots go to test-artifacts/."""
from __future__ import annotations

import sys
import time
from pathlib import Path

import httpx
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the shared helpers, under any import mode
from conftest import app_process, write_synthetic_folder  # noqa: E402
from test_browser import browser, shot, wait_until  # noqa: E402,F401  (browser: the shared chromium fixture)

CARD = "#d-status"


class Api:
    """Plain HTTP to the app's named endpoints (see conftest.Server.call)."""

    def __init__(self, url: str):
        self.url, self.http = url, httpx.Client()

    def call(self, name: str, *args, timeout: float = 60):
        r = self.http.post(f"{self.url}gradio_api/run/{name}", json={"data": list(args)}, timeout=timeout)
        assert r.status_code == 200, (name, r.status_code, r.text[:300])
        return r.json()["data"][0]

    def wait(self, pred, timeout: float, what: str) -> dict:
        return wait_until(lambda: (st := self.call("status")) and pred(st) and st, timeout, what, every=0.3)


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    base = tmp_path_factory.mktemp("browser-training")
    data = write_synthetic_folder(base / "sounds", n=6, seconds=1.0)
    with app_process(base) as (url, ws, _):
        api = Api(url)
        assert api.call("scan", str(data))["ok"]
        yield url, ws, api, data


def open_page(browser, url):  # noqa: F811
    page = browser.new_page(viewport={"width": 1440, "height": 1000})
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(url)
    page.wait_for_selector("#d-drop .dz", timeout=30_000)
    return page, errors


def card_state(page) -> str:
    return page.locator(CARD + " .d-status").first.get_attribute("data-state") or "" \
        if page.locator(CARD + " .d-status").count() else ""


def bar_percent(page) -> int | None:
    loc = page.locator(CARD + " .d-line.d-small span")  # the first: "NN %"
    if not loc.count():
        return None
    text = loc.first.inner_text().replace("%", "").strip()
    return int(text) if text.isdigit() else None


def manifest_of(ws: Path, run_id: str) -> dict:
    import json

    return json.loads((ws / "runs" / run_id / "manifest.json").read_text())


def test_a_quick_run_says_what_it_learned_and_its_bar_only_moves_forward(app, browser):  # noqa: F811
    url, ws, api, _ = app
    page, errors = open_page(browser, url)
    page.get_by_role("tab", name="2 · Training").click()
    res = api.call("start", "", "quick", 0.25, "cpu", 0, 3, {}, {})
    assert res["ok"], res
    wait_until(lambda: card_state(page) == "running", 20, "the running card")
    seen: list[int] = []
    deadline = time.time() + 90
    while time.time() < deadline and card_state(page) not in ("done", "failed"):
        pct = bar_percent(page)
        if pct is not None and card_state(page) == "running":
            seen.append(pct)
        time.sleep(0.2)
    assert card_state(page) == "done", page.locator(CARD).inner_text()
    assert seen == sorted(seen), seen  # the bar never moves back
    assert len({p for p in seen if 0 < p < 100}) >= 3, seen  # and it moves along the way
    assert bar_percent(page) == 100

    learned = wait_until(lambda: page.locator(CARD + " [data-learned]").count() and page.locator(CARD + " [data-learned]"),
                         10, "what the model learned")
    from distill.learning import judge_manifest

    verdict = judge_manifest(manifest_of(ws, res["run_id"]))
    assert verdict is not None
    assert api.call("status")["learned"]["level"] == verdict.level  # the API says the same
    assert learned.get_attribute("data-learned") == verdict.level  # the page says what the library judged
    text = page.locator(CARD).inner_text()
    assert "The sequence model learned" in text
    if not verdict.ok:
        assert "What to do" in text and "more minutes" in text.lower()
        assert "! Sequence model" in text and "✓ Sequence model" not in text  # not every check is green
    shot(page, "training-01-quick-run-learned")
    assert not errors, errors
    page.close()


def test_stop_during_the_sequence_model_looks_stopped_and_resume_continues_its_curve(app, browser):  # noqa: F811
    from distill.app import figures
    from distill.runs import continuous_history, read_metrics

    url, ws, api, _ = app
    page, errors = open_page(browser, url)
    page.get_by_role("tab", name="2 · Training").click()
    long_prior = {"max_epochs": 5000, "patience": 100000, "eval_every": 20}
    res = api.call("start", "", "quick", 1.0, "cpu", 0, 3, {"max_steps": 30, "eval_every": 15}, long_prior)
    assert res["ok"], res
    api.wait(lambda st: st.get("stage") == "prior" and (st.get("latest", {}).get("prior_step") or {}).get("step", 0) >= 30,
             90, "the sequence model's first steps")
    page.click("#d-stop-btn")
    wait_until(lambda: card_state(page) == "stopped", 30, "the stopped card")
    card = page.locator(CARD).inner_text()
    assert "■ Sequence model — stopped at step" in card, card
    stopped_at = api.call("status")["stages_stopped"]["prior"]
    assert f"■ Sequence model — stopped at step {stopped_at}" in card, card
    assert "✓ Sequence model" not in card and (bar_percent(page) or 100) < 90  # the bar stays where it stopped
    # the stop button's answer belonged to the stopping, which is over
    wait_until(lambda: "Stopping" not in page.locator("#d-stop-msg").inner_text(), 5, "the stop message to go")
    shot(page, "training-02-stopped")

    page.click("#d-resume-btn")
    wait_until(lambda: "Resuming" in page.locator("#d-resume-msg").inner_text(), 10, "the resume answer")
    st = api.wait(lambda st: st.get("state") == "running" and
                  (st.get("latest", {}).get("prior_step") or {}).get("step", 0) > stopped_at + 20, 60,
                  "the resumed sequence model")
    assert st["stage"] == "prior" and "vqvae" not in st.get("stages_stopped", {})  # the sound model was kept
    api.call("stop")
    wait_until(lambda: card_state(page) == "stopped", 30, "the second stop")
    wait_until(lambda: page.locator("#d-resume-msg").inner_text().strip() == "", 5, "the resume answer to go")
    card = page.locator(CARD).inner_text()
    assert "✓ Sound model" in card and "✓ Codes" in card  # kept from before the resume
    assert "■ Sequence model — stopped at step" in card
    steps = [r["step"] for r in figures.latest_attempt(continuous_history(read_metrics(ws / "runs" / res["run_id"])),
                                                       "prior") if r.get("kind") == "step" and r.get("stage") == "prior"]
    assert steps[0] == 1 and steps[-1] > stopped_at + 20  # the curve runs from the first step through the resume
    assert steps == sorted(set(steps))
    shot(page, "training-03-resumed-and-stopped")
    assert not errors, errors
    page.close()


def test_a_reload_during_training_keeps_the_jobs_settings_and_opens_on_training(app, browser):  # noqa: F811
    url, ws, api, data = app
    page, errors = open_page(browser, url)
    # the page opens on the last scanned dataset (the fixture's): the form starts from its plan
    wait_until(lambda: "6 used" in page.locator("#d-report-summary").inner_text(), 30, "the last dataset")
    page.get_by_text("Settings — change them").click()
    page.get_by_label("Quick look: small and fast").check()
    page.wait_for_timeout(500)
    page.locator("#d-minutes input").fill("0.5")
    page.locator("#d-minutes input").press("Tab")
    page.wait_for_timeout(300)
    page.click("#d-start-btn")
    page.wait_for_function("document.querySelector('#d-start-msg').innerText.includes('Training started')",
                           timeout=15_000)
    page.reload()
    page.wait_for_selector("#d-drop .dz", state="attached", timeout=30_000)
    wait_until(lambda: page.locator("#tab-train").is_visible(), 15, "the training tab after the reload")
    assert not page.locator("#tab-dataset").is_visible()
    wait_until(lambda: card_state(page) in ("running", "stopping"), 15, "the running job's card")
    shot(page, "training-04-reloaded")
    page.get_by_role("tab", name="1 · Dataset").click()
    page.get_by_text("Settings — change them").click()
    assert page.get_by_label("Quick look: small and fast").is_checked()  # not back to Auto
    assert float(page.locator("#d-minutes input").input_value()) == 0.5
    api.call("stop")
    api.wait(lambda st: not st.get("running"), 60, "the job to stop")
    assert not errors, errors
    page.close()
