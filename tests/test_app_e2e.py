"""End to end: the real app (`python app.py`) on a free port, driven through gradio_client.

scan a synthetic folder -> start (quick) -> a second start is refused -> status until done ->
codes and histograms exist -> generate returns audio -> another start can be stopped.
"""
from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from conftest import REPO, app_process, free_port, start_app, stop_app

SR = 24_000


def synth_folder(folder: Path, n: int = 6, seconds: float = 1.2) -> Path:
    """n short synthetic sounds in two subfolders (equal names in both), plus two files to skip."""
    rng = np.random.default_rng(0)
    t = np.arange(int(seconds * SR)) / SR
    for i in range(n):
        sub = folder / ("low" if i % 2 else "high")
        sub.mkdir(parents=True, exist_ok=True)
        f = 110 * (i + 2)
        wave = np.sin(2 * np.pi * f * t) * np.exp(-t * (1 + i)) + 0.05 * rng.standard_normal(t.size)
        sf.write(sub / f"tone_{i // 2}.wav", (0.5 * wave).astype(np.float32), SR)
    (folder / "notes.txt").write_text("not audio")
    (folder / "broken.wav").write_bytes(b"RIFF0000WAVEjunk")
    return folder


@pytest.fixture(scope="module")
def app_server(tmp_path_factory):
    base = tmp_path_factory.mktemp("e2e")
    with app_process(base) as (url, ws, proc):
        yield url, ws, base, proc


@pytest.fixture(scope="module")
def client(app_server):
    from gradio_client import Client

    return Client(app_server[0], verbose=False)


def wait_status(client, pred, timeout: float, every: float = 0.5) -> dict:
    deadline = time.time() + timeout
    st = {}
    while time.time() < deadline:
        st = client.predict(api_name="/status")
        if pred(st):
            return st
        time.sleep(every)
    raise AssertionError(f"status never matched in {timeout} s; last: { {k: st.get(k) for k in ('state', 'stage', 'message')} }")


def test_app_binds_localhost_only(app_server):
    url, ws, base, _ = app_server
    assert url.startswith("http://127.0.0.1:")
    log = (base / "app.log").read_text()
    assert "127.0.0.1" in log and "gradio.live" not in log
    # files outside the workspace are not served
    with pytest.raises(urllib.error.HTTPError):
        urllib.request.urlopen(url + "gradio_api/file=" + str(REPO / "app.py"), timeout=5)


def test_full_flow(client, app_server):
    url, ws, base, _ = app_server
    data = synth_folder(base / "my sounds")

    # scan: report + tier card
    res = client.predict(str(data), api_name="/scan")
    assert res["ok"], res
    rep = res["report"]
    used = sorted(f["file_path"] for f in rep["files_used"])
    assert used == ["high/tone_0.wav", "high/tone_1.wav", "high/tone_2.wav", "low/tone_0.wav", "low/tone_1.wav", "low/tone_2.wav"]
    skipped = {f["file_path"]: f["reason"] for f in rep["files_skipped"]}
    assert set(skipped) == {"notes.txt", "broken.wav"} and all(skipped.values())
    assert rep["total_seconds"] == pytest.approx(7.2, abs=0.1)
    card = res["tier_card"]
    assert card["tier"] == 1 and card["reasons"] and card["eta_s"] > 0 and card["device"]
    bad = client.predict(str(base / "does-not-exist"), api_name="/scan")
    assert not bad["ok"] and "not a folder" in bad["message"]

    # start (quick, short budget); a second start is refused cleanly, also when two arrive at once
    first = client.predict(str(data), "quick", 0.3, "cpu", 0, 3, {}, {}, api_name="/start")
    assert first["ok"], first
    run_id = first["run_id"]
    from gradio_client import Client

    others, results = [Client(url, verbose=False) for _ in range(2)], []
    threads = [threading.Thread(target=lambda c=c: results.append(c.predict(str(data), "quick", api_name="/start")))
               for c in others]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 2 and not any(r["ok"] for r in results)
    assert all("already" in r["message"] and r["run_id"] == run_id for r in results)

    st = client.predict(api_name="/status")
    assert st["running"] and st["run_id"] == run_id
    # progress shows up while training: a stage, a device, a loss point
    st = wait_status(client, lambda s: "vqvae_step" in (s.get("latest") or {}) or not s["running"], 60)
    assert st["device"]
    st = wait_status(client, lambda s: not s["running"], 150, every=1.0)
    assert st["state"] == "done", st["message"]
    assert st["fraction"] == 1.0 and set(st["stages_done"]) >= {"features", "vqvae", "codes", "prior"}
    run_dir = ws / "runs" / run_id
    for f in ("manifest.json", "metrics.jsonl", "vqvae.safetensors", "codes.safetensors", "prior.safetensors"):
        assert (run_dir / f).is_file(), f

    runs = client.predict(api_name="/list_runs")
    assert runs[0]["id"] == run_id and runs[0]["status"] == "done" and runs[0]["has_prior"]

    # codes + histograms
    codes = client.predict(run_id, "", api_name="/codes")
    assert codes["ok"] and len(codes["files"]) == 6
    arr = np.array(codes["codes"])
    assert arr.ndim == 2 and arr.shape[1] == 3 and arr.shape[0] > 10
    hist = np.array(codes["histogram_train"])
    assert hist.shape[0] == 3 and hist.sum() > 0
    assert len(codes["levels_train"]) == 3 and all(0 < lv["utilisation"] <= 1 for lv in codes["levels_train"])
    # the page's own code plot endpoint draws a figure and finds the file to play
    plot, audio = client.predict(run_id, codes["files"][1], api_name="/show_codes")
    assert plot and plot.get("plot", "").startswith("data:image/png;base64,")
    assert audio and Path(audio).is_file()

    # generate: JSON API (files saved in the run) ...
    gen = client.predict(run_id, 1.5, 1.0, 0, 0.95, 7, 2, "flac", "", api_name="/generate")
    assert gen["ok"], gen
    assert len(gen["samples"]) == 2 and [s["seed"] for s in gen["samples"]] == [7, 8]
    for s in gen["samples"]:
        wave, sr = sf.read(s["file_path"])
        assert sr == SR and len(wave) == pytest.approx(1.5 * SR, rel=0.02) and np.abs(wave).max() > 0
        assert Path(s["sidecar"]).is_file()
    # ... and the page's generate button, which returns real audio to the client
    out = client.predict(run_id, 1.0, 0.8, 8, 1.0, 3, 1, "wav", codes["files"][0], False, 0.7, api_name="/generate_ui")
    msg, audio0 = out[0], out[1]
    assert "saved" in msg
    newest = max((run_dir / "samples").glob("*.json"), key=lambda p: p.stat().st_mtime_ns)
    settings = json.loads(newest.read_text())["settings"]
    assert settings["clip_ends"] is False and settings["retrieval"] == 0.7  # the page's controls reached the sampler
    if isinstance(audio0, dict):  # an update that also relabels the player: {"value": <downloaded file>, ...}
        assert "seed 3" in audio0["label"]
        audio0 = audio0["value"]
    wave, sr = sf.read(audio0)
    assert sr == SR and len(wave) > 0.9 * SR
    codes2 = client.predict(run_id, "", api_name="/codes")
    assert np.array(codes2["histogram_generated"]).sum() > 0  # generated codes now counted

    # retrain the prior on the finished run's codes: new prior, same VQ-VAE
    vq_before = (run_dir / "vqvae.safetensors").read_bytes()
    prior_mtime = (run_dir / "prior.safetensors").stat().st_mtime_ns
    rt = client.predict(run_id, "quick", 0.15, {"hidden_size": 32, "num_layers": 1, "num_heads": 2}, api_name="/retrain")
    assert rt["ok"] and rt["run_id"] == run_id, rt
    st = wait_status(client, lambda s: not s["running"], 90, every=1.0)
    assert st["state"] == "done" and st["job"] == "retrain", st["message"]
    assert (run_dir / "prior.safetensors").stat().st_mtime_ns != prior_mtime
    assert (run_dir / "vqvae.safetensors").read_bytes() == vq_before

    assert json.loads((run_dir / "manifest.json").read_text())["prior_config"]["hidden_size"] == 32

    # stop works on another start
    second = client.predict(str(data), "quick", 1.0, "cpu", 1, 3, {}, {}, api_name="/start")
    assert second["ok"] and second["run_id"] != run_id
    wait_status(client, lambda s: s["stage"] in ("vqvae", "codes", "prior") or not s["running"], 60)
    stopped = client.predict(api_name="/stop")
    assert stopped["ok"] and "Stopping" in stopped["message"]
    t0 = time.time()
    st = wait_status(client, lambda s: not s["running"], 30)
    assert st["state"] == "stopped" and time.time() - t0 < 30
    assert not client.predict(api_name="/stop")["ok"]  # nothing left to stop
    runs = {r["id"]: r for r in client.predict(api_name="/list_runs")}
    assert runs[second["run_id"]]["status"] == "stopped"


def test_restart_lists_runs_and_marks_interrupted(client, app_server, tmp_path):
    """Close the app mid-training, start it again: earlier runs are listed and reopenable, and the
    one that was cut off says so. (Runs last: it ends the module's app.)"""
    url, ws, base, proc = app_server
    runs_before = {r["id"]: r for r in client.predict(api_name="/list_runs")}
    assert runs_before, "test_full_flow must run first"
    res = client.predict(str(base / "my sounds"), "quick", 1.0, "cpu", 2, 3, {}, {}, api_name="/start")
    assert res["ok"]
    wait_status(client, lambda s: s["stage"] in ("vqvae", "codes", "prior") or not s["running"], 60)
    stop_app(proc)  # the user closes the app while it trains
    port = free_port()
    proc2 = start_app(ws, port, tmp_path / "app2.log")
    try:
        from gradio_client import Client

        c2 = Client(f"http://127.0.0.1:{port}/", verbose=False)
        runs = {r["id"]: r for r in c2.predict(api_name="/list_runs")}
        assert set(runs_before) < set(runs)
        assert runs[res["run_id"]]["status"] == "interrupted"
        done_id = next(i for i, r in runs_before.items() if r["status"] == "done")
        codes = c2.predict(done_id, "", api_name="/codes")
        assert codes["ok"] and codes["files"]
        assert c2.predict(api_name="/status")["state"] == "idle"
        gen = c2.predict(done_id, 0.5, api_name="/generate")
        assert gen["ok"] and Path(gen["samples"][0]["file_path"]).is_file()
    finally:
        stop_app(proc2)
