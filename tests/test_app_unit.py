"""Unit tests for the app's pure parts: uploads (paths, zips, limits), figures, and the worker."""
from __future__ import annotations

import io
import stat
import threading
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
from matplotlib.figure import Figure

from distill.app import figures
from distill.app.uploads import (
    UploadError,
    UploadLimits,
    extract_zip,
    ingest_files,
    new_dataset_dir,
    safe_relative_path,
)
from distill.app.worker import Worker

# --- uploads: paths ---------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", ["../evil.wav", "a/../../evil.wav", "/etc/passwd", "C:/x.wav", "C:\\x.wav",
                                 "..\\evil.wav", "", "   ", "a/\x00b.wav", "./.."])
def test_safe_relative_path_refuses_escapes(bad):
    with pytest.raises(UploadError):
        safe_relative_path(bad)


def test_safe_relative_path_normalises():
    assert safe_relative_path("a\\b/./c.wav").as_posix() == "a/b/c.wav"
    assert safe_relative_path("drums//kick.wav").as_posix() == "drums/kick.wav"


def _upload_dir(tmp_path: Path, files: dict[str, bytes]) -> list[tuple[Path, str]]:
    """Simulate the upload cache: every file in its own random folder, as Gradio stores them."""
    cache = tmp_path / "gradio-cache"
    items = []
    for i, (rel, data) in enumerate(files.items()):
        d = cache / f"u{i}"
        d.mkdir(parents=True)
        p = d / Path(rel).name
        p.write_bytes(data)
        items.append((p, rel))
    return items


def test_ingest_keeps_relative_paths_and_never_collides(tmp_path):
    items = _upload_dir(tmp_path, {"drums/kick.wav": b"A", "perc/kick.wav": b"B", "kick.wav": b"C"})
    items.append((items[0][0], "drums/kick.wav"))  # the same relative path twice (two drops)
    dest = tmp_path / "ws" / "ds"
    res = ingest_files(items, dest, allowed_roots=[tmp_path / "gradio-cache"])
    assert sorted(res.files) == ["drums/kick (2).wav", "drums/kick.wav", "kick.wav", "perc/kick.wav"]
    assert (dest / "drums/kick.wav").read_bytes() == b"A"
    assert (dest / "perc/kick.wav").read_bytes() == b"B"
    assert (dest / "kick.wav").read_bytes() == b"C"
    assert res.renamed == {"drums/kick.wav": "drums/kick (2).wav"}


def test_ingest_refuses_files_outside_the_upload_cache(tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("x")
    (tmp_path / "gradio-cache").mkdir()
    with pytest.raises(UploadError, match="did not come through the upload"):
        ingest_files([(secret, "secret.wav")], tmp_path / "ds", allowed_roots=[tmp_path / "gradio-cache"])
    assert not (tmp_path / "ds" / "secret.wav").exists()


def test_ingest_refuses_path_escape(tmp_path):
    items = _upload_dir(tmp_path, {"a.wav": b"A"})
    with pytest.raises(UploadError, match="outside"):
        ingest_files([(items[0][0], "../../a.wav")], tmp_path / "ds")


def test_ingest_limits_have_clear_messages(tmp_path):
    items = _upload_dir(tmp_path, {f"f{i}.wav": b"x" * 100 for i in range(5)})
    with pytest.raises(UploadError, match="limit per file"):
        ingest_files(items, tmp_path / "d1", UploadLimits(max_file_bytes=50))
    with pytest.raises(UploadError, match="limit is 3 per upload"):
        ingest_files(items, tmp_path / "d2", UploadLimits(max_files=3))
    with pytest.raises(UploadError, match="in all"):
        ingest_files(items, tmp_path / "d3", UploadLimits(max_total_bytes=250))
    # limits are checked before anything is written
    assert not any(list((tmp_path / d).glob("*.wav")) for d in ("d1", "d2", "d3"))


def test_a_name_that_is_both_a_file_and_a_folder_is_refused_in_words(tmp_path, monkeypatch):
    """'x' and 'x/y.wav' in one upload (or one zip) cannot both exist: refused, nothing left behind."""
    for i, order in enumerate((["x", "x/y.wav"], ["x/y.wav", "x"], ["a/x", "a/x/y/z.wav"])):
        items = _upload_dir(tmp_path / f"up{i}", {rel: b"RIFF" for rel in order})
        dest = tmp_path / "ws" / f"ds{i}"
        with pytest.raises(UploadError, match="both a file and a folder"):
            ingest_files(items, dest)
        assert not list(dest.rglob("*")), order
    z = _zip(tmp_path / "clash.zip", {"set/x": b"1", "set/x/y.wav": b"2"})
    with pytest.raises(UploadError, match="as both a file and a folder"):
        extract_zip(z, tmp_path / "zip-out")
    assert not (tmp_path / "zip-out").exists()
    # through the app: the message reaches the page and no dataset folder is left
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path / "gradio-tmp"))
    from distill.app.service import DistillApp, upload_root

    app = DistillApp(tmp_path / "app-ws")
    cache = upload_root() / "abc"
    cache.mkdir(parents=True)
    (cache / "x").write_bytes(b"1")
    (cache / "y.wav").write_bytes(b"2")
    payload = '{"files": [{"path": "%s", "rel": "x"}, {"path": "%s", "rel": "x/y.wav"}]}' % (cache / "x", cache / "y.wav")
    with pytest.raises(UploadError, match="both a file and a folder"):
        app.ingest_upload(payload)
    assert list((tmp_path / "app-ws" / "datasets").iterdir()) == []


def test_new_dataset_dir_is_fresh(tmp_path):
    a, b = new_dataset_dir(tmp_path, "my folder/../x"), new_dataset_dir(tmp_path, "my folder/../x")
    assert a != b and a.parent == b.parent == tmp_path / "datasets"
    assert ".." not in a.name and "/" not in a.name


# --- uploads: zips --------------------------------------------------------------------------------


def _zip(path: Path, members: dict[str, bytes], compression=zipfile.ZIP_DEFLATED) -> Path:
    with zipfile.ZipFile(path, "w", compression) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


def test_zip_extracts_with_folders(tmp_path):
    z = _zip(tmp_path / "set.zip", {"set/a/x.wav": b"1", "set/b/x.wav": b"2", "__MACOSX/set/._x.wav": b"j"})
    res = extract_zip(z, tmp_path / "out")
    assert sorted(res.files) == ["set/a/x.wav", "set/b/x.wav"]
    assert (tmp_path / "out/set/b/x.wav").read_bytes() == b"2"
    assert any("macOS" in n for n in res.notes)


def test_zip_slip_is_refused_and_nothing_written(tmp_path):
    z = _zip(tmp_path / "evil.zip", {"ok.wav": b"1", "../../escaped.wav": b"2"})
    with pytest.raises(UploadError, match="unsafe"):
        extract_zip(z, tmp_path / "out")
    assert not (tmp_path / "escaped.wav").exists()
    assert not (tmp_path / "out" / "ok.wav").exists()


def test_zip_absolute_member_is_refused(tmp_path):
    z = _zip(tmp_path / "abs.zip", {"/tmp/abs.wav": b"1"})
    with pytest.raises(UploadError, match="unsafe"):
        extract_zip(z, tmp_path / "out")


def test_zip_symlink_members_are_not_extracted(tmp_path):
    z = tmp_path / "links.zip"
    with zipfile.ZipFile(z, "w") as zf:
        info = zipfile.ZipInfo("link.wav")
        info.external_attr = (stat.S_IFLNK | 0o777) << 16
        zf.writestr(info, "/etc/passwd")
        zf.writestr("real.wav", b"1")
    res = extract_zip(z, tmp_path / "out")
    assert res.files == ["real.wav"]
    assert not (tmp_path / "out" / "link.wav").exists()
    assert any("link" in n for n in res.notes)


def test_zip_bomb_ratio_cap(tmp_path):
    z = _zip(tmp_path / "bomb.zip", {"zeros.wav": b"\0" * (8 * 1024 * 1024)})
    with pytest.raises(UploadError, match="zip bomb"):
        extract_zip(z, tmp_path / "out", UploadLimits(max_zip_ratio=50, zip_ratio_min_bytes=1024 * 1024))
    assert not (tmp_path / "out" / "zeros.wav").exists()


def test_zip_caps_on_count_and_total_size(tmp_path):
    z = _zip(tmp_path / "many.zip", {f"f{i}.wav": b"abc" for i in range(20)})
    with pytest.raises(UploadError, match="holds 20 files"):
        extract_zip(z, tmp_path / "o1", UploadLimits(max_files=10))
    big = _zip(tmp_path / "big.zip", {"a.wav": b"x" * 5000, "b.wav": b"y" * 5000}, zipfile.ZIP_STORED)
    with pytest.raises(UploadError, match="unpacks to"):
        extract_zip(big, tmp_path / "o2", UploadLimits(max_total_bytes=8000))
    with pytest.raises(UploadError, match="limit per file"):
        extract_zip(big, tmp_path / "o3", UploadLimits(max_file_bytes=4000))


def test_zip_member_lying_about_its_size_is_stopped(tmp_path):
    z = _zip(tmp_path / "liar.zip", {"a.wav": b"x" * 10_000}, zipfile.ZIP_STORED)
    raw = bytearray(z.read_bytes())
    # shrink the declared size in the central directory (and local header) to 100 bytes
    with zipfile.ZipFile(io.BytesIO(bytes(raw))) as zf:
        info = zf.infolist()[0]
    cd = raw.rfind(b"PK\x01\x02")
    raw[cd + 24:cd + 28] = (100).to_bytes(4, "little")  # uncompressed size in the central directory
    raw[22:26] = (100).to_bytes(4, "little")  # ... and in the local header
    z.write_bytes(bytes(raw))
    with pytest.raises(UploadError):
        extract_zip(z, tmp_path / "out")
    assert not (tmp_path / "out" / "a.wav").exists() or (tmp_path / "out" / "a.wav").stat().st_size <= 100
    assert info.file_size == 10_000


def test_not_a_zip_and_zip_inside_upload(tmp_path):
    bad = tmp_path / "bad.zip"
    bad.write_bytes(b"not a zip")
    with pytest.raises(UploadError, match="not a readable"):
        extract_zip(bad, tmp_path / "out")
    cache = tmp_path / "gradio-cache" / "u"
    cache.mkdir(parents=True)
    z = _zip(cache / "pack.zip", {"pack/a.wav": b"1", "pack/sub/b.wav": b"2"})
    plain = cache / "c.wav"
    plain.write_bytes(b"3")
    res = ingest_files([(z, "pack.zip"), (plain, "c.wav")], tmp_path / "ds", allowed_roots=[tmp_path / "gradio-cache"])
    assert sorted(res.files) == ["c.wav", "pack/pack/a.wav", "pack/pack/sub/b.wav"]
    assert (tmp_path / "ds/pack/pack/sub/b.wav").read_bytes() == b"2"


# --- figures --------------------------------------------------------------------------------------


def _records(n_vq=50, n_prior=40):
    recs = [{"stage": "vqvae", "kind": "step", "step": i, "loss": 2 / (i + 1), "recon_loss": 1.5 / (i + 1),
             "commit_loss": 0.1} for i in range(n_vq)]
    recs += [{"stage": "vqvae", "kind": "eval", "step": i, "val_loss": 1.0 / (i + 1)} for i in range(0, n_vq, 10)]
    recs += [{"stage": "prior", "kind": "step", "step": i, "loss": 4 - i * 0.01} for i in range(n_prior)]
    recs += [{"stage": "prior", "kind": "eval", "step": i, "train_loss": 3.5, "val_loss": 3.8, "val_perplexity": 40.0}
             for i in range(0, n_prior, 10)]
    return recs


def _render(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def test_figures_return_figures_and_render():
    recs = _records()
    for fig in (figures.vqvae_loss_figure(recs), figures.prior_loss_figure(recs),
                figures.health_figure([{"level": 0, "utilisation": 0.9, "perplexity": 40, "dead_codes": 3},
                                       {"level": 1, "utilisation": 0.2, "perplexity": 5, "dead_codes": 50}]),
                figures.code_sequence_figure(np.random.default_rng(0).integers(0, 64, (300, 3)), 64, 23.4, "a.wav"),
                figures.histogram_figure(np.ones((3, 64)), np.arange(192).reshape(3, 64))):
        assert isinstance(fig, Figure)
        png = _render(fig)
        assert png[:4] == b"\x89PNG" and len(png) > 2000
    vq = figures.vqvae_loss_figure(recs)
    assert len(vq.axes) == 1 and len(vq.axes[0].get_lines()) >= 3
    assert len(figures.prior_loss_figure(recs).axes) == 2  # loss + perplexity twin axis


def test_figures_handle_empty_data():
    for fig in (figures.vqvae_loss_figure([]), figures.prior_loss_figure([{"stage": "vqvae", "kind": "step"}]),
                figures.health_figure([]), figures.code_sequence_figure(None), figures.code_sequence_figure(np.zeros((0, 3))),
                figures.histogram_figure(None, None)):
        assert isinstance(fig, Figure)
        _render(fig)
        assert all(not ax.axison for ax in fig.axes)  # a message, no empty axes


def test_downsampling_long_data():
    x = np.arange(100_000)
    y = np.sin(x / 1000.0)
    dx, dy = figures.downsample_series(x, y, 1000)
    assert len(dx) == len(dy) == 1000
    assert abs(dy.mean() - y.mean()) < 0.01
    short = figures.downsample_series([1, 2, 3], [4, 5, 6], 1000)
    assert list(short[1]) == [4, 5, 6]
    codes = np.random.default_rng(0).integers(0, 256, (50_000, 4))
    thinned, k = figures.thin_codes(codes, 1600)
    assert thinned.shape[0] <= 1600 and k == 32 and thinned.shape[1] == 4
    assert set(np.unique(thinned)).issubset(set(np.unique(codes)))  # labels are picked, never averaged
    fig = figures.code_sequence_figure(codes, 256, 23.4)
    img = fig.axes[0].images[0].get_array()
    assert img.shape == (4, thinned.shape[0])
    long = [{"stage": "vqvae", "kind": "step", "step": i, "recon_loss": 1.0} for i in range(20_000)]
    line = figures.vqvae_loss_figure(long).axes[0].get_lines()[0]
    assert len(line.get_xdata()) <= figures.MAX_LINE_POINTS


def test_level_stats_and_verdicts():
    s = figures.level_stats(np.array([5, 5, 0, 0]))
    assert s["used"] == 2 and s["dead_codes"] == 2 and s["utilisation"] == 0.5
    assert abs(s["perplexity"] - 2.0) < 1e-9
    assert figures.level_stats(np.zeros(8))["dead_codes"] == 8
    assert figures.verdict(0.95) == "healthy"
    assert figures.verdict(0.5) == "some codes unused"
    assert figures.verdict(0.9, perplexity=3.0, codebook_size=64) == "collapse"
    assert figures.verdict(0.05) == "collapse"
    fig = figures.histogram_figure(np.array([[5, 5, 0, 0]]), None)
    texts = " ".join(t.get_text() for t in fig.axes[0].texts)
    assert "2/4 used" in texts and "perplexity 2.0" in texts and "2 dead" in texts


# --- worker ---------------------------------------------------------------------------------------


class FakePipeline:
    """Emits events like the real pipeline and waits on a gate, so tests control timing."""

    def __init__(self, steps=5, delay=0.0):
        self.steps, self.delay = steps, delay
        self.calls = 0
        self.gate = threading.Event()
        self.lock = threading.Lock()

    def __call__(self, source, run_dir, options, callbacks=None, stop=None):
        with self.lock:
            self.calls += 1
        emit = lambda e: [cb({"t": time.time(), **e}) for cb in callbacks]  # noqa: E731
        emit({"stage": "features", "kind": "stage_start"})
        emit({"stage": "features", "kind": "progress", "fraction": 1.0})
        emit({"stage": "features", "kind": "stage_end"})
        emit({"stage": "vqvae", "kind": "stage_start", "budget_s": 10.0, "device": "cpu"})
        for i in range(self.steps):
            if stop.is_set():
                emit({"stage": "run", "kind": "run_end", "status": "stopped", "message": "Stopped; finished stages were kept."})
                return {"status": "stopped"}
            emit({"stage": "vqvae", "kind": "step", "step": i, "loss": 1.0 / (i + 1), "recon_loss": 0.9, "commit_loss": 0.1})
            self.gate.wait(5)
            time.sleep(self.delay)
        emit({"stage": "vqvae", "kind": "warning", "message": "The prior may be memorising."})
        emit({"stage": "run", "kind": "run_end", "status": "done", "message": "Training finished."})
        return {"status": "done"}


def _worker(tmp_path, fake):
    counter = iter(range(1000))

    def factory(ws):
        d = Path(ws) / "runs" / f"run-{next(counter)}"
        d.mkdir(parents=True)
        return d

    return Worker(tmp_path, runner=fake, retrainer=fake.__call__, run_dir_factory=factory)


def test_worker_refuses_second_start_and_finishes(tmp_path):
    fake = FakePipeline(steps=3)
    w = _worker(tmp_path, fake)
    first = w.start("src", None)
    assert first["ok"] and first["run_id"] == "run-0"
    second = w.start("src", None)
    assert not second["ok"] and "already" in second["message"] and "one model at a time" in second["message"]
    st = w.status()
    assert st["running"] and st["run_id"] == "run-0"
    fake.gate.set()
    assert w.join(5)
    st = w.status()
    assert st["state"] == "done" and not st["running"] and st["fraction"] == 1.0
    assert st["warnings"] == ["The prior may be memorising."]
    assert st["latest"]["vqvae_step"]["step"] == 2
    assert fake.calls == 1
    assert w.start("src", None)["ok"]  # free again once finished
    w.join(5)


def test_worker_concurrent_starts_make_exactly_one_job(tmp_path):
    fake = FakePipeline(steps=2)
    w = _worker(tmp_path, fake)
    barrier = threading.Barrier(8)
    results = []

    def go():
        barrier.wait()
        results.append(w.start("src", None))

    threads = [threading.Thread(target=go) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(r["ok"] for r in results) == 1
    assert len({r["run_id"] for r in results}) == 1
    fake.gate.set()
    assert w.join(5)
    assert fake.calls == 1
    assert len(list((tmp_path / "runs").iterdir())) == 1


def test_worker_stop_is_cooperative(tmp_path):
    fake = FakePipeline(steps=1000, delay=0.01)
    w = _worker(tmp_path, fake)
    assert w.stop()["ok"] is False  # nothing to stop
    w.start("src", None)
    fake.gate.set()
    time.sleep(0.05)
    res = w.stop()
    assert res["ok"] and "Stopping" in res["message"]
    assert w.join(5)
    st = w.status()
    assert st["state"] == "stopped" and "kept" in st["message"]


def test_worker_status_is_cheap_and_events_incremental(tmp_path):
    fake = FakePipeline(steps=2000)
    fake.gate.set()
    w = _worker(tmp_path, fake)
    w.start("src", None)
    assert w.join(10)
    t0 = time.perf_counter()
    for _ in range(1000):
        w.status()
    per_call = (time.perf_counter() - t0) / 1000
    assert per_call < 0.002, per_call
    events, seq, gen = w.events_since(0)
    assert seq == len(events) and seq > 2000
    more, seq2, _ = w.events_since(seq)
    assert more == [] and seq2 == seq
    assert w.job_events(tmp_path / "runs" / "run-0") is not None
    assert w.job_events(tmp_path / "elsewhere") is None


def test_worker_survives_a_crashing_pipeline(tmp_path):
    def boom(source, run_dir, options, callbacks=None, stop=None):
        callbacks[0]({"stage": "features", "kind": "stage_start"})
        raise RuntimeError("decoder exploded")

    w = Worker(tmp_path, runner=boom, run_dir_factory=lambda ws: Path(ws))
    assert w.start("src", None)["ok"]
    assert w.join(5)
    st = w.status()
    assert st["state"] == "failed" and "decoder exploded" in st["message"]
    assert w.start("src", None)["ok"]  # the worker is usable again
    w.join(5)


def test_worker_retrain_uses_the_retrainer(tmp_path):
    seen = {}

    def retr(run_dir, options, callbacks=None, stop=None):
        seen["run_dir"] = run_dir
        callbacks[0]({"stage": "prior", "kind": "stage_start", "budget_s": 5})
        callbacks[0]({"stage": "run", "kind": "run_end", "status": "done", "message": "Prior retrained."})
        return {"status": "done"}

    w = Worker(tmp_path, runner=None, retrainer=retr)
    res = w.retrain(tmp_path / "runs" / "r1", {"x": 1})
    assert res["ok"] and res["run_id"] == "r1"
    assert w.join(5)
    assert seen["run_dir"] == tmp_path / "runs" / "r1"
    assert w.status()["message"] == "Prior retrained."


# --- the page's helpers (no server) -----------------------------------------------------------------


def test_run_view_tally_counts_events_incrementally():
    from distill.app.page.run_view import EventTally

    events = [{"stage": "vqvae", "kind": "step"}, {"kind": "warning", "message": "thin data"},
              {"stage": "vqvae", "kind": "eval", "utilisation": [0.5, 0.25]}, {"kind": "warning", "message": "thin data"},
              {"stage": "codes", "kind": "stage_end"}, {"stage": "prior", "kind": "eval"}]
    whole = EventTally().advance(events)
    halves = EventTally().advance(events[:3]).advance(events[3:])
    assert whole == halves
    assert (whole.seen, whole.vq_points, whole.prior_points, whole.codes_ready) == (6, 2, 1, 1)
    assert whole.warnings == ("thin data",) and [lv["utilisation"] for lv in whole.levels] == [0.5, 0.25]


def test_run_view_redraws_only_what_changed_and_throttles_the_loss_plots():
    from distill.app.page.run_view import ALL_PARTS, REDRAW_EVERY_S, EventTally, RunView, next_drawn, parts_to_draw

    step = {"stage": "vqvae", "kind": "step"}
    view = RunView("r", 1, "running", True, True, "<card>", EventTally().advance([step]))
    assert parts_to_draw(None, view, 0.0) == ALL_PARTS  # nothing drawn yet: everything
    drawn = next_drawn(None, view, ALL_PARTS, 100.0)
    assert parts_to_draw(drawn, view, 100.5) == ()
    more = RunView("r", 1, "running", True, True, "<card>", view.tally.advance([step]))
    assert parts_to_draw(drawn, more, 100.5) == ()  # a new loss point waits while training
    assert parts_to_draw(drawn, more, 100.0 + REDRAW_EVERY_S) == ("vq",)
    done = RunView("r", 1, "done", False, True, "<done>", more.tally)
    # the state changed: the stop button's answer and the resume/retrain answers go with it
    assert set(parts_to_draw(drawn, done, 100.5)) == {"picker", "buttons", "runs", "card", "stop_msg", "msgs", "vq",
                                                      "codes"}
    no_run = RunView("gone", 1, "idle", False, False, "<empty>")
    assert "codes" not in parts_to_draw(None, no_run, 0.0)
    # a rename anywhere: the runs list and the picker follow at the next poll, even one that overtook the rename
    idle = RunView("r", 1, "done", False, True, "<done>", more.tally)
    renamed = RunView("r", 1, "done", False, True, "<done>", more.tally, names_revision=1)
    shown = next_drawn(None, idle, ALL_PARTS, 200.0)
    assert parts_to_draw(shown, idle, 201.0) == ()
    assert set(parts_to_draw(shown, renamed, 201.0)) == {"picker", "runs"}


def test_a_new_job_takes_over_the_run_view(tmp_path):
    from distill.app.page.run_view import Drawn, RunView, read_run_view

    class FakeWorker:
        snap = {"state": "idle", "running": False, "generation": 1}

        def status(self):
            return dict(self.snap)

    class FakeApp:
        worker = FakeWorker()
        names_revision = 0

        def run_dir(self, run_id):
            return tmp_path / run_id if run_id in ("old", "new") else None

        def manifest(self, run_dir):
            return {}

        def run_events(self, run_dir):
            return []

    app = FakeApp()
    view, _, drawn = read_run_view(app, "old", None)
    assert view.run_id == "old" and drawn is None
    kept = Drawn(view)
    assert read_run_view(app, "old", kept)[2] is kept  # nothing new: the page's state stands
    app.worker.snap = {"state": "running", "running": True, "generation": 2, "run_id": "new"}
    view, _, drawn = read_run_view(app, "old", kept)
    assert view.run_id == "new" and view.running and drawn is None  # redrawn whole, on the new run
    assert isinstance(view, RunView)


def test_api_safe_renames_path_keys():
    from distill.app.api import api_safe

    out = api_safe({"path": "a", "files": [{"path": "b", "reason": "x"}], "n": 1})
    assert out == {"file_path": "a", "files": [{"file_path": "b", "reason": "x"}], "n": 1}


def test_report_table_pages_a_500_file_dataset():
    from distill.app.service import ScanEntry
    from distill.app.views import PAGE_SIZE, page_rows

    rows = [["✓ used", f"f{i:03d}.wav", "1 s", "24 kHz", "mono", ""] for i in range(480)]
    rows += [["✗ skipped", f"bad{i}.txt", "", "", "", "not an audio file"] for i in range(40)]
    entry = ScanEntry(id="s", source="/x", label="x", report=None, rows=rows)
    page = {"page": 0, "filter": "all"}
    first, label = page_rows(entry, page)
    assert len(first) == PAGE_SIZE and label == "Page 1 of 11 · 520 files"
    last, label = page_rows(entry, {"page": 99, "filter": "all"})
    assert len(last) == 520 - 10 * PAGE_SIZE and label.startswith("Page 11 of 11")
    skipped, label = page_rows(entry, {"page": 0, "filter": "skipped"})
    assert len(skipped) == 40 and all(r[0].endswith("skipped") for r in skipped)


def test_status_and_tier_cards_render_states():
    from distill.app.views import fmt_duration, status_card_html, tier_card_html

    assert fmt_duration(5.25) == "5.2 s" and fmt_duration(75) == "1 min 15 s" and fmt_duration(None) == "—"
    running = {"state": "running", "run_id": "r1", "job": "train", "stage": "vqvae", "stage_label": "Training the sound model",
               "stages_done": ["features"], "fraction": 0.42, "eta_s": 65, "device": "CPU (2 threads)", "elapsed_s": 12,
               "latest": {"vqvae_step": {"step": 40, "recon_loss": 0.5}}, "message": ""}
    html = status_card_html(running, "r1")
    assert "42 %" in html and "about 1 min 05 s left" in html and "step 40" in html and "CPU (2 threads)" in html
    assert "d-done" in html and "d-now" in html
    failed = dict(running, state="failed", message="Ran out of <memory>")
    assert "Ran out of &lt;memory&gt;" in status_card_html(failed, "r1")  # escaped
    interrupted = status_card_html(None, "r2", {"status": "running", "created": "today", "files": {"used": [1, 2]}})
    assert "Interrupted" in interrupted and "2 files" in interrupted
    card = {"tier": 2, "name": "Medium", "reasons": ["because <b>"], "warnings": ["careful"], "eta_s": 90,
            "device": "CPU", "settings": {"vqvae": {"codebook_size": 128, "num_quantizers": 3, "time_budget_s": 40},
                                           "prior": {"num_layers": 4, "hidden_size": 256, "val_fraction": 0.2,
                                                     "time_budget_s": 40}}}
    html = tier_card_html(card, edited=["dropout"])
    assert "Tier 2" in html and "because &lt;b&gt;" in html and "careful" in html and "Edited: dropout" in html
    assert "No dataset yet" in tier_card_html(None)


def test_drop_payload_is_checked(tmp_path, monkeypatch):
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path / "gradio-tmp"))
    from distill.app.service import DistillApp

    app = DistillApp(tmp_path / "ws")
    secret = tmp_path / "secret.wav"
    secret.write_bytes(b"x")
    with pytest.raises(UploadError, match="did not come through the upload"):
        app.ingest_upload('{"files": [{"path": "%s", "rel": "a.wav"}]}' % secret)
    for bad in ("", "not json", '{"files": []}', '{"files": [{"path": 3}]}'):
        with pytest.raises(UploadError):
            app.ingest_upload(bad)
    assert list((tmp_path / "ws" / "datasets").iterdir()) == []  # nothing left behind
    assert app.run_dir("../../etc") is None and app.run_dir("") is None


def test_retrain_keeps_the_run_history_and_plots_only_the_new_prior(tmp_path):
    from distill.storage import append_jsonl

    run = tmp_path / "runs" / "r1"
    run.mkdir(parents=True)
    old = [{"stage": "vqvae", "kind": "stage_start"}, {"stage": "vqvae", "kind": "step", "step": 1, "recon_loss": 0.5},
           {"stage": "prior", "kind": "stage_start"}] + \
          [{"stage": "prior", "kind": "step", "step": i, "loss": 5.0} for i in range(1, 30)]
    for ev in old:
        append_jsonl(run / "metrics.jsonl", ev)

    def retr(run_dir, options, callbacks=None, stop=None):
        callbacks[0]({"stage": "prior", "kind": "stage_start", "budget_s": 5})
        for i in range(1, 4):
            callbacks[0]({"stage": "prior", "kind": "step", "step": i, "loss": 2.0})
        callbacks[0]({"stage": "run", "kind": "run_end", "status": "done", "message": "Prior retrained."})
        return {"status": "done"}

    w = Worker(tmp_path, retrainer=retr)
    assert w.retrain(run, None)["ok"]
    assert w.join(5)
    events = w.job_events(run)
    assert len(events) == len(old) + 5 and events[1]["recon_loss"] == 0.5  # history first, then the new prior
    assert w.status()["latest"]["prior_step"]["step"] == 3  # the summary follows only the new events
    fig = figures.prior_loss_figure(events)
    line = fig.axes[0].get_lines()[0]
    assert list(line.get_xdata()) == [1, 2, 3] and set(line.get_ydata()) == {2.0}
    assert len(figures.vqvae_loss_figure(events).axes[0].get_lines()) >= 1


def _claim_entries(path: Path, entries: int) -> Path:
    """Rewrite a zip's end records (zip64) to claim `entries` members and a central directory to match;
    the file stays a few hundred bytes."""
    import struct

    data = path.read_bytes()
    eocd = data.rfind(b"PK\x05\x06")
    cd_size, cd_offset = struct.unpack_from("<II", data, eocd + 12)
    claimed = entries * 46
    z64 = struct.pack("<IQHHIIQQQQ", 0x06064B50, 44, 45, 45, 0, 0, entries, entries, claimed, cd_offset)
    locator = struct.pack("<IIQI", 0x07064B50, 0, eocd, 1)
    end = struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, 0xFFFF, 0xFFFF, 0xFFFFFFFF, 0xFFFFFFFF, 0)
    path.write_bytes(data[:eocd] + z64 + locator + end)
    return path


def test_zip_claiming_millions_of_entries_is_refused_from_its_end_record(tmp_path, monkeypatch):
    """zipfile reads the whole central directory before any cap applies: the claim is checked first."""
    from distill.bundle import import_run
    from distill.storage import UnsafeFileError

    opened = []
    real = zipfile.ZipFile

    def spy(file, *args, **kwargs):
        opened.append(str(file))
        return real(file, *args, **kwargs)

    many = _zip(tmp_path / "many.zip", {f"f{i}.wav": b"" for i in range(3000)}, zipfile.ZIP_STORED)  # 3000 real entries
    claims = _claim_entries(_zip(tmp_path / "claims.zip", {"a.wav": b"x"}), 5_000_000)
    assert claims.stat().st_size < 1000
    monkeypatch.setattr(zipfile, "ZipFile", spy)
    with pytest.raises(UploadError, match="claims 5,000,000 files"):
        extract_zip(claims, tmp_path / "out1")
    with pytest.raises(UploadError, match="claims 3,000 files"):
        extract_zip(many, tmp_path / "out2", UploadLimits(max_files=1000))
    with pytest.raises(UnsafeFileError, match="claims 5,000,000 entries"):
        import_run(claims, tmp_path / "ws")
    assert opened == [] and not (tmp_path / "out1").exists() and not (tmp_path / "out2").exists()
    monkeypatch.setattr(zipfile, "ZipFile", real)
    ok = _zip(tmp_path / "ok.zip", {"a/x.wav": b"1", "b/y.wav": b"2"})
    with real(ok, "a") as zf:
        zf.comment = b"an archive comment moves the end record"
    assert sorted(extract_zip(ok, tmp_path / "out3").files) == ["a/x.wav", "b/y.wav"]
