"""Disk full while a run saves: a clear message, no corrupt file, and the next run still works."""
import errno
import os

import distill.storage as storage
from conftest import write_synthetic_folder
from distill.pipeline import TrainOptions, run_pipeline
from distill.runs import list_runs, load_vqvae, read_manifest

QUICK = dict(preset="quick", minutes=0.15, vqvae_overrides={"max_steps": 30, "eval_every": 10},
             prior_overrides={"max_epochs": 2})


def test_disk_full_during_save_fails_cleanly(tmp_path, monkeypatch):
    data = write_synthetic_folder(tmp_path / "d", n=5, seconds=0.6)
    real_fdopen = os.fdopen

    class HalfWriter:
        """A file that writes half of what it is given, then reports a full disk."""

        def __init__(self, fh):
            self.fh = fh

        def write(self, data):
            self.fh.write(data[: len(data) // 2])
            self.fh.flush()
            raise OSError(errno.ENOSPC, "No space left on device")

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.fh.close()

    def fdopen(fd, mode="r", *a, **k):
        fh = real_fdopen(fd, mode, *a, **k)
        name = os.readlink(f"/proc/self/fd/{fd}") if os.path.exists(f"/proc/self/fd/{fd}") else ""
        return HalfWriter(fh) if ".codes.safetensors." in name or ".prior.safetensors." in name else fh

    monkeypatch.setattr(storage.os, "fdopen", fdopen)
    run = tmp_path / "ws" / "runs" / "full"
    summary = run_pipeline(data, run, TrainOptions(cache_dir=str(tmp_path / "c"), **QUICK))
    assert summary["status"] == "failed" and "disk is full" in summary["message"]
    assert read_manifest(run)["status"] == "failed"
    load_vqvae(run)  # the file saved before the disk filled up is intact
    assert not (run / "codes.safetensors").exists()
    assert not list(run.glob(".*.tmp")), "the half-written temp file was not removed"

    monkeypatch.setattr(storage.os, "fdopen", real_fdopen)  # space freed: the app keeps working
    ok = run_pipeline(data, tmp_path / "ws" / "runs" / "ok", TrainOptions(cache_dir=str(tmp_path / "c"), **QUICK))
    assert ok["status"] == "done"
    assert {r["status"] for r in list_runs(tmp_path / "ws")} == {"done", "failed"}


def test_disk_full_while_writing_the_manifest_keeps_the_old_one(tmp_path, monkeypatch):
    from distill.runs import update_manifest, write_manifest

    run = tmp_path / "r"
    run.mkdir()
    write_manifest(run, {"id": "r", "status": "running"})
    real_write = storage.atomic_write_bytes

    def fail(path, data, durable=True):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(storage, "atomic_write_bytes", fail)
    try:
        update_manifest(run, status="done")
    except OSError as exc:
        assert exc.errno == errno.ENOSPC
    monkeypatch.setattr(storage, "atomic_write_bytes", real_write)
    assert read_manifest(run)["status"] == "running"
