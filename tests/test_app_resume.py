"""The app's worker resumes a stopped run from its checkpoints, and refuses what cannot be resumed."""
import time

from conftest import write_synthetic_folder
from distill.app.service import DistillApp as App
from distill.pipeline import TrainOptions
from distill.runs import read_manifest, read_metrics


def _wait(worker, seconds=120):
    deadline = time.time() + seconds
    while worker.is_running() and time.time() < deadline:
        time.sleep(0.1)
    assert not worker.is_running(), "the job did not finish in time"


def test_stop_then_resume_through_the_worker(tmp_path):
    data = write_synthetic_folder(tmp_path / "d", n=5, seconds=0.8)
    app = App(tmp_path / "ws")
    options = TrainOptions(preset="quick", cache_dir=str(tmp_path / "c"),
                           vqvae_overrides={"time_budget_s": None, "max_steps": 120, "eval_every": 20},
                           prior_overrides={"time_budget_s": None, "max_epochs": 3, "eval_every": 5})
    started = app.worker.start(str(data), options)
    assert started["ok"], started
    run_dir = app.worker.active_run_dir()
    deadline = time.time() + 60
    while time.time() < deadline and not (run_dir / "checkpoints" / "vqvae.ckpt.json").exists():
        time.sleep(0.05)
    app.worker.stop()
    _wait(app.worker)
    assert read_manifest(run_dir)["status"] == "stopped"

    res = app.resume(run_dir.name)
    assert res["ok"], res
    assert not app.resume(run_dir.name)["ok"]  # a second resume while it runs is refused
    _wait(app.worker)
    manifest = read_manifest(run_dir)
    assert manifest["status"] == "done", manifest.get("message")
    assert (run_dir / "prior.safetensors").is_file()
    assert any(e.get("kind") == "resumed" for e in read_metrics(run_dir))
    again = app.resume(run_dir.name)
    assert not again["ok"] and "finished" in again["message"]
