"""Crash-safe file writes and safe tensor loading.

Every file a run keeps is written to a temp file in the same folder, fsynced, then moved into place
with os.replace, so a reader sees either the old complete file or the new complete one. Tensors go
through safetensors (never pickle), and loading checks names, shapes and dtypes before trusting them.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Mapping

MAX_TENSOR_FILE_BYTES = 2 * 1024**3  # nothing Distill writes comes near this
MAX_JSON_DEPTH = 64  # far deeper than anything Distill writes, far below Python's recursion limit


class UnsafeFileError(ValueError):
    """A run or model file that is malformed, hostile or not what it claims to be."""


def atomic_write_bytes(path: str | os.PathLike, data: bytes, durable: bool = True) -> None:
    """durable=False skips the fsyncs: still never torn, but may be lost on power failure (caches)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            if durable:
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    if durable:
        _fsync_dir(path.parent)


def parse_json(text: str | bytes) -> Any:
    """json.loads for files that may come from a stranger: nesting deeper than MAX_JSON_DEPTH is a
    ValueError (json.JSONDecodeError's parent), never a RecursionError in the parser or in whatever
    walks the result later."""
    try:
        obj = json.loads(text)
    except RecursionError:
        obj = None
    else:
        if _json_depth(obj) <= MAX_JSON_DEPTH:
            return obj
    raise ValueError(f"nested too deeply (more than {MAX_JSON_DEPTH} levels)")


def _json_depth(obj: Any) -> int:
    deepest, stack = 0, [(obj, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, (dict, list)):
            deepest = max(deepest, depth)
            if depth > MAX_JSON_DEPTH:
                break
            stack.extend((child, depth + 1) for child in (node.values() if isinstance(node, dict) else node))
    return deepest


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=False) + "\n").encode("utf-8"))


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def save_tensors(path: str | os.PathLike, tensors: Mapping[str, "torch.Tensor"], metadata: dict | None = None,
                 durable: bool = True) -> None:
    """Atomically write a safetensors file (contiguous CPU copies; metadata values become strings)."""
    from safetensors.torch import save

    flat = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    meta = {k: str(v) for k, v in (metadata or {}).items()}
    atomic_write_bytes(path, save(flat, metadata=meta), durable=durable)


def read_safetensors_header(path: str | os.PathLike) -> dict:
    """Parse only the JSON header: shapes and dtypes, without touching the data."""
    path = Path(path)
    size = path.stat().st_size
    if size > MAX_TENSOR_FILE_BYTES:
        raise UnsafeFileError(f"{path.name}: {size} bytes is larger than any Distill model file")
    with open(path, "rb") as fh:
        head = fh.read(8)
        if len(head) != 8:
            raise UnsafeFileError(f"{path.name}: not a safetensors file (too short)")
        n = int.from_bytes(head, "little")
        if n <= 0 or n > min(size - 8, 100 * 1024**2):
            raise UnsafeFileError(f"{path.name}: not a safetensors file (bad header length)")
        try:
            header = parse_json(fh.read(n))
        except ValueError as exc:  # bad UTF-8, bad JSON, nested too deeply
            raise UnsafeFileError(f"{path.name}: not a safetensors file ({exc})") from None
    if not isinstance(header, dict):
        raise UnsafeFileError(f"{path.name}: not a safetensors file (header is not an object)")
    return header


def load_tensors(
    path: str | os.PathLike,
    expected: Mapping[str, tuple[tuple[int, ...], str]] | None = None,
) -> dict[str, "torch.Tensor"]:
    """Load a safetensors file. With `expected` ({name: (shape, dtype_str)}), refuse any mismatch
    before reading tensor data; dtype strings are safetensors' own ("F32", "I64", ...)."""
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise UnsafeFileError(f"{path.name}: missing")
    header = read_safetensors_header(path)
    if expected is not None:
        names = {k for k in header if k != "__metadata__"}
        if names != set(expected):
            missing = sorted(set(expected) - names)
            extra = sorted(names - set(expected))
            raise UnsafeFileError(f"{path.name}: tensors do not match the model (missing {missing[:5]}, unexpected {extra[:5]})")
        for name, (shape, dtype) in expected.items():
            info = header[name]
            if not isinstance(info, dict) or list(info.get("shape", [])) != list(shape) or info.get("dtype") != dtype:
                raise UnsafeFileError(
                    f"{path.name}: tensor '{name}' is {info.get('dtype')} {info.get('shape')}, expected {dtype} {list(shape)}"
                )
    try:
        return load_file(str(path))
    except Exception as exc:  # safetensors raises its own error types for corrupt data
        raise UnsafeFileError(f"{path.name}: cannot be read ({exc})") from None


def tensor_spec(state: Mapping[str, "torch.Tensor"]) -> dict[str, tuple[tuple[int, ...], str]]:
    """The {name: (shape, dtype)} a freshly built model expects, for `load_tensors(expected=...)`."""
    import torch

    names = {
        torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16", torch.float64: "F64",
        torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.uint8: "U8", torch.bool: "BOOL",
        torch.uint16: "U16",
    }
    return {k: (tuple(v.shape), names[v.dtype]) for k, v in state.items()}


def zip_directory(path: str | os.PathLike) -> tuple[int, int]:
    """(entries, central directory bytes) a zip claims in its end record (zip64 aware), read from the
    last 64 KB only: zipfile reads and parses the whole directory before any member count can be
    checked, so a tiny file claiming millions of entries is refused from this first. ValueError if
    there is no end record."""
    import struct

    with open(path, "rb") as fh:
        fh.seek(0, os.SEEK_END)
        size = fh.tell()
        fh.seek(max(0, size - (22 + 65535 + 20)))  # end record + longest comment + zip64 locator
        tail = fh.read()
    at = tail.rfind(b"PK\x05\x06")
    if at < 0 or len(tail) - at < 22:
        raise ValueError("no end-of-central-directory record")
    entries, cd_bytes = struct.unpack_from("<HI", tail, at + 10)
    if (entries == 0xFFFF or cd_bytes == 0xFFFFFFFF) and at >= 20 and tail[at - 20:at - 16] == b"PK\x06\x07":
        z64_at = struct.unpack_from("<Q", tail, at - 20 + 8)[0]
        with open(path, "rb") as fh:
            fh.seek(z64_at)
            record = fh.read(56)
        if len(record) < 56 or record[:4] != b"PK\x06\x06":
            raise ValueError("damaged zip64 end record")
        entries, cd_bytes = struct.unpack_from("<QQ", record, 32)
    return entries, cd_bytes


class OversizeError(ValueError):
    """A stream held more bytes than it declared (a zip member whose header lies, say)."""


def copy_limited(src, dst, limit: int) -> int:
    """Copy a stream in chunks, refusing to write more than `limit` bytes. Returns bytes copied."""
    copied = 0
    while True:
        chunk = src.read(1 << 20)
        if not chunk:
            return copied
        copied += len(chunk)
        if copied > limit:
            raise OversizeError(f"more than the declared {limit} bytes")
        dst.write(chunk)


def append_jsonl(path: str | os.PathLike, record: dict) -> None:
    """Append one JSON line. A crash can leave a torn last line; `read_jsonl` skips it."""
    line = json.dumps(record, separators=(",", ":"), allow_nan=False, default=_json_default) + "\n"
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(line)
        fh.flush()


def _json_default(obj):
    try:
        return float(obj)
    except Exception:
        return str(obj)


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    out: list[dict] = []
    try:
        with open(path, encoding="utf-8") as fh:
            for line in fh:
                try:
                    rec = parse_json(line)
                except ValueError:
                    continue  # torn line from a crash mid-append (or nested too deeply)
                if isinstance(rec, dict):
                    out.append(rec)
    except FileNotFoundError:
        pass
    return out


def sanitize_json(obj: Any) -> Any:
    """Replace NaN/inf with None so files stay strict JSON."""
    import math

    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: sanitize_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [sanitize_json(v) for v in obj]
    return obj


def file_sha256(path: str | os.PathLike) -> str:
    """Hex sha256 of a file's bytes, read in 1 MB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
