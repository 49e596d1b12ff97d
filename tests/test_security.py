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
import subprocess
import sys
import textwrap
from pathlib import Path

import httpx
import numpy as np
import pytest
import soundfile as sf

from conftest import REPO
from test_reliability_app import TINY, Server

EVIL = "https://evil.example"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    base = tmp_path_factory.mktemp("security")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("OMP_NUM_THREADS", "1")
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
