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
    if big:
        sf.write(add("good/one_hour.wav", "used", kind="1-hour file"), np.tile(_sine(1.0, 8000, 100), 3600), 8000)
    return cases


def _wav_header_lies(path: Path) -> None:
    """A RIFF/WAVE header that claims 2 GB of data followed by a few bytes."""
    fmt = struct.pack("<4sIHHIIHH", b"fmt ", 16, 1, 1, SR, SR * 2, 2, 16)
    data = b"data" + struct.pack("<I", 0x7FFFFFF0) + b"\x00\x01" * 3
    path.write_bytes(b"RIFF" + struct.pack("<I", 0x7FFFFFFF) + b"WAVE" + fmt + data)
