"""Shared fixtures: synthetic audio folders, the real collections from scripts/fetch_datasets.sh, and the
app launched in a subprocess on a free port (`start_app`, `app_process`, `Server`)."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import httpx
import numpy as np
import pytest
import soundfile as sf
import torch

REPO = Path(__file__).resolve().parents[1]
FETCH = Path(os.environ.get("DISTILL_FETCH", REPO / "scripts" / "fetch_datasets.sh"))

# Tiny test models gain nothing from a second thread, and two busy processes (the test and an app
# subprocess) each spinning two OpenMP threads on 2 cores run many times slower. Children inherit this.
os.environ.setdefault("OMP_NUM_THREADS", "1")
torch.set_num_threads(1)


def tone(seconds: float, freq: float, sr: int = 24_000, kind: str = "sine", seed: int = 0) -> np.ndarray:
    t = np.arange(int(seconds * sr)) / sr
    rng = np.random.default_rng(seed)
    if kind == "sine":
        x = np.sin(2 * np.pi * freq * t)
    elif kind == "saw":
        x = 2 * ((freq * t) % 1.0) - 1
    elif kind == "noise":
        x = rng.standard_normal(t.size) * 0.3
    else:
        raise ValueError(kind)
    env = np.exp(-t * rng.uniform(0.5, 3.0))
    return (0.5 * x * env).astype(np.float32)


def write_synthetic_folder(folder: Path, n: int = 6, seconds: float = 1.0, sr: int = 24_000) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    kinds = ["sine", "saw", "noise"]
    for i in range(n):
        sub = folder / ("a" if i % 2 else "b")
        sub.mkdir(exist_ok=True)
        sf.write(sub / f"clip_{i:02d}.wav", tone(seconds, 110 * (i + 2), sr, kinds[i % 3], seed=i), sr)
    return folder


@pytest.fixture
def synth_folder(tmp_path) -> Path:
    return write_synthetic_folder(tmp_path / "sounds")


@pytest.fixture
def cache_dir(tmp_path) -> Path:
    return tmp_path / "cache"


def fetch_dataset(name: str) -> Path:
    """A real collection. Missing tools or network make the test fail (never skip)."""
    assert FETCH.is_file(), f"{FETCH} is missing: real-audio tests need scripts/fetch_datasets.sh"
    out = subprocess.run(["bash", str(FETCH), name], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, f"fetch_datasets.sh {name} failed: {out.stderr[-2000:]}"
    return Path(out.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="session")
def freedesktop_dir() -> Path:
    return fetch_dataset("freedesktop")


# --- the app in a subprocess ----------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_app(workspace: Path, port: int, log: Path, host: str = "127.0.0.1") -> subprocess.Popen:
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "DISTILL_CACHE": str(workspace / "cache"),
           "PYTHONUNBUFFERED": "1"}
    env.pop("GRADIO_TEMP_DIR", None)
    proc = subprocess.Popen([sys.executable, str(REPO / "app.py"), "--workspace", str(workspace), "--port", str(port),
                             "--no-browser", "--host", host], cwd=REPO, env=env, stdout=open(log, "w"),
                            stderr=subprocess.STDOUT)
    url = f"http://{host}:{port}/"
    deadline = time.time() + 90
    while time.time() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"app exited early:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return proc
        except OSError:
            time.sleep(0.3)
    proc.kill()
    raise AssertionError(f"app did not come up in 90 s:\n{log.read_text()[-3000:]}")


def stop_app(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


@contextmanager
def app_process(base: Path):
    """The app on a free port with its workspace in `base`: yields (url, workspace, process)."""
    ws = base / "workspace"
    port = free_port()
    proc = start_app(ws, port, base / "app.log")
    try:
        yield f"http://127.0.0.1:{port}/", ws, proc
    finally:
        stop_app(proc)


# A tiny quick run: a handful of steps, so a finished run exists within seconds.
TINY = ["quick", 0.15, "cpu", 0, 3, {"max_steps": 30, "eval_every": 10}, {"max_epochs": 2}]


class Server:
    """One app process on a free port; `call` is plain HTTP to a named API endpoint."""

    def __init__(self, base: Path):
        self.base, self.ws = base, base / "workspace"
        self.proc: subprocess.Popen | None = None
        self.starts = 0

    def start(self) -> None:
        self.starts += 1
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        self.log = self.base / f"app{self.starts}.log"
        self.proc = start_app(self.ws, self.port, self.log)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            stop_app(self.proc)

    def _http(self) -> httpx.Client:
        """One keep-alive connection per thread (a new client per call costs the caller ~10 ms of CPU)."""
        local = self.__dict__.setdefault("_local", threading.local())
        if getattr(local, "client", None) is None or local.url != self.url:
            local.client, local.url = httpx.Client(), self.url
        return local.client

    def call(self, name: str, *args, timeout: float = 60):
        r = self._http().post(f"{self.url}gradio_api/run/{name}", json={"data": list(args)}, timeout=timeout)
        assert r.status_code == 200, (name, r.status_code, r.text[:500])
        return r.json()["data"][0]

    def upload(self, path: Path) -> str:
        with open(path, "rb") as fh:
            r = httpx.post(f"{self.url}gradio_api/upload", files={"files": (Path(path).name, fh)}, timeout=60)
        assert r.status_code == 200, r.text[:300]
        return r.json()[0]

    def wait(self, pred, timeout: float, every: float = 0.5) -> dict:
        deadline, st = time.time() + timeout, {}
        while time.time() < deadline:
            st = self.call("status")
            if pred(st):
                return st
            time.sleep(every)
        raise AssertionError(f"status never matched in {timeout} s: {st.get('state')} {st.get('stage')} {st.get('message')}")
