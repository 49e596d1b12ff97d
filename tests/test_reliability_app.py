"""Reliability through the running app (issue 6), `python app.py` driven over HTTP on 127.0.0.1:

- bad input through the API: the badfiles corpus (1-hour file included), hostile uploads and
  archives, 5,000 tiny files; every file gets an outcome and a reason, the server keeps answering,
  and training on the mixed folder uses exactly the good files;
- the server: listens on 127.0.0.1 only, serves nothing outside the workspace and its upload cache
  (absolute paths, '../' in every spelling, links inside the workspace pointing out), and refuses
  oversize uploads itself;
- 20 concurrent clients polling, listing and generating while a job trains; simultaneous starts
  give exactly one job;
- kill -9 mid-training, then a restart: the run is marked interrupted on disk, stale temp files are
  swept, a second app on the same workspace is refused, finished runs still generate.

Each test records its figures with `record_property` (bench/reliability_report.py prints them).
"""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.parse
from pathlib import Path

import httpx
import pytest

from badfiles import MB, make_corpus, make_hostile_uploads
from conftest import REPO, TINY, Server, free_port, write_synthetic_folder

MAX_FILE_MB, MAX_UPLOAD_MB = 8, 12  # the app's upload limits in this test (flags' env defaults)
CLIENTS = 20
@pytest.fixture(scope="module")
def server(tmp_path_factory):
    base = tmp_path_factory.mktemp("reliability")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("OMP_NUM_THREADS", "1")  # the app shares 2 cores with this test's clients
        mp.setenv("DISTILL_MAX_FILE_MB", str(MAX_FILE_MB))
        mp.setenv("DISTILL_MAX_UPLOAD_MB", str(MAX_UPLOAD_MB))
        srv = Server(base)
        srv.start()
        yield srv
        srv.stop()


@pytest.fixture(scope="module")
def corpus(server):
    folder = server.base / "corpus" / "mixed folder"
    return folder, make_corpus(folder, big=True)


@pytest.fixture(scope="module")
def finished_run(server, corpus):
    """A quick run trained through the API on the mixed corpus folder (bad files and all)."""
    folder, _ = corpus
    res = server.call("start", str(folder), *TINY)
    assert res["ok"], res
    st = server.wait(lambda s: not s["running"], 120)
    assert st["state"] == "done", st["message"]
    return res["run_id"]


def _outcomes(report: dict) -> dict[str, tuple[str, str]]:
    out = {f["file_path"]: ("used", "") for f in report["files_used"]}
    out.update({f["file_path"]: ("skipped", f["reason"]) for f in report["files_skipped"]})
    return out


# --- 1. bad input through the API --------------------------------------------------------------


def test_bad_files_through_the_api_and_training_on_the_mixed_folder(server, corpus, finished_run, record_property):
    folder, cases = corpus
    res = server.call("scan", str(folder))
    assert res["ok"], res
    got = _outcomes(res["report"])
    problems = [(c.kind, c.path, got.get(c.path)) for c in cases
                if c.path not in got or got[c.path][0] != c.expect or c.reason.lower() not in got[c.path][1].lower()]
    assert not problems, problems
    assert all(reason for status, reason in got.values() if status == "skipped")
    assert res["report"]["counts"]["files_seen"] == len(got)
    hour = next(f for f in res["report"]["files_used"] if f["file_path"] == "good/one_hour.wav")
    assert hour["truncated"] and hour["seconds"] == pytest.approx(3600, abs=1)
    assert res["tier_card"]["tier"] == 2  # the good files set the tier, the bad ones do not count

    # training on the mixed folder used exactly the good files (the 1-hour one cut to 10 min)
    manifest = json.loads((server.ws / "runs" / finished_run / "manifest.json").read_text())
    expected_used = {c.path for c in cases if c.expect == "used"}
    assert {f["path"] for f in manifest["files"]["used"]} == expected_used
    assert manifest["status"] == "done"
    codes = server.call("codes", finished_run, "good/one_hour.wav")
    assert codes["ok"] and set(codes["files"]) <= expected_used and codes["file"] == "good/one_hour.wav"
    per_second = 24_000 / 256 / 4
    assert len(codes["codes"]) == pytest.approx(600 * per_second, rel=0.02)  # cut at AudioConfig.max_seconds

    # hostile strings where a folder is expected: a plain refusal, never a server error
    for text in ["", "\x00", "a" * 5000, str(folder) + "\x00x", str(folder / "good" / "plain.wav"),
                 str(server.base / "no such folder")]:
        r = server.call("scan", text)
        assert not r["ok"] and r["message"], (text[:40], r)
        if text:  # an empty source means "the folder scanned last", by design
            s = server.call("start", text, *TINY)
            assert not s["ok"] and s["message"], (text[:40], s)
    assert server.call("status")["state"] == "done"  # no run was started by those

    # hostile settings and ids: refused in words, and the finished run is left as it was
    gen = ["generate", finished_run, 0.3, 1.0, 0, 1.0, 0, 1, "wav", ""]
    hostile_calls = [
        [*gen[:2], 1e9, *gen[3:]], [*gen[:6], 2**70, *gen[7:]], [*gen[:8], "exe", ""], [*gen[:9], "../../etc/passwd"],
        ["generate", "../../etc", *gen[2:]], ["codes", "../runs", ""], ["retrain", finished_run, "bogus", 0.1, {}],
        ["retrain", "../../etc", "quick", 0.1, {}],
    ]
    for name, *args in hostile_calls:
        r = server.call(name, *args)
        assert not r["ok"] and r["message"], (name, args, r)
    runs = {r["id"]: r for r in server.call("list_runs")}
    assert runs[finished_run]["status"] == "done" and server.call("status")["job"] == "train"
    kinds = {c.kind for c in cases}
    record_property("bad_files", json.dumps({
        "kinds": len(kinds), "files": len(cases), "used": sum(c.expect == "used" for c in cases),
        "skipped": sum(c.expect == "skipped" for c in cases), "hostile_strings": 6 + len(hostile_calls), "crashes": 0,
        "trained_on": len(manifest["files"]["used"])}))


def test_five_thousand_tiny_files(server, record_property):
    """5,000 files is the scan's cap: all are judged, one by one; the 5,001st folder is refused in words."""
    import numpy as np
    import soundfile as sf

    folder = server.base / "five thousand"
    rng = np.random.default_rng(0)
    n = 5000
    for i in range(n):
        d = folder / f"d{i // 500}"
        if i % 500 == 0:
            d.mkdir(parents=True)
        if i % 10 == 9:  # every tenth is too short to use
            sf.write(d / f"t{i:04d}.wav", (0.3 * rng.standard_normal(200)).astype(np.float32), 8000)
        else:
            sf.write(d / f"t{i:04d}.wav", (0.3 * rng.standard_normal(480)).astype(np.float32), 8000)
    t0 = time.time()
    res = server.call("scan", str(folder), timeout=120)
    elapsed = time.time() - t0
    assert res["ok"], res
    got = _outcomes(res["report"])
    assert len(got) == n
    short = {p for p, (status, reason) in got.items() if status == "skipped"}
    assert short == {f"d{i // 500}/t{i:04d}.wav" for i in range(9, n, 10)}
    assert all("too short" in got[p][1] for p in short)
    (folder / "one too many.wav").write_bytes(b"x")
    refused = server.call("scan", str(folder))
    assert not refused["ok"] and "more than 5000 files" in refused["message"]
    assert server.call("status")  # still answering
    record_property("five_thousand", json.dumps({"files": n, "used": n - len(short), "skipped": len(short),
                                                  "scan_s": round(elapsed, 1), "5001_refused": True}))


def test_hostile_uploads_and_archives(server, record_property):
    from distill.app.uploads import UploadLimits

    limits = UploadLimits(max_file_bytes=MAX_FILE_MB * MB, max_total_bytes=MAX_UPLOAD_MB * MB)
    cases = make_hostile_uploads(server.base / "uploads", limits)
    datasets = server.ws / "datasets"
    before = set(datasets.iterdir()) if datasets.is_dir() else set()
    uploaded: dict[str, str] = {}
    results = {}
    for case in cases:
        files = []
        for local, rel in case.files:
            if not case.raw and str(local) not in uploaded:
                uploaded[str(local)] = server.upload(local)
            files.append({"path": str(local) if case.raw else uploaded[str(local)], "rel": rel})
        res = server.call("ingest", json.dumps({"files": files}))
        results[case.kind] = res
        assert res["ok"] == (case.expect == "ingested"), (case.kind, res.get("message"))
        assert case.reason.lower() in res["message"].lower(), (case.kind, res["message"])
        if res["ok"]:  # every file that arrived has an outcome and, when skipped, a reason
            got = _outcomes(res["report"])
            assert got and all(status == "used" or reason for status, reason in got.values()), (case.kind, got)

    folder_zip = _outcomes(results["zip of a folder (equal names, macOS junk)"]["report"])
    assert folder_zip == {"a/hit.wav": ("used", ""), "b/hit.wav": ("used", "")}
    nested = _outcomes(results["zip inside a zip"]["report"])
    assert nested["good2.wav"][0] == "used" and "not an audio file" in nested["inner.zip"][1]
    linked = _outcomes(results["zip with a symlink member"]["report"])
    assert set(linked) == {"good.wav"}
    dup = _outcomes(results["equal names in one upload"]["report"])
    assert set(dup) == {"same.wav", "same (2).wav"} and all(s == "used" for s, _ in dup.values())

    # forged requests the drop zone never sends
    some = Path(next(iter(uploaded.values())))
    cache_link = some.parent / "link-out.wav"
    os.symlink("/etc/passwd", cache_link)  # a link inside the upload cache that points out
    forged = {
        "'..' out of the upload cache": {"files": [{"path": str(some.parent / "../../../../../etc/passwd"), "rel": "p.wav"}]},
        "link in the upload cache pointing out": {"files": [{"path": str(cache_link), "rel": "p.wav"}]},
        "upload cache folder itself": {"files": [{"path": str(some.parent), "rel": "d.wav"}]},
        "garbled payload": "this is not json",
        "files not a list": {"files": "x"},
        "empty upload": {"files": []},
        "entry without a name": {"files": [{"path": str(some)}]},
    }
    for kind, payload in forged.items():
        res = server.call("ingest", payload if isinstance(payload, str) else json.dumps(payload))
        assert not res["ok"] and res["message"], (kind, res)
        results[kind] = res

    # oversize: Gradio itself refuses past max_file_size (HTTP 413) and keeps nothing
    big = server.base / "oversize.wav"
    big.write_bytes(os.urandom(MAX_FILE_MB * MB + 1024))
    with open(big, "rb") as fh:
        r = httpx.post(f"{server.url}gradio_api/upload", files={"files": ("oversize.wav", fh)}, timeout=60)
    assert r.status_code == 413 and "maximum allowed size" in r.text
    kept = [p for p in (server.ws / "tmp").rglob("*") if p.is_file() and p.stat().st_size > MAX_FILE_MB * MB]
    assert not kept, kept
    results["file over the server's size limit (HTTP 413)"] = {"ok": False}

    # nothing escaped, refused uploads left no dataset folder behind, and the server still answers
    escaped = [p for p in server.base.rglob("*evil*")] + [p for p in Path("/tmp").glob("evil*")]
    assert not escaped, escaped
    new = set(datasets.iterdir()) - before
    assert len(new) == sum(c.expect == "ingested" for c in cases), sorted(p.name for p in new)
    assert server.call("status")
    record_property("uploads", json.dumps({
        "kinds": len(results), "refused": sum(not r["ok"] for r in results.values()),
        "ingested": sum(bool(r["ok"]) for r in results.values()), "escaped": 0}))


# --- 2. the server: binding, file routes --------------------------------------------------------


def _listeners(port: int) -> list[str]:
    """Local addresses (hex, as in /proc/net/tcp*) listening on `port`."""
    out = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        assert os.path.exists(table) or table.endswith("6"), f"{table} missing: this check needs Linux"
        if not os.path.exists(table):
            continue
        for line in Path(table).read_text().splitlines()[1:]:
            parts = line.split()
            addr, st = parts[1], parts[3]
            if st == "0A" and int(addr.rsplit(":", 1)[1], 16) == port:
                out.append(addr.rsplit(":", 1)[0])
    return out


def test_binds_localhost_and_serves_nothing_outside(server, record_property):
    assert _listeners(server.port) == ["0100007F"]  # 127.0.0.1, and nothing on IPv6 / all interfaces

    secret = f"TOPSECRET-{os.getpid()}-{time.time_ns()}"
    outside = server.base / "outside_secret.txt"
    outside.write_text(secret)
    inside = server.ws / "runs" / "served_probe.txt"
    inside.write_text("inside the workspace")
    links = server.ws / "runs" / "links"
    links.mkdir(exist_ok=True)
    for name, target in (("passwd", "/etc/passwd"), ("secret.txt", outside), ("rel.txt", "../../../outside_secret.txt")):
        (links / name).unlink(missing_ok=True)
        os.symlink(target, links / name)
    (server.ws / "runs" / "dirlink").unlink(missing_ok=True)
    os.symlink(server.base, server.ws / "runs" / "dirlink", target_is_directory=True)

    def get(path: str, method: str = "GET") -> httpx.Response:
        # raw: no client-side normalisation of '..' or percent-escapes
        return httpx.request(method, server.url + path, timeout=10)

    # DNS rebinding: a page whose own name resolves to 127.0.0.1 is refused by the Host check
    rebound = httpx.post(server.url + "gradio_api/run/list_runs", json={"data": []}, timeout=10,
                         headers={"Host": f"attacker.example:{server.port}", "Origin": f"http://attacker.example:{server.port}"})
    assert rebound.status_code == 400 and "data" not in rebound.text
    assert httpx.get(f"http://localhost:{server.port}/", timeout=10).status_code == 200

    ok = get("gradio_api/file=" + str(inside))
    assert ok.status_code == 200 and ok.text == "inside the workspace"  # the route works: refusals mean something

    ws, q = str(server.ws), urllib.parse.quote
    hostile = [
        "gradio_api/file=/etc/passwd", "gradio_api/file//etc/passwd", "gradio_api/file=" + q("/etc/passwd", safe=""),
        "gradio_api/file=/proc/self/environ", "gradio_api/file=" + str(outside), "gradio_api/file=" + str(REPO / "app.py"),
        f"gradio_api/file={ws}/../outside_secret.txt", f"gradio_api/file={ws}/runs/../../outside_secret.txt",
        f"gradio_api/file={ws}/%2e%2e/outside_secret.txt", f"gradio_api/file={ws}%2F..%2Foutside_secret.txt",
        f"gradio_api/file={ws}/%252e%252e/outside_secret.txt", f"gradio_api/file={ws}/tmp/../../outside_secret.txt",
        "gradio_api/file=" + q(f"{ws}/../outside_secret.txt", safe=""), "gradio_api/file=../../../../../../etc/passwd",
        f"gradio_api/file={ws}/runs/links/passwd", f"gradio_api/file={ws}/runs/links/secret.txt",
        f"gradio_api/file={ws}/runs/links/rel.txt", f"gradio_api/file={ws}/runs/dirlink/outside_secret.txt",
        "gradio_api/file=file:///etc/passwd", f"gradio_api/file=http://127.0.0.1:{server.port}/gradio_api/info",
        "gradio_api/proxy=http://127.0.0.1:22/", "static/../../../../../../etc/passwd",
        "static/..%2F..%2F..%2F..%2F..%2F..%2Fetc%2Fpasswd", "assets/..%2F..%2F..%2F..%2F..%2F..%2Fetc%2Fpasswd",
        "file=/etc/passwd", "gradio_api/file/" + str(outside),
    ]
    leaks = []
    for path in hostile:
        for method in ("GET", "HEAD"):
            r = get(path, method)
            if r.status_code < 400 or secret in r.text or "root:" in r.text:
                leaks.append((method, path, r.status_code, r.text[:80]))
    assert not leaks, leaks
    record_property("file_routes", json.dumps({"hostile_urls": len(hostile) * 2, "served": 0, "listen": "127.0.0.1",
                                              "foreign_host_refused": True}))


# --- 3. concurrency ----------------------------------------------------------------------------


def test_concurrent_clients_while_training(server, finished_run, record_property):
    from gradio_client import Client

    data = write_synthetic_folder(server.base / "concurrency", n=6, seconds=1.0)
    runs_before = set((server.ws / "runs").iterdir())
    samples_before = len(list((server.ws / "runs" / finished_run / "samples").glob("*.json")))

    # simultaneous starts from idle: exactly one job
    barrier, starts = threading.Barrier(4), []

    def racer(i):
        barrier.wait(10)
        starts.append(server.call("start", str(data), "quick", 0.2, "cpu", i, 3, {}, {}))

    racers = [threading.Thread(target=racer, args=(i,)) for i in range(4)]
    for t in racers:
        t.start()
    for t in racers:
        t.join(30)
    winners = [s for s in starts if s["ok"]]
    assert len(starts) == 4 and len(winners) == 1, starts
    run_id = winners[0]["run_id"]
    assert all("already" in s["message"] and s["run_id"] == run_id for s in starts if not s["ok"])
    assert {p.name for p in set((server.ws / "runs").iterdir()) - runs_before} == {run_id}

    errors, latencies, counts, generated = [], [], {"status": 0, "list_runs": 0, "codes": 0, "scan": 0, "generate": 0}, []
    lock = threading.Lock()
    while_training = [0]  # status answers that saw the job running: the load really overlapped training
    deadline = time.time() + 75

    def client(i: int) -> None:
        gc = Client(server.url, verbose=False) if i < 4 else None  # four go through Gradio's queue
        for rnd in range(60):
            try:
                t0 = time.perf_counter()
                st = gc.predict(api_name="/status") if gc else server.call("status", timeout=30)
                with lock:
                    latencies.append(time.perf_counter() - t0)
                    counts["status"] += 1
                    while_training[0] += bool(st.get("running"))
                if not st.get("state"):
                    raise AssertionError(f"status without a state: {st}")
                if rnd % 2 == 0:
                    runs = gc.predict(api_name="/list_runs") if gc else server.call("list_runs", timeout=30)
                    assert any(r["id"] == finished_run and r["status"] == "done" for r in runs)
                    with lock:
                        counts["list_runs"] += 1
                if rnd % 4 == 1 and i >= 4:
                    c = server.call("codes", finished_run, "", timeout=30)
                    assert c["ok"], c
                    with lock:
                        counts["codes"] += 1
                if rnd % 5 == 2 and i >= 16:  # rescans share the feature cache with the training job
                    sc = server.call("scan", str(data), timeout=60)
                    assert sc["ok"] and len(sc["report"]["files_used"]) == 6, sc.get("message")
                    with lock:
                        counts["scan"] += 1
                if rnd % 3 == 0 and i % 5 == 0:
                    g = (gc.predict(finished_run, 0.3, 1.0, 0, 1.0, 100 * i + rnd, 1, "wav", "", api_name="/generate")
                         if gc else server.call("generate", finished_run, 0.3, 1.0, 0, 1.0, 100 * i + rnd, 1, "wav", "",
                                                timeout=60))
                    assert g["ok"] and Path(g["samples"][0]["file_path"]).is_file(), g
                    with lock:
                        counts["generate"] += 1
                        generated.append(g["samples"][0]["id"])
            except Exception as exc:  # noqa: BLE001 (every failure is collected and reported)
                with lock:
                    errors.append(f"client {i} round {rnd}: {type(exc).__name__}: {str(exc)[:200]}")
                return
            if (rnd >= 5 and not st.get("running")) or time.time() > deadline:
                return
            time.sleep(0.1)

    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(CLIENTS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(max(1.0, deadline + 15 - time.time()))
    hung = [t.name for t in threads if t.is_alive()]
    assert not hung, f"clients still waiting (deadlock?): {hung}"
    assert not errors, errors[:5]
    st = server.wait(lambda s: not s["running"], 90)
    assert st["state"] == "done" and st["run_id"] == run_id, st["message"]
    assert (server.ws / "runs" / run_id / "prior.safetensors").is_file()
    samples = list((server.ws / "runs" / finished_run / "samples").glob("*.json"))
    assert len(samples) == samples_before + counts["generate"] and len(set(generated)) == counts["generate"]
    assert counts["generate"] >= 4 and counts["status"] >= CLIENTS * 5 and while_training[0] >= CLIENTS
    latencies.sort()
    p95_ms = round(1000 * latencies[int(0.95 * (len(latencies) - 1))])
    record_property("concurrency", json.dumps({
        "clients": CLIENTS, "requests": sum(counts.values()), **counts, "errors": 0, "simultaneous_starts": 4,
        "jobs_started": 1, "polls_while_training": while_training[0], "status_p95_ms": p95_ms, "job_finished": True}))


# --- 4. kill -9 mid-training, restart ----------------------------------------------------------


def test_kill_9_mid_training_then_restart_recovers(server, finished_run, record_property):
    """Runs last: it kills the module's app and leaves the restarted one for the fixture to stop."""
    data = write_synthetic_folder(server.base / "killme", n=6, seconds=1.0)
    res = server.call("start", str(data), "quick", 1.0, "cpu", 7, 3, {}, {})
    assert res["ok"], res
    run = server.ws / "runs" / res["run_id"]
    server.wait(lambda s: "vqvae_step" in (s.get("latest") or {}) or not s["running"], 60, every=0.2)
    # what a writer killed mid-save leaves behind (storage writes '.<name>.<random>.tmp', then renames)
    stale = [run / ".vqvae.safetensors.k1ll3d.tmp", server.ws / "runs" / finished_run / "samples" / ".x.wav.k1ll3d.tmp"]
    for p in stale:
        p.write_bytes(b"half a file")
    server.proc.send_signal(signal.SIGKILL)
    server.proc.wait(10)
    assert json.loads((run / "manifest.json").read_text())["status"] == "running"  # as the crash left it

    server.start()
    found = re.search(r"(\d+) run\(s\) marked interrupted, (\d+) stale temp file\(s\) removed", server.log.read_text())
    assert found and int(found[1]) == 1 and int(found[2]) >= len(stale), server.log.read_text()[-2000:]
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["status"] == "interrupted" and "stopped while" in manifest["message"]  # on disk, not only shown
    assert not any(p.exists() for p in stale)

    # one app per workspace: a second one is refused at once and in words
    second = subprocess.run([sys.executable, str(REPO / "app.py"), "--workspace", str(server.ws), "--port",
                             str(free_port()), "--no-browser"], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert second.returncode != 0 and "already using the workspace" in second.stderr

    runs = {r["id"]: r for r in server.call("list_runs")}
    assert runs[res["run_id"]]["status"] == "interrupted" and runs[finished_run]["status"] == "done"
    assert server.call("status")["state"] == "idle"
    gen = server.call("generate", finished_run, 0.3, 1.0, 0, 1.0, 5, 1, "wav", "")
    assert gen["ok"] and Path(gen["samples"][0]["file_path"]).is_file()
    assert server.call("codes", finished_run, "")["ok"]
    record_property("app_kill", json.dumps({"kills": 1, "restarts": 1, "runs_lost": 0, "marked_interrupted": 1,
                                             "temp_files_swept": int(found[2]), "second_app_refused": True}))
