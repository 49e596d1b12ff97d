"""The actions behind the page and the API, and what outlives a browser tab.

`DistillApp` owns the worker, the latest scans and small file caches (keyed by size and mtime, so
polls never re-read unchanged files), and turns uploads, typed paths and the demo into scans,
scans into training runs, and runs into codes, histograms and generated samples. The page (ui.py)
and the JSON API (api.py) only call it.
"""
from __future__ import annotations

import json
import shutil
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from distill.app.dataset_reuse import find_upload, remember_upload, upload_fingerprint
from distill.app.uploads import UploadError, UploadLimits, ingest_files, new_dataset_dir
from distill.app.views import fmt_duration
from distill.app.worker import Worker

REPO_ROOT = Path(__file__).resolve().parents[2]
DEMO_DIR = REPO_ROOT / "assets" / "demo"
MAX_VARIATIONS = 4
PREVIEW_SECONDS = 120.0  # audio preview of a file outside the workspace is cut to this
# Where a person without a run is sent: every "no run" dead end says the same, and where to go.
NO_RUN_MESSAGE = ("No run to use yet: train one first. On the 1 · Dataset tab, drop a folder (or use the demo), "
                  "then press Start training; a quick look takes about a minute.")
NOT_TRAINED_MESSAGE = "This run's sequence model is not trained yet: wait for training to finish, or open a finished run."


@dataclass
class ScanEntry:
    id: str
    source: str  # what the pipeline gets: a folder path
    label: str  # how the page names it
    report: Any  # distill.scan.ScanReport (features not kept)
    rows: list[list] = field(default_factory=list)  # file table rows, used first
    note: str = ""  # what happened on the way in (upload summary)


class DistillApp:
    """The actions behind the page and the API. One per app process; thread-safe."""

    def __init__(self, workspace: str | Path, worker: Worker | None = None, limits: UploadLimits | None = None):
        self.workspace = Path(workspace).expanduser().resolve()
        for sub in ("datasets", "runs", "cache"):
            (self.workspace / sub).mkdir(parents=True, exist_ok=True)
        self.cache_dir = self.workspace / "cache"
        self.worker = worker or Worker(self.workspace)
        self.limits = limits or UploadLimits()
        self._lock = threading.Lock()
        self._scans: OrderedDict[str, ScanEntry] = OrderedDict()
        self._file_cache: dict[tuple, tuple[tuple, Any]] = {}
        self._gen_lock = threading.Lock()  # one generation at a time: they share the CPU with training
        self._run_cache = None
        # Moves whenever a run's name changes, so every open page redraws its runs list and picker
        # (a poll answered just before a rename would otherwise leave the old name showing).
        self.names_revision = 0

    # --- datasets ---------------------------------------------------------------------------------

    def scan(self, source: str | Path, label: str | None = None, note: str = "", progress=None) -> ScanEntry:
        """Scan a folder; raises DatasetError (missing folder) with a message for people."""
        from distill.planning import TrainOptions, audio_config_for
        from distill.scan import DatasetError, scan_dataset

        text = str(source).strip()
        if not text:
            raise DatasetError("Type the path of a folder on this computer first.")
        try:
            path = Path(text).expanduser()
            is_dir, exists = path.is_dir(), path.exists()
        except (OSError, ValueError, RuntimeError):  # a null byte, a name too long, a link loop
            is_dir = exists = False
        if not is_dir:
            raise DatasetError(f"'{text[:200]}' is not a folder on this computer." if not exists
                               else f"'{text[:200]}' is a file; choose the folder that holds your sounds.")
        # at the rate training will use (chosen from the files' own rates), so its features are cached
        report = scan_dataset(path, audio_config_for(TrainOptions(), path), cache_dir=self.cache_dir, progress=progress,
                              keep_features=False)
        entry = ScanEntry(id=f"scan-{time.time_ns()}", source=str(path.resolve()), label=label or path.name,
                          report=report, rows=report_rows(report), note=note)
        with self._lock:
            self._scans[entry.id] = entry
            while len(self._scans) > 8:
                self._scans.popitem(last=False)
        return entry

    def get_scan(self, scan_id: str | None) -> ScanEntry | None:
        with self._lock:
            if scan_id and scan_id in self._scans:
                return self._scans[scan_id]
            return None

    def latest_scan(self) -> ScanEntry | None:
        with self._lock:
            return next(reversed(self._scans.values()), None) if self._scans else None

    def ingest_upload(self, payload: str, progress=None) -> ScanEntry:
        """The drop zone's JSON ({files: [{path, rel}]}) -> a new dataset folder -> its scan."""
        try:
            data = json.loads(payload or "{}")
            files = data.get("files") if isinstance(data, dict) else None
        except json.JSONDecodeError:
            files = None
        if not isinstance(files, list) or not files:
            raise UploadError("Nothing arrived from the upload. Drop the folder again.")
        items = []
        for f in files:
            if not isinstance(f, dict) or not isinstance(f.get("path"), str) or not isinstance(f.get("rel"), str):
                raise UploadError("The upload was garbled. Drop the folder again.")
            items.append((f["path"], f["rel"]))
        tops = {it[1].replace("\\", "/").split("/")[0] for it in items}
        label = next(iter(tops)) if len(tops) == 1 and len(items) > 1 else "upload"
        fingerprint = upload_fingerprint(items, upload_root())
        earlier = find_upload(self.workspace, fingerprint) if fingerprint else None
        if earlier is not None:  # the same files again: scan the copy made last time
            folder, mark = earlier
            note = (f"The same {len(mark.files)} file(s) as an earlier upload: using the copy already in the workspace "
                    f"(`{folder.name}`), nothing copied again.")
            return self.scan(_dataset_root(folder), label=mark.label, note=note, progress=progress)
        folder = new_dataset_dir(self.workspace, label)
        try:
            result = ingest_files(items, folder, self.limits, allowed_roots=[upload_root()])
        except UploadError:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        except OSError as exc:  # a disk or file-system problem: said in words, nothing half-copied left behind
            shutil.rmtree(folder, ignore_errors=True)
            raise UploadError(f"The upload could not be copied into the workspace ({exc.strerror or exc}).") from None
        if fingerprint:
            remember_upload(self.workspace, folder, fingerprint, result.files, label)
        return self.scan(_dataset_root(folder), label=label, note=result.summary(), progress=progress)

    def demo_dataset(self, progress=None) -> ScanEntry:
        from distill.scan import DatasetError

        if not DEMO_DIR.is_dir() or not any(DEMO_DIR.rglob("*.*")):
            raise DatasetError("The demo sounds are missing from this installation (assets/demo). "
                               "Run `python assets/make_demo.py` once to create them.")
        dest = self.workspace / "datasets" / "demo"
        if not dest.is_dir():
            tmp = dest.with_name(".demo-copying")
            shutil.rmtree(tmp, ignore_errors=True)
            shutil.copytree(DEMO_DIR, tmp)
            tmp.rename(dest)
        return self.scan(dest, label="demo", note="The built-in demo: synthetic plucks, bells, drums and textures.",
                         progress=progress)

    # --- planning and training --------------------------------------------------------------------

    def options(self, preset: str = "auto", minutes: float | None = None, device: str = "auto", seed: int = 0,
                num_quantizers: int = 3, vqvae_overrides: dict | None = None, prior_overrides: dict | None = None):
        from distill.pipeline import PRESETS, TrainOptions

        if (preset or "auto") not in PRESETS:  # refused here, not as a failed run (or a failed retrain of a good one)
            raise ValueError(f"Unknown preset '{str(preset)[:40]}': choose one of {', '.join(PRESETS)}.")
        if minutes is not None and (not isinstance(minutes, (int, float)) or minutes <= 0):
            minutes = None
        return TrainOptions(preset=preset or "auto", minutes=minutes, seed=int(seed or 0), device=device or "auto",
                            num_quantizers=int(num_quantizers or 3), vqvae_overrides=dict(vqvae_overrides or {}),
                            prior_overrides=dict(prior_overrides or {}), cache_dir=str(self.cache_dir))

    @staticmethod
    def plan(entry: ScanEntry, options) -> Any:
        """The tier card and configs for a scan with these options (pure Python, instant)."""
        from distill.pipeline import plan_training

        return plan_training(entry.report, options)

    def start(self, entry_or_source: ScanEntry | str, options) -> dict:
        """Hand a run to the worker. Returns at once: {"ok", "message", "run_id"}.

        Given a ScanEntry, its plan's stage budgets and device feed the progress bar's ETA."""
        entry = entry_or_source if isinstance(entry_or_source, ScanEntry) else None
        source = entry.source if entry is not None else str(entry_or_source or "")
        if not source:
            return {"ok": False, "message": "Choose a dataset first (drop a folder, type a path or use the demo).",
                    "run_id": ""}
        if entry is None:  # a typed path: refuse a typo here rather than leave a failed run behind
            try:
                is_dir = Path(source).expanduser().is_dir()
            except (OSError, ValueError, RuntimeError):
                is_dir = False
            if not is_dir:
                return {"ok": False, "message": f"'{source[:200]}' is not a folder on this computer.", "run_id": ""}
        expected: dict = {}
        if entry is not None:
            try:
                plan = self.plan(entry, options)
                expected = {"vqvae": plan.vqvae_config.time_budget_s, "prior": plan.prior_config.time_budget_s,
                            "device": plan.tier_card.get("device", "")}
            except Exception:  # the pipeline reports a dataset problem itself, in words
                expected = {}
        return self.worker.start(source, options, expected=expected)

    def retrain(self, run_id: str, options) -> dict:
        run_dir = self.run_dir(run_id)
        if run_dir is None:
            return {"ok": False, "message": NO_RUN_MESSAGE, "run_id": ""}
        if not (run_dir / "codes.safetensors").is_file():
            return {"ok": False, "message": "This run has no codes yet, so there is nothing to retrain the sequence model on.",
                    "run_id": run_id}
        return self.worker.retrain(run_dir, options)  # the prior's stage_start carries its budget for the ETA

    def resume(self, run_id: str) -> dict:
        from distill.pipeline import can_resume

        run_dir = self.run_dir(run_id)
        if run_dir is None:
            return {"ok": False, "message": NO_RUN_MESSAGE, "run_id": ""}
        if self.worker.is_running():
            return {"ok": False, "message": "A training run is going; wait for it or stop it first.", "run_id": run_id}
        check = can_resume(run_dir)
        if not check.get("ok"):
            return {"ok": False, "message": check.get("message") or "This run cannot be resumed.", "run_id": run_id}
        return self.worker.resume(run_dir)

    # --- runs -------------------------------------------------------------------------------------

    def runs(self) -> list[dict]:
        from distill.runs import list_runs

        active = self.worker.active_run_dir()
        out = []
        for r in list_runs(self.workspace):
            r = dict(r)
            if active is not None and Path(r["path"]) == active:
                r["status"] = "training"
            elif r.get("status") == "running":
                r["status"] = "interrupted"  # the app stopped while it trained; finished stages are kept
            out.append(r)
        return out

    def rename(self, run_id: str | None, label) -> dict:
        """Give a run its own name (kept in its manifest). {"ok", "message", "label"}."""
        from distill.runs import UnsafeFileError, rename_run

        run_dir = self.run_dir(run_id)
        if run_dir is None:
            return {"ok": False, "message": NO_RUN_MESSAGE, "label": ""}
        if self.worker.active_run_dir() == run_dir:  # the worker rewrites this manifest as it trains
            return {"ok": False, "message": "This run is training: rename it once it has finished (or been stopped).",
                    "label": ""}
        try:
            kept = rename_run(run_dir, label)
        except (UnsafeFileError, OSError) as exc:
            return {"ok": False, "message": f"The run could not be renamed: {exc}", "label": ""}
        self.names_revision += 1
        return {"ok": True, "label": kept,
                "message": f"Renamed to “{kept}”." if kept else "Its own name removed: it is named after its dataset again."}

    def run_dir(self, run_id: str | None) -> Path | None:
        if not run_id:
            return None
        name = Path(str(run_id)).name  # ids only, never paths
        if name != str(run_id) or name in ("", ".", ".."):
            return None
        d = self.workspace / "runs" / name
        # a linked folder could lead outside the workspace: samples would be written there
        return d if d.is_dir() and not d.is_symlink() else None

    def manifest(self, run_dir: Path) -> dict:
        from distill.runs import read_manifest

        return self._cached(("manifest", str(run_dir)), run_dir / "manifest.json", lambda: read_manifest(run_dir))

    def run_events(self, run_dir: Path) -> list[dict]:
        live = self.worker.job_events(run_dir)
        if live is not None:
            return live
        from distill.runs import continuous_history, read_metrics

        # steps redone after a kill and a resume are drawn once, as the worker draws a live resume
        return self._cached(("metrics", str(run_dir)), run_dir / "metrics.jsonl",
                            lambda: continuous_history(read_metrics(run_dir))) or []

    def codes(self, run_dir: Path) -> dict[str, np.ndarray]:
        from distill.runs import load_codes

        return self._cached(("codes", str(run_dir)), run_dir / "codes.safetensors", lambda: load_codes(run_dir)) or {}

    def _cached(self, key: tuple, path: Path, load):
        """Load once per file version (size, mtime): polls and redraws never re-read unchanged files."""
        try:
            st = path.stat()
        except FileNotFoundError:
            return None
        stamp = (st.st_size, st.st_mtime_ns)
        with self._lock:
            hit = self._file_cache.get(key)
            if hit and hit[0] == stamp:
                return hit[1]
        value = load()
        with self._lock:
            self._file_cache[key] = (stamp, value)
            if len(self._file_cache) > 64:
                self._file_cache.pop(next(iter(self._file_cache)))
        return value

    def code_rate(self, run_dir: Path) -> tuple[float | None, int | None]:
        """(code steps per second, codebook size) from the run's settings."""
        try:
            m = self.manifest(run_dir) or {}
            a, v = m.get("audio_config") or {}, m.get("vqvae_config") or {}
            return a["sample_rate"] / a["hop_length"] / v["downsample"], int(v["codebook_size"])
        except (KeyError, TypeError, ZeroDivisionError):
            return None, None

    def histograms(self, run_dir: Path) -> tuple[np.ndarray | None, np.ndarray | None]:
        """[Q, K] counts of the training codes and of every saved sample's codes."""
        codes = self.codes(run_dir)
        _, k = self.code_rate(run_dir)
        if not codes or not k:
            return None, None
        split = (self.manifest(run_dir) or {}).get("split")
        listed = split.get("train") if isinstance(split, dict) else None  # a hand-edited manifest may hold anything
        train_names = {n for n in listed if isinstance(n, str)} if isinstance(listed, list) and listed else set(codes)
        train = [c for n, c in codes.items() if n in train_names] or list(codes.values())
        gen = [c for c in self.sample_codes(run_dir).values() if c is not None]
        return _counts(train, k), (_counts(gen, k) if gen else None)

    def samples(self, run_dir: Path) -> list[dict]:
        from distill.generate import list_samples

        try:
            return list_samples(run_dir)
        except RecursionError:  # a sidecar nested too deeply (bundle import refuses them now): no list, no crash
            return []

    def sample_codes(self, run_dir: Path) -> dict[str, np.ndarray | None]:
        from distill.generate import load_sample_codes

        out = {}
        for s in self.samples(run_dir):
            key = ("sample", s.get("id"))
            path = Path(s["path"]).with_suffix("").with_suffix(".codes.safetensors")
            out[s.get("id")] = self._cached(key, path, lambda s=s: load_sample_codes(s))
        return out

    def file_audio(self, run_dir: Path, name: str):
        """The training file to play next to its codes: a path inside the workspace, else a decoded preview.

        Only a file the run's report lists as used: any client of the page may ask for any name, and
        the source folder may hold private files the scan skipped (hidden folders, other formats)."""
        m = self.manifest(run_dir) or {}
        source = m.get("source")
        if not isinstance(source, str) or not source or not isinstance(name, str) or name not in _used_files(m):
            return None
        path = (Path(source) / name)
        try:
            path.resolve().relative_to(Path(source).resolve())
        except ValueError:
            return None
        if not path.is_file():
            return None
        try:
            path.resolve().relative_to(self.workspace)
            return str(path)
        except ValueError:
            pass
        import soundfile as sf

        try:
            with sf.SoundFile(str(path)) as fh:
                frames = min(fh.frames, int(PREVIEW_SECONDS * fh.samplerate))
                data = fh.read(frames, dtype="float32", always_2d=True)
                return fh.samplerate, data.mean(axis=1)
        except Exception:
            return None

    def reconstruction(self, run_dir: Path, name: str):
        """The training file heard through its codes, as (sample_rate, wave) for a player; None when the run
        has no codes or sound model yet, or `name` is not one of its files. Decoded once per file and model."""
        from distill.reconstruct import reconstruct_file

        if not isinstance(name, str) or name not in self.codes(run_dir):
            return None
        vq_path = run_dir / "vqvae.safetensors"

        def load():
            from distill.runs import load_vqvae

            return load_vqvae(run_dir)

        try:
            vqvae = self._cached(("vqvae", str(run_dir)), vq_path, load)
            if vqvae is None:
                return None
            rec = self._cached(("recon", str(run_dir), name), vq_path,
                               lambda: reconstruct_file(run_dir, name, vqvae=vqvae))
        except Exception:  # a damaged or foreign run: no player rather than a broken tab
            return None
        return rec.sample_rate, rec.wave

    # --- generation -------------------------------------------------------------------------------

    def generate(self, run_id: str, seconds: float = 4.0, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
                 seed: int = 0, variations: int = 1, fmt: str = "wav", prompt_file: str | None = None,
                 clip_ends: bool = True, follow: float | None = None) -> list[dict]:
        """Generate and save `variations` samples (seeds seed, seed+1, ...). Raises ValueError for people."""
        from distill.config import SAMPLING_DEFAULTS
        from distill.generate import RunCache, generate_audio, save_sample
        from distill.sampling_check import sampling_problems

        run_dir = self.run_dir(run_id)
        if run_dir is None:
            raise ValueError(NO_RUN_MESSAGE)
        if not (run_dir / "prior.safetensors").is_file():
            raise ValueError(NOT_TRAINED_MESSAGE)
        fmt = (fmt or "wav").lower()
        if fmt not in ("wav", "flac"):
            raise ValueError("Format must be WAV or FLAC.")
        variations = max(1, min(MAX_VARIATIONS, int(variations or 1)))
        follow = SAMPLING_DEFAULTS["retrieval"] if follow is None else follow
        problems = sampling_problems(seconds, temperature, top_k, top_p, seed, follow)
        if problems:
            raise ValueError(problems[0].message)
        seconds, follow = float(seconds), float(follow)
        prompt = prompt_file or None
        out = []
        with self._gen_lock:
            if self._run_cache is None:
                self._run_cache = RunCache(2)
            for i in range(variations):
                s = int(seed or 0) + i
                t0 = time.perf_counter()
                wave, sr, codes = generate_audio(run_dir, seconds, temperature=float(temperature), top_k=int(top_k or 0),
                                                 top_p=float(top_p), seed=s, prompt_file=prompt, cache=self._run_cache,
                                                 clip_ends=bool(clip_ends), retrieval=follow)
                settings = {"seconds": seconds, "temperature": float(temperature), "top_k": int(top_k or 0),
                            "top_p": float(top_p), "seed": s, "prompt_file": prompt, "format": fmt,
                            "clip_ends": bool(clip_ends), "retrieval": follow}
                saved = save_sample(run_dir, wave, sr, codes, settings, fmt=fmt)
                out.append({**saved, "seconds": round(len(wave) / sr, 3), "sample_rate": sr, "seed": s,
                            "codes": codes, "elapsed_s": round(time.perf_counter() - t0, 2)})
        return out


    # --- variations and one-shot packs -------------------------------------------------------------

    def loaded_run(self, run_id: str):
        """The run's models (cached), for a run whose prior is trained; ValueError in words otherwise."""
        from distill.generate import RunCache

        run_dir = self.run_dir(run_id)
        if run_dir is None:
            raise ValueError("Choose a run first.")
        if not (run_dir / "prior.safetensors").is_file():
            raise ValueError("This run's sequence model is not trained yet: wait for training to finish, or open a finished run.")
        if self._run_cache is None:
            self._run_cache = RunCache(2)
        return run_dir, self._run_cache.get(run_dir)

    def variation_input(self, run, kind: str, ref: str, name: str | None = None):
        """The sound a variation starts from (distill/sound_input.py). An uploaded file is read only
        from Gradio's upload folder: a client may send any path."""
        from distill.sound_input import InputError, load_input

        ref = str(ref or "").strip()
        if not ref:
            raise InputError("Choose the sound to vary first: a training file, a saved sample, or a file of your own.")
        if kind == "upload":
            from distill.app.uploads import _human, _inside

            path = Path(ref)
            shown = name or path.name
            if not _inside(path, upload_root()):
                raise InputError(f"'{shown[:200]}' did not come through the upload; refusing to read it.")
            try:
                size = path.stat().st_size
            except OSError:
                raise InputError(f"'{shown[:200]}' could not be read after upload; upload it again.") from None
            if size > self.limits.max_file_bytes:
                raise InputError(f"'{shown[:200]}' is {_human(size)}; the limit per file is "
                                 f"{_human(self.limits.max_file_bytes)}.")
            return load_input(run, "upload", str(path), shown)
        return load_input(run, kind, ref, name)

    def variation_source(self, run_id: str, kind: str, ref: str, name: str | None = None):
        """(run folder, InputSound): the input a page shows before varying it (encoded one at a time,
        like generation, since an upload runs through the codec)."""
        with self._gen_lock:
            run_dir, run = self.loaded_run(run_id)
            return run_dir, self.variation_input(run, kind, ref, name)

    def input_audio(self, run_dir: Path, source):
        """What plays beside a variation's input: the file itself where it can be served."""
        if source.kind == "file":
            return self.file_audio(run_dir, source.ref)
        if source.kind == "sample":
            return next((s["path"] for s in self.samples(run_dir) if s.get("id") == source.ref), None)
        return source.ref

    def vary(self, run_id: str, kind: str, ref: str, name: str | None = None, mode: str = "shape",
             keep_levels: int = 1, at_seconds: float = 1.0, seconds: float = 2.0, count: int = 1, seed: int = 0,
             follow: float | None = None, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0) -> dict:
        """Variations of one sound, saved as samples -> {"input": InputSound, "results": [saved sample]}.
        Raises ValueError (InputError, VariationError) with a message for people."""
        from distill.config import SAMPLING_DEFAULTS
        from distill.variations import VariationSettings, save_variations, vary_codes

        try:
            settings = VariationSettings(
                mode=str(mode or "shape"), keep_levels=int(keep_levels or 0), at_seconds=float(at_seconds or 0),
                seconds=float(seconds or 0), count=int(count or 0), seed=int(seed or 0),
                follow=SAMPLING_DEFAULTS["retrieval"] if follow is None else float(follow),
                temperature=float(temperature), top_k=int(top_k or 0), top_p=float(top_p))
        except (TypeError, ValueError, OverflowError):
            raise ValueError("Every setting must be a number.") from None
        if not -2**63 <= settings.seed < 2**63 - 64:
            raise ValueError("The seed must be a whole number below 9.2 × 10¹⁸.")
        with self._gen_lock:
            run_dir, run = self.loaded_run(run_id)
            source = self.variation_input(run, kind, ref, name)
            t0 = time.perf_counter()
            results = save_variations(run, source, settings, vary_codes(run, source.codes, settings))
        return {"input": source, "results": results, "elapsed_s": round(time.perf_counter() - t0, 2)}

    def make_pack(self, run_id: str, count: int = 8, seed: int = 0, follow: float | None = None,
                  temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0) -> dict:
        """N new one-shots saved as samples, and their zip -> {"pack", "samples", "zip", "message"}."""
        from distill.config import SAMPLING_DEFAULTS
        from distill.packs import PackSettings, make_one_shots, save_pack

        try:
            settings = PackSettings(count=int(count or 0), seed=int(seed or 0),
                                    follow=SAMPLING_DEFAULTS["retrieval"] if follow is None else float(follow),
                                    temperature=float(temperature), top_k=int(top_k or 0), top_p=float(top_p))
        except (TypeError, ValueError, OverflowError):
            raise ValueError("Every setting must be a number.") from None
        if not -2**63 <= settings.seed < 2**63 - 1024:
            raise ValueError("The seed must be a whole number below 9.2 × 10¹⁸.")
        with self._gen_lock:
            run_dir, run = self.loaded_run(run_id)
            t0 = time.perf_counter()
            result = make_one_shots(run, settings)
            saved = save_pack(run_dir, run_dir.name, result, settings)
        return {**saved, "message": result.summary(settings.count), "elapsed_s": round(time.perf_counter() - t0, 2)}


def _dataset_root(folder: Path) -> Path:
    """A dropped folder (or a zip of one) lands as <dataset>/<folder>/...: scan from inside it."""
    root = folder
    for _ in range(4):
        children = [p for p in root.iterdir() if not p.name.startswith(".")]
        if len(children) != 1 or not children[0].is_dir() or children[0].is_symlink():
            break
        root = children[0]
    return root


def _used_files(manifest: dict) -> set[str]:
    used = (manifest.get("files") or {}).get("used") if isinstance(manifest.get("files"), dict) else None
    return {e["path"] for e in used if isinstance(e, dict) and isinstance(e.get("path"), str)} if isinstance(used, list) else set()


def upload_root() -> Path:
    from gradio.utils import get_upload_folder

    return Path(get_upload_folder())


def _counts(codes_list: list[np.ndarray], k: int) -> np.ndarray:
    from distill.codes import level_histograms

    # codes past the codebook (a damaged file) are drawn at its edge rather than refused
    return level_histograms([np.asarray(c).clip(0, k - 1) for c in codes_list], k).numpy()


def report_rows(report) -> list[list]:
    rows = []
    for e in report.used:
        ch = {1: "mono", 2: "stereo"}.get(e.channels, f"{e.channels} ch")
        note = "cut to the first 10 min" if getattr(e, "truncated", False) else ""
        rows.append(["✓ used", e.path, fmt_duration(e.seconds), f"{e.sample_rate / 1000:g} kHz", ch, note])
    for e in report.skipped:
        rows.append(["✗ skipped", e.path, "", "", "", e.reason])
    return rows
