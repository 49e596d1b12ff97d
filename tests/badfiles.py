"""A corpus of broken, odd and hostile audio files and folders, each with the outcome we expect.

make_corpus(folder) -> list of Case(path, expect, reason_part): expect is "used", "skipped" or
"absent" (not listed as a file, e.g. inside a hidden folder). Used by the scan tests (issue 2)
and the reliability tests (issue 6).
"""
from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

SR = 24_000


@dataclass
class Case:
    path: str  # relative to the corpus root
    expect: str  # "used" | "skipped"
    reason: str = ""  # a substring of the skip reason
    kind: str = ""


def _sine(seconds: float, sr: int = SR, freq: float = 330.0, ch: int = 1) -> np.ndarray:
    t = np.arange(int(seconds * sr)) / sr
    x = 0.5 * np.sin(2 * np.pi * freq * t) * np.exp(-t)
    return np.stack([x * (0.5 + 0.5 * c / max(ch, 1)) for c in range(ch)], axis=1) if ch > 1 else x


def make_corpus(root: Path, big: bool = False) -> list[Case]:
    root.mkdir(parents=True, exist_ok=True)
    cases: list[Case] = []

    def add(rel: str, expect: str, reason: str = "", kind: str = "") -> Path:
        cases.append(Case(rel, expect, reason, kind or rel))
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        return p

    # --- good files in many formats (must be used) ---
    sf.write(add("good/plain.wav", "used", kind="16-bit wav"), _sine(0.5), SR, subtype="PCM_16")
    sf.write(add("good/pcm8.wav", "used", kind="8-bit wav"), _sine(0.5), SR, subtype="PCM_U8")
    sf.write(add("good/pcm24.wav", "used", kind="24-bit wav"), _sine(0.5, freq=200), SR, subtype="PCM_24")
    sf.write(add("good/int32.wav", "used", kind="32-bit int wav"), _sine(0.5, freq=250), SR, subtype="PCM_32")
    sf.write(add("good/float.wav", "used", kind="32-bit float wav"), _sine(0.5, freq=300), SR, subtype="FLOAT")
    sf.write(add("good/hi_96k.wav", "used", kind="96 kHz"), _sine(0.5, 96_000, 440), 96_000)
    sf.write(add("good/hi_192k.wav", "used", kind="192 kHz"), _sine(0.3, 192_000, 520), 192_000)
    sf.write(add("good/lo_8k.wav", "used", kind="8 kHz"), _sine(0.5, 8_000, 260), 8_000)
    sf.write(add("good/six_channels.wav", "used", kind="6 channels"), _sine(0.5, freq=600, ch=6), SR)
    sf.write(add("good/eight_channels.wav", "used", kind="8 channels"), _sine(0.4, freq=610, ch=8), SR)
    sf.write(add("good/stereo.flac", "used", kind="flac stereo"), _sine(0.5, freq=700, ch=2), SR)
    sf.write(add("good/vorbis.ogg", "used", kind="ogg vorbis"), _sine(0.5, 44_100, 800), 44_100, format="OGG", subtype="VORBIS")
    sf.write(add("good/vorbis.oga", "used", kind="oga"), _sine(0.5, 48_000, 900), 48_000, format="OGG", subtype="VORBIS")
    sf.write(add("good/aiff.aiff", "used", kind="aiff"), _sine(0.5, freq=1000), SR, format="AIFF")
    sf.write(add("good/mp3.mp3", "used", kind="mp3"), _sine(0.6, 44_100, 1100), 44_100, format="MP3")
    sf.write(add("good/ünïcödé 名前 with spaces.wav", "used", kind="unicode + spaces name"), _sine(0.5, freq=1200), SR)
    sf.write(add("good/deep/nested/folder/clip.wav", "used", kind="nested folders"), _sine(0.5, freq=1300), SR)
    sf.write(add("good/UPPER.WAV", "used", kind="upper-case extension"), _sine(0.5, freq=1400), SR)
    sq = np.sign(_sine(0.5, freq=150)) * 1.0
    sf.write(add("good/clipped_square.wav", "used", kind="clipped square wave"), sq, SR)
    sf.write(add("good/short_ok.wav", "used", kind="0.08 s"), _sine(0.08, freq=1500), SR)
    sf.write(add("good/wrong_ext_is_flac.wav", "used", kind="flac data named .wav"), _sine(0.5, freq=1600), SR, format="FLAC")

    # --- files that must be skipped, each with its reason ---
    add("bad/zero.wav", "skipped", "empty file", "zero bytes").write_bytes(b"")
    add("bad/garbage.wav", "skipped", "cannot be decoded", "garbage named .wav").write_bytes(os.urandom(4096))
    good = (root / "good/plain.wav").read_bytes()
    add("bad/truncated_header.wav", "skipped", "cannot be decoded", "truncated header").write_bytes(good[:30])
    add("bad/text.mp3", "skipped", "cannot be decoded", "text named .mp3").write_bytes(b"hello, this is not audio\n" * 20)
    sf.write(add("bad/silence.wav", "skipped", "digital silence", "digital silence"), np.zeros(SR), SR)
    sf.write(add("bad/near_silence.wav", "skipped", "near silence", "near silence"), _sine(0.5) * 1e-4, SR)
    sf.write(add("bad/dc.wav", "skipped", "constant offset", "pure DC"), np.full(SR, 0.5), SR)
    sf.write(add("bad/too_short.wav", "skipped", "too short", "0.01 s"), _sine(0.01), SR)
    sf.write(add("bad/tiny.wav", "skipped", "too short", "0.005 s"), _sine(0.005), SR)
    nan = _sine(0.5).astype(np.float32)
    nan[100] = np.nan
    sf.write(add("bad/nan.wav", "skipped", "NaN", "NaN samples"), nan, SR, subtype="FLOAT")
    inf = _sine(0.5).astype(np.float32)
    inf[200] = np.inf
    sf.write(add("bad/inf.wav", "skipped", "NaN", "inf samples"), inf, SR, subtype="FLOAT")
    sf.write(add("bad/rate_4k.wav", "skipped", "sample rate", "4 kHz rate"), _sine(0.5, 4000, 300), 4000)
    add("bad/notes.txt", "skipped", "not an audio file", "text file").write_text("not audio")
    add("bad/cover.jpg", "skipped", "not an audio file", "image").write_bytes(b"\xff\xd8\xff" + os.urandom(100))
    add("bad/.hidden.wav", "skipped", "hidden", "hidden file").write_bytes(good)
    add("bad/._resource_fork.wav", "skipped", "hidden", "AppleDouble file").write_bytes(b"\x00\x05\x16\x07" + os.urandom(60))
    add("zz_copies/copy_of_plain.wav", "skipped", "duplicate", "duplicate content").write_bytes(good)
    _wav_header_lies(add("bad/header_lies.wav", "skipped", "too short", "header claims 2 GB of data"))
    if hasattr(os, "symlink"):
        outside = root.parent / f"{root.name}_outside.wav"
        sf.write(outside, _sine(0.5, freq=1700), SR)
        os.symlink(outside, add("bad/link_outside.wav", "skipped", "outside", "symlink leaving the folder"))
        os.symlink("loop_b.wav", add("bad/loop_a.wav", "skipped", "link", "symlink loop"))
        os.symlink("loop_a.wav", add("bad/loop_b.wav", "skipped", "link", "symlink loop"))
        (root / "bad/dirlink_target").mkdir(parents=True, exist_ok=True)
        os.symlink(root, root / "bad/dir_loop", target_is_directory=True)
    root_user = os.geteuid() == 0  # root reads anything: then the file is simply used
    unreadable = add("bad/unreadable.wav", "used" if root_user else "skipped", "" if root_user else "permission",
                     "unreadable permissions")
    sf.write(unreadable, _sine(0.5, freq=1800), SR)
    os.chmod(unreadable, 0)
    hidden_dir = root / ".git"
    hidden_dir.mkdir(exist_ok=True)
    sf.write(hidden_dir / "inside.wav", _sine(0.5, freq=1900), SR)
    _odd_files(root, add)
    if big:
        sf.write(add("good/one_hour.wav", "used", kind="1-hour file"), np.tile(_sine(1.0, 8000, 100), 3600), 8000)
    return cases


def _odd_files(root: Path, add) -> None:
    """Odd names, special files, rarer encodings and damaged streams (issue 6)."""
    sf.write(add("good/line\nbreak.wav", "used", kind="newline in name"), _sine(0.5, freq=2000), SR)
    sf.write(add("good/tab\tname.wav", "used", kind="tab in name"), _sine(0.5, freq=2010), SR)
    sf.write(add("good/dots..in..name.wav", "used", kind="'..' inside a name"), _sine(0.5, freq=2020), SR)
    sf.write(add("good/a..b/inside.wav", "used", kind="'..' inside a folder name"), _sine(0.5, freq=2030), SR)
    sf.write(add("bad/..dotdot_prefix.wav", "skipped", "hidden", "name starting with '..'"), _sine(0.5, freq=2040), SR)
    sf.write(add("good/back\\slash.wav", "used", kind="backslash in name"), _sine(0.5, freq=2050), SR)
    sf.write(add("good/" + "L" * 200 + ".wav", "used", kind="200-character name"), _sine(0.5, freq=2060), SR)
    sf.write(add("good/mixed_case.WaV", "used", kind="mixed-case extension"), _sine(0.5, freq=2070), SR)
    sf.write(add("good/double.ext.wav.wav", "used", kind="double extension"), _sine(0.5, freq=2080), SR)
    sf.write(add("good/ulaw.wav", "used", kind="u-law wav"), _sine(0.5, freq=2090), SR, subtype="ULAW")
    sf.write(add("good/float64.wav", "used", kind="64-bit float wav"), _sine(0.5, freq=2100), SR, subtype="DOUBLE")
    sf.write(add("good/rf64.wav", "used", kind="RF64 container"), _sine(0.5, freq=2110), SR, format="RF64")
    sf.write(add("good/w64.wav", "used", kind="Sony Wave64 named .wav"), _sine(0.5, freq=2120), SR, format="W64")
    sf.write(add("good/caf_named.wav", "used", kind="CAF data named .wav"), _sine(0.5, freq=2130), SR, format="CAF")
    sf.write(add("good/opus.ogg", "used", kind="ogg opus"), _sine(0.5, 48_000, 2140), 48_000, format="OGG", subtype="OPUS")
    loud = (_sine(0.5, freq=2150) * 1e30).astype(np.float32)
    sf.write(add("good/huge_float_values.wav", "used", kind="float samples of 1e30"), loud, SR, subtype="FLOAT")
    dc_click = np.full(SR // 2, 0.3)
    dc_click[100] = 1.0
    sf.write(add("good/dc_with_click.wav", "used", kind="DC offset with one click"), dc_click, SR)
    sub = (_sine(0.5, freq=2160) * 1e-40).astype(np.float32)
    sf.write(add("bad/subnormal.wav", "skipped", "near silence", "subnormal float samples"), sub, SR, subtype="FLOAT")
    sf.write(add("bad/header_only.wav", "skipped", "no audio", "header with zero samples"), np.zeros(0), SR)
    sf.write(add("bad/one_sample.wav", "skipped", "too short", "one sample"), np.full(1, 0.9), SR)
    sf.write(add("bad/rate_384k.wav", "skipped", "sample rate", "384 kHz rate"), _sine(0.1, 384_000, 500), 384_000)
    sf.write(add("bad/no_extension", "skipped", "not an audio file", "wav data without extension"), _sine(0.5), SR,
             format="WAV")
    add("bad/id3_only.mp3", "skipped", "cannot be decoded", "mp3 with only an ID3 tag").write_bytes(
        b"ID3\x04\x00\x00\x00\x00\x00\x10" + b"\x00" * 16)
    add("bad/riff_no_fmt.wav", "skipped", "cannot be decoded", "RIFF without fmt chunk").write_bytes(
        b"RIFF\x24\x00\x00\x00WAVEdata\x00\x00\x00\x00")
    for fmt, sub_type, ext, kind in (("OGG", "VORBIS", "ogg", "ogg cut in half"), ("FLAC", "PCM_16", "flac", "flac cut in half")):
        whole = root / f"bad/.whole.{ext}"  # hidden scratch file, removed below
        sf.write(whole, _sine(1.0, 44_100, 820), 44_100, format=fmt, subtype=sub_type)
        data = whole.read_bytes()
        add(f"bad/cut_in_half.{ext}", "skipped", "cannot be decoded", kind).write_bytes(data[: len(data) // 2])
        whole.unlink()
    if hasattr(os, "mkfifo"):  # a named pipe must be reported, never opened (opening it would block)
        os.mkfifo(add("bad/fifo.wav", "skipped", "not a regular file", "named pipe"))


def _wav_header_lies(path: Path) -> None:
    """A RIFF/WAVE header that claims 2 GB of data followed by a few bytes."""
    fmt = struct.pack("<4sIHHIIHH", b"fmt ", 16, 1, 1, SR, SR * 2, 2, 16)
    data = b"data" + struct.pack("<I", 0x7FFFFFF0) + b"\x00\x01" * 3
    path.write_bytes(b"RIFF" + struct.pack("<I", 0x7FFFFFFF) + b"WAVE" + fmt + data)


# --- hostile uploads (what a browser could send to the app) ------------------------------------


@dataclass
class UploadCase:
    kind: str
    files: list  # [(local file to upload, relative path the browser claims)]; raw=True: paths sent as-is
    expect: str  # "refused" | "ingested"
    reason: str = ""  # a substring of the refusal message (or of the upload summary when ingested)
    raw: bool = False  # send the local paths as server paths without uploading (a forged request)


MB = 1024 * 1024


def _zip(path: Path, members: dict, compression=None) -> Path:
    import zipfile

    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED if compression is None else compression) as zf:
        for name, data in members.items():
            if isinstance(data, tuple):  # ("link", target): a symlink member
                info = zipfile.ZipInfo(name)
                info.external_attr = (0o120777 << 16)
                zf.writestr(info, data[1])
            else:
                zf.writestr(name, data)
    return path


def make_hostile_uploads(root: Path, limits) -> list[UploadCase]:
    """Uploads and archives the app must refuse (or take in safely), for limits like the app's
    UploadLimits (max_file_bytes, max_total_bytes, max_files, zip_ratio_min_bytes)."""
    import io
    import zipfile

    root.mkdir(parents=True, exist_ok=True)
    good = root / "good.wav"
    sf.write(good, _sine(0.5, freq=440), SR)
    good2 = root / "good2.wav"
    sf.write(good2, _sine(0.5, freq=660), SR)
    wav, wav2 = good.read_bytes(), good2.read_bytes()
    cases: list[UploadCase] = []

    bomb_size = max(limits.zip_ratio_min_bytes, MB)
    bomb = _zip(root / "bomb.zip", {"sounds/good.wav": wav, "sounds/zeros.wav": b"\0" * bomb_size})
    cases.append(UploadCase("zip bomb (one member, ~1000:1)", [(bomb, "bomb.zip")], "refused",
                            "zip bomb" if bomb_size <= limits.max_file_bytes else "limit per file"))
    n = min(limits.max_total_bytes // MB + 2, 64)
    many = _zip(root / "many.zip", {f"z/{i:03d}.wav": b"\0" * MB for i in range(n)})
    if n * MB > limits.max_total_bytes:
        cases.append(UploadCase("zip bomb (many members past the total)", [(many, "many.zip")], "refused", "the limit is"))
    cases.append(UploadCase("zip with ../ paths", [(_zip(root / "slip.zip", {"ok/good.wav": wav, "../../evil.wav": wav}),
                                                     "slip.zip")], "refused", "outside"))
    cases.append(UploadCase("zip with an absolute path", [(_zip(root / "abs.zip", {"/tmp/evil_abs.wav": wav}), "abs.zip")],
                            "refused", "absolute"))
    cases.append(UploadCase("zip with ..\\ (Windows) paths",
                            [(_zip(root / "winslip.zip", {"..\\..\\evil_win.wav": wav}), "winslip.zip")], "refused", "outside"))
    liar = io.BytesIO()
    with zipfile.ZipFile(liar, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("liar.wav", b"\0" * (2 * MB))
    data = bytearray(liar.getvalue())
    raw = bytes(data)
    struct.pack_into("<I", data, raw.find(b"PK\x03\x04") + 22, 1000)  # local header: uncompressed size
    struct.pack_into("<I", data, raw.find(b"PK\x01\x02") + 24, 1000)  # central directory: the same lie
    (root / "liar.zip").write_bytes(bytes(data))
    cases.append(UploadCase("zip whose header lies about sizes", [(root / "liar.zip", "liar.zip")], "refused",
                            "could not be unpacked"))
    (root / "fake.zip").write_bytes(b"PK\x03\x04 this is not really a zip" + bytes(100))
    cases.append(UploadCase("not a zip, named .zip", [(root / "fake.zip", "fake.zip")], "refused", "not a readable"))
    link = _zip(root / "link.zip", {"pack/good.wav": wav, "pack/passwd.wav": ("link", "/etc/passwd")})
    cases.append(UploadCase("zip with a symlink member", [(link, "link.zip")], "ingested", "link"))
    inner = _zip(root / "inner.zip", {"inner/good.wav": wav})
    nested = _zip(root / "nested.zip", {"outer/good2.wav": wav2, "outer/inner.zip": inner.read_bytes()})
    cases.append(UploadCase("zip inside a zip", [(nested, "nested.zip")], "ingested"))
    folder = _zip(root / "folder.zip", {"My Sounds/a/hit.wav": wav, "My Sounds/b/hit.wav": wav2,
                                         "__MACOSX/My Sounds/._hit.wav": b"\0\5\26\7", "My Sounds/.DS_Store": b"x"})
    cases.append(UploadCase("zip of a folder (equal names, macOS junk)", [(folder, "folder.zip")], "ingested", "macOS"))
    cases.append(UploadCase("file named ../escape.wav", [(good, "../escape.wav")], "refused", "outside"))
    cases.append(UploadCase("file with an absolute name", [(good, "/etc/evil.wav")], "refused", "absolute"))
    cases.append(UploadCase("file name with a newline", [(good, "x/a\nb.wav")], "refused", "control characters"))
    cases.append(UploadCase("forged server path outside the upload cache", [("/etc/passwd", "passwd.wav")], "refused",
                            "did not come through the upload", raw=True))
    cases.append(UploadCase("more files than the limit", [(good, f"many/{i}.wav") for i in range(limits.max_files + 1)],
                            "refused", f"the limit is {limits.max_files}"))
    if limits.max_total_bytes <= 64 * MB:
        each = min(limits.max_file_bytes, limits.max_total_bytes // 2 + MB)
        parts = []
        for i in range(limits.max_total_bytes // each + 1):
            p = root / f"part{i}.wav"
            p.write_bytes(os.urandom(each))
            parts.append((p, f"big/part{i}.wav"))
        cases.append(UploadCase("upload past the total size limit", parts, "refused", "in all"))
    cases.append(UploadCase("equal names in one upload", [(good, "d/same.wav"), (good2, "d/same.wav")], "ingested",
                            "renamed"))
    return cases


# --- decompression bombs (issue 16) ----------------------------------------------------------------


def _crc_table(poly: int, bits: int) -> list[int]:
    top, mask = 1 << (bits - 1), (1 << bits) - 1
    table = []
    for byte in range(256):
        crc = byte << (bits - 8)
        for _ in range(8):
            crc = ((crc << 1) ^ poly) & mask if crc & top else (crc << 1) & mask
        table.append(crc)
    return table


_CRC8, _CRC16 = _crc_table(0x07, 8), _crc_table(0x8005, 16)


def _crc(data: bytes, table: list[int], bits: int) -> int:
    crc, shift, mask = 0, bits - 8, (1 << bits) - 1
    for b in data:
        crc = ((crc << 8) & mask) ^ table[(crc >> shift) ^ b]
    return crc


def _utf8_number(n: int) -> bytes:
    return chr(n).encode("utf-8") if n < 0x110000 else b""  # FLAC frame numbers use UTF-8's coding


def silent_flac(path: Path, channels: int = 8, rate: int = 192_000, seconds: float = 600.0, tag: int = 0) -> Path:
    """A real FLAC of digital silence, a few hundred KB on disk and `channels × rate × seconds` samples
    decoded (8 × 192 kHz × 600 s: 3.7 GB as float32). Written frame by frame (constant subframes), so
    making one takes a fraction of a second; `tag` pads the header so equal files differ in content."""
    assert rate == 192_000 and channels <= 8
    block, total = 4096, int(rate * seconds)
    info = struct.pack(">HH", block, block) + b"\0" * 6
    info += ((rate << 44) | ((channels - 1) << 41) | (15 << 36) | total).to_bytes(8, "big") + b"\0" * 16
    head = b"fLaC" + bytes([0]) + len(info).to_bytes(3, "big") + info
    head += bytes([0x80 | 1]) + (tag + 1).to_bytes(3, "big") + b"\0" * (tag + 1)  # PADDING, the last block
    subframes = b"\0\0\0" * channels  # CONSTANT subframe, value 0, 16-bit
    frames = []
    for i in range((total + block - 1) // block):
        n = min(block, total - i * block)
        size_code = 0xC if n == block else 0x7  # 4096, or a 16-bit (size - 1) after the number
        hdr = bytes([0xFF, 0xF8, (size_code << 4) | 0x3, ((channels - 1) << 4) | (4 << 1)]) + _utf8_number(i)
        if size_code == 0x7:
            hdr += (n - 1).to_bytes(2, "big")
        hdr += bytes([_crc(hdr, _CRC8, 8)])
        frame = hdr + subframes
        frames.append(frame + _crc(frame, _CRC16, 16).to_bytes(2, "big"))
    path.write_bytes(head + b"".join(frames))
    return path
