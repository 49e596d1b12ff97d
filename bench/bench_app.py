"""Responsiveness of the app while it trains, measured through the real HTTP API (gradio_client).

    python bench/bench_app.py [--polls 200] [--dataset assets/demo] [--minutes M]

Prints:
  * status endpoint latency over N polls with nothing running (baseline) and while a training job
    runs on both cores (target: p95 < 250 ms), as plain HTTP (the endpoint itself: what the page's
    fetch or curl sees) and through gradio_client (which adds its own ~100 ms per call);
  * time from the start call to the first loss point on the demo dataset (target < 10 s);
  * wall time of the whole quick preset on the demo dataset (target < 3 min).
The app runs as `python app.py` in its own process with a fresh workspace, as a user would start it.
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(workspace: Path, port: int, log: Path) -> subprocess.Popen:
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "DISTILL_CACHE": str(workspace / "cache")}
    env.pop("GRADIO_TEMP_DIR", None)
    proc = subprocess.Popen([sys.executable, str(REPO / "app.py"), "--workspace", str(workspace), "--port", str(port),
                             "--no-browser"], cwd=REPO, env=env, stdout=open(log, "w"), stderr=subprocess.STDOUT)
    deadline = time.time() + 90
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2):
                return proc
        except OSError:
            if proc.poll() is not None:
                raise SystemExit(f"app exited:\n{log.read_text()[-2000:]}")
            time.sleep(0.3)
    proc.kill()
    raise SystemExit("app did not start in 90 s")


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(round(q * (len(s) - 1))))]


def http_status(base: str) -> dict:
    """One plain HTTP poll of the status endpoint (what a browser's fetch or curl does)."""
    req = urllib.request.Request(base + "gradio_api/run/status", data=b'{"data": []}',
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.loads(r.read())["data"][0]


def poll_latencies(poll, n: int, gap: float = 0.02) -> tuple[list[float], list[dict]]:
    out, snaps = [], []
    for _ in range(n):
        t0 = time.perf_counter()
        snaps.append(poll())
        out.append((time.perf_counter() - t0) * 1000)
        time.sleep(gap)
    return out, snaps


def describe(name: str, ms: list[float]) -> str:
    return (f"{name:<28} n={len(ms):4d}  p50 {statistics.median(ms):6.1f} ms  p95 {pct(ms, 0.95):6.1f} ms  "
            f"max {max(ms):6.1f} ms")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--polls", type=int, default=200)
    ap.add_argument("--dataset", default=str(REPO / "assets" / "demo"))
    ap.add_argument("--minutes", type=float, default=None, help="time budget (default: the quick preset's)")
    args = ap.parse_args()
    from gradio_client import Client

    with tempfile.TemporaryDirectory(prefix="distill-bench-") as tmp:
        ws = Path(tmp) / "workspace"
        port = free_port()
        t_launch = time.perf_counter()
        proc = launch(ws, port, Path(tmp) / "app.log")
        print(f"app up in {time.perf_counter() - t_launch:.1f} s (cpu cores: {os.cpu_count()})")
        try:
            client = Client(f"http://127.0.0.1:{port}/", verbose=False)
            scan = client.predict(args.dataset, api_name="/scan")
            assert scan["ok"], scan
            print(f"dataset: {len(scan['report']['files_used'])} files, {scan['report']['total_seconds']:.1f} s of audio, "
                  f"tier {scan['tier_card']['tier']}")

            base = f"http://127.0.0.1:{port}/"
            via_http = lambda: http_status(base)  # noqa: E731
            via_client = lambda: client.predict(api_name="/status")  # noqa: E731
            idle, _ = poll_latencies(via_http, min(args.polls, 100))
            idle_c, _ = poll_latencies(via_client, min(args.polls, 50))
            print(describe("status HTTP, idle", idle))
            print(describe("status gradio_client, idle", idle_c))

            t0 = time.perf_counter()
            res = client.predict(args.dataset, "quick", args.minutes, "auto", 0, 3, {}, {}, api_name="/start")
            t_start_call = time.perf_counter() - t0
            assert res["ok"], res
            first_loss = None
            while first_loss is None and time.perf_counter() - t0 < 120:
                st = via_http()
                if "vqvae_step" in (st.get("latest") or {}):
                    first_loss = time.perf_counter() - t0
                elif not st["running"]:
                    raise SystemExit(f"run ended before a loss point: {st['message']}")
                else:
                    time.sleep(0.05)
            busy, snaps = poll_latencies(via_http, args.polls)
            busy_c, snaps_c = poll_latencies(via_client, max(20, args.polls // 4))
            stages = sorted({s.get("stage") for s in snaps + snaps_c if s.get("running")})
            while True:
                st = via_http()
                if not st["running"]:
                    break
                time.sleep(0.5)
            total = time.perf_counter() - t0
            print(describe("status HTTP, training", busy) + f"  (stages seen: {', '.join(stages)})")
            print(describe("status gradio_client, train", busy_c) + "  (includes the client's own overhead)")
            print(f"{'':<28} HTTP p95 ratio training/idle: {pct(busy, 0.95) / max(pct(idle, 0.95), 1e-9):.2f}x")
            print(f"start call returned in      {t_start_call * 1000:6.1f} ms")
            print(f"start -> first loss point   {first_loss:6.2f} s   (target < 10 s)")
            print(f"whole quick preset          {total:6.1f} s   (target < 180 s)  final state: {st['state']}")
            p95 = pct(busy, 0.95)
            verdict = "PASS" if p95 < 250 and first_loss < 10 and total < 180 and st["state"] == "done" else "MISS"
            print(f"targets: {verdict}  (status p95 {p95:.0f} ms < 250, first loss {first_loss:.1f} s < 10, "
                  f"quick preset {total:.0f} s < 180)")
            try:
                load = os.getloadavg()
                print(f"load average during the run: {load[0]:.1f} (1 min), {load[1]:.1f} (5 min) on {os.cpu_count()} cores")
            except OSError:
                pass
        finally:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()


if __name__ == "__main__":
    main()
