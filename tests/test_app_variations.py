"""Variations and one-shot packs through the real app (`python app.py`) and gradio_client: every
action, and every bad input answered in words with nothing else lost. The app's workspace holds a
copy of the small saved run (tests/fixtures/saved_runs), so nothing has to train first."""
from __future__ import annotations

import zipfile
from pathlib import Path

import httpx
import numpy as np
import pytest
import soundfile as sf

from conftest import app_process
from test_saved_runs import saved_copy

SR = 24_000


@pytest.fixture(scope="module")
def app_server(tmp_path_factory):
    base = tmp_path_factory.mktemp("variations-e2e")
    saved_copy(base, "finished")  # base/workspace/runs/finished
    with app_process(base) as (url, ws, _):
        yield url, ws, base


@pytest.fixture(scope="module")
def client(app_server):
    from gradio_client import Client

    return Client(app_server[0], verbose=False)


def upload(url: str, path: Path) -> str:
    with open(path, "rb") as fh:
        r = httpx.post(f"{url}gradio_api/upload", files={"files": (path.name, fh)}, timeout=60)
    assert r.status_code == 200, r.text[:300]
    return r.json()[0]


def tone(path: Path, seconds: float, sr: int) -> Path:
    t = np.arange(int(seconds * sr)) / sr
    sf.write(path, (0.5 * np.sin(2 * np.pi * 330 * t) * np.exp(-2 * t)).astype(np.float32), sr)
    return path


def test_each_action_through_the_api(client, app_server, tmp_path):
    url, ws, _ = app_server
    samples = ws / "runs" / "finished" / "samples"

    # keep the shape of a training file: two variations in one pass
    shape = client.predict("finished", "file", "a/clip_01.wav", "shape", 1, 1.0, 2.0, 2, 4, 0.9, api_name="/vary")
    assert shape["ok"], shape
    assert shape["input"]["codes_shape"] == [18, 2] and [s["seed"] for s in shape["samples"]] == [4, 5]
    for s in shape["samples"]:
        wave, sr = sf.read(s["file_path"])
        assert sr == SR and np.abs(wave).max() > 0.1 and s["codes_shape"] == [18, 2]
        assert Path(s["sidecar"]).is_file()

    # vary this: the first result is the next input, continued from 0.3 s for 1 s
    again = client.predict("finished", "sample", shape["samples"][0]["id"], "continue", 1, 0.3, 1.0, 1, 0, 0.9,
                           api_name="/vary")
    assert again["ok"], again
    assert again["input"] == {"kind": "sample", "ref": shape["samples"][0]["id"], "name": shape["samples"][0]["id"],
                              "codes_shape": [18, 2]}
    assert again["samples"][0]["codes_shape"] == [7 + 24, 2]

    # a file of the user's own, at 8 kHz and at 192 kHz
    for rate in (8000, 192_000):
        path = upload(url, tone(tmp_path / f"mine-{rate}.wav", 0.6, rate))
        mine = client.predict("finished", "upload", path, "shape", 1, 1.0, 2.0, 1, 0, 0.9, api_name="/vary")
        assert mine["ok"], mine
        assert mine["input"]["name"] == f"mine-{rate}.wav" and mine["input"]["codes_shape"] == [15, 2]

    # a pack of three one-shots, and its zip
    pack = client.predict("finished", 3, 0, 0.9, api_name="/pack")
    assert pack["ok"], pack
    assert len(pack["samples"]) == 3 and "3 of 3 one-shots" in pack["message"]
    for s in pack["samples"]:
        wave, sr = sf.read(s["file_path"])
        assert 0 < len(wave) / sr <= 1.5 and s["clip_seconds"] >= 0.75 and np.abs(wave).max() > 0.5
    with zipfile.ZipFile(pack["zip"]) as zf:
        assert len(zf.namelist()) == 3 and all(n.startswith("finished-one-shots/finished-") for n in zf.namelist())
    assert len(list(samples.glob("*.json"))) == 2 + 1 + 2 + 3


def test_bad_inputs_are_answered_in_words_and_nothing_else_is_lost(client, app_server, tmp_path):
    url, ws, _ = app_server
    samples = ws / "runs" / "finished" / "samples"
    before = sorted(p.name for p in samples.iterdir())
    (tmp_path / "notes.txt").write_text("not audio")
    sf.write(tmp_path / "silence.wav", np.zeros(SR, np.float32), SR)
    sf.write(tmp_path / "blip.wav", 0.5 * np.ones(int(0.01 * SR), np.float32), SR)
    cases = {"notes.txt": "not an audio file", "silence.wav": "digital silence", "blip.wav": "too short"}
    for name, words in cases.items():
        out = client.predict("finished", "upload", upload(url, tmp_path / name), "shape", 1, 1.0, 2.0, 1, 0, 0.9,
                             api_name="/vary")
        assert not out["ok"] and words in out["message"] and out["message"].startswith(f"'{name}' cannot be used")
    refused = [
        (("finished", "upload", "/etc/passwd"), "did not come through the upload"),
        (("finished", "file", "nope.wav"), "not one of this run's training files"),
        (("finished", "sample", ""), "Choose the sound to vary first"),
        (("finished", "file", "a/clip_01.wav", "shape", 2), "is a copy"),
        (("finished", "file", "a/clip_01.wav", "shape", 1, 1.0, 2.0, 9), "between 1 and 8"),
        (("finished", "file", "a/clip_01.wav", "continue", 1, 9.0), "inside the sound"),
        (("nope", "file", "a/clip_01.wav"), "Choose a run first"),
    ]
    for args, words in refused:
        out = client.predict(*args, api_name="/vary")
        assert not out["ok"] and words in out["message"], (args, out)
    for n in (0, 33):
        out = client.predict("finished", n, 0, 0.9, api_name="/pack")
        assert not out["ok"] and "between 1 and 32" in out["message"]
    assert sorted(p.name for p in samples.iterdir()) == before  # nothing written, nothing lost
    # a long file is cut to its first 30 s, and the answer says so
    rng = np.random.default_rng(0)
    sf.write(tmp_path / "long.wav", (0.3 * rng.standard_normal(8000 * 40)).astype(np.float32), 8000)
    out = client.predict("finished", "upload", upload(url, tmp_path / "long.wav"), "shape", 1, 1.0, 2.0, 1, 0, 0.9,
                         api_name="/vary")
    assert out["ok"] and "only its first 30 s are used" in out["message"], out
    ok = client.predict("finished", "file", "b/clip_00.wav", "shape", 1, api_name="/vary")
    assert ok["ok"]  # the app goes on working


def test_an_upload_over_the_per_file_limit_is_refused_in_words(tmp_path):
    from distill.app.service import DistillApp, upload_root
    from distill.app.uploads import UploadLimits

    saved_copy(tmp_path, "finished")
    app = DistillApp(tmp_path / "workspace", limits=UploadLimits(max_file_bytes=20_000))
    folder = upload_root() / f"distill-test-{tmp_path.name}"
    folder.mkdir(parents=True, exist_ok=True)
    try:
        big = tone(folder / "big.wav", 1.0, SR)  # 48 KB
        with pytest.raises(ValueError, match="big.wav' is 47 KB; the limit per file is 20 KB"):
            app.vary("finished", "upload", str(big))
        small = tone(folder / "small.wav", 0.3, SR)
        assert len(app.vary("finished", "upload", str(small))["results"]) == 1
    finally:
        import shutil

        shutil.rmtree(folder, ignore_errors=True)
