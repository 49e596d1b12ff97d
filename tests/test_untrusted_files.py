"""Untrusted model files: loading never unpickles, and hostile or malformed files are refused with a
clear message before any large allocation."""
import io
import json
import pickle
import tracemalloc
import zipfile

import pytest
import torch

from distill.bundle import export_run, import_run
from distill.config import AudioConfig, PriorConfig, VQVAEConfig
from distill.models.vqvae import ConvVQVAE
from distill.runs import (
    build_prior, configs_dict, list_runs, load_codes, load_prior, load_vqvae, read_manifest, save_codes, save_prior,
    save_vqvae, write_manifest,
)
from distill.storage import UnsafeFileError, save_tensors


class Boom:
    def __reduce__(self):
        import os

        return (os.system, ("touch /tmp/distill-pwned",))


@pytest.fixture
def run(tmp_path):
    run = tmp_path / "ws" / "runs" / "r"
    run.mkdir(parents=True)
    vq = VQVAEConfig(hidden_channels=32, codebook_dim=16, codebook_size=16, num_quantizers=2)
    prior = PriorConfig(hidden_size=32, num_layers=1, num_heads=2, context_steps=8)
    write_manifest(run, {"id": "r", "status": "done", **configs_dict(AudioConfig(n_mels=32), vq, prior)})
    save_vqvae(run, ConvVQVAE(32, vq))
    save_prior(run, build_prior(vq, prior))
    save_codes(run, ["a.wav", "b.wav"], [torch.zeros(4, 2, dtype=torch.long), torch.ones(6, 2, dtype=torch.long)])
    return run


def test_pickle_payload_is_never_unpickled(run, tmp_path):
    marker = tmp_path / "pwned"
    payload = pickle.dumps({"state": Boom()})
    for name in ("vqvae.safetensors", "prior.safetensors", "codes.safetensors"):
        (run / name).write_bytes(payload)
    for loader in (load_vqvae, load_prior, load_codes):
        with pytest.raises(UnsafeFileError, match="not a safetensors file|cannot be read"):
            loader(run)
    assert not marker.exists()
    import os

    assert not os.path.exists("/tmp/distill-pwned")


def test_wrong_shapes_and_dtypes_are_refused(run):
    model = load_vqvae(run)
    state = model.state_dict()
    name = next(k for k, v in state.items() if v.dtype == torch.float32 and v.ndim >= 2)
    bad = dict(state)
    bad[name] = torch.zeros(3, 3)
    save_tensors(run / "vqvae.safetensors", bad)
    with pytest.raises(UnsafeFileError, match=f"tensor '{name}'"):
        load_vqvae(run)
    bad[name] = state[name].to(torch.float64)
    save_tensors(run / "vqvae.safetensors", bad)
    with pytest.raises(UnsafeFileError, match="F64"):
        load_vqvae(run)
    missing = dict(state)
    missing.pop(name)
    save_tensors(run / "vqvae.safetensors", missing)
    with pytest.raises(UnsafeFileError, match="missing"):
        load_vqvae(run)


def test_absurd_manifest_sizes_refused_before_allocation(run):
    manifest = read_manifest(run)
    for section, key, value in [("vqvae_config", "codebook_size", 10**9), ("prior_config", "hidden_size", 10**6),
                                ("prior_config", "num_layers", 10**5), ("audio_config", "n_mels", 10**7),
                                ("vqvae_config", "hidden_channels", -1)]:
        hostile = json.loads(json.dumps(manifest))
        hostile[section][key] = value
        write_manifest(run, hostile)
        tracemalloc.start()
        with pytest.raises(UnsafeFileError, match="outside the sane range"):
            load_vqvae(run) if section != "prior_config" else load_prior(run)
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert peak < 50 * 1024**2, f"{key}={value}: allocated {peak} bytes before refusing"


def test_malformed_manifests_refused(run):
    (run / "manifest.json").write_text("{not json")
    with pytest.raises(UnsafeFileError, match="not valid JSON"):
        read_manifest(run)
    (run / "manifest.json").write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(UnsafeFileError, match="not a Distill run"):
        read_manifest(run)
    (run / "manifest.json").write_text(json.dumps({"format": "distill-run", "vqvae_config": {"codebook_size": "64"}}))
    with pytest.raises(UnsafeFileError, match="invalid"):
        load_vqvae(run)
    (run / "manifest.json").write_text(json.dumps({"format": "distill-run", "vqvae_config": {"__class__": 1}}))
    with pytest.raises(UnsafeFileError, match="unknown settings"):
        load_vqvae(run)
    assert list_runs(run.parent.parent)[0]["status"] == "unreadable"


def test_codes_out_of_range_refused(run):
    save_codes(run, ["a.wav"], [torch.full((4, 2), 999)])
    with pytest.raises(UnsafeFileError, match="does not fit"):
        load_codes(run)


def test_bundle_round_trip(run, tmp_path):
    bundle = export_run(run, tmp_path / "r.distill.zip")
    imported = import_run(bundle, tmp_path / "other_ws")
    assert imported.parent == tmp_path / "other_ws" / "runs"
    a, b = load_vqvae(run), load_vqvae(imported)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    assert load_codes(imported).keys() == load_codes(run).keys()


def _zip(path, members: dict, compression=zipfile.ZIP_STORED):
    with zipfile.ZipFile(path, "w", compression=compression) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


def test_hostile_bundles_refused_and_nothing_left_behind(run, tmp_path):
    ws = tmp_path / "ws2"
    manifest = (run / "manifest.json").read_bytes()
    cases = {
        "escape": ({"manifest.json": manifest, "../../evil.txt": b"x"}, "not part of a Distill run"),
        "absolute": ({"manifest.json": manifest, "/etc/cron.d/evil": b"x"}, "not part of a Distill run"),
        "unknown": ({"manifest.json": manifest, "run.py": b"import os"}, "not part of a Distill run"),
        "sample-escape": ({"manifest.json": manifest, "samples/../../x.wav": b"x"}, "not part of a Distill run"),
        "no-manifest": ({"vqvae.safetensors": b"x"}, "no manifest"),
        "pickle": ({"manifest.json": manifest, "vqvae.safetensors": pickle.dumps(Boom())}, "not a safetensors file"),
    }
    for label, (members, message) in cases.items():
        with pytest.raises(UnsafeFileError, match=message):
            import_run(_zip(tmp_path / f"{label}.zip", members), ws)
    bomb = io.BytesIO()
    with zipfile.ZipFile(bomb, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("manifest.json", manifest)
        zf.writestr("metrics.jsonl", b"\0" * (50 * 1024**2))
    (tmp_path / "bomb.zip").write_bytes(bomb.getvalue())
    with pytest.raises(UnsafeFileError, match="zip bomb"):
        import_run(tmp_path / "bomb.zip", ws)
    (tmp_path / "notzip.zip").write_bytes(b"garbage")
    with pytest.raises(UnsafeFileError, match="not a Distill run bundle"):
        import_run(tmp_path / "notzip.zip", ws)
    assert not (tmp_path / "evil.txt").exists()
    leftovers = list((ws / "runs").iterdir()) if (ws / "runs").exists() else []
    assert leftovers == [], leftovers


def test_prior_file_carries_its_settings_so_a_lagging_manifest_cannot_break_loading(run):
    # A retrain saved a differently sized prior, then the manifest update was lost (disk full, kill -9).
    vq = VQVAEConfig(hidden_channels=32, codebook_dim=16, codebook_size=16, num_quantizers=2)
    other = PriorConfig(hidden_size=16, num_layers=2, num_heads=2, context_steps=8)
    save_prior(run, build_prior(vq, other), other)
    assert read_manifest(run)["prior_config"]["hidden_size"] == 32
    model = load_prior(run)
    assert model.settings()["hidden_size"] == 16


def test_bundle_cli_export_and_import(run, tmp_path):
    import subprocess
    import sys

    from conftest import REPO

    out = subprocess.run([sys.executable, "-m", "distill", "export", str(run), "--out", str(tmp_path / "b.zip")],
                         capture_output=True, text=True, cwd=REPO, timeout=120)
    assert out.returncode == 0, out.stderr
    got = subprocess.run([sys.executable, "-m", "distill", "import", str(tmp_path / "b.zip"), "--workspace",
                          str(tmp_path / "w")], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert got.returncode == 0, got.stderr
    assert load_codes(got.stdout.strip().splitlines()[-1]).keys() == load_codes(run).keys()
    (tmp_path / "evil.zip").write_bytes(b"not a zip")
    bad = subprocess.run([sys.executable, "-m", "distill", "import", str(tmp_path / "evil.zip"), "--workspace",
                          str(tmp_path / "w")], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert bad.returncode == 2 and "not a Distill run bundle" in bad.stderr


def test_priors_saved_before_clip_ends_still_load(run):
    """Settings written before PriorConfig had `learn_clip_ends` describe a prior without an end head."""
    from dataclasses import asdict

    from distill.runs import update_manifest

    vq = VQVAEConfig(hidden_channels=32, codebook_dim=16, codebook_size=16, num_quantizers=2)
    old = PriorConfig(hidden_size=32, num_layers=1, num_heads=2, context_steps=8, learn_clip_ends=False)
    old_settings = {k: v for k, v in asdict(old).items() if k != "learn_clip_ends"}
    update_manifest(run, prior_config=old_settings)
    model = build_prior(vq, old)
    save_prior(run, model)  # no settings inside the file, as the oldest runs have
    loaded = load_prior(run)
    assert loaded.end_head is None
    x = torch.randint(0, 16, (1, 10))
    assert torch.equal(loaded(x), model.eval()(x))
    assert build_prior(vq, PriorConfig(hidden_size=32, num_layers=1, num_heads=2)).end_head is not None  # new runs


# --- manifests shown on the page (issue 16) ----------------------------------------------------------

XSS = "<img src=x onerror=alert(1)>"


def test_bundle_with_markup_in_its_manifest_is_refused_and_never_drawn(run, tmp_path):
    """A shared bundle's manifest is drawn on page load: markup in it must never reach the page as markup."""
    from distill.app.service import DistillApp
    from distill.app.views import status_card_html
    from distill.runs import update_manifest

    update_manifest(run, tier={"tier": XSS})
    ws = tmp_path / "other_ws"
    with pytest.raises(UnsafeFileError, match="tier"):
        import_run(export_run(run, tmp_path / "xss.zip"), ws)
    assert not [p for p in (ws / "runs").iterdir()]
    # A run already in the workspace with such a manifest (imported before the check): listed, drawn escaped.
    app = DistillApp(run.parent.parent)
    assert app.runs()[0]["tier"] is None
    assert "<img" not in status_card_html(None, "r", read_manifest(run))
    for field in ("status", "created", "message", "source", "id"):
        card = status_card_html(None, XSS, {**read_manifest(run), field: XSS})
        assert "<img" not in card and "<b>" in card, field  # the card's own markup stays


def test_wrong_types_in_a_manifest_never_break_the_runs_list(run, tmp_path):
    from distill.app.service import DistillApp
    from distill.app.views import runs_rows, status_card_html
    from distill.runs import update_manifest

    from distill.app.ui import _refresh

    app = DistillApp(run.parent.parent)
    for changes in ({"tier": "x"}, {"files": "x"}, {"files": {"used": 3}}, {"status": ["a"]}, {"created": {"a": 1}},
                    {"stage_seconds": [1, 2]}, {"message": 7}, {"source": {"x": 1}}, {"split": "x"}):
        update_manifest(run, **changes)
        listed = app.runs()
        assert listed[0]["id"] == "r" and listed[0]["status"] != "unreadable", changes
        runs_rows(listed)
        assert "d-status" in status_card_html(None, "r", read_manifest(run)), changes
        assert _refresh(app, "r", {}, True), changes  # the whole run view redraws
        with pytest.raises(UnsafeFileError):
            import_run(export_run(run, tmp_path / "typed.zip"), tmp_path / "other_ws")
        write_manifest(run, {k: v for k, v in read_manifest(run).items() if k not in changes})
    update_manifest(run, prior_config="x")  # unreadable settings: listed as such, the view still draws
    assert app.runs()[0]["status"] == "unreadable" and _refresh(app, "r", {}, True)


def _claim_size(bundle, member: str, size: int):
    """Make the bundle's central directory claim `size` bytes for `member` (nothing that large is written)."""
    import struct

    data = bytearray(bundle.read_bytes())
    at = 0
    while (at := data.find(b"PK\x01\x02", at)) >= 0:
        name_len = struct.unpack_from("<H", data, at + 28)[0]
        if data[at + 46:at + 46 + name_len] == member.encode():
            struct.pack_into("<II", data, at + 20, size, size)
        at += 4
    bundle.write_bytes(bytes(data))
    return bundle


def test_oversized_and_deeply_nested_files_in_a_bundle_are_refused(run, tmp_path):
    from distill.storage import append_jsonl

    ws = tmp_path / "other_ws"
    append_jsonl(run / "metrics.jsonl", {"kind": "step", "stage": "vqvae", "step": 1, "loss": 1.0})
    big = _claim_size(export_run(run, tmp_path / "big.zip"), "metrics.jsonl", 1024**3)
    with pytest.raises(UnsafeFileError, match="metrics.jsonl.*1.0 GB.*64 MB"):
        import_run(big, ws)
    deep = "[" * 100_000 + "]" * 100_000
    manifest = (run / "manifest.json").read_text()
    cases = {
        "manifest": {"manifest.json": manifest[:-2] + f', "deep": {deep}}}\n'},
        "sidecar": {"manifest.json": manifest, "samples/s1.json": deep},
        "sidecar-not-object": {"manifest.json": manifest, "samples/s2.json": "[1, 2]"},
    }
    for label, members in cases.items():
        with pytest.raises(UnsafeFileError, match="nested too deeply|not a sample description"):
            import_run(_zip(tmp_path / f"{label}.zip", members), ws)
    assert list((ws / "runs").iterdir()) == []


def test_oversized_and_deeply_nested_files_in_a_run_are_shown_safely(run, tmp_path, monkeypatch):
    """Runs already in the workspace (imported before the checks, or edited by hand) never break the page."""
    import time

    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path / "gradio-tmp"))
    from distill.app.service import DistillApp
    from distill.app.views import notes_html
    from distill.runs import read_metrics

    deep = "[" * 100_000 + "]" * 100_000
    with open(run / "metrics.jsonl", "w") as fh:  # a readable line, a nested one, a readable one
        fh.write('{"kind": "step", "stage": "vqvae", "step": 1, "loss": 1.0}\n{"deep": %s}\n' % deep)
        fh.write('{"kind": "step", "stage": "vqvae", "step": 2, "loss": 0.5}\n')
    assert [e["step"] for e in read_metrics(run)] == [1, 2]
    (run / "samples").mkdir(exist_ok=True)
    (run / "samples" / "s1.json").write_text(deep)
    (run / "samples" / "s1.wav").write_bytes(b"RIFF")
    app = DistillApp(run.parent.parent)
    assert app.samples(run) == []
    with open(run / "metrics.jsonl", "wb") as fh:  # 1 GB, sparse: nothing that large is written
        fh.truncate(1024**3)
    t0 = time.perf_counter()
    events = app.run_events(run)
    assert time.perf_counter() - t0 < 1.0
    assert len(events) == 1 and events[0]["kind"] == "warning" and "1.0 GB" in events[0]["message"], events
    assert "too large to draw" in notes_html([events[0]["message"]], [])
    good = read_manifest(run)
    (run / "manifest.json").write_text(json.dumps({**good, "deep": json.loads("[" * 500 + "]" * 500)}))
    listed = app.runs()
    assert listed[0]["status"] == "unreadable" and "nested too deeply" in listed[0]["problem"]
    save_codes(run, ["a.wav"], [torch.zeros(4, 2, dtype=torch.long)])
    write_manifest(run, good)
    from safetensors.torch import load_file, save_file

    tensors = load_file(run / "codes.safetensors")
    save_file(tensors, run / "codes.safetensors", metadata={"names": deep})  # names nested: keys shown instead
    assert list(load_codes(run)) == ["00000"]


def test_a_file_name_matplotlib_reads_as_maths_is_drawn_as_text():
    import io as _io

    from distill.app import figures

    for name in ("$\\x$.wav", "a $b$ c.wav", "$$.wav", "\\frac{$}.wav"):
        fig = figures.code_sequence_figure(torch.zeros(8, 2, dtype=torch.long).numpy(), 16, 10.0, title=name)
        fig.savefig(_io.BytesIO(), format="png")  # mathtext would raise here
        assert fig.axes[0].get_title(loc="left").startswith(name)
