"""Runs saved by an earlier Distill (tests/fixtures/saved_runs, made at c9946bf) still load, generate,
resume and retrain with this one. Every test works on a copy: the fixtures are never written."""
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from distill.generate import generate_audio, load_run
from distill.pipeline import TrainOptions, can_resume, resume_run, retrain_prior
from distill.runs import list_runs, load_codes, load_prior, read_manifest

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "saved_runs"
TINY_PRIOR = {"hidden_size": 16, "num_layers": 1, "num_heads": 2, "context_steps": 8, "batch_size": 2, "max_epochs": 2,
              "eval_every": 5, "patience": 100}


def saved_copy(tmp_path: Path, name: str) -> Path:
    """The saved run in a workspace of its own, with its source pointing at a copy of the clips
    (as if the user kept their folder where it was)."""
    shutil.copytree(FIXTURES / "data", tmp_path / "data")
    run = tmp_path / "workspace" / "runs" / name
    shutil.copytree(FIXTURES / name, run)
    (run / "samples").mkdir(exist_ok=True)
    path = run / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["source"] = str(tmp_path / "data")
    path.write_text(json.dumps(manifest))
    return run


def test_the_fixtures_are_old_runs():
    for name in ("finished", "stopped"):
        assert json.loads((FIXTURES / name / "manifest.json").read_text())["version"] == 1


def test_a_saved_run_loads_and_generates(tmp_path):
    run = saved_copy(tmp_path, "finished")
    loaded = load_run(run)
    assert loaded.vqvae_config.num_quantizers == 2 and loaded.vqvae_config.linear_path
    wave, sr, codes = generate_audio(run, seconds=0.5, seed=0)
    assert sr == 24_000 and wave.size > 0 and np.isfinite(wave).all()
    assert codes.shape[1] == 2 and codes.max() < 16
    assert len(load_codes(run)) == 4
    listed = list_runs(run.parent.parent)
    assert listed[0]["status"] == "done" and listed[0]["has_prior"]


def test_listing_a_saved_run_does_not_rewrite_it(tmp_path):
    run = saved_copy(tmp_path, "finished")
    before = (run / "manifest.json").read_bytes()
    list_runs(run.parent.parent)
    read_manifest(run)
    can_resume(run)
    assert (run / "manifest.json").read_bytes() == before


def test_a_saved_run_retrains_its_prior(tmp_path):
    run = saved_copy(tmp_path, "finished")
    before = (run / "vqvae.safetensors").read_bytes()
    summary = retrain_prior(run, TrainOptions(preset="quick", device="cpu", prior_overrides=dict(TINY_PRIOR)))
    assert summary["status"] == "done", summary
    assert (run / "vqvae.safetensors").read_bytes() == before
    manifest = read_manifest(run)
    assert manifest["status"] == "done" and manifest["prior_config"]["max_epochs"] == 2
    load_prior(run)
    wave, _, _ = generate_audio(run, seconds=0.3, seed=1)
    assert wave.size > 0 and np.isfinite(wave).all()


def test_a_saved_stopped_run_resumes_from_its_checkpoint(tmp_path):
    run = saved_copy(tmp_path, "stopped")
    check = can_resume(run)
    assert check["ok"] and check["stage"] == "prior" and check["step"] >= 5, check
    events = []
    summary = resume_run(run, callbacks=[events.append], options_overrides={"cache_dir": str(tmp_path / "cache")})
    assert summary["status"] == "done", summary
    manifest = read_manifest(run)
    assert manifest["stages_done"] == ["vqvae", "codes", "prior", "analysis"]
    assert {e["stage"] for e in events if e["kind"] == "stage_start"} == {"features", "prior", "analysis"}
    assert any(e["kind"] == "resumed" and e["stage"] == "prior" and e.get("from_checkpoint") for e in events)
    wave, _, _ = generate_audio(run, seconds=0.3, seed=2)
    assert wave.size > 0 and np.isfinite(wave).all()


# --- manifest version 2 ------------------------------------------------------------------------------

def on_disk(run: Path) -> dict:
    return json.loads((run / "manifest.json").read_text())


def test_a_saved_manifest_reads_as_version_2(tmp_path):
    from distill.runs import MANIFEST_VERSION

    run = saved_copy(tmp_path, "finished")
    manifest = read_manifest(run)
    assert MANIFEST_VERSION == 2 and manifest["version"] == 2 and on_disk(run)["version"] == 1
    old = on_disk(run)["results"]
    assert manifest["results"]["prior"]["stop"] == old["prior"]["stop_reason"]
    assert manifest["results"]["vqvae"]["stop"] == "step_limit"  # "reached the step limit (40)"
    assert manifest["stages_done"] == ["vqvae", "codes", "prior", "analysis"]


def test_a_saved_run_is_written_back_as_version_2_only_when_it_is_written(tmp_path):
    run = saved_copy(tmp_path, "finished")
    retrain_prior(run, TrainOptions(preset="quick", device="cpu", prior_overrides=dict(TINY_PRIOR)))
    written = on_disk(run)
    assert written["version"] == 2 and written["results"]["vqvae"]["stop"] == "step_limit"
    assert written["results"]["prior"]["stop"] in ("completed", "early_stop", "time_budget")


def test_a_resumed_saved_run_is_version_2_with_stop_codes(tmp_path):
    run = saved_copy(tmp_path, "stopped")
    assert resume_run(run, options_overrides={"cache_dir": str(tmp_path / "cache")})["status"] == "done"
    written = on_disk(run)
    assert written["version"] == 2 and written["results"]["prior"]["stop"] == written["results"]["prior"]["stop_reason"]


def test_an_old_bundle_imports_as_version_2(tmp_path):
    from distill.bundle import export_run, import_run

    run = saved_copy(tmp_path, "finished")
    imported = import_run(export_run(run, tmp_path / "old.zip"), tmp_path / "other")
    written = on_disk(imported)
    assert written["version"] == 2 and written["vqvae_config"]["linear_path"] is True
    assert written["results"]["vqvae"]["stop"] == "step_limit"
    generate_audio(imported, seconds=0.2)


def test_retrain_gives_the_prior_the_whole_budget(tmp_path):
    run = saved_copy(tmp_path, "finished")
    summary = retrain_prior(run, TrainOptions(preset="quick", device="cpu", minutes=1, prior_overrides=dict(TINY_PRIOR)))
    assert summary["status"] == "done", summary
    assert read_manifest(run)["prior_config"]["time_budget_s"] == 60


def test_migrate_fills_what_older_versions_left_out():
    from distill.runs import migrate

    old = {"format": "distill-run", "status": "stopped", "hashes": {"vqvae": "ab"},
           "vqvae_config": {"codebook_size": 16}, "prior_config": {"hidden_size": 16},
           "pending_prior_config": {"hidden_size": 32},
           "results": {"vqvae": {"stop_reason": "used the time budget (12 s)"}, "codes": {},
                       "prior": {"stop_reason": "early_stop"}}}
    m = migrate(old)
    assert m["version"] == 2 and "version" not in old  # a new dict; the one read is left alone
    assert m["vqvae_config"]["linear_path"] is False
    assert m["prior_config"]["learn_clip_ends"] is False and m["pending_prior_config"]["learn_clip_ends"] is False
    assert m["prior_config"]["augment_copies"] == 0  # trained without varied copies, so it resumes without them
    assert m["results"]["vqvae"]["stop"] == "time_budget" and m["results"]["prior"]["stop"] == "early_stop"
    assert m["stages_done"] == ["vqvae", "codes"]
    assert migrate(m) == m
    sentences = {"stopped on request": "stopped", "reached the step limit (400)": "step_limit",
                 "used the time budget (40 s)": "time_budget", "finished": "completed", "": "completed",
                 "training became numerically unstable (no usable loss 20 steps in a row)": "non_finite"}
    for sentence, code in sentences.items():
        stopped = migrate({"status": "stopped", "hashes": {"vqvae": "ab"}, "results": {"vqvae": {"stop_reason": sentence}}})
        assert stopped["results"]["vqvae"]["stop"] == code
        assert stopped["stages_done"] == ([] if code == "stopped" else ["vqvae"])
    assert migrate({"status": "done"})["stages_done"] == ["vqvae", "codes", "prior", "analysis"]
    for junk in ({"results": [1]}, {"vqvae_config": "x", "prior_config": 3, "results": {"vqvae": None}}):
        migrate(junk)  # a hand-edited or hostile manifest is refused later, by the checks, never here
