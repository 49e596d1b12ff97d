"""The JSON API for scripts and `gradio_client`: scan, ingest (uploads), start, status, stop, list_runs,
retrain, generate, codes, vary, pack. Each is a plain typed function registered with `gr.api` on the page's Blocks.
"""
from __future__ import annotations

import json
from pathlib import Path

import gradio as gr

from distill.app import figures
from distill.app.service import DistillApp


def api_safe(obj):
    """JSON for gradio_client: every "path" key becomes "file_path".

    gradio_client treats any {"path": str} dict in a result as a file to download (and fails on the
    scan report's relative paths), so the JSON endpoints never use that key.
    """
    if isinstance(obj, dict):
        return {("file_path" if k == "path" else k): api_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [api_safe(v) for v in obj]
    return obj


def register_api(app: DistillApp) -> None:
    def scan_result(entry) -> dict:
        from distill.scan import DatasetError

        card, error = None, None
        try:
            card = app.plan(entry, app.options()).tier_card
        except DatasetError as exc:
            error = str(exc)
        return {"scan_id": entry.id, "source": entry.source, "report": entry.report.to_dict(), "tier_card": card,
                "plan_error": error}

    def scan(path: str) -> dict:
        """Scan a folder on this computer: files used/skipped with reasons and the tier card."""
        from distill.scan import DatasetError

        try:
            entry = app.scan(path)
        except DatasetError as exc:
            return {"ok": False, "message": str(exc)}
        result = scan_result(entry)
        return api_safe({"ok": True, "message": result["plan_error"] or "scanned", **result})

    def ingest(payload: str) -> dict:
        """Copy uploaded files into a new dataset folder and scan it, as the page's drop zone does.

        `payload`: JSON {"files": [{"path": <server path returned by /gradio_api/upload>, "rel":
        <path inside the dropped folder>}]}; .zip files are unpacked safely. Paths outside Gradio's
        upload cache, '..' or absolute names, zip bombs and over-limit uploads are refused."""
        from distill.app.uploads import UploadError
        from distill.scan import DatasetError

        try:
            data = json.loads(payload or "{}") if isinstance(payload, str) else payload
            files = data.get("files") if isinstance(data, dict) else None
            if isinstance(files, list):  # "file_path" is accepted too (what api_safe writes)
                files = [{**f, "path": f.get("path", f.get("file_path"))} if isinstance(f, dict) else f for f in files]
            entry = app.ingest_upload(json.dumps({"files": files}))
        except (UploadError, DatasetError, json.JSONDecodeError, TypeError) as exc:
            return {"ok": False, "message": str(exc)}
        return api_safe({"ok": True, "message": entry.note, **scan_result(entry)})

    def start(source: str = "", preset: str = "auto", minutes: float | None = None, device: str = "auto",
              seed: int = 0, num_quantizers: int = 3, vqvae_overrides: dict | None = None,
              prior_overrides: dict | None = None) -> dict:
        """Start training on a folder (default: the last scanned one). Returns at once; poll /status."""
        entry = app.latest_scan()
        try:
            same = entry is not None and (not source or Path(source).expanduser().resolve() == Path(entry.source))
        except (OSError, ValueError, RuntimeError):  # not a usable path: the pipeline says so in words
            same = False
        target = entry if same else source  # the scanned entry brings its plan's budgets for the ETA
        try:
            options = app.options(preset, minutes, device, seed, num_quantizers, vqvae_overrides, prior_overrides)
        except Exception as exc:
            return {"ok": False, "message": str(exc), "run_id": ""}
        return app.start(target, options)

    def status() -> dict:
        """The running (or last) job: state, stage, progress, ETA, device, latest losses, warnings; once it
        has finished, "learned": how much its sequence model learned (distill.learning)."""
        snap = app.worker.status()
        run_dir = app.run_dir(snap.get("run_id")) if snap.get("state") == "done" else None
        if run_dir is not None:
            from distill.learning import judge_manifest

            try:
                verdict = judge_manifest(app.manifest(run_dir))
            except Exception:  # an unreadable manifest: the status stands without it
                verdict = None
            if verdict is not None:
                snap["learned"] = verdict.to_dict()
        return snap

    def stop() -> dict:
        """Ask the running job to stop after its current step (finished stages are kept)."""
        return app.worker.stop()

    def list_runs() -> list:
        """Every run in the workspace, newest first ("file_path": its folder)."""
        return api_safe(app.runs())

    def retrain(run_id: str, preset: str = "auto", minutes: float | None = None, prior_overrides: dict | None = None) -> dict:
        """Train a new prior on a finished run's codes (no VQ-VAE retraining)."""
        try:
            options = app.options(preset, minutes, prior_overrides=prior_overrides)
        except (ValueError, TypeError) as exc:
            return {"ok": False, "message": str(exc), "run_id": run_id}
        return app.retrain(run_id, options)

    def resume(run_id: str) -> dict:
        """Continue an interrupted or stopped run from its last checkpoint."""
        return app.resume(run_id)

    def generate(run_id: str = "", seconds: float = 4.0, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
                 seed: int = 0, variations: int = 1, fmt: str = "wav", prompt_file: str = "") -> dict:
        """Generate samples from a run (default: the newest run with a prior); saved in its samples/.
        Each sample: {"id", "file_path" (the audio), "sidecar", "seconds", "seed", "codes_shape"}.
        Clips end and restart where the model learnt that files end (the page's checkbox can turn it
        off; here it stays on, since a tenth argument would break callers that send nine; "Follow your
        material" stays at its default, distill.config.SAMPLING_DEFAULTS)."""
        if not run_id:
            run_id = next((r["id"] for r in app.runs() if r.get("has_prior")), "")
        try:
            samples = app.generate(run_id, seconds, temperature, top_k, top_p, seed, variations, fmt, prompt_file or None)
        except (ValueError, RuntimeError) as exc:
            return {"ok": False, "message": str(exc), "samples": []}
        return api_safe({"ok": True, "run_id": run_id, "message": f"{len(samples)} sample(s) saved",
                         "samples": [{k: v for k, v in s.items() if k != "codes"} | {"codes_shape": list(s["codes"].shape)}
                                     for s in samples]})

    def codes(run_id: str, file: str = "") -> dict:
        """A run's codes: file names, one file's codes [T', Q], and per-level histograms training vs generated."""
        run_dir = app.run_dir(run_id)
        if run_dir is None:
            return {"ok": False, "message": f"no run '{run_id}'"}
        all_codes = app.codes(run_dir)
        if not all_codes:
            return {"ok": False, "message": "this run has no codes yet"}
        name = file if file in all_codes else next(iter(all_codes))
        train_counts, gen_counts = app.histograms(run_dir)
        stats = lambda c: [figures.level_stats(row) for row in c] if c is not None else None  # noqa: E731
        return {"ok": True, "files": list(all_codes), "file": name, "codes": all_codes[name].tolist(),
                "histogram_train": train_counts.tolist() if train_counts is not None else None,
                "histogram_generated": gen_counts.tolist() if gen_counts is not None else None,
                "levels_train": stats(train_counts), "levels_generated": stats(gen_counts)}

    def vary(run_id: str = "", source: str = "file", ref: str = "", mode: str = "shape", keep_levels: int = 1,
             at_seconds: float = 1.0, seconds: float = 2.0, count: int = 1, seed: int = 0, follow: float = 0.9) -> dict:
        """Variations of one sound, saved in the run's samples/. `source`: "file" (ref: a training file's
        name), "sample" (ref: a saved sample's id, e.g. an earlier variation: "vary this") or "upload"
        (ref: the server path /gradio_api/upload returned). `mode`: "shape" keeps the input's first
        `keep_levels` levels and samples the rest; "continue" keeps everything before `at_seconds` and
        continues for `seconds`. Variation i uses seed + i."""
        if not run_id:
            run_id = next((r["id"] for r in app.runs() if r.get("has_prior")), "")
        try:
            out = app.vary(run_id, source, ref, None, mode, keep_levels, at_seconds, seconds, count, seed, follow)
        except (ValueError, RuntimeError) as exc:
            return {"ok": False, "message": str(exc), "samples": []}
        src = out["input"]
        return api_safe({"ok": True, "run_id": run_id, "message": src.note or f"{len(out['results'])} variation(s) saved",
                         "input": {**src.describe(), "codes_shape": list(src.codes.shape)},
                         "samples": [_sample_json(s) for s in out["results"]]})

    def pack(run_id: str = "", count: int = 8, seed: int = 0, follow: float = 0.9) -> dict:
        """Make `count` new one-shots (clips the model ends, trimmed to their sound, near-copies and
        clips shorter than your shortest file left out), saved as samples; "zip": all of them in one file."""
        if not run_id:
            run_id = next((r["id"] for r in app.runs() if r.get("has_prior")), "")
        try:
            out = app.make_pack(run_id, count, seed, follow)
        except (ValueError, RuntimeError) as exc:
            return {"ok": False, "message": str(exc), "samples": [], "zip": ""}
        return api_safe({"ok": True, "run_id": run_id, "message": out["message"], "pack": out["pack"], "zip": out["zip"],
                         "samples": [_sample_json(s) for s in out["samples"]]})

    gr.api(scan, api_name="scan")
    gr.api(ingest, api_name="ingest")
    gr.api(start, api_name="start", concurrency_limit=None)
    gr.api(status, api_name="status", concurrency_limit=None, queue=False)  # plain HTTP: no queue round trips
    gr.api(stop, api_name="stop", concurrency_limit=None)
    gr.api(list_runs, api_name="list_runs", concurrency_limit=None)
    gr.api(retrain, api_name="retrain", concurrency_limit=None)
    gr.api(resume, api_name="resume", concurrency_limit=None)
    gr.api(generate, api_name="generate")
    gr.api(codes, api_name="codes", concurrency_limit=None)
    gr.api(vary, api_name="vary")
    gr.api(pack, api_name="pack")


def _sample_json(s: dict) -> dict:
    return {k: v for k, v in s.items() if k != "codes"} | {"codes_shape": list(s["codes"].shape)}
