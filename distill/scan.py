"""Scan a folder (or a list of files) and decide, file by file, what Distill will use and why.

A bad file never stops the scan: every file ends up `used` or `skipped` with a reason a person
understands. Used files come with their log-mel frames, from the feature cache when possible.
"""
from __future__ import annotations

import os
import stat
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import soundfile as sf
import torch

from distill.audio.features import FeatureCache, compute_log_mel
from distill.audio.io import AUDIO_EXTENSIONS, AudioSkip, decode_file
from distill.config import AudioConfig
from distill.data import MelDataset, split_by_file
from distill.storage import file_sha256

DEFAULT_MAX_FILES = 5000  # far past the 500-file target; stops a mistaken scan of a whole disk


class DatasetError(ValueError):
    """The dataset as a whole cannot be used (missing folder, nothing usable); message for people."""


ACCEPTED_FORMATS = "WAV, FLAC, Ogg Vorbis, MP3 and AIFF"


def accepted_formats() -> str:
    """The formats a scan reads, in words and extensions (for messages about a folder with none)."""
    return f"{ACCEPTED_FORMATS} ({', '.join(sorted(AUDIO_EXTENSIONS))})"


def nothing_usable_message(report: "ScanReport") -> str:
    """Why a scan found nothing to train on, in words that fit what the folder holds: no files at all,
    files but none of them audio, or audio files that were all skipped (then their reasons help)."""
    files = [e for e in report.skipped if not e.path.endswith("/")]
    hidden = [e for e in files if e.reason.startswith("hidden file")]
    visible = [e for e in files if e not in hidden]
    not_audio = [e for e in visible if e.reason.startswith("not an audio file")]
    if not visible:
        what = "no files at all" if not hidden else f"only {len(hidden)} hidden file{'s' if len(hidden) != 1 else ''}"
        return f"No usable audio files: this folder holds no audio files ({what}). Distill reads {accepted_formats()}."
    if len(not_audio) == len(visible):
        n = len(visible)
        what = "the one file in this folder is not" if n == 1 else f"none of the {n} files in this folder is"
        return f"No usable audio files: {what} an audio file. Distill reads {accepted_formats()}."
    n = len(visible) - len(not_audio)
    what = "the one audio file" if n == 1 else f"none of the {n} audio files"
    return (f"No usable audio files: {what} in this folder could {'not ' if n == 1 else ''}be used; "
            "the file list gives each one's reason.")


@dataclass
class FileEntry:
    path: str  # relative to the scan root, with '/' separators (subfolders kept)
    status: str = "skipped"  # "used" | "skipped"
    reason: str = ""
    seconds: float = 0.0
    sample_rate: int = 0
    channels: int = 0
    bytes: int = 0
    sha256: str = ""
    truncated: bool = False
    mel: torch.Tensor | None = field(default=None, repr=False, compare=False)
    abs_path: str = field(default="", repr=False)

    def to_dict(self) -> dict:
        d = asdict(self)
        d.pop("mel")
        d.pop("abs_path")
        if self.status == "used":
            d.pop("reason")
        return d


@dataclass
class ScanReport:
    root: str
    audio_config: AudioConfig
    entries: list[FileEntry]
    cache_hits: int = 0

    @property
    def used(self) -> list[FileEntry]:
        return [e for e in self.entries if e.status == "used"]

    @property
    def skipped(self) -> list[FileEntry]:
        return [e for e in self.entries if e.status != "used"]

    @property
    def total_seconds(self) -> float:
        return sum(min(e.seconds, self.audio_config.max_seconds) for e in self.used)

    def counts(self) -> dict:
        reasons: dict[str, int] = {}
        for e in self.skipped:
            key = e.reason.split(" (")[0]
            reasons[key] = reasons.get(key, 0) + 1
        return {"files_seen": len(self.entries), "files_used": len(self.used), "files_skipped": len(self.skipped), "skip_reasons": reasons}

    def to_dict(self) -> dict:
        return {
            "root": self.root,
            "files_used": [e.to_dict() for e in self.used],
            "files_skipped": [{"path": e.path, "reason": e.reason} for e in self.skipped],
            "total_seconds": round(self.total_seconds, 3),
            "counts": self.counts(),
            "audio_config": asdict(self.audio_config),
        }

    def dataset(self, val_fraction: float, seed: int = 0) -> MelDataset:
        """The used files' frames with a by-file split. Requires features (keep_features=True)."""
        used = self.used
        if not used:
            raise DatasetError("No usable audio files: there is nothing to train on. " + _skip_summary(self))
        if any(e.mel is None for e in used):
            raise ValueError("scan was run without keep_features; features are not loaded")
        train, val = split_by_file(len(used), val_fraction, seed)
        return MelDataset(
            names=[e.path for e in used], mels=[e.mel for e in used], audio_config=self.audio_config,
            train_index=train, val_index=val,
        )


def _skip_summary(report: ScanReport) -> str:
    reasons = report.counts()["skip_reasons"]
    if not reasons:
        return "The folder holds no files."
    return "Skipped: " + "; ".join(f"{n} × {r}" for r, n in sorted(reasons.items(), key=lambda kv: -kv[1])) + "."


# --- collecting candidate files ------------------------------------------------------------


def _rel(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return path.name


def collect_files(source: str | os.PathLike | Iterable, root: str | os.PathLike | None = None,
                  max_files: int = DEFAULT_MAX_FILES) -> tuple[Path, list[FileEntry], list[FileEntry]]:
    """Walk the source without following links. Returns (root, candidates, pre-skipped entries)."""
    if isinstance(source, (str, os.PathLike)):
        src = Path(source).expanduser()
        if not src.exists():
            raise DatasetError(f"'{source}' does not exist")
        if src.is_file():
            paths, base = [src], Path(root) if root else src.parent
        elif src.is_dir():
            base = Path(root) if root else src
            paths = None
        else:
            raise DatasetError(f"'{source}' is neither a file nor a folder")
    else:
        paths = [Path(p) for p in source]
        if not paths:
            raise DatasetError("no files were given")
        base = Path(root) if root else Path(os.path.commonpath([str(p.absolute().parent) for p in paths]))
    base_real = base.resolve()
    candidates: list[FileEntry] = []
    skipped: list[FileEntry] = []

    def consider(p: Path) -> None:
        rel = _rel(p.absolute(), base.absolute())
        entry = FileEntry(path=rel, abs_path=str(p))
        name = p.name
        try:
            st = p.lstat()
        except OSError as exc:
            entry.reason = f"cannot be read ({exc.strerror or exc})"
            skipped.append(entry)
            return
        if stat.S_ISLNK(st.st_mode):
            try:
                target = p.resolve(strict=True)
            except (OSError, RuntimeError):
                entry.reason = "broken or looping link"
                skipped.append(entry)
                return
            if base_real not in target.parents:
                entry.reason = "link pointing outside the folder (not followed)"
                skipped.append(entry)
                return
            if target.is_dir():
                entry.reason = "link to a folder (not followed)"
                skipped.append(entry)
                return
            st = target.stat()
        if name.startswith("."):
            entry.reason = "hidden file (ignored)"
            skipped.append(entry)
            return
        if not stat.S_ISREG(st.st_mode):
            entry.reason = "not a regular file"
            skipped.append(entry)
            return
        entry.bytes = int(st.st_size)
        if p.suffix.lower() not in AUDIO_EXTENSIONS:
            entry.reason = f"not an audio file ({p.suffix.lower() or 'no extension'})"
            skipped.append(entry)
            return
        if entry.bytes == 0:
            entry.reason = "empty file (0 bytes)"
            skipped.append(entry)
            return
        candidates.append(entry)

    if paths is not None:
        for p in paths:
            consider(p)
    else:
        for dirpath, dirnames, filenames in os.walk(base, followlinks=False):
            here = Path(dirpath)
            for d in sorted(dirnames):
                full = here / d
                if d.startswith("."):
                    skipped.append(FileEntry(path=_rel(full, base) + "/", reason="hidden folder (ignored)"))
                elif full.is_symlink():
                    skipped.append(FileEntry(path=_rel(full, base) + "/", reason="link to a folder (not followed)"))
            dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and not (here / d).is_symlink())
            for f in sorted(filenames):
                consider(here / f)
                if len(candidates) + len(skipped) > max_files:
                    raise DatasetError(
                        f"the folder holds more than {max_files} files; Distill is made for 5–500 sounds. "
                        "Choose a smaller folder."
                    )
    candidates.sort(key=lambda e: e.path)
    skipped.sort(key=lambda e: e.path)
    return base, candidates, skipped


# --- the scan --------------------------------------------------------------------------------


def scan_dataset(
    source: str | os.PathLike | Iterable,
    audio_config: AudioConfig | None = None,
    root: str | os.PathLike | None = None,
    cache_dir: str | os.PathLike | None = None,
    progress: Callable[[int, int], None] | None = None,
    keep_features: bool = True,
    max_files: int = DEFAULT_MAX_FILES,
    workers: int | None = None,
    stop=None,
) -> ScanReport:
    """Judge every file; decode + featurise the new ones (in parallel), reuse cached ones.
    `stop` (threading.Event-like): files not reached yet are reported as not scanned."""
    cfg = audio_config or AudioConfig()
    base, candidates, skipped = collect_files(source, root, max_files)
    cache = FeatureCache(cache_dir, cfg)
    workers = workers or min(4, (os.cpu_count() or 1) + 1)
    total = len(candidates)
    done = 0

    def tick() -> None:
        nonlocal done
        done += 1
        if progress:
            progress(done, total)

    def hash_one(entry: FileEntry) -> None:
        try:
            entry.sha256 = file_sha256(entry.abs_path)
        except PermissionError:
            entry.reason = "cannot be read (permission denied)"
        except OSError as exc:
            entry.reason = f"cannot be read ({exc.strerror or exc})"

    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(hash_one, candidates))

    first_by_hash: dict[str, FileEntry] = {}
    todo: list[FileEntry] = []
    for entry in candidates:
        if entry.reason:
            skipped.append(entry)
            tick()
        elif entry.sha256 in first_by_hash:
            entry.reason = f"duplicate of {first_by_hash[entry.sha256].path} (same content)"
            skipped.append(entry)
            tick()
        else:
            first_by_hash[entry.sha256] = entry
            todo.append(entry)

    hits = 0

    def judge(entry: FileEntry) -> None:
        nonlocal hits
        if stop is not None and stop.is_set():
            entry.reason = "not scanned (stopped)"
            return
        cached = cache.get(entry.sha256)
        if cached is not None:
            meta, mel = cached
            hits += 1
        else:
            meta, mel = _decode_and_featurise(entry, cfg)
            cache.put(entry.sha256, meta, mel)
        entry.status = meta.get("status", "skipped")
        entry.reason = meta.get("reason", "")
        entry.seconds = float(meta.get("seconds", 0.0))
        entry.sample_rate = int(meta.get("sample_rate", 0))
        entry.channels = int(meta.get("channels", 0))
        entry.truncated = bool(meta.get("truncated", False))
        entry.mel = mel if keep_features else None

    with ThreadPoolExecutor(workers) as pool:
        for _ in pool.map(judge, todo):
            tick()

    entries = sorted([*todo, *skipped], key=lambda e: e.path)
    return ScanReport(root=str(base), audio_config=cfg, entries=entries, cache_hits=hits)


def source_rates(source: str | os.PathLike | Iterable, root: str | os.PathLike | None = None,
                 max_files: int = DEFAULT_MAX_FILES) -> list[tuple[int, float]]:
    """(sample rate, seconds) of every file the scan would consider, from their headers alone (no
    decoding: fast), for choosing the rate to work at before any features are made. Files whose header
    cannot be read are left out (the scan itself says why)."""
    _, candidates, _ = collect_files(source, root, max_files)
    out = []
    for entry in candidates:
        try:
            info = sf.info(entry.abs_path)
        except Exception:  # noqa: BLE001 - an unreadable file is the scan's to report
            continue
        if int(info.samplerate) > 0 and info.frames > 0:
            out.append((int(info.samplerate), float(info.frames) / float(info.samplerate)))
    return out


def judge_file(path: str | os.PathLike, audio_config: AudioConfig) -> FileEntry:
    """One file by the scan's own rules and reasons (no hashing, no feature cache): `used`, with its
    log-mel frames, or `skipped` with the reason the scan would give."""
    _, candidates, skipped = collect_files([Path(path)])
    if skipped:
        return skipped[0]
    entry = candidates[0]
    meta, mel = _decode_and_featurise(entry, audio_config)
    entry.status, entry.reason = meta.get("status", "skipped"), meta.get("reason", "")
    entry.seconds, entry.sample_rate = float(meta.get("seconds", 0.0)), int(meta.get("sample_rate", 0))
    entry.channels, entry.truncated, entry.mel = int(meta.get("channels", 0)), bool(meta.get("truncated", False)), mel
    return entry


def _decode_and_featurise(entry: FileEntry, cfg: AudioConfig) -> tuple[dict, torch.Tensor | None]:
    try:
        audio = decode_file(Path(entry.abs_path), cfg)
    except AudioSkip as exc:
        return {"status": "skipped", "reason": str(exc)}, None
    except MemoryError:
        return {"status": "skipped", "reason": "too large to decode in memory"}, None
    except Exception as exc:  # a decoder bug on one hostile file must not end the scan
        return {"status": "skipped", "reason": f"cannot be decoded ({type(exc).__name__})"}, None
    mel = compute_log_mel(audio.wave, cfg)
    meta = {
        "status": "used", "seconds": audio.seconds, "sample_rate": audio.source_rate,
        "channels": audio.channels, "truncated": audio.truncated,
    }
    return meta, mel
