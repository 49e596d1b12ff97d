"""`python -m distill …`: the library's command line (scan, train, resume, generate, vary, pack, encode, decode,
evaluate, export, import).

Progress goes to stderr; `--json` puts a machine-readable summary on stdout.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path


def _print_json(obj) -> None:
    from distill.storage import sanitize_json

    print(json.dumps(sanitize_json(obj), indent=2, ensure_ascii=False))


SAMPLE_RATE_HELP = ("the rate sound is worked on at; 0 (the default): 48000 when most of your audio is recorded at "
                    "44.1 kHz or more, else 24000")


def _err(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def cmd_scan(args) -> int:
    from distill.pipeline import TrainOptions, audio_config_for, plan_training
    from distill.scan import nothing_usable_message, scan_dataset

    options = TrainOptions(preset=args.preset, num_quantizers=args.levels, sample_rate=args.sample_rate)
    report = scan_dataset(args.data_dir, audio_config_for(options, args.data_dir), cache_dir=args.cache_dir)
    data = report.to_dict()
    if report.used:
        plan = plan_training(report, options)
        data.update(tier=plan.tier_card, prior_config=plan.tier_card["settings"]["prior"],
                    vqvae_config=plan.tier_card["settings"]["vqvae"])
    else:
        data.update(tier=None, prior_config=None, vqvae_config=None,
                    error=nothing_usable_message(report))
    if args.json:
        _print_json(data)
    else:
        _print_scan(data)
    return 0 if report.used else 1


def _print_scan(data: dict) -> None:
    used, skipped = data["files_used"], data["files_skipped"]
    print(f"Folder: {data['root']}")
    print(f"Used: {len(used)} files, {data['total_seconds']:.1f} s of audio")
    for f in used:
        print(f"  ✓ {f['path']}  {f['seconds']:.2f} s  {f['sample_rate']} Hz  {f['channels']} ch")
    if skipped:
        print(f"Skipped: {len(skipped)}")
        for f in skipped:
            print(f"  ✗ {f['path']}: {f['reason']}")
    tier = data.get("tier")
    if tier:
        print(f"\nTier: {tier['name']}")
        for r in tier["reasons"]:
            print(f"  • {r}")
        for w in tier["warnings"]:
            print(f"  ⚠ {w}")
    elif data.get("error"):
        print(f"\n{data['error']}")


def _settings(items: list[str] | None) -> dict[str, dict]:
    """--set vqvae.max_steps=200 --set prior.time_budget_s=null -> {"vqvae": {...}, "prior": {...}, "audio": {}}
    (values are JSON; the configs validate names and types)."""
    out: dict[str, dict] = {"vqvae": {}, "prior": {}, "audio": {}}
    for item in items or []:
        key, sep, raw = item.partition("=")
        stage, dot, name = key.strip().partition(".")
        if not sep or not dot or stage not in out or not name:
            raise ValueError(f"--set expects STAGE.NAME=VALUE with STAGE one of vqvae, prior, audio; got '{item}'")
        try:
            out[stage][name] = json.loads(raw)
        except json.JSONDecodeError:
            out[stage][name] = raw
    return out


def cmd_train(args) -> int:
    from distill.pipeline import TrainOptions, run_pipeline

    overrides = _settings(args.set)
    options = TrainOptions(preset=args.preset, minutes=args.minutes, seed=args.seed, device=args.device,
                           num_quantizers=args.levels, sample_rate=args.sample_rate, cache_dir=args.cache_dir,
                           vqvae_overrides=overrides["vqvae"], prior_overrides=overrides["prior"],
                           audio_overrides=overrides["audio"])
    summary = run_pipeline(args.data_dir, Path(args.run), options, callbacks=[_show_progress(time.time())])
    return _report(summary, Path(args.run), args.json)


def _report(summary: dict, run_dir: Path, as_json: bool) -> int:
    """The run's outcome, with what the sequence model learned once it finished (distill.learning)."""
    from distill.learning import judge_manifest
    from distill.runs import read_manifest

    verdict = None
    if summary.get("status") == "done":
        try:
            verdict = judge_manifest(read_manifest(run_dir))
        except Exception:  # no manifest to judge from: the summary stands alone
            verdict = None
    if verdict is not None:
        summary = {**summary, "learned": verdict.to_dict()}
    if as_json:
        _print_json(summary)
    else:
        _err(summary.get("message", ""))
        if verdict is not None:
            _err(" ".join(x for x in (verdict.headline, verdict.advice) if x))
    return 0 if summary.get("status") == "done" else 1


def _show_progress(started: float):
    last = {"t": 0.0}

    def show(event: dict) -> None:
        kind = event.get("kind")
        stage = event.get("stage")
        now = time.time()
        if kind in ("stage_start", "stage_end", "warning", "error", "run_end", "resumed"):
            extra = {k: v for k, v in event.items() if k not in ("t", "stage", "kind", "trace", "levels")}
            _err(f"[{now - started:6.1f}s] {stage}: {kind} {json.dumps(extra, ensure_ascii=False)[:300]}")
        elif kind in ("step", "eval", "progress") and now - last["t"] > 5:
            last["t"] = now
            keys = ("step", "loss", "val_loss", "val_perplexity", "tokens_per_s", "fraction", "eta_s")
            _err(f"[{now - started:6.1f}s] {stage}: " + " ".join(f"{k}={event[k]:.4g}" if isinstance(event[k], float) else f"{k}={event[k]}" for k in keys if k in event))

    return show


def cmd_resume(args) -> int:
    from distill.pipeline import resume_run

    overrides = {}
    if args.minutes is not None:
        overrides["minutes"] = args.minutes
    if args.device is not None:
        overrides["device"] = args.device
    summary = resume_run(Path(args.run_dir), callbacks=[_show_progress(time.time())], options_overrides=overrides)
    return _report(summary, Path(args.run_dir), args.json)


def cmd_generate(args) -> int:
    import soundfile as sf

    from distill.generate import RunCache, generate_audio, save_sample

    cache = RunCache(1)
    wave, sr, codes = generate_audio(args.run_dir, args.seconds, args.temperature, args.top_k, args.top_p, args.seed,
                                     prompt_file=args.prompt, clip_ends=not args.no_clip_ends, retrieval=args.follow,
                                     cache=cache)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    sf.write(out, wave, sr)
    if args.codes_out:
        import numpy as np

        heard = cache.get(args.run_dir).with_detail(codes)  # every level, as heard: `decode` gives this sound back
        np.save(args.codes_out, heard.astype(np.int64), allow_pickle=False)
    settings = {"seconds": args.seconds, "temperature": args.temperature, "top_k": args.top_k, "top_p": args.top_p,
                "seed": args.seed, "prompt": args.prompt, "clip_ends": not args.no_clip_ends, "retrieval": args.follow}
    if args.keep:
        save_sample(args.run_dir, wave, sr, codes, settings)
    _err(f"wrote {out} ({len(wave) / sr:.2f} s, {codes.shape[0]} code steps × {codes.shape[1]} levels)")
    return 0


def cmd_vary(args) -> int:
    import soundfile as sf

    from distill.generate import load_run
    from distill.sound_input import load_input
    from distill.variations import VariationSettings, render_variation, save_variations, vary_codes

    run = load_run(args.run_dir)
    kind, ref = ("file", args.file) if args.file else ("sample", args.sample) if args.sample else ("upload", args.audio)
    source = load_input(run, kind, ref)
    if source.note:
        _err(source.note)
    settings = VariationSettings(mode=args.mode, keep_levels=args.keep_levels, at_seconds=args.at, seconds=args.seconds,
                                 count=args.count, seed=args.seed, temperature=args.temperature, top_k=args.top_k,
                                 top_p=args.top_p, follow=args.follow)
    results = vary_codes(run, source.codes, settings)
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stem = Path(source.name).stem or "input"
    rendered = [render_variation(run, source, settings, codes) for codes in results]  # decoded once, kept or not
    for i, (codes, (_, wave)) in enumerate(zip(results, rendered)):
        path = out / f"{stem}-{args.mode}-s{args.seed + i}.wav"
        sf.write(path, wave, run.audio_config.sample_rate)
        _err(f"wrote {path} ({len(codes)} code steps)")
    if args.keep:
        save_variations(run, source, settings, results, rendered)
    return 0


def cmd_pack(args) -> int:
    import shutil

    from distill.generate import load_run
    from distill.packs import PackSettings, make_one_shots, save_pack

    run = load_run(args.run_dir)
    settings = PackSettings(count=args.count, seed=args.seed, temperature=args.temperature, top_k=args.top_k,
                            top_p=args.top_p, follow=args.follow)
    result = make_one_shots(run, settings, progress=lambda done, n: _err(f"{done}/{n} one-shots"))
    saved = save_pack(args.run_dir, Path(args.run_dir).resolve().name, result, settings)
    if args.out:
        shutil.copyfile(saved["zip"], args.out)
    _err(result.summary(settings.count))
    _err(f"saved {len(saved['samples'])} one-shots in {Path(args.run_dir) / 'samples'}; zip: {args.out or saved['zip']}")
    if args.json:
        _print_json({"pack": saved["pack"], "zip": args.out or saved["zip"], "message": result.summary(settings.count),
                     "samples": [{"path": s["path"], "seconds": s["seconds"], "seed": s["seed"]} for s in saved["samples"]]})
    return 0


def cmd_encode(args) -> int:
    import numpy as np
    import torch

    from distill.codes import extract_code_sequences
    from distill.runs import load_vqvae, read_manifest, run_configs
    from distill.scan import DatasetError, scan_dataset

    audio, _, _ = run_configs(read_manifest(args.run_dir))
    report = scan_dataset(args.audio, audio, cache_dir=args.cache_dir)
    if not report.used:
        reason = report.skipped[0].reason if report.skipped else "no audio"
        raise DatasetError(f"cannot encode {args.audio}: {reason}")
    # every level, detail too: `decode` then gives the file's own round trip
    codes = extract_code_sequences(load_vqvae(args.run_dir), [report.used[0].mel], detail=True)[0]
    np.save(args.out, torch.as_tensor(codes).numpy().astype(np.int64), allow_pickle=False)
    _err(f"wrote {args.out}: {tuple(codes.shape)} codes")
    return 0


def cmd_decode(args) -> int:
    import numpy as np
    import soundfile as sf

    from distill.generate import add_detail, decode_codes, load_detail_bank
    from distill.runs import load_vqvae, read_manifest, run_configs

    codes = np.load(args.codes, allow_pickle=False)  # never unpickle a user's file
    manifest = read_manifest(args.run_dir)
    audio, vq, _ = run_configs(manifest)
    widths = sorted({vq.num_quantizers, vq.num_quantizers + vq.detail_width})
    if codes.ndim != 2 or codes.shape[1] not in widths or not codes.size or codes.min() < 0 \
            or codes.max() >= vq.codebook_size:
        raise ValueError(f"codes must be an integer array [T, {' or '.join(map(str, widths))}] with values below "
                         f"{vq.codebook_size} (the sequence model's levels, or all levels as `encode` writes them)")
    vqvae = load_vqvae(args.run_dir)  # a run stopped before the prior can still decode
    full = codes.astype(np.int64)
    if vq.detail_width:  # the sequence model's levels alone: heard as a generated sound is
        full = add_detail(load_detail_bank(Path(args.run_dir), vqvae), vqvae, full)
    wave = decode_codes(vqvae, audio, full)
    sf.write(args.out, wave, audio.sample_rate)
    _err(f"wrote {args.out} ({len(wave) / audio.sample_rate:.2f} s)")
    return 0


def cmd_evaluate(args) -> int:
    from distill.evaluate import evaluate_run

    result = evaluate_run(args.run_dir, args.data, samples=args.samples, sample_seconds=args.sample_seconds,
                          cache_dir=args.cache_dir)
    if args.json:
        _print_json(result)
    else:
        for k, v in result.items():
            print(f"{k}: {v}")
    return 0


def cmd_export(args) -> int:
    from distill.bundle import export_run

    out = export_run(args.run_dir, args.out)
    _err(f"wrote {out} ({out.stat().st_size / 1024**2:.1f} MB)")
    return 0


def cmd_import(args) -> int:
    from distill.bundle import import_run

    run_dir = import_run(args.bundle, args.workspace)
    print(run_dir)
    return 0


def build_parser() -> argparse.ArgumentParser:
    from distill.config import SAMPLING_DEFAULTS

    p = argparse.ArgumentParser(prog="python -m distill", description="Train a generative audio model on your own sounds.")
    p.add_argument("--cache-dir", default=None, help="feature cache folder (default: $DISTILL_CACHE or ~/.cache/distill)")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("scan", help="check a folder of audio and show the tier Distill would choose")
    s.add_argument("data_dir")
    s.add_argument("--json", action="store_true")
    s.add_argument("--preset", default="auto", choices=["auto", "quick"])
    s.add_argument("--levels", type=int, default=3, choices=[2, 3, 4])
    s.add_argument("--sample-rate", type=int, default=0, choices=[0, 24000, 48000], help=SAMPLE_RATE_HELP)
    s.set_defaults(func=cmd_scan)

    t = sub.add_parser("train", help="train the whole pipeline on a folder")
    t.add_argument("data_dir")
    t.add_argument("--run", required=True, help="run folder to create")
    t.add_argument("--preset", default="auto", choices=["auto", "quick"])
    t.add_argument("--minutes", type=float, default=None, help="total training budget")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"])
    t.add_argument("--levels", type=int, default=3, choices=[2, 3, 4])
    t.add_argument("--sample-rate", type=int, default=0, choices=[0, 24000, 48000], help=SAMPLE_RATE_HELP)
    t.add_argument("--set", action="append", metavar="STAGE.NAME=VALUE",
                   help="override one setting, e.g. vqvae.max_steps=200 or prior.time_budget_s=null (repeatable)")
    t.add_argument("--json", action="store_true")
    t.set_defaults(func=cmd_train)

    r = sub.add_parser("resume", help="continue an interrupted, stopped or failed run from its last checkpoint")
    r.add_argument("run_dir")
    r.add_argument("--minutes", type=float, default=None, help="a new total training budget (default: the run's own)")
    r.add_argument("--device", default=None, choices=["auto", "cpu", "cuda", "mps"])
    r.add_argument("--json", action="store_true")
    r.set_defaults(func=cmd_resume)

    g = sub.add_parser("generate", help="generate new audio from a trained run")
    g.add_argument("run_dir")
    g.add_argument("--seconds", type=float, required=True)
    g.add_argument("--temperature", type=float, default=1.0)
    g.add_argument("--top-k", type=int, default=0)
    g.add_argument("--top-p", type=float, default=1.0)
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--no-clip-ends", action="store_true",
                   help="one continuous sound, even where the model learnt that your files end and a new one begins")
    g.add_argument("--follow", type=float, default=SAMPLING_DEFAULTS["retrieval"], metavar="0..1",
                   help="how closely each next moment follows what came next in your own files "
                        f"(0: the model alone; default {SAMPLING_DEFAULTS['retrieval']})")
    g.add_argument("--prompt", default=None, help="continue from this training file's codes (its relative path)")
    g.add_argument("--out", required=True)
    g.add_argument("--codes-out", default=None,
                   help="also write the codes the sound is heard with, every level (`decode` turns them back into it)")
    g.add_argument("--keep", action="store_true", help="also keep the sample in the run's samples/ folder")
    g.set_defaults(func=cmd_generate)

    def sampling_args(parser) -> None:
        parser.add_argument("--seed", type=int, default=0)
        parser.add_argument("--temperature", type=float, default=SAMPLING_DEFAULTS["temperature"])
        parser.add_argument("--top-k", type=int, default=SAMPLING_DEFAULTS["top_k"])
        parser.add_argument("--top-p", type=float, default=SAMPLING_DEFAULTS["top_p"])
        parser.add_argument("--follow", type=float, default=SAMPLING_DEFAULTS["retrieval"], metavar="0..1",
                            help="how closely each next moment follows your own files (0: the model alone)")

    va = sub.add_parser("vary", help="variations of a sound: keep its shape with new detail, or continue it")
    va.add_argument("run_dir")
    src = va.add_mutually_exclusive_group(required=True)
    src.add_argument("--file", help="one of the run's training files (its relative path)")
    src.add_argument("--sample", help="one of the run's saved samples (its id)")
    src.add_argument("--audio", help="any audio file (encoded by the run's codec)")
    va.add_argument("--mode", choices=["shape", "continue"], default="shape",
                    help="shape: keep the coarse levels, new detail; continue: new material from --at")
    va.add_argument("--keep-levels", type=int, default=1, help="shape: how many coarse levels to keep")
    va.add_argument("--at", type=float, default=1.0, help="continue: the point (seconds) the new material starts")
    va.add_argument("--seconds", type=float, default=2.0, help="continue: how much new material")
    va.add_argument("--count", type=int, default=1, help="variations, sampled together in one batched pass")
    sampling_args(va)
    va.add_argument("--out-dir", required=True)
    va.add_argument("--keep", action="store_true", help="also keep them in the run's samples/ folder")
    va.set_defaults(func=cmd_vary)

    pk = sub.add_parser("pack", help="make N new one-shots, saved in the run's samples/ and zipped")
    pk.add_argument("run_dir")
    pk.add_argument("--count", type=int, default=8)
    sampling_args(pk)
    pk.add_argument("--out", default=None, help="also copy the zip here")
    pk.add_argument("--json", action="store_true")
    pk.set_defaults(func=cmd_pack)

    e = sub.add_parser("encode", help="turn an audio file into codes (.npy)")
    e.add_argument("run_dir")
    e.add_argument("audio")
    e.add_argument("--out", required=True)
    e.set_defaults(func=cmd_encode)

    d = sub.add_parser("decode", help="turn codes (.npy) back into audio")
    d.add_argument("run_dir")
    d.add_argument("codes")
    d.add_argument("--out", required=True)
    d.set_defaults(func=cmd_decode)

    v = sub.add_parser("evaluate", help="measure a run on a folder of audio")
    v.add_argument("run_dir")
    v.add_argument("--data", required=True)
    v.add_argument("--samples", type=int, default=4, help="generated samples for histogram/copy statistics")
    v.add_argument("--sample-seconds", type=float, default=10.0)
    v.add_argument("--json", action="store_true")
    v.set_defaults(func=cmd_evaluate)
    x = sub.add_parser("export", help="pack a run into one file (a zip of its safetensors + JSON)")
    x.add_argument("run_dir")
    x.add_argument("--out", required=True)
    x.set_defaults(func=cmd_export)

    i = sub.add_parser("import", help="unpack a run bundle into a workspace, checking every file first")
    i.add_argument("bundle")
    i.add_argument("--workspace", default=os.environ.get("DISTILL_WORKSPACE", "workspace"))
    i.set_defaults(func=cmd_import)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from distill.scan import DatasetError
    from distill.storage import UnsafeFileError

    try:
        return args.func(args)
    except (DatasetError, UnsafeFileError, ValueError, FileNotFoundError) as exc:
        _err(f"error: {exc}")
        return 2
    except KeyboardInterrupt:
        _err("interrupted")
        return 130
