"""Security holes a review found (issue 16), each shown against the running app where it lives there.

- a run's audio preview plays only the files its report lists as used, never anything else under
  its source folder;
- on IPv6 loopback ([::1]) the Host and Origin guards hold as on 127.0.0.1;
- nothing from another site reaches the app (uploads included), a non-audio upload is never served
  inline, and uploads waiting in the workspace have a quota;
- an audio file's header is checked before decoding, so a tiny file cannot decode to gigabytes.

Each test records what it tried with `record_property` (bench/reliability_report.py prints it).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import httpx
import numpy as np
import pytest
import soundfile as sf

from conftest import REPO, TINY, Server, free_port, start_app, stop_app

EVIL = "https://evil.example"
QUOTA_MB = 4  # the upload quota of this module's app (uploads of at most 2 MB each)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    base = tmp_path_factory.mktemp("security")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("OMP_NUM_THREADS", "1")
        mp.setenv("DISTILL_MAX_FILE_MB", "2")
        mp.setenv("DISTILL_UPLOAD_QUOTA_MB", str(QUOTA_MB))
        srv = Server(base)
        srv.start()
        yield srv
        srv.stop()


def _sine(seconds: float = 1.0, sr: int = 24_000) -> np.ndarray:
    return (0.5 * np.sin(2 * np.pi * 440 * np.arange(int(seconds * sr)) / sr)).astype(np.float32)


# --- hole 2: the audio preview ------------------------------------------------------------------------


def test_preview_plays_only_files_the_run_used(server, record_property):
    """A run keeps its source folder; asking its preview for another file under that folder gets nothing."""
    outside = server.base / "outside"
    (outside / ".private").mkdir(parents=True)
    sf.write(outside / ".private" / "secret.wav", _sine(), 24_000)
    res = server.call("start", str(outside), *TINY)
    assert res["ok"], res
    st = server.wait(lambda s: not s["running"], 60)
    assert st["state"] == "failed"  # nothing usable: the hidden folder is skipped
    manifest = json.loads((server.ws / "runs" / res["run_id"] / "manifest.json").read_text())
    assert manifest["source"] == str(outside)
    for name in (".private/secret.wav", "./.private/secret.wav", "../outside/.private/secret.wav"):
        r = httpx.post(f"{server.url}gradio_api/run/show_codes", json={"data": [res["run_id"], name, {}]}, timeout=30)
        assert r.status_code == 200, r.text[:300]
        assert r.json()["data"][1] is None, (name, r.json()["data"][1])
    record_property("preview", json.dumps({"names_tried": 3, "served": 0}))


def test_preview_still_plays_a_used_file(tmp_path):
    from distill.app.service import DistillApp
    from distill.runs import write_manifest

    src = tmp_path / "sounds"
    (src / "a").mkdir(parents=True)
    sf.write(src / "a" / "one.wav", _sine(), 24_000)
    sf.write(src / "two.wav", _sine(), 24_000)
    app = DistillApp(tmp_path / "ws")
    run = tmp_path / "ws" / "runs" / "r"
    run.mkdir()
    write_manifest(run, {"status": "done", "source": str(src), "files": {"used": [{"path": "a/one.wav"}], "skipped": []}})
    sr, wave = app.file_audio(run, "a/one.wav")
    assert sr == 24_000 and len(wave) == 24_000
    assert app.file_audio(run, "two.wav") is None  # under the source folder, but not a file the run used


# --- hole 3: IPv6 loopback ----------------------------------------------------------------------------


def _tiny_app(guard_kwargs: dict):
    from starlette.applications import Starlette
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route

    async def hello(request):
        return PlainTextResponse("secret data")

    mw = guard_kwargs["app_kwargs"]["middleware"]
    return Starlette(routes=[Route("/{p:path}", hello, methods=["GET", "POST"])], middleware=mw)


@pytest.mark.parametrize("host", ["::1", "[::1]", "127.0.0.1", "localhost"])
def test_host_guard_treats_every_loopback_name_alike(host):
    from starlette.testclient import TestClient

    from app import host_guard

    guard = host_guard(host)
    assert guard, host
    client = TestClient(_tiny_app(guard), base_url="http://127.0.0.1:7860")
    for ok_host in ("[::1]:7860", "127.0.0.1:7860", "localhost:7860"):
        assert client.get("/x", headers={"host": ok_host}).text == "secret data", ok_host
        same = ok_host.rsplit(":", 1)[0]
        r = client.post("/x", headers={"host": ok_host, "origin": f"http://{same}:7860"})
        assert r.status_code == 200, (ok_host, r.status_code)
    for bad_host in ("evil.example:7860", "[::2]:7860", "127.0.0.1.evil.example", ""):
        r = client.get("/x", headers={"host": bad_host})
        assert r.status_code == 400 and "secret" not in r.text, bad_host


def test_guard_refuses_other_sites_on_any_host():
    from starlette.testclient import TestClient

    from app import host_guard

    for host in ("::1", "0.0.0.0"):
        client = TestClient(_tiny_app(host_guard(host)), base_url="http://[::1]:7860")
        h = {"host": "[::1]:7860"}
        refused = [
            {"origin": EVIL}, {"origin": "null"}, {"origin": "http://[::1]:7861"}, {"origin": "http://localhost:7860"},
            {"sec-fetch-site": "cross-site", "sec-fetch-mode": "cors"},
            {"sec-fetch-site": "same-site", "sec-fetch-mode": "no-cors"},
        ]
        for extra in refused:
            for method in ("GET", "POST"):
                r = client.request(method, "/gradio_api/info", headers={**h, **extra})
                assert r.status_code == 403 and "secret" not in r.text, (host, method, extra)
                assert "access-control-allow-origin" not in r.headers
        # a link from another site still opens the page; the page's own requests pass
        nav = {"sec-fetch-site": "cross-site", "sec-fetch-mode": "navigate"}
        assert client.get("/", headers={**h, **nav}).status_code == 200
        assert client.post("/", headers={**h, **nav}).status_code == 403  # a cross-site form post
        assert client.post("/x", headers={**h, "origin": "http://[::1]:7860", "sec-fetch-site": "same-origin"}).status_code == 200


def test_launched_on_ipv6_loopback_other_sites_get_nothing(tmp_path, record_property):
    port = free_port()
    proc = start_app(tmp_path / "ws", port, tmp_path / "app.log", host="[::1]")
    try:
        url = f"http://[::1]:{port}/"
        evil = httpx.get(url + "gradio_api/info", headers={"Origin": EVIL}, timeout=10)
        assert "access-control-allow-origin" not in evil.headers, dict(evil.headers)
        assert evil.status_code == 403 and "named_endpoints" not in evil.text
        run = httpx.post(url + "gradio_api/run/list_runs", json={"data": []}, headers={"Origin": EVIL}, timeout=10)
        assert run.status_code == 403 and "access-control-allow-origin" not in run.headers
        rebound = httpx.get(url + "gradio_api/info", headers={"Host": f"attacker.example:{port}"}, timeout=10)
        assert rebound.status_code == 400  # DNS rebinding: a foreign Host is refused on ::1 too
        own = httpx.get(url + "gradio_api/info", headers={"Origin": url.rstrip("/")}, timeout=10)
        assert own.status_code == 200 and "named_endpoints" in own.text
        assert httpx.get(url, timeout=10).status_code == 200
    finally:
        stop_app(proc)
    record_property("ipv6", json.dumps({"foreign_origin_refused": True, "acao": None, "foreign_host_refused": True}))


# --- hole 4: other sites, inline uploads, quota ----------------------------------------------------------


def _upload(server, name: str, data: bytes, headers: dict | None = None) -> httpx.Response:
    return httpx.post(f"{server.url}gradio_api/upload", files={"files": (name, data)}, headers=headers or {}, timeout=30)


def _cache_files(server) -> set[Path]:
    return {p for p in (server.ws / "tmp").rglob("*") if p.is_file()} if (server.ws / "tmp").is_dir() else set()


def test_other_sites_cannot_upload_or_call_the_api(server, record_property):
    before = _cache_files(server)
    r = _upload(server, "evil.wav", b"RIFF" + b"\0" * 100, {"Origin": EVIL})
    assert r.status_code == 403 and "access-control-allow-origin" not in r.headers
    assert _cache_files(server) == before  # nothing was stored
    r = httpx.post(f"{server.url}gradio_api/run/list_runs", json={"data": []}, headers={"Origin": EVIL}, timeout=10)
    assert r.status_code == 403 and "data" not in r.text
    own = _upload(server, "own.wav", b"RIFF" + b"\0" * 100, {"Origin": server.url.rstrip("/")})
    assert own.status_code == 200, own.text
    record_property("cross_site", json.dumps({"refused": 2, "stored": 0}))


def test_a_non_audio_upload_is_never_served_inline(server, record_property):
    page = b"<html><script>alert(document.domain)</script></html>"
    served = []
    for name in ("x.html", "x.svg", "x.js", "x.txt"):
        path = _upload(server, name, page).json()[0]
        r = httpx.get(f"{server.url}gradio_api/file={path}", timeout=10)
        assert r.status_code == 200
        ctype, disposition = r.headers.get("content-type", ""), r.headers.get("content-disposition", "")
        assert not ctype.startswith(("text/", "image/svg", "application/javascript")), (name, ctype)
        assert disposition.startswith("attachment") and r.headers.get("x-content-type-options") == "nosniff", (name, disposition)
        served.append(name)
    # the copy an ingest makes inside the workspace (datasets/) is not served inline either
    path = _upload(server, "y.html", page).json()[0]
    res = server.call("ingest", json.dumps({"files": [{"path": path, "rel": "d/y.html"}, {"path": path, "rel": "d/z.html"}]}))
    copied = next((server.ws / "datasets").rglob("y.html"))
    r = httpx.get(f"{server.url}gradio_api/file={copied}", timeout=10)
    assert r.status_code == 200 and r.headers["content-disposition"].startswith("attachment"), (res, dict(r.headers))
    # audio still plays inline
    wav = server.base / "tone.wav"
    sf.write(wav, _sine(0.2), 24_000)
    path = _upload(server, "tone.wav", wav.read_bytes()).json()[0]
    r = httpx.get(f"{server.url}gradio_api/file={path}", timeout=10)
    assert r.headers["content-type"].startswith("audio/") and not r.headers.get("content-disposition", "").startswith("attachment")
    record_property("inline", json.dumps({"kinds": len(served) + 1, "inline": 0}))


def test_uploads_waiting_in_the_workspace_have_a_quota(server, record_property):
    import shutil

    blob = np.random.default_rng(0).bytes(1024 * 1024)
    refused = None
    for i in range(QUOTA_MB + 3):
        r = _upload(server, f"chunk{i}.wav", blob)
        if r.status_code != 200:
            refused = r
            break
    assert refused is not None, "no quota: every upload was taken"
    assert refused.status_code == 413 and "upload space" in refused.text and "MB" in refused.text, refused.text
    # making room (the day-old cleanup, or the user emptying it) lets uploads in again
    for p in (server.ws / "tmp").iterdir():
        shutil.rmtree(p) if p.is_dir() else p.unlink()
    assert _upload(server, "after.wav", blob).status_code == 200
    record_property("quota", json.dumps({"quota_mb": QUOTA_MB, "accepted_before_refusal": i, "message": refused.text}))


# --- hole 5: audio decompression bombs ------------------------------------------------------------------

SCAN_CHILD = textwrap.dedent("""
    import json, os, resource, sys, threading, time

    def watchdog(limit=1536 * 1024 * 1024):  # stop a runaway decode before it hurts the machine
        page = os.sysconf("SC_PAGE_SIZE")
        while True:
            with open("/proc/self/statm") as fh:
                rss = int(fh.read().split()[1]) * page
            if rss > limit:
                print(json.dumps({"killed_at_mb": rss // 2**20}), flush=True)
                os._exit(3)
            time.sleep(0.01)

    threading.Thread(target=watchdog, daemon=True).start()
    from distill.scan import scan_dataset

    t0 = time.time()
    report = scan_dataset(sys.argv[1], cache_dir=sys.argv[2], keep_features=False, workers=4)
    print(json.dumps({"peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "seconds": time.time() - t0,
                      "entries": [[e.path, e.status, e.reason] for e in report.entries]}))
""")


def test_tiny_files_that_decode_to_gigabytes_are_skipped_from_their_header(tmp_path, record_property):
    from badfiles import silent_flac

    folder = tmp_path / "bombs"
    folder.mkdir()
    for i in range(4):  # 8 channels × 192 kHz × 600 s: about 1 MB on disk, 3.7 GB decoded, each
        silent_flac(folder / f"bomb{i}.flac", tag=i)
    sf.write(folder / "fine.wav", _sine(), 24_000)
    out = subprocess.run([sys.executable, "-c", SCAN_CHILD, str(folder), str(tmp_path / "cache")], cwd=REPO,
                         capture_output=True, text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert out.returncode == 0, (out.stdout[-500:], out.stderr[-2000:])
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["peak_mb"] < 1024, result["peak_mb"]
    got = {path: (status, reason) for path, status, reason in result["entries"]}
    assert got["fine.wav"] == ("used", "")
    for i in range(4):
        status, reason = got[f"bomb{i}.flac"]
        assert status == "skipped" and reason.startswith("too much audio to decode safely"), reason
        assert "8 channels" in reason and "192 kHz" in reason and "GB" in reason, reason
    record_property("bombs", json.dumps({"files": 4, "decoded_gb_each": 3.7, "peak_mb": round(result["peak_mb"]),
                                         "skipped": 4, "reason": got["bomb0.flac"][1]}))


def test_the_longest_stereo_file_still_decodes_in_bounded_memory(tmp_path):
    """Stereo at 192 kHz past 10 minutes is within the limit: cut to 10 minutes as before, not refused."""
    import tracemalloc

    from badfiles import silent_flac
    from distill.audio.io import AudioSkip, decode_file
    from distill.config import AudioConfig

    path = silent_flac(tmp_path / "long.flac", channels=2, seconds=601)
    tracemalloc.start()
    with pytest.raises(AudioSkip, match="^digital silence$"):
        decode_file(path, AudioConfig())
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 600 * 2**20, peak  # the mono copy (460 MB), never the 920 MB of both channels
