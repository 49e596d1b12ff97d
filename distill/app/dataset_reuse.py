"""The same folder dropped twice is recognised and not copied again.

An upload's fingerprint is a hash of its file list: each file's relative path and the hash of its
bytes, in order of path. Each upload copied into the workspace leaves a small record,
`cache/uploads/<fingerprint>.json` (outside the datasets, so no scan or listing takes it for one), naming
its folder and what it holds (a lost record only means the next such upload is copied again); a later upload with the same fingerprint reuses that folder, as long as every
file it copied is still there at its size."""
from __future__ import annotations

import hashlib
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable

from distill.storage import atomic_write_json, file_sha256, parse_json

RECORDS = ("cache", "uploads")  # under <workspace>


@dataclass
class UploadMark:
    folder: str  # the dataset folder's name under <workspace>/datasets/
    files: dict[str, int]  # relative path written -> size in bytes
    label: str


def upload_fingerprint(items: Iterable[tuple[str | os.PathLike, str]], inside: Path) -> str | None:
    """Hash of (relative path, content hash) over the upload; None when a file is not under `inside`
    (the upload cache: nothing else is read) or cannot be read, so the upload is copied as usual."""
    h = hashlib.sha256()
    root = inside.resolve()
    try:
        for src, rel in sorted(items, key=lambda it: it[1]):
            path = Path(src).resolve()
            path.relative_to(root)
            h.update(rel.replace("\\", "/").encode("utf-8", "surrogatepass") + b"\0")
            h.update(file_sha256(path).encode() + b"\n")
    except (OSError, ValueError):
        return None
    return h.hexdigest()


def _record(workspace: Path, fingerprint: str) -> Path:
    return Path(workspace).joinpath(*RECORDS) / f"{fingerprint}.json"


def remember_upload(workspace: Path, folder: Path, fingerprint: str, files: list[str], label: str) -> None:
    sizes = {rel: (folder / rel).stat().st_size for rel in files if (folder / rel).is_file()}
    path = _record(workspace, fingerprint)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, asdict(UploadMark(folder.name, sizes, label)))


def find_upload(workspace: Path, fingerprint: str) -> tuple[Path, UploadMark] | None:
    """The dataset folder an earlier upload with this fingerprint was copied to, if it is still whole."""
    try:
        data = parse_json(_record(workspace, fingerprint).read_text(encoding="utf-8"))
        mark = UploadMark(str(data["folder"]), {str(k): int(v) for k, v in dict(data["files"]).items()},
                          str(data.get("label") or "upload"))
    except (OSError, ValueError, KeyError, TypeError):
        return None
    datasets = Path(workspace) / "datasets"
    folder = datasets / Path(mark.folder).name  # a name, never a path
    if not mark.files or folder.is_symlink() or not folder.is_dir() or folder.name.startswith("."):
        return None
    for rel, size in mark.files.items():
        f = folder / rel
        try:
            if f.is_symlink() or not f.is_file() or f.stat().st_size != size:
                return None
            f.resolve().relative_to(folder.resolve())
        except (OSError, ValueError):
            return None
    return folder, mark
