"""Export a run as one file, and import one — possibly from a stranger — without trusting it.

A bundle is a plain zip (stored, not compressed: safetensors barely compress) of the run folder's
known files. Import checks every member name against an allow-list, caps sizes and counts before
extracting, extracts into a temp folder inside the workspace, validates the manifest and every tensor
file against the model it claims to be, and only then moves it into place.
"""
from __future__ import annotations

import re
import shutil
import zipfile
from pathlib import Path

from distill.runs import (
    DETAIL_FILE,
    MAX_MANIFEST_BYTES,
    MAX_METRICS_BYTES,
    check_manifest_fields,
    human_bytes,
    new_run_id,
    read_manifest,
    run_configs,
    runs_root,
    write_manifest,
)
from distill.storage import OversizeError, UnsafeFileError, copy_limited, parse_json, zip_directory

TOP_FILES = {"manifest.json", "vqvae.safetensors", "prior.safetensors", "codes.safetensors", DETAIL_FILE, "metrics.jsonl"}
SAMPLE_NAME = re.compile(r"^samples/[A-Za-z0-9][A-Za-z0-9_.-]{0,120}\.(wav|flac|json|safetensors)$")
MAX_MEMBERS = 2000
MAX_MEMBER_BYTES = 1024**3
MAX_TOTAL_BYTES = 4 * 1024**3
MAX_SIDECAR_BYTES = 1024**2  # a sample's settings: a few hundred bytes
# Files that are read whole into memory and parsed get their own, smaller caps.
TEXT_LIMITS = {"manifest.json": (MAX_MANIFEST_BYTES, "manifest"), "metrics.jsonl": (MAX_METRICS_BYTES, "training log")}


def export_run(run_dir: str | Path, out_path: str | Path) -> Path:
    run_dir, out_path = Path(run_dir), Path(out_path)
    read_manifest(run_dir)  # refuse to export something that is not a run
    tmp = out_path.with_name(f".{out_path.name}.tmp")
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED) as zf:
        for name in sorted(TOP_FILES):
            if (run_dir / name).is_file():
                zf.write(run_dir / name, name)
        for p in sorted((run_dir / "samples").glob("*")):
            rel = f"samples/{p.name}"
            if p.is_file() and not p.is_symlink() and SAMPLE_NAME.match(rel):
                zf.write(p, rel)
    tmp.replace(out_path)
    return out_path


def _check_members(zf: zipfile.ZipFile) -> list[zipfile.ZipInfo]:
    infos = zf.infolist()
    if len(infos) > MAX_MEMBERS:
        raise UnsafeFileError(f"bundle holds {len(infos)} entries; a Distill run has far fewer")
    total = 0
    for info in infos:
        name = info.filename
        if info.is_dir():
            if name not in ("samples/",):
                raise UnsafeFileError(f"bundle entry '{name}' is not part of a Distill run")
            continue
        if name not in TOP_FILES and not SAMPLE_NAME.match(name):
            raise UnsafeFileError(f"bundle entry '{name[:80]}' is not part of a Distill run (refusing paths and unknown files)")
        if (info.external_attr >> 16) & 0o170000 == 0o120000:
            raise UnsafeFileError(f"bundle entry '{name}' is a symbolic link")
        if info.file_size > MAX_MEMBER_BYTES:
            raise UnsafeFileError(f"bundle entry '{name}' claims {info.file_size} bytes; too large")
        limit, what = TEXT_LIMITS.get(name, (MAX_SIDECAR_BYTES, "sample description") if name.endswith(".json")
                                      else (None, ""))
        if limit is not None and info.file_size > limit:
            raise UnsafeFileError(f"bundle entry '{name}' is {human_bytes(info.file_size)}; a Distill run's {what} is "
                                  f"far smaller (the limit is {human_bytes(limit)})")
        if info.compress_type != zipfile.ZIP_STORED and info.file_size > 200 * max(info.compress_size, 1):
            raise UnsafeFileError(f"bundle entry '{name}' expands {info.file_size // max(info.compress_size, 1)}×: refusing a zip bomb")
        total += info.file_size
    if total > MAX_TOTAL_BYTES:
        raise UnsafeFileError("bundle expands to more than 4 GB; refusing it")
    if "manifest.json" not in {i.filename for i in infos}:
        raise UnsafeFileError("bundle has no manifest.json; it is not a Distill run")
    return infos


def validate_run(run_dir: Path) -> dict:
    """Load everything a run claims to hold, with every check on; raise UnsafeFileError if anything is off."""
    from distill.runs import load_codes, load_detail, load_prior, load_vqvae

    manifest = read_manifest(run_dir)
    check_manifest_fields(manifest)  # what the page draws from it has the types Distill writes
    run_configs(manifest)  # bounds checked before any model is built
    if (run_dir / "vqvae.safetensors").is_file():
        load_vqvae(run_dir)
    if (run_dir / "prior.safetensors").is_file():
        load_prior(run_dir)
    if (run_dir / "codes.safetensors").is_file():
        load_detail(run_dir, load_codes(run_dir))
    elif (run_dir / DETAIL_FILE).is_file():
        raise UnsafeFileError(f"bundle has {DETAIL_FILE} but no codes.safetensors")
    for sidecar in sorted((run_dir / "samples").glob("*.json")):
        _check_sidecar(sidecar)
    return manifest


def _check_sidecar(path: Path) -> None:
    """A sample's settings file is read by the page: it must be the plain JSON object Distill writes."""
    try:
        meta = parse_json(path.read_bytes())
    except ValueError as exc:
        raise UnsafeFileError(f"bundle entry 'samples/{path.name}' is not valid JSON ({exc})") from None
    if not isinstance(meta, dict):
        raise UnsafeFileError(f"bundle entry 'samples/{path.name}' is not a sample description")


def _check_directory(bundle: Path) -> None:
    """The member count and directory size a bundle claims, checked before zipfile reads the directory."""
    try:
        entries, cd_bytes = zip_directory(bundle)
    except (OSError, ValueError) as exc:
        raise UnsafeFileError(f"{bundle.name}: not a Distill run bundle ({exc})") from None
    if entries > MAX_MEMBERS:
        raise UnsafeFileError(f"{bundle.name}: claims {entries:,} entries; a Distill run has far fewer")
    if cd_bytes > MAX_MEMBERS * 512:  # names are at most ~130 characters
        raise UnsafeFileError(f"{bundle.name}: its table of contents is {human_bytes(cd_bytes)}; a Distill run's is "
                              "a few KB")


def import_run(bundle: str | Path, workspace: str | Path) -> Path:
    bundle = Path(bundle)
    _check_directory(bundle)
    try:
        zf = zipfile.ZipFile(bundle)
    except (zipfile.BadZipFile, OSError) as exc:
        raise UnsafeFileError(f"{bundle.name}: not a Distill run bundle ({exc})") from None
    root = runs_root(workspace)
    root.mkdir(parents=True, exist_ok=True)
    run_id = new_run_id()
    staging = root / f".import-{run_id}"
    try:
        with zf:
            infos = _check_members(zf)
            staging.mkdir()
            (staging / "samples").mkdir()
            for info in infos:
                if info.is_dir():
                    continue
                target = staging / info.filename  # names were allow-listed: no separators beyond samples/
                with zf.open(info) as src, open(target, "wb") as dst:
                    try:
                        copy_limited(src, dst, info.file_size)
                    except OversizeError:
                        raise UnsafeFileError(f"bundle entry '{info.filename}' is larger than it declares") from None
                    except EOFError:
                        raise UnsafeFileError(f"bundle entry '{info.filename}' is shorter than it declares") from None
        manifest = validate_run(staging)  # read_manifest brings a bundle from an older Distill up to date
        manifest.update(id=run_id, imported_from=bundle.name)
        write_manifest(staging, manifest)
        final = root / run_id
        staging.rename(final)
        return final
    except zipfile.BadZipFile as exc:
        raise UnsafeFileError(f"{bundle.name}: damaged bundle ({exc})") from None
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)

