"""Kill -9 while a run folder is being saved, many times: every file is always the old complete
version or the new complete one, nothing half-written is ever loaded, and the run still lists."""
import json
import os
import random
import signal
import time

import torch

from distill.config import AudioConfig, PriorConfig, VQVAEConfig
from distill.models.vqvae import ConvVQVAE
from distill.runs import (
    configs_dict, list_runs, load_codes, load_prior, load_vqvae, read_manifest, read_metrics, save_codes, save_prior,
    save_vqvae, update_manifest, write_manifest, build_prior, recover_workspace,
)
from distill.storage import append_jsonl

KILLS = 24


def _models(version: int):
    torch.manual_seed(version)
    vq = VQVAEConfig(hidden_channels=32, codebook_dim=16, codebook_size=16, num_quantizers=2)
    prior = PriorConfig(hidden_size=32, num_layers=1, num_heads=2, context_steps=8)
    vqvae = ConvVQVAE(32, vq)
    for p in vqvae.parameters():
        p.data.fill_(float(version))
    pr = build_prior(vq, prior)
    for p in pr.parameters():
        p.data.fill_(float(version))
    return vq, prior, vqvae, pr


def _save_all(run, version: int, vqvae, pr) -> None:
    save_vqvae(run, vqvae)
    save_codes(run, [f"f{i}.wav" for i in range(3)], [torch.full((5 + i, 2), version % 16) for i in range(3)])
    save_prior(run, pr)
    for step in range(20):
        append_jsonl(run / "metrics.jsonl", {"version": version, "step": step, "pad": "x" * 200})
    update_manifest(run, saved_version=version)


def test_kill_9_during_saves_never_leaves_a_half_written_run(tmp_path):
    run = tmp_path / "workspace" / "runs" / "r"
    run.mkdir(parents=True)
    audio = AudioConfig(n_mels=32)
    vq, prior, vqvae, pr = _models(1)
    write_manifest(run, {"id": "r", "status": "running", **configs_dict(audio, vq, prior)})
    _save_all(run, 1, vqvae, pr)
    rng = random.Random(0)
    versions_seen = set()
    for kill in range(KILLS):
        pid = os.fork()
        if pid == 0:  # child: save new versions forever until killed
            try:
                torch.set_num_threads(1)
                v = 2 + kill * 1000
                while True:
                    _, _, m1, m2 = _models(v % 50 + 2)
                    _save_all(run, v % 50 + 2, m1, m2)
                    v += 1
            finally:
                os._exit(0)
        time.sleep(rng.uniform(0.02, 0.4))
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)

        # after every kill: each file loads completely, with uniform weights of one version
        manifest = read_manifest(run)
        assert manifest["status"] == "running"
        model = load_vqvae(run)
        values = {float(p.data.flatten()[0]) for p in model.parameters()}
        assert len(values) == 1, "a model file mixes two versions"
        versions_seen |= values
        prior_model = load_prior(run)
        assert len({float(p.data.flatten()[0]) for p in prior_model.parameters()}) == 1
        codes = load_codes(run)
        assert len(codes) == 3 and len({int(c[0, 0]) for c in codes.values()}) == 1
        assert all(isinstance(e, dict) for e in read_metrics(run))  # a torn last line is skipped, never fatal
        runs = list_runs(tmp_path / "workspace")
        assert [r["id"] for r in runs] == ["r"] and runs[0]["has_prior"]
    assert len(versions_seen) > 1, "the child never got to save a new version; kills came too early"
    leftovers = [p.name for p in run.iterdir() if p.name.endswith(".tmp")]
    # temp files from killed writers may remain, hidden (dot-prefixed); they are never read ...
    assert all(name.startswith(".") for name in leftovers)
    json.loads((run / "manifest.json").read_text())
    # ... and the next app start sweeps them and marks the run as interrupted
    recovered = recover_workspace(tmp_path / "workspace")
    assert recovered["interrupted"] == 1 and recovered["temp_files_removed"] == len(leftovers)
    assert not list(run.glob(".*.tmp")) and read_manifest(run)["status"] == "interrupted"
    load_vqvae(run)
