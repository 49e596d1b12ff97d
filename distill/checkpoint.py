"""Training checkpoints: a stopped, crashed or killed stage continues where it left off.

    <run>/checkpoints/
      vqvae.ckpt.safetensors       vqvae.ckpt.json        the latest checkpoint
      vqvae.ckpt.prev.safetensors  vqvae.ckpt.prev.json   the one before it (the fallback)
      prior.ckpt.*                                        the same for the prior

Tensors (model, best model so far, optimiser moments, RNG states) go to safetensors; everything
else (step, elapsed seconds, best loss, history, counters, optimiser settings) to JSON. Each file is
written atomically (temp + os.replace), tensors first. The JSON carries the sha256 of its tensors
file and a save id that is also in the tensors' metadata, plus a hash of itself, so a pair from two
different saves, a truncated or edited file, or a missing half is detected: such a checkpoint is
skipped with a reason (falling back to the previous one, or to the start), never half-loaded.

Saving can run on a background thread (the training thread only copies the tensors). It rotates
current -> prev one file at a time before writing the new pair, and loading pairs
files by hash, not by name, so a kill at any instant leaves at least one complete checkpoint
(the newest finished one or the one before it).
"""
from __future__ import annotations

import hashlib
import json
import os
import secrets
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping

import torch

from distill.storage import UnsafeFileError, atomic_write_bytes, atomic_write_json, file_sha256, load_tensors, sanitize_json

CHECKPOINTS = "checkpoints"
FORMAT = "distill-checkpoint"
VERSION = 2  # 2: the codec's count of non-finite steps in a row is "bad_steps", as the prior's
READABLE_VERSIONS = (1, 2)  # version 1 names it "bad_streak" (read by distill/training/loop.py)
MAX_JSON_BYTES = 64 * 1024**2
_DTYPES = {torch.float32: "F32", torch.float64: "F64", torch.float16: "F16", torch.bfloat16: "BF16",
           torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.uint8: "U8", torch.bool: "BOOL"}


class CheckpointError(ValueError):
    """A checkpoint that does not fit the model, data or settings being resumed."""


@dataclass
class Checkpoint:
    tensors: dict[str, torch.Tensor]
    meta: dict  # the JSON half, hash-checked


def checkpoint_dir(run_dir: str | os.PathLike) -> Path:
    return Path(run_dir) / CHECKPOINTS


def _json_digest(meta: dict) -> str:
    body = {k: v for k, v in meta.items() if k != "json_sha256"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _file_digest(path: Path) -> str | None:
    try:
        return file_sha256(path)
    except OSError:
        return None


class CheckpointStore:
    """The checkpoints of one training stage ("vqvae" or "prior") in one folder."""

    def __init__(self, folder: str | os.PathLike, name: str, durable: bool = True):
        self.folder, self.name, self.durable = Path(folder), name, durable
        self.current = (self.folder / f"{name}.ckpt.safetensors", self.folder / f"{name}.ckpt.json")
        self.previous = (self.folder / f"{name}.ckpt.prev.safetensors", self.folder / f"{name}.ckpt.prev.json")
        self.last_save: dict = {}  # {"step", "bytes", "seconds", "blocking_seconds"} of the latest save
        self._thread: threading.Thread | None = None
        self._error: OSError | None = None

    @classmethod
    def for_run(cls, run_dir: str | os.PathLike, name: str) -> "CheckpointStore":
        return cls(checkpoint_dir(run_dir), name)

    def exists(self) -> bool:
        return self.current[1].is_file() or self.previous[1].is_file()

    def save(self, tensors: Mapping[str, torch.Tensor], meta: dict, wait: bool = True) -> None:
        """Write one checkpoint; the previous one stays as the fallback until this one is complete.

        wait=False copies the tensors and the JSON (a few ms) and writes them on a background thread,
        so training goes on meanwhile; the next save, `wait()` or `clear()` waits for it and raises
        an OSError it hit."""
        self.wait()
        t0 = time.perf_counter()
        snapshot = {k: v.detach().to("cpu", copy=True).contiguous() for k, v in tensors.items()}
        record = sanitize_json(dict(meta))  # copies every list/dict, so the caller may go on changing its own
        blocking = time.perf_counter() - t0
        if wait:
            self._write(snapshot, record, t0, blocking)
            return
        thread = threading.Thread(target=self._write_in_background, args=(snapshot, record, t0, blocking),
                                  name=f"distill-{self.name}-checkpoint", daemon=True)
        self._thread = thread
        thread.start()

    def wait(self) -> None:
        """Wait for a background save; re-raise the error it hit, once."""
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.join()
        error, self._error = self._error, None
        if error is not None:
            raise error

    def _write_in_background(self, snapshot: dict, record: dict, t0: float, blocking: float) -> None:
        try:
            self._write(snapshot, record, t0, blocking)
        except OSError as exc:
            self._error = exc
        except Exception as exc:  # reported like a write error: a failed checkpoint must not kill training
            self._error = OSError(f"{type(exc).__name__}: {exc}")

    def _write(self, snapshot: dict, record: dict, t0: float, blocking: float) -> None:
        from safetensors.torch import save

        save_id = secrets.token_hex(8)
        step = int(record.get("step", 0))
        data = save(snapshot, metadata={"format": FORMAT, "save_id": save_id, "step": str(step)})
        record.update(format=FORMAT, version=VERSION, name=self.name, save_id=save_id, step=step,
                      saved=round(time.time(), 3), tensors_sha256=hashlib.sha256(data).hexdigest(),
                      tensors_bytes=len(data))
        record["json_sha256"] = _json_digest(record)
        self.folder.mkdir(parents=True, exist_ok=True)
        for cur, prev in zip(self.current, self.previous):  # one rename at a time; loading pairs by hash
            if cur.exists():
                os.replace(cur, prev)
        atomic_write_bytes(self.current[0], data, durable=self.durable)
        atomic_write_json(self.current[1], record)  # last: a checkpoint counts once its JSON is there
        self.last_save = {"step": step, "bytes": len(data), "seconds": time.perf_counter() - t0,
                          "blocking_seconds": blocking}

    def load(self, expected: Callable[[dict], Mapping[str, tuple]] | None = None) -> tuple[Checkpoint | None, list[str]]:
        """The newest complete checkpoint, and a plain reason for every one skipped on the way.

        `expected(meta)` returns the {name: (shape, dtype)} the tensors must have (or raises
        CheckpointError when the checkpoint is for other settings); it is checked before any tensor
        data is read."""
        problems: list[str] = []
        digests: dict[Path, str | None] = {}

        def digest(path: Path) -> str | None:
            if path not in digests:
                digests[path] = _file_digest(path) if path.is_file() else None
            return digests[path]

        for label, json_path in (("latest", self.current[1]), ("previous", self.previous[1])):
            if not json_path.is_file():
                continue
            where = f"the {label} {self.name} checkpoint"
            try:
                meta = self._read_json(json_path)
            except CheckpointError as exc:
                problems.append(f"{where}: {exc}")
                continue
            tensors_path = next((p for p in (self.current[0], self.previous[0]) if digest(p) == meta["tensors_sha256"]), None)
            if tensors_path is None:
                problems.append(f"{where} (step {meta.get('step')}): its tensors file is missing, cut short or from "
                                "another save")
                continue
            try:
                spec = expected(meta) if expected is not None else None
                tensors = load_tensors(tensors_path, expected=spec)
                self._check_save_id(tensors_path, meta)
            except (CheckpointError, UnsafeFileError, KeyError, TypeError, ValueError) as exc:
                problems.append(f"{where} (step {meta.get('step')}): {exc}")
                continue
            return Checkpoint(tensors, meta), problems
        return None, problems

    def clear(self) -> None:
        try:
            self.wait()
        except OSError:
            pass  # whatever it was writing is being removed anyway
        for path in (*self.current, *self.previous):
            try:
                path.unlink()
            except FileNotFoundError:
                pass
        for tmp in self.folder.glob(f".{self.name}.ckpt*.tmp") if self.folder.is_dir() else ():
            try:
                tmp.unlink()
            except OSError:
                pass

    # -- helpers --
    def _read_json(self, path: Path) -> dict:
        try:
            if path.stat().st_size > MAX_JSON_BYTES:
                raise CheckpointError("its JSON file is implausibly large")
            meta = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise CheckpointError(f"its JSON file cannot be read ({exc})") from None
        if not isinstance(meta, dict) or meta.get("format") != FORMAT or meta.get("name") != self.name:
            raise CheckpointError("its JSON file is not a Distill checkpoint")
        if meta.get("version") not in READABLE_VERSIONS:
            raise CheckpointError(f"it was written by another version (format {meta.get('version')})")
        if meta.get("json_sha256") != _json_digest(meta):
            raise CheckpointError("its JSON file was changed after it was written")
        if not isinstance(meta.get("tensors_sha256"), str):
            raise CheckpointError("its JSON file names no tensors")
        return meta

    @staticmethod
    def _check_save_id(path: Path, meta: dict) -> None:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as fh:
            tmeta = fh.metadata() or {}
        if tmeta.get("save_id") != meta.get("save_id") or tmeta.get("step") != str(meta.get("step")):
            raise CheckpointError("its tensors and its JSON come from different saves")


# --- pieces of training state ----------------------------------------------------------------------


def dtype_name(t: torch.Tensor) -> str:
    return _DTYPES[t.dtype]


def prefixed_spec(prefix: str, state: Mapping[str, torch.Tensor]) -> dict[str, tuple[tuple[int, ...], str]]:
    return {f"{prefix}{k}": (tuple(v.shape), dtype_name(v)) for k, v in state.items()}


def optimizer_tensors(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    """Flatten an optimiser: tensors `opt.state.<param index>.<key>`, and JSON with its settings
    (param_groups without the tensors), the non-tensor state values and every tensor's shape."""
    sd = opt.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    shapes: dict[str, list] = {}
    plain: dict[str, dict] = {}
    for idx, state in sd["state"].items():
        for key, value in state.items():
            name = f"opt.state.{int(idx)}.{key}"
            if torch.is_tensor(value):
                tensors[name] = value
                shapes[name] = [list(value.shape), dtype_name(value)]
            else:
                plain.setdefault(str(int(idx)), {})[key] = value
    groups = [{k: (list(v) if isinstance(v, tuple) else v) for k, v in g.items()} for g in sd["param_groups"]]
    return tensors, {"param_groups": groups, "tensor_shapes": shapes, "plain_state": plain}


def optimizer_spec(opt: torch.optim.Optimizer, meta: dict) -> dict[str, tuple[tuple[int, ...], str]]:
    """Expected optimiser tensors from the checkpoint's own record, checked against the live
    optimiser's parameters (same count per group, moments shaped like their parameter)."""
    params = [p for g in opt.param_groups for p in g["params"]]
    groups = meta.get("param_groups") or []
    if [len(g.get("params", [])) for g in groups] != [len(g["params"]) for g in opt.param_groups]:
        raise CheckpointError("the optimiser has a different layout (other settings?)")
    spec: dict[str, tuple[tuple[int, ...], str]] = {}
    for name, (shape, dtype) in (meta.get("tensor_shapes") or {}).items():
        parts = name.split(".")
        if len(parts) != 4 or parts[:2] != ["opt", "state"] or not parts[2].isdigit() or int(parts[2]) >= len(params):
            raise CheckpointError(f"unexpected optimiser entry '{name[:60]}'")
        if parts[3].startswith(("exp_avg", "max_exp_avg")) and list(shape) != list(params[int(parts[2])].shape):
            raise CheckpointError("optimiser moments do not fit the model (other settings?)")
        spec[name] = (tuple(int(s) for s in shape), str(dtype))
    return spec


def restore_optimizer(opt: torch.optim.Optimizer, tensors: Mapping[str, torch.Tensor], meta: dict) -> None:
    state: dict[int, dict] = {}
    for name, value in tensors.items():
        if name.startswith("opt.state."):
            _, _, idx, key = name.split(".", 3)
            state.setdefault(int(idx), {})[key] = value
    for idx, extra in (meta.get("plain_state") or {}).items():
        state.setdefault(int(idx), {}).update(extra)
    live = opt.state_dict()["param_groups"]
    groups = []
    for fresh, saved in zip(live, meta.get("param_groups") or []):
        group = dict(fresh)  # structure (param ids, flags) from the live optimiser ...
        for key in ("lr", "betas", "eps", "weight_decay", "momentum"):  # ... hyperparameters from the checkpoint
            if key in saved and key in fresh:
                group[key] = tuple(saved[key]) if isinstance(fresh[key], tuple) else saved[key]
        groups.append(group)
    opt.load_state_dict({"state": state, "param_groups": groups})


def rng_tensors(device: torch.device, generators: Mapping[str, torch.Generator]) -> dict[str, torch.Tensor]:
    """RNG states as uint8 tensors: each named generator, torch's global CPU RNG (dropout,
    codebook re-seeding) and, on an accelerator, its global RNG."""
    out = {f"rng.{name}": g.get_state() for name, g in generators.items()}
    out["rng.torch"] = torch.get_rng_state()
    if device.type == "cuda":
        out["rng.cuda"] = torch.cuda.get_rng_state(device)
    elif device.type == "mps":
        out["rng.mps"] = torch.mps.get_rng_state()
    return out


def rng_spec(meta_rng: Mapping[str, int], generators: Mapping[str, torch.Generator]) -> dict[str, tuple[tuple[int, ...], str]]:
    """Expected RNG tensors from the checkpoint's record ({name: bytes}); the named generators and
    torch's CPU RNG must be there at their own sizes (an accelerator's state is optional: a run may
    continue on another device)."""
    spec = {str(k): ((int(n),), "U8") for k, n in dict(meta_rng).items()}
    needed = {f"rng.{name}": g.get_state().numel() for name, g in generators.items()}
    needed["rng.torch"] = torch.get_rng_state().numel()
    for name, size in needed.items():
        if spec.get(name) != ((size,), "U8"):
            raise CheckpointError(f"its random-number state '{name}' is missing or the wrong size")
    if set(spec) - set(needed) - {"rng.cuda", "rng.mps"}:
        raise CheckpointError("it holds unknown random-number states")
    return spec


def rng_record(tensors: Mapping[str, torch.Tensor]) -> dict[str, int]:
    return {k: int(v.numel()) for k, v in tensors.items()}


def restore_rng(tensors: Mapping[str, torch.Tensor], device: torch.device, generators: Mapping[str, torch.Generator]) -> None:
    for name, g in generators.items():
        g.set_state(tensors[f"rng.{name}"])
    torch.set_rng_state(tensors["rng.torch"])
    if "rng.cuda" in tensors and device.type == "cuda":
        torch.cuda.set_rng_state(tensors["rng.cuda"], device)
    elif "rng.mps" in tensors and device.type == "mps":
        torch.mps.set_rng_state(tensors["rng.mps"])


def settings_fingerprint(*parts) -> str:
    """A short hash of whatever must match for a checkpoint to apply (settings, data sizes)."""
    blob = json.dumps(sanitize_json(list(parts)), sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def ignored_message(problems: list[str], what: str) -> str:
    return (f"A saved {what} checkpoint was not used: " + "; ".join(problems[:3])
            + ". Training continues from an earlier checkpoint, or from the start if there is none.")
