"""Bring the user's files into the workspace: uploads (with their folder structure) and .zip archives.

Everything a browser sends is untrusted: relative paths are cleaned so nothing lands outside the
dataset folder, equal names never overwrite each other, and archives are opened with caps on member
count, total size and compression ratio (zip bombs) before a byte is written. Every refusal is an
`UploadError` whose message a musician can act on.
"""
from __future__ import annotations

import os
import secrets
import shutil
import stat
import time
import unicodedata
import zipfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Iterable

from distill.storage import OversizeError, copy_limited, zip_directory

MB = 1024 * 1024
GB = 1024 * MB


class UploadError(ValueError):
    """An upload or archive Distill refuses; the message says why and what to do."""


@dataclass(frozen=True)
class UploadLimits:
    max_file_bytes: int = 500 * MB  # one file (10 min of 24-bit 96 kHz stereo is ~350 MB)
    max_files: int = 2000  # files in one upload, archives' members included
    max_total_bytes: int = 4 * GB  # one upload, after extraction
    max_zip_ratio: float = 100.0  # uncompressed / compressed, for members big enough to matter
    zip_ratio_min_bytes: int = 4 * MB  # small members may compress well (silence) without harm
    zip_entries_per_file: int = 2  # an archive may list up to this many entries per allowed file (folders, junk)
    zip_directory_bytes_per_entry: int = 1024  # its table of contents, per entry allowed (long names included)


@dataclass
class IngestResult:
    folder: Path  # the dataset folder inside the workspace
    files: list[str] = field(default_factory=list)  # relative paths written, '/' separators
    renamed: dict[str, str] = field(default_factory=dict)  # asked-for path -> path used (collisions)
    notes: list[str] = field(default_factory=list)  # things skipped on purpose, in plain words
    total_bytes: int = 0

    def summary(self) -> str:
        parts = [f"{len(self.files)} file(s) copied into the workspace ({_human(self.total_bytes)})"]
        if self.renamed:
            parts.append(f"{len(self.renamed)} renamed to avoid a name clash")
        parts.extend(self.notes)
        return "; ".join(parts) + "."


def _human(n: int) -> str:
    if n >= GB:
        return f"{n / GB:.1f} GB"
    if n >= MB:
        return f"{n / MB:.1f} MB"
    return f"{n / 1024:.0f} KB"


# --- paths --------------------------------------------------------------------------------------

_MAX_COMPONENT_BYTES = 200  # below the usual 255-byte filesystem limit, leaves room for " (2)"


def safe_relative_path(rel: str) -> PurePosixPath:
    """Clean a client-given relative path; raise UploadError for anything that leaves the folder.

    Backslashes count as separators (Windows zips), a leading '/' or drive letter is refused,
    as are '..' parts, empty names and control characters.
    """
    if not isinstance(rel, str) or not rel.strip():
        raise UploadError("a file arrived without a name")
    text = unicodedata.normalize("NFC", rel.replace("\\", "/"))
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in text):
        raise UploadError(f"'{rel!r}' has control characters in its name")
    if text.startswith("/") or (len(text) >= 2 and text[1] == ":" and text[0].isalpha()):
        raise UploadError(f"'{rel}' is an absolute path; only paths inside the dropped folder are accepted")
    parts = [p for p in text.split("/") if p not in ("", ".")]
    if not parts:
        raise UploadError(f"'{rel}' is not a file name")
    if any(p == ".." for p in parts):
        raise UploadError(f"'{rel}' points outside its folder ('..'); refusing it")
    for p in parts:
        if len(p.encode("utf-8")) > _MAX_COMPONENT_BYTES:
            raise UploadError(f"a name in '{rel[:60]}…' is too long for the file system")
    return PurePosixPath(*parts)


def _inside(path: Path, root: Path) -> bool:
    try:
        path.resolve().relative_to(root.resolve())
        return True
    except ValueError:
        return False


def unique_destination(folder: Path, rel: PurePosixPath, taken: set[str]) -> PurePosixPath:
    """`rel`, or 'name (2).ext', 'name (3).ext', ... if that path is already used in this upload."""
    if rel.as_posix() not in taken and not (folder / rel).exists():
        return rel
    stem, suffix = rel.stem, rel.suffix
    for i in range(2, 100_000):
        cand = rel.with_name(f"{stem} ({i}){suffix}")
        if cand.as_posix() not in taken and not (folder / cand).exists():
            return cand
    raise UploadError(f"too many files called '{rel.name}'")


def file_and_folder(paths: Iterable[PurePosixPath]) -> tuple[str, str] | None:
    """A name used both as a file and as a folder ('x' and 'x/y.wav'): the two cannot both exist on disk.
    Returns (that name, a path inside it), or None."""
    paths = list(paths)
    files = {p.as_posix() for p in paths}
    for p in paths:
        for parent in list(p.parents)[:-1]:  # the last parent is '.'
            if parent.as_posix() in files:
                return parent.as_posix(), p.as_posix()
    return None


def new_dataset_dir(workspace: str | os.PathLike, label: str = "upload") -> Path:
    """A fresh folder `<workspace>/datasets/<label>-<time>-<random>` (never reused)."""
    safe_label = "".join(ch if ch.isalnum() or ch in "-_" else "-" for ch in label)[:40] or "upload"
    stamp = time.strftime("%Y%m%d-%H%M%S")
    folder = Path(workspace) / "datasets" / f"{safe_label}-{stamp}-{secrets.token_hex(3)}"
    folder.mkdir(parents=True, exist_ok=False)
    return folder


# --- plain files ----------------------------------------------------------------------------------


def ingest_files(
    items: Iterable[tuple[str | os.PathLike, str]],
    folder: str | os.PathLike,
    limits: UploadLimits = UploadLimits(),
    allowed_roots: Iterable[str | os.PathLike] | None = None,
    extract_zips: bool = True,
) -> IngestResult:
    """Copy uploaded files (server path, relative path) into `folder`, keeping the relative paths.

    `allowed_roots`: where the server-side paths may live (the upload cache); a path elsewhere is
    refused, so a crafted request cannot copy arbitrary files off the machine. `.zip` files are
    extracted into a subfolder named after the archive. Limits are checked before anything is written.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    roots = [Path(r) for r in allowed_roots] if allowed_roots is not None else None
    plan: list[tuple[Path, PurePosixPath, int]] = []
    total = 0
    for src, rel in items:
        src_path = Path(src)
        clean = safe_relative_path(rel)
        if roots is not None and not any(_inside(src_path, r) for r in roots):
            raise UploadError(f"'{rel}' did not come through the upload; refusing to copy it")
        try:
            st = src_path.lstat()
        except OSError as exc:
            raise UploadError(f"'{rel}' could not be read after upload ({exc.strerror or exc})") from exc
        if not stat.S_ISREG(st.st_mode):
            raise UploadError(f"'{rel}' is not a regular file")
        if st.st_size > limits.max_file_bytes:
            raise UploadError(
                f"'{rel}' is {_human(st.st_size)}; the limit per file is {_human(limits.max_file_bytes)}. "
                "Trim or compress it (FLAC/Ogg) and try again."
            )
        total += st.st_size
        plan.append((src_path, clean, st.st_size))
    if not plan:
        raise UploadError("nothing was uploaded")
    clash = file_and_folder(clean for _, clean, _ in plan)
    if clash:
        raise UploadError(f"'{clash[0]}' is both a file and a folder in this upload (there is also '{clash[1]}'). "
                          "Rename one of them and drop the folder again.")
    if len(plan) > limits.max_files:
        raise UploadError(
            f"{len(plan)} files were sent; the limit is {limits.max_files} per upload. "
            "Distill is made for 5–500 sounds: choose a smaller folder."
        )
    if total > limits.max_total_bytes:
        raise UploadError(
            f"the upload is {_human(total)}; the limit is {_human(limits.max_total_bytes)} in all. "
            "Choose fewer or shorter files."
        )

    result = IngestResult(folder=folder)
    taken: set[str] = set()
    budget = _Budget(limits, files=0, total=0)
    for src_path, clean, size in plan:
        if extract_zips and clean.suffix.lower() == ".zip":
            sub = clean.with_suffix("")
            sub = unique_destination(folder, sub, taken)
            taken.add(sub.as_posix())
            extract_zip(src_path, folder / sub, limits, result=result, prefix=sub, budget=budget)
            continue
        budget.add_file(size, clean.as_posix())
        dest_rel = unique_destination(folder, clean, taken)
        taken.add(dest_rel.as_posix())
        if dest_rel != clean:
            result.renamed[clean.as_posix()] = dest_rel.as_posix()
        dest = folder / dest_rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src_path, dest)
        result.files.append(dest_rel.as_posix())
    result.total_bytes = budget.total
    return result


@dataclass
class _Budget:
    """Running totals across one upload (plain files and every archive's members)."""

    limits: UploadLimits
    files: int
    total: int

    def add_file(self, size: int, name: str) -> None:
        self.files += 1
        self.total += size
        if self.files > self.limits.max_files:
            raise UploadError(
                f"more than {self.limits.max_files} files in this upload (archives included). "
                "Distill is made for 5–500 sounds: choose a smaller folder."
            )
        if self.total > self.limits.max_total_bytes:
            raise UploadError(
                f"the upload grows past {_human(self.limits.max_total_bytes)} once unpacked "
                f"(at '{name}'). Choose fewer or shorter files."
            )


# --- archives -----------------------------------------------------------------------------------

_JUNK_PREFIXES = ("__MACOSX/",)


def _is_link(info: zipfile.ZipInfo) -> bool:
    mode = (info.external_attr >> 16) & 0xFFFF
    return stat.S_ISLNK(mode)


def extract_zip(
    zip_path: str | os.PathLike,
    dest: str | os.PathLike,
    limits: UploadLimits = UploadLimits(),
    result: IngestResult | None = None,
    prefix: PurePosixPath | None = None,
    budget: _Budget | None = None,
) -> IngestResult:
    """Extract a .zip into `dest` safely.

    Refused as a whole (nothing written): not a zip, encrypted, a member path that escapes the
    folder, more members / more bytes than the limits, a member that claims a suspicious compression
    ratio. Skipped with a note: links, folders, macOS resource forks. Sizes are enforced while
    reading too, so a member that lies about its size in the header cannot fill the disk.
    """
    dest = Path(dest)
    name = Path(zip_path).name if prefix is None else prefix.as_posix() + ".zip"
    result = result if result is not None else IngestResult(folder=dest)
    budget = budget if budget is not None else _Budget(limits, files=0, total=0)
    _check_zip_directory(zip_path, name, limits)
    try:
        zf = zipfile.ZipFile(zip_path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise UploadError(f"'{name}' is not a readable .zip archive") from exc
    with zf:
        members: list[tuple[zipfile.ZipInfo, PurePosixPath]] = []
        skipped_links = skipped_junk = 0
        declared = 0
        for info in zf.infolist():
            if info.is_dir():
                continue
            if info.flag_bits & 0x1:
                raise UploadError(f"'{name}' is password-protected; unpack it yourself and drop the folder")
            try:
                clean = safe_relative_path(info.filename)
            except UploadError as exc:
                raise UploadError(f"'{name}' is unsafe: {exc}. Nothing was extracted.") from None
            if _is_link(info):
                skipped_links += 1
                continue
            posix = clean.as_posix()
            if posix.startswith(_JUNK_PREFIXES) or clean.name == ".DS_Store":
                skipped_junk += 1
                continue
            if info.file_size > limits.max_file_bytes:
                raise UploadError(
                    f"'{posix}' in '{name}' is {_human(info.file_size)} unpacked; the limit per file is "
                    f"{_human(limits.max_file_bytes)}. Nothing was extracted."
                )
            if info.file_size >= limits.zip_ratio_min_bytes:
                ratio = info.file_size / max(1, info.compress_size)
                if ratio > limits.max_zip_ratio:
                    raise UploadError(
                        f"'{name}' looks like a zip bomb: '{posix}' would unpack {ratio:.0f}× larger than it "
                        f"is stored (limit {limits.max_zip_ratio:.0f}×). Nothing was extracted."
                    )
            declared += info.file_size
            members.append((info, clean))
        clash = file_and_folder(clean for _, clean in members)
        if clash:
            raise UploadError(f"'{name}' holds '{clash[0]}' as both a file and a folder (there is also "
                              f"'{clash[1]}'). Rename one of them in the archive. Nothing was extracted.")
        if budget.files + len(members) > limits.max_files:
            raise UploadError(
                f"'{name}' holds {len(members)} files; the limit is {limits.max_files} per upload. "
                "Nothing was extracted."
            )
        if budget.total + declared > limits.max_total_bytes:
            raise UploadError(
                f"'{name}' unpacks to {_human(declared)}; the limit is {_human(limits.max_total_bytes)} in all. "
                "Nothing was extracted."
            )

        dest.mkdir(parents=True, exist_ok=True)
        taken: set[str] = set()
        for info, clean in members:
            out_rel = unique_destination(dest, clean, taken)
            taken.add(out_rel.as_posix())
            out = dest / out_rel
            out.parent.mkdir(parents=True, exist_ok=True)
            if not _inside(out.parent, dest):  # a pre-existing link in dest; never write through it
                raise UploadError(f"'{name}' is unsafe: '{clean}' would leave its folder")
            written = _copy_member(zf, info, out, limits, name)
            budget.add_file(written, f"{name}/{clean}")
            shown = (prefix / out_rel).as_posix() if prefix is not None else out_rel.as_posix()
            if out_rel != clean:
                result.renamed[((prefix / clean).as_posix() if prefix is not None else clean.as_posix())] = shown
            result.files.append(shown)
        if skipped_links:
            result.notes.append(f"{skipped_links} link(s) inside '{name}' were not extracted")
        if skipped_junk:
            result.notes.append(f"{skipped_junk} macOS metadata file(s) inside '{name}' were left out")
    result.total_bytes = budget.total
    return result


def _check_zip_directory(zip_path, name: str, limits: UploadLimits) -> None:
    """Refuse from the end record alone an archive whose table of contents is too long to read."""
    try:
        entries, cd_bytes = zip_directory(zip_path)
    except (OSError, ValueError) as exc:
        raise UploadError(f"'{name}' is not a readable .zip archive") from exc
    most = limits.zip_entries_per_file * limits.max_files
    if entries > most:
        raise UploadError(f"'{name}' claims {entries:,} files; the limit is {limits.max_files} per upload. "
                          "Nothing was extracted.")
    if cd_bytes > most * limits.zip_directory_bytes_per_entry:
        raise UploadError(f"'{name}' has a {_human(cd_bytes)} table of contents, far more than {limits.max_files} "
                          "files need; it is damaged or hostile. Nothing was extracted.")


def _copy_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, out: Path, limits: UploadLimits, name: str) -> int:
    cap = min(info.file_size, limits.max_file_bytes)
    try:
        with zf.open(info) as src, open(out, "xb") as dst:
            written = copy_limited(src, dst, cap)
    except OversizeError:  # the header lied about the size
        out.unlink(missing_ok=True)
        raise UploadError(f"'{name}' is damaged or hostile: '{info.filename}' is larger than it claims") from None
    except (zipfile.BadZipFile, OSError, EOFError, NotImplementedError, RuntimeError) as exc:
        out.unlink(missing_ok=True)
        raise UploadError(f"'{name}' could not be unpacked ('{info.filename}': {exc})") from exc
    return written
