"""The sound a variation starts from, as codes of the run's own codec: one of the run's training
files, one of its saved samples, or any audio file (judged by the dataset scan's own rules, so a
file that cannot be used gets the reason the scan would give)."""
from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

MAX_INPUT_SECONDS = 30.0  # longer files are cut: a variation re-samples every step of its input
INPUT_KINDS = ("file", "sample", "upload")


class InputError(ValueError):
    """The input cannot be used; the message says why, for people."""


@dataclass
class InputSound:
    kind: str  # "file" (a training file), "sample" (a saved sample), "upload" (any audio file)
    ref: str  # the training file's name, the sample's id, or the audio file's path
    name: str  # how the page names it
    codes: np.ndarray  # [T', Q] int64
    note: str = ""  # what happened on the way in (e.g. cut to its first 30 s)
    # [T', detail_width] int64: the detail the sound is heard with (width 0 where the codec has no
    # detail levels: then `codes` are heard as they are). None: not known, so the sound is heard as a
    # generated sound is (`LoadedRun.with_detail`)
    detail: np.ndarray | None = None

    def describe(self) -> dict:
        return {"kind": self.kind, "ref": self.ref if self.kind != "upload" else self.name, "name": self.name}


def from_training_file(run, name: str) -> InputSound:
    from distill.runs import load_codes, load_detail

    codes = load_codes(run.run_dir)
    if name not in codes:
        raise InputError(f"'{str(name)[:200]}' is not one of this run's training files.")
    detail = load_detail(run.run_dir, codes).get(name)
    if detail is None and not run.vqvae_config.detail_width:
        detail = np.zeros((len(codes[name]), 0), np.int64)  # the file's codes are all it has
    return InputSound("file", name, name, np.asarray(codes[name], dtype=np.int64),
                      detail=None if detail is None else detail.astype(np.int64))


def from_sample(run, sample_id: str) -> InputSound:
    from distill.generate import list_samples, load_sample_codes

    for s in list_samples(run.run_dir):
        if s.get("id") == sample_id:
            codes, detail = load_sample_codes(s, detail=True)
            vq = run.vqvae_config
            if codes is None or codes.ndim != 2 or codes.shape[1] != vq.num_quantizers or not len(codes) \
                    or codes.min() < 0 or codes.max() >= vq.codebook_size:
                raise InputError(f"The codes of sample '{sample_id}' are missing or damaged.")
            if detail is not None and (detail.shape != (len(codes), vq.detail_width) or (
                    detail.size and (detail.min() < 0 or detail.max() >= vq.codebook_size))):
                detail = None  # not this codec's: the sound takes its detail from the material instead
            if detail is None:  # the sequence model's codes (a generated sound): heard as they were, the same every time
                heard = run.with_detail(codes)
                codes, detail = heard[:, : codes.shape[1]], heard[:, codes.shape[1] :]
            return InputSound("sample", sample_id, sample_id, codes, detail=detail)
    raise InputError(f"'{str(sample_id)[:200]}' is not one of this run's saved samples.")


def from_audio_file(run, path: str | Path, name: str | None = None) -> InputSound:
    """Any audio file, decoded as the scan decodes (same rules and reasons) and encoded by the run's
    codec; only its first MAX_INPUT_SECONDS are used."""
    from distill.codes import extract_code_sequences
    from distill.scan import judge_file

    path = Path(path)
    name = name or path.name
    cfg = replace(run.audio_config, max_seconds=min(run.audio_config.max_seconds, MAX_INPUT_SECONDS))
    entry = judge_file(path, cfg)
    if entry.status != "used" or entry.mel is None:
        raise InputError(f"'{name}' cannot be used: {entry.reason or 'it could not be read'}.")
    every = extract_code_sequences(run.vqvae, [entry.mel], detail=True)[0].numpy().astype(np.int64)
    q = run.vqvae_config.num_quantizers
    note = ""
    if entry.truncated:
        note = f"'{name}' is {entry.seconds:.0f} s long: only its first {cfg.max_seconds:.0f} s are used."
    return InputSound("upload", str(path), name, every[:, :q], note, detail=every[:, q:])  # heard as encoded


def load_input(run, kind: str, ref: str, name: str | None = None) -> InputSound:
    if kind == "file":
        return from_training_file(run, ref)
    if kind == "sample":
        return from_sample(run, ref)
    if kind == "upload":
        return from_audio_file(run, ref, name)
    raise InputError(f"The input must be one of {', '.join(INPUT_KINDS)}.")
